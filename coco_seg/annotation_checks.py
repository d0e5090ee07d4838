"""What a COCO annotation means, checked: field types, ids, polygon geometry, RLE consistency.

Pure functions over one parsed entry at a time (no file I/O), used by preprocess for every annotation of a candidate
image (coco_seg.annotations) and again, for polygons, right before rasterisation (coco_seg.masks), so that no
annotation can make a per-sample call allocate in proportion to its coordinate values.

Rules (each broken rule is one fault naming the annotation id and the field):

* ``id``, ``image_id``, ``category_id``: integers (not booleans, not strings); ``category_id`` one of the file's
  categories; ``iscrowd`` 0 or 1 (a boolean is accepted), absent = 0.
* ``segmentation``: a non-empty list of polygons, or an RLE (``{"size": [h, w], "counts": ...}`` with the image's
  size; uncompressed counts non-negative integers covering h × w pixels).
* A polygon: a flat list of numbers (not booleans, not nested lists), an even count of at least 6 (3 points), at
  most ``MAX_POLYGON_COORDINATES``, every value finite and within one image width / height beyond the border
  (further out is an exporter error, and pycocotools' rasteriser allocates in proportion to the outline's length).
  It may cross the border: its area is that of the part inside the image (Sutherland–Hodgman clipping). A polygon
  wholly outside the image, or with no area inside it (collinear points), is a fault; so is an annotation whose
  every coordinate lies within [0, 1] on an image larger than 2 × 2 pixels (coordinates normalised to 0–1 rather
  than pixels).
* The instance's area is computed from its geometry (polygons: shoelace formula on the clipped polygons, which is
  what COCO's ``area`` holds for polygons inside the image; RLE: its pixel count) and stored under ``AREA_KEY``;
  the file's ``area`` is never read (it is optional in many exporters, and sometimes wrong).
"""

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from operator import mul
from typing import Any, Optional

import numpy as np

AREA_KEY = "coco_seg_area"  # the geometric area preprocess computes, added to each kept annotation
MAX_POLYGON_COORDINATES = 20_000  # 10,000 points; COCO's largest polygons have a few hundred
MAX_FAULTS_PER_SAMPLE = 3  # quoted in a sample's reason; the count of the rest follows
_NUMBER = (int, float)
_NUMBER_TYPES = frozenset(_NUMBER)


def is_int(value: Any) -> bool:
    return type(value) is int  # bool is an int subclass, and a COCO id is never a boolean


def _is_number(value: Any) -> bool:
    return type(value) in _NUMBER


def _clip(points: list[tuple[float, float]], width: float, height: float) -> list[tuple[float, float]]:
    """Sutherland–Hodgman: the polygon clipped to the image rectangle [0, width] × [0, height]."""
    for inside, cut in (
            (lambda p: p[0] >= 0, lambda p, q: (0.0, p[1] + (q[1] - p[1]) * (0 - p[0]) / (q[0] - p[0]))),
            (lambda p: p[0] <= width, lambda p, q: (width, p[1] + (q[1] - p[1]) * (width - p[0]) / (q[0] - p[0]))),
            (lambda p: p[1] >= 0, lambda p, q: (p[0] + (q[0] - p[0]) * (0 - p[1]) / (q[1] - p[1]), 0.0)),
            (lambda p: p[1] <= height, lambda p, q: (p[0] + (q[0] - p[0]) * (height - p[1]) / (q[1] - p[1]),
                                                     height))):
        clipped = []
        for index, current in enumerate(points):
            previous = points[index - 1]
            if inside(current):
                if not inside(previous):
                    clipped.append(cut(previous, current))
                clipped.append(current)
            elif inside(previous):
                clipped.append(cut(previous, current))
        points = clipped
        if not points:
            break
    return points


def _shoelace(xs: Sequence[float], ys: Sequence[float]) -> float:
    # sum(x_i y_i+1) - sum(y_i x_i+1), each as one C-level pass (this runs for every polygon of a COCO file)
    return abs(math.fsum(map(mul, xs, ys[1:] + ys[:1])) - math.fsum(map(mul, ys, xs[1:] + xs[:1]))) / 2


