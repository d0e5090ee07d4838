"""Dataset-level evaluation: one confusion matrix accumulated over a whole split.

Algorithm: every pixel of every sample adds one count to ``confusion[gt_class, predicted_class]``; the
dataset-level IoU of class c is ``C[c,c] / (row_c + col_c - C[c,c])`` — the figure of the reference table, where
large images and large objects weigh more. The mean of per-image IoU (each image's classes that are present in its
GT or prediction, then averaged over images) is reported beside it, because it weighs every image equally.
Predictions are streamed batch by batch; nothing of size N×S×S×K is ever held.
"""

from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
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
    mean_iou: float  # dataset-level mean over the classes that occur
    mean_per_image_iou: float  # mean over images of each image's mean IoU
    pixel_accuracy: float

    def table(self) -> str:
        names = [n for n in self.class_names if n != "background"]
        header = "| split | samples | " + " | ".join(f"IoU {n}" for n in names) + " | mean IoU | mean per-image IoU |"
        rule = "|" + "---|" * (len(names) + 4)
        cells = " | ".join("n/a" if self.iou[n] is None else f"{self.iou[n]:.3f}" for n in names)
        row = f"| {self.split} | {self.samples} | {cells} | {self.mean_iou:.3f} | {self.mean_per_image_iou:.3f} |"
        return "\n".join([header, rule, row])

    def write_json(self, path: Path) -> None:
        write_json_atomically(path, asdict(self))


def dataset_iou(true_positives: np.ndarray, false_positives: np.ndarray, false_negatives: np.ndarray) -> np.ndarray:
    """(K,) float64 IoU per class from (K,) pixel counts summed over a dataset; NaN for a class in neither the
    ground truth nor the prediction."""
    union = (true_positives + false_positives + false_negatives).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, true_positives / union, np.nan)


def batches(split: SplitData, sample_ids: Sequence[str], *, batch_size: int) -> Iterable[tuple[np.ndarray, np.ndarray]]:
    """(images (B, S, S, 3) float32, GT one-hot (B, S, S, K)) from the binder's own encoders."""
    for start in range(0, len(sample_ids), batch_size):
        chunk = sample_ids[start:start + batch_size]
        yield (np.stack([encode_image(split, i) for i in chunk]), np.stack([encode_mask(split, i) for i in chunk]))


def evaluate_split(predict: Callable[[np.ndarray], np.ndarray], split: SplitData, *,
                   batch_size: int = BATCH_SIZE, progress: Optional[Callable[[int, int], None]] = None) -> Evaluation:
    """Run ``predict`` (images → (B, S, S, K) logits or probabilities) over a split and evaluate it."""
    class_names = list(split.config.class_names)
    num_classes = len(class_names)
    totals = np.zeros((3, num_classes), np.int64)  # true positives, false positives, false negatives per class
    per_image: list[np.ndarray] = []
    sample_ids = split.sample_ids
    done = 0
    for images, ground_truth in batches(split, sample_ids, batch_size=batch_size):
        prediction = predict(images)
        # the metrics' own counts: ignored pixels (all-zero GT, e.g. a sample that failed to decode) and NaN/Inf
        # predictions follow the same rules as in the engine
        totals += np.stack([counts.sum(axis=0) for counts in metrics.confusion_counts(ground_truth, prediction)])
        per_image.append(metrics.mean_iou(ground_truth, prediction))
        done += len(images)
        if progress:
            progress(done, len(sample_ids))
    true_positives, false_positives, false_negatives = totals
    iou = dataset_iou(true_positives, false_positives, false_negatives)
    return Evaluation(
        split=split.name,
        samples=len(sample_ids),
        class_names=class_names,
        iou={n: None if np.isnan(v) else float(v) for n, v in zip(class_names, iou)},
        mean_iou=float(np.nanmean(iou)),
        mean_per_image_iou=float(np.nanmean(np.concatenate(per_image))),
        pixel_accuracy=float(true_positives.sum() / (true_positives + false_negatives).sum()),  # over labelled pixels
    )


def evaluate_model(model: Any, config: Config, *, split_name: str = "validation") -> Evaluation:
    """Evaluate a loaded model (onnxruntime session or Keras model) on one split of ``config``."""
    from coco_seg.export import predict_logits

    split = load_labeled_split(config, split_name, data_root=resolve_data_root(config))
    return evaluate_split(lambda images: predict_logits(model, images), split)
