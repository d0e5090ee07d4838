"""coco_seg.visualizers on hand-made single samples."""

import math
import warnings

import numpy as np
import pytest

from coco_seg import visualizers

NAMES = ["background", "person", "car"]
K = len(NAMES)


def one_hot(labels, k=K) -> np.ndarray:
    """(S, S) int labels → (S, S, k) float32 one-hot; -1 gives an all-zero (ignored) pixel."""
    labels = np.asarray(labels)
    return np.stack([labels == c for c in range(k)], axis=-1).astype(np.float32)


def logits_for(labels, k=K) -> np.ndarray:
    return np.where(one_hot(labels, k) > 0, np.float32(5), np.float32(-5))


GT = np.array([[0, 0, 1, 1],
               [0, 0, 1, 1],
               [0, 0, 0, 0],
               [2, 2, 0, 0]])


def test_drop_batch_axis():
    x = np.zeros((4, 4, 3))
    assert visualizers.drop_batch_axis(x).shape == (4, 4, 3)
    assert visualizers.drop_batch_axis(x[None]).shape == (4, 4, 3)
    with pytest.raises(ValueError, match=r"\(2, 4, 4, 3\)"):
        visualizers.drop_batch_axis(np.zeros((2, 4, 4, 3)))
    with pytest.raises(ValueError, match=r"\(4, 4\)"):
        visualizers.drop_batch_axis(np.zeros((4, 4)))


def test_denormalize_round_trip():
    pixels = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=-1)
    normalized = pixels.astype(np.float32) / 127.5 - 1
    for image in (normalized, normalized[None], normalized.astype(np.float16)):
        restored = visualizers.denormalize_image(image)
        assert restored.dtype == np.uint8 and restored.shape == (16, 16, 3)
        np.testing.assert_array_equal(restored, pixels)


def test_denormalize_clips():
    image = np.array([[[-2.0, 0.0, 2.0]]], np.float32)
    np.testing.assert_array_equal(visualizers.denormalize_image(image), [[[0, 128, 255]]])  # 127.5 rounds to even


def test_label_map():
    labels = visualizers.label_map(one_hot(GT))
    assert labels.dtype == np.uint8 and labels.shape == (4, 4)
    np.testing.assert_array_equal(labels, GT)
    np.testing.assert_array_equal(visualizers.label_map(logits_for(GT)[None]), GT)
    scores = logits_for(GT)
    scores[0, 2] = np.nan
    expected = GT.copy()
    expected[0, 2] = 0
    np.testing.assert_array_equal(visualizers.label_map(scores), expected)


def test_error_map_codes():
    # Codes: 0 correct, 1 FP person, 2 FN person, 3 FP car, 4 FN car.
    #   ground truth      prediction        codes
    #   0 0 1 1           0 0 2 1           0 0 3 0     (0,2): person predicted as car → FP car
    #   0 0 1 1           0 1 ? 1           0 1 2 0     (1,1): FP person; (1,2): NaN prediction → FN person
    #   0 0 0 0           0 0 1 0           0 0 1 0     (2,2): FP person
    #   2 2 0 -           2 0 0 2           0 4 0 0     (3,1): car predicted as background → FN car;
    #                                                   (3,3): ignored GT pixel → 0 whatever is predicted
    gt_labels = GT.copy()
    gt_labels[3, 3] = -1
    pred_labels = np.array([[0, 0, 2, 1],
                            [0, 1, 1, 1],
                            [0, 0, 1, 0],
                            [2, 0, 0, 2]])
    prediction = logits_for(pred_labels)
    prediction[1, 2, 1] = np.nan
    codes, labels = visualizers.error_map(one_hot(gt_labels), prediction, class_names=NAMES)
    assert labels == ["correct", "false positive person", "false negative person",
                      "false positive car", "false negative car"]
    assert codes.dtype == np.uint8 and codes.shape == (4, 4)
    np.testing.assert_array_equal(codes, [[0, 0, 3, 0],
                                          [0, 1, 2, 0],
                                          [0, 0, 1, 0],
                                          [0, 4, 0, 0]])
    # perfect prediction (batch axis of 1 accepted): all correct
    codes, _ = visualizers.error_map(one_hot(GT)[None], logits_for(GT)[None], class_names=NAMES)
    np.testing.assert_array_equal(codes, 0)


