"""Parse, validate and select one split's COCO instances file: the part of preprocess the index cache keeps.

Algorithm: the instances JSON is parsed once (orjson, with the garbage collector paused: a COCO file is millions
of small objects, and the collector's repeated full passes over them would cost more than the parse) and indexed in
one pass over its annotations — by image, keeping file order, noting the images with a target class on the way. A
labeled split keeps every image with at least one annotation (crowd included) of a target class, plus — when
``data.background_share`` > 0 — an evenly spaced, deterministic pick of background-only images, ordered by COCO
image id. Each candidate's annotations are checked here; no image file is read.
"""

import json
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from coco_seg.annotation_checks import AREA_KEY, annotation_faults, is_int, polygon_checks, summarise
from coco_seg.config import Config
from coco_seg.index_cache import AnnotationScan, Candidate, collector_paused
from coco_seg.split_data import DataError


def split_key(name: str, leaf: str) -> str:
    return f"data.splits.{name}.{leaf}"


def _read_annotations(path: Path, *, key: str) -> dict[str, Any]:
    if not path.is_file():
        raise DataError(f"{key}: annotation file {path} does not exist")
    try:
        data = path.read_bytes()
    except OSError as error:
        raise DataError(f"{key}: cannot read annotation file {path}: {error}") from None
    with collector_paused():
        try:
            dataset = orjson.loads(data)
        except orjson.JSONDecodeError:
            # orjson is strict (UTF-8 only, no NaN literals, 64-bit integers): the standard parser either accepts
            # what it refused or gives the usual line and column
            try:
                dataset = json.loads(data)
            except json.JSONDecodeError as error:
                raise DataError(f"{key}: annotation file {path} is not valid JSON ({error.msg} at line "
                                f"{error.lineno}, column {error.colno}); is the download complete?") from None
            except ValueError as error:  # UnicodeDecodeError included
                raise DataError(f"{key}: cannot read annotation file {path}: {error}") from None
    if not isinstance(dataset, dict) or not all(isinstance(dataset.get(k), list)
                                                for k in ("images", "annotations", "categories")):
        raise DataError(f"{key}: {path} is not a COCO instances file (needs lists 'images', 'annotations', "
                        f"'categories')")
    return dataset


MAX_IMAGE_PIXELS = 200_000_000  # a mask is decoded at the original size: bound what one sample may allocate


def _image_faults(image: dict[str, Any]) -> list[str]:
    faults = []
    file_name = image.get("file_name")
    if type(file_name) is not str or not file_name:
        faults.append(f"field 'file_name' must be a non-empty string, got {str(file_name)[:40]!r}")
    width, height = image.get("width"), image.get("height")
    if not (is_int(width) and is_int(height) and width > 0 and height > 0):
        faults.append(f"fields 'width'/'height' must be positive integers, got {width!r} x {height!r}")
    elif width * height > MAX_IMAGE_PIXELS:
        faults.append(f"the image is {width}x{height}, more than {MAX_IMAGE_PIXELS:,} pixels")
    return faults


def _images_by_id(dataset: dict[str, Any], *, key: str, source: Path) -> tuple[dict[int, dict], dict[Any, list[str]],
                                                                                list[str]]:
    """(image id → entry, image id → faults of its entry, entries that have no usable id).

    An id given twice is a fault of that id (the two entries may name different files; neither can be trusted)."""
    images: dict[int, dict] = {}
    faults: dict[Any, list[str]] = {}
    unusable: list[str] = []
    positions: dict[int, list[int]] = {}
    for position, image in enumerate(dataset["images"]):
        if not isinstance(image, dict):
            unusable.append(f"images[{position}] is not an object (got {str(image)[:60]})")
            continue
        image_id = image.get("id")
        if not is_int(image_id):
            unusable.append(f"images[{position}]: field 'id' must be an integer, got {type(image_id).__name__} "
                            f"{str(image_id)[:20]!r} (file_name {str(image.get('file_name'))[:60]!r})")
            continue
        positions.setdefault(image_id, []).append(position)
        if image_id in images:
            continue
        images[image_id] = image
        entry_faults = _image_faults(image)
        if entry_faults:
            faults[image_id] = [f"image {image_id}: {fault}" for fault in entry_faults]
    for image_id, where in positions.items():
        if len(where) > 1:
            files = sorted({str(dataset["images"][i].get("file_name")) for i in where})
            faults.setdefault(image_id, []).insert(0, f"image id {image_id} appears {len(where)} times in 'images' "
                                                      f"(positions {', '.join(map(str, where))}; files "
                                                      f"{', '.join(files)})")
    return images, faults, unusable


