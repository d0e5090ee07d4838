"""Dataset-level evaluation: counts accumulated over a whole split (coco_seg.metrics.SegmentationAccumulator).

Algorithm: every pixel of every sample adds one count to ``confusion[gt_class, predicted_class]``; the
dataset-level IoU of class c is ``C[c,c] / (row_c + col_c - C[c,c])`` — the figure of the reference table, where
large images and large objects weigh more. Boundary IoU (Cheng et al., CVPR 2021) is summed the same way: per class
the boundary-region intersections and unions of all images, then one ratio (pixels within d = 2 % of the image
diagonal of a contour, 4 px at 128 px; see coco_seg.metrics). The mean of per-image IoU (each image's classes that
are present in its GT or prediction, then averaged over images) is reported beside them, because it weighs every
image equally. Ignored pixels and NaN/Inf predictions follow the engine metrics' rules (the same code). Predictions
are streamed batch by batch; nothing of size N×S×S×K is ever held.
"""

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from coco_seg import metrics
from coco_seg.atomic import write_json_atomically
from coco_seg.coco_data import SplitData, load_labeled_split, resolve_data_root
from coco_seg.config import Config
from coco_seg.encoders import encode_image, encode_mask

BATCH_SIZE = 16


@dataclass(frozen=True)
class Evaluation:
    split: str
    samples: int
    class_names: list[str]
    iou: dict[str, Optional[float]]  # dataset-level, per class (None when the class never occurs)
    mean_iou: float  # dataset-level mean over the classes that occur (NaN when none does)
    mean_per_image_iou: float  # mean over images of each image's mean IoU
    pixel_accuracy: float  # over the labelled pixels
    # dataset-level Boundary IoU per class (None when the class never occurs) and its mean over the classes that
    # occur; defaults only for records written before they existed
    boundary_iou: dict[str, Optional[float]] = field(default_factory=dict)
    mean_boundary_iou: float = math.nan
    boundary_dilation_ratio: float = metrics.DEFAULT_DILATION_RATIO  # boundary width / image diagonal
    # samples with at least one labelled pixel (a decode placeholder has none), the labelled pixels, and those of
    # them where the prediction held NaN or Inf (they count as predicting no class); None in older records
    scored_samples: Optional[int] = None
    labelled_pixels: Optional[int] = None
    non_finite_pixels: Optional[int] = None

    def degenerate(self) -> Optional[str]:
        """Why these figures describe no model at all (nothing was scored, or every prediction was NaN/Inf);
        None when they are real."""
        if self.scored_samples == 0:
            return (f"no sample of split {self.split} could be scored: none of its {self.samples} samples has a "
                    f"labelled pixel (every one failed to decode; they are listed in the split's bad-sample report)")
        if self.labelled_pixels and self.non_finite_pixels == self.labelled_pixels:
            return (f"the model's output is NaN or Inf at every one of the {self.labelled_pixels} labelled pixels of "
                    f"split {self.split}: it predicts nothing (a diverged or broken model)")
        return None

    def table(self) -> str:
        names = [n for n in self.class_names if n != "background"]
        header = ("| split | samples | " + " | ".join(f"IoU {n}" for n in names) + " | mean IoU | mean per-image IoU | "
                  + " | ".join(f"Boundary IoU {n}" for n in names) + " | mean Boundary IoU |")
        rule = "|" + "---|" * (2 * len(names) + 5)
        cells = " | ".join(_cell(self.iou.get(n)) for n in names)
        boundary_cells = " | ".join(_cell(self.boundary_iou.get(n)) for n in names)
        row = (f"| {self.split} | {self.samples} | {cells} | {_cell(self.mean_iou)} | "
               f"{_cell(self.mean_per_image_iou)} | {boundary_cells} | {_cell(self.mean_boundary_iou)} |")
        return "\n".join([header, rule, row])

    def write_json(self, path: Path) -> None:
        """The fields as strictly valid JSON: an undefined figure (NaN) is written as null, never as NaN."""
        write_json_atomically(path, asdict(self))


def _cell(value: Optional[float]) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.3f}"


def _by_name(class_names: Sequence[str], values: np.ndarray) -> dict[str, Optional[float]]:
    return {n: None if np.isnan(v) else float(v) for n, v in zip(class_names, values)}


def dataset_iou(true_positives: np.ndarray, false_positives: np.ndarray, false_negatives: np.ndarray) -> np.ndarray:
    """(K,) float64 IoU per class from (K,) pixel counts summed over a dataset; NaN for a class in neither the
    ground truth nor the prediction. The accumulator's own rule (``SegmentationAccumulator.iou_from_counts``), for
    callers that hold the counts."""
    return metrics.SegmentationAccumulator.iou_from_counts(true_positives, false_positives, false_negatives)


def batches(split: SplitData, sample_ids: Sequence[str], *, batch_size: int) -> Iterable[tuple[np.ndarray, np.ndarray]]:
    """(images (B, S, S, 3) float32, GT one-hot (B, S, S, K)) from the binder's own encoders."""
    for start in range(0, len(sample_ids), batch_size):
        chunk = sample_ids[start:start + batch_size]
        yield (np.stack([encode_image(split, i) for i in chunk]), np.stack([encode_mask(split, i) for i in chunk]))


def evaluate_split(predict: Callable[[np.ndarray], np.ndarray], split: SplitData, *,
                   batch_size: int = BATCH_SIZE, progress: Optional[Callable[[int, int], None]] = None) -> Evaluation:
    """Run ``predict`` (images → (B, S, S, K) logits or probabilities) over a split and evaluate it."""
    class_names = list(split.config.class_names)
    # the metrics' own rules: ignored pixels (all-zero GT, e.g. a sample that failed to decode) and NaN/Inf
    # predictions count as in the engine
    accumulator = metrics.SegmentationAccumulator(len(class_names))
    sample_ids = split.sample_ids
    done = scored = labelled_pixels = non_finite_pixels = 0
    for images, ground_truth in batches(split, sample_ids, batch_size=batch_size):
        prediction = predict(images)
        accumulator.update(ground_truth, prediction)
        labelled = ground_truth.any(axis=-1)  # (B, S, S)
        scored += int(labelled.any(axis=(1, 2)).sum())
        labelled_pixels += int(labelled.sum())
        non_finite_pixels += int((~np.isfinite(np.asarray(prediction)).all(axis=-1) & labelled).sum())
        done += len(images)
        if progress:
            progress(done, len(sample_ids))
    scores = accumulator.compute()
    return Evaluation(
        split=split.name,
        samples=len(sample_ids),
        class_names=class_names,
        iou=_by_name(class_names, scores.iou),
        mean_iou=scores.mean_iou,
        mean_per_image_iou=scores.mean_per_image_iou,
        pixel_accuracy=scores.pixel_accuracy,
        boundary_iou=_by_name(class_names, scores.boundary_iou),
        mean_boundary_iou=scores.mean_boundary_iou,
        boundary_dilation_ratio=scores.dilation_ratio,
        scored_samples=scored,
        labelled_pixels=labelled_pixels,
        non_finite_pixels=non_finite_pixels,
    )


def evaluate_model(model: Any, config: Config, *, split_name: str = "validation") -> Evaluation:
    """Evaluate a loaded model (onnxruntime session or Keras model) on one split of ``config``."""
    from coco_seg.export import predict_logits

    split = load_labeled_split(config, split_name, data_root=resolve_data_root(config))
    return evaluate_split(lambda images: predict_logits(model, images), split)
