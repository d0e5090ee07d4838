"""COCO splits → the ordered, validated list of samples the binder serves.

Algorithm: the instances JSON is read once and indexed with pycocotools. A labeled split keeps every image with at
least one annotation (crowd included) of a target class, plus — when ``data.background_share`` > 0 — an evenly
spaced, deterministic pick of background-only images; samples are ordered by COCO image id and the sample id is
the image id as a string. Every kept image is checked here, before the engine's per-sample loop: file name
confined to the image folder, file present and non-empty, annotations with a known category and a usable
segmentation. A bad sample raises :class:`DataError` (``on_bad_sample: error``) or is left out, counted and listed
(``on_bad_sample: skip``): kept + skipped = found, always. ``sample_limit_per_split`` applies last.
The unlabeled split is every image file of its folder, ordered by file name.
"""

import contextlib
import io
import json
import logging
import os
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Optional

from pycocotools.coco import COCO

from coco_seg.config import Config
from coco_seg.images import confined_path, image_file_problem

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
SHOWN_PROBLEMS = 5  # problems quoted in an error message; the rest are counted


class DataError(ValueError):
    """The data a config points at cannot be used; the message names the config key, sample id and file."""


@dataclass(frozen=True)
class BadSample:
    sample_id: str
    file: str
    reason: str

    def __str__(self) -> str:
        return f"sample {self.sample_id} ({self.file}): {self.reason}"


@dataclass(frozen=True)
class SampleRecord:
    """What preprocess knows about one sample, before anything is decoded."""

    sample_id: str
    path: Path
    image_id: Optional[int] = None  # None for unlabeled images
    width: Optional[int] = None  # as annotated (original pixels)
    height: Optional[int] = None
    annotations: tuple[dict, ...] = ()


@dataclass
class SplitData:
    """One split: its samples in order, what was skipped, and how to read category ids. Held in PreprocessResponse."""

    name: str
    labeled: bool
    config: Config  # the config it was selected with; decoding follows the same one
    records: dict[str, SampleRecord]
    class_of_category: dict[int, int]  # COCO category id → target class 1..K (this file's ids)
    category_names: dict[int, str]  # COCO category id → name (this file's categories)
    found: int  # candidate samples before skipping (kept + skipped)
    skipped: list[BadSample] = field(default_factory=list)
    ignored_annotations: list[str] = field(default_factory=list)  # annotations tied to no image
    # Identifies this split in the per-process sample cache (object ids can be reused after garbage collection).
    cache_token: str = field(default_factory=lambda: uuid.uuid4().hex, repr=False)

    @property
    def sample_ids(self) -> list[str]:
        return list(self.records)


def _split_key(name: str, leaf: str) -> str:
    return f"data.splits.{name}.{leaf}"


def _read_annotations(path: Path, *, key: str) -> dict[str, Any]:
    if not path.is_file():
        raise DataError(f"{key}: annotation file {path} does not exist")
    try:
        with open(path, "rb") as handle:
            dataset = json.load(handle)
    except json.JSONDecodeError as error:
        raise DataError(f"{key}: annotation file {path} is not valid JSON ({error.msg} at line {error.lineno}, "
                        f"column {error.colno}); is the download complete?") from None
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{key}: cannot read annotation file {path}: {error}") from None
    if not isinstance(dataset, dict) or not all(isinstance(dataset.get(k), list)
                                                for k in ("images", "annotations", "categories")):
        raise DataError(f"{key}: {path} is not a COCO instances file (needs lists 'images', 'annotations', "
                        f"'categories')")
    return dataset


def _index(dataset: dict[str, Any]) -> COCO:
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
        coco.createIndex()
    return coco


def _list_folder(folder: Path, *, key: str) -> dict[str, os.DirEntry]:
    if not folder.is_dir():
        raise DataError(f"{key}: image folder {folder} does not exist")
    with os.scandir(folder) as entries:
        return {entry.name: entry for entry in entries}


