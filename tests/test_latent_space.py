"""coco_seg.latent_space: per-class masked means of the decoder features, checked against hand-computed values."""

import numpy as np
import pytest

from coco_seg import latent_space
from coco_seg.latent_space import class_pooled, pool_by_ground_truth, pool_by_prediction


def one_hot(labels: np.ndarray, k: int) -> np.ndarray:
    return (labels[..., None] == np.arange(k)).astype(np.float32)


def test_means_on_a_hand_made_sample():
    # 4x4 input, 2x2 feature grid: each feature cell covers a 2x2 block of pixels.
    labels = np.array([[0, 0, 1, 1],
                       [0, 0, 1, 1],
                       [0, 0, 0, 2],
                       [0, 0, 2, 2]])
    features = np.array([[[1.0, 10.0], [2.0, 20.0]],
                         [[3.0, 30.0], [4.0, 40.0]]], np.float32)[None]
    vector = pool_by_ground_truth(features, one_hot(labels, 3)[None])
    assert vector.shape == (1, 6) and vector.dtype == np.float32
    # background: cells (0,0) 4/4, (1,0) 4/4, (1,1) 1/4 → (1*1 + 3*1 + 4*0.25) / 2.25
    background = (np.array([1, 10]) + np.array([3, 30]) + 0.25 * np.array([4, 40])) / 2.25
    person = np.array([2.0, 20.0])  # all of cell (0,1)
    car = np.array([4.0, 40.0])  # 3/4 of cell (1,1) only
    np.testing.assert_allclose(vector[0], np.concatenate([background, person, car]), rtol=1e-6)


def test_an_absent_class_gives_zeros_and_a_trace_counts_as_absent():
    labels = np.zeros((8, 8), int)
    labels[0, 0] = 1  # one pixel: 1/16 of a feature cell (each covers 4x4 pixels), below MIN_CLASS_CELLS
    features = np.random.default_rng(0).uniform(0.5, 1.0, (1, 2, 2, 3)).astype(np.float32)
    vector = pool_by_ground_truth(features, one_hot(labels, 3)[None]).reshape(3, 3)
    assert (vector[0] > 0).all()
    np.testing.assert_array_equal(vector[1], 0.0)  # a trace, not a description of the class
    np.testing.assert_array_equal(vector[2], 0.0)  # absent


def test_ignored_pixels_weigh_nothing():
    labels = np.ones((4, 4), int)
    gt = one_hot(labels, 2)
    gt[:2, :2] = 0  # an ignored block (all-zero one-hot) over feature cell (0,0)
    features = np.array([[[100.0], [1.0]], [[1.0], [1.0]]], np.float32)[None]
    vector = pool_by_ground_truth(features, gt[None])
    np.testing.assert_allclose(vector[0], [0.0, 1.0])  # the 100 under the ignored pixels is not averaged in


def test_float16_ground_truth_and_features_as_the_engine_sends_them():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, (2, 16, 16))
    features = rng.uniform(0, 6, (2, 8, 8, 5)).astype(np.float32)
    exact = pool_by_ground_truth(features, one_hot(labels, 3))
    cast = pool_by_ground_truth(features.astype(np.float16), one_hot(labels, 3).astype(np.float16))
    np.testing.assert_allclose(cast, exact, rtol=2e-3, atol=2e-3)


def test_batch_rows_are_independent():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 3, (3, 8, 8))
    features = rng.uniform(0, 1, (3, 4, 4, 4)).astype(np.float32)
    batch = pool_by_ground_truth(features, one_hot(labels, 3))
    for i in range(3):
        np.testing.assert_allclose(batch[i], pool_by_ground_truth(features[i:i + 1], one_hot(labels[i:i + 1], 3))[0],
                                   rtol=1e-6)


def test_prediction_pooling_uses_the_argmax_and_skips_non_finite_pixels():
    logits = np.zeros((1, 4, 4, 2), np.float32)
    logits[..., 1] = 1.0  # class 1 everywhere...
    logits[0, :2, :2] = [5.0, 0.0]  # ...except the top-left block, class 0
    logits[0, 3, 3, 0] = np.nan  # one pixel with no prediction
    features = np.array([[[2.0], [4.0]], [[6.0], [8.0]]], np.float32)[None]
    vector = pool_by_prediction(features, logits)
    # class 0: cell (0,0) fully; class 1: cells (0,1), (1,0) fully, (1,1) 3/4 → (4 + 6 + 0.75*8) / 2.75
    np.testing.assert_allclose(vector[0], [2.0, (4 + 6 + 0.75 * 8) / 2.75], rtol=1e-6)


def test_non_finite_features_of_a_degenerate_model_give_a_finite_vector():
    features = np.ones((1, 2, 2, 2), np.float32)
    features[0, 0, 0] = np.nan
    features[0, 1, 1, 1] = np.inf
    vector = pool_by_ground_truth(features, one_hot(np.zeros((4, 4), int), 2)[None])
    assert np.isfinite(vector).all()
    np.testing.assert_allclose(vector[0], [1.0, 1.0, 0.0, 0.0])  # the two bad cells are left out


@pytest.mark.parametrize("features, maps, message", [
    (np.ones((2, 2, 2)), np.ones((1, 4, 4, 2)), "features must be a non-empty"),
    (np.ones((1, 2, 2, 2), int), np.ones((1, 4, 4, 2)), "floating point"),
    (np.ones((1, 2, 2, 2)), np.ones((2, 4, 4, 2)), "N = 1"),
    (np.ones((1, 3, 3, 2)), np.ones((1, 4, 4, 2)), "whole multiple"),
])
def test_bad_arguments_are_refused(features, maps, message):
    with pytest.raises(ValueError, match=message):
        class_pooled(features, maps)


def test_width_of_the_default_model_fits_tensorleaps_comfortable_size():
    # alpha 1.0: 64 channels from the last up-block + 96 from block_1_expand_relu; 3 classes.
    assert latent_space.width(num_classes=3, channels=160) == 480 <= latent_space.MAX_WIDTH