def polygon_fault(polygon: Any, *, width: int, height: int) -> tuple[Optional[str], float, float]:
    """(fault, area inside the image, largest coordinate) of one COCO polygon; the fault is None when it is usable.

    Every step is one C-level pass over the coordinates (types, sum, min/max, products): at COCO scale this runs
    for 600k+ polygons in preprocess."""
    if type(polygon) is not list:
        return f"a polygon must be a list of numbers, got {type(polygon).__name__}", 0.0, 0.0
    count = len(polygon)
    if count > MAX_POLYGON_COORDINATES:
        return f"a polygon has {count} coordinates (at most {MAX_POLYGON_COORDINATES} are accepted)", 0.0, 0.0
    if not set(map(type, polygon)) <= _NUMBER_TYPES:  # bool, str, None and nested lists are all refused here
        bad = next(v for v in polygon if type(v) not in _NUMBER)
        what = "a nested list" if isinstance(bad, list) else f"{type(bad).__name__} {str(bad)[:20]!r}"
        return f"a polygon holds {what}; it must be a flat list of numbers x1, y1, x2, y2, ...", 0.0, 0.0
    if count % 2:
        return f"a polygon has an odd number of coordinates ({count}): the last point has no y", 0.0, 0.0
    if count < 6:
        return f"a polygon has {count // 2} point(s); at least 3 are needed", 0.0, 0.0
    if not math.isfinite(sum(polygon)) and not all(map(math.isfinite, polygon)):  # NaN/Inf propagate through sum
        return "a polygon holds NaN or Infinity", 0.0, 0.0
    xs, ys = polygon[0::2], polygon[1::2]
    low_x, high_x, low_y, high_y = min(xs), max(xs), min(ys), max(ys)
    if not (-width <= low_x and high_x <= 2 * width and -height <= low_y and high_y <= 2 * height):
        return (f"a polygon reaches ({low_x:.6g}..{high_x:.6g}, {low_y:.6g}..{high_y:.6g}), more than one image "
                f"size beyond the {width}x{height} image"), 0.0, 0.0
    if high_x <= 0 or low_x >= width or high_y <= 0 or low_y >= height:
        return f"a polygon lies wholly outside the {width}x{height} image", 0.0, 0.0
    if low_x < 0 or high_x > width or low_y < 0 or high_y > height:  # crosses the border: the part inside counts
        points = _clip(list(zip(xs, ys)), float(width), float(height))
        xs, ys = [p[0] for p in points], [p[1] for p in points]
    area = _shoelace(xs, ys) if len(xs) >= 3 else 0.0
    if not area > 0:
        return "a polygon has no area inside the image (its points are collinear or coincide)", 0.0, 0.0
    return None, area, max(high_x, high_y) if min(low_x, low_y) >= 0 else math.inf


PolygonCheck = tuple[Optional[str], float, float]  # (fault, area inside the image, largest coordinate)


@dataclass(frozen=True)
class PolygonChecks:
    """:func:`polygon_fault` of many polygons: the faults of the bad ones by index, every area and largest
    coordinate (0 for a bad one)."""

    faults: dict[int, str]
    areas: np.ndarray  # (P,) float64
    peaks: np.ndarray  # (P,) float64

    def __getitem__(self, index: int) -> PolygonCheck:
        return self.faults.get(index), float(self.areas[index]), float(self.peaks[index])


def polygon_checks(polygons: Sequence[Any], widths: Sequence[int], heights: Sequence[int]) -> PolygonChecks:
    """``polygon_fault`` of many polygons at once (polygon i on an image of ``widths[i]`` × ``heights[i]``).

    The common case — flat lists of an even count of at least 6 finite numbers, inside the image, with some area —
    is decided with numpy over all polygons together (one conversion, then per-polygon reductions); every other
    polygon takes :func:`polygon_fault`, so the outcome is exactly that of calling it one polygon at a time."""
    count = len(polygons)
    areas, peaks = np.zeros(count), np.zeros(count)
    lengths = np.fromiter(map(len, polygons), np.int64, count) if all(type(p) is list for p in polygons) else None
    if lengths is None:  # something that is not a list: the slow path sorts it out
        lengths = np.array([len(p) if type(p) is list else -1 for p in polygons], np.int64)
    candidate = (lengths >= 6) & (lengths <= MAX_POLYGON_COORDINATES) & (lengths % 2 == 0)
    fast = np.flatnonzero(candidate)
    chosen = [polygons[i] for i in fast.tolist()] if len(fast) < count else list(polygons)
    if chosen and not set(map(type, chain.from_iterable(chosen))) <= _NUMBER_TYPES:  # bool, str, None, lists
        kept = np.array([set(map(type, polygon)) <= _NUMBER_TYPES for polygon in chosen], bool)
        fast = fast[kept]
        chosen = [polygon for polygon, keep in zip(chosen, kept.tolist()) if keep]
    usable = np.zeros(count, bool)
    if chosen:
        points = np.fromiter(chain.from_iterable(chosen), np.float64, int(lengths[fast].sum())).reshape(-1, 2)
        counts = lengths[fast] // 2
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        following = np.arange(1, len(points) + 1)
        following[starts + counts - 1] = starts  # each polygon's last point closes on its first
        x, y = points[:, 0], points[:, 1]
        with np.errstate(invalid="ignore", over="ignore"):
            area = np.abs(np.add.reduceat(x * y[following] - x[following] * y, starts)) / 2
            width = np.asarray(widths, np.float64)[fast]
            height = np.asarray(heights, np.float64)[fast]
            high_x, high_y = np.maximum.reduceat(x, starts), np.maximum.reduceat(y, starts)
            inside = ((np.minimum.reduceat(x, starts) >= 0) & (high_x <= width)
                      & (np.minimum.reduceat(y, starts) >= 0) & (high_y <= height))
            ok = inside & (area > 0) & np.isfinite(area)  # NaN fails every comparison, so it is not inside
        usable[fast[ok]] = True
        areas[fast[ok]] = area[ok]
        peaks[fast[ok]] = np.maximum(high_x, high_y)[ok]
    faults = {}
    for index in np.flatnonzero(~usable).tolist():
        fault, areas[index], peaks[index] = polygon_fault(polygons[index], width=widths[index], height=heights[index])
        if fault is not None:
            faults[index] = fault
    return PolygonChecks(faults, areas, peaks)


