"""COCO instance annotations → one semantic mask per image.

Algorithm: every annotation whose category belongs to a target class is turned into an RLE with pycocotools
(polygons, uncompressed crowd RLE and compressed RLE alike), the RLEs of each class are merged into one union, and
each union is decoded once. Classes are painted from the last configured class to the first, so where instances
of different classes overlap **the class listed first in ``labels.classes`` wins** (with the defaults: person over
car — a rider stays a person). Background is 0, class k (config order) is k. Crowd regions are painted like
any other instance: they are pixels of that class.
"""

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils


class AnnotationError(ValueError):
    """An annotation's segmentation cannot be turned into a mask."""


def segmentation_to_rle(segmentation: Any, *, height: int, width: int) -> dict:
    """One (compressed) RLE for a COCO ``segmentation`` field: polygon list, uncompressed or compressed RLE."""
    if isinstance(segmentation, list):
        polygons = [p for p in segmentation if len(p) >= 6]
        if not polygons:
            raise AnnotationError("polygon segmentation has no polygon with 3 or more points")
        return mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    if isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        if list(segmentation["size"]) != [height, width]:
            raise AnnotationError(f"RLE size {list(segmentation['size'])} differs from the image size "
                                  f"[{height}, {width}] (height, width)")
        if isinstance(segmentation["counts"], list):
            return mask_utils.frPyObjects(segmentation, height, width)
        counts = segmentation["counts"]
        return {"size": [height, width], "counts": counts.encode() if isinstance(counts, str) else counts}
    raise AnnotationError("segmentation is neither a polygon list nor an RLE")


def semantic_mask(annotations: Iterable[Mapping[str, Any]], *, height: int, width: int,
                  class_of_category: Mapping[int, int], num_target_classes: int) -> np.ndarray:
    """Paint the (height, width) uint8 mask: 0 background, k for target class k (1-based, config order).

    ``class_of_category`` maps COCO category id → target class index (1..K); other categories stay background.
    """
    rles_by_class: dict[int, list[dict]] = {}
    for annotation in annotations:
        target = class_of_category.get(annotation["category_id"])
        if target is not None:
            rles_by_class.setdefault(target, []).append(
                segmentation_to_rle(annotation["segmentation"], height=height, width=width))
    mask = np.zeros((height, width), dtype=np.uint8)
    for target in range(num_target_classes, 0, -1):  # last class first: earlier classes paint over later ones
        rles = rles_by_class.get(target)
        if rles:
            union = mask_utils.decode(mask_utils.merge(rles) if len(rles) > 1 else rles[0])
            mask[union.astype(bool)] = target
    return mask


def class_percentages(mask: np.ndarray, *, num_classes: int) -> np.ndarray:
    """Share of pixels of each mask value 0..num_classes-1, in percent (sums to 100)."""
    counts = np.bincount(mask.ravel(), minlength=num_classes)[:num_classes]
    return counts.astype(np.float64) * (100.0 / mask.size)


def one_hot(mask: np.ndarray, *, num_classes: int) -> np.ndarray:
    """(H, W) label mask → (H, W, num_classes) float32 one-hot, background first."""
    return np.eye(num_classes, dtype=np.float32)[mask]

