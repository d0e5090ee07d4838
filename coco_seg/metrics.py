"""Segmentation metrics and loss on batched numpy arrays (functional core; no code-loader import).

Algorithm: the ground truth (N, S, S, K) one-hot and the prediction (N, S, S, K) scores are each reduced to one
label per pixel by argmax over the class axis; per sample and class the pixels are tallied into true positives
(TP), false positives (FP) and false negatives (FN), from which

* IoU   = TP / (TP + FP + FN)
* dice  = 2 TP / (2 TP + FP + FN)
* pixel accuracy = correct pixels / labelled pixels

and the loss is the per-pixel categorical cross-entropy, averaged over the labelled pixels of each sample.

**Boundary IoU** (Cheng et al., CVPR 2021) compares the class masks near their contours only. The boundary region of
a binary mask M is ``B(M) = M - erode(M, d)``: the pixels of M whose *chessboard* distance to the nearest pixel
outside M is at most d (erosion by a 3x3 square kernel iterated d times, as in the paper's reference code). As in
that code the image border counts as a contour: outside the image is background, so a mask cut by the border has a
boundary along it (the reference code pads the mask with a ring of zeros before eroding; here a constant border
does the same). ``d = max(1, round(dilation_ratio * image diagonal))`` with the paper's default ratio 0.02: d = 2
at 64 px, 4 at 128 px, 6 at 224 px. Per class c, with G and P the ground-truth and predicted masks of c,
``Boundary IoU_c = |B(G) ∩ B(P)| / |B(G) ∪ B(P)|``; over a dataset, the intersections and the unions are summed
first. A non-empty mask always has a non-empty boundary, so Boundary IoU is undefined (NaN) exactly where IoU is.
:class:`SegmentationAccumulator` streams batches into dataset-level figures (torchmetrics style: ``update``,
``compute``, ``reset``): IoU and Boundary IoU per class from counts summed over the dataset, pixel accuracy, and
the mean of per-image IoU.

The Tensorleap engine calls every metric and the loss separately on the same sample: what they share (validation,
class planes, counts, per-pixel loss) is computed once per distinct content, in a small per-process memo keyed by
the arrays' bytes (two samples at most); every function still returns new arrays of its own.
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
* **Boundary IoU** follows the same rules: a class's ground-truth mask holds its labelled pixels, its predicted
  mask the labelled pixels whose valid prediction's argmax is the class. Ignored pixels are in neither mask (so
  what is predicted there never changes a result, and the edge of an ignored region is a contour of both sides
  alike), and a NaN/Inf pixel is in no predicted mask (a hole, with a contour around it).

Besides the metrics, the per-pixel pieces they are built from are public, for the visualizers and the analyses:
:func:`predicted_labels`, :func:`ground_truth_labels`, :func:`label_pairs`, :func:`to_probabilities` and its
class-first twin :func:`class_probabilities`. They follow the same policies and share the same memo.
"""

import math
from dataclasses import dataclass
from typing import NamedTuple

import cv2
import numpy as np

from coco_seg.content_memo import ContentMemo, MemoEntry, read_only

__all__ = [
    "DEFAULT_DILATION_RATIO",
    "DEFAULT_EPS",
    "MAX_LABEL_CLASSES",
    "MAX_LABEL_PAIR_CLASSES",
    "SegmentationAccumulator",
    "SegmentationScores",
    "boundary_counts",
    "boundary_iou_per_class",
    "boundary_width",
    "by_class_name",
    "class_probabilities",
    "confusion_counts",
    "cross_entropy_loss",
    "dice_per_class",
    "ground_truth_labels",
    "iou_per_class",
    "label_pairs",
    "mean_dice",
    "mean_iou",
    "pixel_accuracy",
    "pixel_cross_entropy",
    "predicted_labels",
    "to_probabilities",
]

DEFAULT_EPS = 1e-7
"""Probability floor of the cross-entropy; ``-log(DEFAULT_EPS)`` (≈ 16.12) is the loss of an invalid pixel."""

MAX_LABEL_CLASSES = 256
"""Most classes :func:`predicted_labels` and :func:`ground_truth_labels` take: their labels are uint8."""

MAX_LABEL_PAIR_CLASSES = 255
"""Most classes :func:`label_pairs` takes: its codes, up to ``(K + 1)^2 - 1``, must fit a uint16."""

DEFAULT_DILATION_RATIO = 0.02
"""Boundary IoU's boundary width as a share of the image diagonal (the paper's default)."""

_ATOL_FLOAT16 = 1e-2
_ATOL_DEFAULT = 1e-3
_FLOAT32_MAX = np.float32(np.finfo(np.float32).max)


# ----------------------------------------------------------------------------------------------- validation

def _as_real_array(array, name: str) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype.kind in "fiub":  # the common case, without the (slower) issubdtype walk
        return array
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)
            or array.dtype == np.bool_):
        raise ValueError(f"{name} must be a real numeric array; got dtype {array.dtype}")
    return array


def _check_score_array(array, name: str) -> np.ndarray:
    """Type and shape of a (N, S, S, K) prediction or ground truth, K >= 2 (values are checked where used)."""
    array = _as_real_array(array, name)
    if array.ndim != 4:
        raise ValueError(f"{name} must be a 4-D array (N, S, S, K); got shape {array.shape}")
    if array.shape[-1] < 2:
        raise ValueError(f"{name} must have K >= 2 classes (background + at least one class) on its last "
                         f"axis; got shape {array.shape}")
    return array


def _check_prediction(prediction) -> np.ndarray:
    return _check_score_array(prediction, "prediction")


def _check_ground_truth(ground_truth) -> np.ndarray:
    """A ground truth given alone (its values are checked by _ground_truth_masks)."""
    return _check_score_array(ground_truth, "ground_truth")


def _check_classes_at_most(array: np.ndarray, name: str, function: str, most: int) -> None:
    if array.shape[-1] > most:
        raise ValueError(f"{function} supports at most {most} classes; got {name} shape {array.shape}")


def _check_pair(ground_truth, prediction) -> tuple[np.ndarray, np.ndarray]:
    """Types and shapes of a (ground truth, prediction) pair."""
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
    return ground_truth, prediction  # the values of the ground truth are checked by _ground_truth_masks


# ------------------------------------------------------------------------------------------------- internals
#
# Speed. One sample is (1, S, S, K) with K small, and numpy is slow at reductions and argmax over a short last axis
# and at any float16 arithmetic. So each array is de-interleaved once into K contiguous (N*S, S) "planes" (cv2.split,
# one pass) and all per-pixel work is elementwise plane operations, float16 ones in OpenCV (compare, max,
# subtract-to-float32), which vectorises them natively. Pixel sets are uint8 masks, 255 = in the set (cv2.compare's
# convention, so ~mask is the complement), combined with bitwise ops and tallied with cv2.reduce. Each distinct
# (ground truth, prediction) content is validated and de-interleaved once (_Sample.pair, memoised by content in
# _SAMPLE_MEMO across the engine's separate calls on one sample); an all-finite prediction, the common case, is
# recognised from one sum without any per-pixel finiteness work.

_FAST_DTYPES = (np.dtype(np.float16), np.dtype(np.float32))  # handled natively; other dtypes become float32
_ONE_BITS = {np.dtype(np.float16): (np.uint16, 0x3C00), np.dtype(np.float32): (np.uint32, 0x3F800000)}  # 1.0
_SIGNED_VIEW = {np.dtype(np.float16): np.int16, np.dtype(np.float32): np.int32}  # same-size types cv2 counts
_CV_MAX_CHANNELS = 128  # CV_CN_MAX of OpenCV 5: cv2 reads a wider last axis as a plain dimension
_MAX_INT32_MASK_SUM = (2**31 - 1) // 255  # pixels whose 255s an int32 sum holds


