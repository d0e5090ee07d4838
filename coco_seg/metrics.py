"""Segmentation metrics and loss on batched numpy arrays (functional core; no code-loader import).

Algorithm: the ground truth (N, S, S, K) one-hot and the prediction (N, S, S, K) scores are each reduced to one
label per pixel by argmax over the class axis; per sample and class the pixels are tallied into true positives
(TP), false positives (FP) and false negatives (FN), from which

* IoU   = TP / (TP + FP + FN)
* dice  = 2 TP / (2 TP + FP + FN)
* pixel accuracy = correct pixels / labelled pixels

and the loss is the per-pixel categorical cross-entropy, averaged over the labelled pixels of each sample.
Everything is computed in float32 (counts in int64) whatever the input dtype: the Tensorleap engine hands
metrics and losses float16 arrays, and float16 logits as large as ±65504 are handled without overflow.

Policies
--------
* **Absent class.** A class absent from *both* the ground truth and the prediction of a sample (TP + FP + FN = 0)
  has an undefined IoU / dice: NaN in the per-class arrays. Means are taken over the defined classes only
  (``np.nanmean`` semantics) — an absent class counts neither as 0 nor as 1. Every labelled pixel belongs to a
  ground-truth class, so a sample with at least one labelled pixel always has a defined class and finite means.
* **Ignored pixels.** A ground-truth pixel whose one-hot vector is all zeros (e.g. the engine's padding) is
  ignored: it is left out of every count, of the accuracy and of the loss (its per-pixel loss is 0). A sample
  with no labelled pixel at all has NaN IoU / dice / accuracy (undefined) and a loss of 0.
* **Non-finite predictions.** A pixel whose prediction vector holds any NaN or ±Inf is *invalid*: its predicted
  class is "none". It counts as a false negative of its ground-truth class, as nobody's true or false positive,
  and as a wrong pixel for the accuracy; its loss is the finite penalty ``-log(eps)`` (≈ 16.12 for the default
  ``eps = 1e-7``). NaN is never silently averaged into a result.
* **Logits or probabilities.** Each sample's prediction is taken as probabilities when all its (finite) values
  lie in [0, 1] and every pixel's channel sum is within ``atol`` of 1 (``atol`` = 1e-2 for float16 input,
  1e-3 otherwise); anything else is taken as logits and goes through a numerically stable softmax. The metrics
  use only the argmax, which is the same either way; the choice matters for the loss and the probabilities.
* **Ground truth** must be finite and one-hot (values 0 or 1, at most one 1 per pixel), else ``ValueError``.
"""

import numpy as np

__all__ = [
    "DEFAULT_EPS",
    "by_class_name",
    "confusion_counts",
    "cross_entropy_loss",
    "dice_per_class",
    "iou_per_class",
    "mean_dice",
    "mean_iou",
    "pixel_accuracy",
    "pixel_cross_entropy",
    "to_probabilities",
]

DEFAULT_EPS = 1e-7
"""Probability floor of the cross-entropy; ``-log(DEFAULT_EPS)`` (≈ 16.12) is the loss of an invalid pixel."""

_ATOL_FLOAT16 = 1e-2
_ATOL_DEFAULT = 1e-3
_IGNORED = -1  # ground-truth label of a pixel whose one-hot is all zeros
_INVALID = -1  # predicted label of a pixel whose prediction holds NaN/Inf
_FLOAT32_MAX = np.float32(np.finfo(np.float32).max)


# ----------------------------------------------------------------------------------------------- validation

def _as_real_array(array, name: str) -> np.ndarray:
    array = np.asarray(array)
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)
            or array.dtype == np.bool_):
        raise ValueError(f"{name} must be a real numeric array; got dtype {array.dtype}")
    return array


def _check_prediction(prediction) -> np.ndarray:
    prediction = _as_real_array(prediction, "prediction")
    if prediction.ndim != 4:
        raise ValueError(f"prediction must be a 4-D array (N, S, S, K); got shape {prediction.shape}")
    if prediction.shape[-1] < 2:
        raise ValueError(f"prediction must have K >= 2 classes (background + at least one class) on its last "
                         f"axis; got shape {prediction.shape}")
    return prediction


