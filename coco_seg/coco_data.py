"""COCO splits → the ordered, validated list of samples the binder serves.

A labeled split: its instances file is parsed, validated and selected by coco_seg.annotations (cached by
coco_seg.index_cache, so later runs skip the parse; the first run parses in a child process on Linux while this one
checks every image file of the folder). Every kept image is then checked here, before the engine's per-sample loop:
file name confined to the image folder, file present, non-empty and not truncated, pixel size in the file header
(JPEG/PNG) equal to the annotation's width and height. Samples are ordered by COCO image id and the sample id is the
image id as a string. The unlabeled split is every image file of its folder, ordered by file name.

A bad sample raises :class:`DataError` (``on_bad_sample: error``) or is left out, counted and listed (``on_bad_sample:
skip``): kept + skipped = found, always; ``sample_limit_per_split`` applies last. The policy and the per-split report
are coco_seg.ledger's; the data types are in coco_seg.split_data.
"""

import logging
import os
import re
from pathlib import Path, PurePosixPath
from typing import Optional

from coco_seg.annotations import scan_annotations, split_key
from coco_seg.config import Config
from coco_seg.images import ImageFileCheck, confined_path, inspect_image_file
from coco_seg.index_cache import FileCheckMemo, cached_scan, file_identity
from coco_seg.ledger import settle
from coco_seg.split_data import BadSample, DataError, SampleRecord, SplitData

__all__ = ["BadSample", "DataError", "SampleRecord", "SplitData", "load_labeled_split", "load_splits",
           "load_unlabeled_split", "resolve_data_root", "unlabeled_sample_id"]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
SUFFIX_LIST = ", ".join(IMAGE_SUFFIXES)


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


def load_labeled_split(config: Config, name: str, *, data_root: Path) -> SplitData:
    """Select and validate one annotated split (training or validation); the annotation side comes from the
    index cache when the file and the config are unchanged since it was built."""
    paths = config.splits[name]
    annotations_path = data_root / paths.annotations
    images_dir = data_root / paths.images
    listing = _list_folder(images_dir, key=split_key(name, "images"))
    memo = FileCheckMemo(images_dir)

    def check_every_image() -> None:  # while a child process parses the annotations: the checks land in the memo
        for file_name in listing:
            if file_name.lower().endswith(IMAGE_SUFFIXES):
                _check_file(images_dir, file_name, listing, memo)

    scan = cached_scan(config, annotations_path, lambda: scan_annotations(config, name, annotations_path),
                       while_building=check_every_image)
    if config.on_bad_sample == "skip":
        for line in scan.ignored:
            logger.warning("%s: ignored: %s", annotations_path, line)

    records: dict[str, SampleRecord] = {}
    bad: list[BadSample] = []
    for candidate in scan.candidates:
        sample_id = str(candidate.image_id)
        path, check = _check_file(images_dir, candidate.file_name, listing, memo)
        # Every fault of the sample, the annotation file's first (coco_seg.annotations), then the image file's.
        problems = [candidate.problem, check.problem]
        if not any(problems):  # the sizes are valid integers here: compare them with the file header's
            problems.append(_size_problem(check, {"width": candidate.width, "height": candidate.height}))
        problems = [problem for problem in problems if problem]
        if problems:
            bad.append(BadSample(sample_id, path, "; ".join(problems)))
        records[sample_id] = SampleRecord(sample_id=sample_id, file=path, image_id=candidate.image_id,
                                          width=candidate.width, height=candidate.height,
                                          annotation_source=candidate.annotations)
    memo.save(listing)
    split = SplitData(name=name, labeled=True, config=config, records=records,
                      class_of_category=scan.class_of_category, category_names=scan.category_names,
                      found=len(scan.candidates), ignored_annotations=scan.ignored,
                      annotations_path=annotations_path, images_dir=images_dir)
    settle(split, bad, source=str(annotations_path), empty_hint=SUFFIX_LIST)
    return split


_TRAILING_DIGITS = re.compile(r"(\d+)$")


def unlabeled_sample_id(file_name: str) -> str:
    """COCO file names end in the zero-padded image id (``000000000139.jpg``, ``COCO_test2014_000000000001.jpg``);
    the id without padding is the sample id, as for labeled splits. Other names keep their stem, made printable
    (:func:`printable_name`)."""
    stem = Path(file_name).stem
    match = _TRAILING_DIGITS.search(stem)
    return str(int(match.group(1))) if match else printable_name(stem)


def printable_name(name: str) -> str:
    """A file name as valid UTF-8 text: unchanged when it is; otherwise each byte that is not UTF-8 (which Python
    carries as a lone surrogate, and which orjson, the engine and JSON readers refuse) written as ``\\xNN``."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def load_unlabeled_split(config: Config, *, data_root: Path) -> SplitData:
    """Every image file in ``data.splits.unlabeled.images``, ordered by file name.

    Hidden files (``.name``, among them macOS's AppleDouble ``._name.jpg`` companions, which are not images) are
    not samples. Two files whose names give the same id (``139.jpg`` and ``000000000139.png``) both stay, each
    with its file name as its id, and a warning names them.
    """
    key = split_key("unlabeled", "images")
    folder = data_root / config.splits["unlabeled"].images
    listing = _list_folder(folder, key=key)
    memo = FileCheckMemo(folder)
    records: dict[str, SampleRecord] = {}
    bad: list[BadSample] = []
    names = sorted(n for n, e in listing.items()
                   if n.lower().endswith(IMAGE_SUFFIXES) and not n.startswith(".") and not e.is_dir())
    ids = [unlabeled_sample_id(name) for name in names]
    users: dict[str, list[str]] = {}
    for name, sample_id in zip(names, ids):
        users.setdefault(sample_id, []).append(name)
    for sample_id, clashing in users.items():
        if len(clashing) > 1:
            logger.warning("unlabeled files %s would all be sample %s: each keeps its file name as its id",
                           ", ".join(clashing), sample_id)
    for file_name, sample_id in zip(names, ids):
        if len(users[sample_id]) > 1:
            sample_id = printable_name(file_name)
        path, check = _check_file(folder, file_name, listing, memo)
        if check.problem is not None:
            bad.append(BadSample(sample_id, path, check.problem))
        records[sample_id] = SampleRecord(sample_id=sample_id, file=path)
    memo.save(listing)
    split = SplitData(name="unlabeled", labeled=False, config=config, records=records, class_of_category={},
                      category_names={}, found=len(names), images_dir=folder)
    settle(split, bad, source=str(folder), empty_hint=SUFFIX_LIST)
    return split


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
