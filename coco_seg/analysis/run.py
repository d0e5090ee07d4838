"""`coco-seg analyze`: the Tensorleap analyses, offline, through the binder's own registered functions.

Algorithm:
1. Stream the split in batches through ``leap_binder``'s decorated encoders, metadata, metrics and loss (the very
   functions the engine calls) and the model (logits + an embedding). The default embedding is the one the
   Tensorleap integration registers for the platform's analysis (coco_seg.latent_space): the decoder feature map
   before the classifier, pooled per class over the ground truth (over the prediction for unlabeled samples), so
   the platform and this report cluster the same representation; ``latent_space="encoder"`` takes a named layer,
   global-average-pooled, by default the encoder's last block. Per batch, the rows (metadata, metrics, loss, uncertainty, over/under-
   segmentation counts, thumbnail) go to a parquet part file and the embeddings to a .npy part, written atomically;
   probabilities (float16, N×K×S×S) and label maps go to on-disk memmaps. A rerun skips finished batches, so an
   interrupted run loses nothing; a different model file, config, annotation file, image file, sample list or batch
   size starts afresh (the manifest keys the model and the labels by their sha256, the images by their identities).
2. From the gathered table: latent map (UMAP, PCA fallback), clusters and nearest neighbours; metadata dashboards;
   label issues with cleanlab.segmentation (confident learning on the memmapped probabilities, chunked, so the
   N×K×S×S array is never in memory); pruning and labelling suggestions. A sample whose logits or embedding
   hold NaN/Inf (a broken model; counted per sample in ``non_finite_logits``) keeps its table row but is left
   out of all of step 2, with NaN uncertainty; when every sample is such, the analysis stops with an error.
3. Write samples.parquet / samples.csv, the JSON artefacts and one self-contained report.html.
"""

import base64
import hashlib
import importlib.util
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Optional

import cv2
import numpy as np
import pandas as pd

from coco_seg import metrics
from coco_seg.atomic import prepare_folder, replace_folder, write_atomically as _atomic_write
from coco_seg.config import KERAS_SUFFIXES, ONNX_SUFFIX, Config
from coco_seg.index_cache import content_digest, file_identity
from coco_seg.visualizers import denormalize_image

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
WORK_FORMAT = 2  # 2: keyed on model, config, labels, images and batch size
THUMBNAIL_SIZE = 96
WORK_DIR = "work"  # inside the output folder: the resumable parts; moved along when the folder is replaced
# what an analysis folder holds (besides work/), so that one written before folder manifests existed counts as ours
OUTPUT_FILES = ("samples.parquet", "samples.csv", "embeddings.npy", "summary.json", "dashboards.json",
                "class_swaps.json", "pruning.json", "report.html", "labelling_suggestions.json")
GALLERY_SIZE = 24  # label-issue images shown with their panels
CLEANLAB_CHUNK = 256  # images per cleanlab call where cleanlab itself would hold per-pixel arrays for all images
CLASS_COLORS = np.array([[0, 0, 0], [220, 50, 50], [40, 110, 230], [60, 180, 75], [245, 130, 48], [145, 30, 180],
                         [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 190]], np.uint8)


