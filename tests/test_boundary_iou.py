"""Boundary IoU (Cheng et al., CVPR 2021), the dataset-level SegmentationAccumulator and the evaluation built on it.

Boundary IoU is pinned to a plain restatement written here independently: explicit loops computing each mask
pixel's chessboard distance to the nearest pixel outside the mask (the outside of the image included), on small
hand-made masks with known answers and on random cases (ignored pixels, NaN/Inf predictions, float16, ties, many
classes, rectangular images, several boundary widths).
"""

import json
import math
import subprocess
import sys
import warnings
from types import SimpleNamespace

import numpy as np
import pytest

from _support import REPO_ROOT, subprocess_env
from coco_seg import evaluate, metrics

K = 3


def one_hot(labels, k=K) -> np.ndarray:
    """(N, H, W) or (H, W) int labels → one-hot float32 with a batch axis; -1 gives an all-zero (ignored) pixel."""
    labels = np.asarray(labels)
    if labels.ndim == 2:
        labels = labels[None]
    return (labels[..., None] == np.arange(k)).astype(np.float32)


def logits_for(labels, k=K) -> np.ndarray:
    """Logits whose argmax is ``labels`` (-1: predicts background)."""
    return np.where(one_hot(np.maximum(labels, 0), k) > 0, np.float32(5), np.float32(-5))


# ------------------------------------------------------------------------------------------- the reference

def reference_width(height: int, width: int, ratio: float) -> int:
    return max(1, int(round(ratio * math.sqrt(height ** 2 + width ** 2))))


def reference_boundary(mask: np.ndarray, d: int) -> np.ndarray:
    """Pixels of the (H, W) bool mask whose chessboard distance to the nearest pixel outside it — another pixel of
    the image, or a virtual pixel just outside the image — is at most d."""
    h, w = mask.shape
    outside = [(y, x) for y in range(h) for x in range(w) if not mask[y, x]]
    boundary = np.zeros_like(mask, dtype=bool)
    for y in range(h):
        for x in range(w):
            if not mask[y, x]:
                continue
            distance = min(y + 1, x + 1, h - y, w - x)  # to the row or column just outside the image
            for oy, ox in outside:
                distance = min(distance, max(abs(oy - y), abs(ox - x)))
            boundary[y, x] = distance <= d
    return boundary


def reference_masks(gt, pred):
    """Per sample and class, the ground-truth and predicted masks by the module's policies (float64 argmax;
    ignored pixels in neither; NaN/Inf predicting no class)."""
    gt = np.asarray(gt, np.float64)
    with np.errstate(all="ignore"):
        scores = np.asarray(pred).astype(np.float64)
    labelled = gt.max(-1) > 0
    gt_labels = np.where(labelled, gt.argmax(-1), -1)
    valid = np.isfinite(scores).all(-1)
    predicted = np.where(labelled & valid, np.where(valid[..., None], scores, 0).argmax(-1), -1)
    return gt_labels, predicted


def reference_counts(gt, pred, ratio=0.02):
    gt_labels, predicted = reference_masks(gt, pred)
    n, h, w = gt_labels.shape
    d = reference_width(h, w, ratio)
    k = np.asarray(gt).shape[-1]
    intersection, union = np.zeros((n, k), np.int64), np.zeros((n, k), np.int64)
    for i in range(n):
        for c in range(k):
            g, p = reference_boundary(gt_labels[i] == c, d), reference_boundary(predicted[i] == c, d)
            intersection[i, c], union[i, c] = np.sum(g & p), np.sum(g | p)
    return intersection, union


def reference_boundary_iou(gt, pred, ratio=0.02):
    intersection, union = reference_counts(gt, pred, ratio)
    with np.errstate(invalid="ignore"):
        return np.where(union > 0, intersection / np.maximum(union, 1), np.nan)


def test_the_reference_on_squares():
    square = np.zeros((12, 12), bool)
    square[3:9, 3:9] = True
    assert reference_boundary(square, 1).sum() == 36 - 16  # a 1-px ring
    assert reference_boundary(square, 2).sum() == 36 - 4
    assert reference_boundary(square, 3).sum() == 36
    corner = np.zeros((12, 12), bool)
    corner[:4, :4] = True  # cut by the image border: the border is a contour too (the paper's zero padding) ...
    assert reference_boundary(corner, 1).sum() == 16 - 4  # ... so its ring is whole (7 pixels if it were not)
    whole = np.ones((12, 12), bool)
    assert reference_boundary(whole, 1).sum() == 144 - 100


