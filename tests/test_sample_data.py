"""The generated sample dataset: COCO 2017 layout, masks that match the drawing, determinism, planted defects."""

import hashlib
import json
import math
import os
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

from coco_seg import sample_data
from coco_seg.categories import CATEGORY_BY_ID, CATEGORY_BY_NAME, COCO_CATEGORIES, VEHICLE_TYPES
from coco_seg.sample_data import (COMPLETION_MARKER, SampleSummary, ensure_generated_sample, generated_sample_dir,
                                  make_sample)

SPLITS = {"training": ("annotations/instances_train2017.json", "train2017"),
          "validation": ("annotations/instances_val2017.json", "val2017")}
PERSON, CAR = CATEGORY_BY_NAME["person"].id, CATEGORY_BY_NAME["car"].id
VEHICLE_IDS = {CATEGORY_BY_NAME[name].id for name in VEHICLE_TYPES}


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> SampleSummary:
    return make_sample(tmp_path_factory.mktemp("clean") / "coco", images=48, seed=0)


@pytest.fixture(scope="module")
def defective(tmp_path_factory: pytest.TempPathFactory) -> SampleSummary:
    return make_sample(tmp_path_factory.mktemp("defective") / "coco", images=48, seed=0, plant_defects=0.25)


def document(root: Path, split: str) -> dict:
    return json.loads((root / SPLITS[split][0]).read_text())


def coco(root: Path, split: str) -> COCO:
    return COCO(str(root / SPLITS[split][0]))


def read_image(root: Path, split: str, file_name: str) -> np.ndarray:
    image = cv2.imread(str(root / SPLITS[split][1] / file_name), cv2.IMREAD_UNCHANGED)
    assert image is not None, f"{file_name} does not decode"
    return image


def digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def is_target(annotation: dict) -> bool:
    return annotation["category_id"] == PERSON or annotation["category_id"] in VEHICLE_IDS


def test_layout_split_sizes_and_unique_ids(clean):
    root = clean.out_dir
    assert (clean.training_images, clean.validation_images) == (36, 12)
    image_ids, annotation_ids = [], []
    for split, (annotation_file, folder) in SPLITS.items():
        doc = document(root, split)
        assert set(doc) == {"info", "licenses", "images", "annotations", "categories"}
        expected = clean.training_images if split == "training" else clean.validation_images
        assert len(doc["images"]) == expected
        assert sorted(p.name for p in (root / folder).iterdir()) == sorted(i["file_name"] for i in doc["images"])
        for image in doc["images"]:
            assert image["file_name"] == f"{image['id']:012d}.jpg"
        image_ids += [i["id"] for i in doc["images"]]
        annotation_ids += [a["id"] for a in doc["annotations"]]
    assert len(set(image_ids)) == len(image_ids) == 48
    assert len(set(annotation_ids)) == len(annotation_ids)
    assert clean.training_annotations + clean.validation_annotations == len(annotation_ids)
    assert json.loads((root / "planted_defects.json").read_text()) == {"planted": [], "fraction": 0.0}
    assert clean.planted_defects == 0


def test_categories_are_the_80_real_coco_categories(clean):
    for split in SPLITS:
        doc = document(clean.out_dir, split)
        assert [(c["id"], c["name"], c["supercategory"]) for c in doc["categories"]] == \
            [tuple(c) for c in COCO_CATEGORIES]
        assert len(doc["categories"]) == 80
        assert all(a["category_id"] in CATEGORY_BY_ID for a in doc["annotations"])


def test_every_image_decodes_with_its_annotated_size(clean):
    sizes = []
    for split in SPLITS:
        for image in document(clean.out_dir, split)["images"]:
            pixels = read_image(clean.out_dir, split, image["file_name"])
            assert pixels.shape[:2] == (image["height"], image["width"]), image["file_name"]
            assert 160 <= image["width"] <= 320 and 120 <= image["height"] <= 240
            sizes.append((image["width"], image["height"]))
    assert len(set(sizes)) > 20, "image sizes should vary"
    assert any(w != h for w, h in sizes)


