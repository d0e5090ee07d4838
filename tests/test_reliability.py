"""Issue 7: bad data, bad models and bad config never crash a run or pass silently — one test per input.

Covered elsewhere, not repeated here:
- missing / empty / truncated image, ``..`` names, symlinks outside the folder, unknown category, degenerate
  polygon, bbox-only, orphan annotations, malformed JSON, missing split files, a class absent from the
  annotation file: tests/test_data.py (and the size mismatch refused at preprocess, JPEG, error mode);
- ``sample_limit_per_split`` 0 or negative, wrong types, unknown keys: tests/test_config.py
  (test_wrong_types_and_values_name_the_key);
- missing model file, wrong output channels, wrong input size, model card disagreeing with the config:
  tests/test_model.py (test_load_model_rejects_missing_and_unsupported_files,
  test_a_model_with_the_wrong_output_channels_is_rejected, test_a_config_for_other_classes_is_rejected_even_without
  _a_card, test_a_card_that_disagrees_with_the_config_is_rejected) and, through the engine, tests/test_binder.py;
- predictions holding NaN/Inf through the metrics and the loss the binder registers: tests/test_metrics.py
  (test_non_finite_predictions, test_nan_in_probability_sample_keeps_probability_detection).
"""

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from coco_seg import metrics
from coco_seg.coco_data import BadSample, DataError, load_labeled_split, load_splits, load_unlabeled_split
from coco_seg.ledger import record_decode_failure
from coco_seg.config import REPORTS_DIR_ENV_VAR, ConfigError, load_config
from coco_seg.encoders import encode_image, encode_label_mask, encode_mask, sample_metadata
from coco_seg.images import HEAD_BYTES, inspect_image_file
from coco_seg.metadata import metadata_names
from coco_seg.samples import CACHE, IGNORED_LABEL, SampleError
from _support import (CMYK_JPEG, LAYOUT_VARIANTS, PATTERN_BGR as BGR, PATTERN_SIZE, REPO_ROOT, corrupt_jpeg_middle,
                      data_tree, write_config, write_layout_variants)

IMAGE_SIZE = 64

# --- helpers ------------------------------------------------------------------------------------------------------

@pytest.fixture
def reports_dir(tmp_path, monkeypatch) -> Path:
    """Bad-sample reports of this test go to a private folder (the environment variable the config falls back to)."""
    folder = tmp_path / "reports"
    monkeypatch.setenv(REPORTS_DIR_ENV_VAR, str(folder))
    return folder


@pytest.fixture
def editable(tmp_path, generated_root, reports_dir) -> Path:
    """A private copy of the generated dataset that a test may damage (as in tests/test_data.py)."""
    root = tmp_path / "coco"
    shutil.copytree(generated_root, root)
    return root


def load(tmp_path: Path, tree: dict, split: str = "training"):
    config = load_config(write_config(tmp_path, {"image_size": IMAGE_SIZE} | tree))
    return config, load_labeled_split(config, split, data_root=config.data_root)


def annotations_path(root: Path) -> Path:
    return root / "annotations" / "instances_train2017.json"


def edit_annotations(root: Path, edit) -> dict:
    path = annotations_path(root)
    dataset = json.loads(path.read_text())
    edit(dataset)
    path.write_text(json.dumps(dataset))
    return dataset


def class_images(root: Path) -> list[dict]:
    """Training image entries holding a person or a car, in sample order."""
    dataset = json.loads(annotations_path(root).read_text())
    with_class = {a["image_id"] for a in dataset["annotations"] if a["category_id"] in (1, 3)}
    return sorted((i for i in dataset["images"] if i["id"] in with_class), key=lambda i: i["id"])


def read_report(reports: Path, split: str = "training") -> dict:
    return json.loads((reports / f"bad_samples_{split}.json").read_text())


def warnings_about(caplog: pytest.LogCaptureFixture, sample_id: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and f"sample {sample_id} " in r.getMessage()]


# --- a file that passes preprocess but does not decode: placeholder, warning, report ------------------------------

