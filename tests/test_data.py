"""The COCO data layer: selection, order, masks against pycocotools, image decoding, bad input."""

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import orjson
import pytest
from pycocotools.coco import COCO

from coco_seg.coco_data import DataError, load_labeled_split, load_unlabeled_split, unlabeled_sample_id
from coco_seg.config import load_config
from coco_seg.encoders import encode_image, encode_mask
from coco_seg.images import ImageDecodeError, decode_rgb
from coco_seg.masks import semantic_mask
from coco_seg.samples import CACHE, SampleError
from _support import data_tree, write_config


def load(tmp_path: Path, tree: dict, split: str = "training"):
    config = load_config(write_config(tmp_path, tree))
    return config, load_labeled_split(config, split, data_root=config.data_root)


def reference_mask(coco: COCO, image_id: int, class_of_category: dict[int, int], num_classes: int) -> np.ndarray:
    """The documented rule, written the slow way: annToMask per instance; the class listed first wins overlaps."""
    info = coco.imgs[image_id]
    mask = np.zeros((info["height"], info["width"]), np.uint8)
    for target in range(num_classes, 0, -1):
        for annotation in coco.imgToAnns[image_id]:
            if class_of_category.get(annotation["category_id"]) == target:
                mask[coco.annToMask(annotation) > 0] = target
    return mask


@pytest.mark.parametrize("mode", ["category", "supercategory"])
def test_masks_equal_pycocotools_ann_to_mask(tmp_path, dataset, mode):
    config, split = load(tmp_path, dataset | {"labels": {"mode": mode}})
    coco = COCO(str(config.data_root / config.splits["training"].annotations))
    crowd_seen = 0
    for record in split.records.values():
        expected = reference_mask(coco, record.image_id, split.class_of_category, len(config.target_classes))
        actual = semantic_mask(record.annotations, height=record.height, width=record.width,
                               class_of_category=split.class_of_category,
                               num_target_classes=len(config.target_classes))
        np.testing.assert_array_equal(actual, expected, err_msg=f"sample {record.sample_id}")
        crowd_seen += sum(a["iscrowd"] for a in record.annotations if a["category_id"] in split.class_of_category)
    assert crowd_seen > 0, "the datasets hold crowd RLE annotations of a class; they must be exercised"


def test_model_size_mask_and_pixel_counts_equal_the_full_size_mask(tmp_path, dataset):
    """The per-sample path paints at the model size and counts pixels from RLE areas; both must equal what the
    full-size mask gives (nearest resize, bincount)."""
    from coco_seg.masks import class_pixel_counts, class_unions, paint

    config, split = load(tmp_path, dataset | {"labels": {"mode": "supercategory"}})
    targets = len(config.target_classes)
    for record in list(split.records.values())[:40]:
        unions = class_unions(record.annotations, height=record.height, width=record.width,
                              class_of_category=split.class_of_category)
        full = paint(unions, height=record.height, width=record.width, num_target_classes=targets)
        small = paint(unions, height=record.height, width=record.width, num_target_classes=targets, out_size=96)
        np.testing.assert_array_equal(small, cv2.resize(full, (96, 96), interpolation=cv2.INTER_NEAREST))
        counts = class_pixel_counts(unions, height=record.height, width=record.width, num_target_classes=targets)
        np.testing.assert_array_equal(counts, np.bincount(full.ravel(), minlength=targets + 1))


def test_overlap_rule_first_configured_class_wins():
    person = {"category_id": 1, "segmentation": [[0, 0, 6, 0, 6, 6, 0, 6]], "iscrowd": 0}
    car = {"category_id": 3, "segmentation": [[3, 3, 10, 3, 10, 10, 3, 10]], "iscrowd": 0}
    for class_of_category, winner in (({1: 1, 3: 2}, 1), ({3: 1, 1: 2}, 1)):
        mask = semantic_mask([person, car], height=12, width=12, class_of_category=class_of_category,
                             num_target_classes=2)
        overlap = mask[4, 4]
        assert overlap == winner  # class 1 = the first listed, whichever COCO category it is
    mask = semantic_mask([car, person], height=12, width=12, class_of_category={1: 1, 3: 2}, num_target_classes=2)
    assert mask[4, 4] == 1 and mask[8, 8] == 2 and mask[11, 11] == 0