def test_error_map_validation():
    with pytest.raises(ValueError, match="class_names"):
        visualizers.error_map(one_hot(GT), logits_for(GT), class_names=NAMES[:2])
    with pytest.raises(ValueError, match="same shape"):
        visualizers.error_map(one_hot(GT), logits_for(GT)[:2], class_names=NAMES)


def test_loss_heatmap():
    heatmap = visualizers.loss_heatmap(one_hot(GT), logits_for(GT))
    assert heatmap.shape == (1, 4, 4) and heatmap.dtype == np.float32
    assert np.all(heatmap >= 0)
    np.testing.assert_allclose(heatmap, 0, atol=1e-3)  # confident and correct: -log(e^5/(e^5+2e^-5)) ≈ 9e-5
    confident = np.where(one_hot(GT) > 0, np.float16(60000), np.float16(-60000))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_allclose(visualizers.loss_heatmap(one_hot(GT)[None], confident[None]), 0, atol=1e-6)
    wrong = logits_for(np.zeros_like(GT))
    wrong[0, 0] = np.inf
    heatmap = visualizers.loss_heatmap(one_hot(GT), wrong)
    assert np.all(np.isfinite(heatmap)) and np.all(heatmap >= 0)
    assert heatmap[0, 0, 0] == pytest.approx(-math.log(1e-7), rel=1e-5)   # non-finite prediction: penalty
    assert heatmap[0, 0, 2] == pytest.approx(10, abs=1e-3)                 # wrong: ≈ 5 - (-5)


def test_confidence_heatmaps():
    logits = np.array([[[0.0, math.log(2), math.log(5)]]], np.float32)  # softmax → 1/8, 2/8, 5/8
    heatmaps = visualizers.confidence_heatmaps(logits)
    assert heatmaps.shape == (K, 1, 1) and heatmaps.dtype == np.float32
    np.testing.assert_allclose(heatmaps[:, 0, 0], [1 / 8, 2 / 8, 5 / 8], rtol=1e-6)
    probabilities = np.array([[[0.125, 0.25, 0.625]]], np.float32)
    np.testing.assert_allclose(visualizers.confidence_heatmaps(probabilities[None]), heatmaps, rtol=1e-6)
    scores = logits_for(GT).astype(np.float16)
    scores[0, 0] = np.nan
    heatmaps = visualizers.confidence_heatmaps(scores)
    assert heatmaps.shape == (K, 4, 4) and np.all(np.isfinite(heatmaps))
    np.testing.assert_array_equal(heatmaps[:, 0, 0], 0)
    np.testing.assert_allclose(heatmaps.sum(axis=0).ravel()[1:], 1, atol=1e-5)
    np.testing.assert_array_equal(heatmaps.argmax(axis=0).ravel()[1:], GT.ravel()[1:])


# --------------------------------------------------------------------------------------------------------------------
# Randomised checks against plain restatements of the documented behaviour (the implementation works on per-class
# planes with OpenCV; these pin it to the simple definitions, NaN/Inf, ties and sizes that exercise vector code).

def reference_labels(scores):
    scores = np.asarray(scores, np.float64)
    finite = np.isfinite(scores).all(-1)
    return np.where(finite, np.where(finite[..., None], scores, 0).argmax(-1), 0).astype(np.uint8)


def reference_error_codes(gt, pred):
    k = gt.shape[-1]
    g = np.where(gt.max(-1) > 0, gt.argmax(-1), -1)
    finite = np.isfinite(pred.astype(np.float64)).all(-1)
    p = np.where(finite, np.where(finite[..., None], pred.astype(np.float64), 0).argmax(-1), -1)
    codes = np.zeros(g.shape, np.uint8)
    wrong = (g >= 0) & (p != g)
    codes[wrong & (p >= 1)] = 2 * p[wrong & (p >= 1)] - 1
    codes[wrong & (p < 1)] = 2 * g[wrong & (p < 1)]
    assert codes.max(initial=0) < 2 * k - 1
    return codes


