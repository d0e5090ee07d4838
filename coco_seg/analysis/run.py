"""`coco-seg analyze`: the Tensorleap analyses, offline, through the integration's own registered functions.

Algorithm:
1. Stream each analysed split (default: every labeled split configured, then unlabeled when configured) in
   batches through the encoders, metadata, metrics and loss the integration registered with code-loader, read
   back by name from its registry (coco_seg.registry: the very functions the engine calls), and the model: logits, an embedding, and the encoder's pooled block-13 features. The default embedding
   is the one the Tensorleap integration registers for the platform's analysis (coco_seg.latent_space): the
   decoder feature map before the classifier, pooled per class over the ground truth (over the prediction for
   unlabeled samples), so the platform and this report cluster the same representation;
   ``latent_space="encoder"`` takes a named layer, global-average-pooled, by default the encoder's last block.
   Per batch, the rows (metadata, metrics, loss, uncertainty, over/under-segmentation counts, decode_failed,
   thumbnail) go to a parquet part file, and the embeddings, colour-layout descriptors, encoder features and
   image statistics (coco_seg.analysis.appearance) to .npy parts, written atomically; probabilities (float16,
   N×K×S×S) and label maps (IGNORED_LABEL where the one-hot is all zero, counted in ``ignored_pixels``) go to
   on-disk row files (coco_seg.analysis.rows: positioned reads and writes, so they never count in the process's
   memory). A rerun skips finished batches, so an interrupted run loses nothing; a different model file,
   config, annotation file, image file, sample list or batch size starts afresh (the manifest keys the model and the labels by their sha256, the
   images by their identities).
2. From the gathered table of all splits (a ``split`` column, a unique ``key``): one latent map (UMAP, PCA
   fallback), clusters and nearest neighbours over every split; label issues by cleanlab.segmentation's confident
   learning over all labeled splits at once, streamed over the stored probabilities (coco_seg.analysis.label_issues:
   nothing of N×S×S is ever in memory; ignored pixels never flagged); metadata dashboards on the labeled samples; pruning on the
   training split; labelling suggestions for the unlabeled one; insights (coco_seg.analysis.insights). A sample
   whose logits or embedding hold NaN/Inf (a broken model; counted per sample in ``non_finite_logits``) or whose
   image failed to decode keeps its table row but is left out of all of step 2, with a warning; when every
   sample is such, the analysis stops with an error.
3. Write samples.parquet / samples.csv, insights.json and the other JSON artefacts and one self-contained
   report.html, into a new folder that replaces the output folder whole; summary.json records each stage's
   seconds and peak RSS.
"""

import base64
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import cv2
import numpy as np
import pandas as pd

from coco_seg import metrics
from coco_seg.analysis.rows import RowFile
from coco_seg.atomic import prepare_folder, replace_folder, write_atomically as _atomic_write, write_json_atomically
from coco_seg.config import KERAS_SUFFIXES, ONNX_SUFFIX, Config
from coco_seg.index_cache import content_digest, file_identity
from coco_seg.registry import GROUND_TRUTH_NAME, INPUT_NAME, LOSS_NAME, Registry, load_registry
from coco_seg.visualizers import denormalize_image

WORK_FORMAT = 3  # 2: keyed on model, config, labels, images and batch size; 3: + decode_failed and the OOD views
THUMBNAIL_SIZE = 96
WORK_DIR = "work"  # inside the output folder: the resumable parts; moved along when the folder is replaced
# what an analysis folder holds (besides work/), so that one written before folder manifests existed counts as ours
OUTPUT_FILES = ("samples.parquet", "samples.csv", "embeddings.npy", "summary.json", "dashboards.json",
                "class_swaps.json", "pruning.json", "report.html", "labelling_suggestions.json", "insights.json")
