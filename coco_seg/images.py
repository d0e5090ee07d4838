"""Image files to RGB uint8, whatever the file holds, and image paths confined to their folder.

Decoding uses OpenCV with IMREAD_UNCHANGED so that EXIF orientation is *not* applied: COCO polygons are in the
stored pixel grid. The result is then normalised: 16-bit → 8-bit, grayscale → three equal channels, alpha dropped,
BGR → RGB.
"""

import os
from pathlib import Path, PurePosixPath
from typing import Optional

import cv2
import numpy as np


class ImageDecodeError(ValueError):
    """An image file is missing, empty, truncated or not an image."""


def decode_rgb(path: Path) -> np.ndarray:
    """Read ``path`` and return an (H, W, 3) uint8 RGB array."""
    try:
        encoded = np.fromfile(path, dtype=np.uint8)
    except OSError as error:
        raise ImageDecodeError(f"cannot read image file {path}: {error.strerror}") from None
    if encoded.size == 0:
        raise ImageDecodeError(f"image file {path} is empty (0 bytes)")
    image = cv2.imdecode(encoded, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ImageDecodeError(f"image file {path} cannot be decoded (corrupt or not an image)")
    return to_rgb_uint8(image, source=path)


def to_rgb_uint8(image: np.ndarray, *, source: object = "image") -> np.ndarray:
    """Normalise an OpenCV-decoded array (gray, BGR, BGRA; 8 or 16 bit) to (H, W, 3) uint8 RGB."""
    if image.dtype == np.uint16:
        image = (image.astype(np.float32) / 257.0).round().astype(np.uint8)
    elif image.dtype != np.uint8:
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


def confined_path(folder: Path, file_name: str, *, resolve_links: bool = True) -> Path:
    """Join ``file_name`` to ``folder``, refusing names that escape it.

    Absolute names and ``..`` parts are refused outright. With ``resolve_links`` the path is resolved (symlinks
    followed) and must stay inside the resolved folder; callers that already know the entry is a plain file skip
    that system call. Raises ValueError with the reason.
    """
    relative = PurePosixPath(file_name.replace("\\", "/"))
    if relative.is_absolute() or os.path.isabs(file_name):
        raise ValueError(f"file name {file_name!r} is an absolute path; it must be relative to the image folder")
    if ".." in relative.parts:
        raise ValueError(f"file name {file_name!r} contains '..' and would escape the image folder")
    path = folder.joinpath(*relative.parts)
    if resolve_links:
        target = path.resolve()
        if not target.is_relative_to(folder.resolve()):
            raise ValueError(f"file {path} resolves to {target}, outside the image folder {folder}")
    return path


JPEG_START, JPEG_END = b"\xff\xd8\xff", b"\xff\xd9"
PNG_START, PNG_END = b"\x89PNG\r\n\x1a\n", b"IEND"
TAIL_BYTES = 1024  # encoders may append padding after the end marker; look for it near the end, not at it


def image_file_problem(path: Path, *, size: int) -> Optional[str]:
    """A cheap structural check of an image file (two small reads, no decode): what is wrong, or None.

    Catches empty files, files that are not JPEG/PNG although named so, and truncated downloads (end marker
    missing). Other formats are only checked for being non-empty; the decoder has the last word on all files.
    """
    if size == 0:
        return "image file is empty (0 bytes)"
    suffix = path.suffix.lower()
    if suffix not in (".jpg", ".jpeg", ".png"):
        return None
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
            handle.seek(max(0, size - TAIL_BYTES))
            tail = handle.read(TAIL_BYTES)
    except OSError as error:
        return f"image file cannot be read: {error.strerror}"
    if head.startswith(JPEG_START):
        return None if JPEG_END in tail else "JPEG file is truncated (no end-of-image marker)"
    if head.startswith(PNG_START):
        return None if PNG_END in tail else "PNG file is truncated (no IEND chunk)"
    return f"file is not a JPEG or PNG image although named {path.name}"