def _file_problem(folder: Path, file_name: str, listing: dict[str, os.DirEntry]) -> tuple[Path, Optional[str]]:
    """The image path for ``file_name`` and what is wrong with it (None when usable). One folder listing is
    shared by all samples, so a plain file costs one stat and two small reads, never a path resolution."""
    entry = listing.get(file_name)
    try:
        path = confined_path(folder, file_name, resolve_links=entry is None or entry.is_symlink())
    except ValueError as error:
        return folder / PurePosixPath(file_name).name, str(error)
    try:
        size = entry.stat().st_size if entry is not None else path.stat().st_size
    except OSError:
        return path, "image file is missing"
    return path, image_file_problem(path, size=size)


def _annotation_problem(annotation: dict, image: dict, category_names: dict[int, str]) -> Optional[str]:
    """What makes an annotation unusable for a mask or for the metadata (None when fine)."""
    annotation_id = annotation.get("id")
    if annotation.get("category_id") not in category_names:
        return f"annotation {annotation_id} has unknown category id {annotation.get('category_id')!r}"
    segmentation = annotation.get("segmentation")
    if not segmentation:
        return f"annotation {annotation_id} has no segmentation (bbox only)"
    if isinstance(segmentation, list):
        if not any(isinstance(p, list) and len(p) >= 6 for p in segmentation):
            return f"annotation {annotation_id} has a polygon with fewer than 3 points"
        if not annotation.get("area", 0) > 0:
            return f"annotation {annotation_id} has a polygon of zero area"
    elif isinstance(segmentation, dict):
        if list(segmentation.get("size", [])) != [image.get("height"), image.get("width")]:
            return (f"annotation {annotation_id} has an RLE of size {segmentation.get('size')} but the image is "
                    f"{image.get('height')}x{image.get('width')} (height x width)")
    else:
        return f"annotation {annotation_id} has a segmentation of type {type(segmentation).__name__}"
    return None


def _evenly_spaced(items: list, count: int) -> list:
    if count <= 0 or not items:
        return []
    count = min(count, len(items))
    step = len(items) / count
    return [items[int(i * step)] for i in range(count)]


def _settle(name: str, records: dict[str, SampleRecord], bad: list[BadSample], *, config: Config,
            source: str) -> list[BadSample]:
    """Apply ``on_bad_sample`` to the problems found in a split."""
    if not bad:
        return []
    if config.on_bad_sample == "error":
        listed = "\n".join(f"  - {problem}" for problem in bad[:SHOWN_PROBLEMS])
        more = f"\n  ... and {len(bad) - SHOWN_PROBLEMS} more" if len(bad) > SHOWN_PROBLEMS else ""
        raise DataError(f"data.splits.{name}: {len(bad)} bad sample(s) in {source}:\n{listed}{more}\n"
                        f"Fix the data, or set on_bad_sample: skip to leave them out (they are then listed).")
    for problem in bad:
        logger.warning("skipping %s in split %s: %s", problem.sample_id, name, problem)
        records.pop(problem.sample_id, None)
    return bad


def _limit(records: dict[str, SampleRecord], limit: Optional[int]) -> dict[str, SampleRecord]:
    if limit is None or len(records) <= limit:
        return records
    return dict(list(records.items())[:limit])


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