GALLERY_SIZE = 24  # label-issue images shown with their panels
CLEANLAB_CHUNK = 256  # images read at a time by the label-issue passes (about 25 MB of float16 probabilities)
CLASS_COLORS = np.array([[0, 0, 0], [220, 50, 50], [40, 110, 230], [60, 180, 75], [245, 130, 48], [145, 30, 180],
                         [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 190]], np.uint8)


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
    # The encoder's mid-level features (block_13, the first skip the decoder concatenates), pooled: with the
    # colour layout they are the near-duplicate and out-of-distribution views (coco_seg.analysis.appearance).
    encoder_features = keras.layers.GlobalAveragePooling2D(name="encoder_features")(
        model.get_layer("up1_concat").input[1])
    outputs = [logits, source, encoder_features]
    session = onnxruntime.InferenceSession(keras_to_onnx(keras.Model(model.input, outputs)),
                                           providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    expected = [tuple(t.shape[1:]) for t in outputs]

    def predict(images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        produced = session.run(None, {input_name: images.astype(np.float32, copy=False)})
        return _order_outputs(produced, expected)

    return predict


def _order_outputs(produced: Sequence[np.ndarray], expected: Sequence[tuple]) -> tuple[np.ndarray, ...]:
    """The session's outputs in the order of ``expected`` (per-sample shapes, None = any size), matched by shape
    rather than by the output order or names tf2onnx chose; outputs left ambiguous keep their order."""
    remaining = list(range(len(produced)))
    ordered = []
    for shape in expected:
        match = next((i for i in remaining if len(produced[i].shape) - 1 == len(shape) and all(
            want is None or want == got for want, got in zip(shape, produced[i].shape[1:]))), remaining[0])
        remaining.remove(match)
        ordered.append(produced[match])
    return tuple(ordered)


def write_json(path: Path, payload: Any) -> None:
    write_json_atomically(path, payload, indent=1)


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


PART_ARRAYS = ("npy", "appearance.npy", "encoder.npy", "statistics.npy")  # beside part-X.parquet: embeddings, views


@dataclass
class StreamedSplit:
    samples: pd.DataFrame  # one row per sample, in sample order
    embeddings: np.ndarray  # (N, D) float32
    # on disk (RowFile, indexed by rows like an array; tests pass plain arrays):
    probabilities: Optional[Any]  # (N, K, S, S) float16; None for unlabeled
    labels: Optional[Any]  # (N, S, S) uint8 GT, IGNORED_LABEL where no class applies; None for unlabeled
    predicted: Any  # (N, S, S) uint8 argmax
    appearance: np.ndarray  # (N, 105) float32 colour-layout descriptors (coco_seg.analysis.appearance)
    encoder_features: np.ndarray  # (N, C) float32 pooled mid-level encoder features
    statistics: np.ndarray  # (N, 10) float32 low-level image statistics (coco_seg.analysis.appearance)


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


def stream_split(registry: Registry, response: Any, *, split: str, sample_ids: Sequence[str],
                 model: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]],
                 model_path: Path, config: Config, work: Path, batch_size: int, embedding: str,
                 progress: bool = True) -> StreamedSplit:
    """Run the binder's functions and the model over ``sample_ids``, resumably (see the module comment).

    ``embedding`` names the embedding source (it keys the resumable parts); a 4-D source from ``model`` is the
    decoder feature map, pooled per class over the ground truth (over the prediction for unlabeled samples).
    """
    from coco_seg import latent_space
    from coco_seg.analysis.appearance import appearance_descriptors, image_statistics
    from coco_seg.analysis.segmentation_errors import segmentation_error_columns
    from coco_seg.metadata import metadata_names
    from coco_seg.samples import IGNORED_LABEL

    labeled = split != "unlabeled"
    manifest = _manifest(split, sample_ids, model_path, config, embedding, data=response.data, batch_size=batch_size)
    manifest_path = work / "manifest.json"
    if manifest_path.is_file() and json.loads(manifest_path.read_text()) != manifest:
        for stale in work.iterdir():  # another model, config, labels, images, samples or batch size: start afresh
            stale.unlink()
    work.mkdir(parents=True, exist_ok=True)
    write_json(manifest_path, manifest)

    count, size, num_classes = len(sample_ids), config.image_size, config.num_classes
    probabilities = RowFile(work / "probabilities.npy", np.float16, (count, num_classes, size, size)) \
        if labeled else None
    labels = RowFile(work / "labels.npy", np.uint8, (count, size, size)) if labeled else None
    predicted = RowFile(work / "predicted.npy", np.uint8, (count, size, size))
    names = list(metadata_names(config))
    metadata_functions = {name: registry.metadata_function(name) for name in names}  # paired by name
    image_encoder, mask_encoder = registry.input(INPUT_NAME), registry.ground_truth(GROUND_TRUTH_NAME)
    iou, mean_iou, dice, pixel_accuracy = (registry.metric(name) for name in ("iou", "mean_iou", "dice",
                                                                              "pixel_accuracy"))
    loss = registry.loss(LOSS_NAME)
    starts = range(0, count, batch_size)
    iterator = starts
    if progress:
        from tqdm import tqdm

        iterator = tqdm(starts, desc=f"analyze {split}", unit="batch", file=sys.stderr)
    for start in iterator:
        part = work / f"part-{start:08d}.parquet"
        if part.is_file() and all(part.with_suffix(f".{kind}").is_file() for kind in PART_ARRAYS):
            continue  # finished in an earlier run
        chunk = list(sample_ids[start:start + batch_size])
        images = np.stack([image_encoder(i, response) for i in chunk])
        # The encoder has just recorded any image that failed to decode; its placeholder is no photo.
        failed = getattr(response.data, "failed_at_decode", {})
        logits, embeddings, encoder_features = (np.asarray(t, np.float32) for t in model(images))
        ground_truth = np.stack([mask_encoder(i, response) for i in chunk]) if labeled else None
        if embeddings.ndim == 4:  # the integration's custom latent space, pooled the same way
            embeddings = (latent_space.pool_by_ground_truth(embeddings, ground_truth) if labeled
                          else latent_space.pool_by_prediction(embeddings, logits))
        probs = metrics.to_probabilities(logits)
        rows: dict[str, Any] = {"row": np.arange(start, start + len(chunk)), "sample_id": chunk,
                                "file_name": [response.data.records[i].path.name for i in chunk]}
        for name, function in metadata_functions.items():
            rows[name] = [function(i, response) for i in chunk]
        rows["decode_failed"] = np.array([i in failed for i in chunk], bool)
        rows["non_finite_logits"] = non_finite_logit_pixels(logits)
        # A pixel with NaN/Inf logits has an all-zero probability vector, whose entropy reads as certainty: such a
        # sample's uncertainty is unknown, not low.
        rows["uncertainty"] = np.where(rows["non_finite_logits"] > 0, np.nan, mean_pixel_entropy(probs))
        predicted_labels = probs.argmax(-1).astype(np.uint8)
        predicted[start:start + len(chunk)] = predicted_labels
        if labeled:
            for class_name, values in iou(ground_truth, logits).items():
                rows[f"iou_{class_name}"] = values
            rows["mean_iou"] = mean_iou(ground_truth, logits)
            rows["dice"] = dice(ground_truth, logits)
            rows["pixel_accuracy"] = pixel_accuracy(ground_truth, logits)
            rows["loss"] = loss(ground_truth, logits)
            # A pixel whose one-hot is all zero (today: a decode placeholder's) belongs to no class: it
            # stays IGNORED_LABEL, not the argmax of zeros (background), and counts in no blob either.
            ignored = ground_truth.sum(-1) == 0
            rows["ignored_pixels"] = ignored.reshape(len(chunk), -1).sum(axis=1)
            gt_labels = np.where(ignored, IGNORED_LABEL, ground_truth.argmax(-1)).astype(np.uint8)
            rows |= segmentation_error_columns(np.where(ignored, 0, gt_labels), np.where(ignored, 0, predicted_labels),
                                               class_names=config.class_names)
            labels[start:start + len(chunk)] = gt_labels
            probabilities[start:start + len(chunk)] = np.moveaxis(probs, -1, 1).astype(np.float16)
        photos = np.stack([denormalize_image(image) for image in images])
        rows["thumbnail"] = [data_uri(photo, size=THUMBNAIL_SIZE) for photo in photos]
        for array in (probabilities, labels, predicted):
            if array is not None:
                array.flush()
        # The row files are flushed before the part files exist: a part on disk means its rows are complete.
        views = (embeddings, appearance_descriptors(photos), encoder_features, image_statistics(photos))
        for kind, values in zip(PART_ARRAYS, views):
            _atomic_write(part.with_suffix(f".{kind}"), lambda temp, v=values: np.save(temp, v.astype(np.float32)))
        _atomic_write(part, lambda temp: pd.DataFrame(rows).to_parquet(temp, index=False))

    parts = sorted(work.glob("part-*.parquet"))  # zero-padded start rows: name order is row order
    samples = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
    embeddings, appearance, encoder_features, statistics = (
        np.concatenate([np.load(p.with_suffix(f".{kind}")) for p in parts]) for kind in PART_ARRAYS)
    assert samples["row"].tolist() == list(range(count)), "part files do not cover the split"
    return StreamedSplit(samples, embeddings, probabilities, labels, predicted, appearance, encoder_features,
                         statistics)


