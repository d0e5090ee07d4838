"""Single-sample visualizer data as plain numpy arrays (no code-loader import; leap_binder wraps them).

Each function takes one sample — (S, S, C) arrays without a batch axis; a leading batch axis of size 1 is
accepted and dropped (:func:`drop_batch_axis`). Images come back as uint8 RGB, label maps as (S, S) uint8 codes
(Tensorleap colours masks itself), heatmaps as channel-first float32. Predictions may be logits or probabilities
and may hold NaN/Inf; the rules are those of :mod:`coco_seg.metrics`: a pixel whose prediction holds NaN/Inf
predicts no class, and an all-zero ground-truth pixel is ignored.
"""

from collections.abc import Sequence
from functools import lru_cache

import cv2
import numpy as np

from coco_seg import metrics
from coco_seg.content_memo import ContentMemo, read_only

# Speed: these run once per sample after inference, each engine call on its own copy of the sample. They are built
# on metrics' public per-pixel functions (predicted_labels, label_pairs, pixel_cross_entropy, class_probabilities),
# which share the metrics' content-keyed memo: a sample's validation, argmax and softmax are computed once for all
# its metric, loss and visualizer calls; see coco_seg.metrics.

# Every visualizer of a sample shows its image: memoised by content, it is denormalised once per sample.
_IMAGE_MEMO = ContentMemo(entries=2)

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
        (S, S, 3) uint8: ``round((x + 1) * 127.5)`` clipped to 0..255 (NaN becomes 0). A new array on every call.
    """
    image = drop_batch_axis(image)
    memo = _IMAGE_MEMO.entry(_IMAGE_MEMO.key(image))
    return memo.get("denormalized", lambda: read_only(_denormalize(image))).copy()


def _denormalize(image: np.ndarray) -> np.ndarray:
    """denormalize_image of a (S, S, C) array, computed."""
    if image.dtype == np.float16 and image.size:
        # numpy converts float16 without SIMD (~5x slower than OpenCV); float32(x) + 1 is the same either way
        pixels = cv2.add(image.reshape(image.shape[0], -1), 1.0, dtype=cv2.CV_32F).reshape(image.shape)
    else:
        pixels = np.add(image, np.float32(1), dtype=np.float32, casting="unsafe")  # a float32 copy of x + 1
    pixels *= np.float32(127.5)
    np.clip(pixels, np.float32(0), np.float32(255), out=pixels)  # NaN stays NaN here...
    if not pixels.size:
        return pixels.astype(np.uint8)
    # ... and becomes 0 in OpenCV's float → uint8 conversion, which rounds half to even like np.rint
    return cv2.convertScaleAbs(pixels.reshape(pixels.shape[0], -1)).reshape(pixels.shape)


def label_map(one_hot_or_scores: np.ndarray) -> np.ndarray:
    """Class index of every pixel.

    Args:
        one_hot_or_scores: (S, S, K) one-hot ground truth, logits or probabilities (or (1, S, S, K)), K <= 256.

    Returns:
        (S, S) uint8 argmax over the class axis. A pixel whose scores hold NaN/Inf, or an all-zero one-hot
        pixel, maps to 0 (background).
    """
    scores = drop_batch_axis(one_hot_or_scores)
    if scores.shape[-1] > metrics.MAX_LABEL_CLASSES:
        raise ValueError(f"label_map supports at most {metrics.MAX_LABEL_CLASSES} classes; got shape {scores.shape}")
    if scores.shape[-1] == 1:  # one class: the argmax is 0 everywhere (metrics take K >= 2)
        return np.zeros(scores.shape[:-1], np.uint8)
    # a ground truth the metrics already validated costs no argmax: its memoised labels are returned
    return metrics.predicted_labels(scores[None])[0]


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
    # Label K is "no class" on both sides: an ignored ground-truth pixel, a NaN/Inf prediction. Each
    # (ground truth, prediction) label pair indexes a table of the codes.
    label_pairs = metrics.label_pairs(ground_truth[None], prediction[None])[0]  # validates the one-hot; our own array
    table = _error_code_table(len(class_names))
    if label_pairs.size and table.size == 256:
        codes = cv2.LUT(label_pairs, table, dst=label_pairs)  # in place
    else:
        codes = table[label_pairs]
    return codes, error_map_labels(class_names)


@lru_cache(maxsize=None)
def _error_code_table(k: int) -> np.ndarray:
    """uint8 error code of every (ground truth g, prediction p) label pair at index g * (K + 1) + p, labels 0..K
    (K: no class); padded to 256 entries for cv2.LUT when it fits."""
    gt, predicted = np.divmod(np.arange((k + 1) ** 2), k + 1)
    correct = (gt == k) | (predicted == gt)  # ignored ground truth counts as correct
    false_positive = (predicted >= 1) & (predicted < k)
    codes = np.where(correct, 0, np.where(false_positive, 2 * predicted - 1, 2 * gt)).astype(np.uint8)
    if codes.size < 256:
        codes = np.concatenate([codes, np.zeros(256 - codes.size, np.uint8)])
    codes.flags.writeable = False
    return codes


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
    return metrics.pixel_cross_entropy(ground_truth[None], prediction[None])


def confidence_heatmaps(prediction: np.ndarray) -> np.ndarray:
    """Softmax probability of every class (:func:`coco_seg.metrics.to_probabilities`) of one sample.

    Args:
        prediction: (S, S, K) logits or probabilities (or (1, S, S, K)).

    Returns:
        (K, S, S) float32 in [0, 1], channel first; all zeros at pixels whose prediction holds NaN/Inf.
    """
    return metrics.class_probabilities(drop_batch_axis(prediction)[None])[0]  # computed class-first: no transpose
