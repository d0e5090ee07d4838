"""Damaged and unusual COCO data nobody here wrote: each case asserts exactly what comes out.

Every annotation-level case adds (or edits) one annotation of the first training image that holds a person or a car,
then loads the split twice: with ``on_bad_sample: error`` the DataError must name the split, the sample id, the
file, the annotation id and the field; with ``skip`` exactly that sample is left out and listed with the same reason,
and every other sample is kept.
"""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from coco_seg import index_cache
from coco_seg.annotation_checks import AREA_KEY, MAX_POLYGON_COORDINATES, polygon_fault
from coco_seg.coco_data import DataError, load_labeled_split, load_unlabeled_split
from coco_seg.config import REPORTS_DIR_ENV_VAR, load_config
from coco_seg.masks import AnnotationError, class_unions
from _support import REAL_SAMPLE, REAL_SPLITS, REPO_ROOT, data_tree, requires_real_sample, subprocess_env, write_config

ANNOTATIONS = Path("annotations") / "instances_train2017.json"


@pytest.fixture
def editable(tmp_path, generated_root, monkeypatch) -> Path:
    monkeypatch.setenv(REPORTS_DIR_ENV_VAR, str(tmp_path / "reports"))
    root = tmp_path / "coco"
    shutil.copytree(generated_root, root)
    return root


def read(root: Path) -> dict:
    return json.loads((root / ANNOTATIONS).read_text())


def write(root: Path, dataset: dict) -> None:
    (root / ANNOTATIONS).write_text(json.dumps(dataset))  # json writes NaN / Infinity tokens, as some exporters do


def load(tmp_path: Path, root: Path, **extra):
    config = load_config(write_config(tmp_path, data_tree(root) | extra, name=f"config-{len(extra)}.yaml"))
    return load_labeled_split(config, "training", data_root=config.data_root)


def target_image(dataset: dict) -> dict:
    with_class = {a["image_id"] for a in dataset["annotations"] if a["category_id"] in (1, 3)}
    return min((i for i in dataset["images"] if i["id"] in with_class), key=lambda i: i["id"])


def square(image: dict, *, x: float = 2, y: float = 2, size: float = 10) -> list[float]:
    return [x, y, x + size, y, x + size, y + size, x, y + size]


def added(**fields):
    """An edit that adds one person annotation (id 90001) with ``fields`` to the target image."""
    def edit(dataset: dict, image: dict) -> None:
        annotation = {"id": 90001, "image_id": image["id"], "category_id": 1, "iscrowd": 0,
                      "segmentation": [square(image)], "area": 100.0, "bbox": [2, 2, 10, 10]}
        for key, value in fields.items():
            if value is DELETE:
                annotation.pop(key)
            else:
                annotation[key] = value(image) if callable(value) else value
        dataset["annotations"].append(annotation)
    return edit


DELETE = object()
W = lambda image: image["width"]  # noqa: E731
RLE_COUNTS = lambda image: [image["width"] * image["height"]]  # noqa: E731 — one run of zeros: valid, empty

