"""coco_seg.metrics on hand-made masks whose values are worked out by hand in the comments."""

import math
import warnings

import numpy as np
import pytest

from coco_seg import metrics

K = 3  # background, class 1, class 2
PENALTY = -math.log(1e-7)


def one_hot(labels, k=K) -> np.ndarray:
    """(N, S, S) or (S, S) int labels → one-hot float32 with a batch axis; -1 gives an all-zero (ignored) pixel."""
    labels = np.asarray(labels)
    if labels.ndim == 2:
        labels = labels[None]
    out = np.zeros(labels.shape + (k,), dtype=np.float32)
    for c in range(k):
        out[..., c] = labels == c
    return out


def logits_for(labels, k=K, high=5.0, low=-5.0) -> np.ndarray:
    """Logits predicting ``labels`` (argmax), with a float16-exact margin."""
    return np.where(one_hot(labels, k) > 0, np.float32(high), np.float32(low)).astype(np.float32)


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


# Hand-made 4x4 case.
#   ground truth            prediction
#   0 0 1 1                 0 0 1 1
#   0 0 1 1                 0 1 1 1
#   0 0 0 0                 0 0 1 0
#   2 2 0 0                 2 0 0 0
GT = np.array([[0, 0, 1, 1],
               [0, 0, 1, 1],
               [0, 0, 0, 0],
               [2, 2, 0, 0]])
PRED = np.array([[0, 0, 1, 1],
                 [0, 1, 1, 1],
                 [0, 0, 1, 0],
                 [2, 0, 0, 0]])
# class 0: GT-0 pixels: (0,0),(0,1),(1,0),(1,1),(2,0),(2,1),(2,2),(2,3),(3,2),(3,3) = 10
#          predicted 0 among them: all but (1,1),(2,2) → TP0 = 8, FN0 = 2
#          predicted 0 where GT ≠ 0: (3,1) → FP0 = 1            IoU0 = 8 / (8+1+2) = 8/11
# class 1: GT-1 = 4 px, all predicted 1 → TP1 = 4, FN1 = 0; predicted 1 elsewhere: (1,1),(2,2) → FP1 = 2
#                                                              IoU1 = 4 / (4+2+0) = 2/3
# class 2: GT-2 = (3,0),(3,1); predicted 2: (3,0) → TP2 = 1, FN2 = 1, FP2 = 0
#                                                              IoU2 = 1 / 2
# dice: 2TP/(2TP+FP+FN): class 0 16/19, class 1 8/10, class 2 2/3
# accuracy: 13 correct of 16
TP, FP, FN = [8, 4, 1], [1, 2, 0], [2, 0, 1]
IOU = [8 / 11, 2 / 3, 1 / 2]
DICE = [16 / 19, 8 / 10, 2 / 3]


def test_confusion_counts_hand_case():
    tp, fp, fn = metrics.confusion_counts(one_hot(GT), logits_for(PRED))
    assert tp.dtype == fp.dtype == fn.dtype == np.int64
    assert tp.shape == (1, K)
    np.testing.assert_array_equal(tp[0], TP)
    np.testing.assert_array_equal(fp[0], FP)
    np.testing.assert_array_equal(fn[0], FN)


def test_iou_dice_accuracy_hand_case():
    gt, pred = one_hot(GT), logits_for(PRED)
    iou = metrics.iou_per_class(gt, pred)
    assert iou.dtype == np.float32 and iou.shape == (1, K)
    np.testing.assert_allclose(iou[0], IOU, rtol=1e-6)
    np.testing.assert_allclose(metrics.mean_iou(gt, pred), [np.mean(IOU)], rtol=1e-6)
    np.testing.assert_allclose(metrics.dice_per_class(gt, pred)[0], DICE, rtol=1e-6)
    np.testing.assert_allclose(metrics.mean_dice(gt, pred), [np.mean(DICE)], rtol=1e-6)
    accuracy = metrics.pixel_accuracy(gt, pred)
    assert accuracy.dtype == np.float32 and accuracy.shape == (1,)
    np.testing.assert_allclose(accuracy, [13 / 16], rtol=1e-6)


def test_batch_samples_are_independent():
    gt = np.concatenate([one_hot(GT), one_hot(GT)])
    pred = np.concatenate([logits_for(PRED), logits_for(GT)])
    np.testing.assert_allclose(metrics.mean_iou(gt, pred), [np.mean(IOU), 1.0], rtol=1e-6)
    np.testing.assert_allclose(metrics.pixel_accuracy(gt, pred), [13 / 16, 1.0], rtol=1e-6)


def test_perfect_prediction():
    gt = one_hot(GT)
    for pred in (logits_for(GT), gt.copy()):  # logits and one-hot probabilities
        np.testing.assert_array_equal(metrics.iou_per_class(gt, pred), [[1, 1, 1]])
        np.testing.assert_array_equal(metrics.mean_iou(gt, pred), [1])
        np.testing.assert_array_equal(metrics.mean_dice(gt, pred), [1])
        np.testing.assert_array_equal(metrics.pixel_accuracy(gt, pred), [1])


def test_absent_class_is_nan_and_skipped_by_the_means():
    # 4 classes; class 3 appears in neither ground truth nor prediction.
    gt, pred = one_hot(GT, k=4), logits_for(PRED, k=4)
    iou = metrics.iou_per_class(gt, pred)[0]
    np.testing.assert_allclose(iou[:3], IOU, rtol=1e-6)
    assert np.isnan(iou[3])
    mean = metrics.mean_iou(gt, pred)[0]
    assert mean == pytest.approx(np.mean(IOU), rel=1e-6)  # mean over the 3 defined classes
    assert mean != pytest.approx(np.sum(IOU) / 4)          # not dragged down by a 0
    assert mean != pytest.approx((np.sum(IOU) + 1) / 4)    # not raised by a 1
    dice = metrics.dice_per_class(gt, pred)[0]
    assert np.isnan(dice[3])
    assert metrics.mean_dice(gt, pred)[0] == pytest.approx(np.mean(DICE), rel=1e-6)