def test_corrupt_middle_jpeg_passes_preprocess_and_is_served_as_a_placeholder(tmp_path, editable, reports_dir,
                                                                              caplog):
    image = class_images(editable)[0]
    path = editable / "train2017" / image["file_name"]
    corrupt_jpeg_middle(path)
    config, split = load(tmp_path, data_tree(editable))  # on_bad_sample: error, yet accepted: header and trailer fine
    sample_id = str(image["id"])
    assert sample_id in split.records and split.skipped == []

    CACHE.clear()
    with caplog.at_level(logging.WARNING):
        model_input = encode_image(split, sample_id)
        ground_truth = encode_mask(split, sample_id)
        labels = encode_label_mask(split, sample_id)
        metadata = sample_metadata(split, sample_id)
        CACHE.clear()  # evicted and asked again: the file is not read again and no second warning is logged
        np.testing.assert_array_equal(encode_image(split, sample_id), model_input)

    assert model_input.shape == (IMAGE_SIZE, IMAGE_SIZE, 3) and model_input.dtype == np.float32
    np.testing.assert_array_equal(model_input, -1.0)  # black
    assert ground_truth.shape == (IMAGE_SIZE, IMAGE_SIZE, config.num_classes) and ground_truth.dtype == np.float32
    assert not ground_truth.any()  # every pixel ignored
    assert (labels == IGNORED_LABEL).all()
    assert list(metadata) == list(metadata_names(config))
    assert metadata["image_width"] == image["width"] and metadata["image_height"] == image["height"]
    assert all(v is None for k, v in metadata.items() if k not in ("image_width", "image_height"))

    # Under the metric policy the placeholder scores nothing: loss 0, IoU undefined — not 0, not 1.
    prediction = np.random.default_rng(0).normal(size=(1,) + ground_truth.shape).astype(np.float32)
    assert np.isnan(metrics.mean_iou(ground_truth[None], prediction)).all()
    assert np.isnan(metrics.iou_per_class(ground_truth[None], prediction)).all()
    np.testing.assert_array_equal(metrics.cross_entropy_loss(ground_truth[None], prediction), [0.0])

    messages = warnings_about(caplog, sample_id)
    assert len(messages) == 1, messages
    assert "split training" in messages[0] and str(path) in messages[0] and "cannot be decoded" in messages[0]

    report = read_report(reports_dir)
    assert [entry["sample_id"] for entry in report["failed_at_decode"]] == [sample_id]
    assert report["failed_at_decode"][0]["file"] == str(path)
    assert "cannot be decoded" in report["failed_at_decode"][0]["reason"]
    assert report["skipped"] == [] and report["kept"] == report["found"] == len(split.records)

    other = split.sample_ids[1]  # the rest of the split is untouched
    np.testing.assert_array_equal(encode_mask(split, other).sum(-1), 1.0)


def test_corrupt_unlabeled_image_is_a_placeholder_without_ground_truth(tmp_path, editable, reports_dir, caplog):
    folder = editable / "unlabeled"
    folder.mkdir()
    for source in sorted((editable / "val2017").iterdir())[:3]:
        shutil.copy(source, folder / source.name)
    corrupt = sorted(folder.iterdir())[1]
    corrupt_jpeg_middle(corrupt)
    tree = {"data": {"root": str(editable), "splits": {"unlabeled": {"images": "unlabeled"}}},
            "image_size": IMAGE_SIZE}
    config = load_config(write_config(tmp_path, tree))
    split = load_unlabeled_split(config, data_root=config.data_root)
    sample_id = str(int(corrupt.stem))
    assert split.sample_ids[1] == sample_id

    with caplog.at_level(logging.WARNING):
        np.testing.assert_array_equal(encode_image(split, sample_id), -1.0)
        metadata = sample_metadata(split, sample_id)
    assert list(metadata) == list(metadata_names(config))
    assert all(value is None for value in metadata.values())  # no annotation: width and height unknown too
    with pytest.raises(SampleError, match="unlabeled"):
        encode_mask(split, sample_id)  # as for every unlabeled sample: the engine never asks
    assert len(warnings_about(caplog, sample_id)) == 1
    report = read_report(reports_dir, "unlabeled")
    assert report["annotations"] is None and report["images"] == str(folder)
    assert [entry["sample_id"] for entry in report["failed_at_decode"]] == [sample_id]
    assert encode_image(split, split.sample_ids[0]).std() > 0  # the good ones decode