class _Prediction(NamedTuple):
    """A checked (N, S, S, K) prediction as class planes: (N*S, S) arrays, sample i in rows i*S... What is derived
    from it (the methods) is computed once per content: values in its _PREDICTION_MEMO entry, all read-only, never
    mutated. Holds no array of the caller's, so a memoised _Pair holding it stays valid whatever the caller does."""

    memo: MemoEntry                 # its entry in _PREDICTION_MEMO
    n: int                          # samples
    scores: np.ndarray              # (K, N*S, S) float16/float32 planes, zeroed at invalid pixels
    invalid: np.ndarray | None      # mask: where the prediction holds NaN/Inf; None when there is no such pixel

    def top(self) -> np.ndarray:
        """(N*S, S) max over the classes, in the scores' dtype (see _plane_max)."""
        return self.memo.get("top", lambda: read_only(_plane_max(self.scores)))

    def probability_samples(self, atol: float) -> tuple[bool, ...]:
        """Per sample: taken as probabilities (see _probability_samples)."""
        return self.memo.get(("probability samples", atol), lambda: tuple(
            _probability_samples(self.scores, self.invalid, self.top(), self.n, atol)))

    def logit_terms(self) -> tuple[np.ndarray, np.ndarray]:
        """(K, N*S, S) float32 shifted logits ``x - max`` and their exps (shared by the loss and the softmax)."""
        def compute():
            shifted = _shifted_logits(self.scores, self.top())
            return read_only(shifted), read_only(_exp(shifted))  # exp(x - max) cannot overflow; exp(-inf) = 0
        return self.memo.get("logit terms", compute)

    def labels(self) -> np.ndarray:
        """(N*S, S) uint8 argmax of the scores (0 at invalid pixels, whose scores are zeroed); see _argmax_labels."""
        return self.memo.get("labels", lambda: read_only(_argmax_labels(self.scores)))


class _Pair(NamedTuple):
    """A validated (ground truth, prediction) batch as class planes: (N*S, S) arrays, sample i in rows i*S...

    Shared through _SAMPLE_MEMO, so its arrays are read-only: work on them makes new arrays."""

    n: int                          # samples
    k: int                          # classes
    gt_masks: np.ndarray            # (K, N*S, S) masks: where the ground truth is each class
    labelled: np.ndarray            # mask: where the ground-truth pixel is labelled (not all zeros)
    all_labelled: bool              # no ground-truth pixel is ignored
    prediction: _Prediction

    @property
    def scores(self) -> np.ndarray:
        """(K, N*S, S) float16/float32 prediction planes, zeroed at invalid pixels."""
        return self.prediction.scores

    @property
    def invalid(self) -> np.ndarray | None:
        """Mask: where the prediction holds NaN/Inf; None when there is no such pixel."""
        return self.prediction.invalid