def test_class_only_in_prediction_or_only_in_gt_has_iou_zero():
    gt = one_hot(np.zeros((4, 4), int))
    pred_labels = np.zeros((4, 4), int)
    pred_labels[0, 0] = 2  # class 2 predicted, never in GT: FP only → IoU 0 (defined); class 1 absent → NaN
    iou = metrics.iou_per_class(gt, logits_for(pred_labels))[0]
    assert iou[0] == pytest.approx(15 / 16)
    assert np.isnan(iou[1])
    assert iou[2] == 0
    assert metrics.mean_iou(gt, logits_for(pred_labels))[0] == pytest.approx((15 / 16 + 0) / 2)


def test_logits_and_equivalent_probabilities_agree():
    rng = np.random.default_rng(0)
    gt = one_hot(rng.integers(0, K, size=(3, 8, 8)))
    logits = rng.normal(0, 3, size=gt.shape).astype(np.float32)
    probabilities = softmax(logits)
    for fn in (metrics.iou_per_class, metrics.dice_per_class):
        np.testing.assert_array_equal(fn(gt, logits), fn(gt, probabilities))
    for fn in (metrics.mean_iou, metrics.mean_dice, metrics.pixel_accuracy):
        np.testing.assert_array_equal(fn(gt, logits), fn(gt, probabilities))
    np.testing.assert_allclose(metrics.to_probabilities(logits), probabilities, atol=1e-6)
    np.testing.assert_allclose(metrics.to_probabilities(probabilities), probabilities, atol=1e-6)
    np.testing.assert_allclose(metrics.pixel_cross_entropy(gt, logits),
                               metrics.pixel_cross_entropy(gt, probabilities), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(metrics.cross_entropy_loss(gt, logits),
                               metrics.cross_entropy_loss(gt, probabilities), rtol=1e-4)


def test_cross_entropy_values():
    # one pixel, logits [0, 0, 0] → p = 1/3 for every class → CE = log 3, whatever the GT class
    gt = one_hot(np.array([[1]]))
    assert metrics.cross_entropy_loss(gt, np.zeros((1, 1, 1, K), np.float32))[0] == pytest.approx(math.log(3))
    # probabilities [0.5, 0.25, 0.25], GT class 1 → CE = log 4
    p = np.array([[[[0.5, 0.25, 0.25]]]], np.float32)
    assert metrics.cross_entropy_loss(gt, p)[0] == pytest.approx(math.log(4))
    # probability 0 for the GT class is clipped at 1e-7 → CE = -log(1e-7)
    p0 = np.array([[[[1.0, 0.0, 0.0]]]], np.float32)
    assert metrics.cross_entropy_loss(gt, p0)[0] == pytest.approx(PENALTY, rel=1e-5)
    # loss is the mean over pixels of the per-pixel CE
    gt2 = one_hot(GT)
    logits = logits_for(PRED)
    per_pixel = metrics.pixel_cross_entropy(gt2, logits)
    assert per_pixel.shape == (1, 4, 4) and per_pixel.dtype == np.float32
    assert np.all(per_pixel >= 0)
    np.testing.assert_allclose(metrics.cross_entropy_loss(gt2, logits), per_pixel.mean(axis=(1, 2)), rtol=1e-6)
    # correct pixel: -log(e^5 / (e^5 + 2 e^-5)); wrong pixel: -log(e^-5 / (e^5 + 2 e^-5))
    z = math.exp(5) + 2 * math.exp(-5)
    assert per_pixel[0, 0, 0] == pytest.approx(-math.log(math.exp(5) / z), rel=1e-4)
    assert per_pixel[0, 1, 1] == pytest.approx(-math.log(math.exp(-5) / z), rel=1e-5)


def test_float16_matches_float32_and_handles_huge_logits():
    rng = np.random.default_rng(1)
    gt = one_hot(rng.integers(0, K, size=(4, 8, 8)))
    logits16 = (rng.normal(0, 4, size=gt.shape)).astype(np.float16)
    logits16[0] = np.where(gt[0] > 0, 60000, -60000).astype(np.float16)   # huge, correct
    logits16[1] = np.where(gt[1] > 0, -60000, 60000).astype(np.float16)   # huge, wrong (ties between 2 classes)
    logits16[2, :4] = np.float16(65504)                                     # huge ties
    logits32 = logits16.astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow / invalid-value RuntimeWarning
        for fn in (metrics.iou_per_class, metrics.dice_per_class, metrics.mean_iou, metrics.mean_dice,
                   metrics.pixel_accuracy, metrics.pixel_cross_entropy, metrics.cross_entropy_loss):
            r16, r32 = fn(gt.astype(np.float16), logits16), fn(gt, logits32)
            assert r16.dtype == np.float32
            np.testing.assert_allclose(r16, r32, rtol=1e-3, atol=1e-3, err_msg=fn.__name__)
        p16 = metrics.to_probabilities(logits16)
    assert p16.dtype == np.float32 and np.all(np.isfinite(p16))
    np.testing.assert_allclose(p16, metrics.to_probabilities(logits32), atol=1e-3)
    np.testing.assert_allclose(p16.sum(axis=-1), 1, atol=1e-5)
    assert not np.isnan(metrics.mean_iou(gt, logits16)).any()
    ce = metrics.pixel_cross_entropy(gt, logits16)
    assert np.all(np.isfinite(ce))
    np.testing.assert_allclose(ce[0], 0, atol=1e-6)          # confident and right
    assert np.all(ce[1] >= 120000 - 1)                       # confident and wrong: 60000 - (-60000)


def test_float16_probabilities_detected():
    rng = np.random.default_rng(2)
    gt = one_hot(rng.integers(0, K, size=(2, 8, 8)))
    probabilities = softmax(rng.normal(0, 2, size=gt.shape).astype(np.float32))
    p16 = probabilities.astype(np.float16)  # channel sums now off by up to ~1e-3
    np.testing.assert_allclose(metrics.to_probabilities(p16), probabilities, atol=2e-3)
    np.testing.assert_allclose(metrics.cross_entropy_loss(gt, p16), metrics.cross_entropy_loss(gt, probabilities),
                               rtol=1e-3)


def test_values_in_unit_range_not_summing_to_one_are_logits():
    x = np.full((1, 2, 2, K), 0.5, np.float32)  # in [0, 1] but sums to 1.5 → logits → uniform softmax
    np.testing.assert_allclose(metrics.to_probabilities(x), 1 / K, atol=1e-6)


def test_non_finite_predictions():
    gt = one_hot(GT)
    pred = logits_for(GT)  # perfect ...
    pred[0, 0, 2, 0] = np.nan          # ... except a GT-1 pixel with NaN
    pred[0, 3, 0, 2] = np.inf          # ... a GT-2 pixel with +Inf
    pred[0, 2, 0, :] = -np.inf         # ... a GT-0 pixel with all -Inf
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tp, fp, fn = metrics.confusion_counts(gt, pred)
        # invalid pixels: a false negative of their GT class, nobody's false positive
        np.testing.assert_array_equal(tp[0], [9, 3, 1])
        np.testing.assert_array_equal(fp[0], [0, 0, 0])
        np.testing.assert_array_equal(fn[0], [1, 1, 1])
        np.testing.assert_allclose(metrics.iou_per_class(gt, pred)[0], [9 / 10, 3 / 4, 1 / 2], rtol=1e-6)
        np.testing.assert_allclose(metrics.pixel_accuracy(gt, pred), [13 / 16], rtol=1e-6)
        per_pixel = metrics.pixel_cross_entropy(gt, pred)
        loss = metrics.cross_entropy_loss(gt, pred)
        probabilities = metrics.to_probabilities(pred)
    assert np.all(np.isfinite(per_pixel)) and np.all(np.isfinite(loss))
    for y, x in [(0, 2), (3, 0), (2, 0)]:
        assert per_pixel[0, y, x] == pytest.approx(PENALTY, rel=1e-5)
    assert loss[0] > 3 * PENALTY / 16
    np.testing.assert_array_equal(probabilities[0, 0, 2], 0)
    assert np.all(np.isfinite(probabilities))
    # an all-NaN prediction: every pixel wrong, loss = penalty, metrics finite
    nan_pred = np.full_like(pred, np.nan)
    np.testing.assert_array_equal(metrics.pixel_accuracy(gt, nan_pred), [0])
    np.testing.assert_array_equal(metrics.mean_iou(gt, nan_pred), [0])
    np.testing.assert_allclose(metrics.cross_entropy_loss(gt, nan_pred), [PENALTY], rtol=1e-5)


def test_nan_in_probability_sample_keeps_probability_detection():
    gt = one_hot(GT)
    p = one_hot(GT).copy()
    p[0, 0, 0] = np.nan
    ce = metrics.pixel_cross_entropy(gt, p)
    assert ce[0, 0, 0] == pytest.approx(PENALTY, rel=1e-5)
    np.testing.assert_allclose(np.delete(ce.ravel(), 0), 0, atol=1e-6)


def test_ignored_pixels():
    labels = GT.copy()
    labels[0, :] = -1            # first row: all-zero ground truth → ignored
    gt = one_hot(labels)
    pred = logits_for(PRED)
    pred[0, 0, :] = np.nan       # whatever is predicted there does not matter
    tp, fp, fn = metrics.confusion_counts(gt, pred)
    # row 0 held 2 correct class-0 and 2 correct class-1 pixels
    np.testing.assert_array_equal(tp[0], [6, 2, 1])
    np.testing.assert_array_equal(fp[0], FP)
    np.testing.assert_array_equal(fn[0], FN)
    np.testing.assert_allclose(metrics.pixel_accuracy(gt, pred), [9 / 12], rtol=1e-6)
    per_pixel = metrics.pixel_cross_entropy(gt, pred)
    np.testing.assert_array_equal(per_pixel[0, 0], 0)
    np.testing.assert_allclose(metrics.cross_entropy_loss(gt, pred), [per_pixel.sum() / 12], rtol=1e-6)
    # a fully ignored sample (engine padding): metrics undefined (NaN), loss 0
    empty = np.zeros_like(gt)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isnan(metrics.mean_iou(empty, pred)).all()
        assert np.isnan(metrics.pixel_accuracy(empty, pred)).all()
        np.testing.assert_array_equal(metrics.cross_entropy_loss(empty, pred), [0])


def test_validation_errors():
    gt, pred = one_hot(GT), logits_for(PRED)
    with pytest.raises(ValueError, match=r"ground_truth.*\(4, 4, 3\)"):
        metrics.mean_iou(gt[0], pred)
    with pytest.raises(ValueError, match=r"prediction.*\(4, 4, 3\)"):
        metrics.mean_iou(gt, pred[0])
    with pytest.raises(ValueError, match=r"same shape.*\(1, 4, 4, 3\).*\(1, 4, 4, 4\)"):
        metrics.mean_iou(gt, logits_for(PRED, k=4))
    with pytest.raises(ValueError, match="K >= 2"):
        metrics.pixel_accuracy(gt[..., :1], pred[..., :1])
    with pytest.raises(ValueError, match="K >= 2"):
        metrics.to_probabilities(pred[..., :1])
    with pytest.raises(ValueError, match="prediction"):
        metrics.to_probabilities(pred[0])
    bad = gt.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="ground_truth.*NaN"):
        metrics.iou_per_class(bad, pred)
    bad = gt.copy()
    bad[0, 0, 0, 0] = 0.5
    with pytest.raises(ValueError, match="ground_truth.*one-hot"):
        metrics.cross_entropy_loss(bad, pred)
    bad = gt.copy()
    bad[0, 0, 0, :] = 1
    with pytest.raises(ValueError, match="ground_truth.*more than one class"):
        metrics.dice_per_class(bad, pred)
    with pytest.raises(ValueError, match="eps"):
        metrics.pixel_cross_entropy(gt, pred, eps=0)


