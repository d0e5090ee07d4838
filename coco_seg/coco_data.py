"""COCO splits → the ordered, validated list of samples the binder serves.

Algorithm: the instances JSON is parsed once (orjson, with the garbage collector paused: a COCO file is millions
of small objects, and the collector's repeated full passes over them would cost more than the parse) and indexed in
one pass over its annotations — by image, keeping file order, noting the images with a target class on the way. A
labeled split keeps every image with at least one annotation (crowd included) of a target class, plus — when
``data.background_share`` > 0 — an evenly spaced, deterministic pick of background-only images; samples are ordered
by COCO image id and the sample id is the image id as a string. Every kept image is checked here, before the
engine's per-sample loop: file name confined to the image folder, file present, non-empty and not truncated, pixel
size in the file header (JPEG/PNG) equal to the annotation's width and height, annotations with a known category
and a usable segmentation. A bad sample raises :class:`DataError` (``on_bad_sample: error``) or is left out,
counted and listed (``on_bad_sample: skip``): kept + skipped = found, always. ``sample_limit_per_split`` applies
last. The annotation side is cached (coco_seg.index_cache), so later runs skip the parse; the first run parses
in a child process (Linux) while this one checks every image file of the folder.
The unlabeled split is every image file of its folder, ordered by file name.

Each split's outcome is written to ``<reports_dir>/bad_samples_<split>.json`` (temporary file + rename, so a
reader never sees half a report): found, kept, served, the skipped (or, with ``error``, refused) samples with file
and reason, the ignored annotations, and — appended by the engine's per-sample calls — the samples that passed
these checks but then failed to decode (``failed_at_decode``; see coco_seg.samples).
"""

import contextlib
import json
import logging
import os
import re
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Optional

import orjson

from coco_seg.atomic import write_json_atomically as _write_json_atomically
from coco_seg.config import REPORTS_DIR_ENV_VAR, Config
from coco_seg.images import ImageFileCheck, confined_path, inspect_image_file
from coco_seg.index_cache import (AnnotationScan, Annotations, Candidate, FileCheckMemo, LazyAnnotations,
                                  cached_scan, collector_paused, file_identity)

try:  # POSIX: serialises report updates of engine worker processes; elsewhere the in-process lock must do
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
SHOWN_PROBLEMS = 5  # problems quoted in an error message; the rest are counted
REPORT_VERSION = 1
_REPORT_LOCK = threading.Lock()  # one report update at a time within a process (engine calls may be threaded)


class DataError(ValueError):
    """The data a config points at cannot be used; the message names the config key, sample id and file."""


@dataclass(frozen=True)
class BadSample:
    sample_id: str
    file: str
    reason: str

    def __str__(self) -> str:
        return f"sample {self.sample_id} ({self.file}): {self.reason}"

    def as_json(self) -> dict[str, str]:
        return {"sample_id": self.sample_id, "file": self.file, "reason": self.reason}


@dataclass(frozen=True)
class SampleRecord:
    """What preprocess knows about one sample, before anything is decoded."""

    sample_id: str
    file: str  # the image file's path (a str: preprocess makes 100k+ records, and pathlib objects cost 10x more)
    image_id: Optional[int] = None  # None for unlabeled images
    width: Optional[int] = None  # as annotated (original pixels)
    height: Optional[int] = None
    annotation_source: Annotations = ()  # the annotations, or where the index cache keeps them

    @property
    def path(self) -> Path:
        return Path(self.file)

    @property
    def annotations(self) -> tuple[dict, ...]:
        source = self.annotation_source
        return source.load() if isinstance(source, LazyAnnotations) else source


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
    annotations_path: Optional[Path] = None  # None for the unlabeled split
    images_dir: Optional[Path] = None
    refused: list[BadSample] = field(default_factory=list)  # on_bad_sample: error — the problems that stopped it
    # Samples that passed preprocess but failed to decode in this process, by id (filled by coco_seg.samples).
    failed_at_decode: dict[str, BadSample] = field(default_factory=dict)
    report_path: Optional[Path] = None  # the bad-sample report, once written
    # Identifies this split in the per-process sample cache (object ids can be reused after garbage collection).
    cache_token: str = field(default_factory=lambda: uuid.uuid4().hex, repr=False)

    @property
    def sample_ids(self) -> list[str]:
        return list(self.records)

    @property
    def kept(self) -> int:
        """Candidates that passed the checks (before ``sample_limit_per_split``): found - skipped - refused."""
        return self.found - len(self.skipped) - len(self.refused)


