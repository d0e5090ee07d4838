"""Image files to RGB uint8, whatever the file holds, and image paths confined to their folder.

Decoding uses OpenCV with IMREAD_UNCHANGED so that EXIF orientation is *not* applied: COCO polygons are in the
stored pixel grid. The result is then normalised: 16-bit → 8-bit, grayscale → three equal channels, alpha dropped,
BGR → RGB.

A JPEG whose entropy-coded data is damaged still "decodes" with OpenCV: libjpeg only warns ("Corrupt JPEG data:
…", "Premature end of JPEG file") and fills in garbage. Those warnings do not go through OpenCV's logger (so
``cv2.setLogLevel`` / OPENCV_LOG_LEVEL neither silence nor report them): libjpeg's default ``output_message`` writes
them with ``fprintf(stderr)``, i.e. to file descriptor 2. :func:`decode_rgb` therefore points fd 2 at a private
in-memory file for the duration of a JPEG's ``cv2.imdecode`` (see :class:`_Fd2Capture`) and refuses the decode when
libjpeg reported corrupt data. PNG needs nothing of the kind: libpng checks every chunk's CRC and the zlib stream's
Adler-32, and OpenCV then returns no image at all.

Preprocess does not decode: :func:`inspect_image_file` reads a few small blocks per file (head and tail) to catch
empty, mislabelled and truncated files and to read the stored pixel size from the PNG IHDR chunk or the JPEG frame
header, without Pillow (not a dependency) and without decoding. Data appended after a valid end marker (phone
"motion photos" put a video after the JPEG, some tools pad PNGs after IEND) is accepted: see
:func:`inspect_image_file` for the rule.
"""

import os
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Optional, Union

import cv2
import numpy as np

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]


class ImageDecodeError(ValueError):
    """An image file is missing, empty, truncated, corrupt or not an image."""


JPEG_START, JPEG_END = b"\xff\xd8\xff", b"\xff\xd9"
PNG_START = b"\x89PNG\r\n\x1a\n"
PNG_END = b"\x00\x00\x00\x00IEND"  # the IEND chunk: length 0, type; its CRC (4 bytes) must follow


# --- libjpeg's warnings, captured from fd 2 -------------------------------------------------------------------------

# libjpeg-turbo's warnings (jerror.h) that mean the pixels are not what the encoder wrote: damaged entropy-coded
# data (JWRN_EXTRANEOUS_DATA, JWRN_HIT_MARKER, JWRN_HUFF_BAD_CODE, JWRN_MUST_RESYNC, JWRN_ARITH_BAD_CODE:
# "Corrupt JPEG data: …"), data missing (JWRN_JPEG_EOF) or a broken progressive sequence (JWRN_BOGUS_PROGRESSION).
# The other warnings (unknown JFIF revision, Adobe transform code, odd SOS parameters, a bad ICC marker) concern
# metadata, not pixels: they are passed on to stderr as before. libjpeg prints only the first warning of an image,
# so such a header warning would hide a later corruption warning (files with one are rare; none in COCO's sample).
JPEG_CORRUPTION_PREFIXES = ("Corrupt JPEG data", "Premature end of JPEG file", "Inconsistent progression sequence")
JPEG_BENIGN_PREFIXES = ("Corrupt JPEG data: bad ICC marker",)
MAX_REPORTED_LINES = 3