def test_denormalize_non_finite_and_large_images():
    rng = np.random.default_rng(3)
    image = rng.uniform(-1.2, 1.2, (1, 96, 80, 3)).astype(np.float32)
    flat = image.reshape(-1)
    flat[rng.random(flat.size) < 0.05] = np.nan
    flat[rng.random(flat.size) < 0.05] = np.inf
    flat[rng.random(flat.size) < 0.05] = -np.inf
    with np.errstate(invalid="ignore"):
        expected = np.clip(np.nan_to_num(np.rint((image[0] + 1) * np.float32(127.5)), nan=0.0), 0, 255).astype(np.uint8)
    for dtype in (np.float32, np.float64, np.float16):
        restored = visualizers.denormalize_image(image.astype(dtype))
        assert restored.dtype == np.uint8 and restored.shape == (96, 80, 3)
        if dtype != np.float16:  # float16 rounds the inputs first
            np.testing.assert_array_equal(restored, expected)
    np.testing.assert_array_equal(restored[np.isnan(image[0])], 0)
    np.testing.assert_array_equal(restored[image[0] == np.inf], 255)
    np.testing.assert_array_equal(restored[image[0] == -np.inf], 0)
    halves = (np.arange(512, dtype=np.float32) / 2 / np.float32(127.5) - 1).reshape(1, -1, 4)[..., :3]
    np.testing.assert_array_equal(visualizers.denormalize_image(halves),
                                  np.rint((halves + 1) * np.float32(127.5)).astype(np.uint8))  # half to even


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, np.int8])
def test_label_map_matches_argmax(dtype):
    rng = np.random.default_rng(4)
    for k in (1, 2, 3, 7, 256):
        scores = np.round(rng.normal(0, 2, (12, 10, k))).astype(dtype)  # rounded: many ties, the first class wins
        if scores.dtype.kind == "f":
            scores[rng.random((12, 10, k)) < 0.05] = np.nan
            scores[rng.random((12, 10, k)) < 0.03] = -np.inf
        labels = visualizers.label_map(scores)
        assert labels.dtype == np.uint8 and labels.shape == (12, 10)
        np.testing.assert_array_equal(labels, reference_labels(scores))
        np.testing.assert_array_equal(visualizers.label_map(scores[None]), labels)
    with pytest.raises(ValueError, match="256"):
        visualizers.label_map(np.zeros((2, 2, 257)))


@pytest.mark.parametrize("k", [2, 3, 15, 16, 20])  # up to 15 classes the codes go through cv2.LUT
def test_error_map_matches_definition(k):
    rng = np.random.default_rng(k)
    names = ["background"] + [f"class {c}" for c in range(1, k)]
    gt = np.eye(k, dtype=np.float32)[rng.integers(0, k, (20, 18))]
    gt[rng.random((20, 18)) < 0.1] = 0
    pred = rng.normal(0, 2, (20, 18, k)).astype(np.float16)
    pred[rng.random((20, 18)) < 0.05, rng.integers(0, k)] = np.nan
    codes, labels = visualizers.error_map(gt, pred, class_names=names)
    assert codes.dtype == np.uint8 and codes.shape == (20, 18) and len(labels) == 2 * k - 1
    np.testing.assert_array_equal(codes, reference_error_codes(gt, pred))
    # a NaN prediction on a background pixel is a "false negative background", which has no code of its own: 0
    background = one_hot(np.zeros((2, 2), int))
    nan = np.full((2, 2, K), np.nan, np.float32)
    np.testing.assert_array_equal(visualizers.error_map(background, nan, class_names=NAMES)[0], 0)
    with pytest.raises(ValueError, match="ground_truth.*one-hot"):
        visualizers.error_map(gt * 2, pred, class_names=names)