def _check_pair(ground_truth, prediction) -> tuple[np.ndarray, np.ndarray]:
    ground_truth = _as_real_array(ground_truth, "ground_truth")
    prediction = _as_real_array(prediction, "prediction")
    for name, array in (("ground_truth", ground_truth), ("prediction", prediction)):
        if array.ndim != 4:
            raise ValueError(f"{name} must be a 4-D array (N, S, S, K); got {name} shape {array.shape} "
                             f"(ground_truth {ground_truth.shape}, prediction {prediction.shape})")
    if ground_truth.shape != prediction.shape:
        raise ValueError(f"ground_truth and prediction must have the same shape (N, S, S, K); got ground_truth "
                         f"{ground_truth.shape} and prediction {prediction.shape}")
    if ground_truth.shape[-1] < 2:
        raise ValueError(f"ground_truth and prediction must have K >= 2 classes (background + at least one "
                         f"class) on their last axis; got ground_truth {ground_truth.shape} and prediction "
                         f"{prediction.shape}")
    gt = ground_truth.astype(np.float32, copy=False)
    if not np.all(np.isfinite(gt)):
        raise ValueError(f"ground_truth must be finite one-hot; it holds NaN or Inf (shape {ground_truth.shape})")
    if not np.all((gt == 0) | (gt == 1)):
        bad = np.unique(gt[(gt != 0) & (gt != 1)])[:5]
        raise ValueError(f"ground_truth must be one-hot (values 0 or 1); found values {bad.tolist()} "
                         f"(shape {ground_truth.shape})")
    if np.any(gt.sum(axis=-1) > 1):
        raise ValueError(f"ground_truth must be one-hot: some pixels have more than one class set "
                         f"(shape {ground_truth.shape})")
    return gt, prediction


# ------------------------------------------------------------------------------------------------- internals

def _gt_labels(gt: np.ndarray) -> np.ndarray:
    """(N, S, S, K) validated one-hot → (N, S, S) int64 labels, ``_IGNORED`` where the one-hot is all zeros."""
    labels = np.argmax(gt, axis=-1).astype(np.int64)
    labels[gt.max(axis=-1) == 0] = _IGNORED
    return labels


def _finite_pixels(prediction: np.ndarray) -> np.ndarray:
    """(N, S, S) bool: the prediction vector of the pixel is entirely finite."""
    if not np.issubdtype(prediction.dtype, np.floating):
        return np.ones(prediction.shape[:-1], dtype=bool)
    return np.all(np.isfinite(prediction), axis=-1)


def _predicted_labels(prediction: np.ndarray, finite: np.ndarray) -> np.ndarray:
    """(N, S, S) int64 argmax of the raw prediction (= argmax of its softmax), ``_INVALID`` at non-finite pixels."""
    scores = np.where(finite[..., None], prediction.astype(np.float32, copy=False), np.float32(0))
    labels = np.argmax(scores, axis=-1).astype(np.int64)
    labels[~finite] = _INVALID
    return labels


def _probability_samples(x: np.ndarray, finite: np.ndarray, atol: float) -> np.ndarray:
    """(N,) bool: the sample's finite pixels all look like probability vectors (values in [0, 1], sum ≈ 1)."""
    in_range = ((x >= 0) & (x <= 1)) | ~finite[..., None]
    with np.errstate(invalid="ignore", over="ignore"):
        sums_ok = (np.abs(x.sum(axis=-1) - 1) <= atol) | ~finite
    return in_range.all(axis=(1, 2, 3)) & sums_ok.all(axis=(1, 2))


def _default_atol(prediction: np.ndarray, atol: float | None) -> float:
    if atol is not None:
        return float(atol)
    return _ATOL_FLOAT16 if prediction.dtype == np.float16 else _ATOL_DEFAULT