class _Fd2Capture:
    """Runs a call with file descriptor 2 pointed at a private in-memory file; returns what was written there.

    fd 2 belongs to the whole process, so captures are serialised by a lock (JPEG decodes run one at a time; all
    other work, including PNG decodes, runs in parallel as before). Whatever another thread or library writes to
    fd 2 during a capture is not lost: :func:`decode_rgb` passes every line that is not a libjpeg corruption
    warning on to the real fd 2 afterwards. fd 2 is duplicated afresh for each call, so a redirection made by
    someone else (pytest's capfd, a daemon's log file) is respected. The capture file is created on first use and
    again in a forked child (an inherited one would be shared with the parent); a fork waits for a running capture
    to finish, so a child never starts with fd 2 redirected.

    Cost per call: a lock and five system calls (dup, dup2, dup2, close, fstat) — a few microseconds; one more
    (pread) when something was written.

    Limits: a JPEG decoder elsewhere in the process that does not go through decode_rgb (and its lock) and warns
    during a capture would have its warning taken for this image's; and should the decoder crash the process
    during a capture, a crash report written to fd 2 (faulthandler) lands in the capture file.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._descriptor: Optional[int] = None
        self._keep: object = None  # the file object behind _descriptor where memfd_create is unavailable
        self._read_up_to = 0  # what the capture file holds before this offset was handed out
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(before=lambda: self._lock.acquire(), after_in_parent=lambda: self._lock.release(),
                                after_in_child=self._after_fork_in_child)

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()  # the inherited one is held (acquired before the fork)
        self._discard()  # the child's copy only; the parent keeps its own

    def _discard(self) -> None:
        if self._keep is not None:
            self._keep.close()  # type: ignore[attr-defined]
        elif self._descriptor is not None:
            os.close(self._descriptor)
        self._descriptor = self._keep = None
        self._read_up_to = 0

    def _capture_descriptor(self) -> int:
        if self._descriptor is None:
            if hasattr(os, "memfd_create"):
                descriptor = os.memfd_create("coco-seg-stderr", os.MFD_CLOEXEC)
            else:
                self._keep = tempfile.TemporaryFile()
                descriptor = self._keep.fileno()  # type: ignore[attr-defined]
            if fcntl is not None:
                # Append mode: two threads writing to fd 2 at once (libjpeg and anyone else) must not write at the
                # same file offset and overwrite each other's text.
                fcntl.fcntl(descriptor, fcntl.F_SETFL, fcntl.fcntl(descriptor, fcntl.F_GETFL) | os.O_APPEND)
            self._descriptor = descriptor
        return self._descriptor

    def call(self, function: Callable[[], object]) -> tuple[object, str]:
        """``function()`` and the text written to fd 2 meanwhile. Should it raise, that text is passed on to fd 2
        and the exception propagates."""
        with self._lock:
            try:
                descriptor = self._capture_descriptor()
                saved = os.dup(2)
            except OSError:  # no fd 2 (closed) or no capture file: nothing to capture
                return function(), ""
            try:
                try:
                    os.dup2(descriptor, 2)
                    result = function()
                finally:
                    os.dup2(saved, 2)
                    os.close(saved)
            except BaseException:
                _pass_on(self._drain(descriptor))
                raise
            return result, self._drain(descriptor)

    def _drain(self, descriptor: int) -> str:
        """What was written to the capture file since the last drain.

        The file is not emptied after each call: another thread's write to fd 2 that began just before fd 2 was
        restored may still be landing in it, and would be lost. It lands after the data read here (appended; the
        size covers complete writes only) and goes out with the next call's text. The file is replaced once it
        holds CAPTURE_FILE_BYTES (rare: only text written to fd 2 during captures accumulates, nearly always
        nothing)."""
        written = os.fstat(descriptor).st_size  # grows only once a write's bytes are in place
        if written == self._read_up_to:
            return ""
        text = os.pread(descriptor, written - self._read_up_to, self._read_up_to)
        self._read_up_to += len(text)
        if self._read_up_to >= CAPTURE_FILE_BYTES:
            self._discard()
        return text.decode("utf-8", "replace")


CAPTURE_FILE_BYTES = 1 << 20
_FD2 = _Fd2Capture()


def _jpeg_corruption(captured: str) -> tuple[list[str], str]:
    """Split captured stderr text into libjpeg's corruption warnings and the rest (to be passed on)."""
    corruption: list[str] = []
    rest: list[str] = []
    for line in captured.splitlines(keepends=True):
        text = line.strip()
        if text.startswith(JPEG_CORRUPTION_PREFIXES) and not text.startswith(JPEG_BENIGN_PREFIXES):
            if text not in corruption:
                corruption.append(text)
        else:
            rest.append(line)
    return corruption, "".join(rest)


def _pass_on(text: str) -> None:
    if text:
        try:
            os.write(2, text.encode("utf-8", "replace"))
        except OSError:
            pass


def _summary(lines: list[str]) -> str:
    shown = "; ".join(lines[:MAX_REPORTED_LINES])
    return shown + (f"; … ({len(lines) - MAX_REPORTED_LINES} more)" if len(lines) > MAX_REPORTED_LINES else "")