def _category_names(dataset: dict[str, Any], *, key: str, source: Path) -> dict[int, str]:
    """COCO category id → name; ids must be unique integers and names unique strings, or nothing can be trusted
    (a person could be painted as a car): the whole file is refused, naming both entries."""
    names: dict[int, str] = {}
    position_of_id: dict[int, int] = {}
    position_of_name: dict[str, int] = {}
    for position, category in enumerate(dataset["categories"]):
        if not isinstance(category, dict) or not is_int(category.get("id")):
            raise DataError(f"{key}: {source}: categories[{position}] is not a category with an integer 'id' "
                            f"(got {str(category)[:80]})")
        category_id, name = category["id"], category.get("name")
        if type(name) is not str or not name:
            raise DataError(f"{key}: {source}: categories[{position}] (id {category_id}) has no name "
                            f"(got {str(name)[:40]!r})")
        if category_id in position_of_id:
            raise DataError(f"{key}: {source}: category id {category_id} is given twice (categories"
                            f"[{position_of_id[category_id]}] {names[category_id]!r} and categories[{position}] "
                            f"{name!r})")
        if name in position_of_name:
            raise DataError(f"{key}: {source}: category name {name!r} is given twice (categories"
                            f"[{position_of_name[name]}] and categories[{position}], ids "
                            f"{dataset['categories'][position_of_name[name]]['id']} and {category_id})")
        position_of_id[category_id], position_of_name[name] = position, position
        names[category_id] = name
    return names


def _has_size(image: dict) -> bool:
    width, height = image.get("width"), image.get("height")
    return is_int(width) and is_int(height) and width > 0 and height > 0


def _compressed_rle_area(segmentation: dict) -> float:
    """Pixels of a compressed RLE, its string validated on the way (coco_seg.masks raises AnnotationError for a
    string cut short, a negative run or runs that do not cover the image)."""
    from coco_seg.masks import rle_run_lengths

    return float(rle_run_lengths(segmentation)[1::2].sum())


def _evenly_spaced(items: list, count: int) -> list:
    if count <= 0 or not items:
        return []
    count = min(count, len(items))
    step = len(items) / count
    return [items[int(i * step)] for i in range(count)]


def _target_category_ids(config: Config, categories: list[dict], *, key: str, source: Path) -> dict[int, int]:
    ids_by_name = {c.get("name"): c.get("id") for c in categories}
    class_of_category: dict[int, int] = {}
    for index, target in enumerate(config.target_classes, start=1):
        present = [name for name in target.coco_names if name in ids_by_name]
        if not present:
            raise DataError(f"{key}: {source} has no category named {' or '.join(target.coco_names)!s} "
                            f"(needed by labels.classes)")
        for name in present:
            class_of_category[ids_by_name[name]] = index
    return class_of_category