def test_confidence_heatmaps_and_loss_heatmap_match_metrics():
    from coco_seg import metrics

    rng = np.random.default_rng(5)
    gt = np.eye(K, dtype=np.float32)[rng.integers(0, K, (16, 16))]
    for dtype in (np.float16, np.float32):
        logits = rng.normal(0, 3, (16, 16, K)).astype(dtype)
        logits[3, 4, 1] = np.inf
        with np.errstate(invalid="ignore"):  # the Inf pixel; set to 0 below
            e = np.exp(logits.astype(np.float64) - logits.astype(np.float64).max(-1, keepdims=True))
            expected = np.nan_to_num(e / e.sum(-1, keepdims=True), nan=0.0)
        expected[3, 4] = 0
        heatmaps = visualizers.confidence_heatmaps(logits[None])
        assert heatmaps.shape == (K, 16, 16) and heatmaps.dtype == np.float32 and heatmaps.flags.c_contiguous
        np.testing.assert_allclose(heatmaps, np.moveaxis(expected, -1, 0), atol=1e-6)
        np.testing.assert_array_equal(heatmaps, np.moveaxis(metrics.to_probabilities(logits[None])[0], -1, 0))
        heatmap = visualizers.loss_heatmap(gt, logits)
        assert heatmap.shape == (1, 16, 16) and heatmap.dtype == np.float32
        np.testing.assert_array_equal(heatmap, metrics.pixel_cross_entropy(gt[None], logits[None]))
    probabilities = rng.dirichlet(np.ones(K), (16, 16)).astype(np.float32)
    np.testing.assert_allclose(visualizers.confidence_heatmaps(probabilities),
                               np.moveaxis(probabilities / probabilities.sum(-1, keepdims=True), -1, 0), atol=1e-6)


def reference_denormalize(image: np.ndarray) -> np.ndarray:
    """The definition, in numpy float32: round((x + 1) * 127.5) half to even, clipped to 0..255, NaN → 0."""
    with np.errstate(invalid="ignore"):
        pixels = (image.astype(np.float32) + np.float32(1)) * np.float32(127.5)
        return np.nan_to_num(np.rint(np.clip(pixels, 0, 255)), nan=0.0).astype(np.uint8)


def test_denormalize_float16_matches_the_definition_for_every_float16_value():
    every_value = np.arange(2**16, dtype=np.uint16).view(np.float16)[:-1].reshape(-1, 5, 3)  # 65535 = 5 * 13107
    for rows in np.array_split(every_value, 8):  # one image per chunk: all values, a memo miss each
        np.testing.assert_array_equal(visualizers.denormalize_image(rows), reference_denormalize(rows))


def test_every_visualizer_returns_arrays_of_its_own():
    """The image and the sample's planes are memoised by content: a caller changing a result changes no later one."""
    rng = np.random.default_rng(9)
    image = rng.uniform(-1, 1, (8, 8, 3)).astype(np.float16)
    gt = np.eye(K, dtype=np.float16)[rng.integers(0, K, (8, 8))]
    pred = rng.normal(0, 3, (8, 8, K)).astype(np.float16)
    pred[1, 2, 0] = np.nan

    def results():
        return [visualizers.denormalize_image(image.copy()), visualizers.label_map(gt.copy()),
                visualizers.label_map(pred.copy()), visualizers.error_map(gt.copy(), pred, class_names=NAMES)[0],
                visualizers.loss_heatmap(gt, pred.copy()), visualizers.confidence_heatmaps(pred.copy())]

    first = results()
    expected = [array.copy() for array in first]
    for array in first:
        assert array.flags.writeable
        array[...] = 7
    for again, want in zip(results(), expected):
        np.testing.assert_array_equal(again, want)
    image[0, 0] = -1  # new content: a new result
    assert visualizers.denormalize_image(image)[0, 0].tolist() == [0, 0, 0]