def test_by_class_name():
    values = np.array([[0.5, np.nan, 1.0]], np.float32)
    result = metrics.by_class_name(values, ["background", "person", "car"])
    assert list(result) == ["background", "person", "car"]
    assert result["background"].shape == (1,) and result["background"].dtype == np.float32
    assert np.isnan(result["person"][0]) and result["car"][0] == 1.0
    with pytest.raises(ValueError, match="len"):
        metrics.by_class_name(values, ["background", "person"])


# --------------------------------------------------------------------------------------------------------------------
# Randomised checks against a plain restatement of the module policies (float64, np.argmax over the class axis). The
# implementation works on per-class planes with OpenCV; these pin it to the simple definitions on many shapes,
# dtypes and corner cases (ties, NaN/Inf, ignored pixels, mixed logits/probability batches, K beyond OpenCV's
# 128-channel limit, empty arrays).

def reference_counts(gt, pred):
    """tp, fp, fn (N, K) by the module's definitions."""
    gt = np.asarray(gt, np.float64)
    with np.errstate(all="ignore"):
        pred = np.asarray(pred).astype(np.float64)
    n, k = gt.shape[0], gt.shape[-1]
    gt_labels = np.where(gt.max(-1) > 0, gt.argmax(-1), -1)
    finite = np.isfinite(pred).all(-1)
    pred_labels = np.where(finite, np.where(finite[..., None], pred, 0).argmax(-1), -1)
    tp, fp, fn = (np.zeros((n, k), np.int64) for _ in range(3))
    for i in range(n):
        g, p = gt_labels[i], pred_labels[i]
        for c in range(k):
            tp[i, c] = np.sum((g == c) & (p == c))
            fp[i, c] = np.sum((g >= 0) & (g != c) & (p == c))
            fn[i, c] = np.sum((g == c) & (p != c))
    return tp, fp, fn