def _split_key(name: str, leaf: str) -> str:
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


def _images_by_id(dataset: dict[str, Any], *, key: str, source: Path) -> dict[Any, dict]:
    images: dict[Any, dict] = {}
    for position, image in enumerate(dataset["images"]):
        if not isinstance(image, dict) or "id" not in image:
            raise DataError(f"{key}: {source}: images[{position}] is not an image entry with an 'id' "
                            f"(got {str(image)[:80]})")
        images[image["id"]] = image
    return images


def _list_folder(folder: Path, *, key: str) -> dict[str, os.DirEntry]:
    if not folder.is_dir():
        raise DataError(f"{key}: image folder {folder} does not exist")
    with os.scandir(folder) as entries:
        return {entry.name: entry for entry in entries}


def _check_file(folder: Path, file_name: str, listing: dict[str, os.DirEntry],
                memo: FileCheckMemo) -> tuple[str, ImageFileCheck]:
    """The image path for ``file_name``, what is wrong with it (None when usable) and its header's pixel size.
    One folder listing is shared by all samples, so a plain file costs one stat, plus — unless the memo knows the
    unchanged file — two small reads (a few hundred bytes each); never a path resolution or a decode."""
    entry = listing.get(file_name)
    if entry is not None and "/" not in file_name and "\\" not in file_name and not entry.is_symlink():
        path = entry.path  # a plain name listed in the folder (every COCO file): confined by construction
        try:
            identity = file_identity(entry.stat())
        except OSError:
            return path, ImageFileCheck("image file is missing")
        known = memo.get(file_name, identity)
        if known is not None:
            return path, ImageFileCheck(*known)
        check = inspect_image_file(path, size=identity[0])
        memo.put(file_name, identity, check.problem, check.dimensions)
        return path, check
    try:
        path = str(confined_path(folder, file_name))
    except ValueError as error:
        return str(folder / PurePosixPath(file_name).name), ImageFileCheck(str(error))
    try:
        size = os.stat(path).st_size
    except OSError:
        return path, ImageFileCheck("image file is missing")
    return path, inspect_image_file(path, size=size)


def _size_problem(check: ImageFileCheck, image: dict) -> Optional[str]:
    """The file's own pixel size against the annotation's; unknown sizes (other formats) are left to the decoder."""
    if check.dimensions is None or check.dimensions == (image["width"], image["height"]):
        return None
    width, height = check.dimensions
    return (f"the file is {width}x{height} but the annotation file says {image['width']}x{image['height']} "
            f"(width x height); masks would not line up")


def _category_names(dataset: dict[str, Any], *, key: str, source: Path) -> dict[int, str]:
    """COCO category id → name; the ids must be integers (the index cache and every COCO tool rely on it)."""
    names: dict[int, str] = {}
    for position, category in enumerate(dataset["categories"]):
        if not isinstance(category, dict) or type(category.get("id")) is not int:
            raise DataError(f"{key}: {source}: categories[{position}] is not a category with an integer 'id' "
                            f"(got {str(category)[:80]})")
        names[category["id"]] = category.get("name")
    return names


def _annotation_problem(annotation: dict, image: dict, category_names: dict[int, str]) -> Optional[str]:
    """What makes an annotation unusable for a mask or for the metadata (None when fine)."""
    segmentation = annotation.get("segmentation")
    # The common case in a few lookups (this runs for every annotation of a COCO-scale file): a known category and a
    # first polygon of at least 3 points with a positive area. Anything else takes the full check below.
    if (type(segmentation) is list and segmentation and type(segmentation[0]) is list and len(segmentation[0]) >= 6
            and annotation.get("category_id") in category_names and annotation.get("area", 0) > 0):
        return None
    annotation_id = annotation.get("id")
    if annotation.get("category_id") not in category_names:
        return f"annotation {annotation_id} has unknown category id {annotation.get('category_id')!r}"
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


