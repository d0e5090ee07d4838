"""Training samples decoded once by the binder's own path and stored losslessly, so that training reads them in
native TensorFlow ops that run on every core.

Why: training used to decode each sample in Python inside ``tf.numpy_function``, which holds the GIL (and JPEG
decodes are serialised anyway, see coco_seg.images' fd-2 capture), so the input pipeline ran at about one core's
speed whatever the machine had. TensorFlow's own JPEG decoder and resize are not pixel-identical to the binder's
(OpenCV, IMREAD_UNCHANGED, INTER_AREA before the colour conversion), so they cannot replace it.

Algorithm: each labeled sample goes through :func:`coco_seg.samples.decode_sample` — the very decode the engine's
encoders serve, placeholders for undecodable files included — and its model-size uint8 RGB image and uint8 label
mask are written together as one 4-channel PNG (red, green, blue = the image, alpha = the label mask; PNG is
lossless, so ``tf.io.decode_png`` returns exactly those bytes). A split's store lives under
``<cache root>/samples/<key>``; the key hashes the store format, the image size, the label configuration and the
annotation file's content, so anything that changes masks lands on a new store. ``manifest.json`` names for every
sample its PNG, its image file, that file's identity when it was read (size, mtime, ctime in ns, inode: the rule of
coco_seg.index_cache's file memo) and, for a placeholder, why it failed. Opening a store stats every image and
decodes again only the samples that are new or whose file changed, in ``workers`` processes (spawned, each over a
contiguous run of samples); decode failures come back to the opening process and enter its bad-sample ledger
exactly as an engine call's would, on every open, so a stored placeholder is never silent.

Cost: one PNG per sample (about 30 KB at 128 px for a photo, the mask nearly free), a manifest entry, and one
stat per image on every open. Two processes opening the same store at once both write complete, identical files
(each PNG and the manifest through a temporary file and a rename); the last manifest written wins.
"""

import hashlib
import json
import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional

import cv2
import numpy as np

from coco_seg.atomic import write_atomically, write_json_atomically
from coco_seg.index_cache import cache_root, content_digest, file_identity
from coco_seg.ledger import record_decode_failure
from coco_seg.samples import decode_sample
from coco_seg.split_data import BadSample, SplitData

# Bump when the decode, the mask painting or the PNG layout changes: an old store then lands on another key.
STORE_FORMAT = 1
MANIFEST_NAME = "manifest.json"
MIN_SAMPLES_PER_WORKER = 200  # below this a worker process costs more to start (about 1 s) than it saves


@dataclass(frozen=True)
class SampleStore:
    """An opened store: ``paths[i]`` is the PNG of ``split.sample_ids[i]``."""

    split: SplitData
    folder: Path
    paths: list[str]
    encoded: int  # samples decoded and written by this open (new or changed files)
    reused: int  # samples whose stored PNG was still valid
    failures: list[BadSample]  # the stored placeholders (undecodable samples), also in the split's ledger
    bytes: int  # the PNGs' total size on disk


def store_key(split: SplitData) -> str:
    """The store's key: format, image size, label configuration and the annotation file's content."""
    if not split.labeled or split.annotations_path is None:
        raise ValueError(f"split {split.name} is unlabeled: only labeled splits are stored for training")
    config = split.config
    identity = {"format": STORE_FORMAT, "image_size": config.image_size, "label_mode": config.label_mode,
                "targets": [list(t.coco_names) for t in config.target_classes],
                "background_share": config.background_share,
                "annotations_sha256": content_digest(split.annotations_path)}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]


def _identity(file: str) -> Optional[list[int]]:
    try:
        return list(file_identity(os.stat(file)))
    except OSError:  # missing: never valid, so it is decoded (to a placeholder) on every open
        return None


def _png_name(sample_id: str, file: str) -> str:
    digest = hashlib.sha256(f"{sample_id}\0{file}".encode()).hexdigest()[:24]
    return f"{digest[:2]}/{digest}.png"


def encode_rgba_png(image: np.ndarray, mask: np.ndarray) -> bytes:
    """(S, S, 3) uint8 RGB and (S, S) uint8 label mask → PNG bytes whose RGBA channels are R, G, B, mask."""
    # OpenCV takes 4-channel arrays as BGRA and writes them as the PNG's RGBA
    ok, encoded = cv2.imencode(".png", np.dstack([image[..., ::-1], mask]))
    if not ok:
        raise ValueError("OpenCV could not encode a PNG")
    return encoded.tobytes()