def reference_probabilities(pred):
    """(N, S, S, K) float64 probabilities, the finite-pixel mask and the per-sample "is probabilities" flags, by the
    module's logits-or-probabilities rule (default atol)."""
    raw = np.asarray(pred)
    atol = 1e-2 if raw.dtype == np.float16 else 1e-3
    with np.errstate(all="ignore"):
        x = raw.astype(np.float32).astype(np.float64)
    finite = np.isfinite(x).all(-1)
    x = np.where(finite[..., None], x, 0)
    out = np.zeros_like(x)
    is_prob = np.zeros(x.shape[0], bool)
    for i in range(x.shape[0]):
        sums = x[i].sum(-1)
        is_prob[i] = ((x[i] >= 0) & (x[i] <= 1)).all() and (np.abs(sums[finite[i]] - 1) <= atol).all()
        if is_prob[i]:
            out[i] = np.divide(x[i], sums[..., None], out=np.zeros_like(x[i]), where=sums[..., None] > 0)
        else:
            e = np.exp(x[i] - x[i].max(-1, keepdims=True))
            out[i] = e / e.sum(-1, keepdims=True)
    return np.where(finite[..., None], out, 0), finite, is_prob


def reference_pixel_loss(gt, pred, eps=1e-7):
    """(N, S, S) float64 per-pixel loss by the module's definitions."""
    gt = np.asarray(gt, np.float64)
    probabilities, finite, is_prob = reference_probabilities(pred)
    with np.errstate(all="ignore"):
        x = np.where(finite[..., None], np.asarray(pred).astype(np.float32).astype(np.float64), 0)
    labels = gt.argmax(-1)[..., None]
    loss = np.zeros(gt.shape[:-1])
    for i in range(gt.shape[0]):
        if is_prob[i]:
            loss[i] = -np.log(np.clip(np.take_along_axis(probabilities[i], labels[i], -1)[..., 0], eps, 1))
        else:  # logits: the exact log-softmax
            shifted = x[i] - x[i].max(-1, keepdims=True)
            loss[i] = np.log(np.exp(shifted).sum(-1)) - np.take_along_axis(shifted, labels[i], -1)[..., 0]
    loss = np.where(finite, loss, -np.log(eps))
    return np.where(gt.max(-1) > 0, loss, 0)


def random_case(rng, n, s, k, *, gt_dtype=np.float32, pred_dtype=np.float32, ignored=0.0, invalid=0.0,
                kind="logits"):
    gt = one_hot(rng.integers(0, k, (n, s, s)), k)
    gt[rng.random((n, s, s)) < ignored] = 0
    if kind == "logits":
        pred = rng.normal(0, 3, gt.shape)
    elif kind == "ties":
        pred = np.round(rng.normal(0, 1, gt.shape))  # many equal maxima: the first class must win
    elif kind == "probabilities":
        x = rng.normal(0, 2, gt.shape)
        pred = np.exp(x - x.max(-1, keepdims=True))
        pred /= pred.sum(-1, keepdims=True)
    else:  # mixed: sample 0 probabilities, the others logits
        pred = rng.normal(0, 3, gt.shape)
        x = rng.normal(0, 2, gt.shape[1:])
        pred[0] = np.exp(x - x.max(-1, keepdims=True)) / np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True)
    pred = pred.astype(pred_dtype)
    if invalid and pred.dtype.kind == "f":
        bad = rng.random(pred.shape) < invalid
        pred[bad] = rng.choice(np.array([np.nan, np.inf, -np.inf], pred.dtype), int(bad.sum()))
    return gt.astype(gt_dtype), pred


CASES = [
    dict(n=1, s=16, k=3), dict(n=1, s=16, k=3, pred_dtype=np.float16), dict(n=3, s=8, k=3, ignored=0.2),
    dict(n=2, s=9, k=2, pred_dtype=np.float16, gt_dtype=np.float16, invalid=0.05),
    dict(n=2, s=7, k=5, kind="ties"), dict(n=2, s=7, k=5, kind="ties", pred_dtype=np.float16),
    dict(n=2, s=8, k=3, kind="probabilities"), dict(n=2, s=8, k=3, kind="probabilities", pred_dtype=np.float16),
    dict(n=3, s=6, k=4, kind="mixed", invalid=0.03, ignored=0.1), dict(n=1, s=5, k=3, pred_dtype=np.float64),
    dict(n=1, s=5, k=3, gt_dtype=np.uint8, pred_dtype=np.int32), dict(n=1, s=5, k=3, gt_dtype=bool),
    dict(n=1, s=4, k=130, ignored=0.1, invalid=0.05), dict(n=2, s=3, k=9, pred_dtype=np.float16, invalid=0.3),
]


@pytest.mark.parametrize("case", CASES,
                         ids=lambda c: "-".join(f"{k}={getattr(v, '__name__', v)}" for k, v in c.items()))