def test_size_mismatch_in_a_format_preprocess_cannot_measure_is_caught_at_decode(tmp_path, editable, reports_dir):
    """BMP: preprocess does not read its size, so the decode finds the mismatch — a placeholder, not a raise."""
    image = class_images(editable)[0]
    jpeg = editable / "train2017" / image["file_name"]
    bmp_name = Path(image["file_name"]).with_suffix(".bmp").name
    cv2.imwrite(str(editable / "train2017" / bmp_name), cv2.resize(cv2.imread(str(jpeg)), (50, 40)))
    edit_annotations(editable, lambda d: next(i for i in d["images"] if i["id"] == image["id"]).update(
        file_name=bmp_name))
    _, split = load(tmp_path, data_tree(editable))
    sample_id = str(image["id"])
    CACHE.clear()
    assert not encode_mask(split, sample_id).any()
    reason = read_report(reports_dir)["failed_at_decode"][0]["reason"]
    assert f"the file is 50x40 but the annotation file says {image['width']}x{image['height']}" in reason


def test_training_batches_and_loss_take_the_placeholder_without_error(tmp_path, editable):
    from coco_seg.sample_store import open_sample_store
    from coco_seg.training import SegmentationLoss, make_dataset

    image = class_images(editable)[0]
    corrupt_jpeg_middle(editable / "train2017" / image["file_name"])
    config, split = load(tmp_path, data_tree(editable) | {"sample_limit_per_split": 4})
    assert split.sample_ids[0] == str(image["id"])
    images, masks = next(iter(make_dataset(open_sample_store(split), batch_size=4, shuffle=False, augment=True, seed=0)))
    masks = masks.numpy()
    assert not masks[0].any()  # IGNORED_LABEL one-hot encodes to nothing, augmented or not
    np.testing.assert_array_equal(masks[1:].sum(-1), 1.0)
    logits = np.random.default_rng(0).normal(size=masks.shape).astype(np.float32)
    per_sample = SegmentationLoss(reduction=None)(masks, logits).numpy()
    assert per_sample[0] == 0.0 and (per_sample[1:] > 0).all()


def test_decode_failures_of_other_processes_stay_in_the_report(tmp_path, editable, reports_dir):
    """Engine workers in other processes append to the same report: an update merges, it does not overwrite."""
    first, second = class_images(editable)[:2]
    corrupt_jpeg_middle(editable / "train2017" / second["file_name"])
    _, split = load(tmp_path, data_tree(editable))
    elsewhere = BadSample(str(first["id"]), "elsewhere.jpg", "failed in another worker")
    in_other_process = load(tmp_path / "other", data_tree(editable))[1]  # its own SplitData, as after pickling
    assert record_decode_failure(in_other_process, elsewhere)
    assert not record_decode_failure(in_other_process, elsewhere)  # once per sample
    CACHE.clear()
    encode_image(split, str(second["id"]))
    listed = {entry["sample_id"]: entry for entry in read_report(reports_dir)["failed_at_decode"]}
    assert set(listed) == {str(first["id"]), str(second["id"])}
    assert listed[str(first["id"])]["reason"] == "failed in another worker"


# --- image size from the file header, at preprocess time ----------------------------------------------------------

def _with_big_app1(jpeg: bytes) -> bytes:
    """A JPEG whose frame header lies beyond the first read (as behind a large EXIF block)."""
    payload = b"Exif\x00\x00" + bytes(3000)
    return jpeg[:2] + b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload + jpeg[2:]


def _encoded(suffix: str, pixels: np.ndarray, *params: int) -> bytes:
    ok, data = cv2.imencode(suffix, pixels, list(params))
    assert ok
    return data.tobytes()