# --------------------------------------------------------------------------------------- hand-made answers

def square_case(size=32, shift=1):
    gt = np.zeros((size, size), int)
    gt[8:16, 8:16] = 1
    pred = np.zeros((size, size), int)
    pred[8:16, 8 + shift:16 + shift] = 1
    return one_hot(gt), logits_for(pred)


def test_boundary_width_follows_the_paper():
    assert [metrics.boundary_width(s, s) for s in (16, 32, 64, 128, 224, 512)] == [1, 1, 2, 4, 6, 14]
    assert metrics.boundary_width(128, 128, dilation_ratio=0) == 1  # at least one pixel
    assert metrics.boundary_width(100, 50, dilation_ratio=0.05) == round(0.05 * math.hypot(100, 50))
    assert metrics.boundary_width(20, 30, dilation_ratio=1e6) == 30  # capped: every mask pixel is boundary anyway


def test_square_predicted_one_pixel_to_the_right():
    # 8x8 square at S = 32 (d = 1): each boundary is the 28-pixel ring. Shifted one column, the rings share the
    # top and bottom rows' 7 common columns = 14 pixels; union 28 + 28 - 14 = 42 → 1/3, where mask IoU is
    # 56 / 72 = 7/9.
    gt, pred = square_case()
    intersection, union = metrics.boundary_counts(gt, pred)
    assert intersection[0, 1] == 14 and union[0, 1] == 42
    boundary_iou = metrics.boundary_iou_per_class(gt, pred)
    assert boundary_iou.dtype == np.float64 and boundary_iou.shape == (1, K)
    assert boundary_iou[0, 1] == pytest.approx(1 / 3)
    assert metrics.iou_per_class(gt, pred)[0, 1] == pytest.approx(7 / 9)
    assert np.isnan(boundary_iou[0, 2])  # in neither: undefined, as IoU
    np.testing.assert_array_equal(intersection, reference_counts(gt, pred)[0])
    np.testing.assert_array_equal(union, reference_counts(gt, pred)[1])


def test_identical_masks_give_one_and_disjoint_masks_zero():
    labels = np.zeros((24, 24), int)
    labels[2:10, 3:20] = 1
    labels[14:22, 5:9] = 2
    identical = metrics.boundary_iou_per_class(one_hot(labels), logits_for(labels))
    np.testing.assert_array_equal(identical, [[1.0, 1.0, 1.0]])
    moved = np.zeros((24, 24), int)
    moved[14:22, 12:20] = 1  # class 1 moved where it does not touch the ground truth's class 1
    moved[2:10, 3:20] = 2
    disjoint = metrics.boundary_iou_per_class(one_hot(labels), logits_for(moved))
    assert disjoint[0, 1] == 0.0 and disjoint[0, 2] == 0.0
    only_gt = metrics.boundary_iou_per_class(one_hot(labels), logits_for(np.zeros_like(labels)))
    assert only_gt[0, 1] == 0.0 and only_gt[0, 2] == 0.0 and 0 < only_gt[0, 0] < 1
    corner = np.zeros((12, 12), int)
    corner[:4, :4] = 1  # the image border is a contour: the whole 12-pixel ring is boundary (d = 1)
    intersection, union = metrics.boundary_counts(one_hot(corner), logits_for(corner))
    assert intersection[0, 1] == union[0, 1] == 12


def test_coarse_blob_predictions_score_lower_on_boundary_iou_than_on_mask_iou():
    s = 64  # d = 2
    y, x = np.mgrid[:s, :s]
    box = np.zeros((s, s), int)
    box[12:52, 12:52] = 1
    blob = ((y - 31.5) ** 2 + (x - 31.5) ** 2 <= 22 ** 2).astype(int)  # a disc over the box: corners wrong
    thin = np.zeros((s, s), int)
    thin[8:56, 30:32] = 1  # a 2-px-wide bar ...
    coarse = np.zeros((s, s), int)
    coarse[6:58, 26:36] = 1  # ... predicted as a 10-px-wide blob around it
    for gt_labels, predicted in ((box, blob), (thin, coarse)):
        gt, pred = one_hot(gt_labels), logits_for(predicted)
        mask_iou = metrics.iou_per_class(gt, pred)[0, 1]
        boundary_iou = metrics.boundary_iou_per_class(gt, pred)[0, 1]
        assert boundary_iou < mask_iou - 0.1, (boundary_iou, mask_iou)
        np.testing.assert_allclose(metrics.boundary_iou_per_class(gt, pred), reference_boundary_iou(gt, pred))