def _imdecode(encoded: np.ndarray, path: Union[Path, str]) -> np.ndarray:
    """cv2.imdecode(IMREAD_UNCHANGED), refusing what does not decode and JPEGs that libjpeg found corrupt."""
    if encoded[:3].tobytes() != JPEG_START:
        image = cv2.imdecode(encoded, cv2.IMREAD_UNCHANGED)
        if image is None:
            raise ImageDecodeError(f"image file {path} cannot be decoded (corrupt or not an image)")
        return image
    image, captured = _FD2.call(lambda: cv2.imdecode(encoded, cv2.IMREAD_UNCHANGED))
    corruption, rest = _jpeg_corruption(captured) if captured else ([], "")
    _pass_on(rest)
    if image is None:
        if corruption:
            raise ImageDecodeError(f"image file {path} cannot be decoded: the JPEG data is corrupt "
                                   f"(libjpeg: {_summary(corruption)})")
        raise ImageDecodeError(f"image file {path} cannot be decoded (corrupt or not an image)")
    if corruption:  # libjpeg went on and filled in what it could not decode
        raise ImageDecodeError(f"image file {path}: the JPEG data is corrupt (libjpeg: {_summary(corruption)}); "
                               "its decoded pixels would be garbage")
    return image  # type: ignore[return-value]


def decode_rgb(path: Union[Path, str], *, size: Optional[int] = None) -> tuple[np.ndarray, tuple[int, int]]:
    """Read ``path``; return an RGB uint8 array — (H, W, 3), or (size, size, 3) when ``size`` is given — and the
    file's own (width, height). Raises :class:`ImageDecodeError` when the file cannot be read or decoded, or is a
    JPEG whose data libjpeg reports as corrupt (see the module comment).

    With ``size``, the decoded pixels are resized (INTER_AREA: averages source pixels, the right filter to shrink
    a photo) *before* the colour conversion, which then runs on the small image only; channel reordering and
    gray → RGB commute with resizing, so the result is the same.
    """
    try:
        encoded = np.fromfile(path, dtype=np.uint8)
    except OSError as error:
        raise ImageDecodeError(f"cannot read image file {path}: {error.strerror}") from None
    if encoded.size == 0:
        raise ImageDecodeError(f"image file {path} is empty (0 bytes)")
    image = _imdecode(encoded, path)
    height, width = image.shape[:2]
    image = _to_8_bits(image)  # before resizing, so the rounding matches the full-size path
    if size is not None:
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    return to_rgb_uint8(image, source=path), (width, height)


def _to_8_bits(image: np.ndarray) -> np.ndarray:
    """A 16-bit image scaled to 8 bits (65535 → 255, rounded); any other image as it is."""
    if image.dtype == np.uint16:
        return (image.astype(np.float32) / 257.0).round().astype(np.uint8)
    return image


def to_rgb_uint8(image: np.ndarray, *, source: object = "image") -> np.ndarray:
    """Normalise an OpenCV-decoded array (gray, BGR, BGRA; 8 or 16 bit) to (H, W, 3) uint8 RGB."""
    image = _to_8_bits(image)
    if image.dtype != np.uint8:
        raise ImageDecodeError(f"{source}: unsupported pixel type {image.dtype}")
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    channels = image.shape[2]
    if channels == 1:
        return cv2.cvtColor(image[:, :, 0], cv2.COLOR_GRAY2RGB)
    if channels == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if channels == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    raise ImageDecodeError(f"{source}: unsupported channel count {channels}")


def confined_path(folder: Path, file_name: str) -> Path:
    """Join ``file_name`` to ``folder``, refusing names that escape it.

    Absolute names and ``..`` parts are refused outright; the path is then resolved (symlinks followed) and must
    stay inside the resolved folder. Raises ValueError with the reason. (Preprocess calls this only for names it
    cannot vouch for from the folder listing: a plain name listed as a regular file is confined by construction.)
    """
    relative = PurePosixPath(file_name.replace("\\", "/"))
    if relative.is_absolute() or os.path.isabs(file_name):
        raise ValueError(f"file name {file_name!r} is an absolute path; it must be relative to the image folder")
    if ".." in relative.parts:
        raise ValueError(f"file name {file_name!r} contains '..' and would escape the image folder")
    path = folder.joinpath(*relative.parts)
    target = path.resolve()
    if not target.is_relative_to(folder.resolve()):
        raise ValueError(f"file {path} resolves to {target}, outside the image folder {folder}")
    return path


# --- the cheap structural check of preprocess -----------------------------------------------------------------------