# (case id, edit, the fault the message must hold); each fault names annotation 90001 and its field
ANNOTATION_CASES = [
    ("nan-coordinate", added(segmentation=[[2, 2, float("nan"), 2, 12, 12]]), "a polygon holds NaN or Infinity"),
    ("infinity-coordinate", added(segmentation=[[2, 2, float("inf"), 2, 12, 12]]), "a polygon holds NaN or Infinity"),
    ("minus-infinity", added(segmentation=[[2, 2, 12, float("-inf"), 12, 12]]), "a polygon holds NaN or Infinity"),
    ("magnitude-1e8", added(segmentation=[[2, 2, 1e8, 2, 1e8, 1e8]]), "more than one image size beyond"),
    ("magnitude-1e7-negative", added(segmentation=[[-1e7, 2, 12, 2, 12, 12]]), "more than one image size beyond"),
    ("wholly-outside-right", added(segmentation=lambda i: [[i["width"] + 5, 2, i["width"] + 20, 2,
                                                            i["width"] + 20, 12]]), "lies wholly outside"),
    ("wholly-outside-above", added(segmentation=[[2, -30, 12, -30, 12, -5]]), "lies wholly outside"),
    ("normalised-0-1", added(segmentation=[[0.1, 0.1, 0.4, 0.1, 0.4, 0.5, 0.1, 0.5]]), "looks normalised to 0-1"),
    ("collinear", added(segmentation=[[2, 2, 6, 6, 10, 10, 14, 14]]), "no area inside the image"),
    ("one-point-repeated", added(segmentation=[[5, 5, 5, 5, 5, 5]]), "no area inside the image"),
    ("odd-coordinate-count", added(segmentation=[[2, 2, 12, 2, 12, 12, 2]]), "odd number of coordinates (7)"),
    ("two-points", added(segmentation=[[2, 2, 12, 12]]), "a polygon has 2 point(s); at least 3 are needed"),
    ("empty-polygon", added(segmentation=[[]]), "a polygon has 0 point(s)"),
    ("triple-nested", added(segmentation=[[[2, 2], [12, 2], [12, 12]]]), "holds a nested list"),
    ("string-coordinates", added(segmentation=[["2", "2", "12", "2", "12", "12"]]), "holds str '2'"),
    ("boolean-coordinates", added(segmentation=[[True, 2, 12, 2, 12, 12]]), "holds bool"),
    ("none-coordinate", added(segmentation=[[None, 2, 12, 2, 12, 12]]), "holds NoneType"),
    ("too-many-points", added(segmentation=lambda i: [[5.0, 5.0] * (MAX_POLYGON_COORDINATES // 2 + 1)]),
     f"coordinates (at most {MAX_POLYGON_COORDINATES} are accepted)"),
    ("segmentation-string", added(segmentation="2 2 12 2 12 12"), "must be a list of polygons or an RLE, got str"),
    ("segmentation-empty-list", added(segmentation=[]), "field 'segmentation' is missing or empty"),
    ("segmentation-missing", added(segmentation=DELETE), "field 'segmentation' is missing or empty"),
    ("category-id-string", added(category_id="1"), "field 'category_id' must be an integer, got str '1'"),
    ("category-id-bool", added(category_id=True), "field 'category_id' must be an integer, got bool"),
    ("category-id-float", added(category_id=1.0), "field 'category_id' must be an integer, got float"),
    ("category-id-unknown", added(category_id=999), "field 'category_id': unknown category id 999"),
    ("iscrowd-string-zero", added(iscrowd="0"), "field 'iscrowd' must be 0 or 1, got str '0'"),
    ("iscrowd-two", added(iscrowd=2), "field 'iscrowd' must be 0 or 1, got int '2'"),
    ("iscrowd-none", added(iscrowd=None), "field 'iscrowd' must be 0 or 1, got NoneType"),
    ("annotation-id-string", added(id="abc"), "field 'id' must be an integer, got str"),
    ("annotation-id-missing", added(id=DELETE), "field 'id' must be an integer, got NoneType"),
    ("rle-size-mismatch", added(iscrowd=1, segmentation={"size": [3, 3], "counts": [9]}), "the RLE is of size [3, 3]"),
    ("rle-size-not-a-list", added(iscrowd=1, segmentation={"size": "10x10", "counts": [100]}),
     "an RLE needs 'size': [height, width]"),
    ("rle-negative-run", added(iscrowd=1, segmentation=lambda i: {"size": [i["height"], i["width"]],
                                                                   "counts": [-1, i["width"] * i["height"] + 1]}),
     "uncompressed RLE counts must be non-negative integers"),
    ("rle-runs-short", added(iscrowd=1, segmentation=lambda i: {"size": [i["height"], i["width"]], "counts": [5, 5]}),
     "the RLE runs cover 10 pixels"),
    ("rle-counts-int", added(iscrowd=1, segmentation=lambda i: {"size": [i["height"], i["width"]], "counts": 7}),
     "RLE counts must be a list of integers or a compressed string, got int"),
    ("rle-compressed-garbage", added(iscrowd=1, segmentation=lambda i: {"size": [i["height"], i["width"]],
                                                                         "counts": "\x01\x02"}),
     "the compressed RLE cannot be read"),
]


def refused(tmp_path: Path, root: Path, edit) -> tuple[dict, dict, str]:
    """Apply ``edit(dataset, target image)``; the target image, the edited dataset and the error-mode message."""
    dataset = read(root)
    image = target_image(dataset)
    edit(dataset, image)
    write(root, dataset)
    with pytest.raises(DataError) as error:
        load(tmp_path, root)
    return image, dataset, str(error.value)


@pytest.mark.parametrize("case, edit, fault", ANNOTATION_CASES, ids=[c[0] for c in ANNOTATION_CASES])
def test_a_bad_annotation_is_refused_naming_sample_file_annotation_and_field(tmp_path, editable, case, edit, fault):
    image, _, message = refused(tmp_path, editable, edit)
    annotation = "annotation 'abc'" if case == "annotation-id-string" else (
        "annotation None" if case == "annotation-id-missing" else "annotation 90001")
    assert message.startswith("data.splits.training: 1 bad sample(s) in ")
    assert f"sample {image['id']} (" in message and image["file_name"] in message
    assert f"{annotation}: field '" in message and fault in message, message
    split = load(tmp_path, editable, on_bad_sample="skip")
    assert [(bad.sample_id, fault in bad.reason) for bad in split.skipped] == [(str(image["id"]), True)]
    assert str(image["id"]) not in split.records and len(split.records) == split.found - 1
    report = json.loads(Path(split.report_path).read_text())
    assert [entry["sample_id"] for entry in report["skipped"]] == [str(image["id"])]


def test_every_fault_of_a_sample_is_listed_capped_and_every_sample_is_in_the_report(tmp_path, editable):
    dataset = read(editable)
    images = sorted({a["image_id"] for a in dataset["annotations"] if a["category_id"] in (1, 3)})[:7]
    for offset, image_id in enumerate(images):
        dataset["annotations"].append({"id": 91000 + offset, "image_id": image_id, "category_id": "1",
                                       "segmentation": [[1, 1, 2, 2]]})
    first = images[0]
    for extra in range(3):  # 3 more bad annotations on the first image: 5 faults of 2 kinds there
        dataset["annotations"].append({"id": 92000 + extra, "image_id": first, "category_id": 1, "iscrowd": "no",
                                       "segmentation": [[1, 1, 2, 2]]})
    write(editable, dataset)
    with pytest.raises(DataError) as error:
        load(tmp_path, editable)
    message = str(error.value)
    assert message.startswith("data.splits.training: 7 bad sample(s)") and "... and 2 more" in message
    first_line = next(line for line in message.splitlines() if f"sample {first} (" in line)
    # one sample's reason: its first 3 faults, then the count of the others; both kinds are there
    assert "field 'category_id' must be an integer" in first_line and "a polygon has 2 point(s)" in first_line
    assert "more fault(s)" in first_line
    report = json.loads((tmp_path / "reports" / "bad_samples_training.json").read_text())
    assert sorted(int(entry["sample_id"]) for entry in report["refused"]) == images


def image_case(edit_image):
    def edit(dataset: dict, image: dict) -> None:
        entry = next(i for i in dataset["images"] if i["id"] == image["id"])
        edit_image(entry, dataset)
    return edit


def duplicate_entry(entry: dict, dataset: dict) -> None:
    dataset["images"].append(dict(entry, file_name="someone_else.jpg"))


IMAGE_CASES = [
    ("duplicate-image-id", image_case(duplicate_entry), "appears 2 times in 'images'"),
    ("width-string", image_case(lambda e, d: e.update(width=str(e["width"]))),
     "fields 'width'/'height' must be positive integers"),
    ("height-zero", image_case(lambda e, d: e.update(height=0)), "fields 'width'/'height' must be positive integers"),
    ("width-negative", image_case(lambda e, d: e.update(width=-e["width"])),
     "fields 'width'/'height' must be positive integers"),
    ("width-float", image_case(lambda e, d: e.update(width=float(e["width"]))),
     "fields 'width'/'height' must be positive integers"),
    ("file-name-missing", image_case(lambda e, d: e.pop("file_name")), "field 'file_name' must be a non-empty string"),
    ("file-name-number", image_case(lambda e, d: e.update(file_name=123)),
     "field 'file_name' must be a non-empty string"),
    ("huge-size", image_case(lambda e, d: e.update(width=100_000, height=100_000)), "more than 200,000,000 pixels"),
    ("duplicate-annotation-id", lambda d, image: d["annotations"].append(
        dict(next(a for a in d["annotations"] if a["image_id"] == image["id"]))), "is used by 2 annotations"),
]


@pytest.mark.parametrize("case, edit, fault", IMAGE_CASES, ids=[c[0] for c in IMAGE_CASES])
def test_a_bad_image_entry_is_refused_or_listed(tmp_path, editable, case, edit, fault):
    image, _, message = refused(tmp_path, editable, edit)
    assert f"sample {image['id']} (" in message and fault in message, message
    split = load(tmp_path, editable, on_bad_sample="skip")
    assert [bad.sample_id for bad in split.skipped] == [str(image["id"])] and fault in split.skipped[0].reason
    assert len(split.records) == split.found - 1


@pytest.mark.parametrize("case, edit, fault", [
    ("annotation-image-id-string", lambda d, image: d["annotations"].append(
        {"id": 93001, "image_id": str(image["id"]), "category_id": 1, "segmentation": [[1, 1, 9, 1, 9, 9]]}),
     "annotation 93001 (annotations[{position}]) refers to image id '{image_id}', which is not an image"),
    ("annotation-without-image-id", lambda d, image: d["annotations"].append(
        {"id": 93002, "category_id": 1, "segmentation": [[1, 1, 9, 1, 9, 9]]}),
     "annotation 93002 (annotations[{position}]) refers to image id None"),
    ("annotation-not-an-object", lambda d, image: d["annotations"].append([1, 2, 3]),
     "annotations[{position}] is not an object"),
    ("image-id-string", lambda d, image: d["images"].append(dict(image, id="x1")),
     "images[{image_position}]: field 'id' must be an integer, got str 'x1'"),
], ids=lambda value: value if isinstance(value, str) and "-" in value and " " not in value else "")
def test_entries_of_no_usable_image_are_refused_or_ignored_and_listed(tmp_path, editable, case, edit, fault):
    image, dataset, message = refused(tmp_path, editable, edit)
    expected = fault.format(position=len(dataset["annotations"]) - 1, image_position=len(dataset["images"]) - 1,
                            image_id=image["id"])
    assert "entries that belong to no image" in message and f"ignored: {expected}" in message
    split = load(tmp_path, editable, on_bad_sample="skip")
    assert not split.skipped and any(expected in line for line in split.ignored_annotations)
    report = json.loads(Path(split.report_path).read_text())
    assert any(expected in line for line in report["ignored_annotations"])


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["categories"].append(dict(d["categories"][0], name="duplicate")), "category id 1 is given twice"),
    (lambda d: d["categories"].append({"id": 999, "name": "person", "supercategory": "person"}),
     "category name 'person' is given twice (categories[0] and categories["),
    (lambda d: d["categories"].append({"id": 998}), "has no name"),
    (lambda d: d["categories"].append({"id": "997", "name": "x"}), "is not a category with an integer 'id'"),
])
def test_a_category_table_that_cannot_be_trusted_refuses_the_file(tmp_path, editable, edit, message):
    dataset = read(editable)
    edit(dataset)
    write(editable, dataset)
    for policy in ("error", "skip"):  # no sample can be trusted: skip mode cannot help
        with pytest.raises(DataError, match=r"data\.splits\.training\.annotations: .*instances_train2017\.json: "):
            load(tmp_path, editable, on_bad_sample=policy)
        with pytest.raises(DataError) as error:
            load(tmp_path, editable, on_bad_sample=policy)
        assert message in str(error.value)