def _split(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Contiguous (N, S, S, K) → (K, N*S, S): one contiguous plane per class (into ``out`` if given)."""
    n, h, w, k = x.shape
    planes = np.empty((k, n * h, w), x.dtype) if out is None else out
    if x.size and k <= _CV_MAX_CHANNELS and (x.dtype in _FAST_DTYPES or x.dtype == np.uint8):
        # into our own planes (same shape and type, so cv2 writes in place): half the time of letting it allocate
        cv2.split(x.reshape(n * h, w, k), list(planes))
    else:
        planes[...] = np.moveaxis(x.reshape(n * h, w, k), -1, 0)
    return planes


def _counts(masks: np.ndarray, n: int) -> np.ndarray:
    """(M, n) int64: set pixels of each sample in each of M (M, n*S, S) masks (255 = set)."""
    m = len(masks)
    if not masks.size:
        return np.zeros((m, n), np.int64)
    rows = masks.reshape(m * n, masks.size // (m * n))  # one row per (mask, sample)
    if rows.shape[1] > _MAX_INT32_MASK_SUM:
        return np.count_nonzero(rows, axis=1).reshape(m, n).astype(np.int64)
    # all rows summed in one call: np.count_nonzero along an axis is ~20x slower, a countNonZero per row ~2x
    sums = cv2.reduce(rows, 1, cv2.REDUCE_SUM, dtype=cv2.CV_32S)
    return (sums // 255).astype(np.int64).reshape(m, n)


def _sample_rows(n: int, rows: int) -> list[slice]:
    """The row slice of each of n samples in a (rows, S) plane."""
    step = rows // n if n else 0
    return [slice(i * step, (i + 1) * step) for i in range(n)]


def _check_ground_truth_values(gt: np.ndarray, shape: tuple) -> None:
    """The plain, descriptive check; run only when the fast one in _ground_truth_masks cannot vouch for the values
    (which it may also do for a valid ground truth holding -0)."""
    if not np.all(np.isfinite(gt)):
        raise ValueError(f"ground_truth must be finite one-hot; it holds NaN or Inf (shape {shape})")
    if not np.all((gt == 0) | (gt == 1)):
        bad = np.unique(gt[(gt != 0) & (gt != 1)])[:5]
        raise ValueError(f"ground_truth must be one-hot (values 0 or 1); found values {bad.tolist()} "
                         f"(shape {shape})")
    if np.any(gt.sum(axis=-1) > 1):
        raise ValueError(f"ground_truth must be one-hot: some pixels have more than one class set (shape {shape})")


def _ground_truth_masks(ground_truth: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """Validate a (N, S, S, K) one-hot ground truth; return its (K, N*S, S) class masks, its labelled-pixel mask
    and whether every pixel is labelled."""
    gt = np.ascontiguousarray(ground_truth if ground_truth.dtype in _FAST_DTYPES else ground_truth.astype(np.float32))
    n, h, w, k = gt.shape
    gt_masks = np.empty((k, n * h, w), np.uint8)
    if not gt.size:
        return gt_masks, np.zeros((n * h, w), np.uint8), True
    flat = gt.reshape(n * h, w * k)
    bits, one = _ONE_BITS[gt.dtype]
    ones = (flat.view(bits) == one).view(np.uint8)  # exactly 1.0 has a single bit pattern (an integer compare)
    np.negative(ones, out=ones)  # 1 → 255
    _split(ones.reshape(n, h, w, k), out=gt_masks)
    labelled = gt_masks[0] | gt_masks[1]
    for mask in gt_masks[2:]:
        labelled |= mask
    # Finite one-hot ⟺ every non-zero value is exactly 1 (rules out NaN, Inf and any other value) and no pixel holds
    # two of them (then the labelled pixels are exactly as many as the ones). The non-zero values are counted on the
    # bit patterns (much faster than on float32), where -0 counts too: a -0 sends us to the plain check.
    n_ones, n_labelled = cv2.countNonZero(ones), cv2.countNonZero(labelled)
    if cv2.countNonZero(flat.view(_SIGNED_VIEW[gt.dtype])) != n_ones or n_labelled != n_ones:
        _check_ground_truth_values(gt, ground_truth.shape)
    return gt_masks, labelled, n_labelled == labelled.size


def _float32_scores(prediction: np.ndarray) -> np.ndarray:
    """A prediction of another dtype as float32: integers as they round, wider floats clipped to the float32 range
    (so a finite value stays finite), non-finite values as NaN."""
    if prediction.dtype.kind != "f":
        return prediction.astype(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        wide = prediction.astype(np.float64)
        scores = np.clip(wide, -_FLOAT32_MAX, _FLOAT32_MAX).astype(np.float32)
    scores[~np.isfinite(wide)] = np.nan
    return scores


def _score_planes(prediction: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """(K, N*S, S) class planes of a (N, S, S, K) prediction (float16 kept as is) and its invalid-pixel mask.

    Invalid pixels (any NaN/Inf in the vector) are zeroed in every plane, so later plane arithmetic sees finite
    values only. The mask is None when every value is finite, which one float64 sum tells: it is finite exactly
    when no value is NaN or ±Inf (a float64 sum of float16/float32 values cannot overflow).
    """
    prediction = np.ascontiguousarray(prediction if prediction.dtype in _FAST_DTYPES else _float32_scores(prediction))
    n, h, w, k = prediction.shape
    planes = _split(prediction)
    if not prediction.size or math.isfinite(cv2.sumElems(prediction.reshape(n * h, w * k))[0]):
        return planes, None
    invalid = ~np.isfinite(planes).all(axis=0)
    planes[:, invalid] = 0
    return planes, invalid.view(np.uint8) * np.uint8(255)


# The engine calls each metric, the loss and each visualizer of a sample separately, each on its own copy of the same
# arrays. Memoised by content, what they share is computed once per sample: per (ground truth, prediction) the
# validated pair, the counts and the per-pixel loss (_SAMPLE_MEMO); per prediction its planes, argmax and softmax
# terms (_PREDICTION_MEMO, also used by the visualizers that get the prediction alone). Two entries each: the sample
# being worked on and the one before (a call on an older sample is recomputed, as correct). Values are read-only;
# the public functions return new arrays.
_SAMPLE_MEMO = ContentMemo(entries=2)
_PREDICTION_MEMO = ContentMemo(entries=2)


def _prediction(prediction: np.ndarray, key: tuple | None = ()) -> _Prediction:
    """The _Prediction of a checked (N, S, S, K) array. ``key``: its _PREDICTION_MEMO key when already known (None:
    not memoised); computed when left out."""
    memo = _PREDICTION_MEMO.entry(_PREDICTION_MEMO.key(prediction) if key == () else key)

    def planes():
        scores, invalid = _score_planes(prediction)
        return read_only(scores), invalid if invalid is None else read_only(invalid)

    return _Prediction(memo, prediction.shape[0], *memo.get("planes", planes))


class _Sample(NamedTuple):
    """A checked (ground truth, prediction) batch and its _SAMPLE_MEMO entry (found once per public call)."""

    ground_truth: np.ndarray
    prediction: np.ndarray
    memo: MemoEntry

    def pair(self) -> _Pair:
        """The validated, de-interleaved batch."""
        def prepare() -> _Pair:
            gt_masks, labelled, all_labelled = _ground_truth_masks(self.ground_truth)  # validates first
            prediction_key = None if self.memo.key is None else self.memo.key[1:]  # no second copy of the bytes
            return _Pair(self.ground_truth.shape[0], self.ground_truth.shape[-1], read_only(gt_masks),
                         read_only(labelled), all_labelled, _prediction(self.prediction, prediction_key))
        return self.memo.get("pair", prepare)

    def gt_labels(self) -> np.ndarray:
        """(N*S, S) uint8 ground-truth class of every pixel, 0 at ignored ones (K <= 256)."""
        return _gt_labels(self.memo, self.pair())

    def label_pairs(self) -> np.ndarray:
        """(N*S, S) ``g * (K + 1) + p`` of every pixel, g its ground-truth class and p its predicted class, K for
        none (an ignored pixel; a NaN/Inf prediction): uint8 for K <= 15, else uint16 (K <= 255 only)."""
        def compute() -> np.ndarray:
            pair = self.pair()
            k = pair.k
            predicted = pair.prediction.labels()
            if pair.invalid is not None:
                predicted = predicted | (pair.invalid & np.uint8(k))  # the zeroed scores there gave label 0
            combined = self.gt_labels().astype(np.uint8 if k <= _LABEL_PAIR_MAX_CLASSES else np.uint16)
            if not pair.all_labelled:
                combined |= ~pair.labelled & np.uint8(k)  # no ground-truth class (its label is 0 there)
            combined *= k + 1
            combined += predicted
            return read_only(combined)
        return self.memo.get("label pairs", compute)

    def counts(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """_class_counts (read-only arrays); from a histogram of the label pairs when K <= 15."""
        def compute():
            pair = self.pair()
            rows, w = pair.labelled.shape
            if pair.k > _LABEL_PAIR_MAX_CLASSES or not pair.labelled.size or rows * w > pair.n * _MAX_HISTOGRAM_PIXELS:
                return tuple(read_only(c) for c in _class_counts(pair))
            return tuple(read_only(c) for c in _label_pair_counts(self.label_pairs(), pair.n, pair.k))
        return self.memo.get("counts", compute)

    def ratios(self) -> dict[str, np.ndarray]:
        """Every per-sample result of the counts, computed together on the first call: "iou" and "dice" (N, K),
        "mean_iou", "mean_dice" and "accuracy" (N,), all float32, read-only."""
        def compute() -> dict[str, np.ndarray]:
            tp, in_gt, predicted = self.counts()
            if tp.shape[0] == 1 and tp.shape[1] <= _SCALAR_MAX_CLASSES and in_gt.sum() <= _SCALAR_MAX_PIXELS:
                results = _one_sample_ratios(tp[0].tolist(), in_gt[0].tolist(), predicted[0].tolist())
            else:
                results = _ratios(tp, in_gt, predicted)
            return {name: read_only(values) for name, values in results.items()}
        return self.memo.get("ratios", compute)


def _ratios(tp: np.ndarray, in_gt: np.ndarray, predicted: np.ndarray) -> dict[str, np.ndarray]:
    """_Sample.ratios from (N, K) int64 counts."""
    both = in_gt + predicted
    # [numerator, denominator][iou, dice]: TP / (TP + FP + FN), 2 TP / (2 TP + FP + FN), in float32; a numerator is
    # 0 wherever its denominator is, so 0/0 gives the NaN of an absent class
    counts = np.stack([tp, 2 * tp, both - tp, both]).astype(np.float32).reshape(2, 2, *tp.shape)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = counts[0] / counts[1]
        defined = counts[1] > 0
        # np.nanmean semantics: the defined float32 ratios summed in float64, over their count
        means = (np.sum(per_class, axis=2, dtype=np.float64, where=defined).astype(np.float32)
                 / np.count_nonzero(defined, axis=2).astype(np.float32))
        accuracy = tp.sum(axis=1).astype(np.float32) / in_gt.sum(axis=1).astype(np.float32)  # TP + FN = labelled
    return {"iou": per_class[0], "dice": per_class[1], "mean_iou": means[0], "mean_dice": means[1],
            "accuracy": accuracy}


# One sample of few classes, the engine's case, is worked out on Python numbers: a few dozen numpy calls on (1, K)
# arrays cost ~20 µs. The results are bit for bit those of the arrays: the counts (< 2^23) are exact float32
# numbers, so rounding a float64 quotient to float32 gives the float32 quotient (double rounding is harmless for
# division when 53 >= 2 * 24 + 2), and below 8 terms numpy sums sequentially, in class order, as Python does.
_SCALAR_MAX_CLASSES = 7
_SCALAR_MAX_PIXELS = 1 << 23


def _one_sample_ratios(tp: list[int], in_gt: list[int], predicted: list[int]) -> dict[str, np.ndarray]:
    """_Sample.ratios of one sample from its K counts (K <= _SCALAR_MAX_CLASSES, < 2^23 labelled pixels)."""
    nan = math.nan
    iou = [t / (g + p - t) if g + p - t else nan for t, g, p in zip(tp, in_gt, predicted)]
    dice = [2 * t / (g + p) if g + p else nan for t, g, p in zip(tp, in_gt, predicted)]
    iou, dice = (np.array([ratios], np.float32) for ratios in (iou, dice))  # float64 quotients → float32

    def mean(ratios: np.ndarray) -> float:
        defined = [value for value in ratios[0].tolist() if value == value]  # the float32 values, as floats
        return float(np.float32(sum(defined))) / len(defined) if defined else nan

    labelled = sum(in_gt)
    return {"iou": iou, "dice": dice, "mean_iou": np.array([mean(iou)], np.float32),
            "mean_dice": np.array([mean(dice)], np.float32),
            "accuracy": np.array([sum(tp) / labelled if labelled else nan], np.float32)}


def _validated_ground_truth_labels(key: tuple | None) -> np.ndarray | None:
    """(N*S, S) uint8 class labels (0 at ignored pixels; read-only) of the array whose ContentMemo key is ``key`` if
    it is the ground truth of a pair already validated (memoised in _SAMPLE_MEMO), else None. Then they equal its
    argmax (see predicted_labels)."""
    found = None if key is None else _SAMPLE_MEMO.find(key[0], position=0)
    pair = None if found is None else found.stored("pair")
    return None if pair is None else _gt_labels(found, pair)


def _gt_labels(memo: MemoEntry, pair: _Pair) -> np.ndarray:
    """_Sample.gt_labels of the pair memoised in ``memo``."""
    return memo.get("gt labels", lambda: read_only(_mask_labels(pair.gt_masks)))


def _sample(ground_truth, prediction) -> _Sample:
    """Check the types and shapes of a (ground truth, prediction) batch and find its _SAMPLE_MEMO entry."""
    ground_truth, prediction = _check_pair(ground_truth, prediction)
    return _Sample(ground_truth, prediction, _SAMPLE_MEMO.entry(_SAMPLE_MEMO.key(ground_truth, prediction)))


def _argmax_masks(scores: np.ndarray, invalid: np.ndarray | None, out: np.ndarray | None = None) -> np.ndarray:
    """(K, N*S, S) masks (into ``out`` if given): where each class is the argmax of the scores (the first maximum,
    as np.argmax); no class is set at invalid pixels."""
    k = len(scores)
    masks = np.empty(scores.shape, np.uint8) if out is None else out
    if k == 1 or not masks.size:
        masks.fill(255 if k == 1 else 0)
    else:
        best = scores[0]
        for c in range(1, k):  # masks[c] first holds "c is strictly above every earlier class"
            cv2.compare(scores[c], best, cv2.CMP_GT, dst=masks[c])
            if c + 1 < k:
                best = cv2.max(best, scores[c])
        # c is the first maximum where it is above every earlier class and no later class is above all of its own
        # predecessors (a later class above c would be the first to be).
        later = masks[k - 1]
        for c in range(k - 2, 0, -1):
            wider = later | masks[c]
            masks[c] &= ~later
            later = wider
        np.bitwise_not(later, out=masks[0])
    if invalid is not None:
        masks &= ~invalid
    return masks


def _mask_labels(masks: np.ndarray) -> np.ndarray:
    """uint8 index of the set mask of each pixel, from at most 256 disjoint class masks; 0 where none is set."""
    labels = np.zeros(masks.shape[1:], np.uint8)
    for c in range(1, len(masks)):
        labels |= masks[c] & np.uint8(c)  # 255 & c = c
    return labels


def _argmax_labels(scores: np.ndarray) -> np.ndarray:
    """(N*S, S) uint8 argmax of at most 256 class planes: the first maximum, as np.argmax (what _argmax_masks
    marks, as labels, in fewer operations)."""
    labels = np.zeros(scores.shape[1:], np.uint8)
    if not labels.size:
        return labels
    best = scores[0]
    for c in range(1, len(scores)):
        above = cv2.compare(scores[c], best, cv2.CMP_GT)  # strictly above every earlier class: ties keep the first
        np.maximum(labels, above & np.uint8(c), out=labels)  # c only grows: the last class above all earlier wins
        if c + 1 < len(scores):
            best = cv2.max(best, scores[c])
    return labels


_LABEL_PAIR_MAX_CLASSES = 15  # (K + 1)^2 label pairs fit a uint8, the type cv2.calcHist counts fast
_MAX_HISTOGRAM_PIXELS = 1 << 24  # cv2.calcHist counts in float32: exact up to 2^24


def _label_pair_counts(label_pairs: np.ndarray, n: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """_class_counts from (N*S, S) uint8 label pairs (see _Sample.label_pairs; K <= 15, at most 2^24 pixels a
    sample): one histogram of the (K + 1)^2 pairs per sample."""
    bins = (k + 1) ** 2
    histograms = [cv2.calcHist([label_pairs[rows]], [0], None, [bins], [0, bins])
                  for rows in _sample_rows(n, label_pairs.shape[0])]
    if n == 1:  # on Python numbers: fewer, costly numpy calls on tiny arrays
        counts = [int(count) for count in histograms[0].ravel().tolist()]  # [ground truth * (K + 1) + prediction]
        rows = [counts[g * (k + 1):(g + 1) * (k + 1)] for g in range(k)]  # labelled ground truth only
        tp, in_gt = [row[g] for g, row in enumerate(rows)], [sum(row) for row in rows]
        predicted = [sum(row[c] for row in rows) for c in range(k)]
        return tuple(np.array([values], np.int64) for values in (tp, in_gt, predicted))
    pairs = np.stack(histograms).astype(np.int64).reshape(n, k + 1, k + 1)
    tp = pairs.diagonal(axis1=1, axis2=2)[:, :k].copy()  # [sample, ground truth, prediction]
    in_gt = pairs[:, :k, :].sum(axis=2)  # labelled pixels of each class, whatever the prediction
    predicted = pairs[:, :k, :k].sum(axis=1)  # over labelled pixels only
    return tp, in_gt, predicted


def _class_counts(pair: _Pair) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, K) int64 true positives, ground-truth pixels and predicted pixels (over labelled pixels) per class."""
    k = pair.k
    masks = np.empty((3, *pair.gt_masks.shape), np.uint8)  # ground truth, predicted, true positive: one tally
    masks[0] = pair.gt_masks
    predicted = _argmax_masks(pair.scores, pair.invalid, out=masks[1])
    if not pair.all_labelled:
        predicted &= pair.labelled
    np.bitwise_and(masks[0], predicted, out=masks[2])
    in_gt, predicted, tp = _counts(masks.reshape(3 * k, *masks.shape[2:]), pair.n).reshape(3, k, pair.n)
    return tp.T, in_gt.T, predicted.T


# Boundary IoU. B(M) = M - erode(M, d) with the paper's 3x3 square iterated d times, which is one erosion by the
# (2d+1)-square (their Minkowski sum; OpenCV makes the same substitution for an iterated all-ones kernel): a pixel
# of M is on the boundary when a pixel within chessboard distance d is outside M, the image's outside included.
#
# Speed. The classes' masks of one side (ground truth or prediction) are disjoint, so the boundaries of all K classes
# are found at once on the side's label map: p lies in B(M_L(p)) exactly when the labels within distance d of p are
# not all equal, i.e. where the morphological gradient (dilation - erosion) of the labels is not 0. Pixels in no mask
# (ignored ones; a NaN/Inf prediction) take a label of their own, K ("none", never counted). The border value 255 makes
# any window that reaches outside the image unequal (its dilation is 255, above every class label), and so does a
# row of 255 between two label maps: the maps of both sides of every sample of a batch, stacked with such rows
# between them, go through one gradient call. Above 255 classes (a class label and "none" would not fit a uint8)
# each class's mask is eroded instead. Either way a side's boundary map, intersected with a class's mask, is that
# class's boundary region; the counts of all classes and samples are tallied in one cv2.reduce.
_BOUNDARY_LABEL_MAX_CLASSES = 255
_SQUARE_KERNELS: dict[int, np.ndarray] = {}


def _check_dilation_ratio(dilation_ratio) -> float:
    if isinstance(dilation_ratio, (bool, np.bool_)) or not isinstance(dilation_ratio, (int, float, np.integer,
                                                                                       np.floating)):
        raise ValueError(f"dilation_ratio must be a real number >= 0; got {dilation_ratio!r}")
    if not (math.isfinite(dilation_ratio) and dilation_ratio >= 0):
        raise ValueError(f"dilation_ratio must be a finite number >= 0; got {dilation_ratio!r}")
    return float(dilation_ratio)


def _boundary_width(height: int, width: int, dilation_ratio: float) -> int:
    """d of a checked ratio: ``max(1, round(ratio * diagonal))`` (Python's round, as the paper's code), capped at the
    longer side (beyond it every mask pixel is boundary already, so the cap changes nothing)."""
    d = max(1, int(round(dilation_ratio * math.hypot(height, width))))
    return min(d, max(height, width, 1))


def _square_kernel(d: int) -> np.ndarray:
    """The (2d+1)-square of ones: the 3x3 square iterated d times (read-only, shared)."""
    kernel = _SQUARE_KERNELS.get(d)
    if kernel is None:
        kernel = _SQUARE_KERNELS.setdefault(d, read_only(np.ones((2 * d + 1, 2 * d + 1), np.uint8)))
    return kernel


def _predicted_masks(pair: _Pair) -> np.ndarray:
    """(K, N*S, S) masks (255 = set): where each class is predicted at a labelled pixel with a valid prediction."""
    masks = _argmax_masks(pair.scores, pair.invalid)
    if not pair.all_labelled:
        masks &= pair.labelled
    return masks


def _label_boundary_maps(gt_labels: np.ndarray, predicted_labels: np.ndarray, n: int, d: int) -> np.ndarray:
    """(2, N*S, S) bool: where the (N*S, S) uint8 label map of each side is on a boundary (labels within chessboard
    distance d not all equal, or that distance reaching outside the image), both sides of all samples in one call."""
    rows, w = gt_labels.shape
    h = rows // n
    stack = np.empty((2, n, h + 1, w), np.uint8)
    stack[:, :, h] = 255  # a row of "outside" below each map
    stack[0, :, :h] = gt_labels.reshape(n, h, w)
    stack[1, :, :h] = predicted_labels.reshape(n, h, w)
    gradient = cv2.morphologyEx(stack.reshape(-1, w), cv2.MORPH_GRADIENT, _square_kernel(d),
                                borderType=cv2.BORDER_CONSTANT, borderValue=255).reshape(2, n, h + 1, w)
    return gradient[:, :, :h].reshape(2, rows, w) != 0


def _mask_boundary_maps(gt_masks: np.ndarray, predicted: np.ndarray, n: int, d: int) -> np.ndarray:
    """(2, N*S, S) bool: the union of B(M) over each side's (K, N*S, S) disjoint masks, one erosion per non-empty
    mask of each sample (border value 0: the outside of the image is outside every mask)."""
    kernel = _square_kernel(d)
    maps = np.zeros((2, *gt_masks.shape[1:]), bool)
    for side, masks in enumerate((gt_masks, predicted)):
        for sample_rows in _sample_rows(n, masks.shape[1]):
            for mask in masks[:, sample_rows]:
                if cv2.countNonZero(mask):
                    eroded = cv2.erode(mask, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0)
                    maps[side, sample_rows] |= mask != eroded  # the eroded mask lies inside the mask
    return maps


def _boundary_counts(sample: "_Sample", dilation_ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """(N, K) int64 |B(G) ∩ B(P)| and |B(G) ∪ B(P)| of a checked sample (read-only, memoised per width d)."""
    pair = sample.pair()  # validates first
    n, k = pair.n, pair.k
    rows, w = pair.labelled.shape
    d = _boundary_width(rows // n if n else 0, w, dilation_ratio)

    def compute() -> tuple[np.ndarray, np.ndarray]:
        if not pair.labelled.size:
            return read_only(np.zeros((n, k), np.int64)), read_only(np.zeros((n, k), np.int64))
        # (3, K, N*S, S) 0/1: each class's boundary region on the ground-truth side, on the predicted side, and both
        regions = np.empty((3, k, rows, w), np.uint8)
        if k <= _BOUNDARY_LABEL_MAX_CLASSES:
            none = np.uint8(k)  # the label of "no class": above every class label, so np.maximum sets it
            gt_labels, predicted_labels = _gt_labels(sample.memo, pair), pair.prediction.labels()
            if pair.invalid is not None:
                predicted_labels = np.maximum(predicted_labels, pair.invalid & none)  # label 0 there
            if not pair.all_labelled:
                ignored = ~pair.labelled & none
                gt_labels, predicted_labels = np.maximum(gt_labels, ignored), np.maximum(predicted_labels, ignored)
            np.equal(predicted_labels, np.arange(k, dtype=np.uint8)[:, None, None], out=regions[1].view(bool))
            maps = _label_boundary_maps(gt_labels, predicted_labels, n, d)
        else:
            regions[1] = _predicted_masks(pair)  # 255 = set
            maps = _mask_boundary_maps(pair.gt_masks, regions[1], n, d)
        maps = maps.view(np.uint8)  # 0/1
        np.bitwise_and(pair.gt_masks, maps[0], out=regions[0])
        np.bitwise_and(regions[1], maps[1], out=regions[1])
        np.bitwise_and(regions[0], regions[1], out=regions[2])
        sums = cv2.reduce(regions.reshape(3 * k * n, rows // n * w), 1, cv2.REDUCE_SUM, dtype=cv2.CV_32S)
        in_gt, in_predicted, common = sums.astype(np.int64).reshape(3, k, n).transpose(0, 2, 1)
        return read_only(common.copy()), read_only(in_gt + in_predicted - common)

    return sample.memo.get(("boundary counts", d), compute)


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """float64 ``numerator / denominator`` of counts, NaN where the denominator is 0 (no warning)."""
    numerator, denominator = np.asarray(numerator, np.float64), np.asarray(denominator, np.float64)
    out = np.full(np.broadcast_shapes(numerator.shape, denominator.shape), np.nan)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def _nanmean(values: np.ndarray) -> float:
    """Mean of the non-NaN values as a float (np.nanmean's result), NaN when there is none (no warning)."""
    values = np.asarray(values, np.float64)
    defined = values[~np.isnan(values)]
    return float(np.mean(defined)) if defined.size else math.nan


def _default_atol(prediction: np.ndarray, atol: float | None) -> float:
    if atol is not None:
        return float(atol)
    return _ATOL_FLOAT16 if prediction.dtype == np.float16 else _ATOL_DEFAULT


def _float32(planes: np.ndarray) -> np.ndarray:
    """(K, R, S) planes as float32 (a copy)."""
    k, rows, w = planes.shape
    return cv2.add(planes.reshape(k * rows, w), 0.0, dtype=cv2.CV_32F).reshape(k, rows, w)


def _plane_sum(planes: np.ndarray) -> np.ndarray:
    """float32 sum of the planes, added in class order (as numpy sums a short last axis)."""
    total = cv2.add(planes[0], planes[1], dtype=cv2.CV_32F)
    for plane in planes[2:]:
        total = cv2.add(total, plane, dtype=cv2.CV_32F)
    return total


def _plane_max(planes: np.ndarray) -> np.ndarray:
    """Elementwise max over the planes, in their dtype."""
    top = planes[0]
    for plane in planes[1:]:
        top = cv2.max(top, plane)
    return top


def _probability_samples(scores: np.ndarray, invalid: np.ndarray | None, top: np.ndarray, n: int,
                         atol: float) -> list[bool]:
    """Per sample: its valid pixels all look like probability vectors (values in [0, 1], sum within atol of 1).

    The max over the classes (``top``) settles most logits at once; the min and the channel sums only when needed.
    """
    # A pixel passes only if its float32 channel sum is >= 1 - atol, and that sum is at most K * its max * (1 + 2^-24)
    # ** (K - 1) (each addition rounds up by at most 2^-24): a max below top_floor (a looser bound still) means logits,
    # settled by the same minMaxLoc. Invalid pixels (zeroed, max 0) take no part in the test: only without them.
    k = len(scores)
    top_floor = (1 - float(np.float32(atol))) / (k * (1 + 2.0**-23) ** k) if invalid is None else -math.inf
    flags = []
    for rows in _sample_rows(n, top.shape[0]):
        top_min, top_max = cv2.minMaxLoc(top[rows])[:2]
        if top_max > 1 or top_min < top_floor:
            flags.append(False)
            continue
        if n == 1:  # the planes of one sample are one contiguous block: one call finds their minimum
            low = cv2.minMaxLoc(scores.reshape(-1, scores.shape[-1]))[0]
        else:
            low = min(cv2.minMaxLoc(plane[rows])[0] for plane in scores)
        if low < 0:
            flags.append(False)
            continue
        total = _plane_sum([plane[rows] for plane in scores])
        if invalid is not None:
            total[invalid[rows] != 0] = 1  # invalid pixels take no part in the test
        low, high = cv2.minMaxLoc(total)[:2]
        # max |sum - 1| in float32, as numpy evaluates np.abs(sums - 1) <= atol on float32 sums
        off = max(np.float32(high) - np.float32(1), np.float32(1) - np.float32(low))
        flags.append(bool(off <= np.float32(atol)))
    return flags


def _by_sample(n: int, flags: list[bool], when_true, when_false) -> np.ndarray:
    """(..., N*S, S) planes from ``when_true()`` for the flagged samples and from ``when_false()`` for the others."""
    if all(flags):
        return when_true()
    if not any(flags):
        return when_false()
    chosen, other = when_true(), when_false()
    for rows, flag in zip(_sample_rows(n, chosen.shape[-2]), flags):
        if not flag:
            chosen[..., rows, :] = other[..., rows, :]
    return chosen


def _shifted_logits(scores: np.ndarray, top: np.ndarray) -> np.ndarray:
    """(K, R, S) float32 x - max(x): exact for float16 input, <= 0, and -inf for a span beyond float32."""
    k, rows, w = scores.shape
    tops = np.empty_like(scores)
    tops[:] = top  # one subtraction over all K planes costs about half of K separate ones
    return cv2.subtract(scores.reshape(k * rows, w), tops.reshape(k * rows, w), dtype=cv2.CV_32F).reshape(k, rows, w)


def _exp(planes: np.ndarray) -> np.ndarray:
    """exp of (K, R, S) float32 planes, as a new array, in one OpenCV call."""
    k, rows, w = planes.shape
    return cv2.exp(planes.reshape(k * rows, w)).reshape(k, rows, w)


def _probability_planes(prediction: _Prediction, atol: float) -> np.ndarray:
    """(K, N*S, S) float32 probabilities (a new array): per sample the renormalised probabilities or the softmax of
    the logits; 0 at invalid pixels."""
    scores, invalid = prediction.scores, prediction.invalid

    def normalised() -> np.ndarray:
        planes = _float32(scores)
        total = _plane_sum(planes)
        return np.divide(planes, total, out=np.zeros_like(planes), where=total > 0)

    def softmax() -> np.ndarray:
        exps = prediction.logit_terms()[1]
        return np.divide(exps, _plane_sum(exps))

    planes = _by_sample(prediction.n, prediction.probability_samples(atol), normalised, softmax)
    if invalid is not None:
        planes[:, invalid != 0] = 0
    return planes


def _pixel_loss(pair: _Pair, eps: float, atol: float) -> np.ndarray:
    """(N*S, S) float32 per-pixel cross-entropy of a prepared, non-empty pair (see pixel_cross_entropy)."""
    scores, gt_masks = pair.scores, pair.gt_masks

    def from_probabilities() -> np.ndarray:
        planes = _float32(scores)
        p_true = np.zeros_like(planes[0])
        for plane, mask in zip(planes, gt_masks):
            cv2.copyTo(plane, mask, p_true)
        total = _plane_sum(planes)
        p_true = np.divide(p_true, total, out=np.zeros_like(p_true), where=total > 0)
        return -np.log(np.clip(p_true, np.float32(eps), np.float32(1)))

    def from_logits() -> np.ndarray:
        # -log softmax(x)[gt] = log Σ_c exp(x_c - max) - (x_gt - max). The max term of the sum is exactly 1, so the
        # sum is 1 + rest and log1p(rest) keeps the tiny loss of a confident correct pixel accurate (log of 1 + 9e-5
        # in float32 would lose 3 digits). rest, the sum of all terms but one maximal one, is built without ever
        # adding that 1: the largest term so far is kept aside, and the smaller of it and the next term is added.
        shifted, terms = pair.prediction.logit_terms()
        shifted_true = np.zeros_like(shifted[0])
        for s, mask in zip(shifted, gt_masks):
            cv2.copyTo(s, mask, shifted_true)
        kept, rest = terms[0], None
        for c in range(1, len(terms)):
            smaller = np.minimum(kept, terms[c])
            rest = smaller if rest is None else np.add(rest, smaller, out=rest)
            if c + 1 < len(terms):
                kept = np.maximum(kept, terms[c])
        loss = np.log1p(rest, out=rest)
        loss -= shifted_true  # >= 0: both parts are
        if scores.dtype != np.float16:
            np.minimum(loss, _FLOAT32_MAX, out=loss)  # a span beyond float32 gave +inf
        return loss

    loss = _by_sample(pair.n, pair.prediction.probability_samples(atol), from_probabilities, from_logits)
    if pair.invalid is not None:
        loss[pair.invalid != 0] = np.float32(-np.log(eps))
    if not pair.all_labelled:
        loss = cv2.copyTo(loss, pair.labelled, np.zeros_like(loss))  # ignored pixels: 0
    return loss


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
    n, h, w, k = prediction.shape
    planes = _probabilities(prediction, atol)
    return np.ascontiguousarray(np.moveaxis(planes.reshape(k, n, h, w), 0, -1))


def _probabilities(prediction: np.ndarray, atol: float | None) -> np.ndarray:
    """(K, N*S, S) float32 class-first probabilities of a checked (N, S, S, K) prediction (see to_probabilities)."""
    n, h, w, k = prediction.shape
    if not prediction.size:
        return np.zeros((k, n * h, w), np.float32)
    return _probability_planes(_prediction(prediction), _default_atol(prediction, atol))


def class_probabilities(prediction: np.ndarray, *, atol: float | None = None) -> np.ndarray:
    """:func:`to_probabilities`, class axis first: the probability map of every class.

    Args:
        prediction: (N, S, S, K) logits or probabilities, any real dtype (float16 included).
        atol: keyword-only channel-sum tolerance of the probability test (see :func:`to_probabilities`).

    Returns:
        (N, K, S, S) float32 C-contiguous, a new array: ``out[i, c] == to_probabilities(prediction)[i, ..., c]``
        bit for bit. All K maps are 0 at a pixel whose prediction vector holds NaN/Inf. Computed class-first, so
        for N = 1 (one sample) no transpose is needed.

    Raises:
        ValueError: ``prediction`` is not a 4-D real array with K >= 2.
    """
    prediction = _check_prediction(prediction)
    n, h, w, k = prediction.shape
    planes = _probabilities(prediction, atol).reshape(k, n, h, w)  # a new array
    if n == 1:
        return planes.reshape(1, k, h, w)
    return np.ascontiguousarray(planes.transpose(1, 0, 2, 3))


def predicted_labels(prediction: np.ndarray) -> np.ndarray:
    """Predicted class of every pixel: the argmax over the class axis.

    Args:
        prediction: (N, S, S, K) logits or probabilities, any real dtype (float16 included), 2 <= K <= 256.
            A one-hot ground truth is accepted too: its argmax is its class, 0 at an all-zero pixel.

    Returns:
        (N, S, S) uint8, a new array: the first maximum (``np.argmax``'s tie rule), the same for logits and for
        probabilities. A pixel whose prediction vector holds NaN or ±Inf maps to 0 (background); the metrics
        count it as predicting no class, and :func:`label_pairs` tells the two apart.

    Raises:
        ValueError: ``prediction`` is not a 4-D real array with K >= 2, or has more than 256 classes.
    """
    prediction = _check_prediction(prediction)
    _check_classes_at_most(prediction, "prediction", "predicted_labels", MAX_LABEL_CLASSES)
    n, h, w, _ = prediction.shape
    key = _PREDICTION_MEMO.key(prediction)  # both memos key arrays alike
    # The ground truth of a pair the metrics validated has its labels memoised (0 at ignored pixels): they are its
    # argmax, so a label map of the ground truth costs no argmax of its own.
    labels = _validated_ground_truth_labels(key)
    if labels is None:
        labels = _prediction(prediction, key).labels()  # 0 at NaN/Inf pixels (their scores are zeroed)
    return labels.reshape(n, h, w).copy()


def ground_truth_labels(ground_truth: np.ndarray) -> np.ndarray:
    """Ground-truth class of every pixel of a validated one-hot ground truth.

    Args:
        ground_truth: (N, S, S, K) one-hot, any real dtype (float16, integers and bool included), 2 <= K <= 256.
            Values must be exactly 0 or 1 (-0 counts as 0) with at most one 1 per pixel; an all-zero pixel is
            *ignored* (e.g. the engine's padding).

    Returns:
        (N, S, S) uint8, a new array: the index of the pixel's 1, and 0 (background) at an ignored pixel. This
        is the one-hot's argmax, so it equals :func:`predicted_labels` of the same array. The metrics leave
        ignored pixels out; to tell them from background use ``ground_truth.any(-1)`` or :func:`label_pairs`.

    Raises:
        ValueError: ``ground_truth`` is not a 4-D real array with K >= 2, has more than 256 classes, or is not
            finite one-hot (the metrics' messages: "NaN or Inf", "values 0 or 1", "more than one class").
    """
    ground_truth = _check_ground_truth(ground_truth)
    _check_classes_at_most(ground_truth, "ground_truth", "ground_truth_labels", MAX_LABEL_CLASSES)
    n, h, w, _ = ground_truth.shape
    labels = _validated_ground_truth_labels(_SAMPLE_MEMO.key(ground_truth))  # validated by the metrics already
    if labels is None:
        labels = _mask_labels(_ground_truth_masks(ground_truth)[0])  # validates first
    return labels.reshape(n, h, w).copy()


def label_pairs(ground_truth: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """The (ground-truth class, predicted class) pair of every pixel, as one code.

    Args:
        ground_truth: (N, S, S, K) one-hot (all-zero pixels are ignored), 2 <= K <= 255.
        prediction: (N, S, S, K) logits or probabilities, the same shape.

    Returns:
        (N, S, S) ``g * (K + 1) + p``, a new array, where g is the pixel's ground-truth class and p its predicted
        class (argmax, first maximum), each in 0..K with K meaning "no class": g = K at an ignored (all-zero)
        ground-truth pixel, p = K where the prediction vector holds NaN or ±Inf. ``np.divmod(codes, K + 1)``
        gives ``(g, p)`` back. uint8 for K <= 15 (all ``(K + 1)^2`` codes fit), uint16 above. The metrics'
        counts are histograms of these codes (pixels with g < K only).

    Raises:
        ValueError: bad shapes (not 4-D, different shapes, K < 2), more than 255 classes, or a ground truth that
            is not finite one-hot.
    """
    sample = _sample(ground_truth, prediction)
    _check_classes_at_most(sample.ground_truth, "ground_truth", "label_pairs", MAX_LABEL_PAIR_CLASSES)
    n, h, w, _ = sample.ground_truth.shape
    return sample.label_pairs().reshape(n, h, w).copy()  # validates the one-hot


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
    tp, in_gt, predicted = _sample(ground_truth, prediction).counts()
    return tp.copy(), predicted - tp, in_gt - tp


def boundary_width(height: int, width: int, *, dilation_ratio: float = DEFAULT_DILATION_RATIO) -> int:
    """The boundary width d, in pixels, that Boundary IoU uses on a ``height`` x ``width`` image.

    Args:
        height, width: the image size (S, S for the (N, S, S, K) arrays of the metrics).
        dilation_ratio: keyword-only share of the image diagonal (finite, >= 0; the paper's 0.02 by default).

    Returns:
        ``max(1, round(dilation_ratio * sqrt(height^2 + width^2)))``, capped at the longer side: 2 at 64 px, 4 at
        128 px, 6 at 224 px for the default ratio.

    Raises:
        ValueError: ``dilation_ratio`` is negative, NaN, infinite or not a number.
    """
    return _boundary_width(int(height), int(width), _check_dilation_ratio(dilation_ratio))


def boundary_counts(ground_truth: np.ndarray, prediction: np.ndarray, *,
                    dilation_ratio: float = DEFAULT_DILATION_RATIO) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample, per-class intersection and union of the boundary regions (the counts of Boundary IoU).

    Args:
        ground_truth: (N, S, S, K) one-hot (all-zero pixels are ignored).
        prediction: (N, S, S, K) logits or probabilities, any real dtype (float16 included).
        dilation_ratio: keyword-only boundary width as a share of the image diagonal (see :func:`boundary_width`).

    Returns:
        ``(intersection, union)``, each (N, K) int64: ``|B(G) ∩ B(P)|`` and ``|B(G) ∪ B(P)|`` where, for class c of
        a sample, G is its ground-truth mask, P its predicted mask (argmax; NaN/Inf pixels predict no class),
        both over the labelled pixels only, and ``B(M) = M - erode(M, d)`` (chessboard distance <= d to a pixel
        outside M, the outside of the image included; see the module docstring). Summed over samples they give
        the dataset-level Boundary IoU ``sum(intersection) / sum(union)``. The union is 0 exactly for a class
        absent from both the ground truth and the prediction.

    Raises:
        ValueError: bad shapes (not 4-D, different shapes, K < 2), a ground truth that is not finite one-hot, or a
            bad ``dilation_ratio``.
    """
    dilation_ratio = _check_dilation_ratio(dilation_ratio)
    intersection, union = _boundary_counts(_sample(ground_truth, prediction), dilation_ratio)
    return intersection.copy(), union.copy()


def boundary_iou_per_class(ground_truth: np.ndarray, prediction: np.ndarray, *,
                           dilation_ratio: float = DEFAULT_DILATION_RATIO) -> np.ndarray:
    """Boundary IoU (Cheng et al., CVPR 2021) of every class of every sample.

    Args:
        ground_truth: (N, S, S, K) one-hot (all-zero pixels are ignored: in neither mask).
        prediction: (N, S, S, K) logits or probabilities, any real dtype (float16 included); a pixel whose vector
            holds NaN/Inf predicts no class.
        dilation_ratio: keyword-only boundary width as a share of the image diagonal; d = max(1, round(ratio x
            diagonal)) pixels, 4 at 128 px for the default 0.02 (see :func:`boundary_width`).

    Returns:
        (N, K) float64 ``|B(G) ∩ B(P)| / |B(G) ∪ B(P)|`` (see :func:`boundary_counts`), in [0, 1]: 1 for identical
        masks, 0 for masks whose boundary regions do not meet; NaN for a class absent from both the ground truth
        and the prediction of that sample (both boundaries empty), like :func:`iou_per_class`.

    Raises:
        ValueError: bad shapes (not 4-D, different shapes, K < 2), a ground truth that is not finite one-hot, or a
            bad ``dilation_ratio``.
    """
    intersection, union = _boundary_counts(_sample(ground_truth, prediction), _check_dilation_ratio(dilation_ratio))
    return _ratio(intersection, union)


def iou_per_class(ground_truth: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """Intersection over union of every class of every sample.

    Args:
        ground_truth: (N, S, S, K) one-hot.
        prediction: (N, S, S, K) logits or probabilities.

    Returns:
        (N, K) float32 ``TP / (TP + FP + FN)``; NaN for a class absent from both the ground truth and the
        prediction of that sample (undefined, see the module policies).
    """
    return _sample(ground_truth, prediction).ratios()["iou"].copy()


def mean_iou(ground_truth: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """Mean IoU of each sample over its defined classes (NaN per-class entries are skipped, ``np.nanmean``).

    Args:
        ground_truth: (N, S, S, K) one-hot.
        prediction: (N, S, S, K) logits or probabilities.

    Returns:
        (N,) float32; finite for every sample with at least one labelled pixel, NaN for a fully ignored one.
    """
    return _sample(ground_truth, prediction).ratios()["mean_iou"].copy()


def dice_per_class(ground_truth: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """Dice coefficient (F1) of every class of every sample.

    Args:
        ground_truth: (N, S, S, K) one-hot.
        prediction: (N, S, S, K) logits or probabilities.

    Returns:
        (N, K) float32 ``2 TP / (2 TP + FP + FN)``; NaN for a class absent from both the ground truth and the
        prediction of that sample.
    """
    return _sample(ground_truth, prediction).ratios()["dice"].copy()


def mean_dice(ground_truth: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """Mean dice of each sample over its defined classes (``np.nanmean`` semantics).

    Args:
        ground_truth: (N, S, S, K) one-hot.
        prediction: (N, S, S, K) logits or probabilities.

    Returns:
        (N,) float32; finite for every sample with at least one labelled pixel, NaN for a fully ignored one.
    """
    return _sample(ground_truth, prediction).ratios()["mean_dice"].copy()


def pixel_accuracy(ground_truth: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """Share of labelled pixels whose predicted class is the ground-truth class.

    Args:
        ground_truth: (N, S, S, K) one-hot (all-zero pixels are ignored).
        prediction: (N, S, S, K) logits or probabilities; pixels with NaN/Inf count as wrong.

    Returns:
        (N,) float32 in [0, 1]; NaN for a sample with no labelled pixel.
    """
    return _sample(ground_truth, prediction).ratios()["accuracy"].copy()


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
    return _checked_pixel_loss(ground_truth, prediction, eps, atol)[0].copy()


def _checked_pixel_loss(ground_truth, prediction, eps: float, atol: float | None) -> tuple[np.ndarray, _Pair]:
    """(N, S, S) float32 per-pixel loss (read-only, memoised) and the prepared pair (whose labelled mask the mean
    needs)."""
    if not 0 < eps < 1:
        raise ValueError(f"eps must be in (0, 1); got {eps}")
    sample = _sample(ground_truth, prediction)
    pair = sample.pair()
    atol = _default_atol(sample.prediction, atol)

    def pixel_loss() -> np.ndarray:
        n, h, w, _ = sample.prediction.shape
        if not pair.labelled.size:
            return read_only(np.zeros((n, h, w), np.float32))
        return read_only(_pixel_loss(pair, eps, atol).reshape(n, h, w))

    return sample.memo.get(("pixel loss", float(eps), atol), pixel_loss), pair


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
    per_pixel, pair = _checked_pixel_loss(ground_truth, prediction, eps, atol)
    if pair.n == 1 and pair.all_labelled:
        counts = np.array([pair.labelled.size])  # labelled pixels: all of the one sample's
    else:
        counts = _counts(pair.labelled[None], pair.n)[0]
    if pair.n == 1 and per_pixel.size:
        total = np.array([cv2.sumElems(per_pixel[0])[0]])  # float64 accumulation
    else:
        total = per_pixel.sum(axis=(1, 2), dtype=np.float64)
    out = np.zeros(pair.n, dtype=np.float32)
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


# ----------------------------------------------------------------------------------------------- accumulator

@dataclass(frozen=True)
class SegmentationScores:
    """Dataset-level figures of a :class:`SegmentationAccumulator` (see :meth:`SegmentationAccumulator.compute`).

    Per-class arrays are (K,), in class order (background first); NaN marks an undefined value, never 0."""

    samples: int                        # images seen
    iou: np.ndarray                     # (K,) float64 sum TP / sum (TP + FP + FN); NaN: in neither GT nor prediction
    mean_iou: float                     # mean of the defined ``iou`` values; NaN when none is
    pixel_accuracy: float               # correct / labelled pixels over the dataset; NaN when no pixel is labelled
    mean_per_image_iou: float           # mean over images of their mean IoU (images with no labelled pixel left out)
    boundary_iou: np.ndarray            # (K,) float64 sum |B(G) ∩ B(P)| / sum |B(G) ∪ B(P)|; NaN as for ``iou``
    mean_boundary_iou: float            # mean of the defined ``boundary_iou`` values; NaN when none is
    true_positives: np.ndarray          # (K,) int64 pixel counts summed over the dataset ...
    false_positives: np.ndarray
    false_negatives: np.ndarray
    boundary_intersection: np.ndarray   # (K,) int64 ... and the boundary counts
    boundary_union: np.ndarray
    dilation_ratio: float               # the boundary width's share of the image diagonal


class SegmentationAccumulator:
    """Dataset-level segmentation metrics accumulated batch by batch (torchmetrics style).

    ``update(ground_truth, prediction)`` adds a batch, ``compute()`` returns the figures of everything added so far
    as :class:`SegmentationScores`, ``reset()`` starts again. Only (K,) counts and two numbers are kept, so a split of
    any size streams through in constant memory. Every rule is the functional metrics' (one implementation: the
    same validated, memoised sample as :func:`confusion_counts`, :func:`mean_iou` and :func:`boundary_counts`):
    all-zero ground-truth pixels are ignored, a pixel whose prediction holds NaN/Inf predicts no class (a false
    negative of its ground-truth class), logits and probabilities give the same argmax, any real dtype (float16
    included) is accepted.

    Dataset-level IoU and Boundary IoU sum the counts over the dataset first (large images and large objects weigh
    more, as in the reference tables); ``mean_per_image_iou`` weighs every image equally. Not thread-safe: one
    accumulator per thread.

    Args:
        num_classes: K, checked against every batch; None: taken from the first batch.
        dilation_ratio: keyword-only boundary width of Boundary IoU (see :func:`boundary_width`).

    Raises:
        ValueError: ``num_classes`` < 2 or a bad ``dilation_ratio``.
    """

    def __init__(self, num_classes: int | None = None, *, dilation_ratio: float = DEFAULT_DILATION_RATIO):
        if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer))
                                        or num_classes < 2):
            raise ValueError(f"num_classes must be an integer >= 2 (background + at least one class) or None; "
                             f"got {num_classes!r}")
        self.num_classes = None if num_classes is None else int(num_classes)
        self.dilation_ratio = _check_dilation_ratio(dilation_ratio)
        self._fixed_classes = num_classes is not None
        self.reset()

    def reset(self) -> None:
        """Forget every batch added (and, when it was taken from a batch, K)."""
        if not self._fixed_classes:
            self.num_classes = None
        self._samples = 0
        self._counts = None if self.num_classes is None else np.zeros((5, self.num_classes), np.int64)
        self._per_image_sum = 0.0  # float64 sum of the images' (float32) mean IoU ...
        self._per_image_count = 0  # ... over the images that have one

    def update(self, ground_truth: np.ndarray, prediction: np.ndarray) -> None:
        """Add a batch.

        Args:
            ground_truth: (N, S, S, K) one-hot (all-zero pixels are ignored), N >= 0.
            prediction: (N, S, S, K) logits or probabilities (any real dtype, float16 included).

        Raises:
            ValueError: bad shapes, a ground truth that is not finite one-hot, or K differing from ``num_classes``
                (or from the first batch's). Nothing is added then.
        """
        sample = _sample(ground_truth, prediction)
        k = sample.ground_truth.shape[-1]
        if self.num_classes is not None and k != self.num_classes:
            raise ValueError(f"this accumulator holds K = {self.num_classes} classes; got a batch of shape "
                             f"{sample.ground_truth.shape}")
        tp, in_gt, predicted = sample.counts()  # validates first: a bad batch adds nothing
        per_image = sample.ratios()["mean_iou"]
        intersection, union = _boundary_counts(sample, self.dilation_ratio)
        batch = np.stack([tp.sum(axis=0), (predicted - tp).sum(axis=0), (in_gt - tp).sum(axis=0),
                          intersection.sum(axis=0), union.sum(axis=0)])
        if self._counts is None:
            self.num_classes, self._counts = k, np.zeros((5, k), np.int64)
        self._counts += batch
        self._samples += sample.ground_truth.shape[0]
        defined = per_image[~np.isnan(per_image)]
        self._per_image_sum += float(defined.sum(dtype=np.float64))
        self._per_image_count += int(defined.size)

    @staticmethod
    def iou_from_counts(true_positives: np.ndarray, false_positives: np.ndarray,
                        false_negatives: np.ndarray) -> np.ndarray:
        """float64 ``TP / (TP + FP + FN)`` of counts of any shape (e.g. (K,) summed over a dataset), NaN where the
        union is 0 (a class in neither the ground truth nor the prediction): the rule of :meth:`compute`."""
        true_positives = np.asarray(true_positives)
        return _ratio(true_positives, true_positives + np.asarray(false_positives) + np.asarray(false_negatives))

    def compute(self) -> SegmentationScores:
        """The dataset-level figures of every batch added since the last reset.

        Returns:
            :class:`SegmentationScores`: per class (K,) float64 IoU and Boundary IoU (NaN for a class in neither the
            ground truth nor the prediction of any sample), their means over the defined classes, the pixel
            accuracy over the labelled pixels, the mean of per-image mean IoU, and the summed counts. With nothing
            added: zero counts, NaN figures, (K,) arrays ((0,) while K is unknown).
        """
        k = self.num_classes or 0
        counts = self._counts if self._counts is not None else np.zeros((5, k), np.int64)
        tp, fp, fn, intersection, union = (row.copy() for row in counts)
        iou = self.iou_from_counts(tp, fp, fn)
        boundary_iou = _ratio(intersection, union)
        labelled = int((tp + fn).sum())
        return SegmentationScores(
            samples=self._samples,
            iou=iou,
            mean_iou=_nanmean(iou),
            pixel_accuracy=int(tp.sum()) / labelled if labelled else math.nan,
            mean_per_image_iou=self._per_image_sum / self._per_image_count if self._per_image_count else math.nan,
            boundary_iou=boundary_iou,
            mean_boundary_iou=_nanmean(boundary_iou),
            true_positives=tp, false_positives=fp, false_negatives=fn,
            boundary_intersection=intersection, boundary_union=union,
            dilation_ratio=self.dilation_ratio,
        )
