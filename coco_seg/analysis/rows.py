"""Row files: an ``.npy`` file of N fixed-shape rows read and written with positioned file I/O, not a memory map.

Why not ``np.memmap``: every page of a file mapping the process touches counts in its resident set (RssFile) and
stays there until the kernel needs the memory, so streaming 60,000 samples' probabilities (N × K × S × S float16:
about 6 GB at 128 px) through a mapping grows the analysis's peak RSS by the whole file. With ``os.preadv``
(straight into the result array; ``os.pread`` and a copy where there is no preadv) and ``os.pwrite`` the bytes
pass through the page cache, which is not the process's memory, and only the rows asked for are ever held.

A ``RowFile`` indexes like the array it stores along its first axis: an int (one row), a slice with step 1, or a
1-D int array (read as runs of consecutive rows). The file is a valid ``.npy`` (``np.load`` reads it).
"""

import os
from pathlib import Path
from typing import Any

import numpy as np



def _read_into(descriptor: int, target: memoryview, offset: int) -> int:
    """Read up to len(target) bytes at ``offset`` into ``target``; the number read (0 at the end of the file)."""
    if hasattr(os, "preadv"):
        return os.preadv(descriptor, [target], offset)
    chunk = os.pread(descriptor, len(target), offset)
    target[:len(chunk)] = chunk
    return len(chunk)


class RowFile:
    """(N, *row_shape) rows of ``dtype`` in the .npy file ``path``; see the module comment."""

    def __init__(self, path: Path, dtype: Any, shape: tuple[int, ...], *, fresh: bool = False) -> None:
        """Open ``path`` as (``shape``, ``dtype``) rows: an existing file of that shape and dtype is reused (unless
        ``fresh``), else written new with its blocks allocated up front (zeros). Allocating first turns a full disk
        into an OSError naming the file here instead of a failure at some later write; a failed allocation leaves
        no file behind."""
        self.path = Path(path)
        self.dtype = np.dtype(dtype)
        self.shape = tuple(int(n) for n in shape)
        self.row_shape = self.shape[1:]
        self.row_bytes = int(np.prod(self.row_shape, dtype=np.int64)) * self.dtype.itemsize
        needed = self.shape[0] * self.row_bytes
        try:
            if fresh or not self._holds():
                self._write_header()
            self._descriptor = os.open(self.path, os.O_RDWR)
        except OSError as error:
            self.path.unlink(missing_ok=True)
            raise OSError(error.errno, f"cannot allocate {needed} bytes for the analysis "
                                       f"({error.strerror or os.strerror(error.errno or 0)})", str(self.path)) from None
        self._offset = self._data_offset()

    def _holds(self) -> bool:
        try:
            array = np.load(self.path, mmap_mode="r")
        except (ValueError, OSError):
            return False
        return array.shape == self.shape and array.dtype == self.dtype

    def _write_header(self) -> None:
        with open(self.path, "wb") as handle:
            np.lib.format.write_array_header_1_0(handle, {"descr": np.lib.format.dtype_to_descr(self.dtype),
                                                          "fortran_order": False, "shape": self.shape})
            header = handle.tell()
            handle.truncate(header + self.shape[0] * self.row_bytes)  # zeros
            if hasattr(os, "posix_fallocate") and self.shape[0] * self.row_bytes:  # not on macOS or Windows
                os.posix_fallocate(handle.fileno(), header, self.shape[0] * self.row_bytes)

    def _data_offset(self) -> int:
        return int(np.load(self.path, mmap_mode="r").offset)  # maps nothing: no page is read

    def __len__(self) -> int:
        return self.shape[0]

    def close(self) -> None:
        if getattr(self, "_descriptor", None) is not None:
            os.close(self._descriptor)
            self._descriptor = None

    def __del__(self) -> None:
        self.close()

    def flush(self) -> None:
        """Written rows reach the disk (what ``memmap.flush`` guaranteed): a part file written after it is never
        ahead of its rows, even after a power loss."""
        os.fdatasync(self._descriptor) if hasattr(os, "fdatasync") else os.fsync(self._descriptor)

    def _runs(self, index: Any) -> tuple[list[tuple[int, int]], bool]:
        """``index`` → (runs of (first row, row count), whether the result drops the first axis)."""
        count = self.shape[0]
        if isinstance(index, (int, np.integer)):
            row = int(index) + (count if index < 0 else 0)
            if not 0 <= row < count:
                raise IndexError(f"row {int(index)} out of range for {count} rows in {self.path}")
            return [(row, 1)], True
        if isinstance(index, slice):
            start, stop, step = index.indices(count)
            if step != 1:
                raise IndexError(f"{self.path}: row slices must have step 1")
            return [(start, max(0, stop - start))], False
        rows = np.asarray(index)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        if rows.ndim != 1 or rows.dtype.kind not in "iu":
            raise IndexError(f"{self.path}: rows are indexed by an int, a slice or a 1-D int array")
        rows = np.where(rows < 0, rows + count, rows).astype(np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= count):
            raise IndexError(f"row out of range for {count} rows in {self.path}")
        if rows.size == 0:
            return [], False
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1
        return [(int(run[0]), len(run)) for run in np.split(rows, breaks)], False

    def __getitem__(self, index: Any) -> np.ndarray:
        runs, scalar = self._runs(index)
        out = np.empty((sum(length for _, length in runs),) + self.row_shape, self.dtype)
        buffer = memoryview(out.reshape(-1)).cast("B") if out.size else memoryview(b"")
        position = 0
        for first, length in runs:
            wanted, done = length * self.row_bytes, 0
            while done < wanted:  # straight into ``out``; a read may return fewer bytes than asked
                got = _read_into(self._descriptor, buffer[position + done:position + wanted],
                                 self._offset + first * self.row_bytes + done)
                if got == 0:
                    raise OSError(f"{self.path} ends before row {first + length}")
                done += got
            position += wanted
        return out[0] if scalar else out

    def __setitem__(self, index: Any, values: Any) -> None:
        runs, scalar = self._runs(index)
        total = sum(length for _, length in runs)
        values = np.broadcast_to(np.asarray(values, self.dtype), (total,) + self.row_shape)
        values = np.ascontiguousarray(values)
        position = 0
        for first, length in runs:
            data = memoryview(values[position:position + length]).cast("B")
            written = 0
            while written < len(data):
                written += os.pwrite(self._descriptor, data[written:], self._offset + first * self.row_bytes + written)
            position += length
