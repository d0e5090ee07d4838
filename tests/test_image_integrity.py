"""Image integrity: JPEGs damaged in their middle are refused at decode, files with data appended after their end
marker are accepted, truncated files are still refused at preprocess — on generated files and on the real sample.

Rules under test (coco_seg/images.py):
- decode_rgb refuses a JPEG for which libjpeg reports corrupt data ("Corrupt JPEG data: …", "Premature end of
  JPEG file"); libjpeg writes those warnings to fd 2, which decode_rgb captures around cv2.imdecode. Damage that
  libjpeg itself cannot notice (a few flipped bits after which the Huffman decoder happens to resynchronise) is
  out of reach: JPEG has no checksum. The damages below are ones libjpeg always notices.
- PNG damage is refused by libpng already (chunk CRC, zlib Adler-32): locked in here.
- inspect_image_file calls a JPEG complete when an FF D9 occurs at or after the start of its first scan's data
  (so an EXIF thumbnail's EOI does not count), and a PNG when it holds an IEND chunk, wherever — so data appended
  after the end marker (motion photos) is accepted and a cut file is not.
"""

import json
import os
import random
import threading
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from coco_seg.images import JPEG_END, TAIL_BYTES, ImageDecodeError, decode_rgb, inspect_image_file
from _support import CMYK_JPEG, REAL_SAMPLE, requires_real_sample

CORRUPT = r"the JPEG data is corrupt \(libjpeg: (Corrupt JPEG data|Premature end of JPEG file)"
JPEG_TRUNCATED = "JPEG file is truncated (no end-of-image marker after the image data)"
JPEG_HEADER_TRUNCATED = "JPEG file is truncated (it ends before the image data)"
PNG_TRUNCATED = "PNG file is truncated (no IEND chunk)"

# --- generated files -------------------------------------------------------------------------------------------

def photo(width: int = 320, height: int = 240, seed: int = 0) -> np.ndarray:
    """A photo-like BGR image: smooth colour waves, sensor noise, two solid shapes."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.dstack([128 + 100 * np.sin(x / 17 + c) * np.cos(y / 23 - c) for c in range(3)])
    image += rng.normal(0, 12, image.shape)
    cv2.circle(image, (width // 3, height // 2), height // 4, (20, 200, 60), -1)
    cv2.rectangle(image, (width // 2, height // 5), (width - 20, height - 30), (230, 40, 90), -1)
    return np.clip(image, 0, 255).astype(np.uint8)


def encoded(suffix: str, pixels: np.ndarray, *params: int) -> bytes:
    ok, data = cv2.imencode(suffix, pixels, [*params])
    assert ok
    return data.tobytes()


def segment(marker: int, payload: bytes) -> bytes:
    return bytes((0xFF, marker)) + (len(payload) + 2).to_bytes(2, "big") + payload


def exif_with_thumbnail(thumbnail: bytes) -> bytes:
    """An APP1 EXIF segment whose IFD1 holds ``thumbnail`` (a whole JPEG, FF D8 … FF D9), as cameras write."""
    ifd0 = (1).to_bytes(2, "little") + (0x0112).to_bytes(2, "little") + (3).to_bytes(2, "little") \
        + (1).to_bytes(4, "little") + (1).to_bytes(4, "little") + (26).to_bytes(4, "little")  # orientation 1
    offset = 26 + 2 + 2 * 12 + 4
    ifd1 = (2).to_bytes(2, "little") \
        + (0x0201).to_bytes(2, "little") + (4).to_bytes(2, "little") + (1).to_bytes(4, "little") \
        + offset.to_bytes(4, "little") \
        + (0x0202).to_bytes(2, "little") + (4).to_bytes(2, "little") + (1).to_bytes(4, "little") \
        + len(thumbnail).to_bytes(4, "little") + (0).to_bytes(4, "little")
    tiff = b"II*\x00" + (8).to_bytes(4, "little") + ifd0 + ifd1
    assert len(tiff) == offset
    return segment(0xE1, b"Exif\x00\x00" + tiff + thumbnail)


def with_app_segments(jpeg: bytes, thumbnail_size: tuple[int, int] = (160, 120)) -> bytes:
    """``jpeg`` behind an EXIF block with a thumbnail, an APP2, a Photoshop APP13 and a comment, the last two
    holding FF D9 bytes — all before the first scan, where an FF D9 proves nothing."""
    thumbnail = encoded(".jpg", cv2.resize(photo(), thumbnail_size, interpolation=cv2.INTER_AREA))
    extra = (exif_with_thumbnail(thumbnail) + segment(0xE2, b"FPXR\x00" + bytes(200))
             + segment(0xED, b"Photoshop 3.0\x00" + b"\xff\xd8\xff\xdb" + bytes(50) + b"\xff\xd9")
             + segment(0xFE, b"written by a test \xff\xd9 \xff\xd9"))
    return jpeg[:2] + extra + jpeg[2:]


def scan_start(jpeg: bytes) -> int:
    """Where the first scan's entropy-coded data starts: after the SOS segment reached by the segment chain."""
    offset = 2
    while True:
        while jpeg[offset + 1] == 0xFF:  # fill bytes
            offset += 1
        length = int.from_bytes(jpeg[offset + 2:offset + 4], "big")
        if jpeg[offset + 1] == 0xDA:
            return offset + 2 + length
        offset += 2 + length


