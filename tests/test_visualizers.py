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
