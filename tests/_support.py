"""Helpers shared by the tests (a plain module: a top-level `tests` package from site-packages may shadow ours)."""

import base64
import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import cv2
import numpy as np
import pytest
import yaml

os.environ.setdefault("TL_DISABLE_ANALYTICS", "true")  # code-loader telemetry stalls imports without network
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Bad-sample reports of the tests go to a scratch folder, not the user's ~/.cache (subprocesses inherit this).
os.environ.setdefault("COCO_SEG_REPORTS_DIR", tempfile.mkdtemp(prefix="coco-seg-test-reports-"))
os.environ.setdefault("COCO_SEG_CACHE_DIR", tempfile.mkdtemp(prefix="coco-seg-test-cache-"))  # the index cache

REPO_ROOT = Path(__file__).resolve().parent.parent
REAL_SAMPLE = REPO_ROOT.parent / "shared" / "coco_sample"
# The real sample's two splits, as COCO ships them: train2017 and val2017.
REAL_SPLITS = {
    "training": {"annotations": "annotations/instances_train2017.json", "images": "train2017"},
    "validation": {"annotations": "annotations/instances_val2017.json", "images": "val2017"},
}

# A 32x24 CMYK JPEG (Pillow wrote it: RGB (200, 40, 40) left half, (40, 60, 200) right half, converted to CMYK).
# Embedded because Pillow is not a dependency and OpenCV cannot write CMYK.
CMYK_JPEG = base64.b64decode(
    "/9j/7gAOQWRvYmUAZAAAAAAA/9sAQwACAQEBAQECAQEBAgICAgIEAwICAgIFBAQDBAYFBgYGBQYGBgcJCAYHCQcGBggLCAkKCgoKCgYICwwLCg"
    "wJCgoK/8AAFAgAGAAgBEMRAE0RAFkRAEsRAP/EAB8AAAEFAQEBAQEBAAAAAAAAAAABAgMEBQYHCAkKC//EALUQAAIBAwMCBAMFBQQEAAABfQEC"
    "AwAEEQUSITFBBhNRYQcicRQygZGhCCNCscEVUtHwJDNicoIJChYXGBkaJSYnKCkqNDU2Nzg5OkNERUZHSElKU1RVVldYWVpjZGVmZ2hpanN0dX"
    "Z3eHl6g4SFhoeIiYqSk5SVlpeYmZqio6Slpqeoqaqys7S1tre4ubrCw8TFxsfIycrS09TV1tfY2drh4uPk5ebn6Onq8fLz9PX29/j5+v/aAA4E"
    "QwBNAFkASwAAPwD9IK/J+vyfr9/KKKKK/l/r1Cv6gKKKKKK/qAry+v5f6KKKKK/l/r1Cv6gKKKKKK/qAry+v5f6KKKKK/l/r1Cv6gKKKKKK//9"
    "k=")

requires_real_sample = pytest.mark.skipif(not REAL_SAMPLE.is_dir(),
                                          reason=f"real COCO sample not present at {REAL_SAMPLE} (CI has it)")


def write_config(folder: Path, tree: dict[str, Any], name: str = "config.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


def data_tree(root: Path, *, splits: Optional[dict] = None, **extra: Any) -> dict[str, Any]:
    """A config tree for the dataset at ``root`` (2017 layout unless ``splits`` given)."""
    data: dict[str, Any] = {"root": str(root)}
    if splits is not None:
        data["splits"] = splits
    return {"data": data, **extra}


CHROMIUM = Path("/usr/bin/chromium")  # Debian's package; Playwright is pointed at it and never downloads a browser
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def require_chromium() -> None:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: the report's browser tests need Debian's Chromium — install it "
                    "with `apt-get install chromium` (scripts/setup.sh does; never `playwright install`)")