def kept_annotation(tmp_path: Path, root: Path, **fields) -> tuple[dict, dict]:
    dataset = read(root)
    image = target_image(dataset)
    added(**fields)(dataset, image)
    write(root, dataset)
    split = load(tmp_path, root)
    annotation = next(a for a in split.records[str(image["id"])].annotations if a.get("id") == 90001)
    return image, annotation


@pytest.mark.parametrize("area", [DELETE, "a lot", -5.0, 0.0, float("nan"), 1e30])
def test_the_files_area_is_never_read_the_geometry_is(tmp_path, editable, area):
    """`area` is optional in many exporters and sometimes wrong: a valid polygon is kept whatever it says."""
    _, annotation = kept_annotation(tmp_path, editable, area=area)
    assert annotation[AREA_KEY] == 100.0  # the 10 x 10 square


def test_a_polygon_crossing_the_border_is_kept_and_its_area_is_the_part_inside(tmp_path, editable):
    image, annotation = kept_annotation(tmp_path, editable,
                                        segmentation=lambda i: [[-10, 2, 10, 2, 10, 12, -10, 12]])
    assert annotation[AREA_KEY] == pytest.approx(100.0)  # 20 x 10, half of it left of x = 0


def test_a_clipped_polygon_masks_what_pycocotools_masks_inside_the_image(editable):
    polygon = [-20.0, -10.0, 30.0, 5.0, 12.0, 30.0]  # a triangle crossing three borders of a 24 x 18 image
    fault, area, _ = polygon_fault(polygon, width=24, height=18)
    unions = class_unions([{"category_id": 1, "segmentation": [polygon]}], height=18, width=24,
                          class_of_category={1: 1})
    from pycocotools import mask as mask_utils

    assert fault is None and abs(float(mask_utils.area(unions[1])) - area) < 0.1 * area