BGR = photo()
JPEGS = {
    "baseline": encoded(".jpg", BGR, cv2.IMWRITE_JPEG_QUALITY, 90),
    "progressive": encoded(".jpg", BGR, cv2.IMWRITE_JPEG_QUALITY, 90, cv2.IMWRITE_JPEG_PROGRESSIVE, 1),
    "restart intervals": encoded(".jpg", BGR, cv2.IMWRITE_JPEG_QUALITY, 90, cv2.IMWRITE_JPEG_RST_INTERVAL, 8),
    "progressive with restarts": encoded(".jpg", BGR, cv2.IMWRITE_JPEG_PROGRESSIVE, 1,
                                         cv2.IMWRITE_JPEG_RST_INTERVAL, 4),
    "optimized Huffman": encoded(".jpg", BGR, cv2.IMWRITE_JPEG_QUALITY, 90, cv2.IMWRITE_JPEG_OPTIMIZE, 1),
    "grayscale": encoded(".jpg", cv2.cvtColor(BGR, cv2.COLOR_BGR2GRAY), cv2.IMWRITE_JPEG_QUALITY, 90),
    "4:4:4": encoded(".jpg", BGR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444),
    "EXIF thumbnail and APPn": with_app_segments(encoded(".jpg", BGR, cv2.IMWRITE_JPEG_QUALITY, 90)),
}
PNGS = {
    "RGB PNG": encoded(".png", BGR),
    "grayscale PNG": encoded(".png", cv2.cvtColor(BGR, cv2.COLOR_BGR2GRAY)),
    "16-bit PNG": encoded(".png", BGR.astype(np.uint16) * 257),
    "RGBA PNG": encoded(".png", np.dstack([BGR, np.full(BGR.shape[:2], 200, np.uint8)])),
}
VALID = {**JPEGS, "CMYK": CMYK_JPEG, **PNGS}


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def check(path: Path):
    return inspect_image_file(path, size=path.stat().st_size)


def real_images() -> list[Path]:
    return sorted(path for folder in ("train2017", "val2017") for path in (REAL_SAMPLE / folder).iterdir()
                  if path.suffix.lower() in (".jpg", ".jpeg", ".png"))


# --- valid files are accepted ------------------------------------------------------------------------------------

def test_the_generated_variants_are_what_they_claim():
    def has_segment(jpeg: bytes, marker: bytes) -> bool:
        return marker in jpeg[:scan_start(jpeg)]

    assert has_segment(JPEGS["progressive"], b"\xff\xc2") and has_segment(JPEGS["baseline"], b"\xff\xc0")
    assert has_segment(JPEGS["restart intervals"], b"\xff\xdd") and b"\xff\xd0" in JPEGS["restart intervals"]
    assert has_segment(JPEGS["progressive with restarts"], b"\xff\xdd")
    assert JPEGS["progressive"].count(b"\xff\xda") > 1  # several scans
    frame = JPEGS["grayscale"].index(b"\xff\xc0")
    assert JPEGS["grayscale"][frame + 9] == 1  # one component
    frame = JPEGS["4:4:4"].index(b"\xff\xc0")
    assert JPEGS["4:4:4"][frame + 11] == 0x11  # luma sampled 1x1
    exif = JPEGS["EXIF thumbnail and APPn"]
    assert exif[2:4] == b"\xff\xe1" and exif.find(b"\xff\xd8", 4) < exif.find(JPEG_END) < scan_start(exif)
    assert CMYK_JPEG[CMYK_JPEG.index(b"\xff\xc0") + 9] == 4  # four components