def test_matches_plain_definitions(case):
    rng = np.random.default_rng(CASES.index(case))
    gt, pred = random_case(rng, **case)
    tp, fp, fn = reference_counts(gt, pred)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        counts = metrics.confusion_counts(gt, pred)
        for got, want in zip(counts, (tp, fp, fn)):
            assert got.dtype == np.int64
            np.testing.assert_array_equal(got, want)
        with np.errstate(invalid="ignore"):
            iou = (tp / (tp + fp + fn)).astype(np.float32)
            dice = (2 * tp / (2 * tp + fp + fn)).astype(np.float32)
            accuracy = tp.sum(1) / (tp + fn).sum(1)
        np.testing.assert_allclose(metrics.iou_per_class(gt, pred), iou, rtol=1e-6)
        np.testing.assert_allclose(metrics.dice_per_class(gt, pred), dice, rtol=1e-6)
        np.testing.assert_allclose(metrics.mean_iou(gt, pred), np.nanmean(iou, axis=1), rtol=1e-6)
        np.testing.assert_allclose(metrics.mean_dice(gt, pred), np.nanmean(dice, axis=1), rtol=1e-6)
        np.testing.assert_allclose(metrics.pixel_accuracy(gt, pred), accuracy, rtol=1e-6)
        per_pixel = metrics.pixel_cross_entropy(gt, pred)
        loss = metrics.cross_entropy_loss(gt, pred)
        probabilities = metrics.to_probabilities(pred)
    want = reference_pixel_loss(gt, pred)
    assert per_pixel.dtype == np.float32 and per_pixel.shape == gt.shape[:-1]
    np.testing.assert_allclose(per_pixel, want, rtol=1e-4, atol=1e-5)
    labelled = gt.max(-1) > 0
    np.testing.assert_allclose(loss, [want[i][labelled[i]].mean() if labelled[i].any() else 0
                                      for i in range(len(gt))], rtol=1e-4, atol=1e-6)
    assert probabilities.dtype == np.float32 and probabilities.shape == gt.shape
    np.testing.assert_allclose(probabilities, reference_probabilities(pred)[0], atol=1e-6)


def test_float32_logits_spanning_beyond_float32_range():
    # x - max overflows float32 here: the loss is clipped to float32 max and stays finite, without warnings
    gt = one_hot(GT)
    pred = np.where(gt > 0, np.float32(-3e38), np.float32(3e38)).astype(np.float32)
    pred[0, 0, 0] = [3e38, -3e38, -3e38]  # one confident, correct pixel
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        per_pixel = metrics.pixel_cross_entropy(gt, pred)
        probabilities = metrics.to_probabilities(pred)
        accuracy = metrics.pixel_accuracy(gt, pred)
    assert np.all(np.isfinite(per_pixel)) and per_pixel[0, 0, 0] == 0
    np.testing.assert_array_equal(per_pixel[0].ravel()[1:], np.finfo(np.float32).max)
    assert np.all(np.isfinite(probabilities))
    np.testing.assert_allclose(probabilities.sum(-1), 1, atol=1e-6)
    np.testing.assert_allclose(accuracy, [1 / 16])
    # float64 logits beyond the float32 range are finite scores too, not invalid pixels
    np.testing.assert_array_equal(metrics.confusion_counts(gt, np.where(gt > 0, 1e300, -1e300))[0], [[10, 4, 2]])


def test_ground_truth_dtypes_and_negative_zero():
    pred = logits_for(PRED)
    for dtype in (np.float16, np.float32, np.float64, np.uint8, np.int64, bool):
        np.testing.assert_allclose(metrics.iou_per_class(one_hot(GT).astype(dtype), pred)[0], IOU, rtol=1e-6)
    negative_zero = np.where(one_hot(GT) > 0, np.float32(1), np.float32(-0.0))  # -0 is a valid 0
    for dtype in (np.float16, np.float32):
        np.testing.assert_allclose(metrics.iou_per_class(negative_zero.astype(dtype), pred)[0], IOU, rtol=1e-6)
        np.testing.assert_allclose(metrics.cross_entropy_loss(negative_zero.astype(dtype), pred),
                                   metrics.cross_entropy_loss(one_hot(GT), pred), rtol=1e-6)
    for dtype in (np.float16, np.float32, np.float64):
        for value, message in [(np.inf, "NaN"), (np.nan, "NaN"), (2.0, r"one-hot \(values 0 or 1\).*2\.0"),
                               (1e-6, "one-hot"), (-1.0, "one-hot")]:
            bad = one_hot(GT).astype(dtype)
            bad[0, 3, 3, 1] = value
            with pytest.raises(ValueError, match=f"ground_truth.*{message}"):
                metrics.mean_iou(bad, pred)
        bad = one_hot(GT).astype(dtype)
        bad[0, 2, 2, :2] = 1
        with pytest.raises(ValueError, match="more than one class"):
            metrics.cross_entropy_loss(bad, pred)
    bad = one_hot(GT).astype(np.uint8)
    bad[0, 0, 0, 0] = 3
    with pytest.raises(ValueError, match=r"found values \[3\.0\]"):
        metrics.pixel_accuracy(bad, pred)


def test_empty_and_non_contiguous_inputs():
    for shape in [(0, 4, 4, K), (1, 0, 4, K), (2, 3, 0, K)]:
        empty = np.zeros(shape, np.float32)
        assert metrics.iou_per_class(empty, empty).shape == (shape[0], K)
        assert metrics.pixel_cross_entropy(empty, empty).shape == shape[:-1]
        np.testing.assert_array_equal(metrics.cross_entropy_loss(empty, empty), np.zeros(shape[0], np.float32))
        assert metrics.to_probabilities(empty).shape == shape
    gt, pred = one_hot(GT), logits_for(PRED)
    gt_view = np.ascontiguousarray(gt.transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3)  # same values, other strides
    pred_view = np.asfortranarray(pred)
    assert not gt_view.flags.c_contiguous and not pred_view.flags.c_contiguous
    np.testing.assert_allclose(metrics.iou_per_class(gt_view, pred_view)[0], IOU, rtol=1e-6)
    np.testing.assert_allclose(metrics.pixel_cross_entropy(gt_view, pred_view), metrics.pixel_cross_entropy(gt, pred))


# --- the per-sample memo: the engine's separate calls on one sample share one preparation (by content)