def test_ignored_pixels_are_in_neither_mask():
    labels = np.zeros((20, 20), int)
    labels[4:14, 4:14] = 1
    gt_labels = labels.copy()
    gt_labels[:, 15:] = -1  # ignored columns
    gt = one_hot(gt_labels)
    rng = np.random.default_rng(0)
    garbage = logits_for(labels)
    garbage[0, :, 15:] = rng.normal(0, 9, garbage[0, :, 15:].shape)  # any prediction where nothing is labelled
    perfect = metrics.boundary_iou_per_class(gt, garbage)
    np.testing.assert_array_equal(perfect, [[1.0, 1.0, np.nan]])
    np.testing.assert_array_equal(metrics.boundary_counts(gt, garbage)[1],
                                  metrics.boundary_counts(gt, logits_for(labels))[1])
    np.testing.assert_array_equal(perfect, reference_boundary_iou(gt, garbage))
    # the edge of an ignored region is a contour of both sides: background's boundary runs along column 14
    intersection, _ = metrics.boundary_counts(gt, garbage)
    background = (gt_labels[None] == 0)[0]
    assert intersection[0, 0] == reference_boundary(background, 1).sum()
    assert reference_boundary(background, 1)[:, 14].all()
    fully_ignored = metrics.boundary_iou_per_class(np.zeros_like(gt), garbage)
    assert np.isnan(fully_ignored).all()


def test_nan_and_inf_predictions_predict_no_class():
    gt, pred = square_case(shift=0)
    pred[0, 11, 11] = np.nan  # a hole in the predicted square: a contour around it
    pred[0, 0, 0, 1] = np.inf
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = metrics.boundary_iou_per_class(gt, pred)
    np.testing.assert_array_equal(got, reference_boundary_iou(gt, pred))
    assert got[0, 1] < 1.0 and got[0, 0] < 1.0
    all_nan = np.full_like(pred, np.nan)
    nothing = metrics.boundary_iou_per_class(gt, all_nan)
    np.testing.assert_array_equal(nothing, [[0.0, 0.0, np.nan]])


def test_float16_probabilities_and_logits_agree():
    gt, pred = square_case(shift=2)
    want = metrics.boundary_iou_per_class(gt, pred)
    e = np.exp(pred - pred.max(-1, keepdims=True))
    probabilities = e / e.sum(-1, keepdims=True)
    for gt_version, pred_version in ((gt.astype(np.float16), pred.astype(np.float16)),
                                     (gt, probabilities), (gt.astype(np.float16), probabilities.astype(np.float16)),
                                     (gt.astype(np.uint8), pred.astype(np.float64))):
        np.testing.assert_array_equal(metrics.boundary_iou_per_class(gt_version, pred_version), want)
    huge = np.where(pred > 0, np.float16(65504), np.float16(-65504))  # float16 extremes: no overflow
    np.testing.assert_array_equal(metrics.boundary_iou_per_class(gt.astype(np.float16), huge), want)


# --------------------------------------------------------------------------------------- against the reference