@pytest.mark.parametrize("polygon", [[0, 0, float("nan"), 0, 5, 5], [0, 0, 1e8, 0, 1e8, 1e8], [0, 0, 3e9, 0, 5, 5]])
def test_the_rasteriser_refuses_what_preprocess_would_have_refused(polygon):
    """Whatever reaches the per-sample path (a stale cache, a direct caller): no allocation by coordinate value."""
    with pytest.raises(AnnotationError, match="annotation 7: a polygon"):
        class_unions([{"id": 7, "category_id": 1, "segmentation": [polygon]}], height=100, width=100,
                     class_of_category={1: 1})


MEMORY_SCRIPT = r"""
import json, sys
from coco_seg.config import load_config
from coco_seg.coco_data import load_labeled_split
from coco_seg.encoders import encode_image, encode_mask, sample_metadata
from coco_seg.masks import AnnotationError, class_unions
from coco_seg.samples import CACHE

config = load_config(sys.argv[1])
split = load_labeled_split(config, "training", data_root=config.data_root)
for sample_id in split.sample_ids:
    encode_image(split, sample_id); encode_mask(split, sample_id); sample_metadata(split, sample_id)
refused = 0
for polygon in ([0, 0, 1e8, 0, 1e8, 1e8], [0, 0, float("inf"), 0, 5, 5], [0, 0, float("nan"), 1, 5, 5],
                [-1e8, -1e8, 1e8, -1e8, 1e8, 1e8, -1e8, 1e8]):
    try:
        class_unions([{"id": 1, "category_id": 1, "segmentation": [polygon]}], height=480, width=640,
                     class_of_category={1: 1})
    except AnnotationError:
        refused += 1
# VmHWM is this program's own peak; getrusage's ru_maxrss survives exec and would report the forking parent's
peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")) / 1024
print("RESULT", json.dumps({"served": len(split.sample_ids), "skipped": len(split.skipped), "refused": refused,
                            "peak_mib": peak}))
"""