@dataclass
class LabelIssues:
    image_scores: dict[str, np.ndarray]  # split → (N,) label quality 0..1, lower = more likely mislabelled; NaN
    #                                      for rows left out (non-finite output, a decode placeholder)
    issue_masks: dict[str, "RowFile"]  # split → (N, S, S) bool pixel issues, on disk
    class_swaps: pd.DataFrame  # given_label, predicted_label, pixels, share


def find_label_issues(sources: Sequence[tuple[str, StreamedSplit, np.ndarray]], *, class_names: Sequence[str],
                      work: Path) -> LabelIssues:
    """Confident learning (coco_seg.analysis.label_issues: cleanlab.segmentation's method, streamed) over the kept
    rows of every labeled split at once: ``sources`` holds (split name, streamed split, (M,) int rows kept: finite
    model output, a real image).

    The thresholds and the number of issues are estimated over all kept rows together, reading the stored labels
    and probabilities CLEANLAB_CHUNK images at a time; the image score is cleanlab's ``num_pixel_issues`` score,
    1 − share of the labelled pixels flagged. Ignored pixels (IGNORED_LABEL) take no part, are never flagged and do
    not count in the share. The class-swap summary counts the flagged pixels by (given label, predicted class), as
    cleanlab's ``common_label_issues``. Rows left out take no part: their score is NaN and their issue mask empty.
    Nothing of size N×S×S or more is ever in memory.
    """
    from coco_seg.analysis.label_issues import ConfidentLearning, stream_label_issues

    work.mkdir(parents=True, exist_ok=True)
    num_classes = len(class_names)
    image_scores = {name: np.full(len(streamed.labels), np.nan) for name, streamed, _ in sources}
    issue_masks = {name: RowFile(work / f"issues-{name}.npy", np.bool_, streamed.labels.shape, fresh=True)
                   for name, streamed, _ in sources}
    chunks = [(name, streamed, rows[start:start + CLEANLAB_CHUNK]) for name, streamed, rows in sources
              for start in range(0, len(rows), CLEANLAB_CHUNK)]

    def read_chunks():
        for _, streamed, rows in chunks:
            yield streamed.labels[rows], np.asarray(streamed.probabilities[rows])

    learning = ConfidentLearning(num_classes)
    for (name, streamed, rows), flags in zip(chunks, stream_label_issues(read_chunks, learning)):
        issue_masks[name][rows] = flags
        # labelled pixels: every pixel but the ignored ones, which streaming counted per sample
        counts = flags[0].size - streamed.samples["ignored_pixels"].to_numpy()[rows]
        image_scores[name][rows] = np.where(
            counts > 0, 1.0 - flags.reshape(len(rows), -1).sum(axis=1) / np.maximum(counts, 1), np.nan)
    swaps = learning.swaps
    for mask in issue_masks.values():
        mask.flush()
    total = max(1, int(swaps.sum()))
    ranked = sorted(((int(swaps[g, p]), g, p) for g in range(num_classes) for p in range(num_classes)
                     if swaps[g, p] > 0), key=lambda item: -item[0])  # stable: ties keep class order
    class_swaps = pd.DataFrame([{"given_label": class_names[g], "predicted_label": class_names[p], "pixels": n,
                                 "share": n / total} for n, g, p in ranked],
                               columns=["given_label", "predicted_label", "pixels", "share"])
    return LabelIssues(image_scores, issue_masks, class_swaps)