def random_case(rng, n, h, w, k, *, ignored=0.0, invalid=0.0, kind="blocks", pred_dtype=np.float32):
    """Blocky label maps (contours worth measuring), random logits around them."""
    def blocky():
        cells = rng.integers(0, k, (n, (h + 3) // 4, (w + 3) // 4))
        return np.repeat(np.repeat(cells, 4, axis=1), 4, axis=2)[:, :h, :w]
    gt = one_hot(blocky(), k)
    gt[rng.random((n, h, w)) < ignored] = 0
    if kind == "ties":
        pred = np.round(rng.normal(0, 1, (n, h, w, k)))
    else:
        pred = rng.normal(0, 1, (n, h, w, k)) + 3 * one_hot(blocky(), k)
    pred = pred.astype(pred_dtype)
    if invalid:
        bad = rng.random(pred.shape) < invalid
        pred[bad] = rng.choice(np.array([np.nan, np.inf, -np.inf], pred.dtype), int(bad.sum()))
    return gt, pred


CASES = [
    dict(n=1, h=16, w=16, k=3), dict(n=1, h=16, w=16, k=3, pred_dtype=np.float16, ratio=0.1),
    dict(n=3, h=12, w=12, k=3, ignored=0.2, invalid=0.05), dict(n=2, h=9, w=14, k=4, ratio=0.2),
    dict(n=2, h=10, w=10, k=5, kind="ties", ratio=0.0), dict(n=1, h=11, w=7, k=2, ratio=0.5),
    dict(n=2, h=8, w=8, k=9, ignored=0.3, invalid=0.2, pred_dtype=np.float16, ratio=0.15),
    dict(n=1, h=6, w=6, k=130, ignored=0.1), dict(n=1, h=5, w=5, k=300, invalid=0.1, ratio=0.3),
    dict(n=2, h=13, w=13, k=3, ratio=5.0),
]


@pytest.mark.parametrize("case", CASES,
                         ids=lambda c: "-".join(f"{k}={getattr(v, '__name__', v)}" for k, v in c.items()))
def test_matches_the_reference(case):
    seed = CASES.index(case)
    case = dict(case)
    ratio = case.pop("ratio", 0.02)
    gt, pred = random_case(np.random.default_rng(seed), **case)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        intersection, union = metrics.boundary_counts(gt, pred, dilation_ratio=ratio)
        values = metrics.boundary_iou_per_class(gt, pred, dilation_ratio=ratio)
    want_intersection, want_union = reference_counts(gt, pred, ratio)
    np.testing.assert_array_equal(intersection, want_intersection)
    np.testing.assert_array_equal(union, want_union)
    np.testing.assert_array_equal(values, reference_boundary_iou(gt, pred, ratio))
    # undefined exactly where IoU is
    np.testing.assert_array_equal(np.isnan(values), np.isnan(metrics.iou_per_class(gt, pred)))
    for i in range(len(gt)):  # every sample of a batch is measured alone
        np.testing.assert_array_equal(metrics.boundary_counts(gt[i:i + 1], pred[i:i + 1], dilation_ratio=ratio)[1],
                                      union[i:i + 1])


def test_memoised_calls_return_the_callers_own_arrays_and_the_first_results():
    rng = np.random.default_rng(5)
    gt, pred = random_case(rng, 1, 16, 16, 3, ignored=0.1, invalid=0.02, pred_dtype=np.float16)
    metrics._SAMPLE_MEMO.clear()
    metrics._PREDICTION_MEMO.clear()
    want = metrics.boundary_iou_per_class(gt, pred)
    metrics.iou_per_class(gt.copy(), pred.copy()), metrics.label_pairs(gt.copy(), pred.copy())  # shared memo
    for ratio in (0.02, 0.2, 0.02):
        got = metrics.boundary_iou_per_class(gt.copy(), pred.copy(), dilation_ratio=ratio)
        if ratio == 0.02:
            np.testing.assert_array_equal(got, want)
        got[...] = 7
        counts = metrics.boundary_counts(gt.copy(), pred.copy(), dilation_ratio=ratio)
        assert all(c.flags.writeable for c in counts)
        counts[0][...] = -1
    np.testing.assert_array_equal(metrics.boundary_iou_per_class(gt, pred), want)
    for entry in metrics._SAMPLE_MEMO._entries:
        for name, value in entry._values.items():
            if isinstance(name, tuple) and name[0] == "boundary counts":
                assert all(not array.flags.writeable for array in value)


def test_empty_inputs():
    for shape in ((0, 8, 8, 3), (2, 0, 0, 3)):
        gt = np.zeros(shape, np.float32)
        intersection, union = metrics.boundary_counts(gt, gt)
        assert intersection.shape == union.shape == (shape[0], 3) and not union.any()
        assert np.isnan(metrics.boundary_iou_per_class(gt, gt)).all()


def test_validation_errors():
    gt, pred = square_case()
    with pytest.raises(ValueError, match="same shape"):
        metrics.boundary_iou_per_class(gt, pred[:, :16])
    with pytest.raises(ValueError, match="4-D"):
        metrics.boundary_counts(gt[0], pred[0])
    bad = gt.copy()
    bad[0, 0, 0] = [1, 1, 0]
    with pytest.raises(ValueError, match="more than one class"):
        metrics.boundary_iou_per_class(bad, pred)
    for ratio in (-0.01, math.nan, math.inf, "0.02", True, None):
        with pytest.raises(ValueError, match="dilation_ratio"):
            metrics.boundary_iou_per_class(gt, pred, dilation_ratio=ratio)
        with pytest.raises(ValueError, match="dilation_ratio"):
            metrics.SegmentationAccumulator(dilation_ratio=ratio)


def test_boundary_functions_are_public_and_documented():
    for name in ("boundary_iou_per_class", "boundary_counts", "SegmentationAccumulator", "SegmentationScores",
                 "boundary_width", "DEFAULT_DILATION_RATIO"):
        assert name in metrics.__all__
    for function in (metrics.boundary_iou_per_class, metrics.boundary_counts):
        for section in ("Args:", "Returns:", "Raises:", "(N, S, S, K)", "NaN", "(N, K)"):
            assert section in function.__doc__, (function.__name__, section)
    for method in (metrics.SegmentationAccumulator.update, metrics.SegmentationAccumulator.compute):
        assert "(N, S, S, K)" in method.__doc__ or "(K,)" in method.__doc__


# ------------------------------------------------------------------------------------------------ accumulator

def batches_of(rng, count, **case):
    return [random_case(rng, **case) for _ in range(count)]


def test_accumulator_sums_the_functional_counts():
    rng = np.random.default_rng(11)
    batches = batches_of(rng, 3, n=2, h=12, w=12, k=3, ignored=0.1, invalid=0.02, pred_dtype=np.float16)
    accumulator = metrics.SegmentationAccumulator(3)
    for gt, pred in batches:
        accumulator.update(gt, pred)
    scores = accumulator.compute()
    gt_all, pred_all = (np.concatenate(arrays) for arrays in zip(*batches))
    tp, fp, fn = (c.sum(axis=0) for c in metrics.confusion_counts(gt_all, pred_all))
    intersection, union = (c.sum(axis=0) for c in metrics.boundary_counts(gt_all, pred_all))
    assert scores.samples == 6
    np.testing.assert_array_equal(scores.true_positives, tp)
    np.testing.assert_array_equal(scores.false_positives, fp)
    np.testing.assert_array_equal(scores.false_negatives, fn)
    np.testing.assert_array_equal(scores.boundary_intersection, intersection)
    np.testing.assert_array_equal(scores.boundary_union, union)
    np.testing.assert_allclose(scores.iou, tp / (tp + fp + fn))
    np.testing.assert_allclose(scores.boundary_iou, intersection / union)
    assert scores.mean_iou == pytest.approx(np.mean(tp / (tp + fp + fn)))
    assert scores.mean_boundary_iou == pytest.approx(np.mean(intersection / union))
    assert scores.pixel_accuracy == pytest.approx(tp.sum() / (tp + fn).sum())
    per_image = metrics.mean_iou(gt_all, pred_all)
    assert scores.mean_per_image_iou == pytest.approx(np.nanmean(per_image.astype(np.float64)))
    # one big batch gives the same figures as three
    whole = metrics.SegmentationAccumulator()
    whole.update(gt_all, pred_all)
    for name in ("iou", "boundary_iou", "true_positives", "boundary_union"):
        np.testing.assert_array_equal(getattr(whole.compute(), name), getattr(scores, name))
    assert whole.compute().mean_per_image_iou == pytest.approx(scores.mean_per_image_iou)


def test_accumulator_undefined_values_reset_and_shape_checks():
    empty = metrics.SegmentationAccumulator(3).compute()
    assert empty.samples == 0 and empty.iou.shape == (3,) and np.isnan(empty.iou).all()
    assert math.isnan(empty.mean_iou) and math.isnan(empty.pixel_accuracy) and math.isnan(empty.mean_boundary_iou)
    assert math.isnan(empty.mean_per_image_iou) and not empty.true_positives.any()
    assert metrics.SegmentationAccumulator().compute().iou.shape == (0,)

    gt, pred = square_case()
    accumulator = metrics.SegmentationAccumulator()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        accumulator.update(np.zeros_like(gt), pred)  # a fully ignored sample: nothing defined yet
        nothing = accumulator.compute()
    assert nothing.samples == 1 and np.isnan(nothing.iou).all() and math.isnan(nothing.pixel_accuracy)
    accumulator.update(gt, pred)
    scores = accumulator.compute()
    assert scores.boundary_iou[1] == pytest.approx(1 / 3) and np.isnan(scores.boundary_iou[2])
    assert scores.mean_per_image_iou == pytest.approx(float(metrics.mean_iou(gt, pred)[0]))  # the ignored one skipped
    before = accumulator.compute()
    with pytest.raises(ValueError, match="K = 3"):
        accumulator.update(one_hot(np.zeros((4, 4), int), 4), np.zeros((1, 4, 4, 4), np.float32))
    bad = gt.copy()
    bad[0, 0, 0] = 2
    with pytest.raises(ValueError, match="one-hot"):
        accumulator.update(bad, pred)
    after = accumulator.compute()  # a refused batch adds nothing
    assert after.samples == before.samples
    np.testing.assert_array_equal(after.boundary_union, before.boundary_union)
    accumulator.reset()
    assert accumulator.compute().samples == 0 and accumulator.num_classes is None
    accumulator.update(one_hot(np.zeros((4, 4), int), 4), np.zeros((1, 4, 4, 4), np.float32))  # K taken anew
    assert accumulator.num_classes == 4
    fixed = metrics.SegmentationAccumulator(3)
    fixed.reset()
    assert fixed.num_classes == 3
    for bad_k in (1, 0, 2.5, True):
        with pytest.raises(ValueError, match="num_classes"):
            metrics.SegmentationAccumulator(bad_k)


def test_iou_from_counts_is_the_rule_of_compute_and_of_dataset_iou():
    tp, fp, fn = np.array([1, 2, 1, 0]), np.array([1, 1, 0, 0]), np.array([1, 0, 1, 0])
    iou = metrics.SegmentationAccumulator.iou_from_counts(tp, fp, fn)
    np.testing.assert_allclose(iou[:3], [1 / 3, 2 / 3, 1 / 2])
    assert np.isnan(iou[3]) and iou.dtype == np.float64
    np.testing.assert_array_equal(evaluate.dataset_iou(tp, fp, fn), iou)


# ----------------------------------------------------------------------------------------------- evaluation

def fake_split(monkeypatch, samples):
    """A split of (image, ground truth) pairs served by evaluate.batches without any file."""
    def fake_batches(split, sample_ids, *, batch_size):
        for start in range(0, len(samples), batch_size):
            chunk = samples[start:start + batch_size]
            yield np.stack([image for image, _ in chunk]), np.stack([gt for _, gt in chunk])

    monkeypatch.setattr(evaluate, "batches", fake_batches)
    return SimpleNamespace(name="validation", sample_ids=[str(i) for i in range(len(samples))],
                           config=SimpleNamespace(class_names=("background", "person", "car")))


def test_evaluate_split_reports_boundary_iou_and_writes_strict_json(monkeypatch, tmp_path):
    rng = np.random.default_rng(3)
    gt_all, pred_all = random_case(rng, 5, 16, 16, 3, ignored=0.05, invalid=0.01)
    gt_all[gt_all[..., 2] == 1] = [1, 0, 0]  # "car" never occurs in the ground truth ...
    pred_all[..., 2] = -100  # ... nor in the prediction: undefined
    gt_all[4] = 0  # a sample that failed to decode (all ignored)
    samples = [(pred_all[i], gt_all[i]) for i in range(5)]  # the "image" is the prediction itself
    split = fake_split(monkeypatch, samples)
    evaluation = evaluate.evaluate_split(lambda images: images, split, batch_size=2)
    accumulator = metrics.SegmentationAccumulator()
    accumulator.update(gt_all, pred_all)
    scores = accumulator.compute()
    assert evaluation.samples == 5 and evaluation.class_names == ["background", "person", "car"]
    assert evaluation.iou["car"] is None and evaluation.boundary_iou["car"] is None
    assert evaluation.boundary_iou["person"] == pytest.approx(scores.boundary_iou[1])
    assert evaluation.boundary_iou["background"] == pytest.approx(scores.boundary_iou[0])
    assert evaluation.mean_boundary_iou == pytest.approx(scores.mean_boundary_iou)
    assert evaluation.mean_iou == pytest.approx(scores.mean_iou)
    assert evaluation.mean_per_image_iou == pytest.approx(scores.mean_per_image_iou)
    assert evaluation.pixel_accuracy == pytest.approx(scores.pixel_accuracy)
    assert evaluation.boundary_dilation_ratio == metrics.DEFAULT_DILATION_RATIO

    table = evaluation.table()
    header, rule, row = table.splitlines()
    assert "Boundary IoU person" in header and "Boundary IoU car" in header and "mean Boundary IoU" in header
    assert header.count("|") == rule.count("|") == row.count("|")
    assert f"{evaluation.boundary_iou['person']:.3f}" in row and f"{evaluation.mean_boundary_iou:.3f}" in row
    assert "| validation |" in row and "n/a" in row

    path = tmp_path / "eval.json"
    undefined = evaluate.Evaluation(**{**evaluation.__dict__, "mean_iou": math.nan, "mean_boundary_iou": math.nan,
                                       "pixel_accuracy": math.inf})
    for record in (evaluation, undefined):
        record.write_json(path)
        text = path.read_text()

        def refuse(constant):
            raise ValueError(f"non-standard JSON constant {constant}")

        figures = json.loads(text, parse_constant=refuse)
        assert figures["boundary_iou"]["car"] is None and figures["boundary_iou"]["person"] is not None
    assert figures["mean_iou"] is None and figures["mean_boundary_iou"] is None and figures["pixel_accuracy"] is None
    assert "n/a" in undefined.table() and "nan" not in undefined.table()


def test_an_old_record_without_boundary_fields_still_loads_and_prints():
    old = evaluate.Evaluation(split="validation", samples=2, class_names=["background", "person"],
                              iou={"background": 0.9, "person": 0.5}, mean_iou=0.7, mean_per_image_iou=0.6,
                              pixel_accuracy=0.95)
    assert "0.500" in old.table() and "n/a" in old.table()


# --------------------------------------------------------------------------------------------- the binder

BINDER_PROBE = """
import json, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
import leap_binder
from code_loader import leap_binder as registry

handler = next(h for h in registry.setup_container.metrics if h.metric_handler_data.name == "boundary_iou")
names = leap_binder.CLASS_NAMES
labels = np.zeros((1, 32, 32), int)
labels[0, 8:16, 8:16] = 1
shifted = np.roll(labels, 1, axis=2)
mask = (labels[..., None] == np.arange(len(names))).astype(np.float16)
prediction = np.where(shifted[..., None] == np.arange(len(names)), 5.0, -5.0).astype(np.float16)
values = leap_binder.boundary_iou(mask, prediction)
print(json.dumps({"names": names, "arg_names": handler.metric_handler_data.arg_names,
                  "directions": {k: v.name for k, v in handler.metric_handler_data.direction.items()},
                  "values": {k: [None if np.isnan(x) else float(x) for x in v] for k, v in values.items()},
                  "dtypes": sorted({str(v.dtype) for v in values.values()}),
                  "shapes": sorted({v.shape for v in values.values()})}))
"""


def test_the_binder_registers_boundary_iou_like_iou():
    process = subprocess.run([sys.executable, "-c", BINDER_PROBE, str(REPO_ROOT)], cwd=REPO_ROOT, text=True,
                             capture_output=True, timeout=300, env=subprocess_env())
    assert process.returncode == 0, process.stderr
    report = json.loads(process.stdout.strip().splitlines()[-1])
    names = report["names"]
    assert report["arg_names"] == ["ground_truth", "prediction"]
    assert report["directions"] == {name: "Upward" for name in names}
    assert list(report["values"]) == names and report["dtypes"] == ["float32"] and report["shapes"] == [[1]]
    assert report["values"][names[1]][0] == pytest.approx(1 / 3)
    assert all(report["values"][name] == [None] for name in names[2:])