def test_polygon_masks_match_area_bbox_and_the_drawn_object(clean):
    """The written area is COCO's (polygons: their own area, crowd RLEs: their pixels), annToMask of every polygon
    gives the bbox, and those pixels stand out from their ring."""
    kernel = np.ones((3, 3), np.uint8)
    contrasts, polygon_annotations = [], 0
    for split in SPLITS:
        dataset = coco(clean.out_dir, split)
        for image_id, image in dataset.imgs.items():
            pixels = read_image(clean.out_dir, split, image["file_name"]).astype(np.float64)
            pixels = pixels[..., None] if pixels.ndim == 2 else pixels
            annotations = dataset.imgToAnns[image_id]
            anything = np.zeros((image["height"], image["width"]), bool)
            for annotation in annotations:
                anything |= dataset.annToMask(annotation) > 0
            for annotation in annotations:
                mask = dataset.annToMask(annotation)
                if annotation["iscrowd"]:
                    assert mask.sum() == annotation["area"] > 0, annotation["id"]
                    continue
                geometric = sum(0.5 * abs(float(np.dot(xs, np.roll(ys, -1)) - np.dot(ys, np.roll(xs, -1))))
                                for xs, ys in ((np.asarray(p[0::2]), np.asarray(p[1::2]))
                                               for p in annotation["segmentation"]))
                assert annotation["area"] == pytest.approx(geometric, rel=1e-9) and geometric > 0, annotation["id"]
                # the rasterised mask and the geometric area differ by boundary pixels only
                assert abs(mask.sum() - geometric) <= 0.15 * geometric + 4 * np.sqrt(geometric), annotation["id"]
                assert annotation["iscrowd"] == 0
                polygon_annotations += 1
                polygons = annotation["segmentation"]
                assert isinstance(polygons, list) and polygons
                assert all(len(p) >= 6 and len(p) % 2 == 0 and all(isinstance(v, float) for v in p)
                           for p in polygons)
                rows, cols = np.nonzero(mask)
                assert annotation["bbox"] == [cols.min(), rows.min(), cols.max() - cols.min() + 1,
                                              rows.max() - rows.min() + 1]
                inside = cv2.erode(mask, kernel) > 0
                ring = ((cv2.dilate(mask, kernel, iterations=4) > 0) & ~(cv2.dilate(mask, kernel) > 0)
                        & ~anything)
                if inside.sum() < 5 or ring.sum() < 5:
                    continue
                # Mean distance of the object's pixels from the surrounding background colour.
                contrasts.append(np.abs(pixels[inside] - pixels[ring].mean(axis=0)).max(axis=1).mean())
    assert len(contrasts) > 0.8 * polygon_annotations > 0
    assert min(contrasts) > 25, "an annotated object is indistinguishable from its surroundings"


def test_background_pixels_far_from_every_object_are_not_object_colours(clean):
    """The drawing stays inside the annotations: a person-red pixel lies inside or at the edge of a mask."""
    for split in SPLITS:
        dataset = coco(clean.out_dir, split)
        for image_id, image in dataset.imgs.items():
            pixels = read_image(clean.out_dir, split, image["file_name"])
            if pixels.ndim == 2:
                continue
            hsv = cv2.cvtColor(pixels, cv2.COLOR_BGR2HSV)
            # Strongly saturated pixels: only objects are drawn that saturated (backgrounds are muted).
            saturated = (hsv[..., 1] > 190) & (hsv[..., 2] > 80)
            near_objects = np.zeros(saturated.shape, np.uint8)
            for annotation in dataset.imgToAnns[image_id]:
                near_objects |= dataset.annToMask(annotation)
            near_objects = cv2.dilate(near_objects, np.ones((5, 5), np.uint8)) > 0
            assert (saturated & ~near_objects).sum() <= 0.002 * saturated.size, image["file_name"]


def test_each_split_has_a_crowd_rle(clean):
    for split in SPLITS:
        dataset = coco(clean.out_dir, split)
        crowds = [a for a in dataset.anns.values() if a["iscrowd"] == 1]
        assert crowds, f"no crowd annotation in {split}"
        for crowd in crowds:
            image = dataset.imgs[crowd["image_id"]]
            rle = crowd["segmentation"]
            assert isinstance(rle, dict) and isinstance(rle["counts"], list)
            assert rle["size"] == [image["height"], image["width"]]
            assert sum(rle["counts"]) == image["height"] * image["width"]
            assert crowd["category_id"] == PERSON
            assert dataset.annToMask(crowd).sum() == crowd["area"] > 0