def planted_defect_recall(samples: pd.DataFrame, planted_path: Path) -> Optional[dict[str, Any]]:
    """When the data carries planted_defects.json (the generated sample): how many planted images the label-issue
    ranking puts in its top 2 × (number planted), ranked within the planted image's own split (``samples`` holds
    the split, sample_id and label_issue_score columns)."""
    if not planted_path.is_file():
        return None
    planted_by_split: dict[str, set[str]] = {}
    for entry in json.loads(planted_path.read_text())["planted"]:
        planted_by_split.setdefault(entry["split"], set()).add(str(entry["image_id"]))
    planted_total = found = top_total = 0
    for split, planted in planted_by_split.items():
        rows = samples[samples["split"] == split]
        planted &= set(rows["sample_id"])
        if not planted:
            continue
        ranked = rows.sort_values("label_issue_score", kind="stable", na_position="last")["sample_id"].tolist()
        found += len(planted & set(ranked[:2 * len(planted)]))
        planted_total += len(planted)
        top_total += 2 * len(planted)
    if not planted_total:
        return None
    return {"planted": planted_total, "found_in_top": found, "top": top_total, "recall": found / planted_total}


@dataclass
class AnalysedSplit:
    name: str
    streamed: StreamedSplit
    image: Callable[[str], np.ndarray]  # sample id → the encoder's input as uint8 RGB

    @property
    def labeled(self) -> bool:
        return self.name != "unlabeled"