def _shifted_logits(x: np.ndarray) -> np.ndarray:
    """x - max(x) over the class axis, floored at -float32 max (finite even for logits spanning > 3.4e38)."""
    with np.errstate(over="ignore", invalid="ignore"):
        shifted = x - x.max(axis=-1, keepdims=True)
    return np.maximum(shifted, -_FLOAT32_MAX)


def _prepare_prediction(prediction: np.ndarray, atol: float | None):
    """float32 copy with non-finite pixels zeroed, the finite-pixel mask and the per-sample probability flags."""
    finite = _finite_pixels(prediction)
    x = np.where(finite[..., None], prediction.astype(np.float32, copy=False), np.float32(0))
    is_prob = _probability_samples(x, finite, _default_atol(prediction, atol))
    return x, finite, is_prob


def _safe_ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator in float32, NaN where the denominator is 0 (no warning)."""
    numerator = numerator.astype(np.float32)
    denominator = denominator.astype(np.float32)
    out = np.full(np.broadcast_shapes(numerator.shape, denominator.shape), np.nan, dtype=np.float32)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def _nanmean_rows(values: np.ndarray) -> np.ndarray:
    """(N, K) → (N,) mean over the non-NaN entries of each row; NaN for an all-NaN row (no warning)."""
    defined = ~np.isnan(values)
    total = np.where(defined, values, 0).sum(axis=1, dtype=np.float64)
    return _safe_ratio(total, defined.sum(axis=1))


# ------------------------------------------------------------------------------------------------ public API

def to_probabilities(prediction: np.ndarray, *, atol: float | None = None) -> np.ndarray:
    """Per-pixel class probabilities of a prediction given as logits or probabilities.

    Args:
        prediction: (N, S, S, K) logits or probabilities, any real dtype (float16 included).
        atol: keyword-only tolerance on the channel sums for the probability test; default 1e-2 for float16
            input, 1e-3 otherwise.

    Returns:
        (N, S, S, K) float32 probabilities. A sample whose finite values all lie in [0, 1] with every channel
        sum within ``atol`` of 1 is taken as probabilities and renormalised to sum exactly 1 (removes float16
        rounding); any other sample is taken as logits and goes through a numerically stable float32 softmax
        (max subtracted first, so float16 logits of ±65504 neither overflow nor give NaN). Pixels whose
        prediction vector holds NaN/Inf get an all-zero vector (no class is predicted there).

    Raises:
        ValueError: ``prediction`` is not a 4-D real array with K >= 2.
    """
    prediction = _check_prediction(prediction)
    x, finite, is_prob = _prepare_prediction(prediction, atol)
    probabilities = np.empty_like(x)
    if is_prob.any():
        p = x[is_prob]
        sums = p.sum(axis=-1, keepdims=True)
        probabilities[is_prob] = np.divide(p, sums, out=np.zeros_like(p), where=sums > 0)
    if (~is_prob).any():
        e = np.exp(_shifted_logits(x[~is_prob]))
        probabilities[~is_prob] = e / e.sum(axis=-1, keepdims=True)
    probabilities[~finite] = 0
    return probabilities


def confusion_counts(ground_truth: np.ndarray, prediction: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-sample, per-class true positives, false positives and false negatives.

    Args:
        ground_truth: (N, S, S, K) one-hot (all-zero pixels are ignored).
        prediction: (N, S, S, K) logits or probabilities (any real dtype).

    Returns:
        ``(tp, fp, fn)``, each (N, K) int64, from the argmax labels of ground truth and prediction over the
        labelled pixels. A pixel with a non-finite prediction adds a false negative to its ground-truth class
        and nothing else.

    Raises:
        ValueError: bad shapes (not 4-D, different shapes, K < 2) or a ground truth that is not finite one-hot.
    """
    gt, prediction = _check_pair(ground_truth, prediction)
    n, k = gt.shape[0], gt.shape[-1]
    gt_labels = _gt_labels(gt)
    pred_labels = _predicted_labels(prediction, _finite_pixels(prediction))
    offset = (np.arange(n, dtype=np.int64) * k)[:, None, None]
    labelled = gt_labels != _IGNORED
    hit = labelled & (pred_labels == gt_labels)
    miss = labelled & ~hit
    false_pos = miss & (pred_labels != _INVALID)

    def tally(mask: np.ndarray, labels: np.ndarray) -> np.ndarray:
        return np.bincount((labels + offset)[mask], minlength=n * k).astype(np.int64).reshape(n, k)

    return tally(hit, gt_labels), tally(false_pos, pred_labels), tally(miss, gt_labels)


