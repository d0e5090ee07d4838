"""Over/under-segmentation counts from connected components (coco_seg.analysis.segmentation_errors)."""


import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays

from coco_seg.analysis.segmentation_errors import segmentation_error_columns, segmentation_errors

K = 4  # background + 3 classes


def blank(size: int = 32) -> np.ndarray:
    return np.zeros((size, size), dtype=np.int64)


def errors(gt, pred, **kwargs):
    return segmentation_errors(gt, pred, num_classes=K, **kwargs)


def test_two_gt_squares_merged_into_one_predicted_rectangle_is_under_segmentation():
    gt, pred = blank(), blank()
    gt[4:10, 4:10] = 1
    gt[4:10, 14:20] = 1
    pred[3:11, 3:21] = 1
    result = errors(gt, pred)
    assert result["under"].tolist() == [0, 1, 0, 0]
    assert result["over"].tolist() == [0, 0, 0, 0]
    assert result["gt_blobs"].tolist() == [0, 2, 0, 0]
    assert result["predicted_blobs"].tolist() == [0, 1, 0, 0]


def test_one_gt_rectangle_split_into_two_predicted_squares_is_over_segmentation():
    gt, pred = blank(), blank()
    gt[4:10, 4:20] = 2
    pred[4:10, 4:10] = 2
    pred[4:10, 14:20] = 2
    result = errors(gt, pred)
    assert result["over"].tolist() == [0, 0, 1, 0]
    assert result["under"].tolist() == [0, 0, 0, 0]
    assert result["gt_blobs"][2] == 1 and result["predicted_blobs"][2] == 2


def test_perfect_prediction_has_no_errors():
    gt = blank()
    gt[2:8, 2:8] = 1
    gt[20:30, 5:9] = 2
    gt[12:16, 20:31] = 3
    gt[25:30, 20:25] = 1
    result = errors(gt, gt.copy())
    assert result["under"].tolist() == [0, 0, 0, 0]
    assert result["over"].tolist() == [0, 0, 0, 0]
    assert result["gt_blobs"].tolist() == result["predicted_blobs"].tolist() == [0, 2, 1, 1]


def test_blobs_smaller_than_min_pixels_are_ignored():
    gt, pred = blank(), blank()
    gt[4:10, 4:20] = 1
    pred[4:10, 4:10] = 1
    pred[4, 15] = 1  # a 1-pixel speckle inside the GT object: not a blob
    pred[7:9, 16] = 1  # 2 pixels: not a blob either with min_pixels=4
    result = errors(gt, pred, min_pixels=4)
    assert result["over"][1] == 0
    assert result["predicted_blobs"][1] == 1
    # with min_pixels=1 the speckles count: one GT object overlapped by three predicted blobs
    result = errors(gt, pred, min_pixels=1)
    assert result["over"][1] == 1
    assert result["predicted_blobs"][1] == 3


def test_small_gt_blob_does_not_cause_under_segmentation():
    gt, pred = blank(), blank()
    gt[4:10, 4:10] = 1
    gt[4:5, 12:13] = 1  # 1 pixel GT blob under the predicted rectangle
    pred[3:11, 3:15] = 1
    assert errors(gt, pred)["under"][1] == 0
    assert errors(gt, pred, min_pixels=1)["under"][1] == 1


def test_eight_connectivity_joins_diagonal_neighbours():
    gt, pred = blank(), blank()
    gt[2:6, 2:6] = 1
    gt[6:10, 6:10] = 1  # touches the first square only at a corner: one 8-connected blob
    pred[2:6, 2:6] = 1
    pred[6:10, 6:10] = 1
    result = errors(gt, pred)
    assert result["gt_blobs"][1] == 1 and result["predicted_blobs"][1] == 1
    assert result["over"][1] == 0 and result["under"][1] == 0


