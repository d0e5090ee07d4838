"""coco_seg.sample_store and the training input pipeline that reads it (issue 16 point 3): the training samples are
bit for bit the binder encoders' values, whatever the image file holds; a store is rebuilt exactly where files
changed; worker processes store the same bytes and report their failures to the opening process."""

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest

from coco_seg.coco_data import load_labeled_split, load_unlabeled_split
from coco_seg.config import REPORTS_DIR_ENV_VAR, load_config
from coco_seg.encoders import encode_image, encode_mask
from coco_seg.sample_store import (MANIFEST_NAME, MIN_SAMPLES_PER_WORKER, default_workers, open_sample_store,
                                   store_key)
from coco_seg.samples import CACHE
from _support import (LAYOUT_VARIANTS, REAL_SAMPLE, REAL_SPLITS, REPO_ROOT, corrupt_jpeg_middle, data_tree,
                      requires_real_sample, subprocess_env, write_config, write_layout_variants)

IMAGE_SIZE = 64


@pytest.fixture
def editable(tmp_path, generated_root, monkeypatch) -> Path:
    """A private copy of the generated dataset that a test may damage; its reports go to a private folder."""
    monkeypatch.setenv(REPORTS_DIR_ENV_VAR, str(tmp_path / "reports"))
    root = tmp_path / "coco"
    shutil.copytree(generated_root, root)
    return root


def load(folder: Path, tree: dict, image_size: int = IMAGE_SIZE):
    folder.mkdir(parents=True, exist_ok=True)
    config = load_config(write_config(folder, {"image_size": image_size} | tree))
    return load_labeled_split(config, "training", data_root=config.data_root)


def training_images(root: Path) -> list[dict]:
    """Training image entries holding a person or a car, in sample order."""
    dataset = json.loads((root / "annotations" / "instances_train2017.json").read_text())
    with_class = {a["image_id"] for a in dataset["annotations"] if a["category_id"] in (1, 3)}
    return sorted((i for i in dataset["images"] if i["id"] in with_class), key=lambda i: i["id"])


def assert_batches_are_the_encoders(store, batch_size: int = 8) -> int:
    """make_dataset without shuffle or augmentation yields exactly encode_image / encode_mask, sample by sample."""
    from coco_seg.training import make_dataset

    split, position = store.split, 0
    for images, masks in make_dataset(store, batch_size=batch_size, shuffle=False, augment=False, seed=0):
        for image, mask in zip(images.numpy(), masks.numpy()):
            sample_id = split.sample_ids[position]
            expected_image = encode_image(split, sample_id)
            assert image.dtype == expected_image.dtype == np.float32
            np.testing.assert_array_equal(image, expected_image, err_msg=f"image of sample {sample_id}")
            np.testing.assert_array_equal(mask, encode_mask(split, sample_id), err_msg=f"mask of sample {sample_id}")
            position += 1
    assert position == len(split.sample_ids)
    return position


@pytest.mark.parametrize("source", ["generated", pytest.param("real", marks=requires_real_sample)])
def test_training_samples_are_bit_for_bit_the_binder_encoders(tmp_path, generated_root, source):
    """Every training sample of the generated and of the real COCO sample (128 px, stored by 2 worker
    processes), without augmentation, equals what the binder's encoders serve: image float32 bit for bit (same
    decode, resize and normalisation arithmetic), mask one-hot for one-hot."""
    tree = data_tree(generated_root) if source == "generated" else data_tree(REAL_SAMPLE, splits=REAL_SPLITS)
    split = load(tmp_path, tree, image_size=128)
    store = open_sample_store(split, workers=2, root=tmp_path / "store")
    assert (store.encoded, store.reused, store.failures) == (len(split.sample_ids), 0, [])
    assert assert_batches_are_the_encoders(store) == len(split.sample_ids)
    assert store.bytes == sum(Path(path).stat().st_size for path in store.paths) > 0


