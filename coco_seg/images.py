"""Image files to RGB uint8, whatever the file holds, and image paths confined to their folder.

Decoding uses OpenCV with IMREAD_UNCHANGED so that EXIF orientation is *not* applied: COCO polygons are in the
stored pixel grid. The result is then normalised: 16-bit → 8-bit, grayscale → three equal channels, alpha dropped,
BGR → RGB.

Preprocess does not decode: :func:`inspect_image_file` reads a few hundred bytes per file (head and tail) to catch
empty, mislabelled and truncated files and to read the stored pixel size from the PNG IHDR chunk or the JPEG frame
header, without Pillow (not a dependency) and without decoding.
"""

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Optional, Union

import cv2
import numpy as np


class ImageDecodeError(ValueError):
    """An image file is missing, empty, truncated or not an image."""


def decode_rgb(path: Union[Path, str], *, size: Optional[int] = None) -> tuple[np.ndarray, tuple[int, int]]:
    """Read ``path``; return an RGB uint8 array — (H, W, 3), or (size, size, 3) when ``size`` is given — and the
    file's own (width, height).

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
    image = cv2.imdecode(encoded, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ImageDecodeError(f"image file {path} cannot be decoded (corrupt or not an image)")
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


JPEG_START, JPEG_END = b"\xff\xd8\xff", b"\xff\xd9"
PNG_START, PNG_END = b"\x89PNG\r\n\x1a\n", b"IEND"
TAIL_BYTES = 1024  # encoders may append padding after the end marker; look for it near the end, not at it
# PNG's IHDR sits at bytes 8-24, and in most JPEGs (no large EXIF block) the frame header lies within the first few
# hundred bytes, so one read of this size usually answers; otherwise the JPEG segment chain is followed by seeks.
HEAD_BYTES = 512
MAX_JPEG_SEGMENTS = 64  # bounds the walk on a malformed file; real files reach the frame header in under 20
# Start-of-frame markers (baseline, extended, progressive, lossless; Huffman and arithmetic). C4 (DHT), C8 (JPG)
# and CC (DAC) share the range but are not frame headers.
JPEG_FRAME_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
JPEG_STANDALONE_MARKERS = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM and RST0-7 carry no length


@dataclass(frozen=True)
class ImageFileCheck:
    """What a cheap look at an image file found: a problem (None when usable) and the pixel size its header states
    ((width, height), or None when the format is not JPEG/PNG or the header does not say)."""

    problem: Optional[str]
    dimensions: Optional[tuple[int, int]] = None


def _jpeg_dimensions(head: bytes, read_at: Callable[[int, int], bytes]) -> Optional[tuple[int, int]]:
    """(width, height) from the first frame header, walking the marker segments after SOI; None when not found.
    ``head`` is the start of the file; ``read_at`` reads beyond it."""
    offset = 2
    for _ in range(MAX_JPEG_SEGMENTS):
        # most files reach the frame header within the head: slice it rather than call read_at
        marker = head[offset:offset + 4] if offset + 4 <= len(head) else read_at(offset, 4)
        if len(marker) < 2 or marker[0] != 0xFF:
            return None
        code = marker[1]
        if code == 0xFF:  # fill byte before a marker
            offset += 1
            continue
        if code in JPEG_STANDALONE_MARKERS:
            offset += 2
            continue
        if code in (0xD9, 0xDA) or len(marker) < 4:  # end of image or scan data before any frame header
            return None
        if code in JPEG_FRAME_MARKERS:
            frame = head[offset + 4:offset + 9] if offset + 9 <= len(head) else read_at(offset + 4, 5)
            if len(frame) < 5:  # sample precision (1 byte), height (2), width (2)
                return None
            height, width = int.from_bytes(frame[1:3], "big"), int.from_bytes(frame[3:5], "big")
            return (width, height) if width and height else None  # height 0 = defined later by a DNL marker
        length = int.from_bytes(marker[2:4], "big")
        if length < 2:
            return None
        offset += 2 + length
    return None


def _png_dimensions(head: bytes) -> Optional[tuple[int, int]]:
    """(width, height) from the IHDR chunk, which the PNG format requires to come first."""
    if len(head) < 24 or head[12:16] != b"IHDR":
        return None
    width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    return (width, height) if width and height else None


def _seek_and_read(descriptor: int, count: int, offset: int) -> bytes:
    os.lseek(descriptor, offset, os.SEEK_SET)
    return os.read(descriptor, count)


pread = getattr(os, "pread", _seek_and_read)  # os.pread is POSIX-only


def inspect_image_file(path: Union[Path, str], *, size: int) -> ImageFileCheck:
    """A cheap structural check of an image file (a few small reads, no decode) and its header's pixel size.

    Catches empty files, files that are not JPEG/PNG although named so, and truncated downloads (end marker
    missing), and reads the width and height from the PNG IHDR chunk or the JPEG frame header, so that preprocess
    can compare them with the annotation. Other formats are only checked for being non-empty (size unknown); the
    decoder has the last word on all files.
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
        tail = pread(descriptor, TAIL_BYTES, max(0, size - TAIL_BYTES))

        if head.startswith(JPEG_START):
            if JPEG_END not in tail:
                return ImageFileCheck("JPEG file is truncated (no end-of-image marker)")
            return ImageFileCheck(None, _jpeg_dimensions(head, lambda offset, count: pread(descriptor, count,
                                                                                            offset)))
    except OSError as error:
        return ImageFileCheck(f"image file cannot be read: {error.strerror}")
    finally:
        os.close(descriptor)
    if head.startswith(PNG_START):
        if PNG_END not in tail:
            return ImageFileCheck("PNG file is truncated (no IEND chunk)")
        return ImageFileCheck(None, _png_dimensions(head))
    return ImageFileCheck(f"file is not a JPEG or PNG image although named {name}")
