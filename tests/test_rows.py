"""coco_seg.analysis.rows.RowFile: an .npy of rows read and written with positioned I/O, indexed like the array,
and (why it exists) never counted in the process's resident memory the way a memory map's pages are."""

import errno
import sys

import numpy as np
import pytest

from coco_seg.analysis.rows import RowFile


def test_rows_read_and_write_like_the_array_they_store(tmp_path):
    path = tmp_path / "rows.npy"
    rows = RowFile(path, np.float16, (10, 3, 4, 4), fresh=True)
    expected = np.zeros((10, 3, 4, 4), np.float16)
    rng = np.random.default_rng(0)
    values = rng.random((4, 3, 4, 4)).astype(np.float16)
    rows[2:6] = values
    expected[2:6] = values
    rows[np.array([0, 1, 7, 9])] = values[::-1]  # two runs of consecutive rows
    expected[[0, 1, 7, 9]] = values[::-1]
    rows[8] = values[0]
    expected[8] = values[0]
    rows[np.array([False] * 9 + [True])] = values[1]  # a boolean mask, like an array
    expected[9] = values[1]
    np.testing.assert_array_equal(np.load(path), expected)  # a valid .npy
    np.testing.assert_array_equal(rows[np.array([9, 0, 1, 2, 5])], expected[[9, 0, 1, 2, 5]])
    np.testing.assert_array_equal(rows[-1], expected[-1])
    np.testing.assert_array_equal(rows[:], expected)
    assert rows[3:3].shape == (0, 3, 4, 4) and rows[np.array([], np.int64)].shape == (0, 3, 4, 4)
    assert rows.shape == (10, 3, 4, 4) and len(rows) == 10 and rows[4].dtype == np.float16
    rows.flush()
    np.testing.assert_array_equal(RowFile(path, np.float16, (10, 3, 4, 4))[:], expected)  # reused as it is
    np.testing.assert_array_equal(RowFile(path, np.float16, (10, 3, 4, 4), fresh=True)[:], 0)  # fresh: zeros
    np.testing.assert_array_equal(RowFile(path, np.float16, (11, 3, 4, 4))[:], 0)  # another shape: new


def test_bad_indices_are_refused_with_the_file_named(tmp_path):
    rows = RowFile(tmp_path / "r.npy", np.uint8, (4, 2))
    for bad in (4, -5, np.array([1, 4]), slice(0, 4, 2), np.array([[1]]), np.array([0.5])):
        with pytest.raises(IndexError, match="r.npy"):
            rows[bad]
    with pytest.raises(ValueError):
        rows[0:2] = np.zeros((3, 2))  # three rows into two


def test_a_full_disk_is_one_oserror_naming_the_file_and_leaves_no_file(tmp_path, monkeypatch):
    import os

    def full(descriptor, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", full, raising=False)
    path = tmp_path / "big.npy"
    with pytest.raises(OSError, match=r"cannot allocate 8000 bytes for the analysis \(No space left on device\)") \
            as raised:
        RowFile(path, np.float64, (1000,))
    assert raised.value.filename == str(path) and not path.exists()


def _rss_file_mb() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("RssFile:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no RssFile line")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status (Linux)")
def test_streaming_a_file_through_rows_does_not_grow_the_resident_set_as_a_memory_map_does(tmp_path):
    """256 MB written and read back a chunk at a time: through a memory map the touched pages stay in the
    process's RSS (so an analysis of 60,000 samples would 'use' its 6 GB of probabilities); through RowFile they
    do not."""
    shape, chunk = (256, 1024, 1024), 16
    path = tmp_path / "rows.npy"
    rows = RowFile(path, np.uint8, shape, fresh=True)
    before = _rss_file_mb()
    for start in range(0, shape[0], chunk):
        rows[start:start + chunk] = np.full((chunk,) + shape[1:], start % 251, np.uint8)
    total = sum(int(rows[start:start + chunk][:, 0, 0].sum()) for start in range(0, shape[0], chunk))
    through_rows = _rss_file_mb() - before
    assert total == sum((start % 251) * chunk for start in range(0, shape[0], chunk))

    mapped = np.load(path, mmap_mode="r")
    before = _rss_file_mb()
    mapped_total = sum(int(mapped[start:start + chunk].sum(dtype=np.int64) > 0) for start in range(0, shape[0], chunk))
    through_map = _rss_file_mb() - before
    del mapped
    assert mapped_total == shape[0] // chunk - 1  # every chunk but the zeros of the first
    assert through_rows < 32, through_rows
    assert through_map > 200, through_map  # the comparison that makes the first assertion mean something