@contextlib.contextmanager
def report_page(path: Path) -> Iterator[tuple[Any, list[str], list[str]]]:
    """Open a report in headless Chromium once it is ready: yields (page, errors, requests), errors being console
    errors and uncaught page errors, requests every URL the page asked for."""
    require_chromium()
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    requests: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("console", lambda m: errors.append(f"console: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(path.as_uri())
            page.wait_for_function("window.cocoSegReport && (window.cocoSegReport.ready || window.cocoSegReport.error)",
                                   timeout=30_000)
            yield page, errors, requests
        finally:
            browser.close()


def render_report(path: Path, *, map_div_id: str = "latent-map") -> dict[str, Any]:
    """Open a report; return its ready state, the number of map points, the errors and the requests."""
    with report_page(path) as (page, errors, requests):
        state = page.evaluate("window.cocoSegReport")
        points = page.evaluate(f"document.getElementById('{map_div_id}').data.reduce((s, t) => s + t.x.length, 0)")
    return {"state": state, "points": points, "errors": errors, "requests": requests}


def subprocess_env(*, home: Optional[Path] = None, **extra: str) -> dict[str, str]:
    """A minimal, explicit environment for the CLI and binder subprocesses of the tests."""
    return {"TL_DISABLE_ANALYTICS": "true", "TF_CPP_MIN_LOG_LEVEL": "2", "PATH": "/usr/bin:/bin",
            "HOME": str(home or Path.home()), "COCO_SEG_REPORTS_DIR": os.environ["COCO_SEG_REPORTS_DIR"],
            "COCO_SEG_CACHE_DIR": os.environ["COCO_SEG_CACHE_DIR"], **extra}


def corrupt_jpeg_middle(path: Path) -> None:
    """Zero everything between the frame header and the end marker: the header (size) and the trailer stay valid,
    so preprocess's checks pass, but the decoder finds no tables and no scan."""
    data = path.read_bytes()
    frame = data.index(b"\xff\xc0")
    frame_end = frame + 2 + int.from_bytes(data[frame + 2:frame + 4], "big")
    path.write_bytes(data[:frame_end] + bytes(len(data) - frame_end - 2) + data[-2:])
    assert cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_UNCHANGED) is None, "fixture must not decode"


# --- images of every pixel layout, in a dataset ---------------------------------------------------------------

PATTERN_SIZE = (32, 24)  # (width, height) of CMYK_JPEG and of every variant written from PATTERN
PATTERN = np.zeros((24, 32, 3), np.uint8)
PATTERN[:, :16] = (200, 40, 40)
PATTERN[:, 16:] = (40, 60, 200)
PATTERN_BGR = PATTERN[..., ::-1].copy()

LAYOUT_VARIANTS = {
    "16-bit PNG": (".png", lambda path: cv2.imwrite(str(path), PATTERN_BGR.astype(np.uint16) * 257)),
    "RGBA PNG": (".png", lambda path: cv2.imwrite(str(path), np.dstack([PATTERN_BGR, np.full((24, 32), 90, np.uint8)]))),
    "CMYK JPEG": (".jpg", lambda path: path.write_bytes(CMYK_JPEG)),
    "grayscale JPEG": (".jpg", lambda path: cv2.imwrite(str(path), cv2.cvtColor(PATTERN_BGR, cv2.COLOR_BGR2GRAY))),
}


def write_layout_variants(root: Path, images: list[dict]) -> dict[int, str]:
    """Replace the training images ``images`` (entries of root's instances_train2017.json) by one file of each
    LAYOUT_VARIANTS layout (32x24, one person polygon each); the new file name of each image id."""
    file_names = {}
    for image, (suffix, write) in zip(images, LAYOUT_VARIANTS.values()):
        (root / "train2017" / image["file_name"]).unlink()
        file_names[image["id"]] = Path(image["file_name"]).with_suffix(suffix).name
        write(root / "train2017" / file_names[image["id"]])
    path = root / "annotations" / "instances_train2017.json"
    dataset = json.loads(path.read_text())
    for entry in dataset["images"]:
        if entry["id"] in file_names:
            entry.update(file_name=file_names[entry["id"]], width=PATTERN_SIZE[0], height=PATTERN_SIZE[1])
    dataset["annotations"] = [a for a in dataset["annotations"] if a["image_id"] not in file_names]
    dataset["annotations"] += [{"id": 900_000 + n, "image_id": image_id, "category_id": 1, "iscrowd": 0,
                                "area": 96.0, "bbox": [4, 4, 8, 12], "segmentation": [[4, 4, 12, 4, 12, 16, 4, 16]]}
                               for n, image_id in enumerate(file_names)]
    path.write_text(json.dumps(dataset))
    return file_names