def _gallery(splits: Mapping[str, AnalysedSplit], issues: LabelIssues, samples: pd.DataFrame, *,
             size: int) -> list[dict[str, Any]]:
    """The most likely mislabelled images with image, GT, prediction and issue-mask panels."""
    entries = []
    ranked = samples.dropna(subset=["label_issue_score"]).sort_values("label_issue_score", kind="stable")
    for row in ranked.head(GALLERY_SIZE).itertuples():
        split = splits[row.split]
        image = split.image(row.sample_id)
        overlay = image.copy()
        overlay[issues.issue_masks[row.split][row.row]] = (255, 255, 0)
        entries.append({
            "sample_id": row.key, "split": row.split, "rank": int(row.label_issue_rank),
            "score": float(row.label_issue_score), "issue_share": 1.0 - float(row.label_issue_score),
            "panels": {"image": data_uri(image, size=size),
                       "ground_truth": data_uri(colorize(split.streamed.labels[row.row]), size=size, kind=".png"),
                       "prediction": data_uri(colorize(split.streamed.predicted[row.row]), size=size, kind=".png"),
                       "issues": data_uri(overlay, size=size, kind=".png")}})
    return entries


class StageClock:
    """Wall-clock seconds and peak resident memory of each analysis stage (summary "stages"). Where Linux lets a
    process reset its high-water mark (/proc/self/clear_refs, "5"), the peak is the stage's own; elsewhere it is
    the process's peak so far (``peak_is_cumulative``)."""

    def __init__(self) -> None:
        self.stages: list[dict[str, Any]] = []
        self.peak_is_cumulative = not self._reset_peak()
        self._started = time.perf_counter()

    @staticmethod
    def _reset_peak() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")
            return True
        except OSError:
            return False

    @staticmethod
    def _peak_mb() -> float:
        try:
            with open("/proc/self/status") as handle:
                for line in handle:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            pass
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux

    def done(self, stage: str) -> None:
        now = time.perf_counter()
        self.stages.append({"stage": stage, "seconds": round(now - self._started, 3),
                            "peak_rss_mb": round(self._peak_mb(), 1)})
        if not self.peak_is_cumulative:
            self._reset_peak()
        self._started = now


def configured_splits(config: Config) -> list[str]:
    """The configured splits in analysis order: training, validation, any other labeled split, then unlabeled."""
    first = [name for name in ("training", "validation") if name in config.splits]
    others = [name for name in config.splits if name not in ("training", "validation", "unlabeled")]
    return first + others + (["unlabeled"] if "unlabeled" in config.splits else [])


def parse_splits(text: Optional[str | Sequence[str]], configured: Sequence[str]) -> list[str]:
    """``"training,validation"`` (or a list) → the split names, checked against the configured ones; None → every
    configured split (labeled ones first, unlabeled last)."""
    if text is None:
        return list(configured)
    names = [part.strip() for part in (text.split(",") if isinstance(text, str) else text)]
    if not names or any(not name for name in names):
        raise ValueError(f"--split must name one or more splits separated by commas, got {text!r}")
    unknown = [name for name in names if name not in configured]
    if unknown:
        raise ValueError(f"--split names {', '.join(map(repr, unknown))}, which is not a configured split "
                         f"(configured: {', '.join(configured)})")
    if len(set(names)) < len(names):
        raise ValueError(f"--split names a split twice: {text!r}")
    return names


