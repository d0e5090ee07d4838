"""Single-sample visualizer data as plain numpy arrays (no code-loader import; leap_binder wraps them).

Each function takes one sample — (S, S, C) arrays without a batch axis; a leading batch axis of size 1 is
accepted and dropped (:func:`drop_batch_axis`). Images come back as uint8 RGB, label maps as (S, S) uint8 codes
(Tensorleap colours masks itself), heatmaps as channel-first float32. Predictions may be logits or probabilities
and may hold NaN/Inf; the rules are those of :mod:`coco_seg.metrics`: a pixel whose prediction holds NaN/Inf
predicts no class, and an all-zero ground-truth pixel is ignored.
"""

from collections.abc import Sequence

import numpy as np

from coco_seg import metrics

__all__ = [
    "confidence_heatmaps",
    "denormalize_image",
    "drop_batch_axis",
    "error_map",
    "label_map",
    "loss_heatmap",
]


def drop_batch_axis(array: np.ndarray, *, ndim: int = 3) -> np.ndarray:
    """Return ``array`` as a single sample of ``ndim`` dimensions, dropping a leading batch axis of size 1.

    Args:
        array: (S, S, C) or (1, S, S, C) for the default ``ndim=3``.
        ndim: keyword-only number of dimensions of one sample.

    Raises:
        ValueError: the array is neither ``ndim``-D nor ``ndim + 1``-D with a leading axis of size 1.
    """
    array = np.asarray(array)
    if array.ndim == ndim + 1 and array.shape[0] == 1:
        return array[0]
    if array.ndim != ndim:
        raise ValueError(f"expected one sample of {ndim} dimensions (or a batch of one); got shape {array.shape}")
    return array


def denormalize_image(image: np.ndarray) -> np.ndarray:
    """Invert the model's input normalisation ``pixel / 127.5 - 1``.

    Args:
        image: (S, S, 3) float in [-1, 1] (or (1, S, S, 3)).

    Returns:
        (S, S, 3) uint8: ``round((x + 1) * 127.5)`` clipped to 0..255 (NaN becomes 0).
    """
    image = drop_batch_axis(image).astype(np.float32)
    pixels = np.rint((image + np.float32(1)) * np.float32(127.5))
    return np.clip(np.nan_to_num(pixels, nan=0.0), 0, 255).astype(np.uint8)


def label_map(one_hot_or_scores: np.ndarray) -> np.ndarray:
    """Class index of every pixel.

    Args:
        one_hot_or_scores: (S, S, K) one-hot ground truth, logits or probabilities (or (1, S, S, K)), K <= 256.

    Returns:
        (S, S) uint8 argmax over the class axis. A pixel whose scores hold NaN/Inf, or an all-zero one-hot
        pixel, maps to 0 (background).
    """
    scores = drop_batch_axis(one_hot_or_scores).astype(np.float32)
    if scores.shape[-1] > 256:
        raise ValueError(f"label_map supports at most 256 classes; got shape {scores.shape}")
    finite = np.all(np.isfinite(scores), axis=-1)
    labels = np.argmax(np.where(finite[..., None], scores, np.float32(0)), axis=-1)
    labels[~finite] = 0
    return labels.astype(np.uint8)


def error_map_labels(class_names: Sequence[str]) -> list[str]:
    """Labels of the :func:`error_map` codes: ``["correct", "false positive <c1>", "false negative <c1>", ...]``."""
    labels = ["correct"]
    for name in list(class_names)[1:]:
        labels += [f"false positive {name}", f"false negative {name}"]
    return labels


def error_map(ground_truth: np.ndarray, prediction: np.ndarray, *,
              class_names: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """Where and how the prediction is wrong, as mask codes.

    Code layout, for ``class_names = [background, c1, c2, ...]`` (K names, K - 1 non-background classes):

    * 0 — ``"correct"``: predicted class == ground-truth class (background predicted on background included),
      and every ignored pixel (all-zero ground truth);
    * ``2c - 1`` — ``"false positive <c>"``: class c (1 <= c < K) predicted where the ground truth is not c;
    * ``2c`` — ``"false negative <c>"``: ground truth c (c >= 1) predicted as something else.

    A wrong pixel carries one code: the false positive of the predicted class when that class is not background,
    otherwise (background predicted, or NaN/Inf in the prediction) the false negative of the ground-truth class.
    So a "person predicted as car" pixel reads "false positive car", and a missed person "false negative person".

    Args:
        ground_truth: (S, S, K) one-hot (or (1, S, S, K)).
        prediction: (S, S, K) logits or probabilities (or (1, S, S, K)).
        class_names: keyword-only K names, background first.

    Returns:
        ``(codes, labels)``: (S, S) uint8 codes and the ``2K - 1`` labels they index (:func:`error_map_labels`).
    """
    ground_truth = drop_batch_axis(ground_truth)
    prediction = drop_batch_axis(prediction)
    class_names = list(class_names)
    if ground_truth.shape[-1] != len(class_names):
        raise ValueError(f"class_names has {len(class_names)} names but ground_truth has "
                         f"{ground_truth.shape[-1]} classes (shape {ground_truth.shape})")
    if 2 * len(class_names) - 1 > 256:
        raise ValueError(f"error_map supports at most 128 classes; got {len(class_names)}")
    metrics.confusion_counts(ground_truth[None], prediction[None])  # validates shapes and the one-hot
    gt = ground_truth.astype(np.float32)
    gt_labels = np.argmax(gt, axis=-1)
    labelled = gt.max(axis=-1) != 0
    scores = prediction.astype(np.float32)
    finite = np.all(np.isfinite(scores), axis=-1)
    pred_labels = np.argmax(np.where(finite[..., None], scores, np.float32(0)), axis=-1)
    pred_labels[~finite] = -1  # invalid: predicts no class
    wrong = labelled & (pred_labels != gt_labels)
    false_positive = wrong & (pred_labels >= 1)
    codes = np.zeros(gt_labels.shape, dtype=np.uint8)
    codes[false_positive] = (2 * pred_labels[false_positive] - 1).astype(np.uint8)
    false_negative = wrong & ~false_positive  # background predicted, or NaN/Inf; gt is then non-background
    codes[false_negative] = (2 * gt_labels[false_negative]).astype(np.uint8)
    return codes, error_map_labels(class_names)


def loss_heatmap(ground_truth: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """Per-pixel cross-entropy (:func:`coco_seg.metrics.pixel_cross_entropy`) of one sample.

    Args:
        ground_truth: (S, S, K) one-hot (or (1, S, S, K)).
        prediction: (S, S, K) logits or probabilities (or (1, S, S, K)).

    Returns:
        (1, S, S) float32, finite and non-negative; 0 at ignored pixels, ``-log(1e-7)`` at NaN/Inf pixels.
    """
    ground_truth = drop_batch_axis(ground_truth)
    prediction = drop_batch_axis(prediction)
    return metrics.pixel_cross_entropy(ground_truth[None], prediction[None]).astype(np.float32)


def confidence_heatmaps(prediction: np.ndarray) -> np.ndarray:
    """Softmax probability of every class (:func:`coco_seg.metrics.to_probabilities`) of one sample.

    Args:
        prediction: (S, S, K) logits or probabilities (or (1, S, S, K)).

    Returns:
        (K, S, S) float32 in [0, 1], channel first; all zeros at pixels whose prediction holds NaN/Inf.
    """
    probabilities = metrics.to_probabilities(drop_batch_axis(prediction)[None])[0]
    return np.ascontiguousarray(np.moveaxis(probabilities, -1, 0), dtype=np.float32)