def all_results(gt, pred) -> dict:
    return {"counts": metrics.confusion_counts(gt, pred), "iou": metrics.iou_per_class(gt, pred),
            "mean_iou": metrics.mean_iou(gt, pred), "dice": metrics.dice_per_class(gt, pred),
            "mean_dice": metrics.mean_dice(gt, pred), "accuracy": metrics.pixel_accuracy(gt, pred),
            "pixel_loss": metrics.pixel_cross_entropy(gt, pred), "loss": metrics.cross_entropy_loss(gt, pred),
            "pixel_loss_eps": metrics.pixel_cross_entropy(gt, pred, eps=1e-3),
            "probabilities": metrics.to_probabilities(pred),
            "boundary_iou": metrics.boundary_iou_per_class(gt, pred),
            "boundary_counts": metrics.boundary_counts(gt, pred, dilation_ratio=0.3)}


def uncached_results(gt, pred) -> dict:
    metrics._SAMPLE_MEMO.clear()
    metrics._PREDICTION_MEMO.clear()
    return all_results(gt, pred)


def assert_same_results(got: dict, want: dict) -> None:
    """Bit for bit (NaN where NaN), dtypes and shapes included."""
    for name in want:
        got_arrays, want_arrays = (x if isinstance(x, tuple) else (x,) for x in (got[name], want[name]))
        assert len(got_arrays) == len(want_arrays)
        for g, w in zip(got_arrays, want_arrays):
            assert g.dtype == w.dtype, name
            np.testing.assert_array_equal(g, w, err_msg=name, strict=True)


@pytest.mark.parametrize("case", [CASES[1], CASES[3], CASES[8]], ids=["float16", "invalid-ignored", "mixed"])
def test_memoised_results_equal_uncached_ones_for_any_call_order(case):
    rng = np.random.default_rng(7)
    samples = [random_case(rng, **case) for _ in range(3)]
    want = [uncached_results(gt, pred) for gt, pred in samples]
    # interleaved, repeated, each call on fresh copies (as the engine passes them)
    for i in [0, 1, 0, 2, 2, 1, 0]:
        gt, pred = samples[i]
        assert_same_results(all_results(gt.copy(), pred.copy()), want[i])
    # the order of the functions within a sample does not matter either
    metrics._SAMPLE_MEMO.clear()
    metrics._PREDICTION_MEMO.clear()
    gt, pred = samples[0]
    got = {"probabilities": metrics.to_probabilities(pred), "loss": metrics.cross_entropy_loss(gt, pred),
           "pixel_loss": metrics.pixel_cross_entropy(gt, pred), "counts": metrics.confusion_counts(gt, pred)}
    assert_same_results(got, {name: want[0][name] for name in got})


def test_returned_arrays_are_the_callers_own():
    gt, pred = one_hot(GT), logits_for(PRED)
    want = uncached_results(gt, pred)
    got = all_results(gt, pred)
    for value in got.values():
        for array in value if isinstance(value, tuple) else (value,):
            assert array.flags.writeable
            array[...] = 99  # must not reach the memo
    assert_same_results(all_results(gt, pred), want)


def test_changing_the_input_in_place_gives_the_new_results():
    gt, pred = one_hot(GT), logits_for(PRED)
    metrics.iou_per_class(gt, pred), metrics.cross_entropy_loss(gt, pred)
    pred[0, 0, 0] = [-5, 5, -5]  # one more pixel predicted as class 1
    gt[0, 3, 3] = 0  # one pixel ignored
    assert_same_results(all_results(gt, pred), uncached_results(gt, pred))


def test_memo_stays_bounded_and_holds_read_only_values():
    rng = np.random.default_rng(3)
    for _ in range(10):
        gt, pred = random_case(rng, n=1, s=8, k=3, pred_dtype=np.float16)
        all_results(gt, pred)
    assert len(metrics._SAMPLE_MEMO) <= 2 and len(metrics._PREDICTION_MEMO) <= 2
    for entry in metrics._SAMPLE_MEMO._entries + metrics._PREDICTION_MEMO._entries:
        for value in entry._values.values():
            arrays = [value] if isinstance(value, np.ndarray) else [v for v in value if isinstance(v, np.ndarray)]
            if hasattr(value, "_fields"):  # a _Pair
                arrays = [value.gt_masks, value.labelled, value.scores]
            assert all(not array.flags.writeable for array in arrays)


def test_validation_errors_are_raised_on_every_call():
    gt, pred = one_hot(GT), logits_for(PRED)
    bad = gt.copy()
    bad[0, 0, 0] = [1, 1, 0]
    metrics.mean_iou(gt, pred)  # a valid entry of the same prediction in the memo
    for _ in range(2):
        with pytest.raises(ValueError, match="more than one class"):
            metrics.mean_iou(bad, pred)
        with pytest.raises(ValueError, match="more than one class"):
            metrics.cross_entropy_loss(bad, pred)


def test_one_sample_ratios_on_python_numbers_equal_the_array_computation():
    rng = np.random.default_rng(12)
    for k in range(2, metrics._SCALAR_MAX_CLASSES + 1):
        for scale in [0, 3, 1000, 2**20] * 10:  # up to K * 2^20 < 2^23 labelled pixels, the scalar path's bound
            in_gt = rng.integers(0, scale + 1, k) * rng.integers(0, 2, k)  # some classes absent
            tp = (in_gt * rng.random(k)).astype(np.int64)
            predicted = tp + rng.integers(0, scale + 1, k) * rng.integers(0, 2, k)
            want = metrics._ratios(tp[None], in_gt[None], predicted[None])
            got = metrics._one_sample_ratios(tp.tolist(), in_gt.tolist(), predicted.tolist())
            assert got.keys() == want.keys()
            for name in want:
                assert got[name].dtype == np.float32 and got[name].shape == want[name].shape
                np.testing.assert_array_equal(got[name], want[name], err_msg=f"{name}, k={k}, scale={scale}")


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_probability_detection_at_the_edges_of_the_tolerance(dtype):
    atol = 1e-2 if dtype == np.float16 else 1e-3
    for k in (2, 3, 7):
        uniform = np.full((1, 4, 4, k), 1 / k, dtype)  # the smallest max a probability vector can have
        np.testing.assert_allclose(metrics.to_probabilities(uniform), 1 / k, rtol=1e-3)  # renormalised, not softmax
        low_sum = np.full((1, 4, 4, k), (1 - atol / 2) / k, dtype)  # sums just inside the tolerance
        np.testing.assert_allclose(metrics.to_probabilities(low_sum), 1 / k, rtol=1e-3)
        too_low = np.full((1, 4, 4, k), (1 - 2 * atol) / k, dtype)  # logits: a softmax, uniform too
        too_low[0, 0, 0, 0] = 0.9  # an uneven pixel tells a softmax from a renormalisation
        got = metrics.to_probabilities(too_low)[0, 0, 0]
        e = np.exp(too_low[0, 0, 0].astype(np.float64) - 0.9)
        np.testing.assert_allclose(got, e / e.sum(), rtol=1e-5)
        small = np.full((1, 4, 4, k), 0.01, dtype)
        small[..., 0] = 1 - 0.01 * (k - 1)  # probabilities with a large max everywhere
        want = small.astype(np.float64) / small.astype(np.float64).sum(-1, keepdims=True)
        np.testing.assert_allclose(metrics.to_probabilities(small), want, rtol=1e-6)


