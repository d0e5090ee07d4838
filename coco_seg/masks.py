"""COCO instance annotations → one semantic mask per image.

Algorithm: the polygons of each target class go to pycocotools in one call and come back as RLEs, crowd RLEs are
read as they are, and the RLEs of each class are merged into one union. Pixel counts per class come from RLE areas
(no decode); the mask is painted from each union decoded once, with numpy (:func:`decode_transposed`), and sampled
at the model size. Classes are painted from the last configured class to the first, so where instances of
different classes overlap **the class listed first in ``labels.classes`` wins** (with the defaults: person over
car — a rider stays a person). Background is 0, class k (config order) is k. Crowd regions are painted like
any other instance: they are pixels of that class.
"""

from collections.abc import Iterable, Mapping
from typing import Any, Optional

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from coco_seg.annotation_checks import polygon_fault


class AnnotationError(ValueError):
    """An annotation's segmentation cannot be turned into a mask."""


def _rle_of(segmentation: Any, *, height: int, width: int) -> dict:
    """One compressed RLE for a COCO RLE ``segmentation`` (uncompressed counts list or compressed string)."""
    if isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        if list(segmentation["size"]) != [height, width]:
            raise AnnotationError(f"RLE size {list(segmentation['size'])} differs from the image size "
                                  f"[{height}, {width}] (height, width)")
        if isinstance(segmentation["counts"], list):
            return mask_utils.frPyObjects(segmentation, height, width)
        counts = segmentation["counts"]
        return {"size": [height, width], "counts": counts.encode() if isinstance(counts, str) else counts}
    raise AnnotationError("segmentation is neither a polygon list nor an RLE")


def class_unions(annotations: Iterable[Mapping[str, Any]], *, height: int, width: int,
                 class_of_category: Mapping[int, int]) -> dict[int, dict]:
    """One RLE per target class: the union of its instances (crowd regions included)."""
    rles_by_class: dict[int, list[dict]] = {}
    polygons_by_class: dict[int, list[list[float]]] = {}
    for annotation in annotations:
        target = class_of_category.get(annotation["category_id"])
        if target is None:
            continue
        segmentation = annotation["segmentation"]
        if isinstance(segmentation, list):
            # Checked again right before pycocotools: its rasteriser allocates in proportion to the outline's
            # length, so a NaN, Infinity or 1e8 coordinate must never reach it, whatever preprocess saw.
            for polygon in segmentation:
                fault, _, _ = polygon_fault(polygon, width=width, height=height)
                if fault is not None:
                    raise AnnotationError(f"annotation {annotation.get('id')!r}: {fault}")
            polygons = segmentation
            if not polygons:
                raise AnnotationError("polygon segmentation has no polygon with 3 or more points")
            # every polygon of the class goes to pycocotools in one call: a union does not need them by instance
            polygons_by_class.setdefault(target, []).extend(polygons)
        else:
            rles_by_class.setdefault(target, []).append(_rle_of(segmentation, height=height, width=width))
    for target, polygons in polygons_by_class.items():
        rles_by_class.setdefault(target, []).extend(mask_utils.frPyObjects(polygons, height, width))
    return {target: mask_utils.merge(rles) if len(rles) > 1 else rles[0] for target, rles in rles_by_class.items()}


def class_pixel_counts(unions: Mapping[int, dict], *, height: int, width: int, num_target_classes: int) -> np.ndarray:
    """Pixels of each mask value 0..K under the overlap rule, from RLE areas alone (no mask is decoded).

    Class k keeps what it covers outside the classes listed before it: area(U_1 ∪ … ∪ U_k) − area(U_1 ∪ … ∪ U_k-1).
    """
    counts = np.zeros(num_target_classes + 1, dtype=np.int64)
    covered, covered_area = None, 0
    for target in range(1, num_target_classes + 1):
        union = unions.get(target)
        if union is None:
            continue
        covered = union if covered is None else mask_utils.merge([covered, union])
        area = int(mask_utils.area(covered))
        counts[target], covered_area = area - covered_area, area
    counts[0] = height * width - covered_area
    return counts