def scan_annotations(config: Config, name: str, annotations_path: Path) -> AnnotationScan:
    """Parse, index, validate and select one split's annotations (no file I/O besides the JSON: this is the part
    the index cache keeps). Every fault of a candidate image is collected (coco_seg.annotation_checks); entries
    that belong to no usable image (no image, an image id that is not an integer) are listed as ``ignored``."""
    annotations_key = split_key(name, "annotations")
    dataset = _read_annotations(annotations_path, key=annotations_key)
    images, image_faults, ignored = _images_by_id(dataset, key=annotations_key, source=annotations_path)
    category_names = _category_names(dataset, key=annotations_key, source=annotations_path)
    class_of_category = _target_category_ids(config, dataset["categories"], key=annotations_key,
                                             source=annotations_path)
    annotations_of: dict[Any, list[dict]] = {}  # image id → its annotations, in file order
    with_class: set = set()  # images with an annotation of a target class
    first_image_of: dict[int, Any] = {}  # annotation id → the image of its first use
    reused: dict[int, list[Any]] = {}  # annotation id → every image that uses it, when more than one annotation does
    for position, annotation in enumerate(dataset["annotations"]):
        if type(annotation) is not dict:
            ignored.append(f"annotations[{position}] is not an object (got {str(annotation)[:60]})")
            continue
        image_id = annotation.get("image_id")
        owned = annotations_of.get(image_id) if type(image_id) is int else None
        if owned is None:
            if type(image_id) is not int or image_id not in images:
                ignored.append(f"annotation {annotation.get('id')!r} (annotations[{position}]) refers to image id "
                               f"{image_id!r}, which is not an image of 'images'")
                continue
            owned = annotations_of[image_id] = []
        owned.append(annotation)
        annotation_id = annotation.get("id")
        if type(annotation_id) is int:
            known = len(first_image_of)
            first_image_of.setdefault(annotation_id, image_id)
            if len(first_image_of) == known:  # the id was there already: a second use
                reused.setdefault(annotation_id, [first_image_of[annotation_id]]).append(image_id)
        category = annotation.get("category_id")
        if type(category) is int and category in class_of_category:
            with_class.add(image_id)
    for annotation_id, holders in reused.items():
        for image_id in dict.fromkeys(holders):
            image_faults.setdefault(image_id, []).append(
                f"annotation id {annotation_id} is used by {len(holders)} annotations (images "
                f"{', '.join(map(str, dict.fromkeys(holders)))})")
    background_only = sorted(set(images) - with_class)
    keep = sorted(with_class | set(_evenly_spaced(background_only, round(config.background_share * len(with_class)))))
    sized = {image_id for image_id in keep if _has_size(images[image_id])}  # else that is the image's fault
    # Every polygon of every sized candidate, checked in one batch (the common case vectorised): per annotation,
    # the number of its polygons, their summed area, whether one is bad, and its largest coordinate.
    polygons, widths, heights, per_annotation = [], [], [], []
    for image_id in keep:
        if image_id not in sized:
            continue
        width, height = images[image_id]["width"], images[image_id]["height"]
        for annotation in annotations_of.get(image_id, ()):
            segmentation = annotation.get("segmentation")
            count = len(segmentation) if type(segmentation) is list else 0
            per_annotation.append(count)
            if count:
                polygons += segmentation
                widths += [width] * count
                heights += [height] * count
    checks = polygon_checks(polygons, widths, heights)
    counts = np.asarray(per_annotation, np.int64)
    ends = np.cumsum(counts)
    starts = ends - counts
    with_polygons = counts > 0
    sums, largest, bad = np.zeros(len(counts)), np.zeros(len(counts)), np.zeros(len(counts), np.int64)
    if with_polygons.any():  # contiguous segments, so reduceat over the non-empty ones covers them exactly
        first = starts[with_polygons]
        sums[with_polygons] = np.add.reduceat(checks.areas, first)
        largest[with_polygons] = np.maximum.reduceat(checks.peaks, first)
        flagged = np.zeros(len(polygons), np.int64)
        flagged[list(checks.faults)] = 1
        bad[with_polygons] = np.add.reduceat(flagged, first)
    # a polygon annotation decided by the batch alone: every polygon fine and not in normalised coordinates
    decided = (with_polygons & (bad == 0) & (largest > 1)).tolist()
    sums, starts, ends = sums.tolist(), starts.tolist(), ends.tolist()
    position = 0  # the annotation's index in per_annotation
    candidates = []
    for image_id in keep:
        image = images[image_id]
        annotations = tuple(annotations_of.get(image_id, ()))
        faults = list(image_faults.get(image_id, ()))
        width, height = image.get("width"), image.get("height")
        if image_id in sized:
            for annotation in annotations:
                k, position = position, position + 1
                category, crowd = annotation.get("category_id"), annotation.get("iscrowd", 0)
                if (decided[k] and type(annotation.get("id")) is int and type(category) is int
                        and category in category_names and (crowd == 0 or crowd == 1)
                        and type(crowd) in (int, bool)):
                    annotation[AREA_KEY] = sums[k]  # the common case, in a few lookups
                    continue
                own = [checks[j] for j in range(starts[k], ends[k])] if with_polygons[k] else None
                found, area = annotation_faults(annotation, width=width, height=height,
                                                category_names=category_names, polygons=own)
                if not found and area != area:  # NaN: a compressed RLE, counted from its runs
                    try:
                        area = _compressed_rle_area(annotation["segmentation"])
                    except ValueError as error:  # AnnotationError: the string is cut short or its runs do not add up
                        found = [f"annotation {annotation.get('id')!r}: field 'segmentation': the compressed "
                                 f"RLE cannot be read ({error})"]
                faults += found
                annotation[AREA_KEY] = area  # this process's parsed copy, which the index cache stores
        candidates.append(Candidate(image_id, str(image.get("file_name", "")), width, height, summarise(faults),
                                    annotations))
    return AnnotationScan(category_names, class_of_category, ignored, candidates)