def test_selection_keeps_images_with_a_class_in_id_order(tmp_path, dataset):
    config, split = load(tmp_path, dataset)
    coco = COCO(str(config.data_root / config.splits["training"].annotations))
    class_ids = set(split.class_of_category)
    expected = sorted({a["image_id"] for a in coco.dataset["annotations"] if a["category_id"] in class_ids})
    assert split.sample_ids == [str(i) for i in expected]
    assert all(isinstance(i, str) for i in split.sample_ids)
    _, again = load(tmp_path / "again", dataset)
    assert again.sample_ids == split.sample_ids  # deterministic


def test_background_share_and_sample_limit(tmp_path, dataset):
    _, base = load(tmp_path, dataset)
    _, with_background = load(tmp_path / "b", dataset | {"data": dataset["data"] | {"background_share": 0.2}})
    added = set(with_background.sample_ids) - set(base.sample_ids)
    assert len(added) == min(round(0.2 * len(base.sample_ids)), len(added)) and added
    assert all(not (set(a["category_id"] for a in with_background.records[i].annotations)
                    & set(with_background.class_of_category)) for i in added)
    assert with_background.sample_ids == sorted(with_background.sample_ids, key=int)
    _, limited = load(tmp_path / "l", dataset | {"sample_limit_per_split": 5})
    assert limited.sample_ids == base.sample_ids[:5]


def test_encoders_give_normalised_image_and_one_hot_mask(tmp_path, dataset):
    config, split = load(tmp_path, dataset | {"image_size": 64})
    sample_id = split.sample_ids[0]
    image, mask = encode_image(split, sample_id), encode_mask(split, sample_id)
    assert image.shape == (64, 64, 3) and image.dtype == np.float32
    assert -1.0 <= image.min() and image.max() <= 1.0
    assert mask.shape == (64, 64, 3) and mask.dtype == np.float32
    np.testing.assert_array_equal(mask.sum(-1), 1.0)
    rgb = cv2.cvtColor(cv2.imread(str(split.records[sample_id].path)), cv2.COLOR_BGR2RGB)
    expected = cv2.resize(rgb, (64, 64), interpolation=cv2.INTER_AREA).astype(np.float32) / 127.5 - 1
    np.testing.assert_allclose(image, expected, atol=1e-6)


def test_each_sample_is_decoded_once_for_all_encoders_and_metadata(tmp_path, dataset):
    _, split = load(tmp_path, dataset)
    CACHE.clear()
    before = CACHE.decodes
    for sample_id in split.sample_ids[:3]:
        encode_image(split, sample_id)
        encode_mask(split, sample_id)
        for _ in range(20):
            CACHE.get(split, sample_id).metadata["person_percent"]
    assert CACHE.decodes - before == 3


def test_cache_is_bounded(tmp_path, dataset):
    _, split = load(tmp_path, dataset)
    for sample_id in split.sample_ids:
        encode_image(split, sample_id)
    assert len(CACHE._entries) <= CACHE.capacity


def test_2014_layout_works_unchanged(tmp_path, generated_root):
    root = tmp_path / "coco2014"
    (root / "annotations").mkdir(parents=True)
    (root / "train2014").mkdir()
    dataset = json.loads((generated_root / "annotations" / "instances_train2017.json").read_text())
    for image in dataset["images"]:
        new_name = f"COCO_train2014_{image['id']:012d}.jpg"
        shutil.copy(generated_root / "train2017" / image["file_name"], root / "train2014" / new_name)
        image["file_name"] = new_name
    (root / "annotations" / "instances_train2014.json").write_text(json.dumps(dataset))
    splits = {name: {"annotations": "annotations/instances_train2014.json", "images": "train2014"}
              for name in ("training", "validation")}
    _, split = load(tmp_path, data_tree(root, splits=splits))
    _, original = load(tmp_path / "o", data_tree(generated_root))
    assert split.sample_ids == original.sample_ids
    np.testing.assert_array_equal(encode_mask(split, split.sample_ids[0]), encode_mask(original, split.sample_ids[0]))


