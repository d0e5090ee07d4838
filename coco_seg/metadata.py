"""Per-sample metadata, derived from the already decoded image, the class pixel counts and the image's annotations.

Names are exactly what the Tensorleap engine shows. Percentages are shares of mask pixels at the original
resolution, counted from the class unions' RLE areas (coco_seg.masks.class_pixel_counts; they agree with
pycocotools masks); counts are non-crowd COCO instances (crowd regions are counted
separately in ``crowd_count``); ``small_object_count`` uses COCO's definition (annotation area < 32² original
pixels, non-crowd); ``<class>_avg_size`` is the mean instance area as a percent of the image area (0 when none).
Instance areas are the geometric ones preprocess computes (coco_seg.annotation_checks), not the file's ``area``.

Types are what the Tensorleap platform declares (``metadata_names``): counts and the original width/height are
``int``, shares, sizes and brightness ``float``, ``is_colored`` ``bool``. A value that is unknown — every
label-derived value of an unlabeled sample, everything of a sample that failed to decode — is ``None`` (the
engine marks it missing and shows the type's default), never NaN and never zero.
"""

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Optional

import cv2
import numpy as np

from coco_seg.annotation_checks import AREA_KEY
from coco_seg.categories import VEHICLE_TYPES
from coco_seg.config import Config, TargetClass

SMALL_OBJECT_AREA = 32 * 32  # COCO "small": area < 32² pixels
COUNTED_CATEGORIES = ("person",) + VEHICLE_TYPES  # each gets its own <name>_count
# A pixel counts as coloured when its channels differ by more than this (0-255), which JPEG chroma noise on a
# gray photo does not reach; an image is coloured when more than COLORED_PIXEL_SHARE of its pixels are.
COLOR_SPREAD_THRESHOLD = 12
COLORED_PIXEL_SHARE = 0.01
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601, RGB order


def metadata_names(config: Config) -> dict[str, type]:
    """Every metadata name this config produces, with its Python type (int, float or bool), in display order."""
    names: dict[str, type] = {"background_percent": float}
    names |= {f"{target.name}_percent": float for target in config.target_classes}
    names |= {f"{name}_count": int for name in _count_names(config.target_classes)}
    names |= {"total_count": int, "crowd_count": int, "small_object_count": int}
    names |= {f"{target.name}_avg_size": float for target in config.target_classes}
    names |= {"is_colored": bool, "brightness": float, "image_width": int, "image_height": int}
    return names


def missing_metadata(config: Config, **known: Any) -> dict[str, Any]:
    """Every metadata name of ``config`` set to None (unknown), except the ``known`` values given."""
    return {name: known.get(name) for name in metadata_names(config)}


def _count_names(target_classes: Sequence[TargetClass]) -> list[str]:
    names = list(COUNTED_CATEGORIES) + ["vehicle"]
    return names + [t.name for t in target_classes if t.name not in names]


def image_metadata(image: np.ndarray, *, width: int, height: int) -> dict[str, Any]:
    """``is_colored``, ``brightness`` (mean luma, 0–1) of an (H, W, 3) uint8 RGB image; original width/height."""
    # OpenCV's per-channel ops: numpy reductions over a length-3 last axis cost ~20x more on these small images.
    red, green, blue = cv2.split(image)
    spread = cv2.subtract(cv2.max(cv2.max(red, green), blue), cv2.min(cv2.min(red, green), blue))
    colored_pixels = int(np.count_nonzero(spread > COLOR_SPREAD_THRESHOLD))
    is_colored = colored_pixels > COLORED_PIXEL_SHARE * spread.size
    brightness = float(np.dot(cv2.mean(image)[:3], LUMA_WEIGHTS)) / 255.0
    return {"is_colored": bool(is_colored), "brightness": brightness, "image_width": int(width),
            "image_height": int(height)}


def mask_metadata(pixel_counts: Optional[np.ndarray], *, class_names: Sequence[str]) -> dict[str, Optional[float]]:
    """``<class>_percent`` for background and each class from per-value pixel counts of the mask (see
    ``masks.class_pixel_counts``); None for an unlabeled sample (``pixel_counts`` None)."""
    if pixel_counts is None:
        return {f"{name}_percent": None for name in class_names}
    percentages = pixel_counts.astype(np.float64) * 100.0 / pixel_counts.sum()
    return {f"{name}_percent": float(value) for name, value in zip(class_names, percentages)}


def annotation_metadata(annotations: Optional[Iterable[Mapping[str, Any]]], *, category_names: Mapping[int, str],
                        target_classes: Sequence[TargetClass], image_area: int) -> dict[str, Any]:
    """Instance counts (int) and average sizes (float) from an image's COCO annotations; None when
    ``annotations`` is None (unlabeled)."""
    keys = [f"{n}_count" for n in _count_names(target_classes)] + ["total_count", "crowd_count",
                                                                     "small_object_count"]
    keys += [f"{t.name}_avg_size" for t in target_classes]
    if annotations is None:
        return {key: None for key in keys}

    instances = Counter()  # non-crowd instances per category name
    areas: dict[str, list[float]] = {}
    crowd = small = 0
    for annotation in annotations:
        name = category_names[annotation["category_id"]]
        if annotation.get("iscrowd", 0):
            crowd += 1
            continue
        instances[name] += 1
        area = annotation[AREA_KEY]  # computed from the geometry at preprocess; the file's `area` is not read
        areas.setdefault(name, []).append(area)
        small += area < SMALL_OBJECT_AREA

    result: dict[str, Any] = {f"{name}_count": instances[name] for name in COUNTED_CATEGORIES}
    result["vehicle_count"] = sum(instances[name] for name in VEHICLE_TYPES)
    for target in target_classes:
        target_areas = [a for name in target.coco_names for a in areas.get(name, ())]
        result[f"{target.name}_count"] = len(target_areas)
        result[f"{target.name}_avg_size"] = 100.0 * float(np.mean(target_areas)) / image_area if target_areas else 0.0
    result |= {"total_count": sum(instances.values()), "crowd_count": crowd, "small_object_count": int(small)}
    return {key: result[key] for key in keys}