def test_nan_inf_and_huge_coordinates_cannot_grow_a_process(tmp_path, editable):
    dataset = read(editable)
    with_class = sorted({a["image_id"] for a in dataset["annotations"] if a["category_id"] in (1, 3)})
    for offset, (image_id, polygon) in enumerate(zip(with_class, (
            [0, 0, float("nan"), 0, 50, 50], [0, 0, float("inf"), 0, 50, 50], [0, 0, 1e8, 0, 1e8, 1e8],
            [-1e7, 5, 3e7, 5, 3e7, 4e7], [1e8, 1e8, 2e8, 1e8, 2e8, 2e8]))):
        dataset["annotations"].append({"id": 94000 + offset, "image_id": image_id, "category_id": 1, "iscrowd": 0,
                                       "segmentation": [polygon]})
    write(editable, dataset)
    config = write_config(tmp_path, data_tree(editable) | {"on_bad_sample": "skip"})
    process = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(config)], cwd=REPO_ROOT, capture_output=True,
                             text=True, timeout=600, env=subprocess_env(
                                 **{REPORTS_DIR_ENV_VAR: str(tmp_path / "reports")}))
    line = next((l for l in process.stdout.splitlines() if l.startswith("RESULT ")), None)
    assert line is not None, process.stdout + process.stderr
    result = json.loads(line.removeprefix("RESULT "))
    assert result["skipped"] == 5 and result["refused"] == 4 and result["served"] == len(with_class) - 5
    assert result["peak_mib"] < 500, result