def iou_per_class(ground_truth: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """Intersection over union of every class of every sample.

    Args:
        ground_truth: (N, S, S, K) one-hot.
        prediction: (N, S, S, K) logits or probabilities.

    Returns:
        (N, K) float32 ``TP / (TP + FP + FN)``; NaN for a class absent from both the ground truth and the
        prediction of that sample (undefined, see the module policies).
    """
    tp, fp, fn = confusion_counts(ground_truth, prediction)
    return _safe_ratio(tp, tp + fp + fn)


def mean_iou(ground_truth: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """Mean IoU of each sample over its defined classes (NaN per-class entries are skipped, ``np.nanmean``).

    Args:
        ground_truth: (N, S, S, K) one-hot.
        prediction: (N, S, S, K) logits or probabilities.

    Returns:
        (N,) float32; finite for every sample with at least one labelled pixel, NaN for a fully ignored one.
    """
    return _nanmean_rows(iou_per_class(ground_truth, prediction))


def dice_per_class(ground_truth: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """Dice coefficient (F1) of every class of every sample.

    Args:
        ground_truth: (N, S, S, K) one-hot.
        prediction: (N, S, S, K) logits or probabilities.

    Returns:
        (N, K) float32 ``2 TP / (2 TP + FP + FN)``; NaN for a class absent from both the ground truth and the
        prediction of that sample.
    """
    tp, fp, fn = confusion_counts(ground_truth, prediction)
    return _safe_ratio(2 * tp, 2 * tp + fp + fn)


def mean_dice(ground_truth: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """Mean dice of each sample over its defined classes (``np.nanmean`` semantics).

    Args:
        ground_truth: (N, S, S, K) one-hot.
        prediction: (N, S, S, K) logits or probabilities.

    Returns:
        (N,) float32; finite for every sample with at least one labelled pixel, NaN for a fully ignored one.
    """
    return _nanmean_rows(dice_per_class(ground_truth, prediction))


def pixel_accuracy(ground_truth: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """Share of labelled pixels whose predicted class is the ground-truth class.

    Args:
        ground_truth: (N, S, S, K) one-hot (all-zero pixels are ignored).
        prediction: (N, S, S, K) logits or probabilities; pixels with NaN/Inf count as wrong.

    Returns:
        (N,) float32 in [0, 1]; NaN for a sample with no labelled pixel.
    """
    tp, _, fn = confusion_counts(ground_truth, prediction)
    return _safe_ratio(tp.sum(axis=1), tp.sum(axis=1) + fn.sum(axis=1))


def pixel_cross_entropy(ground_truth: np.ndarray, prediction: np.ndarray, *, eps: float = DEFAULT_EPS,
                        atol: float | None = None) -> np.ndarray:
    """Per-pixel categorical cross-entropy ``-log p(ground-truth class)``.

    Args:
        ground_truth: (N, S, S, K) one-hot (all-zero pixels are ignored).
        prediction: (N, S, S, K) logits or probabilities (detected per sample, see :func:`to_probabilities`).
        eps: keyword-only probability floor: probabilities are clipped to [eps, 1] before the log, so a pixel's
            loss from probabilities is at most ``-log(eps)``.
        atol: keyword-only channel-sum tolerance of the probability test (see :func:`to_probabilities`).

    Returns:
        (N, S, S) float32, non-negative and finite: the exact float32 log-softmax for logits (unbounded, so a
        confidently wrong logit can exceed ``-log(eps)``), the clipped log for probabilities, ``-log(eps)`` for a
        pixel whose prediction holds NaN/Inf, and 0 for an ignored pixel.
    """
    if not 0 < eps < 1:
        raise ValueError(f"eps must be in (0, 1); got {eps}")
    gt, prediction = _check_pair(ground_truth, prediction)
    gt_labels = _gt_labels(gt)
    labelled = gt_labels != _IGNORED
    x, finite, is_prob = _prepare_prediction(prediction, atol)
    index = np.maximum(gt_labels, 0)[..., None]
    log_p = np.empty(gt_labels.shape, dtype=np.float32)
    if is_prob.any():
        p = x[is_prob]
        p_true = np.take_along_axis(p, index[is_prob], axis=-1)[..., 0]
        sums = p.sum(axis=-1)
        p_true = np.divide(p_true, sums, out=np.zeros_like(p_true), where=sums > 0)
        log_p[is_prob] = np.log(np.clip(p_true, np.float32(eps), np.float32(1)))
    if (~is_prob).any():
        shifted = _shifted_logits(x[~is_prob])
        # log Σ exp(shifted) = log1p(Σ over the non-max terms): the max term is exactly 1, and log1p keeps
        # the tiny loss of a confident correct pixel accurate (log(1 + 9e-5) in float32 would lose 3 digits).
        at_max = shifted == 0
        rest = np.where(at_max, np.float32(0), np.exp(shifted)).sum(axis=-1) + (at_max.sum(axis=-1) - 1)
        log_sum = np.log1p(rest.astype(np.float32))
        log_p[~is_prob] = np.take_along_axis(shifted, index[~is_prob], axis=-1)[..., 0] - log_sum
    loss = np.minimum(-log_p, _FLOAT32_MAX)
    loss = np.where(finite, np.maximum(loss, np.float32(0)), np.float32(-np.log(eps)))
    return np.where(labelled, loss, np.float32(0)).astype(np.float32, copy=False)


def cross_entropy_loss(ground_truth: np.ndarray, prediction: np.ndarray, *, eps: float = DEFAULT_EPS,
                       atol: float | None = None) -> np.ndarray:
    """Mean per-pixel cross-entropy of each sample over its labelled pixels (see :func:`pixel_cross_entropy`).

    Args:
        ground_truth: (N, S, S, K) one-hot (all-zero pixels are ignored).
        prediction: (N, S, S, K) logits or probabilities.
        eps: keyword-only probability floor (``-log(eps)`` is also the loss of a NaN/Inf pixel).
        atol: keyword-only channel-sum tolerance of the probability test.

    Returns:
        (N,) float32, finite and non-negative; 0 for a sample with no labelled pixel.
    """
    per_pixel = pixel_cross_entropy(ground_truth, prediction, eps=eps, atol=atol)
    labelled = np.asarray(ground_truth).max(axis=-1) != 0
    counts = labelled.sum(axis=(1, 2))
    total = per_pixel.sum(axis=(1, 2), dtype=np.float64)
    out = np.zeros(per_pixel.shape[0], dtype=np.float32)
    np.divide(total, counts, out=out, where=counts > 0, casting="unsafe")
    return out


def by_class_name(values: np.ndarray, class_names) -> dict[str, np.ndarray]:
    """Split a per-class array into one (N,) float32 array per class name (for a dict-valued engine metric).

    Args:
        values: (N, K) per-class values, e.g. from :func:`iou_per_class` (NaN entries are kept).
        class_names: K names, background first.

    Returns:
        ``{class_names[k]: values[:, k]}`` as contiguous float32 arrays, in class order.
    """
    values = np.asarray(values)
    class_names = list(class_names)
    if values.ndim != 2 or values.shape[1] != len(class_names):
        raise ValueError(f"values must be (N, K) with K = len(class_names) = {len(class_names)}; "
                         f"got shape {values.shape}")
    if len(set(class_names)) != len(class_names):
        raise ValueError(f"class_names must be unique; got {class_names}")
    return {name: np.ascontiguousarray(values[:, k], dtype=np.float32) for k, name in enumerate(class_names)}