def load_binder() -> ModuleType:
    """Import ``leap_binder.py`` (the engine's entry file) once; it reads the config from ``$COCO_SEG_CONFIG``."""
    if "leap_binder" in sys.modules:
        return sys.modules["leap_binder"]
    spec = importlib.util.spec_from_file_location("leap_binder", REPO_ROOT / "leap_binder.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["leap_binder"] = module
    spec.loader.exec_module(module)
    return module


LATENT_SPACES = ("tensorleap", "encoder")


def analysis_model(model_path: Path, config: Config, *, latent_space: str = "tensorleap",
                   embedding_layer: Optional[str] = None) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """images (B, S, S, 3) → (logits, embedding source), run with onnxruntime (faster than Keras on CPU at every
    batch size and input size measured, see benchmarks/inference.py).

    ``latent_space="tensorleap"``: the source is the decoder feature map (B, h, w, C), which ``stream_split`` pools
    per class like the integration's custom latent space; ``"encoder"``: the pooled (B, D) output of
    ``embedding_layer`` (default: the encoder's last block). The graph is built from the Keras model — the .h5
    that export wrote beside an .onnx — and converted to ONNX once per analysis.
    """
    if latent_space not in LATENT_SPACES:
        raise ValueError(f"latent_space must be one of {', '.join(LATENT_SPACES)}, got {latent_space!r}")
    if embedding_layer is not None and latent_space != "encoder":
        raise ValueError("embedding_layer (--embedding-layer) goes with latent_space='encoder' (--latent-space "
                         "encoder)")
    import keras
    import onnxruntime

    from coco_seg.export import CLASSIFIER_LAYER, check_model_matches_config, keras_to_onnx, load_model

    keras_path = model_path
    if model_path.suffix.lower() == ONNX_SUFFIX:
        candidates = [model_path.with_suffix(suffix) for suffix in KERAS_SUFFIXES]
        keras_path = next((p for p in candidates if p.is_file()), None)
        if keras_path is None:
            raise FileNotFoundError(f"analyze needs the Keras model for embeddings: no {candidates[0].name} or "
                                    f"{candidates[1].name} beside {model_path} (coco-seg export writes model.h5)")
    model = load_model(keras_path)
    check_model_matches_config(model, config, model_path=model_path)
    logits = model.outputs[0]  # an exported model also outputs the decoder features; the logits come first
    if latent_space == "tensorleap":
        source = model.get_layer(CLASSIFIER_LAYER).input
    else:
        # Default: the encoder's last block (block_16_project), which is what the first up-block consumes.
        layer = model.get_layer("up1_conv").input if embedding_layer is None else model.get_layer(embedding_layer).output
        source = keras.layers.GlobalAveragePooling2D(name="embedding")(layer)
    session = onnxruntime.InferenceSession(keras_to_onnx(keras.Model(model.input, [logits, source])),
                                           providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    channels = config.num_classes

    def predict(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        outputs = session.run(None, {input_name: images.astype(np.float32, copy=False)})
        # Told apart by shape, not by the output order or names tf2onnx chose: the logits are the 4-D output at
        # the model's size with one channel per class.
        first_is_logits = outputs[0].ndim == 4 and outputs[0].shape[1:] == (images.shape[1], images.shape[2],
                                                                              channels)
        return (outputs[0], outputs[1]) if first_is_logits else (outputs[1], outputs[0])

    return predict


def write_json(path: Path, payload: Any) -> None:
    _atomic_write(path, lambda temp: temp.write_text(json.dumps(_jsonable(payload), indent=1, allow_nan=False)))


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return None if not np.isfinite(value) else float(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def data_uri(image_rgb: np.ndarray, *, size: Optional[int] = None, kind: str = ".jpg") -> str:
    if size is not None:
        image_rgb = cv2.resize(image_rgb, (size, size), interpolation=cv2.INTER_AREA)
    ok, encoded = cv2.imencode(kind, np.ascontiguousarray(image_rgb[..., ::-1]))
    mime = "jpeg" if kind == ".jpg" else "png"
    return f"data:image/{mime};base64,{base64.b64encode(encoded.tobytes()).decode()}"


def colorize(labels: np.ndarray) -> np.ndarray:
    return CLASS_COLORS[np.asarray(labels) % len(CLASS_COLORS)]


def non_finite_logit_pixels(logits: np.ndarray) -> np.ndarray:
    """(N, S, S, K) logits → (N,) int64 count of pixels whose logit vector holds NaN or Inf."""
    finite = np.isfinite(logits).all(axis=-1)
    return (~finite).reshape(len(finite), -1).sum(axis=1).astype(np.int64)


def usable_rows(samples: pd.DataFrame, embeddings: np.ndarray) -> np.ndarray:
    """(N,) bool: samples whose logits and embedding are all finite. The others (a diverged or broken model's
    output) are kept in the table but left out of the map, clusters, label issues, pruning, dashboards and
    labelling suggestions, where their placeholder values would read as real results."""
    return (samples["non_finite_logits"].to_numpy() == 0) & np.isfinite(embeddings).all(axis=1)


def mean_pixel_entropy(probabilities: np.ndarray) -> np.ndarray:
    """(N, S, S, K) probabilities → (N,) mean per-pixel entropy in nats: the model's uncertainty."""
    clipped = np.clip(probabilities, 1e-7, 1.0)
    return -(clipped * np.log(clipped)).sum(axis=-1).mean(axis=(1, 2))


@dataclass
class StreamedSplit:
    samples: pd.DataFrame  # one row per sample, in sample order
    embeddings: np.ndarray  # (N, D) float32
    probabilities: Optional[np.ndarray]  # memmap (N, K, S, S) float16; None for unlabeled
    labels: Optional[np.ndarray]  # memmap (N, S, S) uint8 GT; None for unlabeled
    predicted: np.ndarray  # memmap (N, S, S) uint8 argmax


def _config_digest(config: Config) -> str:
    """Every config value (paths as strings), hashed: any change to the config keys a new analysis."""
    fields = {name: getattr(config, name) for name in config.__dataclass_fields__}
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()


def _images_digest(data: Any, sample_ids: Sequence[str]) -> str:
    """The image files' identities in sample order: size, modification and status-change times, inode. A rewrite,
    ``cp -p`` or ``rsync -t`` changes the status-change time, which no user call sets back, so a changed image is
    always seen (hashing every image's bytes would cost a second read of the whole split)."""
    digest = hashlib.sha256()
    for sample_id in sample_ids:
        path = data.records[sample_id].path
        try:
            digest.update(f"{sample_id}\0{file_identity(os.stat(path))}\n".encode())
        except OSError:
            digest.update(f"{sample_id}\0missing\n".encode())
    return digest.hexdigest()


def _manifest(split: str, sample_ids: Sequence[str], model_path: Path, config: Config, layer: str, *,
              data: Any, batch_size: int) -> dict:
    """What the resumable parts depend on; a part is reused only under an equal manifest. The model and the
    labels by their bytes, the images by their identities, the whole config, the sample list and the batch size
    (part files hold one batch each)."""
    model_files = [model_path] + ([model_path.with_suffix(s) for s in KERAS_SUFFIXES
                                   if model_path.with_suffix(s).is_file()] if model_path.suffix.lower() == ONNX_SUFFIX
                                  else [])
    annotations = getattr(data, "annotations_path", None)
    return {"format": WORK_FORMAT, "split": split, "samples": len(sample_ids),
            "sample_ids_sha256": hashlib.sha256("\n".join(sample_ids).encode()).hexdigest(),
            "model": str(model_path.resolve()),
            "model_sha256": {p.name: content_digest(p) for p in model_files},
            "config_sha256": _config_digest(config),
            "annotations_sha256": None if annotations is None else content_digest(annotations),
            "images_sha256": _images_digest(data, sample_ids), "batch_size": batch_size,
            "label_mode": config.label_mode, "classes": list(config.class_names), "image_size": config.image_size,
            "embedding": layer}


def _open_memmap(path: Path, dtype, shape: tuple[int, ...]) -> np.ndarray:
    """An .npy memmap of ``shape``, reused when the file already holds one, its blocks allocated on disk up front:
    writing into a memmap whose sparse file finds the disk full kills the process with SIGBUS, while allocating
    first turns a full disk into an OSError naming the file here (which the CLI reports in one line), and leaves
    no half-allocated file behind."""
    try:
        if not (path.is_file() and _holds(path, dtype, shape)):
            header_only = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
            del header_only  # the header is written, the rest is still a hole
        if hasattr(os, "posix_fallocate"):  # not on macOS or Windows: there the file stays sparse
            descriptor = os.open(path, os.O_RDWR)
            try:
                os.posix_fallocate(descriptor, 0, os.fstat(descriptor).st_size)
            finally:
                os.close(descriptor)
    except OSError as error:
        path.unlink(missing_ok=True)
        needed = int(np.prod(shape)) * np.dtype(dtype).itemsize
        raise OSError(error.errno, f"cannot allocate {needed} bytes for the analysis "
                                   f"({error.strerror or os.strerror(error.errno or 0)})", str(path)) from None
    return np.load(path, mmap_mode="r+")


def _holds(path: Path, dtype, shape: tuple[int, ...]) -> bool:
    try:
        array = np.load(path, mmap_mode="r")
    except (ValueError, OSError):
        return False
    return array.shape == shape and array.dtype == dtype


def stream_split(binder: ModuleType, response: Any, *, split: str, sample_ids: Sequence[str],
                 model: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
                 model_path: Path, config: Config, work: Path, batch_size: int, embedding: str,
                 progress: bool = True) -> StreamedSplit:
    """Run the binder's functions and the model over ``sample_ids``, resumably (see the module comment).

    ``embedding`` names the embedding source (it keys the resumable parts); a 4-D source from ``model`` is the
    decoder feature map, pooled per class over the ground truth (over the prediction for unlabeled samples).
    """
    from coco_seg import latent_space
    from coco_seg.analysis.segmentation_errors import segmentation_error_columns
    from coco_seg.metadata import metadata_names

    labeled = split != "unlabeled"
    manifest = _manifest(split, sample_ids, model_path, config, embedding, data=response.data, batch_size=batch_size)
    manifest_path = work / "manifest.json"
    if manifest_path.is_file() and json.loads(manifest_path.read_text()) != manifest:
        for stale in work.iterdir():  # another model, config, labels, images, samples or batch size: start afresh
            stale.unlink()
    work.mkdir(parents=True, exist_ok=True)
    write_json(manifest_path, manifest)

    count, size, num_classes = len(sample_ids), config.image_size, config.num_classes
    probabilities = _open_memmap(work / "probabilities.npy", np.float16, (count, num_classes, size, size)) \
        if labeled else None
    labels = _open_memmap(work / "labels.npy", np.uint8, (count, size, size)) if labeled else None
    predicted = _open_memmap(work / "predicted.npy", np.uint8, (count, size, size))
    names = list(metadata_names(config))
    metadata_functions = {name: binder.METADATA[name] for name in names}  # paired by name
    starts = range(0, count, batch_size)
    iterator = starts
    if progress:
        from tqdm import tqdm

        iterator = tqdm(starts, desc=f"analyze {split}", unit="batch", file=sys.stderr)
    for start in iterator:
        part = work / f"part-{start:08d}.parquet"
        if part.is_file() and (work / f"part-{start:08d}.npy").is_file():
            continue  # finished in an earlier run
        chunk = list(sample_ids[start:start + batch_size])
        images = np.stack([binder.image_encoder(i, response) for i in chunk])
        logits, embeddings = (np.asarray(t, np.float32) for t in model(images))
        ground_truth = np.stack([binder.mask_encoder(i, response) for i in chunk]) if labeled else None
        if embeddings.ndim == 4:  # the integration's custom latent space, pooled the same way
            embeddings = (latent_space.pool_by_ground_truth(embeddings, ground_truth) if labeled
                          else latent_space.pool_by_prediction(embeddings, logits))
        probs = metrics.to_probabilities(logits)
        rows: dict[str, Any] = {"row": np.arange(start, start + len(chunk)), "sample_id": chunk,
                                "file_name": [response.data.records[i].path.name for i in chunk]}
        for name, function in metadata_functions.items():
            rows[name] = [function(i, response) for i in chunk]
        rows["non_finite_logits"] = non_finite_logit_pixels(logits)
        # A pixel with NaN/Inf logits has an all-zero probability vector, whose entropy reads as certainty: such a
        # sample's uncertainty is unknown, not low.
        rows["uncertainty"] = np.where(rows["non_finite_logits"] > 0, np.nan, mean_pixel_entropy(probs))
        predicted_labels = probs.argmax(-1).astype(np.uint8)
        predicted[start:start + len(chunk)] = predicted_labels
        if labeled:
            for class_name, values in binder.iou(ground_truth, logits).items():
                rows[f"iou_{class_name}"] = values
            rows["mean_iou"] = binder.mean_iou(ground_truth, logits)
            rows["dice"] = binder.dice(ground_truth, logits)
            rows["pixel_accuracy"] = binder.pixel_accuracy(ground_truth, logits)
            rows["loss"] = binder.pixel_cross_entropy(ground_truth, logits)
            gt_labels = ground_truth.argmax(-1).astype(np.uint8)
            rows |= segmentation_error_columns(gt_labels, predicted_labels, class_names=config.class_names)
            labels[start:start + len(chunk)] = gt_labels
            probabilities[start:start + len(chunk)] = np.moveaxis(probs, -1, 1).astype(np.float16)
        rows["thumbnail"] = [data_uri(denormalize_image(image), size=THUMBNAIL_SIZE) for image in images]
        for array in (probabilities, labels, predicted):
            if array is not None:
                array.flush()
        # The memmaps are flushed before the part files exist: a part on disk means its rows are complete.
        _atomic_write(work / f"part-{start:08d}.npy", lambda temp: np.save(temp, embeddings.astype(np.float32)))
        _atomic_write(part, lambda temp: pd.DataFrame(rows).to_parquet(temp, index=False))

    parts = sorted(work.glob("part-*.parquet"))  # zero-padded start rows: name order is row order
    samples = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
    embeddings = np.concatenate([np.load(p.with_suffix(".npy")) for p in parts])
    assert samples["row"].tolist() == list(range(count)), "part files do not cover the split"
    return StreamedSplit(samples, embeddings, probabilities, labels, predicted)


@dataclass
class LabelIssues:
    image_scores: np.ndarray  # (N,) label quality 0..1, lower = more likely mislabelled
    issue_masks: np.ndarray  # (N, S, S) bool pixel issues (memmap)
    class_swaps: pd.DataFrame  # given_label, predicted_label, pixels, share


def find_label_issues(streamed: StreamedSplit, *, class_names: Sequence[str], work: Path,
                      usable: Optional[np.ndarray] = None) -> LabelIssues:
    """cleanlab.segmentation on the memmapped labels and probabilities of the ``usable`` rows (default: all).

    Confident learning estimates per-class thresholds over the whole split (one ``find_label_issues`` call, which
    batches internally); the image score is cleanlab's ``num_pixel_issues`` score, 1 − share of flagged pixels,
    taken from those split-wide issue masks (cleanlab's own ``get_label_quality_scores`` would re-estimate the
    thresholds on whatever subset it is given). The class-swap summary is cleanlab's ``common_label_issues``,
    summed over chunks of images so that probabilities are only read a chunk at a time. Rows outside ``usable``
    (non-finite model output) take no part in the thresholds: their score is NaN and their issue mask empty. They
    are copied out a chunk at a time into compacted memmaps, so the split's probabilities are never in memory.
    """
    from cleanlab.segmentation.filter import find_label_issues as cleanlab_find_label_issues
    from cleanlab.segmentation.summary import common_label_issues

    count = len(streamed.labels)
    usable = np.ones(count, bool) if usable is None else np.asarray(usable, bool)
    kept = np.flatnonzero(usable)
    labels, probabilities = streamed.labels, streamed.probabilities
    if len(kept) < count:
        labels = _open_memmap(work / "usable_labels.npy", np.uint8, (len(kept),) + labels.shape[1:])
        probabilities = _open_memmap(work / "usable_probabilities.npy", np.float16,
                                     (len(kept),) + probabilities.shape[1:])
        for start in range(0, len(kept), CLEANLAB_CHUNK):
            rows = kept[start:start + CLEANLAB_CHUNK]
            labels[start:start + len(rows)] = streamed.labels[rows]
            probabilities[start:start + len(rows)] = streamed.probabilities[rows]
        labels.flush()
        probabilities.flush()
    issue_masks = _open_memmap(work / "label_issues.npy", np.bool_, streamed.labels.shape)
    issue_masks[:] = False
    image_scores = np.full(count, np.nan)
    swaps: dict[tuple[str, str], int] = {}
    if len(kept):
        issues = cleanlab_find_label_issues(labels, probabilities, batch_size=1_000_000, n_jobs=1, verbose=False)
        issue_masks[kept] = issues
        image_scores[kept] = 1.0 - issues.reshape(len(kept), -1).mean(axis=1)
        for start in range(0, len(kept), CLEANLAB_CHUNK):
            end = min(start + CLEANLAB_CHUNK, len(kept))
            summary = common_label_issues(issues[start:end], labels[start:end],
                                          np.asarray(probabilities[start:end], np.float32),
                                          class_names=list(class_names), verbose=False)
            for row in summary.itertuples():
                key = (row.given_label, row.predicted_label)
                swaps[key] = swaps.get(key, 0) + int(row.num_pixel_issues)
        del issues
    issue_masks.flush()
    total = max(1, sum(swaps.values()))
    class_swaps = pd.DataFrame([{"given_label": g, "predicted_label": p, "pixels": n, "share": n / total}
                                for (g, p), n in sorted(swaps.items(), key=lambda item: -item[1])],
                               columns=["given_label", "predicted_label", "pixels", "share"])
    return LabelIssues(image_scores, issue_masks, class_swaps)


def planted_defect_recall(samples: pd.DataFrame, planted_path: Path, *, split: str) -> Optional[dict[str, Any]]:
    """When the data carries planted_defects.json (the generated sample): how many planted images the label-issue
    ranking puts in its top 2 × (number planted)."""
    if not planted_path.is_file():
        return None
    planted = {str(p["image_id"]) for p in json.loads(planted_path.read_text())["planted"] if p["split"] == split}
    planted &= set(samples["sample_id"])
    if not planted:
        return None
    ranked = samples.sort_values("label_issue_rank")["sample_id"].tolist()
    top = set(ranked[:2 * len(planted)])
    return {"planted": len(planted), "found_in_top": len(planted & top), "top": 2 * len(planted),
            "recall": len(planted & top) / len(planted)}


def _gallery(streamed: StreamedSplit, issues: LabelIssues, samples: pd.DataFrame, images: Callable[[str], np.ndarray],
             *, size: int) -> list[dict[str, Any]]:
    """The most likely mislabelled images with image, GT, prediction and issue-mask panels."""
    entries = []
    ranked = samples.dropna(subset=["label_issue_rank"]).sort_values("label_issue_rank")
    for row in ranked.head(GALLERY_SIZE).itertuples():
        image = images(row.sample_id)
        overlay = image.copy()
        overlay[issues.issue_masks[row.row]] = (255, 255, 0)
        entries.append({
            "sample_id": row.sample_id, "rank": int(row.label_issue_rank), "score": float(row.label_issue_score),
            "issue_share": 1.0 - float(row.label_issue_score),
            "panels": {"image": data_uri(image, size=size),
                       "ground_truth": data_uri(colorize(streamed.labels[row.row]), size=size, kind=".png"),
                       "prediction": data_uri(colorize(streamed.predicted[row.row]), size=size, kind=".png"),
                       "issues": data_uri(overlay, size=size, kind=".png")}})
    return entries


def analyze(*, model_path: Path, out_dir: Path, split: str = "validation", limit: Optional[int] = None,
            batch_size: int = 16, latent_space: str = "tensorleap", embedding_layer: Optional[str] = None,
            neighbors: int = 5, seed: int = 0,
            progress: bool = True, log: Callable[[str], None] = print,
            warn: Callable[[str], None] = lambda line: print(line, file=sys.stderr)) -> dict[str, Any]:
    """Run the whole analysis; returns the summary (also in summary.json and at the top of report.html)."""
    from coco_seg.analysis.dashboards import dashboards_to_records, metadata_dashboards
    from coco_seg.analysis.latent import build_latent_map, labelling_suggestions, pruning_suggestions, pruning_summary
    from coco_seg.analysis.report import write_report
    from coco_seg.coco_data import resolve_data_root
    from coco_seg.metadata import metadata_names

    binder = load_binder()
    config: Config = binder.CONFIG
    responses = {r.state.name: r for r in binder.preprocess()}
    if split not in responses:
        raise ValueError(f"--split must be one of {', '.join(responses)}, got {split!r}")
    response = responses[split]
    sample_ids = response.sample_ids[:limit]
    model = analysis_model(Path(model_path), config, latent_space=latent_space, embedding_layer=embedding_layer)
    embedding = latent_space if embedding_layer is None else f"{latent_space}:{embedding_layer}"
    out_dir = prepare_folder(out_dir, known=OUTPUT_FILES, carry=[WORK_DIR])  # a foreign folder: refused up front
    streamed = stream_split(binder, response, split=split, sample_ids=sample_ids, model=model,
                            model_path=Path(model_path), config=config, work=out_dir / WORK_DIR / split,
                            batch_size=batch_size, embedding=embedding, progress=progress)
    samples = streamed.samples
    log(f"streamed {len(samples)} {split} samples; building the map, dashboards and label issues")
    usable = usable_rows(samples, streamed.embeddings)
    samples["degenerate"] = ~usable
    if not usable.any():
        raise ValueError(f"the model's output is NaN or Inf in every one of the {len(samples)} samples of split "
                         f"{split}: nothing to analyse (a diverged or broken model); no report written")
    if not usable.all():
        warn(f"coco-seg analyze: warning: the model's output is NaN or Inf in {int((~usable).sum())} of "
             f"{len(samples)} {split} samples (column non_finite_logits counts their pixels, degenerate marks "
             f"them); they are left out of the map, clusters, label issues, pruning and dashboards")
    kept = np.flatnonzero(usable)
    usable_embeddings = streamed.embeddings[kept]

    latent = build_latent_map(usable_embeddings, k=neighbors, seed=seed)
    ids = samples["sample_id"].to_numpy()
    samples["map_x"], samples["map_y"] = np.nan, np.nan
    samples.loc[kept, "map_x"], samples.loc[kept, "map_y"] = latent.coordinates[:, 0], latent.coordinates[:, 1]
    samples["cluster"] = pd.array([pd.NA] * len(samples), dtype="Int64")
    samples.loc[kept, "cluster"] = latent.clusters
    samples["neighbors"] = ""
    samples.loc[kept, "neighbors"] = [" ".join(ids[kept[row]]) for row in latent.neighbors]

    issues = find_label_issues(streamed, class_names=config.class_names, work=out_dir / WORK_DIR / split,
                               usable=usable)
    samples["label_issue_score"] = issues.image_scores
    samples["label_issue_rank"] = samples["label_issue_score"].rank(method="first").astype("Int64")

    pruning = pruning_suggestions(latent.clusters, samples["loss"].to_numpy()[kept], usable_embeddings)
    samples["prune"] = False
    samples.loc[kept, "prune"] = pruning.sort_values("row")["drop"].to_numpy()
    metadata_columns = list(metadata_names(config))
    iou_columns = [f"iou_{n}" for n in config.class_names]
    dashboards = metadata_dashboards(samples.loc[usable], metadata_columns=metadata_columns,
                                     iou_columns=iou_columns)

    labelling = None
    if "unlabeled" in config.splits:
        unlabeled_response = binder.unlabeled_preprocess()
        unlabeled = stream_split(binder, unlabeled_response, split="unlabeled",
                                 sample_ids=unlabeled_response.sample_ids[:limit], model=model,
                                 model_path=Path(model_path), config=config, work=out_dir / WORK_DIR / "unlabeled",
                                 batch_size=batch_size, embedding=embedding, progress=progress)
        candidates = np.flatnonzero(usable_rows(unlabeled.samples, unlabeled.embeddings))
        if len(candidates) < len(unlabeled.samples):
            warn(f"coco-seg analyze: warning: the model's output is NaN or Inf in "
                 f"{len(unlabeled.samples) - len(candidates)} of {len(unlabeled.samples)} unlabeled samples; "
                 f"they are left out of the labelling suggestions")
        labelling = []
        if len(candidates):
            ranking = labelling_suggestions(unlabeled.embeddings[candidates], usable_embeddings,
                                            unlabeled.samples["uncertainty"].to_numpy()[candidates], k=neighbors)
            labelling = [{"sample_id": unlabeled.samples["sample_id"][candidates[r.row]], "rank": int(r.rank),
                          "priority": float(r.priority), "uncertainty": float(r.uncertainty),
                          "novelty": float(r.novelty)} for r in ranking.itertuples()]

    data_root = resolve_data_root(config)
    recall = planted_defect_recall(samples, data_root / "planted_defects.json", split=split)
    thumbnails = dict(zip(samples["sample_id"], samples["thumbnail"]))
    table = samples.drop(columns=["thumbnail"])
    dashboard_records = dashboards_to_records(dashboards)
    cluster_table = pruning_summary(pruning).to_dict("records")
    drop_ids = samples.loc[samples["prune"], "sample_id"].tolist()
    scored = samples.loc[usable]
    summary = {"model": str(Path(model_path).resolve()), "split": split, "samples": len(samples),
               "non_finite_samples": int((~usable).sum()),
               "label_mode": config.label_mode, "embedding": embedding, "map_method": latent.method,
               "mean_loss": float(scored["loss"].mean()),
               **{f"mean {c}": float(np.nanmean(scored[c])) for c in iou_columns + ["mean_iou"]},
               "flagged_metadata_bins": sum(len(d["flagged_bins"]) for d in dashboard_records),
               "suggested_to_prune": len(drop_ids)}
    if recall is not None:
        summary["planted_defect_recall"] = recall["recall"]
        summary["planted_defects_found"] = f"{recall['found_in_top']} of {recall['planted']} in the top {recall['top']}"
    drops_by_cluster = samples[samples["prune"]].groupby("cluster")["sample_id"].apply(list).to_dict()
    gallery = _gallery(streamed, issues, samples,
                       lambda sid: denormalize_image(binder.image_encoder(sid, response)), size=config.image_size)
    color_fields = ["loss", "mean_iou", "cluster", "label_issue_score", "uncertainty"] + metadata_columns

    def build(folder: Path) -> None:
        """Every artefact, into the new folder that replaces ``out_dir`` whole (``work`` moves in after it)."""
        table.to_parquet(folder / "samples.parquet", index=False)
        table.to_csv(folder / "samples.csv", index=False)
        np.save(folder / "embeddings.npy", streamed.embeddings)
        if labelling is not None:
            write_json(folder / "labelling_suggestions.json", labelling)
        write_json(folder / "summary.json", summary)
        write_json(folder / "dashboards.json", dashboard_records)
        write_json(folder / "class_swaps.json", issues.class_swaps.to_dict("records"))
        write_json(folder / "pruning.json", {"clusters": cluster_table, "drop_ids": drop_ids})
        write_report(folder / "report.html", title=f"coco-seg analysis: {split}", samples=table,
                     class_names=config.class_names, color_fields=color_fields, thumbnails=thumbnails,
                     dashboards=dashboard_records, label_issues=gallery,
                     class_swaps=issues.class_swaps.to_dict("records"),
                     pruning=[{**c, "drop_ids": drops_by_cluster.get(c["cluster"], [])} for c in cluster_table],
                     labelling=labelling, summary=summary)

    replace_folder(out_dir, build, known=OUTPUT_FILES, carry=[WORK_DIR])
    summary["report"] = str(out_dir / "report.html")
    return summary