def _settle(split: SplitData, bad: list[BadSample], *, source: str) -> None:
    """Apply ``on_bad_sample`` to the problems found in a split, write its report, and refuse an empty split."""
    name, config = split.name, split.config
    for problem in bad:
        split.records.pop(problem.sample_id, None)
    if config.on_bad_sample == "error" and bad:
        split.refused = bad
        report = write_bad_sample_report(split)
        listed = "\n".join(f"  - {problem}" for problem in bad[:SHOWN_PROBLEMS])
        more = f"\n  ... and {len(bad) - SHOWN_PROBLEMS} more" if len(bad) > SHOWN_PROBLEMS else ""
        where = f" (all listed in {report})" if report is not None else ""
        raise DataError(f"data.splits.{name}: {len(bad)} bad sample(s) in {source}{where}:\n{listed}{more}\n"
                        f"Fix the data, or set on_bad_sample: skip to leave them out (they are then listed).")
    for problem in bad:
        logger.warning("skipping %s in split %s: %s", problem.sample_id, name, problem)
    split.skipped = bad
    split.records = _limit(split.records, config.sample_limit_per_split)
    report = write_bad_sample_report(split)
    if bad:
        logger.warning("split %s: %d of %d sample(s) skipped%s", name, len(bad), split.found,
                       f", listed in {report}" if report is not None else "")
    if not split.records:
        listed = f"; the skipped samples are listed in {report}" if bad and report is not None else ""
        if split.labeled:
            raise DataError(f"data.splits.{name}: no usable sample in {source} ({split.found} image(s) with a class "
                            f"of labels.classes = {list(config.classes)}, {len(bad)} skipped){listed}")
        raise DataError(f"data.splits.{name}.images: no usable image file ({', '.join(IMAGE_SUFFIXES)}) in "
                        f"{source} ({split.found} found, {len(bad)} skipped){listed}")


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


def _scan_annotations(config: Config, name: str, annotations_path: Path) -> AnnotationScan:
    """Parse, index and select one split's annotations and check each candidate's annotations (no file I/O
    besides the JSON: this is the part the index cache keeps)."""
    annotations_key = _split_key(name, "annotations")
    dataset = _read_annotations(annotations_path, key=annotations_key)
    images = _images_by_id(dataset, key=annotations_key, source=annotations_path)
    category_names = _category_names(dataset, key=annotations_key, source=annotations_path)
    class_of_category = _target_category_ids(config, dataset["categories"], key=annotations_key,
                                             source=annotations_path)
    annotations_of: dict[Any, list[dict]] = {}  # image id → its annotations, in file order
    with_class: set = set()  # images with an annotation of a target class
    ignored: list[str] = []
    for position, annotation in enumerate(dataset["annotations"]):
        if not isinstance(annotation, dict):
            raise DataError(f"{annotations_key}: {annotations_path}: annotations[{position}] is not an object "
                            f"(got {str(annotation)[:80]})")
        image_id = annotation.get("image_id")
        owned = annotations_of.get(image_id)
        if owned is None:
            if image_id not in images:
                ignored.append(f"annotation {annotation.get('id')} refers to image id {image_id!r}, which is not in "
                               f"'images'")
                continue
            owned = annotations_of[image_id] = []
        owned.append(annotation)
        if annotation.get("category_id") in class_of_category:
            with_class.add(image_id)
    background_only = sorted(set(images) - with_class)
    keep = sorted(with_class | set(_evenly_spaced(background_only, round(config.background_share * len(with_class)))))
    candidates = []
    for image_id in keep:
        image = images[image_id]
        annotations = tuple(annotations_of.get(image_id, ()))
        problem = None
        for annotation in annotations:
            problem = _annotation_problem(annotation, image, category_names)
            if problem is not None:
                break
        candidates.append(Candidate(image_id, str(image.get("file_name", "")), image.get("width"),
                                    image.get("height"), problem, annotations))
    return AnnotationScan(category_names, class_of_category, ignored, candidates)