def test_label_map_of_a_ground_truth_the_metrics_checked_is_its_argmax():
    from coco_seg import metrics

    rng = np.random.default_rng(11)
    gt = np.eye(K, dtype=np.float16)[rng.integers(0, K, (9, 7))]
    gt[rng.random((9, 7)) < 0.2] = 0  # ignored pixels: 0
    gt[0, 0] = np.array([-0.0, 1, -0.0], np.float16)  # -0 is a valid 0
    pred = rng.normal(0, 3, (9, 7, K)).astype(np.float16)
    metrics.mean_iou(gt[None], pred[None])  # the pair is validated and memoised
    labels = visualizers.label_map(gt.copy())
    np.testing.assert_array_equal(labels, reference_labels(gt))
    labels[...] = 9  # the caller's own array
    np.testing.assert_array_equal(visualizers.label_map(gt), reference_labels(gt))
    np.testing.assert_array_equal(visualizers.label_map(pred), reference_labels(pred))  # not a ground truth


# --------------------------------------------------------------------------------------------------------------------
# Every visualizer against plain numpy restatements (float64, the class axis last), on random samples with NaN/Inf
# prediction pixels and ignored ground-truth pixels: what they return must not depend on how metrics computes it.

def reference_probabilities(pred):
    """(S, S, K) float64 probabilities of one sample by the documented rule: probabilities (renormalised) when every
    finite pixel's values lie in [0, 1] and sum to 1 within atol (1e-2 for float16, 1e-3 otherwise), else a
    softmax; an all-zero vector where the prediction holds NaN/Inf."""
    atol = 1e-2 if pred.dtype == np.float16 else 1e-3
    with np.errstate(all="ignore"):
        x = pred.astype(np.float64)
    finite = np.isfinite(x).all(-1)
    x = np.where(finite[..., None], x, 0)
    sums = x.sum(-1)
    if ((x >= 0) & (x <= 1)).all() and (np.abs(sums[finite] - 1) <= atol).all():
        out = np.divide(x, sums[..., None], out=np.zeros_like(x), where=sums[..., None] > 0)
        is_probabilities = True
    else:
        e = np.exp(x - x.max(-1, keepdims=True))
        out, is_probabilities = e / e.sum(-1, keepdims=True), False
    return np.where(finite[..., None], out, 0), finite, is_probabilities


def reference_loss(gt, pred, eps=1e-7):
    """(S, S) float64 per-pixel cross-entropy: -log p(ground-truth class), clipped at eps for probabilities, the exact
    log-softmax for logits; -log(eps) at NaN/Inf pixels; 0 at ignored pixels."""
    probabilities, finite, is_probabilities = reference_probabilities(pred)
    g = gt.astype(np.float64).argmax(-1)[..., None]
    if is_probabilities:
        loss = -np.log(np.clip(np.take_along_axis(probabilities, g, -1)[..., 0], eps, 1))
    else:
        with np.errstate(all="ignore"):
            x = np.where(finite[..., None], pred.astype(np.float64), 0)
        shifted = x - x.max(-1, keepdims=True)
        loss = np.log(np.exp(shifted).sum(-1)) - np.take_along_axis(shifted, g, -1)[..., 0]
    loss = np.where(finite, loss, -np.log(eps))
    return np.where(gt.max(-1) > 0, loss, 0)