def test_each_split_has_grayscale_and_background_only_images(clean):
    for split in SPLITS:
        doc = document(clean.out_dir, split)
        grayscale = [i for i in doc["images"] if read_image(clean.out_dir, split, i["file_name"]).ndim == 2]
        assert grayscale, f"no single-channel image in {split}"
        with_targets = {a["image_id"] for a in doc["annotations"] if is_target(a)}
        background_only = [i for i in doc["images"] if i["id"] not in with_targets]
        assert background_only, f"no background-only image in {split}"
        assert len(background_only) <= max(1, len(doc["images"]) // 4)


def test_several_vehicle_types_and_person_over_car_overlaps(clean):
    doc = document(clean.out_dir, "training")
    vehicle_types = {CATEGORY_BY_ID[a["category_id"]].name for a in doc["annotations"]
                     if a["category_id"] in VEHICLE_IDS}
    assert "car" in vehicle_types and len(vehicle_types) >= 4, vehicle_types

    def overlap(a: list[float], b: list[float]) -> float:
        width = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
        height = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
        return max(width, 0) * max(height, 0)

    single = [a for a in doc["annotations"] if not a["iscrowd"]]
    pairs = [(p, c) for p in single for c in single if p["image_id"] == c["image_id"]
             and p["category_id"] == PERSON and c["category_id"] == CAR
             and overlap(p["bbox"], c["bbox"]) > 0.1 * p["bbox"][2] * p["bbox"][3]]
    assert pairs, "no person overlapping a car"


def test_same_arguments_give_identical_bytes_and_another_seed_differs(clean, tmp_path):
    again = make_sample(tmp_path / "again", images=48, seed=0)
    assert digests(again.out_dir) == digests(clean.out_dir)
    other = digests(make_sample(tmp_path / "other", images=48, seed=1).out_dir)
    reference = digests(clean.out_dir)
    assert other["annotations/instances_train2017.json"] != reference["annotations/instances_train2017.json"]
    assert not set(other.items()) & {(k, v) for k, v in reference.items() if k.endswith(".jpg")}


def test_planted_defects(clean, defective):
    clean_training = document(clean.out_dir, "training")
    bad_training = document(defective.out_dir, "training")
    dataset = coco(clean.out_dir, "training")

    def visible_share(annotation: dict) -> float:
        """Share of the image where the object shows: its mask minus every object drawn after it (higher id)."""
        mask = dataset.annToMask(annotation).astype(bool)
        for other in dataset.imgToAnns[annotation["image_id"]]:
            if other["id"] > annotation["id"]:
                mask &= ~dataset.annToMask(other).astype(bool)
        return mask.mean()

    visible = {a["id"]: visible_share(a) for a in clean_training["annotations"]
               if not a["iscrowd"] and a["category_id"] in (PERSON, CAR)}
    eligible = {before["image_id"] for before in clean_training["annotations"]
                if visible.get(before["id"], 0) >= 0.005}
    report = json.loads((defective.out_dir / "planted_defects.json").read_text())
    planted = report["planted"]
    assert report["fraction"] == 0.25
    # Documented rule: round half up of fraction × eligible training images, one defect per image.
    assert len(planted) == defective.planted_defects == math.floor(0.25 * len(eligible) + 0.5) > 0
    assert len({p["image_id"] for p in planted}) == len(planted)
    assert {p["image_id"] for p in planted} <= eligible
    assert {p["kind"] for p in planted} == {"missing_person", "person_as_car", "shifted_mask"}
    assert all(p["split"] == "training" for p in planted)

    before = {a["id"]: a for a in clean_training["annotations"]}
    after = {a["id"]: a for a in bad_training["annotations"]}
    touched = {p["annotation_id"] for p in planted}
    for entry in planted:
        original = before[entry["annotation_id"]]
        assert original["image_id"] == entry["image_id"] and not original["iscrowd"]
        assert visible[original["id"]] >= 0.005  # nobody could find a defect on a hidden object
        if entry["kind"] == "missing_person":
            assert original["category_id"] == PERSON and entry["annotation_id"] not in after
        elif entry["kind"] == "person_as_car":
            assert original["category_id"] == PERSON
            assert after[entry["annotation_id"]]["category_id"] == CAR
            assert after[entry["annotation_id"]]["segmentation"] == original["segmentation"]
        else:
            moved = after[entry["annotation_id"]]
            assert is_target(original) and moved["category_id"] == original["category_id"]
            x0, y0, w, h = original["bbox"]
            x1, y1 = moved["bbox"][:2]
            assert max(abs(x1 - x0) / w, abs(y1 - y0) / h) >= 0.2
            dataset = coco(defective.out_dir, "training")
            assert dataset.annToMask(moved).sum() == moved["area"]
    assert {k: v for k, v in before.items() if k not in touched} == {k: v for k, v in after.items()
                                                                     if k not in touched}
    # Only training labels change: every image and the validation split are byte-identical to the clean run.
    clean_files, bad_files = digests(clean.out_dir), digests(defective.out_dir)
    differing = {k for k in clean_files if clean_files[k] != bad_files.get(k)}
    assert differing == {"annotations/instances_train2017.json", "planted_defects.json"}


def test_all_eligible_images_get_a_defect_at_fraction_one(tmp_path):
    summary = make_sample(tmp_path / "coco", images=12, seed=3, plant_defects=1.0)
    planted = json.loads((tmp_path / "coco" / "planted_defects.json").read_text())["planted"]
    assert summary.planted_defects == len(planted) > 0
    assert len({p["image_id"] for p in planted}) == len(planted)


def test_image_size_option_and_smallest_dataset(tmp_path):
    summary = make_sample(tmp_path / "coco", images=8, seed=5, image_size=(200, 150))
    assert (summary.training_images, summary.validation_images) == (4, 4)
    for split in SPLITS:
        doc = document(summary.out_dir, split)
        assert any(a["iscrowd"] for a in doc["annotations"]), split
        for image in doc["images"]:
            assert (image["width"], image["height"]) == (200, 150)
            assert read_image(summary.out_dir, split, image["file_name"]).shape[:2] == (150, 200)


def test_regenerating_replaces_the_previous_sample(tmp_path):
    make_sample(tmp_path / "coco", images=16, seed=0, plant_defects=0.5)
    summary = make_sample(tmp_path / "coco", images=8, seed=0)
    jpegs = list((tmp_path / "coco").rglob("*.jpg"))
    assert len(jpegs) == summary.training_images + summary.validation_images == 8
    assert json.loads((tmp_path / "coco" / "planted_defects.json").read_text())["planted"] == []


@pytest.mark.parametrize("arguments, named", [
    ({"images": 7}, "images"), ({"images": 0}, "images"), ({"plant_defects": -0.1}, "plant_defects"),
    ({"plant_defects": 1.5}, "plant_defects"), ({"plant_defects": float("nan")}, "plant_defects"),
    ({"image_size": (10, 10)}, "image_size"), ({"seed": -1}, "seed"),
])
def test_arguments_are_validated(tmp_path, arguments, named):
    with pytest.raises(ValueError, match=named):
        make_sample(tmp_path / "coco", **arguments)
    assert not (tmp_path / "coco").exists()


def test_a_48_image_sample_is_quick(tmp_path):
    started = time.monotonic()
    make_sample(tmp_path / "coco", images=48, seed=2)
    assert time.monotonic() - started < 5.0


def test_generated_sample_dir_default_and_override(monkeypatch, tmp_path):
    monkeypatch.delenv("COCO_SEG_SAMPLE_DIR", raising=False)
    assert generated_sample_dir() == Path.home() / ".cache" / "coco-seg" / "generated-sample-v1"
    monkeypatch.setenv("COCO_SEG_SAMPLE_DIR", str(tmp_path / "elsewhere"))
    assert generated_sample_dir() == tmp_path / "elsewhere"


def test_ensure_generated_sample_makes_it_once(monkeypatch, tmp_path):
    target = tmp_path / "cache" / "sample"
    monkeypatch.setenv("COCO_SEG_SAMPLE_DIR", str(target))
    assert ensure_generated_sample(images=8, seed=0) == target
    assert (target / COMPLETION_MARKER).is_file() and (target / "annotations/instances_val2017.json").is_file()
    stamp = (target / "annotations/instances_train2017.json").stat().st_mtime_ns
    calls = []
    monkeypatch.setattr(sample_data, "make_sample", lambda *a, **k: calls.append(a))
    assert ensure_generated_sample(images=8, seed=0) == target
    assert calls == [] and (target / "annotations/instances_train2017.json").stat().st_mtime_ns == stamp
    assert os.listdir(target.parent) == ["sample"], "no temporary folder may be left behind"
    with pytest.raises(RuntimeError, match="made with"):
        ensure_generated_sample(images=12, seed=0)


def test_ensure_generated_sample_uses_the_winner_when_another_process_finishes_first(monkeypatch, tmp_path):
    target = tmp_path / "cache" / "sample"
    monkeypatch.setenv("COCO_SEG_SAMPLE_DIR", str(target))
    real_make_sample = sample_data.make_sample

    def racing(out_dir: Path, **options) -> SampleSummary:
        # Another process completes (sample, marker, rename) while this one is still generating.
        winner = tmp_path / "cache" / "winner"
        real_make_sample(winner, **options)
        (winner / COMPLETION_MARKER).write_text(json.dumps({"images": 8, "seed": 0, "version": 1}))
        (winner / "written-by-the-winner").touch()
        os.rename(winner, target)
        return real_make_sample(out_dir, **options)

    monkeypatch.setattr(sample_data, "make_sample", racing)
    assert ensure_generated_sample(images=8, seed=0) == target
    assert (target / "written-by-the-winner").is_file()
    assert os.listdir(target.parent) == ["sample"], "the loser's temporary folder must be deleted"