def load_labeled_split(config: Config, name: str, *, data_root: Path) -> SplitData:
    """Read, index, select and validate one annotated split (training or validation)."""
    paths = config.splits[name]
    annotations_key = _split_key(name, "annotations")
    annotations_path = data_root / paths.annotations
    images_dir = data_root / paths.images
    dataset = _read_annotations(annotations_path, key=annotations_key)
    listing = _list_folder(images_dir, key=_split_key(name, "images"))
    coco = _index(dataset)
    category_names = {cid: c.get("name") for cid, c in coco.cats.items()}
    class_of_category = _target_category_ids(config, dataset["categories"], key=annotations_key,
                                             source=annotations_path)

    ignored = [f"annotation {a.get('id')} refers to image id {a.get('image_id')!r}, which is not in 'images'"
               for a in dataset["annotations"] if a.get("image_id") not in coco.imgs]
    if ignored and config.on_bad_sample == "error":
        raise DataError(f"{annotations_key}: {annotations_path}: {len(ignored)} annotation(s) refer to no image, "
                        f"e.g. {ignored[0]}. Set on_bad_sample: skip to ignore (and list) them.")
    for line in ignored:
        logger.warning("%s: %s", annotations_path, line)

    with_class = {image_id for category_id in class_of_category for image_id in coco.catToImgs.get(category_id, ())
                  if image_id in coco.imgs}
    background_only = sorted(set(coco.imgs) - with_class)
    keep = sorted(with_class | set(_evenly_spaced(background_only, round(config.background_share * len(with_class)))))

    records: dict[str, SampleRecord] = {}
    bad: list[BadSample] = []
    for image_id in keep:
        image = coco.imgs[image_id]
        sample_id = str(image_id)
        file_name = str(image.get("file_name", ""))
        path, problem = _file_problem(images_dir, file_name, listing)
        annotations = tuple(coco.imgToAnns.get(image_id, ()))
        if problem is None and not (isinstance(image.get("width"), int) and isinstance(image.get("height"), int)):
            problem = "image entry has no integer width/height"
        for annotation in annotations:
            if problem is not None:
                break
            problem = _annotation_problem(annotation, image, category_names)
        if problem is not None:
            bad.append(BadSample(sample_id, str(path), problem))
        records[sample_id] = SampleRecord(sample_id=sample_id, path=path, image_id=image_id, width=image.get("width"),
                                          height=image.get("height"), annotations=annotations)
    skipped = _settle(name, records, bad, config=config, source=str(annotations_path))
    records = _limit(records, config.sample_limit_per_split)
    if not records:
        raise DataError(f"data.splits.{name}: no usable sample in {annotations_path} "
                        f"({len(keep)} image(s) with a class of labels.classes = {list(config.classes)}, "
                        f"{len(skipped)} skipped)")
    return SplitData(name=name, labeled=True, config=config, records=records, class_of_category=class_of_category,
                     category_names=category_names, found=len(keep), skipped=skipped, ignored_annotations=ignored)


_TRAILING_DIGITS = re.compile(r"(\d+)$")


def unlabeled_sample_id(file_name: str) -> str:
    """COCO file names end in the zero-padded image id (``000000000139.jpg``, ``COCO_test2014_000000000001.jpg``);
    the id without padding is the sample id, as for labeled splits. Other names keep their stem."""
    stem = Path(file_name).stem
    match = _TRAILING_DIGITS.search(stem)
    return str(int(match.group(1))) if match else stem


def load_unlabeled_split(config: Config, *, data_root: Path) -> SplitData:
    """Every image file in ``data.splits.unlabeled.images``, ordered by file name."""
    key = _split_key("unlabeled", "images")
    folder = data_root / config.splits["unlabeled"].images
    listing = _list_folder(folder, key=key)
    records: dict[str, SampleRecord] = {}
    bad: list[BadSample] = []
    names = sorted(n for n, e in listing.items() if n.lower().endswith(IMAGE_SUFFIXES) and not e.is_dir())
    for file_name in names:
        sample_id = unlabeled_sample_id(file_name)
        path, problem = _file_problem(folder, file_name, listing)
        if sample_id in records:
            problem = f"sample id {sample_id} already used by {records[sample_id].path.name}"
            sample_id = file_name
        if problem is not None:
            bad.append(BadSample(sample_id, str(path), problem))
        records[sample_id] = SampleRecord(sample_id=sample_id, path=path)
    skipped = _settle("unlabeled", records, bad, config=config, source=str(folder))
    records = _limit(records, config.sample_limit_per_split)
    if not records:
        raise DataError(f"{key}: no usable image file ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return SplitData(name="unlabeled", labeled=False, config=config, records=records, class_of_category={}, category_names={},
                     found=len(names), skipped=skipped)


def resolve_data_root(config: Config) -> Path:
    """``data.root``, or the generated sample dataset (made on first use) when it is null."""
    if config.data_root is not None:
        if not config.data_root.is_dir():
            raise DataError(f"data.root: folder {config.data_root} does not exist (set in {config.source})")
        return config.data_root
    from coco_seg.sample_data import ensure_generated_sample

    return ensure_generated_sample()


def load_splits(config: Config) -> dict[str, SplitData]:
    """Every configured split, training and validation first."""
    data_root = resolve_data_root(config)
    splits = {name: load_labeled_split(config, name, data_root=data_root) for name in ("training", "validation")}
    if "unlabeled" in config.splits:
        splits["unlabeled"] = load_unlabeled_split(config, data_root=data_root)
    return splits