def random_sample(rng, *, s, k, dtype, kind):
    gt = np.eye(k, dtype=np.float32)[rng.integers(0, k, (s, s))]
    gt[rng.random((s, s)) < 0.1] = 0  # ignored pixels
    gt = gt.astype(dtype)
    if kind == "logits":
        pred = rng.normal(0, 3, (s, s, k))
    else:
        pred = rng.dirichlet(np.ones(k), (s, s))
    pred = pred.astype(dtype)
    pixels = rng.random((s, s)) < 0.06  # NaN, +Inf or -Inf in one class of some pixels
    pred[pixels, rng.integers(0, k)] = rng.choice(np.array([np.nan, np.inf, -np.inf], dtype), int(pixels.sum()))
    pred[0, 0, :] = np.nan  # an all-NaN pixel
    return gt, pred


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("batch_axis", [False, True], ids=["sample", "batch-of-one"])
@pytest.mark.parametrize("kind", ["logits", "probabilities"])
@pytest.mark.parametrize("after_metrics", [False, True], ids=["alone", "after-the-metrics"])
def test_every_visualizer_matches_plain_numpy(dtype, batch_axis, kind, after_metrics):
    from coco_seg import metrics

    rng = np.random.default_rng([int(batch_axis), int(after_metrics), np.dtype(dtype).itemsize, len(kind)])
    for k in (3, 16):
        names = ["background"] + [f"class {c}" for c in range(1, k)]
        gt, pred = random_sample(rng, s=24, k=k, dtype=dtype, kind=kind)
        if after_metrics:  # as the engine does: the metrics and the loss first, on their own (1, S, S, K) copies
            metrics.mean_iou(gt[None].copy(), pred[None].copy()), metrics.cross_entropy_loss(gt[None], pred[None])
        given = (lambda a: a[None].copy()) if batch_axis else (lambda a: a.copy())
        probabilities = reference_probabilities(pred)[0]
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            gt_map, pred_map = visualizers.label_map(given(gt)), visualizers.label_map(given(pred))
            codes, labels = visualizers.error_map(given(gt), given(pred), class_names=names)
            loss = visualizers.loss_heatmap(given(gt), given(pred))
            heatmaps = visualizers.confidence_heatmaps(given(pred))
        for array, shape, array_dtype in [(gt_map, (24, 24), np.uint8), (pred_map, (24, 24), np.uint8),
                                          (codes, (24, 24), np.uint8), (loss, (1, 24, 24), np.float32),
                                          (heatmaps, (k, 24, 24), np.float32)]:
            assert array.shape == shape and array.dtype == array_dtype and array.flags.c_contiguous
            assert array.flags.writeable
        np.testing.assert_array_equal(gt_map, np.where(gt.max(-1) > 0, gt.astype(np.float64).argmax(-1), 0))
        np.testing.assert_array_equal(pred_map, reference_labels(pred))
        assert labels == visualizers.error_map_labels(names)
        np.testing.assert_array_equal(codes, reference_error_codes(gt, pred))
        np.testing.assert_allclose(loss[0], reference_loss(gt, pred), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(heatmaps, np.moveaxis(probabilities, -1, 0), atol=1e-6)
        np.testing.assert_array_equal(heatmaps[:, 0, 0], 0)


def test_a_samples_engine_calls_share_one_validation_argmax_and_softmax(monkeypatch):
    """The engine calls the metrics, the loss and each visualizer on its own copy of the sample: through the
    content-keyed memo the sample is validated, de-interleaved, argmaxed and exponentiated once for all of them."""
    from coco_seg import metrics

    counts = {}

    def counting(name):
        function = getattr(metrics, name)

        def counted(*args, **kwargs):
            counts[name] = counts.get(name, 0) + 1
            return function(*args, **kwargs)
        monkeypatch.setattr(metrics, name, counted)

    for name in ("_ground_truth_masks", "_score_planes", "_argmax_labels", "_mask_labels", "_exp"):
        counting(name)
    rng = np.random.default_rng(17)
    metrics._SAMPLE_MEMO.clear()
    metrics._PREDICTION_MEMO.clear()
    gt, pred = random_sample(rng, s=16, k=K, dtype=np.float16, kind="logits")

    def engine_calls():
        batch = [gt[None].copy(), pred[None].copy()]
        metrics.mean_iou(*batch), metrics.pixel_accuracy(gt[None].copy(), pred[None].copy())
        metrics.cross_entropy_loss(gt[None].copy(), pred[None].copy())
        return [visualizers.label_map(gt.copy()), visualizers.label_map(pred.copy()),
                visualizers.error_map(gt.copy(), pred.copy(), class_names=NAMES)[0],
                visualizers.loss_heatmap(gt.copy(), pred.copy()), visualizers.confidence_heatmaps(pred.copy())]

    first = engine_calls()
    once = {"_ground_truth_masks": 1, "_score_planes": 1, "_argmax_labels": 1, "_mask_labels": 1, "_exp": 1}
    assert counts == once
    second = engine_calls()  # the same sample again, in new objects: all from the memo
    assert counts == once
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b, strict=True)
    pred[1, 1] += np.float16(1)  # another prediction: computed again, the ground truth's labels too (a new pair)
    engine_calls()
    assert counts == {name: 2 for name in once}