TAIL_BYTES = 1024  # the end marker of almost every file lies in its last KiB (after at most a little padding)
# PNG's IHDR sits at bytes 8-24, and in most JPEGs (no large EXIF block) the frame header lies within the first few
# hundred bytes, so one read of this size usually answers; otherwise the JPEG segment chain is followed by reads of
# BLOCK_BYTES where it leads.
HEAD_BYTES = 512
BLOCK_BYTES = 4096
# When the end marker is not in the tail (data appended after it, or a truncated file), the file is searched for it
# from both ends in chunks growing from SEARCH_FIRST_BYTES to SEARCH_MAX_BYTES (see _occurs_in).
SEARCH_FIRST_BYTES = 64 * 1024
SEARCH_MAX_BYTES = 1024 * 1024
MAX_JPEG_SEGMENTS = 64  # bounds the walk on a malformed file; real files reach the first scan in under 20
# Start-of-frame markers (baseline, extended, progressive, lossless; Huffman and arithmetic). C4 (DHT), C8 (JPG)
# and CC (DAC) share the range but are not frame headers.
JPEG_FRAME_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
JPEG_STANDALONE_MARKERS = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM and RST0-7 carry no length
JPEG_SCAN_MARKER = 0xDA  # SOS: its header segment is followed by the entropy-coded data


@dataclass(frozen=True)
class ImageFileCheck:
    """What a cheap look at an image file found: a problem (None when usable) and the pixel size its header states
    ((width, height), or None when the format is not JPEG/PNG or the header does not say)."""

    problem: Optional[str]
    dimensions: Optional[tuple[int, int]] = None


def _seek_and_read(descriptor: int, count: int, offset: int) -> bytes:
    os.lseek(descriptor, offset, os.SEEK_SET)
    return os.read(descriptor, count)


pread = getattr(os, "pread", _seek_and_read)  # os.pread is POSIX-only


def _jpeg_layout(descriptor: int, head: bytes) -> tuple[Optional[tuple[int, int]], int, bool]:
    """Walk the marker segments after SOI up to the first scan (SOS): (dimensions, offset, reached_scan).

    ``dimensions`` come from the first frame header (None when there is none, or its height is 0: defined later
    by a DNL marker); ``offset`` is where the first scan's entropy-coded data starts when ``reached_scan``, else
    where the walk stopped. ``head`` is the start of the file; beyond it, BLOCK_BYTES are read where the walk
    leads (one read behind a large EXIF block, rather than one per segment)."""
    data, base = head, 0  # data holds the file's bytes from offset base on
    dimensions: Optional[tuple[int, int]] = None
    frame_seen = False
    offset = 2
    for _ in range(MAX_JPEG_SEGMENTS):
        i = offset - base
        if i + 9 > len(data):  # a marker, its length and (for a frame header) precision, height and width
            data, base, i = pread(descriptor, BLOCK_BYTES, offset), offset, 0
        available = len(data) - i
        if available < 2 or data[i] != 0xFF:
            break
        code = data[i + 1]
        if code == 0xFF:  # fill byte before a marker
            offset += 1
            continue
        if code in JPEG_STANDALONE_MARKERS:
            offset += 2
            continue
        if code == 0xD9 or available < 4:  # end of image before any scan, or the file ends here
            break
        length = (data[i + 2] << 8) | data[i + 3]
        if length < 2:
            break
        if code == JPEG_SCAN_MARKER:
            return dimensions, offset + 2 + length, True
        if code in JPEG_FRAME_MARKERS and not frame_seen:
            frame_seen = True
            if available >= 9:
                height, width = (data[i + 5] << 8) | data[i + 6], (data[i + 7] << 8) | data[i + 8]
                dimensions = (width, height) if width and height else None
        offset += 2 + length
    return dimensions, offset, False


def _png_dimensions(head: bytes) -> Optional[tuple[int, int]]:
    """(width, height) from the IHDR chunk, which the PNG format requires to come first."""
    if len(head) < 24 or head[12:16] != b"IHDR":
        return None
    width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    return (width, height) if width and height else None


def _occurs_in(descriptor: int, pattern: bytes, start: int, end: int, tail: bytes, tail_start: int) -> bool:
    """Whether ``pattern`` lies entirely within bytes [start, end) of the file; ``tail`` holds its bytes from
    ``tail_start`` on (already read).

    The tail is searched first (the common case). Otherwise the rest of [start, end) is read in chunks taken
    alternately from its end (data appended after the end marker: the first occurrence found there proves the
    end marker came before it) and from its start (the marker right after the image data), growing from
    SEARCH_FIRST_BYTES to SEARCH_MAX_BYTES; a file without the pattern is read once in full.
    """
    overlap = len(pattern) - 1
    if pattern in tail[max(0, start - tail_start):max(0, end - tail_start)]:
        return True
    low, high = start, min(end, tail_start + overlap)  # [low, high) is still to search
    chunk = SEARCH_FIRST_BYTES
    while high - low > overlap:
        begin = max(low, high - chunk)
        if pattern in pread(descriptor, high - begin, begin):
            return True
        high = min(high, begin + overlap)
        if high - low <= overlap:
            break
        finish = min(high, low + chunk)
        if pattern in pread(descriptor, finish - low, low):
            return True
        low = max(low, finish - overlap)
        chunk = min(2 * chunk, SEARCH_MAX_BYTES)
    return False