HEADER_CASES = {
    "baseline.jpg": _encoded(".jpg", BGR),
    "progressive.jpg": _encoded(".jpg", BGR, cv2.IMWRITE_JPEG_PROGRESSIVE, 1),
    "gray.jpg": _encoded(".jpg", cv2.cvtColor(BGR, cv2.COLOR_BGR2GRAY)),
    "cmyk.jpg": CMYK_JPEG,
    "exif.jpg": _with_big_app1(_encoded(".jpg", BGR)),
    "rgb.png": _encoded(".png", BGR),
    "deep.png": _encoded(".png", BGR.astype(np.uint16) * 257),
    "alpha.png": _encoded(".png", np.dstack([BGR, np.full(BGR.shape[:2], 128, np.uint8)])),
    "gray.png": _encoded(".png", cv2.cvtColor(BGR, cv2.COLOR_BGR2GRAY)),
}


@pytest.mark.parametrize("name", list(HEADER_CASES))
def test_header_gives_the_stored_pixel_size(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(HEADER_CASES[name])
    check = inspect_image_file(path, size=path.stat().st_size)
    assert check.problem is None and check.dimensions == PATTERN_SIZE
    decoded = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_UNCHANGED)
    assert decoded.shape[1::-1] == PATTERN_SIZE  # the decoder agrees
    if name == "exif.jpg":
        assert HEADER_CASES[name].index(b"\xff\xc0") > HEAD_BYTES  # found by following the segment chain


def test_header_size_of_other_formats_is_unknown(tmp_path):
    path = tmp_path / "image.bmp"
    cv2.imwrite(str(path), BGR)
    assert inspect_image_file(path, size=path.stat().st_size).dimensions is None


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_image_size_differing_from_annotation_is_listed_when_skipped(tmp_path, editable, reports_dir, suffix):
    image = class_images(editable)[0]
    old = editable / "train2017" / image["file_name"]
    new = old.with_suffix(suffix)
    resized = cv2.resize(cv2.imread(str(old)), (50, 40))
    old.unlink()
    cv2.imwrite(str(new), resized)
    edit_annotations(editable, lambda d: next(i for i in d["images"] if i["id"] == image["id"]).update(
        file_name=new.name))
    expected = f"the file is 50x40 but the annotation file says {image['width']}x{image['height']}"
    if suffix == ".png":  # the JPEG case of error mode is in tests/test_data.py
        with pytest.raises(DataError, match=f"sample {image['id']} .*{new.name}.*{expected}"):
            load(tmp_path / "error", data_tree(editable))
    _, split = load(tmp_path / "skip", data_tree(editable) | {"on_bad_sample": "skip"})
    assert [(b.sample_id, b.file) for b in split.skipped] == [(str(image["id"]), str(new))]
    assert expected in split.skipped[0].reason
    assert read_report(reports_dir)["skipped"] == [{"sample_id": str(image["id"]), "file": str(new),
                                                    "reason": split.skipped[0].reason}]


# --- images of every pixel layout reach the encoders as RGB -------------------------------------------------------

