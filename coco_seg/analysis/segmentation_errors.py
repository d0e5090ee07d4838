# Over- and under-segmentation of semantic label maps, per class, from connected components.
#
# Algorithm, for each class c >= 1 of one (S, S) ground-truth / prediction pair:
#   1. GT blobs = connected components of (gt == c), predicted blobs = connected components of (pred == c),
#      both with cv2.connectedComponentsWithStats and 8-connectivity (diagonal neighbours join a blob).
#      Components with fewer than `min_pixels` pixels are dropped on both sides (they count as no blob and
#      overlap nothing), so speckle does not inflate the counts.
#   2. Overlap graph: a GT blob and a predicted blob are linked when they share at least one pixel. The links
#      are found without Python loops over pixels: on the pixels where gt == c and pred == c, the pair
#      (gt component label, predicted component label) is encoded as one integer and np.unique keeps the
#      distinct pairs; np.bincount over each side then gives every blob's degree in the graph.
#   3. under-segmentation = number of predicted blobs linked to >= 2 GT blobs (objects merged into one blob);
#      over-segmentation  = number of GT blobs linked to >= 2 predicted blobs (one object split into pieces).
# The definition is symmetric: swapping ground truth and prediction swaps "under" and "over".
# Classes are independent (a blob of class c only meets blobs of class c); background (index 0) is never
# scored and reads 0 in every output array.
"""Per-class over/under-segmentation counts of semantic label maps (connected components, 8-connectivity)."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

__all__ = ["segmentation_errors", "segmentation_error_columns"]

_KEYS = ("under", "over", "gt_blobs", "predicted_blobs")


def _check_label_map(array, name: str, num_classes: int) -> np.ndarray:
    labels = np.asarray(array)
    if labels.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (S, S) label map, got shape {labels.shape}")
    if labels.dtype == bool or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{name} must hold integer class labels, got dtype {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"{name} holds labels outside [0, {num_classes}): "
                         f"min {labels.min()}, max {labels.max()}")
    return labels


def _components(mask: np.ndarray, min_pixels: int) -> tuple[np.ndarray, np.ndarray]:
    """Component label image of a boolean mask, and a keep flag per component label (label 0 = outside)."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.view(np.uint8), connectivity=8,
                                                               ltype=cv2.CV_32S)
    keep = stats[:, cv2.CC_STAT_AREA] >= min_pixels
    keep[0] = False  # label 0 is the complement of the mask, not a blob
    return labels, keep


def _class_errors(gt_mask: np.ndarray, pred_mask: np.ndarray, min_pixels: int) -> tuple[int, int, int, int]:
    """(under, over, gt_blobs, predicted_blobs) for one class given its two boolean masks."""
    gt_labels, gt_keep = _components(gt_mask, min_pixels)
    pred_labels, pred_keep = _components(pred_mask, min_pixels)
    gt_blobs, predicted_blobs = int(gt_keep.sum()), int(pred_keep.sum())
    if gt_blobs == 0 or predicted_blobs == 0:
        return 0, 0, gt_blobs, predicted_blobs
    both = gt_mask & pred_mask
    g = gt_labels[both]
    p = pred_labels[both]
    kept = gt_keep[g] & pred_keep[p]
    g, p = g[kept].astype(np.int64), p[kept].astype(np.int64)
    if g.size == 0:
        return 0, 0, gt_blobs, predicted_blobs
    pairs = np.unique(g * len(pred_keep) + p)
    gt_degree = np.bincount(pairs // len(pred_keep), minlength=len(gt_keep))
    pred_degree = np.bincount(pairs % len(pred_keep), minlength=len(pred_keep))
    return int((pred_degree >= 2).sum()), int((gt_degree >= 2).sum()), gt_blobs, predicted_blobs


def segmentation_errors(ground_truth: np.ndarray, prediction: np.ndarray, *, num_classes: int,
                        min_pixels: int = 4) -> dict[str, np.ndarray]:
    """Per-class over/under-segmentation of one label map pair.

    Args:
        ground_truth: (S, S) integer label map, 0 = background, 1..K-1 classes.
        prediction: (S, S) integer label map of the same shape and labels.
        num_classes: K, including background; labels outside [0, K) raise ValueError.
        min_pixels: components with fewer pixels are ignored on both sides (>= 1).

    Returns:
        ``{"under", "over", "gt_blobs", "predicted_blobs"}``, each a (K,) int64 array with index 0
        (background) = 0. ``under[c]`` counts predicted blobs of class c overlapping >= 2 GT blobs of class c,
        ``over[c]`` counts GT blobs of class c overlapping >= 2 predicted blobs of class c.
    """
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if int(min_pixels) < 1:
        raise ValueError(f"min_pixels must be >= 1, got {min_pixels}")
    num_classes, min_pixels = int(num_classes), int(min_pixels)
    gt = _check_label_map(ground_truth, "ground_truth", num_classes)
    pred = _check_label_map(prediction, "prediction", num_classes)
    if gt.shape != pred.shape:
        raise ValueError(f"ground_truth {gt.shape} and prediction {pred.shape} shapes differ")

    result = {key: np.zeros(num_classes, dtype=np.int64) for key in _KEYS}
    # Only classes present in either map can have blobs: skip the rest without touching cv2.
    present = np.flatnonzero(np.bincount(gt.ravel(), minlength=num_classes)[:num_classes] >= min_pixels)
    present = np.union1d(present, np.flatnonzero(
        np.bincount(pred.ravel(), minlength=num_classes)[:num_classes] >= min_pixels))
    for c in present[present >= 1]:
        counts = _class_errors(gt == c, pred == c, min_pixels)
        for key, value in zip(_KEYS, counts):
            result[key][c] = value
    return result


def segmentation_error_columns(gt_labels: np.ndarray, pred_labels: np.ndarray, *, class_names: Sequence[str],
                               min_pixels: int = 4) -> dict[str, np.ndarray]:
    """Per-sample over/under-segmentation columns for a batch.

    Args:
        gt_labels: (N, S, S) integer ground-truth label maps.
        pred_labels: (N, S, S) integer predicted label maps.
        class_names: the K class names, background first (index 0); names are used verbatim.
        min_pixels: see :func:`segmentation_errors`.

    Returns:
        ``under_segmentation_<class>`` and ``over_segmentation_<class>`` for every non-background class,
        each an (N,) int64 array.
    """
    gt_all, pred_all = np.asarray(gt_labels), np.asarray(pred_labels)
    if gt_all.ndim != 3 or pred_all.shape != gt_all.shape:
        raise ValueError(f"gt_labels and pred_labels must both be (N, S, S) with the same shape, "
                         f"got {gt_all.shape} and {pred_all.shape}")
    names = list(class_names)
    num_classes = len(names)
    n = gt_all.shape[0]
    under = np.zeros((n, num_classes), dtype=np.int64)
    over = np.zeros((n, num_classes), dtype=np.int64)
    for i in range(n):
        errors = segmentation_errors(gt_all[i], pred_all[i], num_classes=num_classes, min_pixels=min_pixels)
        under[i], over[i] = errors["under"], errors["over"]
    columns: dict[str, np.ndarray] = {}
    for c, name in enumerate(names[1:], start=1):
        columns[f"under_segmentation_{name}"] = under[:, c].copy()
        columns[f"over_segmentation_{name}"] = over[:, c].copy()
    return columns