@pytest.mark.parametrize("damage", ["duplicate-category-name", "annotation-image-id-string", "category-id-string"])
def test_the_forked_parse_reports_exactly_what_the_in_process_parse_reports(tmp_path, editable, monkeypatch, damage):
    dataset = read(editable)
    image = target_image(dataset)
    if damage == "duplicate-category-name":
        dataset["categories"].append({"id": 999, "name": "person"})
    elif damage == "annotation-image-id-string":
        dataset["annotations"].append({"id": 93001, "image_id": str(image["id"]), "category_id": 1,
                                       "segmentation": [[1, 1, 9, 1, 9, 9]]})
        dataset["images"].append(dict(image, id="mixed-" + str(image["id"])))
    else:
        added(category_id="1")(dataset, image)
    write(editable, dataset)
    messages = []
    for in_process in ("0", "1"):
        monkeypatch.setenv(index_cache.IN_PROCESS_ENV_VAR, in_process)
        monkeypatch.setenv(index_cache.CACHE_DIR_ENV_VAR, str(tmp_path / f"cache-{in_process}"))
        with pytest.raises(DataError) as error:
            load(tmp_path, editable)
        messages.append(str(error.value))
    assert messages[0] == messages[1] and "data.splits.training" in messages[0]


def test_an_edit_that_keeps_size_and_mtime_is_not_served_from_the_stale_index(tmp_path, editable, monkeypatch):
    monkeypatch.setenv(index_cache.CACHE_DIR_ENV_VAR, str(tmp_path / "cache"))
    path = editable / ANNOTATIONS
    dataset = read(editable)
    write(editable, dataset)  # json.dumps layout, so that the edit below can be made in place
    before = load(tmp_path, editable)
    victim = target_image(dataset)["id"]
    text = path.read_text()
    stat = path.stat()
    # Same length, same mtime: the first annotation of the first class image becomes a bus (category 6).
    first = next(a for a in dataset["annotations"] if a["image_id"] == victim and a["category_id"] in (1, 3))
    entry = json.dumps(first)
    assert text.count(entry) == 1
    edited = text.replace(entry, entry.replace(f'"category_id": {first["category_id"]}', '"category_id": 6'))
    assert edited != text and len(edited) == len(text)
    path.write_text(edited)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns
    after = load(tmp_path, editable)
    served = [a["category_id"] for i in after.sample_ids for a in after.records[i].annotations
              if a["id"] == first["id"]]
    assert served in ([6], [])  # the new content (a bus), or the image left out as background-only: never the old
    original = [a["category_id"] for i in before.sample_ids for a in before.records[i].annotations
                if a["id"] == first["id"]]
    assert original == [first["category_id"]]