def _rle_fault(segmentation: Mapping, *, width: int, height: int) -> tuple[Optional[str], float]:
    size, counts = segmentation.get("size"), segmentation.get("counts")
    if not (type(size) is list and len(size) == 2 and all(is_int(v) for v in size)):
        return f"an RLE needs 'size': [height, width] as integers, got {str(size)[:40]}", 0.0
    if size != [height, width]:
        return (f"the RLE is of size {size} but the image is {height}x{width} (height x width)"), 0.0
    if type(counts) is list:
        if not all(is_int(v) and v >= 0 for v in counts):
            return "uncompressed RLE counts must be non-negative integers", 0.0
        if sum(counts) != height * width:
            return f"the RLE runs cover {sum(counts)} pixels; the image has {height * width}", 0.0
        return None, float(sum(counts[1::2]))
    if type(counts) is str and counts:
        return None, float("nan")  # compressed: its area is read with pycocotools (coco_seg.annotations)
    return f"RLE counts must be a list of integers or a compressed string, got {type(counts).__name__}", 0.0


def annotation_faults(annotation: Mapping[str, Any], *, width: int, height: int, category_names: Mapping[int, str],
                      polygons: Optional[Sequence[PolygonCheck]] = None) -> tuple[list[str], float]:
    """(faults, area) of one annotation of an image of ``width`` × ``height``; each fault names the annotation id
    and the field. The area is the geometric one (NaN for a compressed RLE, whose area needs pycocotools).
    ``polygons``: the checks of its polygons when already made (:func:`polygon_checks`), else made here."""
    annotation_id = annotation.get("id")
    where = f"annotation {annotation_id!r}"
    faults = []
    if not is_int(annotation_id):
        faults.append(f"{where}: field 'id' must be an integer, got {type(annotation_id).__name__}")
    category = annotation.get("category_id")
    if not is_int(category):
        faults.append(f"{where}: field 'category_id' must be an integer, got {type(category).__name__} "
                      f"{str(category)[:20]!r}")
    elif category not in category_names:
        faults.append(f"{where}: field 'category_id': unknown category id {category}")
    crowd = annotation.get("iscrowd", 0)
    if crowd not in (0, 1) or type(crowd) not in (int, bool):
        faults.append(f"{where}: field 'iscrowd' must be 0 or 1, got {type(crowd).__name__} {str(crowd)[:20]!r}")
    segmentation = annotation.get("segmentation")
    area = 0.0
    if type(segmentation) is list and segmentation:
        polygon_faults = []
        largest = 0.0  # the largest coordinate of the annotation (inf when one is negative)
        if polygons is None:
            polygons = [polygon_fault(polygon, width=width, height=height) for polygon in segmentation]
        for fault, polygon_area, peak in polygons:
            if fault is not None:
                polygon_faults.append(fault)
            area += polygon_area
            largest = max(largest, peak)
        if not polygon_faults and largest <= 1 and width * height > 4:
            polygon_faults.append("every coordinate is within [0, 1]: the polygon looks normalised to 0-1, COCO "
                                  "polygons are in pixels")
        faults += [f"{where}: field 'segmentation': {fault}" for fault in dict.fromkeys(polygon_faults)]
    elif isinstance(segmentation, dict):
        fault, area = _rle_fault(segmentation, width=width, height=height)
        if fault is not None:
            faults.append(f"{where}: field 'segmentation': {fault}")
    elif not segmentation:
        faults.append(f"{where}: field 'segmentation' is missing or empty (a bbox alone gives no mask)")
    else:
        faults.append(f"{where}: field 'segmentation' must be a list of polygons or an RLE, got "
                      f"{type(segmentation).__name__}")
    return faults, area


def summarise(faults: Sequence[str]) -> Optional[str]:
    """One sample's faults as one reason: the first MAX_FAULTS_PER_SAMPLE, then how many more."""
    if not faults:
        return None
    shown = "; ".join(faults[:MAX_FAULTS_PER_SAMPLE])
    more = len(faults) - MAX_FAULTS_PER_SAMPLE
    return shown + (f"; and {more} more fault(s)" if more > 0 else "")