@pytest.mark.parametrize("name", list(VALID))
def test_valid_generated_images_are_accepted(tmp_path, capfd, name):
    data = VALID[name]
    path = write(tmp_path, "image.png" if name in PNGS else "image.jpg", data)
    expected_size = (32, 24) if name == "CMYK" else (320, 240)
    result = check(path)
    assert result.problem is None and result.dimensions == expected_size
    image, size = decode_rgb(path)
    assert size == expected_size and image.shape == (expected_size[1], expected_size[0], 3)
    if name != "CMYK":  # the pixels of OpenCV's own 8-bit decode (for the 16-bit PNG: of the 8-bit original)
        reference = cv2.imdecode(np.frombuffer(PNGS["RGB PNG"] if name == "16-bit PNG" else data, np.uint8),
                                 cv2.IMREAD_COLOR)
        np.testing.assert_array_equal(image, cv2.cvtColor(reference, cv2.COLOR_BGR2RGB))
    assert capfd.readouterr().err == ""  # nothing on stderr: no warning, and the capture left nothing behind


@requires_real_sample
def test_every_real_sample_image_is_accepted():
    paths = real_images()
    assert len(paths) >= 300
    for path in paths:
        result = check(path)
        image, size = decode_rgb(path)
        assert result.problem is None and result.dimensions == size, path
        assert image.dtype == np.uint8 and image.shape == (size[1], size[0], 3), path


def test_a_benign_libjpeg_warning_is_passed_on_not_refused(tmp_path, capfd):
    """A warning about metadata (here an unknown JFIF version) is not corruption: the image is served and the
    warning still reaches stderr."""
    data = bytearray(JPEGS["baseline"])
    assert data[6:11] == b"JFIF\x00"
    data[11] = 3  # JFIF major version 3
    image, _ = decode_rgb(write(tmp_path, "jfif3.jpg", bytes(data)))
    np.testing.assert_array_equal(image, decode_rgb(write(tmp_path, "plain.jpg", JPEGS["baseline"]))[0])
    assert capfd.readouterr().err == "Warning: unknown JFIF revision number 3.01\n"


# --- JPEGs damaged in their middle are refused at decode ----------------------------------------------------------

def _middle(jpeg: bytes) -> int:
    return (scan_start(jpeg) + len(jpeg) - 2) // 2


def overwrite(jpeg: bytes, count: int, seed: int = 0) -> bytes:
    """``count`` bytes in the middle of the scan data replaced by random garbage."""
    middle, rng = _middle(jpeg), random.Random(seed)
    return jpeg[:middle] + bytes(rng.randrange(256) for _ in range(count)) + jpeg[middle + count:]


def delete(jpeg: bytes, count: int, seed: int = 0) -> bytes:
    """``count`` bytes in the middle of the scan data removed (the file shrinks; its end marker stays)."""
    middle = _middle(jpeg)
    return jpeg[:middle] + jpeg[middle + count:]


def flip_bits(jpeg: bytes, count: int, seed: int = 0) -> bytes:
    """``count`` random bits of the scan data inverted."""
    start, rng, data = scan_start(jpeg), random.Random(seed), bytearray(jpeg)
    for _ in range(count):
        data[rng.randrange(start, len(jpeg) - 2)] ^= 1 << rng.randrange(8)
    return bytes(data)


def cut_scan_end(jpeg: bytes, count: int = 64, seed: int = 0) -> bytes:
    """The last ``count`` bytes of the scan data removed, the end marker kept."""
    return jpeg[:-2 - count] + jpeg[-2:]


DAMAGES = {
    "1000 bytes overwritten": lambda jpeg, seed: overwrite(jpeg, 1000, seed),
    "200 bytes overwritten": lambda jpeg, seed: overwrite(jpeg, 200, seed),
    "1000 bytes deleted": lambda jpeg, seed: delete(jpeg, 1000, seed),
    "300 bytes deleted": lambda jpeg, seed: delete(jpeg, 300, seed),
    "64 bits flipped": lambda jpeg, seed: flip_bits(jpeg, 64, seed),
    "end of scan cut, EOI kept": lambda jpeg, seed: cut_scan_end(jpeg, 64, seed),
}
# Progressive files answer damage to their first scans with a broken scan sequence, which libjpeg treats as an
# error (no image at all) rather than a warning; flipped bits in them are tested through the other encodings.
DAMAGE_CASES = [(encoding, damage) for encoding in JPEGS for damage in DAMAGES
                if not (encoding.startswith("progressive") and damage in ("200 bytes overwritten", "64 bits flipped"))]