def load_labeled_split(config: Config, name: str, *, data_root: Path) -> SplitData:
    """Select and validate one annotated split (training or validation); the annotation side comes from the
    index cache when the file and the config are unchanged since it was built."""
    paths = config.splits[name]
    annotations_key = _split_key(name, "annotations")
    annotations_path = data_root / paths.annotations
    images_dir = data_root / paths.images
    listing = _list_folder(images_dir, key=_split_key(name, "images"))
    memo = FileCheckMemo(images_dir)

    def check_every_image() -> None:  # while a child process parses the annotations: the checks land in the memo
        for file_name in listing:
            if file_name.lower().endswith(IMAGE_SUFFIXES):
                _check_file(images_dir, file_name, listing, memo)

    scan = cached_scan(config, annotations_path, lambda: _scan_annotations(config, name, annotations_path),
                       while_building=check_every_image)
    if scan.ignored and config.on_bad_sample == "error":
        raise DataError(f"{annotations_key}: {annotations_path}: {len(scan.ignored)} annotation(s) refer to no "
                        f"image, e.g. {scan.ignored[0]}. Set on_bad_sample: skip to ignore (and list) them.")
    for line in scan.ignored:
        logger.warning("%s: %s", annotations_path, line)

    records: dict[str, SampleRecord] = {}
    bad: list[BadSample] = []
    for candidate in scan.candidates:
        sample_id = str(candidate.image_id)
        path, check = _check_file(images_dir, candidate.file_name, listing, memo)
        problem = check.problem
        image = {"width": candidate.width, "height": candidate.height}
        if problem is None and not (isinstance(candidate.width, int) and isinstance(candidate.height, int)):
            problem = "image entry has no integer width/height"
        if problem is None:
            problem = _size_problem(check, image)
        problem = problem or candidate.problem
        if problem is not None:
            bad.append(BadSample(sample_id, path, problem))
        records[sample_id] = SampleRecord(sample_id=sample_id, file=path, image_id=candidate.image_id,
                                          width=candidate.width, height=candidate.height,
                                          annotation_source=candidate.annotations)
    memo.save(listing)
    split = SplitData(name=name, labeled=True, config=config, records=records,
                      class_of_category=scan.class_of_category, category_names=scan.category_names,
                      found=len(scan.candidates), ignored_annotations=scan.ignored,
                      annotations_path=annotations_path, images_dir=images_dir)
    _settle(split, bad, source=str(annotations_path))
    return split


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
    memo = FileCheckMemo(folder)
    records: dict[str, SampleRecord] = {}
    bad: list[BadSample] = []
    names = sorted(n for n, e in listing.items() if n.lower().endswith(IMAGE_SUFFIXES) and not e.is_dir())
    for file_name in names:
        sample_id = unlabeled_sample_id(file_name)
        path, check = _check_file(folder, file_name, listing, memo)
        problem = check.problem
        if sample_id in records:
            problem = f"sample id {sample_id} already used by {records[sample_id].path.name}"
            sample_id = file_name
        if problem is not None:
            bad.append(BadSample(sample_id, path, problem))
        records[sample_id] = SampleRecord(sample_id=sample_id, file=path)
    memo.save(listing)
    split = SplitData(name="unlabeled", labeled=False, config=config, records=records, class_of_category={},
                      category_names={}, found=len(names), images_dir=folder)
    _settle(split, bad, source=str(folder))
    return split


# --- the bad-sample report ----------------------------------------------------------------------------------------

def report_path_for(config: Config, split_name: str) -> Path:
    return config.reports_dir / f"bad_samples_{split_name}.json"


def bad_sample_report(split: SplitData) -> dict[str, Any]:
    """The JSON-ready report of a split: counts (kept + skipped = found in skip mode; kept + refused = found in
    error mode) and every left-out sample with its file and reason."""
    return {
        "version": REPORT_VERSION,
        "split": split.name,
        "annotations": None if split.annotations_path is None else str(split.annotations_path),
        "images": None if split.images_dir is None else str(split.images_dir),
        "on_bad_sample": split.config.on_bad_sample,
        "found": split.found,
        "kept": split.kept,
        "served": len(split.records),  # kept, after sample_limit_per_split
        "skipped": [bad.as_json() for bad in split.skipped],
        "refused": [bad.as_json() for bad in split.refused],
        "ignored_annotations": list(split.ignored_annotations),
        "failed_at_decode": [bad.as_json() for bad in split.failed_at_decode.values()],
    }