def test_concurrent_calls_on_different_samples_get_their_own_results():
    import threading

    rng = np.random.default_rng(13)
    samples = [random_case(rng, n=1, s=12, k=3, pred_dtype=np.float16, ignored=0.1) for _ in range(4)]
    want = [uncached_results(gt, pred) for gt, pred in samples]
    failures = []

    def worker(seed: int) -> None:
        order = np.random.default_rng(seed).integers(0, len(samples), 40)
        for i in order:
            gt, pred = samples[i]
            try:
                assert_same_results(all_results(gt.copy(), pred.copy()), want[i])
            except AssertionError as error:  # pragma: no cover - reported below
                failures.append(str(error))

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert len(metrics._SAMPLE_MEMO) <= 2 and len(metrics._PREDICTION_MEMO) <= 2


# --- the public per-pixel functions (predicted_labels, ground_truth_labels, label_pairs, class_probabilities)

def reference_predicted_labels(pred) -> np.ndarray:
    """(N, S, S) uint8: np.argmax over the classes (first maximum), 0 where the vector holds NaN/Inf."""
    with np.errstate(all="ignore"):
        x = np.asarray(pred).astype(np.float64)
    finite = np.isfinite(x).all(-1)
    return np.where(finite, np.where(finite[..., None], x, 0).argmax(-1), 0).astype(np.uint8)


def reference_ground_truth_labels(gt) -> np.ndarray:
    """(N, S, S) int64: the index of the pixel's 1, -1 at an ignored (all-zero) pixel."""
    gt = np.asarray(gt, np.float64)
    return np.where(gt.max(-1) > 0, gt.argmax(-1), -1)


def reference_label_pairs(gt, pred) -> np.ndarray:
    """(N, S, S) int64 g * (K + 1) + p, K for "no class" (ignored ground truth, NaN/Inf prediction)."""
    k = gt.shape[-1]
    g = reference_ground_truth_labels(gt)
    with np.errstate(all="ignore"):
        finite = np.isfinite(np.asarray(pred).astype(np.float64)).all(-1)
    p = np.where(finite, reference_predicted_labels(pred), k)
    return np.where(g >= 0, g, k) * (k + 1) + p


PER_PIXEL_CASES = [
    dict(n=1, s=16, k=3, pred_dtype=np.float16, invalid=0.05, ignored=0.1),
    dict(n=3, s=8, k=3, invalid=0.05, ignored=0.2), dict(n=2, s=7, k=5, kind="ties", pred_dtype=np.float16),
    dict(n=2, s=8, k=3, kind="probabilities", pred_dtype=np.float16, invalid=0.02),
    dict(n=3, s=6, k=4, kind="mixed", invalid=0.03, ignored=0.1), dict(n=1, s=5, k=3, pred_dtype=np.float64),
    dict(n=1, s=5, k=3, gt_dtype=np.uint8, pred_dtype=np.int32), dict(n=1, s=5, k=3, gt_dtype=bool),
    dict(n=2, s=6, k=16, gt_dtype=np.float16, pred_dtype=np.float16, invalid=0.05, ignored=0.1),
    dict(n=1, s=4, k=130, ignored=0.1, invalid=0.05), dict(n=1, s=3, k=255, ignored=0.2, invalid=0.1),
]


@pytest.mark.parametrize("case", PER_PIXEL_CASES,
                         ids=lambda c: "-".join(f"{k}={getattr(v, '__name__', v)}" for k, v in c.items()))
@pytest.mark.parametrize("validated", [False, True], ids=["alone", "after-the-metrics"])
def test_per_pixel_functions_match_plain_definitions(case, validated):
    rng = np.random.default_rng(PER_PIXEL_CASES.index(case))
    gt, pred = random_case(rng, **case)
    n, s, _, k = gt.shape
    if validated:  # the pair is validated and memoised: the functions reuse its labels and planes
        metrics.confusion_counts(gt, pred)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        labels = metrics.predicted_labels(pred)
        gt_labels = metrics.ground_truth_labels(gt)
        gt_argmax = metrics.predicted_labels(gt)  # a one-hot's argmax is its class
        pairs = metrics.label_pairs(gt, pred)
        probabilities = metrics.class_probabilities(pred)
    assert labels.dtype == gt_labels.dtype == gt_argmax.dtype == np.uint8
    assert labels.shape == gt_labels.shape == pairs.shape == (n, s, s)
    np.testing.assert_array_equal(labels, reference_predicted_labels(pred))
    np.testing.assert_array_equal(gt_labels, np.maximum(reference_ground_truth_labels(gt), 0))  # ignored → 0
    np.testing.assert_array_equal(gt_argmax, gt_labels)
    assert pairs.dtype == (np.uint8 if k <= 15 else np.uint16)
    np.testing.assert_array_equal(pairs, reference_label_pairs(gt, pred))
    assert probabilities.dtype == np.float32 and probabilities.shape == (n, k, s, s)
    assert probabilities.flags.c_contiguous
    np.testing.assert_allclose(probabilities, np.moveaxis(reference_probabilities(pred)[0], -1, 1), atol=1e-6)
    np.testing.assert_array_equal(probabilities, np.moveaxis(metrics.to_probabilities(pred), -1, 1), strict=True)