def sample_keys(split_names: Sequence[str], sample_ids: Sequence[str]) -> list[str]:
    """A unique key per row: the sample id, or "split/sample_id" for an id that occurs in more than one split."""
    counts: dict[str, int] = {}
    for sample_id in sample_ids:
        counts[sample_id] = counts.get(sample_id, 0) + 1
    return [f"{split}/{sample_id}" if counts[sample_id] > 1 else sample_id
            for split, sample_id in zip(split_names, sample_ids)]


def _excluded_warnings(samples: pd.DataFrame, names: Sequence[str], decode_failed: np.ndarray,
                       warn: Callable[[str], None]) -> None:
    for name in names:
        in_split = (samples["split"] == name).to_numpy()
        broken = int((samples["degenerate"].to_numpy() & in_split).sum())
        placeholders = int((decode_failed & in_split).sum())
        if broken:
            warn(f"coco-seg analyze: warning: the model's output is NaN or Inf in {broken} of {int(in_split.sum())} "
                 f"{name} samples (column non_finite_logits counts their pixels, degenerate marks them); they are "
                 f"left out of the map, clusters, label issues, pruning, dashboards, labelling suggestions and insights")
        if placeholders:
            warn(f"coco-seg analyze: warning: {placeholders} of {int(in_split.sum())} {name} images failed to decode "
                 f"(column decode_failed; listed in the split's bad-sample report); their placeholders are left out "
                 f"of the map, clusters, label issues, pruning, dashboards, labelling suggestions and insights")