@contextlib.contextmanager
def _report_file_lock(path: Path):
    """Exclusive lock on ``.<report>.lock`` beside the report: engine workers in other processes append too."""
    with _REPORT_LOCK:
        if fcntl is None:
            yield
            return
        with open(path.parent / f".{path.name}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


def write_bad_sample_report(split: SplitData) -> Optional[Path]:
    """Write the split's report (preprocess time); returns its path, or None when the default folder is not
    writable (a warning says so). A ``reports_dir`` the user chose that cannot be written is a DataError."""
    path = report_path_for(split.config, split.name)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with _report_file_lock(path):
            _write_json_atomically(path, bad_sample_report(split))
    except OSError as error:
        if split.config.reports_dir_setting is not None:
            raise DataError(f"reports_dir: cannot write the bad-sample report {path}: {error.strerror or error} "
                            f"(set in {split.config.source})") from None
        if os.environ.get(REPORTS_DIR_ENV_VAR):
            raise DataError(f"${REPORTS_DIR_ENV_VAR}: cannot write the bad-sample report {path}: "
                            f"{error.strerror or error}") from None
        logger.warning("cannot write the bad-sample report %s (%s); set reports_dir in the config to a writable "
                       "folder. The skipped samples are in this log only.", path, error.strerror or error)
        return None
    split.report_path = path
    return path


def record_decode_failure(split: SplitData, bad: BadSample) -> bool:
    """Note that an accepted sample failed to decode: log one warning and add it to the split's report.

    Returns False when the sample was already recorded (by this process). Never raises: it runs inside the
    engine's per-sample calls, where an exception would end the run. Failures recorded by other processes (engine
    workers) are kept: the report on disk is merged, not overwritten.
    """
    with _REPORT_LOCK:
        if bad.sample_id in split.failed_at_decode:
            return False
        split.failed_at_decode[bad.sample_id] = bad
    path = split.report_path
    logger.warning("split %s, sample %s (%s) cannot be decoded: %s. It is served as a placeholder (black image, "
                   "ignored ground truth, metadata missing)%s", split.name, bad.sample_id, bad.file, bad.reason,
                   f" and listed in {path}" if path is not None else "")
    if path is None:
        return True
    try:
        with _report_file_lock(path):
            report = bad_sample_report(split)
            try:
                on_disk = json.loads(path.read_text())
            except (OSError, ValueError):
                on_disk = {}
            if on_disk.get("split") == report["split"] and on_disk.get("annotations") == report["annotations"]:
                listed = {entry["sample_id"] for entry in report["failed_at_decode"]}
                report["failed_at_decode"] += [entry for entry in on_disk.get("failed_at_decode", [])
                                               if isinstance(entry, dict) and entry.get("sample_id") not in listed]
            _write_json_atomically(path, report)
    except Exception as error:  # noqa: BLE001 — a report that cannot be updated must not stop the engine
        logger.warning("cannot update the bad-sample report %s: %s", path, error)
    return True


def resolve_data_root(config: Config) -> Path:
    """``data.root``, or the generated sample dataset (made on first use) when it is null."""
    if config.data_root is not None:
        if not config.data_root.is_dir():
            raise DataError(f"data.root: folder {config.data_root} does not exist (set in {config.source})")
        return config.data_root
    try:
        from coco_seg.sample_data import ensure_generated_sample
    except ImportError:  # the Tensorleap bundle (leap.yaml) leaves the generator out: real data only there
        raise DataError(f"data.root is not set in {config.source}: set it to the folder holding the COCO data "
                        f"(on the Tensorleap platform, a folder on its data volume)") from None
    return ensure_generated_sample()


def load_splits(config: Config) -> dict[str, SplitData]:
    """Every configured split, training and validation first."""
    data_root = resolve_data_root(config)
    splits = {name: load_labeled_split(config, name, data_root=data_root) for name in ("training", "validation")}
    if "unlabeled" in config.splits:
        splits["unlabeled"] = load_unlabeled_split(config, data_root=data_root)
    return splits