def test_classes_do_not_interact():
    gt, pred = blank(), blank()
    # class 1: two GT squares merged by one predicted rectangle (under=1)
    gt[2:8, 2:8] = 1
    gt[2:8, 12:18] = 1
    pred[2:8, 2:18] = 1
    # class 2 sits between the class-1 squares in the GT, predicted as class 1 there: no class-2 blob overlap
    gt[2:8, 9:11] = 2
    # class 3: one GT rectangle split into two predicted squares (over=1), adjacent to class 1 pixels
    gt[20:26, 2:18] = 3
    pred[20:26, 2:8] = 3
    pred[20:26, 12:18] = 3
    pred[20:26, 8:12] = 1  # the gap is predicted class 1: must not join class-3 blobs nor touch class-1 counts
    result = errors(gt, pred)
    assert result["under"].tolist() == [0, 1, 0, 0]
    assert result["over"].tolist() == [0, 0, 0, 1]
    assert result["gt_blobs"].tolist() == [0, 2, 1, 1]
    assert result["predicted_blobs"].tolist() == [0, 2, 0, 2]


def test_background_index_is_always_zero():
    gt, pred = blank(), blank()
    pred[:, 16] = 1  # splits the GT background into two: background is never scored
    gt[5:9, 5:9] = 2
    result = errors(gt, pred)
    for key in ("under", "over", "gt_blobs", "predicted_blobs"):
        assert result[key][0] == 0
        assert result[key].dtype.kind == "i" and result[key].shape == (K,)


def test_invalid_inputs_raise():
    gt = blank()
    with pytest.raises(ValueError):
        errors(gt, blank(16))
    with pytest.raises(ValueError):
        errors(gt.astype(float), gt)
    bad = gt.copy()
    bad[0, 0] = K
    with pytest.raises(ValueError):
        errors(bad, gt)
    with pytest.raises(ValueError):
        errors(gt[None], gt[None])


def test_batch_columns():
    names = ["background", "person", "traffic light", "car"]
    gt = np.zeros((3, 32, 32), dtype=np.uint8)
    pred = np.zeros_like(gt)
    gt[0, 4:10, 4:10] = 1
    gt[0, 4:10, 14:20] = 1
    pred[0, 3:11, 3:21] = 1  # sample 0: person under-segmented
    gt[1, 4:10, 4:20] = 2
    pred[1, 4:10, 4:10] = 2
    pred[1, 4:10, 14:20] = 2  # sample 1: traffic light over-segmented
    gt[2, 5:15, 5:15] = 3
    pred[2] = gt[2]  # sample 2: perfect
    columns = segmentation_error_columns(gt, pred, class_names=names)
    assert set(columns) == {f"{kind}_segmentation_{name}" for kind in ("under", "over") for name in names[1:]}
    assert columns["under_segmentation_person"].tolist() == [1, 0, 0]
    assert columns["over_segmentation_traffic light"].tolist() == [0, 1, 0]
    assert all(columns[f"{kind}_segmentation_car"].tolist() == [0, 0, 0] for kind in ("under", "over"))
    assert all(c.shape == (3,) and c.dtype.kind == "i" for c in columns.values())


label_maps = st.integers(4, 16).flatmap(
    lambda size: st.tuples(arrays(np.int64, (size, size), elements=st.integers(0, K - 1)),
                           arrays(np.int64, (size, size), elements=st.integers(0, K - 1))))


@settings(max_examples=150, deadline=None)
@given(maps=label_maps, min_pixels=st.integers(1, 5))
def test_property_bounds_and_symmetry(maps, min_pixels):
    gt, pred = maps
    forward = errors(gt, pred, min_pixels=min_pixels)
    backward = errors(pred, gt, min_pixels=min_pixels)
    assert np.all(forward["under"] >= 0) and np.all(forward["over"] >= 0)
    assert np.all(forward["under"] <= forward["predicted_blobs"])
    assert np.all(forward["over"] <= forward["gt_blobs"])
    assert np.array_equal(forward["under"], backward["over"])
    assert np.array_equal(forward["over"], backward["under"])
    assert np.array_equal(forward["gt_blobs"], backward["predicted_blobs"])
    # a blob can only be split / merge others when the other side has >= 2 blobs
    assert np.all((forward["under"] == 0) | (forward["gt_blobs"] >= 2))
    assert np.all((forward["over"] == 0) | (forward["predicted_blobs"] >= 2))
    for key in forward:
        assert forward[key][0] == 0


@settings(max_examples=50, deadline=None)
@given(gt=arrays(np.int64, (10, 10), elements=st.integers(0, K - 1)))
def test_property_perfect_prediction_is_error_free(gt):
    result = errors(gt, gt.copy(), min_pixels=1)
    assert not result["under"].any() and not result["over"].any()
    assert np.array_equal(result["gt_blobs"], result["predicted_blobs"])