def _encode_samples(split: SplitData, sample_ids: list[str], folder: Path) -> dict[str, dict[str, Any]]:
    """Decode and store ``sample_ids``; their manifest entries. Runs in the opening process or in a worker."""
    entries = {}
    for sample_id in sample_ids:
        record = split.records[sample_id]
        identity = _identity(record.file)  # before the read: a file changed meanwhile is decoded again next time
        decoded = decode_sample(record, split)
        png = encode_rgba_png(decoded.image, decoded.mask)
        name = _png_name(sample_id, record.file)
        write_atomically(folder / name, lambda temp: temp.write_bytes(png))
        entries[sample_id] = {"png": name, "file": record.file, "identity": identity, "failure": decoded.failure,
                              "bytes": len(png)}
    return entries


def _quiet_worker() -> None:
    # the opening process logs and reports each failure once (record_decode_failure); a worker only returns it
    logging.getLogger("coco_seg.ledger").setLevel(logging.ERROR)


def _worker_split(split: SplitData, sample_ids: list[str]) -> SplitData:
    """The part of ``split`` a worker needs: its samples, no report to write."""
    return replace(split, records={i: split.records[i] for i in sample_ids}, skipped=[], refused=[],
                   ignored_annotations=[], failed_at_decode=dict(split.failed_at_decode), report_path=None)


def default_workers(samples: int) -> int:
    """Worker processes for ``samples`` decodes: every core this process may use, at least
    ``MIN_SAMPLES_PER_WORKER`` samples each; 1 means the opening process decodes them itself."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, samples // MIN_SAMPLES_PER_WORKER))


def _encode_in_parallel(split: SplitData, sample_ids: list[str], folder: Path,
                        workers: int) -> dict[str, dict[str, Any]]:
    if workers <= 1 or len(sample_ids) < 2:
        return _encode_samples(split, sample_ids, folder)
    # contiguous runs, a few per worker so that a slow run does not leave the others idle at the end
    runs = np.array_split(np.arange(len(sample_ids)), workers * 4)
    entries: dict[str, dict[str, Any]] = {}
    # spawn, not fork: the opening process usually runs TensorFlow, whose threads a fork would copy mid-state
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_quiet_worker) as pool:
        futures = []
        for run in runs:
            if len(run):
                ids = [sample_ids[i] for i in run]
                futures.append(pool.submit(_encode_samples, _worker_split(split, ids), ids, folder))
        try:
            for future in futures:
                entries |= future.result()
        except BrokenProcessPool:
            raise RuntimeError(
                f"a worker process storing the samples of split {split.name} died before it finished. Run from a "
                f"script, the code that starts training must sit under `if __name__ == \"__main__\":` (workers are "
                f"spawned and import the script); or pass workers=1 to decode in this process") from None
    return entries


def _read_manifest(path: Path) -> dict[str, dict[str, Any]]:
    try:
        payload = json.loads(path.read_text())
    except (OSError, ValueError):  # none yet, or unreadable: every sample is decoded again
        return {}
    if not isinstance(payload, dict) or payload.get("format") != STORE_FORMAT:
        return {}
    entries = payload.get("samples")
    return entries if isinstance(entries, dict) else {}


def _still_valid(entry: Any, file: str, folder: Path) -> bool:
    return (isinstance(entry, dict) and entry.get("file") == file and entry.get("identity") is not None
            and entry.get("identity") == _identity(file) and isinstance(entry.get("png"), str)
            and (folder / entry["png"]).is_file())


def open_sample_store(split: SplitData, *, workers: Optional[int] = None,
                      root: Optional[Path] = None) -> SampleStore:
    """Open the store of labeled ``split`` (``root``: default ``<cache root>/samples``), first decoding and writing
    every sample that is not stored yet or whose image file changed, in ``workers`` processes (default
    :func:`default_workers`). Placeholders are recorded in the split's bad-sample ledger."""
    folder = (cache_root() / "samples" if root is None else Path(root)) / store_key(split)
    manifest = _read_manifest(folder / MANIFEST_NAME)
    todo = [sample_id for sample_id, record in split.records.items()
            if not _still_valid(manifest.get(sample_id), record.file, folder)]
    if todo:
        manifest |= _encode_in_parallel(split, todo, folder,
                                        default_workers(len(todo)) if workers is None else workers)
        write_json_atomically(folder / MANIFEST_NAME, {"format": STORE_FORMAT, "samples": manifest}, indent=None)
    failures = []
    for sample_id, record in split.records.items():
        reason = manifest[sample_id]["failure"]
        if reason is not None:
            failures.append(BadSample(sample_id, record.file, reason))
            record_decode_failure(split, failures[-1])  # a no-op for a failure this process recorded already
    entries = [manifest[sample_id] for sample_id in split.records]
    return SampleStore(split=split, folder=folder, paths=[str(folder / entry["png"]) for entry in entries],
                       encoded=len(todo), reused=len(entries) - len(todo), failures=failures,
                       bytes=sum(int(entry.get("bytes", 0)) for entry in entries))