def analyze(*, model_path: Path, out_dir: Path, splits: Optional[str | Sequence[str]] = None,
            limit: Optional[int] = None, batch_size: int = 16, latent_space: str = "tensorleap",
            embedding_layer: Optional[str] = None, neighbors: int = 5, seed: int = 0,
            insights: Any = None, progress: bool = True, log: Callable[[str], None] = print,
            warn: Callable[[str], None] = lambda line: print(line, file=sys.stderr)) -> dict[str, Any]:
    """Run the whole analysis over ``splits`` (default: every labeled split configured, plus unlabeled when
    configured) in one embedding space; returns the summary (also in summary.json and at the top of report.html).
    ``insights``: an ``InsightsConfig`` (default settings when None)."""
    from coco_seg.analysis.dashboards import dashboards_to_records, metadata_dashboards
    from coco_seg.analysis.insights import InsightsConfig, find_insights
    from coco_seg.analysis.latent import build_latent_map, labelling_suggestions, pruning_suggestions, pruning_summary
    from coco_seg.analysis.report import write_report
    from coco_seg.coco_data import resolve_data_root
    from coco_seg.metadata import metadata_names

    insights = InsightsConfig() if insights is None else insights
    registry = load_registry()
    config: Config = registry.config
    names = parse_splits(splits, configured_splits(config))
    clock = StageClock()
    responses = {r.state.name: r for r in registry.preprocess()}
    if "unlabeled" in names:
        if registry.unlabeled_preprocess is None:
            raise ValueError("the unlabeled split is configured but the integration registers no unlabeled "
                             "preprocess")
        responses["unlabeled"] = registry.unlabeled_preprocess()
    model = analysis_model(Path(model_path), config, latent_space=latent_space, embedding_layer=embedding_layer)
    embedding = latent_space if embedding_layer is None else f"{latent_space}:{embedding_layer}"
    out_dir = prepare_folder(out_dir, known=OUTPUT_FILES, carry=[WORK_DIR])  # a foreign folder: refused up front
    clock.done("preprocess")

    analysed: dict[str, AnalysedSplit] = {}
    for name in names:
        response = responses[name]
        streamed = stream_split(registry, response, split=name, sample_ids=response.sample_ids[:limit], model=model,
                                model_path=Path(model_path), config=config, work=out_dir / WORK_DIR / name,
                                batch_size=batch_size, embedding=embedding, progress=progress)
        analysed[name] = AnalysedSplit(name, streamed,
                                       lambda sid, r=response: denormalize_image(registry.input(INPUT_NAME)(sid, r)))
    clock.done("inference")

    samples = pd.concat([split.streamed.samples.assign(split=name) for name, split in analysed.items()],
                        ignore_index=True)
    samples.insert(1, "key", sample_keys(samples["split"].tolist(), samples["sample_id"].tolist()))
    metadata_columns = list(metadata_names(config))
    for column in metadata_columns:  # every field is declared int, float or bool (coco_seg.metadata)
        if samples[column].dtype == object:  # beside the None an unlabeled sample's GT-based field holds
            samples[column] = samples[column].astype(np.float64)
    embeddings = np.concatenate([split.streamed.embeddings for split in analysed.values()])
    appearance = np.concatenate([split.streamed.appearance for split in analysed.values()])
    encoder_features = np.concatenate([split.streamed.encoder_features for split in analysed.values()])
    statistics = np.concatenate([split.streamed.statistics for split in analysed.values()])
    labeled = (samples["split"] != "unlabeled").to_numpy()
    decode_failed = samples["decode_failed"].to_numpy(bool)
    samples["degenerate"] = ~usable_rows(samples, embeddings)
    usable = ~samples["degenerate"].to_numpy() & ~decode_failed
    counted = ", ".join(f"{len(split.streamed.samples)} {name}" for name, split in analysed.items())
    log(f"streamed {counted} samples; building the map, label issues, dashboards and insights")
    if not usable.any():
        cause = ("the model's output is NaN or Inf, or the image failed to decode," if decode_failed.any()
                 else "the model's output is NaN or Inf")
        raise ValueError(f"{cause} in every one of the {len(samples)} samples of split"
                         f"{'s' if len(names) > 1 else ''} {', '.join(names)}: nothing to analyse (a diverged or "
                         f"broken model); no report written")
    _excluded_warnings(samples, names, decode_failed, warn)
    kept = np.flatnonzero(usable)
    keys = samples["key"].to_numpy()

    latent = build_latent_map(embeddings[kept], k=neighbors, seed=seed)
    samples["map_x"], samples["map_y"] = np.nan, np.nan
    samples.loc[kept, "map_x"], samples.loc[kept, "map_y"] = latent.coordinates[:, 0], latent.coordinates[:, 1]
    samples["cluster"] = pd.array([pd.NA] * len(samples), dtype="Int64")
    samples.loc[kept, "cluster"] = latent.clusters
    samples["neighbors"] = ""
    samples.loc[kept, "neighbors"] = [" ".join(keys[kept[row]]) for row in latent.neighbors]
    clock.done("latent map")

    sources = [(name, split.streamed,
                samples.loc[(samples["split"] == name).to_numpy() & usable, "row"].to_numpy(np.int64))
               for name, split in analysed.items() if split.labeled]
    issues = find_label_issues(sources, class_names=config.class_names, work=out_dir / WORK_DIR / "label_issues")
    samples["label_issue_score"] = np.nan
    for name, scores in issues.image_scores.items():
        in_split = (samples["split"] == name).to_numpy()
        samples.loc[in_split, "label_issue_score"] = scores[samples.loc[in_split, "row"].to_numpy(np.int64)]
    samples["label_issue_rank"] = samples["label_issue_score"].rank(method="first").astype("Int64")
    clock.done("label issues")

    scored = usable & labeled
    pruned_rows = scored & (samples["split"] == "training").to_numpy()
    if not pruned_rows.any():
        pruned_rows = scored  # no training split analysed: prune among the labeled rows there are
    map_row = np.full(len(samples), -1)
    map_row[kept] = np.arange(len(kept))
    samples["prune"] = False
    cluster_table, drop_ids = [], []
    if pruned_rows.any():
        pruning = pruning_suggestions(latent.clusters[map_row[pruned_rows]], samples["loss"].to_numpy()[pruned_rows],
                                      embeddings[pruned_rows])
        samples.loc[pruned_rows, "prune"] = pruning.sort_values("row")["drop"].to_numpy()
        cluster_table = pruning_summary(pruning).to_dict("records")
        drop_ids = samples.loc[samples["prune"], "key"].tolist()
    iou_columns = [f"iou_{n}" for n in config.class_names]
    dashboards = metadata_dashboards(samples.loc[scored], metadata_columns=metadata_columns, iou_columns=iou_columns) \
        if scored.any() else []
    clock.done("dashboards")

    labelling = None
    if "unlabeled" in analysed:
        candidates = np.flatnonzero(usable & ~labeled)
        labelling = []
        if len(candidates) and scored.any():
            ranking = labelling_suggestions(embeddings[candidates], embeddings[scored],
                                            samples["uncertainty"].to_numpy()[candidates], k=neighbors)
            labelling = [{"sample_id": keys[candidates[r.row]], "rank": int(r.rank), "priority": float(r.priority),
                          "uncertainty": float(r.uncertainty), "novelty": float(r.novelty)}
                         for r in ranking.itertuples()]

    recall = planted_defect_recall(samples, resolve_data_root(config) / "planted_defects.json")
    insight_rows = samples.loc[usable].reset_index(drop=True)
    insight_rows["cluster"] = insight_rows["cluster"].astype(np.int64)
    found = find_insights(insight_rows, latent=embeddings[usable], appearance=appearance[usable],
                          encoder=encoder_features[usable], statistics=statistics[usable],
                          metadata_columns=metadata_columns,
                          class_names=config.class_names, class_swaps=issues.class_swaps.to_dict("records"),
                          planted_recall=recall, config=insights)
    clock.done("insights")

    thumbnails = dict(zip(samples["key"], samples["thumbnail"]))
    table = samples.drop(columns=["thumbnail"])
    dashboard_records = dashboards_to_records(dashboards)
    summary = {"model": str(Path(model_path).resolve()), "splits": names,
               "samples": {name: int((samples["split"] == name).sum()) for name in names},
               "non_finite_samples": int(samples["degenerate"].sum()),
               "decode_failed_samples": int(decode_failed.sum()),
               "label_mode": config.label_mode, "embedding": embedding, "map_method": latent.method,
               "mean_loss": float(samples.loc[scored, "loss"].mean()) if scored.any() else None,
               **{f"mean {c}": float(np.nanmean(samples.loc[scored, c])) if scored.any() else None
                  for c in iou_columns + ["mean_iou"]},
               "flagged_metadata_bins": sum(len(d["flagged_bins"]) for d in dashboard_records),
               "suggested_to_prune": len(drop_ids),
               "insights": {kind: sum(f.kind == kind for f in found.findings)
                            for kind in dict.fromkeys(f.kind for f in found.findings)}}
    if recall is not None:
        summary["planted_defect_recall"] = recall["recall"]
        summary["planted_defects_found"] = f"{recall['found_in_top']} of {recall['planted']} in the top {recall['top']}"
    drops_by_cluster = samples[samples["prune"]].groupby("cluster")["key"].apply(list).to_dict()
    gallery = _gallery(analysed, issues, samples.loc[scored], size=config.image_size)
    color_fields = ["loss", "mean_iou", "cluster", "split", "label_issue_score", "uncertainty"] + metadata_columns
    clock.done("gallery")

    def build(folder: Path) -> None:
        """Every artefact, into the new folder that replaces ``out_dir`` whole (``work`` moves in after it)."""
        table.to_parquet(folder / "samples.parquet", index=False)
        table.to_csv(folder / "samples.csv", index=False)
        np.save(folder / "embeddings.npy", embeddings)
        if labelling is not None:
            write_json(folder / "labelling_suggestions.json", labelling)
        found.write(folder)
        write_json(folder / "dashboards.json", dashboard_records)
        write_json(folder / "class_swaps.json", issues.class_swaps.to_dict("records"))
        write_json(folder / "pruning.json", {"clusters": cluster_table, "drop_ids": drop_ids})
        write_report(folder / "report.html", title=f"coco-seg analysis: {', '.join(names)}",
                     samples=table.drop(columns=["sample_id"]).rename(columns={"key": "sample_id"}),
                     class_names=config.class_names, color_fields=color_fields, thumbnails=thumbnails,
                     dashboards=dashboard_records, label_issues=gallery,
                     class_swaps=issues.class_swaps.to_dict("records"),
                     pruning=[{**c, "drop_ids": drops_by_cluster.get(c["cluster"], [])} for c in cluster_table],
                     labelling=labelling, summary=summary, insights=found.to_records()["findings"])
        clock.done("report")
        summary["stages"] = clock.stages
        summary["stage_peak_rss"] = "cumulative" if clock.peak_is_cumulative else "per stage"
        write_json(folder / "summary.json", summary)

    replace_folder(out_dir, build, known=OUTPUT_FILES, carry=[WORK_DIR])
    summary["report"] = str(out_dir / "report.html")
    return summary