@pytest.mark.parametrize("encoding, damage", DAMAGE_CASES)
def test_a_jpeg_damaged_in_its_middle_is_refused_at_decode(tmp_path, capfd, encoding, damage):
    original = JPEGS[encoding]
    path = write(tmp_path, "damaged.jpg", DAMAGES[damage](original, 0))
    # OpenCV alone serves the garbage (or, for some progressive damage, nothing) without raising
    assert cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_UNCHANGED) is not None or "progressive" in encoding
    capfd.readouterr()
    result = check(path)  # header and end marker intact: preprocess cannot tell; the decoder must
    assert result.problem is None and result.dimensions == (320, 240)
    with pytest.raises(ImageDecodeError, match=rf"damaged\.jpg.*{CORRUPT}"):
        decode_rgb(path)
    assert "Corrupt JPEG data" not in capfd.readouterr().err  # in the message, not on stderr


def test_the_message_says_what_libjpeg_said(tmp_path):
    path = write(tmp_path, "cut.jpg", cut_scan_end(JPEGS["baseline"]))
    with pytest.raises(ImageDecodeError) as raised:
        decode_rgb(path)
    assert str(raised.value) == (f"image file {path}: the JPEG data is corrupt (libjpeg: Corrupt JPEG data: "
                                 "premature end of data segment); its decoded pixels would be garbage")


@requires_real_sample
def test_every_real_sample_jpeg_damaged_in_its_middle_is_refused(tmp_path):
    path = tmp_path / "damaged.jpg"
    for index, original_path in enumerate(p for p in real_images() if p.suffix == ".jpg"):
        original = original_path.read_bytes()
        for damage in ("1000 bytes overwritten", "1000 bytes deleted", "end of scan cut, EOI kept"):
            path.write_bytes(DAMAGES[damage](original, index))
            assert check(path).problem is None, (original_path, damage)
            with pytest.raises(ImageDecodeError, match=CORRUPT):
                decode_rgb(path)


def _png_chunks(png: bytes) -> list[tuple[bytes, int, int]]:
    """(type, offset of the chunk, data length) of every chunk."""
    chunks, offset = [], 8
    while offset < len(png):
        length = int.from_bytes(png[offset:offset + 4], "big")
        chunks.append((png[offset + 4:offset + 8], offset, length))
        offset += 12 + length
    return chunks