def test_label_pairs_are_what_the_counts_tally():
    rng = np.random.default_rng(21)
    gt, pred = random_case(rng, n=3, s=10, k=4, pred_dtype=np.float16, ignored=0.1, invalid=0.05)
    pairs = metrics.label_pairs(gt, pred)
    g, p = np.divmod(pairs.astype(np.int64), 5)
    tp, fp, fn = metrics.confusion_counts(gt, pred)
    for i in range(3):
        for c in range(4):
            assert tp[i, c] == np.sum((g[i] == c) & (p[i] == c))
            assert fp[i, c] == np.sum((g[i] < 4) & (g[i] != c) & (p[i] == c))
            assert fn[i, c] == np.sum((g[i] == c) & (p[i] != c))


def test_per_pixel_hand_case():
    labels = GT.copy()
    labels[0, 3] = -1  # ignored
    gt, pred = one_hot(labels), logits_for(PRED)
    pred[0, 1, 1] = [np.nan, 0, 0]  # no class predicted
    want_pred = PRED.copy()
    want_pred[1, 1] = 0
    np.testing.assert_array_equal(metrics.predicted_labels(pred)[0], want_pred)
    want_gt = GT.copy()
    want_gt[0, 3] = 0
    np.testing.assert_array_equal(metrics.ground_truth_labels(gt)[0], want_gt)
    pairs = metrics.label_pairs(gt, pred)[0]
    assert pairs[0, 3] == K * (K + 1) + 1      # ignored ground truth (K), class 1 predicted
    assert pairs[1, 1] == 0 * (K + 1) + K      # background, no class predicted (NaN)
    assert pairs[3, 1] == 2 * (K + 1) + 0      # class 2 predicted as background
    probabilities = metrics.class_probabilities(pred)
    np.testing.assert_array_equal(probabilities[0, :, 1, 1], 0)
    np.testing.assert_allclose(probabilities.sum(axis=1).ravel()[[0, 1, 2, 3, 4, 6]], 1, rtol=1e-6)


def test_per_pixel_functions_return_arrays_of_their_own():
    rng = np.random.default_rng(22)
    gt, pred = random_case(rng, n=1, s=8, k=3, pred_dtype=np.float16, invalid=0.05, ignored=0.1)
    metrics.mean_iou(gt, pred)  # memoised: the labels and pairs come from the memo
    functions = [lambda: metrics.predicted_labels(pred.copy()), lambda: metrics.ground_truth_labels(gt.copy()),
                 lambda: metrics.predicted_labels(gt.copy()), lambda: metrics.label_pairs(gt.copy(), pred.copy()),
                 lambda: metrics.class_probabilities(pred.copy())]
    want = [f().copy() for f in functions]
    for f in functions:
        got = f()
        assert got.flags.writeable
        got[...] = 7
    for f, w in zip(functions, want):
        np.testing.assert_array_equal(f(), w, strict=True)


def test_per_pixel_functions_validate_their_arguments():
    gt, pred = one_hot(GT), logits_for(PRED)
    for function, name, array in [(metrics.predicted_labels, "prediction", pred),
                                  (metrics.class_probabilities, "prediction", pred),
                                  (metrics.ground_truth_labels, "ground_truth", gt)]:
        with pytest.raises(ValueError, match=rf"{name} must be a 4-D array \(N, S, S, K\); got shape \(4, 4, 3\)"):
            function(array[0])
        with pytest.raises(ValueError, match=rf"{name} must be a 4-D array.*\(1, 1, 4, 4, 3\)"):
            function(array[None])
        with pytest.raises(ValueError, match=rf"{name} must have K >= 2 classes"):
            function(array[..., :1])
        with pytest.raises(ValueError, match=f"{name} must be a real numeric array"):
            function(array.astype(np.complex64))
    for function, name in [(metrics.predicted_labels, "prediction"), (metrics.ground_truth_labels, "ground_truth")]:
        with pytest.raises(ValueError, match=rf"{function.__name__} supports at most 256 classes.*{name}"):
            function(one_hot(np.zeros((2, 2), int), k=257))
        assert function(one_hot(np.zeros((2, 2), int), k=256)).shape == (1, 2, 2)
    with pytest.raises(ValueError, match="label_pairs supports at most 255 classes"):
        metrics.label_pairs(one_hot(np.zeros((2, 2), int), k=256), one_hot(np.zeros((2, 2), int), k=256))
    with pytest.raises(ValueError, match=r"ground_truth must be a 4-D array.*\(4, 4, 3\)"):
        metrics.label_pairs(gt[0], pred)
    with pytest.raises(ValueError, match=r"prediction must be a 4-D array.*\(4, 4, 3\)"):
        metrics.label_pairs(gt, pred[0])
    with pytest.raises(ValueError, match=r"same shape.*\(1, 4, 4, 3\).*\(1, 4, 4, 4\)"):
        metrics.label_pairs(gt, logits_for(PRED, k=4))
    with pytest.raises(ValueError, match="K >= 2"):
        metrics.label_pairs(gt[..., :1], pred[..., :1])
    metrics.mean_iou(gt, pred)  # a valid pair of the same prediction in the memo: the bad ground truths still fail
    for value, message in [(np.nan, "ground_truth must be finite one-hot; it holds NaN or Inf"),
                           (0.5, r"ground_truth must be one-hot \(values 0 or 1\); found values \[0\.5\]"),
                           (1.0, "ground_truth must be one-hot: some pixels have more than one class set")]:
        bad = gt.copy()
        bad[0, 0, 0, 1] = value  # (0, 0) is background: a second 1 there is two classes
        for _ in range(2):
            with pytest.raises(ValueError, match=message):
                metrics.ground_truth_labels(bad)
            with pytest.raises(ValueError, match=message):
                metrics.label_pairs(bad, pred)
    # a prediction is not checked as a one-hot: any real scores
    np.testing.assert_array_equal(metrics.predicted_labels(gt * 2 - 0.5)[0], GT)


def test_per_pixel_functions_are_public_and_documented():
    for name in ("predicted_labels", "ground_truth_labels", "label_pairs", "class_probabilities"):
        assert name in metrics.__all__
        doc = getattr(metrics, name).__doc__
        for section in ("Args:", "Returns:", "Raises:", "(N, S, S, K)", "NaN"):
            assert section in doc, (name, section)