def rle_run_lengths(rle: Mapping[str, Any]) -> np.ndarray:
    """The run lengths of a compressed COCO RLE, decoded from pycocotools' string format with numpy.

    Format (pycocotools ``rleFrString``): each count is a little-endian sequence of 5-bit groups written as
    ``chr(48 + group)``, bit 0x20 set on all but the last character of a count, bit 0x10 of the last one the sign;
    every count after the third is stored as its difference to the count two places before. Runs alternate 0, 1, 0,
    ... over the pixels in column-major order. Raises AnnotationError when the string is cut short, a run is
    negative or the runs do not cover height x width pixels.
    """
    height, width = rle["size"]
    data = rle["counts"]
    chars = np.frombuffer(data.encode() if isinstance(data, str) else bytes(data), np.uint8).astype(np.int64) - 48
    if chars.size == 0 or chars[-1] & 0x20 or chars.min() < 0:
        raise AnnotationError("compressed RLE counts are empty, cut short or hold characters below '0'")
    ends = np.flatnonzero((chars & 0x20) == 0)  # the last character of every count
    starts = np.concatenate([[0], ends[:-1] + 1])
    lengths = ends - starts + 1
    shifts = 5 * (np.arange(chars.size) - np.repeat(starts, lengths))  # 5 x the group's place within its count
    counts = np.add.reduceat((chars & 0x1F) << shifts, starts)
    negative = (chars[ends] & 0x10) != 0
    counts[negative] -= np.left_shift(1, 5 * lengths[negative])  # sign extension
    for parity in (3, 4):  # counts[m] += counts[m - 2] for m > 2: a running sum along each parity from there
        if counts.size > parity:
            counts[parity - 2::2] = np.cumsum(counts[parity - 2::2])  # counts[1] / counts[2] start the sums
    if counts.min() < 0 or counts.sum() != height * width:
        raise AnnotationError(f"compressed RLE runs cover {int(counts.sum())} pixels (or one is negative); the "
                              f"image has {height}x{width}")
    return counts


def decode_transposed(rle: Mapping[str, Any]) -> np.ndarray:
    """(W, H) uint8 0/1 mask of a compressed RLE: pycocotools' ``decode`` transposed (row-major here), at ~40 %
    of its cost (its C loop writes one pixel at a time; numpy repeats each run at once)."""
    height, width = rle["size"]
    counts = rle_run_lengths(rle)
    return np.repeat((np.arange(counts.size) & 1).astype(np.uint8), counts).reshape(width, height)


def paint(unions: Mapping[int, dict], *, height: int, width: int, num_target_classes: int,
          out_size: Optional[int] = None) -> np.ndarray:
    """The uint8 label mask, at the original size or nearest-resampled to ``out_size`` × ``out_size``.

    Each class union is resampled before painting: nearest-neighbour resampling picks source pixels, so painting
    the resampled unions equals resampling the painted full-size mask — at a fraction of the cost.
    """
    shape = (height, width) if out_size is None else (out_size, out_size)
    mask = np.zeros(shape, dtype=np.uint8)
    for target in range(num_target_classes, 0, -1):  # last class first: earlier classes paint over later ones
        union = unions.get(target)
        if union is None:
            continue
        pixels = decode_transposed(union)  # (W, H): COCO's column-major pixel order, row-major in memory
        if out_size is not None:
            # Resampled as the transpose: nearest picks rows and columns independently, so this is the same.
            pixels = cv2.resize(pixels, (out_size, out_size), interpolation=cv2.INTER_NEAREST)
        np.putmask(mask, pixels.T, np.uint8(target))
    return mask


def semantic_mask(annotations: Iterable[Mapping[str, Any]], *, height: int, width: int,
                  class_of_category: Mapping[int, int], num_target_classes: int,
                  out_size: Optional[int] = None) -> np.ndarray:
    """Paint the uint8 mask: 0 background, k for target class k (1-based, config order); full size, or
    nearest-resampled to ``out_size`` × ``out_size``.

    ``class_of_category`` maps COCO category id → target class index (1..K); other categories stay background.
    """
    unions = class_unions(annotations, height=height, width=width, class_of_category=class_of_category)
    return paint(unions, height=height, width=width, num_target_classes=num_target_classes, out_size=out_size)


def one_hot(mask: np.ndarray, *, num_classes: int) -> np.ndarray:
    """(H, W) label mask → (H, W, num_classes) float32 one-hot, background first."""
    # One contiguous plane per class interleaved by OpenCV: ~10x faster than gathering rows of an identity matrix.
    return cv2.merge([(mask == value).astype(np.float32) for value in range(num_classes)])