def test_unlabeled_appledouble_and_hidden_files_are_not_samples_and_clashing_ids_both_stay(tmp_path, generated_root):
    folder = tmp_path / "coco" / "unlabeled"
    folder.mkdir(parents=True)
    source = sorted((generated_root / "val2017").iterdir())[:2]
    shutil.copy(source[0], folder / "000000000139.jpg")
    (folder / "._000000000139.jpg").write_bytes(b"\x00\x05\x16\x07" + bytes(4000))  # macOS AppleDouble companion
    (folder / ".hidden.jpg").write_bytes(source[1].read_bytes())
    shutil.copy(source[1], folder / "000000000777.jpg")
    shutil.copy(source[1], folder / "777.png")  # same id as 000000000777.jpg once the padding goes
    tree = {"data": {"root": str(tmp_path / "coco"), "splits": {"unlabeled": {"images": "unlabeled"}}},
            "reports_dir": str(tmp_path / "reports")}
    config = load_config(write_config(tmp_path, tree))
    split = load_unlabeled_split(config, data_root=config.data_root)
    assert split.sample_ids == ["139", "000000000777.jpg", "777.png"]
    assert Path(split.records["139"].file).name == "000000000139.jpg" and not split.skipped and split.found == 3


@pytest.mark.parametrize("mode", ["category", "supercategory"])
@pytest.mark.parametrize("source", ["generated", pytest.param("real", marks=requires_real_sample)])
def test_nothing_valid_is_refused(tmp_path, generated_root, mode, source):
    """The same samples as pycocotools' own reading of the file: every image with an annotation of a class."""
    from pycocotools.coco import COCO

    tree = data_tree(generated_root) if source == "generated" else data_tree(REAL_SAMPLE, splits=REAL_SPLITS)
    config = load_config(write_config(tmp_path, tree | {"labels": {"mode": mode}}))
    for name in ("training", "validation"):
        split = load_labeled_split(config, name, data_root=config.data_root)
        coco = COCO(str(config.data_root / config.splits[name].annotations))
        expected = sorted({a["image_id"] for a in coco.dataset["annotations"]
                           if a["category_id"] in split.class_of_category})
        assert split.sample_ids == [str(i) for i in expected] and not split.skipped and not split.ignored_annotations
        for sample_id in split.sample_ids:
            for annotation in split.records[sample_id].annotations:
                if isinstance(annotation["segmentation"], list):  # COCO's polygon area is the shoelace area
                    assert annotation[AREA_KEY] == pytest.approx(annotation["area"], rel=1e-9)
                else:
                    assert math.isfinite(annotation[AREA_KEY]) and annotation[AREA_KEY] >= 0


def test_a_jpeg_garbled_in_its_middle_is_served_as_a_listed_placeholder_not_as_garbage(tmp_path, editable):
    """End to end: preprocess accepts the file (its header and end marker are intact); the engine's per-sample calls
    then get the placeholder, and the sample is listed under failed_at_decode with libjpeg's words."""
    from coco_seg.encoders import encode_image, encode_mask, sample_metadata

    split = load(tmp_path, editable)
    record = split.records[split.sample_ids[0]]
    data = bytearray(Path(record.file).read_bytes())
    scan = data.index(b"\xff\xda")
    middle = scan + (len(data) - scan) // 2
    data[middle:middle + 1000] = np.random.default_rng(0).integers(0, 256, 1000, dtype=np.uint8).tobytes()
    Path(record.file).write_bytes(bytes(data))
    split = load(tmp_path, editable)  # still accepted: the damage is only visible to the decoder
    assert record.sample_id in split.records
    np.testing.assert_array_equal(encode_image(split, record.sample_id), -1.0)  # black placeholder
    assert not encode_mask(split, record.sample_id).any()  # every pixel ignored
    assert sample_metadata(split, record.sample_id)["person_count"] is None
    failure = split.failed_at_decode[record.sample_id]
    assert "the JPEG data is corrupt (libjpeg: Corrupt JPEG data" in failure.reason
    report = json.loads(Path(split.report_path).read_text())
    assert [entry["sample_id"] for entry in report["failed_at_decode"]] == [record.sample_id]