@pytest.mark.parametrize("fix_crc", [False, True], ids=["CRC mismatch", "CRC recomputed"])
def test_a_png_with_a_corrupt_idat_is_refused_at_decode(tmp_path, fix_crc):
    png = bytearray(PNGS["RGB PNG"])
    idats = [chunk for chunk in _png_chunks(bytes(png)) if chunk[0] == b"IDAT"]
    _, offset, length = idats[len(idats) // 2]
    data_start = offset + 8
    for i in range(data_start + length // 2, data_start + length // 2 + 16):
        png[i] ^= 0x5A
    if fix_crc:  # only the zlib stream (Adler-32, filter bytes) can tell
        crc = zlib.crc32(bytes(png[offset + 4:data_start + length]))
        png[data_start + length:data_start + length + 4] = crc.to_bytes(4, "big")
    path = write(tmp_path, "damaged.png", bytes(png))
    assert check(path).problem is None
    with pytest.raises(ImageDecodeError, match=r"damaged\.png cannot be decoded \(corrupt or not an image\)"):
        decode_rgb(path)


# --- data after the end marker is accepted ----------------------------------------------------------------------

def motion_video(size: int = 2 << 20, seed: int = 0) -> bytes:
    """What a phone appends to a motion photo: an MP4-like blob holding FF D8 / FF D9 patterns, none in its last
    TAIL_BYTES (so the end marker is not found where a plain file has it)."""
    rng = np.random.default_rng(seed)
    header = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom"
    data = bytearray(header + rng.integers(0, 256, size, np.uint8).tobytes())
    for position in (1000, size // 3, size // 2, size - 50_000):
        data[position:position + 4] = b"\xff\xd8\xff\xe0"
        data[position + 100:position + 102] = JPEG_END
    data[-TAIL_BYTES:] = data[-TAIL_BYTES:].replace(b"\xff", b"\xfe")
    return bytes(data)


def no_marker_bytes(size: int = 2 << 20, seed: int = 1) -> bytes:
    """Arbitrary appended bytes without a single FF (so no FF D9 and no IEND): found only from the front."""
    return np.random.default_rng(seed).integers(0, 255, size, np.uint8).tobytes()


TRAILERS = {
    "2 MiB motion-photo video": motion_video(),
    "2 MiB without any FF byte": no_marker_bytes(),
    "2 MiB of zeros": bytes(2 << 20),
    "a second JPEG (MPF style)": encoded(".jpg", cv2.resize(BGR, (64, 48))),
    "3 KiB text": b"padding " * 384,
    "100 bytes": bytes(range(100)),
}
TRAILING_CASES = [(image, trailer) for image in ("baseline", "progressive", "EXIF thumbnail and APPn", "RGB PNG",
                                                 "16-bit PNG") for trailer in TRAILERS]


@pytest.mark.parametrize("image, trailer", TRAILING_CASES)
def test_data_after_the_end_marker_is_accepted_with_identical_pixels(tmp_path, image, trailer):
    original = VALID[image]
    suffix = ".png" if image in PNGS else ".jpg"
    plain = write(tmp_path, "plain" + suffix, original)
    padded = write(tmp_path, "padded" + suffix, original + TRAILERS[trailer])
    assert check(padded).problem is None and check(padded).dimensions == (320, 240)
    pixels, size = decode_rgb(padded)
    expected, expected_size = decode_rgb(plain)
    assert size == expected_size
    np.testing.assert_array_equal(pixels, expected)


def test_a_png_trailer_holding_iend_text_is_accepted(tmp_path):
    path = write(tmp_path, "padded.png", PNGS["RGB PNG"] + b"IEND" * 300 + bytes(2000))
    assert check(path).problem is None
    np.testing.assert_array_equal(decode_rgb(path)[0], decode_rgb(write(tmp_path, "plain.png", PNGS["RGB PNG"]))[0])


@requires_real_sample
def test_every_real_sample_image_as_a_motion_photo_is_accepted_with_identical_pixels(tmp_path):
    video = motion_video(seed=7)
    padded = tmp_path / "motion.jpg"
    for original in real_images():
        padded.write_bytes(original.read_bytes() + video)
        result = check(padded)
        pixels, size = decode_rgb(padded)
        assert result.problem is None and result.dimensions == size, original
        np.testing.assert_array_equal(pixels, decode_rgb(original)[0], err_msg=str(original))


# --- truncated files are still refused --------------------------------------------------------------------------

def small_jpeg_with_big_thumbnail() -> bytes:
    """A small main image behind a large EXIF thumbnail: cut 200 bytes into its scan, the file's last KiB still
    holds the thumbnail's FF D9."""
    return with_app_segments(encoded(".jpg", photo(64, 48, seed=3), cv2.IMWRITE_JPEG_QUALITY, 95))


def _before_second_scan(jpeg: bytes) -> int:
    return jpeg.index(b"\xff\xda", scan_start(jpeg))


TRUNCATIONS = {
    "baseline cut in half": (lambda: JPEGS["baseline"][:len(JPEGS["baseline"]) // 2], JPEG_TRUNCATED),
    "restart intervals cut in half": (lambda: JPEGS["restart intervals"][:len(JPEGS["restart intervals"]) // 2],
                                      JPEG_TRUNCATED),
    "end-of-image marker missing": (lambda: JPEGS["baseline"][:-2], JPEG_TRUNCATED),
    "half of the marker left": (lambda: JPEGS["baseline"][:-1], JPEG_TRUNCATED),
    "cut right after the scan header": (lambda: JPEGS["baseline"][:scan_start(JPEGS["baseline"])],
                                        JPEG_HEADER_TRUNCATED),
    "cut in the header segments": (lambda: JPEGS["baseline"][:300], JPEG_HEADER_TRUNCATED),
    "progressive cut between scans": (lambda: JPEGS["progressive"][:_before_second_scan(JPEGS["progressive"])],
                                      JPEG_TRUNCATED),
    "EXIF thumbnail, cut in the thumbnail": (lambda: JPEGS["EXIF thumbnail and APPn"][:3000], JPEG_HEADER_TRUNCATED),
    "EXIF thumbnail, cut in the main scan": (
        lambda: small_jpeg_with_big_thumbnail()[:scan_start(small_jpeg_with_big_thumbnail()) + 200], JPEG_TRUNCATED),
    "PNG without IEND": (lambda: PNGS["RGB PNG"][:-12], PNG_TRUNCATED),
    "PNG cut in the IEND CRC": (lambda: PNGS["RGB PNG"][:-2], PNG_TRUNCATED),
    "PNG cut in half": (lambda: PNGS["RGB PNG"][:len(PNGS["RGB PNG"]) // 2], PNG_TRUNCATED),
}


@pytest.mark.parametrize("name", list(TRUNCATIONS))
def test_a_truncated_file_is_still_refused(tmp_path, name):
    make, problem = TRUNCATIONS[name]
    data = make()
    path = write(tmp_path, "cut.png" if name.startswith("PNG") else "cut.jpg", data)
    if "thumbnail, cut in the main scan" in name:  # the case a plain look at the tail gets wrong
        assert JPEG_END in data[-TAIL_BYTES:]
    assert check(path).problem == problem
    with pytest.raises(ImageDecodeError):  # and the decoder agrees
        decode_rgb(path)


@requires_real_sample
def test_every_real_sample_image_cut_short_is_refused(tmp_path):
    path = tmp_path / "cut.jpg"
    for original in (p for p in real_images() if p.suffix == ".jpg"):
        data = original.read_bytes()
        start = scan_start(data)
        for cut, problem in ((len(data) // 2, JPEG_TRUNCATED), (start + 10, JPEG_TRUNCATED),
                             (len(data) - 2, JPEG_TRUNCATED), (300, JPEG_HEADER_TRUNCATED if start > 300 else None)):
            if problem is None:
                continue
            path.write_bytes(data[:cut])
            assert check(path).problem == problem, (original, cut)


# --- the capture of libjpeg's warnings: threads and forks ---------------------------------------------------------

def test_concurrent_decodes_keep_their_own_warnings_and_other_output_is_passed_on(tmp_path, capfd):
    valid = write(tmp_path, "valid.jpg", JPEGS["restart intervals"])
    corrupt = write(tmp_path, "corrupt.jpg", overwrite(JPEGS["restart intervals"], 1000))
    outcomes: list[tuple[Path, str]] = []

    def decode_many(first: int) -> None:
        for i in range(40):
            path = valid if (first + i) % 2 else corrupt
            try:
                decode_rgb(path, size=64)
                outcomes.append((path, "served"))
            except ImageDecodeError as error:
                outcomes.append((path, str(error)))

    def noise() -> None:
        for i in range(300):
            os.write(2, f"other output {i}\n".encode())

    threads = [threading.Thread(target=decode_many, args=(k,)) for k in range(4)] + [threading.Thread(target=noise)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # A write that began just before a capture ended lands in the capture file late and goes out with the next
    # decode's text: one more decode hands it over.
    decode_rgb(valid, size=64)
    assert len(outcomes) == 160
    assert all(outcome == "served" for path, outcome in outcomes if path == valid)
    assert all("the JPEG data is corrupt" in outcome and "other output" not in outcome
               for path, outcome in outcomes if path == corrupt)
    err = capfd.readouterr().err
    assert sorted(err.splitlines()) == sorted(f"other output {i}" for i in range(300))  # nothing lost, nothing added


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_a_forked_child_captures_on_its_own(tmp_path):
    valid = write(tmp_path, "valid.jpg", JPEGS["baseline"])
    corrupt = write(tmp_path, "corrupt.jpg", overwrite(JPEGS["baseline"], 1000))

    def outcomes() -> list[str]:
        found = []
        for path in (corrupt, valid, corrupt):
            try:
                decode_rgb(path)
                found.append("served")
            except ImageDecodeError as error:
                found.append("corrupt" if "the JPEG data is corrupt" in str(error) else str(error))
        return found

    assert outcomes() == ["corrupt", "served", "corrupt"]  # the parent's capture file exists before the fork
    read, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        try:
            os.write(write_end, json.dumps(outcomes()).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read, "rb") as pipe:
        in_child = json.loads(pipe.read() or b"null")
    os.waitpid(child, 0)
    assert in_child == ["corrupt", "served", "corrupt"]
    assert outcomes() == ["corrupt", "served", "corrupt"]