def inspect_image_file(path: Union[Path, str], *, size: int) -> ImageFileCheck:
    """A cheap structural check of an image file (a few small reads, no decode) and its header's pixel size.

    Catches empty files, files that are not JPEG/PNG although named so, and truncated downloads, and reads the
    width and height from the PNG IHDR chunk or the JPEG frame header, so that preprocess can compare them with
    the annotation. Other formats are only checked for being non-empty (size unknown); the decoder has the last
    word on all files.

    Truncation rule — a file is complete when its end marker occurs after the image data, wherever that is:

    - JPEG: the bytes FF D9 (EOI) at or after the start of the first scan's entropy-coded data, found by walking
      the header segments (an EXIF or Photoshop thumbnail's own FF D9 lies in an APPn segment, before it, and
      does not count). The entropy-coded data cannot contain FF D9 (an FF byte there is followed by 00 or a
      restart marker), nor can a valid DHT table between progressive scans, so in a file cut anywhere before its
      EOI no FF D9 follows the scan start: *any* FF D9 after it — the EOI itself, or one inside data appended
      after the EOI (a motion photo's video) — proves the image data is complete.
    - PNG: the IEND chunk (length 0, "IEND", then its 4-byte CRC) anywhere after the signature; a cut file has
      none, except by a 2^-64 coincidence inside compressed data.

    Cost: the head and the last TAIL_BYTES (plus a BLOCK_BYTES read when the JPEG headers reach beyond the head,
    as behind a large EXIF block); only when the end marker is not in the tail — a truncated file, or data
    appended after the end — is the file searched further (see _occurs_in): an appended video usually holds an
    FF D9 within its last few dozen KiB; a truncated file is read in full (it is refused).
    """
    if size == 0:
        return ImageFileCheck("image file is empty (0 bytes)")
    name = os.path.basename(path)
    if not name.lower().endswith((".jpg", ".jpeg", ".png")):
        return ImageFileCheck(None)
    # Unbuffered positional reads on a descriptor: preprocess runs this for every image of a split (100k+), where
    # a buffered file object's set-up would cost more than the reads.
    try:
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    except OSError as error:
        return ImageFileCheck(f"image file cannot be read: {error.strerror}")
    try:
        head = pread(descriptor, HEAD_BYTES, 0)
        tail_start = max(0, size - TAIL_BYTES)
        tail = head[tail_start:] if size <= len(head) else pread(descriptor, TAIL_BYTES, tail_start)
        if head.startswith(JPEG_START):
            dimensions, scan_start, reached_scan = _jpeg_layout(descriptor, head)
            if scan_start >= size or not reached_scan and scan_start + 4 > size:  # no room left for a segment
                return ImageFileCheck("JPEG file is truncated (it ends before the image data)")
            end = tail.rfind(JPEG_END)  # the common case first, without a call
            if not (end >= 0 and tail_start + end >= scan_start
                    or _occurs_in(descriptor, JPEG_END, scan_start, size, tail, tail_start)):
                return ImageFileCheck("JPEG file is truncated (no end-of-image marker after the image data)")
            return ImageFileCheck(None, dimensions)
        if head.startswith(PNG_START):
            end = tail.rfind(PNG_END, 0, len(tail) - 4)  # its CRC must follow
            if not (end >= 0 and tail_start + end >= len(PNG_START)
                    or _occurs_in(descriptor, PNG_END, len(PNG_START), size - 4, tail, tail_start)):
                return ImageFileCheck("PNG file is truncated (no IEND chunk)")
            return ImageFileCheck(None, _png_dimensions(head))
    except OSError as error:
        return ImageFileCheck(f"image file cannot be read: {error.strerror}")
    finally:
        os.close(descriptor)
    return ImageFileCheck(f"file is not a JPEG or PNG image although named {name}")