def test_the_batched_polygon_checks_equal_one_polygon_at_a_time():
    """polygon_checks decides the common case with numpy; it must give exactly polygon_fault's answer, bad or not."""
    from coco_seg.annotation_checks import polygon_checks

    rng = np.random.default_rng(7)
    polygons, widths, heights = [], [], []
    kinds = [lambda: rng.uniform(0, 90, 2 * rng.integers(3, 30)).tolist(),  # inside: the fast path
             lambda: rng.uniform(-30, 130, 2 * rng.integers(3, 12)).tolist(),  # crossing the border: clipped
             lambda: [1.0, 1.0, 5.0, 5.0, 9.0, 9.0], lambda: [1, 2, 3], lambda: [1.0, float("nan"), 5, 5, 9, 1],
             lambda: [1, 1, 2e8, 1, 5, 5], lambda: ["1", 1, 5, 5, 9, 1], lambda: [[1, 1], [5, 5], [9, 1]],
             lambda: [0.1, 0.1, 0.9, 0.1, 0.5, 0.9], lambda: [True, 1, 5, 5, 9, 1], lambda: 7,
             lambda: [200.0, 200.0, 300.0, 200.0, 250.0, 260.0]]
    for _ in range(600):
        polygons.append(kinds[int(rng.integers(len(kinds)))]())
        widths.append(int(rng.integers(60, 120)))
        heights.append(int(rng.integers(60, 120)))
    checks = polygon_checks(polygons, widths, heights)
    batched = [checks[i] for i in range(len(polygons))]
    single = [polygon_fault(p, width=w, height=h) for p, w, h in zip(polygons, widths, heights)]
    assert [b[0] for b in batched] == [s[0] for s in single]
    np.testing.assert_allclose([b[1] for b in batched], [s[1] for s in single], rtol=1e-9)
    np.testing.assert_allclose([b[2] for b in batched], [s[2] for s in single], rtol=1e-12)
    assert sum(b[0] is None for b in batched) > 100  # the fast path was exercised


def test_unlabeled_file_names_that_are_not_utf8_are_served_with_printable_ids(tmp_path, generated_root):
    """Linux file names are bytes: a Latin-1 ``café.jpg`` is not UTF-8. Python carries it with a lone surrogate,
    which orjson (the file-check memo) refused with a TypeError that took preprocess down."""
    from coco_seg.encoders import encode_image

    folder = tmp_path / "coco" / "unlabeled"
    folder.mkdir(parents=True)
    source = sorted((generated_root / "val2017").iterdir())[0]
    latin1 = os.fsdecode(os.fsencode(folder) + b"/caf\xe9.jpg")
    shutil.copy(source, latin1)
    shutil.copy(source, folder / "caf\u00e9.jpg")  # the same name in UTF-8: another file, another id
    tree = {"data": {"root": str(tmp_path / "coco"), "splits": {"unlabeled": {"images": "unlabeled"}}},
            "reports_dir": str(tmp_path / "reports")}
    config = load_config(write_config(tmp_path, tree))
    for attempt in ("first", "memo"):  # the second preprocess reads the file-check memo the first one wrote
        split = load_unlabeled_split(config, data_root=config.data_root)
        assert sorted(split.sample_ids) == ["caf\\xe9", "caf\u00e9"], attempt
        assert split.records["caf\\xe9"].file == latin1 and not split.skipped
        for sample_id in split.sample_ids:
            sample_id.encode("utf-8")  # valid text for the engine and for JSON
            np.testing.assert_array_equal(encode_image(split, sample_id), encode_image(split, split.sample_ids[0]))