def test_unlabeled_split_lists_image_files(tmp_path, generated_root):
    tree = data_tree(generated_root) | {"data": {"root": str(generated_root),
                                                 "splits": {"unlabeled": {"images": "val2017"}}}}
    config = load_config(write_config(tmp_path, tree))
    split = load_unlabeled_split(config, data_root=config.data_root)
    files = sorted(p.name for p in (generated_root / "val2017").iterdir())
    assert split.sample_ids == [str(int(Path(f).stem)) for f in files]
    assert encode_image(split, split.sample_ids[0]).shape == (128, 128, 3)
    with pytest.raises(SampleError, match="unlabeled"):
        encode_mask(split, split.sample_ids[0])
    assert unlabeled_sample_id("COCO_test2014_000000000057.jpg") == "57"


# --- images reach the encoders as RGB uint8 whatever the file holds ----------------------------------------------

def test_decode_handles_gray_alpha_and_16bit(tmp_path):
    rgb = np.zeros((8, 10, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 50
    cv2.imwrite(str(tmp_path / "rgb.png"), rgb[..., ::-1])
    decoded, size = decode_rgb(tmp_path / "rgb.png")
    np.testing.assert_array_equal(decoded, rgb)
    assert size == (10, 8)  # (width, height) of the file
    cv2.imwrite(str(tmp_path / "gray.jpg"), np.full((8, 10), 77, np.uint8))
    gray = decode_rgb(tmp_path / "gray.jpg")[0]
    assert gray.shape == (8, 10, 3) and (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    bgra = np.dstack([rgb[..., ::-1], np.full((8, 10), 9, np.uint8)])
    cv2.imwrite(str(tmp_path / "alpha.png"), bgra)
    np.testing.assert_array_equal(decode_rgb(tmp_path / "alpha.png")[0], rgb)
    cv2.imwrite(str(tmp_path / "deep.png"), (rgb[..., ::-1].astype(np.uint16) * 257))
    np.testing.assert_array_equal(decode_rgb(tmp_path / "deep.png")[0], rgb)
    # CMYK JPEGs: test_reliability.py decodes an embedded one (no Pillow needed, OpenCV cannot write CMYK).


def test_resizing_before_the_colour_conversion_changes_nothing(tmp_path):
    """decode_rgb(size=S) converts colour after resizing (cheaper); it must equal converting first."""
    rng = np.random.default_rng(0)
    bgr = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "color.png"), bgr)
    cv2.imwrite(str(tmp_path / "gray.png"), bgr[..., 0])
    cv2.imwrite(str(tmp_path / "alpha.png"), np.dstack([bgr, bgr[..., :1]]))
    cv2.imwrite(str(tmp_path / "deep.png"), bgr.astype(np.uint16) * 257 + 3)
    for name in ("color.png", "gray.png", "alpha.png", "deep.png"):
        full, size = decode_rgb(tmp_path / name)
        small, same_size = decode_rgb(tmp_path / name, size=32)
        assert size == same_size == (80, 60)
        np.testing.assert_array_equal(small, cv2.resize(full, (32, 32), interpolation=cv2.INTER_AREA), err_msg=name)


def test_decode_errors_name_the_file(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageDecodeError, match="empty.jpg.*empty"):
        decode_rgb(tmp_path / "empty.jpg")
    (tmp_path / "junk.jpg").write_bytes(b"not an image at all")
    with pytest.raises(ImageDecodeError, match="junk.jpg"):
        decode_rgb(tmp_path / "junk.jpg")
    with pytest.raises(ImageDecodeError, match="missing.jpg"):
        decode_rgb(tmp_path / "missing.jpg")


# --- bad input: a clear error at preprocess time, or a counted, listed skip ----------------------------------------

@pytest.fixture
def editable(tmp_path, generated_root):
    """A private copy of the generated dataset that a test may damage."""
    root = tmp_path / "coco"
    shutil.copytree(generated_root, root)
    return root


def damage_annotations(root: Path, edit) -> dict:
    path = root / "annotations" / "instances_train2017.json"
    dataset = json.loads(path.read_text())
    edit(dataset)
    path.write_text(json.dumps(dataset))
    return dataset


def first_class_image(dataset: dict) -> dict:
    image_ids = {a["image_id"] for a in dataset["annotations"] if a["category_id"] in (1, 3)}
    return min((i for i in dataset["images"] if i["id"] in image_ids), key=lambda i: i["id"])


def break_missing_file(root, dataset):
    image = first_class_image(dataset)
    (root / "train2017" / image["file_name"]).unlink()
    return image, "missing"


def break_truncated_file(root, dataset):
    image = first_class_image(dataset)
    path = root / "train2017" / image["file_name"]
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return image, "truncated"


def break_empty_file(root, dataset):
    image = first_class_image(dataset)
    (root / "train2017" / image["file_name"]).write_bytes(b"")
    return image, "empty"


def break_escaping_name(root, dataset):
    image = first_class_image(dataset)
    damage_annotations(root, lambda d: next(i for i in d["images"] if i["id"] == image["id"]).update(
        file_name="../val2017/" + image["file_name"]))
    return image, "escape"


def break_symlink_outside(root, dataset):
    image = first_class_image(dataset)
    path = root / "train2017" / image["file_name"]
    outside = root.parent / "outside.jpg"
    shutil.move(path, outside)
    path.symlink_to(outside)
    return image, "outside the image folder"


def break_unknown_category(root, dataset):
    image = first_class_image(dataset)
    damage_annotations(root, lambda d: d["annotations"].append(
        {"id": 99999, "image_id": image["id"], "category_id": 424242, "iscrowd": 0, "area": 10.0,
         "bbox": [0, 0, 4, 4], "segmentation": [[0, 0, 4, 0, 4, 4]]}))
    return image, "unknown category id 424242"


def break_degenerate_polygon(root, dataset):
    image = first_class_image(dataset)
    damage_annotations(root, lambda d: d["annotations"].append(
        {"id": 99998, "image_id": image["id"], "category_id": 1, "iscrowd": 0, "area": 0.0,
         "bbox": [0, 0, 0, 0], "segmentation": [[1, 1, 2, 2]]}))
    return image, "annotation 99998: field 'segmentation': a polygon has 2 point(s); at least 3 are needed"


def break_bbox_only(root, dataset):
    image = first_class_image(dataset)
    damage_annotations(root, lambda d: d["annotations"].append(
        {"id": 99997, "image_id": image["id"], "category_id": 3, "iscrowd": 0, "area": 16.0,
         "bbox": [0, 0, 4, 4], "segmentation": []}))
    return image, "annotation 99997: field 'segmentation' is missing or empty (a bbox alone gives no mask)"


@pytest.mark.parametrize("breaker", [break_missing_file, break_truncated_file, break_empty_file, break_escaping_name,
                                     break_symlink_outside, break_unknown_category, break_degenerate_polygon,
                                     break_bbox_only])
def test_bad_samples_error_or_are_skipped_and_listed(tmp_path, editable, breaker):
    dataset = json.loads((editable / "annotations" / "instances_train2017.json").read_text())
    image, reason = breaker(editable, dataset)
    with pytest.raises(DataError) as error:
        load(tmp_path / "error", data_tree(editable))
    message = str(error.value)
    assert "data.splits.training" in message and f"sample {image['id']}" in message and reason in message
    assert Path(image["file_name"]).name in message and "on_bad_sample: skip" in message

    _, split = load(tmp_path / "skip", data_tree(editable) | {"on_bad_sample": "skip"})
    assert str(image["id"]) not in split.records
    assert [b.sample_id for b in split.skipped] == [str(image["id"])] and reason in split.skipped[0].reason
    assert len(split.records) + len(split.skipped) == split.found


def test_orphan_annotation_errors_or_is_listed(tmp_path, editable):
    damage_annotations(editable, lambda d: d["annotations"].append(
        {"id": 77777, "image_id": 123456789, "category_id": 1, "iscrowd": 0, "area": 10.0, "bbox": [0, 0, 4, 4],
         "segmentation": [[0, 0, 4, 0, 4, 4]]}))
    with pytest.raises(DataError, match=r"ignored: annotation 77777 \(annotations\[\d+\]\) refers to image id "
                                        r"123456789, which is not an image of 'images'"):
        load(tmp_path / "e", data_tree(editable))
    _, split = load(tmp_path / "s", data_tree(editable) | {"on_bad_sample": "skip"})
    assert any("77777" in line for line in split.ignored_annotations)


def test_image_size_differing_from_annotation_is_refused_at_preprocess(tmp_path, editable):
    """Read from the file header at preprocess time (no decode), not found later by the engine's decode."""
    dataset = json.loads((editable / "annotations" / "instances_train2017.json").read_text())
    image = first_class_image(dataset)
    path = editable / "train2017" / image["file_name"]
    cv2.imwrite(str(path), cv2.resize(cv2.imread(str(path)), (50, 40)))
    with pytest.raises(DataError) as error:
        load(tmp_path, data_tree(editable))
    message = str(error.value)
    assert f"sample {image['id']}" in message and image["file_name"] in message
    assert f"the file is 50x40 but the annotation file says {image['width']}x{image['height']}" in message


@pytest.mark.parametrize("what, key", [("annotations", "data.splits.training.annotations"),
                                       ("images", "data.splits.training.images")])
def test_missing_split_files_name_the_key(tmp_path, editable, what, key):
    if what == "annotations":
        (editable / "annotations" / "instances_train2017.json").unlink()
    else:
        shutil.rmtree(editable / "train2017")
    with pytest.raises(DataError, match=key):
        load(tmp_path, data_tree(editable))


def test_truncated_annotation_json_names_the_file(tmp_path, editable):
    path = editable / "annotations" / "instances_train2017.json"
    path.write_text(path.read_text()[:500])
    with pytest.raises(DataError, match="instances_train2017.json is not valid JSON"):
        load(tmp_path, data_tree(editable))


def test_missing_data_root_names_the_key(tmp_path):
    from coco_seg.coco_data import resolve_data_root

    config = load_config(write_config(tmp_path, data_tree(tmp_path / "nowhere")))
    with pytest.raises(DataError, match="data.root"):
        resolve_data_root(config)


def test_class_missing_from_the_annotation_file_is_named(tmp_path, editable):
    damage_annotations(editable, lambda d: d.update(categories=[c for c in d["categories"] if c["name"] != "car"]))
    with pytest.raises(DataError, match="no category named car"):
        load(tmp_path, data_tree(editable))


def test_a_file_only_the_standard_parser_reads_still_loads(tmp_path, editable):
    """orjson is strict; a file it refuses (here a NaN literal in an unrelated field) goes through json instead."""
    _, before = load(tmp_path, data_tree(editable))
    path = editable / "annotations" / "instances_train2017.json"
    dataset = json.loads(path.read_text())
    dataset["info"] = {"score": float("nan")}
    path.write_text(json.dumps(dataset))  # json writes the literal NaN, which orjson refuses
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(path.read_bytes())
    _, after = load(tmp_path, data_tree(editable))
    assert after.sample_ids == before.sample_ids
    assert [after.records[i].annotations for i in after.sample_ids] == \
        [before.records[i].annotations for i in before.sample_ids]


@pytest.mark.parametrize("entry, where", [
    # the entry itself, then the annotations that pointed at the image it was: each listed in one message
    ("images", r"data\.splits\.training: 0 bad sample\(s\) and \d+ entries that belong to no image in "
               r".*instances_train2017\.json.*\n  - ignored: images\[3\]: field 'id' must be an integer, got "
               r"NoneType 'None' \(file_name 'x\.jpg'\)\n  - ignored: annotation \d+ \(annotations\[\d+\]\) refers"),
    ("annotations", r"data\.splits\.training: 0 bad sample\(s\) and 1 entries that belong to no image in "
                    r".*instances_train2017\.json.*\n  - ignored: annotations\[3\] is not an object"),
    ("categories", r"data\.splits\.training\.annotations: .*instances_train2017\.json: categories\[3\] is not a "
                   r"category with an integer 'id'")])
def test_a_malformed_entry_names_its_list_and_position(tmp_path, editable, entry, where):
    def damage(dataset):
        dataset[entry][3] = {"annotations": ["not", "an", "object"], "images": {"file_name": "x.jpg"},
                             "categories": {"id": "4", "name": "motorcycle"}}[entry]

    damage_annotations(editable, damage)
    with pytest.raises(DataError, match=where):
        load(tmp_path, data_tree(editable))