def test_every_pixel_layout_and_an_undecodable_file_are_stored_exactly(tmp_path, editable):
    """16-bit and RGBA PNG, CMYK and grayscale JPEG, and a JPEG corrupt in its middle (a placeholder: black image,
    every pixel ignored) come out of the training pipeline as the encoders serve them. The placeholder is in the
    store's failures and the split's ledger — and again after a reopen that decodes nothing."""
    images = training_images(editable)
    write_layout_variants(editable, images[:len(LAYOUT_VARIANTS)])
    broken = images[len(LAYOUT_VARIANTS)]
    corrupt_jpeg_middle(editable / "train2017" / broken["file_name"])
    split = load(tmp_path, data_tree(editable))
    store = open_sample_store(split, root=tmp_path / "store")
    assert [(b.sample_id, b.file) for b in store.failures] == [(str(broken["id"]),
                                                               str(editable / "train2017" / broken["file_name"]))]
    assert "corrupt" in store.failures[0].reason.lower()
    assert assert_batches_are_the_encoders(store) == len(split.sample_ids)
    placeholder = split.sample_ids.index(str(broken["id"]))
    assert not encode_mask(split, split.sample_ids[placeholder]).any()  # all ignored, as the binder serves it

    CACHE.clear()
    again = load(tmp_path / "again", data_tree(editable))
    reopened = open_sample_store(again, root=tmp_path / "store")
    assert (reopened.encoded, reopened.reused) == (0, len(again.sample_ids))
    assert list(again.failed_at_decode) == [str(broken["id"])]  # recorded without decoding it again
    report = json.loads((tmp_path / "reports" / "bad_samples_training.json").read_text())
    assert [entry["sample_id"] for entry in report["failed_at_decode"]] == [str(broken["id"])]


def test_only_changed_or_missing_samples_are_decoded_again(tmp_path, editable):
    split = load(tmp_path, data_tree(editable))
    root = tmp_path / "store"
    first = open_sample_store(split, root=root)
    assert (first.encoded, first.reused) == (len(split.sample_ids), 0)
    changed = editable / "train2017" / training_images(editable)[0]["file_name"]
    cv2.imwrite(str(changed), 255 - cv2.imread(str(changed)))  # same size, other pixels: a new ctime
    Path(first.paths[3]).unlink()  # a stored PNG lost
    CACHE.clear()
    split = load(tmp_path / "again", data_tree(editable))
    second = open_sample_store(split, root=root)
    assert (second.encoded, second.reused) == (2, len(split.sample_ids) - 2)
    assert assert_batches_are_the_encoders(second) == len(split.sample_ids)  # the changed image, not the old one

    (root / store_key(split) / MANIFEST_NAME).write_text("{not json")  # an unreadable manifest: all again
    assert open_sample_store(split, root=root).encoded == len(split.sample_ids)
    other_size = load(tmp_path / "other", data_tree(editable), image_size=32)
    assert store_key(other_size) != store_key(split)  # another image size is another store


def test_worker_processes_store_the_same_bytes_and_report_their_failures(tmp_path, editable):
    broken = training_images(editable)[2]
    corrupt_jpeg_middle(editable / "train2017" / broken["file_name"])
    alone = open_sample_store(load(tmp_path / "alone", data_tree(editable)), workers=1, root=tmp_path / "one")
    split = load(tmp_path / "pool", data_tree(editable))
    pooled = open_sample_store(split, workers=2, root=tmp_path / "two")
    assert [Path(path).read_bytes() for path in pooled.paths] == [Path(path).read_bytes() for path in alone.paths]
    assert pooled.failures == alone.failures and len(pooled.failures) == 1
    assert list(split.failed_at_decode) == [str(broken["id"])]  # the worker's failure reached this process
    report = json.loads((tmp_path / "reports" / "bad_samples_training.json").read_text())
    assert [entry["sample_id"] for entry in report["failed_at_decode"]] == [str(broken["id"])]


def test_worker_count_and_refusals(tmp_path, generated_root):
    assert default_workers(MIN_SAMPLES_PER_WORKER - 1) == 1  # a small split is decoded in this process
    assert default_workers(10 ** 9) == len(__import__("os").sched_getaffinity(0))
    config = load_config(write_config(tmp_path, {"data": {"root": str(generated_root),
                                                          "splits": {"unlabeled": {"images": "val2017"}}}}))
    unlabeled = load_unlabeled_split(config, data_root=config.data_root)
    with pytest.raises(ValueError, match=f"split {unlabeled.name} is unlabeled"):
        open_sample_store(unlabeled, root=tmp_path / "store")


def test_a_script_without_a_main_guard_gets_told_why_its_workers_died(tmp_path, generated_root):
    """Workers are spawned and import the calling script: one without ``if __name__ == "__main__"`` makes them
    die at start; the error says so instead of a bare BrokenProcessPool."""
    config_path = write_config(tmp_path, data_tree(generated_root))
    script = tmp_path / "unguarded.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(REPO_ROOT)!r})
        from coco_seg.coco_data import load_labeled_split
        from coco_seg.config import load_config
        from coco_seg.sample_store import open_sample_store
        config = load_config({str(config_path)!r})
        split = load_labeled_split(config, "training", data_root=config.data_root)
        open_sample_store(split, workers=2, root={str(tmp_path / 'store')!r})
    """))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                            env=subprocess_env())
    assert result.returncode != 0
    assert 'must sit under `if __name__ == "__main__":`' in result.stderr
    assert "or pass workers=1" in result.stderr
