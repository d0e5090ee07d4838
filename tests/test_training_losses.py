"""The training loss's boundary weighting: the boundary map on hand-made masks and its effect on the loss."""

import numpy as np
import pytest


def one_hot(labels: np.ndarray, k: int = 3) -> np.ndarray:
    return (labels[..., None] == np.arange(k)).astype(np.float32)


def test_class_boundaries_on_a_hand_made_mask():
    from coco_seg.training import class_boundaries

    labels = np.zeros((6, 6), int)
    labels[:, 3:] = 1  # a vertical edge between columns 2 and 3
    gt = one_hot(labels)
    gt[0, 0] = 0  # an ignored pixel: no class, never a boundary, and not a neighbour's "other class"
    boundary = np.asarray(class_boundaries(gt[None]))[0]
    expected = np.zeros((6, 6), np.float32)
    expected[:, 2:4] = 1  # both sides of the edge; the image border (replicated) is no boundary
    np.testing.assert_array_equal(boundary, expected)


def test_boundary_weight_scales_the_cross_entropy_of_boundary_pixels_only():
    from coco_seg.training import SegmentationLoss, class_boundaries

    labels = np.zeros((8, 8), int)
    labels[2:6, 2:6] = 2
    gt = one_hot(labels)[None]
    logits = np.zeros_like(gt)  # uniform prediction: every pixel costs log(3)
    plain = float(SegmentationLoss()(gt, logits))
    weighted = float(SegmentationLoss(boundary_weight=4.0)(gt, logits))
    boundary_pixels = float(np.asarray(class_boundaries(gt)).sum())
    assert plain == pytest.approx(np.log(3), rel=1e-5)
    assert weighted == pytest.approx(np.log(3) * (64 + 4.0 * boundary_pixels) / 64, rel=1e-5)
    assert boundary_pixels == 12 + 20  # the 4x4 square's own outer ring, and the ring of 8-neighbours around it


def test_a_negative_boundary_weight_is_refused(tmp_path, generated_root):
    from _support import data_tree, write_config
    from coco_seg.config import load_config
    from coco_seg.training import TrainOptions, train

    config = load_config(write_config(tmp_path, data_tree(generated_root) | {"image_size": 64}))
    with pytest.raises(ValueError, match="boundary_weight must be a finite number >= 0, got -1.0"):
        train(config, tmp_path / "run", TrainOptions(epochs=1, boundary_weight=-1.0, encoder_weights="none"))