def test_16bit_rgba_cmyk_and_grayscale_images_go_end_to_end(tmp_path, editable):
    """Four dataset images replaced by these layouts (32x24, one person polygon each): preprocess accepts them
    (their headers give the annotated size) and encode_image gives the colours of the pattern."""
    images = class_images(editable)[:len(LAYOUT_VARIANTS)]
    write_layout_variants(editable, images)
    config, split = load(tmp_path, data_tree(editable))
    left = np.array([200, 40, 40]) / 127.5 - 1
    right = np.array([40, 60, 200]) / 127.5 - 1
    for image, name in zip(images, LAYOUT_VARIANTS):
        sample_id = str(image["id"])
        model_input = encode_image(split, sample_id)
        assert model_input.shape == (IMAGE_SIZE, IMAGE_SIZE, 3) and model_input.dtype == np.float32, name
        left_mean = model_input[:, 4:IMAGE_SIZE // 2 - 4].reshape(-1, 3).mean(0)
        right_mean = model_input[:, IMAGE_SIZE // 2 + 4:-4].reshape(-1, 3).mean(0)
        metadata = sample_metadata(split, sample_id)
        if name == "grayscale JPEG":
            assert (model_input[..., 0] == model_input[..., 1]).all() and not metadata["is_colored"]
            luma = np.array([[200, 40, 40], [40, 60, 200]]) @ [0.299, 0.587, 0.114] / 127.5 - 1  # 88 and 70
            np.testing.assert_allclose([left_mean[0], right_mean[0]], luma, atol=0.05)
        else:
            np.testing.assert_allclose(left_mean, left, atol=0.1, err_msg=name)
            np.testing.assert_allclose(right_mean, right, atol=0.1, err_msg=name)
            assert metadata["is_colored"], name
        mask = encode_mask(split, sample_id)
        np.testing.assert_array_equal(mask.sum(-1), 1.0)
        assert mask[..., 1].sum() > 0, name  # the person polygon is there
        assert (metadata["image_width"], metadata["image_height"]) == PATTERN_SIZE


# --- annotations and file names that preprocess must refuse or list -----------------------------------------------

def _add_rle_of_the_wrong_size(editable: Path, image: dict) -> None:
    height, width = image["height"] + 1, image["width"]
    edit_annotations(editable, lambda d: d["annotations"].append(
        {"id": 88888, "image_id": image["id"], "category_id": 1, "iscrowd": 1, "area": 4.0, "bbox": [0, 0, 2, 2],
         "segmentation": {"size": [height, width], "counts": [height * width]}}))


def _make_file_name_absolute(editable: Path, image: dict) -> None:
    absolute = str(editable / "train2017" / image["file_name"])
    edit_annotations(editable, lambda d: next(i for i in d["images"] if i["id"] == image["id"]).update(
        file_name=absolute))


@pytest.mark.parametrize("damage, reason", [(_add_rle_of_the_wrong_size, "annotation 88888: field 'segmentation': the RLE is of size"),
                                            (_make_file_name_absolute, "is an absolute path")])
def test_rle_size_mismatch_and_absolute_file_name_are_refused_or_listed(tmp_path, editable, reports_dir, damage,
                                                                       reason):
    image = class_images(editable)[1]
    damage(editable, image)
    with pytest.raises(DataError) as error:
        load(tmp_path / "error", data_tree(editable))
    message = str(error.value)
    assert "data.splits.training" in message and f"sample {image['id']}" in message and reason in message
    assert "on_bad_sample: skip" in message and str(reports_dir / "bad_samples_training.json") in message
    refused = read_report(reports_dir)
    assert [r["sample_id"] for r in refused["refused"]] == [str(image["id"])] and refused["skipped"] == []

    _, split = load(tmp_path / "skip", data_tree(editable) | {"on_bad_sample": "skip"})
    assert [b.sample_id for b in split.skipped] == [str(image["id"])] and reason in split.skipped[0].reason
    assert str(image["id"]) not in split.records


def test_skip_mode_counts_add_up_and_the_report_lists_every_skipped_sample(tmp_path, editable, reports_dir):
    first, second, third = class_images(editable)[:3]
    (editable / "train2017" / first["file_name"]).unlink()
    truncated = editable / "train2017" / second["file_name"]
    truncated.write_bytes(truncated.read_bytes()[:300])
    resized = editable / "train2017" / third["file_name"]
    cv2.imwrite(str(resized), cv2.resize(cv2.imread(str(resized)), (20, 20)))
    edit_annotations(editable, lambda d: d["annotations"].append(
        {"id": 77777, "image_id": 123456789, "category_id": 1, "iscrowd": 0, "area": 8.0, "bbox": [0, 0, 4, 4],
         "segmentation": [[0, 0, 4, 0, 4, 4]]}))

    _, split = load(tmp_path, data_tree(editable) | {"on_bad_sample": "skip"})
    assert len(split.records) + len(split.skipped) == split.found
    report = read_report(reports_dir)
    assert report["split"] == "training" and report["annotations"] == str(annotations_path(editable))
    assert report["kept"] + len(report["skipped"]) == report["found"] == split.found
    assert report["kept"] == report["served"] == len(split.records)
    listed = {entry["sample_id"]: entry for entry in report["skipped"]}
    assert set(listed) == {str(first["id"]), str(second["id"]), str(third["id"])}
    for image, words in ((first, "missing"), (second, "truncated"), (third, "20x20")):
        entry = listed[str(image["id"])]
        assert entry["file"] == str(editable / "train2017" / image["file_name"]) and words in entry["reason"]
    assert report["refused"] == [] and report["failed_at_decode"] == []
    assert any("77777" in line for line in report["ignored_annotations"])
    assert sorted(p.name for p in reports_dir.iterdir() if not p.name.endswith(".lock")) == \
        ["bad_samples_training.json"]  # no temporary file left behind

    _, limited = load(tmp_path / "limited", data_tree(editable) | {"on_bad_sample": "skip",
                                                                    "sample_limit_per_split": 2})
    report = read_report(reports_dir)
    assert report["served"] == 2 and report["kept"] + len(report["skipped"]) == report["found"]


# --- splits that end up empty -------------------------------------------------------------------------------------

def test_no_image_with_a_configured_class_is_a_clear_error(tmp_path, editable):
    edit_annotations(editable, lambda d: d.update(annotations=[a for a in d["annotations"]
                                                               if a["category_id"] not in (1, 3)]))
    with pytest.raises(DataError) as error:
        load(tmp_path, data_tree(editable))
    message = str(error.value)
    assert "data.splits.training" in message and str(annotations_path(editable)) in message
    assert "labels.classes" in message and "['person', 'car']" in message


def test_every_sample_skipped_is_a_clear_error_and_the_report_says_why(tmp_path, editable, reports_dir):
    for image in class_images(editable):
        (editable / "train2017" / image["file_name"]).unlink()
    with pytest.raises(DataError) as error:
        load(tmp_path, data_tree(editable) | {"on_bad_sample": "skip"})
    message = str(error.value)
    assert "data.splits.training: no usable sample" in message and str(annotations_path(editable)) in message
    assert "labels.classes" in message and str(reports_dir / "bad_samples_training.json") in message
    report = read_report(reports_dir)
    assert report["kept"] == report["served"] == 0 and len(report["skipped"]) == report["found"] > 0


# --- config -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("split", ["training", "validation"])
def test_a_required_split_set_to_null_is_a_config_error(tmp_path, split):
    with pytest.raises(ConfigError, match=f"data.splits.{split}"):
        load_config(write_config(tmp_path, {"data": {"splits": {split: None}}}))


def test_reports_dir_resolves_like_data_root_and_falls_back_to_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(REPORTS_DIR_ENV_VAR, str(tmp_path / "from-env"))
    assert load_config(write_config(tmp_path, {})).reports_dir == tmp_path / "from-env"
    assert load_config(write_config(tmp_path, {"reports_dir": "out/reports"})).reports_dir == \
        tmp_path / "out" / "reports"  # relative to the config file, and it wins over the environment
    monkeypatch.delenv(REPORTS_DIR_ENV_VAR)
    assert load_config(write_config(tmp_path, {})).reports_dir == Path.home() / ".cache" / "coco-seg" / "reports"
    for bad in (5, ["a"], ""):
        with pytest.raises(ConfigError, match="'reports_dir'"):
            load_config(write_config(tmp_path, {"reports_dir": bad}))


def test_an_unwritable_reports_dir_names_the_key(tmp_path, generated_root):
    (tmp_path / "not-a-folder").write_text("a file where the reports folder would go")
    with pytest.raises(DataError, match="reports_dir: cannot write the bad-sample report"):
        load(tmp_path, data_tree(generated_root) | {"reports_dir": "not-a-folder/reports"})


# --- determinism and no network -----------------------------------------------------------------------------------

LIST_SAMPLE_IDS = """
import json, sys
from coco_seg.coco_data import load_splits
from coco_seg.config import load_config
print(json.dumps({name: split.sample_ids for name, split in load_splits(load_config(sys.argv[1])).items()}))
"""


def test_the_same_config_gives_the_same_samples_in_the_same_order_in_another_process(tmp_path, editable):
    (editable / "train2017" / class_images(editable)[2]["file_name"]).unlink()  # a skip in the mix
    tree = {"data": {"root": str(editable), "background_share": 0.5, "splits": {"unlabeled": {"images": "val2017"}}},
            "on_bad_sample": "skip"}
    config_path = write_config(tmp_path, tree)
    outputs = []
    for hash_seed in ("1", "2"):  # different set/dict hashing per process must not change anything
        env = dict(os.environ, PYTHONHASHSEED=hash_seed)
        process = subprocess.run([sys.executable, "-c", LIST_SAMPLE_IDS, str(config_path)], cwd=REPO_ROOT, env=env,
                                 capture_output=True, text=True, timeout=300)
        assert process.returncode == 0, process.stderr
        outputs.append(json.loads(process.stdout.strip().splitlines()[-1]))
    assert outputs[0] == outputs[1]
    here = {name: split.sample_ids for name, split in load_splits(load_config(config_path)).items()}
    assert outputs[0] == here and set(here) == {"training", "validation", "unlabeled"} and all(here.values())


IMPORT_WITHOUT_NETWORK = """
import json, socket, sys

attempts = []


def refuse(name):
    def refused(*args, **kwargs):
        attempts.append(f"{name}{args[1:3] if name.startswith('socket.') else args[:2]}")
        raise OSError("network disabled by the test")
    return refused


class RecordingSocket(socket.socket):
    # Creating or binding a socket is local (urllib3 probes IPv6 support by binding ::1 at import); reaching a
    # host takes a name lookup, connect or sendto, and those are refused and recorded.
    def connect(self, address):
        if self.family == socket.AF_UNIX:
            return super().connect(address)
        return refuse("socket.connect")(self, address)

    def connect_ex(self, address):
        if self.family == socket.AF_UNIX:
            return super().connect_ex(address)
        return refuse("socket.connect_ex")(self, address)

    def sendto(self, *args):
        return refuse("socket.sendto")(self, *args)


socket.socket = RecordingSocket
for name in ("getaddrinfo", "gethostbyname", "gethostbyname_ex", "create_connection"):
    setattr(socket, name, refuse(name))

sys.path.insert(0, sys.argv[1])
import leap_binder

during_import = list(attempts)
try:  # the recorder must see a connection made the way urllib3 makes it, or an empty list would prove nothing
    socket.socket(socket.AF_INET, socket.SOCK_STREAM).connect(("127.0.0.1", 9))
except OSError:
    pass
print(json.dumps({"during_import": during_import, "recorder_works": len(attempts) > len(during_import),
                  "model_path": str(leap_binder.CONFIG.model_path)}))
"""


def _import_binder_offline(tmp_path: Path, config_path: Path, **env_changes: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("IS_TENSORLEAP_PLATFORM", "TL_DISABLE_ANALYTICS")}
    env |= {"COCO_SEG_CONFIG": str(config_path), "HOME": str(tmp_path / "home")} | env_changes
    process = subprocess.run([sys.executable, "-c", IMPORT_WITHOUT_NETWORK, str(REPO_ROOT)], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=300)
    assert process.returncode == 0, process.stderr
    return json.loads(process.stdout.strip().splitlines()[-1])


def test_importing_the_binder_touches_no_network(tmp_path, generated_root, reports_dir):
    missing_model = tmp_path / "no-such-model.onnx"  # never loaded at import time
    config_path = write_config(tmp_path, data_tree(generated_root) | {"model": {"path": str(missing_model)}})
    result = _import_binder_offline(tmp_path, config_path, TL_DISABLE_ANALYTICS="true")
    assert result == {"during_import": [], "recorder_works": True, "model_path": str(missing_model)}
    assert not reports_dir.exists()  # preprocess did not run at import either
    # The control: without TL_DISABLE_ANALYTICS code-loader's import-time telemetry does try to reach its server,
    # and the recorder catches it — so the empty list above is the variable's doing, not a blind recorder.
    without = _import_binder_offline(tmp_path, config_path)
    assert any("mixpanel" in attempt for attempt in without["during_import"]), without


# --- atomic outputs -----------------------------------------------------------------------------------------------

def test_checkpoints_are_replaced_atomically(tmp_path, monkeypatch):
    import keras

    from coco_seg.training import save_model_atomically

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    path = tmp_path / "last.keras"
    save_model_atomically(model, path)
    first = path.read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ["last.keras"]
    assert keras.models.load_model(path).count_params() == model.count_params()

    def interrupted_save(target, *args, **kwargs):
        Path(target).write_bytes(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(model, "save", interrupted_save)
    with pytest.raises(OSError, match="disk full"):
        save_model_atomically(model, path)
    assert path.read_bytes() == first  # the previous checkpoint survives
    assert [p.name for p in tmp_path.iterdir()] == ["last.keras"]  # and no temporary file is left
