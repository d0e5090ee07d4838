"""Median-frequency class weights: the formula on hand-made counts, the statistics against pycocotools, and training
with ``class_weights="median-frequency"`` recording what it used."""

import json

import numpy as np
import pytest
from pycocotools.coco import COCO

from _support import data_tree, write_config
from coco_seg.class_balance import ClassPixelStatistics, class_pixel_statistics, median_frequency_weights
from coco_seg.coco_data import load_labeled_split
from coco_seg.config import load_config


def test_weights_on_hand_made_counts():
    # background in every image (900 of 1000 pixels each, 2 images), person 80 of 1000 in both, car 20 in one
    statistics = ClassPixelStatistics(pixels=np.array([1800, 160, 20]), image_pixels=np.array([2000, 2000, 1000]))
    frequency = np.array([0.9, 0.08, 0.02])
    assert median_frequency_weights(statistics) == pytest.approx(tuple(0.08 / frequency))
    assert median_frequency_weights(statistics)[1] == pytest.approx(1.0)  # the median class


def test_a_class_that_never_occurs_gets_weight_one_and_an_empty_split_is_refused():
    statistics = ClassPixelStatistics(pixels=np.array([900, 100, 0]), image_pixels=np.array([1000, 1000, 0]))
    weights = median_frequency_weights(statistics)
    assert weights[2] == 1.0 and weights[0] == pytest.approx(0.5 / 0.9) and weights[1] == pytest.approx(5.0)
    with pytest.raises(ValueError, match="at least one labelled pixel"):
        median_frequency_weights(ClassPixelStatistics(np.zeros(3, np.int64), np.zeros(3, np.int64)))


def test_statistics_equal_pycocotools_masks(tmp_path, dataset):
    config = load_config(write_config(tmp_path, dataset))
    split = load_labeled_split(config, "training", data_root=config.data_root)
    coco = COCO(str(config.data_root / config.splits["training"].annotations))
    pixels, image_pixels = np.zeros(3, np.int64), np.zeros(3, np.int64)
    for sample_id in split.sample_ids:
        info = coco.imgs[int(sample_id)]
        label = np.zeros((info["height"], info["width"]), np.uint8)
        for index in (2, 1):  # the documented overlap rule: the class listed first wins
            for annotation in coco.imgToAnns[int(sample_id)]:
                if split.class_of_category.get(annotation["category_id"]) == index:
                    label[coco.annToMask(annotation) > 0] = index
        counts = np.bincount(label.ravel(), minlength=3)
        pixels += counts
        image_pixels += np.where(counts > 0, label.size, 0)
    statistics = class_pixel_statistics(split)
    np.testing.assert_array_equal(statistics.pixels, pixels)
    np.testing.assert_array_equal(statistics.image_pixels, image_pixels)
    weights = median_frequency_weights(statistics)
    assert weights[0] < 1.0 < max(weights[1:])  # background dominant: weighted down, the rarest class up


def test_training_with_median_frequency_records_the_weights_it_used(tmp_path, generated_root):
    from coco_seg.training import STATE_NAME, TrainOptions, train, training_card_fields

    config = load_config(write_config(tmp_path, data_tree(generated_root) | {"image_size": 64}))
    options = TrainOptions(epochs=1, batch_size=8, encoder_weights="none", alpha=0.35, class_weights="median-frequency")
    messages: list[str] = []
    state = train(config, tmp_path / "run", options, log=messages.append)
    expected = median_frequency_weights(
        class_pixel_statistics(load_labeled_split(config, "training", data_root=config.data_root)))
    assert state.class_balance["method"] == "median-frequency"
    assert state.class_balance["weights"] == pytest.approx(list(expected))
    saved = json.loads((tmp_path / "run" / STATE_NAME).read_text())
    assert saved["class_balance"]["weights"] == pytest.approx(list(expected))
    assert saved["options"]["class_weights"] == "median-frequency"
    assert any(line.startswith("class weights (median-frequency): background ") for line in messages)
    card = training_card_fields(tmp_path / "run" / "checkpoints" / "last.keras")
    assert card["class_balance"]["weights"] == pytest.approx(list(expected))
    with pytest.raises(ValueError, match="class_weights must be 'median-frequency' or one number per class"):
        train(config, tmp_path / "other", TrainOptions(epochs=1, class_weights="inverse", encoder_weights="none"))


@pytest.mark.parametrize(("given", "message"), [
    ("foo", "--class-weights takes median-frequency, none or one number per class separated by commas, got 'foo'"),
    ("1,2", "class_weights needs 3 values (background, person, car), got 2"),
    ("nan,1,1", "class_weights must be finite numbers >= 0, not all 0, got (nan, 1.0, 1.0)"),
    ("1,-1,1", "class_weights must be finite numbers >= 0, not all 0, got (1.0, -1.0, 1.0)"),
    ("0,0,0", "class_weights must be finite numbers >= 0, not all 0, got (0.0, 0.0, 0.0)"),
    ("1e400,1,1", "class_weights must be finite numbers >= 0, not all 0, got (inf, 1.0, 1.0)"),
])
def test_train_refuses_unusable_class_weights_in_one_line(tmp_path, generated_root, capsys, monkeypatch, given,
                                                          message):
    from coco_seg.cli import main
    from coco_seg.config import CONFIG_ENV_VAR

    monkeypatch.setenv(CONFIG_ENV_VAR, "")  # main exports --config here: undone after the test

    config = write_config(tmp_path, data_tree(generated_root) | {"image_size": 64})
    code = main(["--config", str(config), "train", "--out", str(tmp_path / "run"), "--epochs", "1",
                 "--encoder-weights", "none", "--alpha", "0.35", "--class-weights", given])
    assert code == 2
    assert capsys.readouterr().err.strip() == f"coco-seg train: error: {message}"
    assert not (tmp_path / "run" / "train_state.json").exists()


def test_median_frequency_is_the_default_and_none_means_plain_cross_entropy(tmp_path, generated_root, monkeypatch):
    from coco_seg.cli import build_parser, main
    from coco_seg.config import CONFIG_ENV_VAR

    monkeypatch.setenv(CONFIG_ENV_VAR, "")  # main exports --config here: undone after the test
    from coco_seg.training import STATE_NAME, TrainOptions

    assert TrainOptions().class_weights == "median-frequency"
    assert build_parser().parse_args(["train", "--out", "x"]).class_weights == "median-frequency"

    config = write_config(tmp_path, data_tree(generated_root) | {"image_size": 64})
    assert main(["--config", str(config), "train", "--out", str(tmp_path / "run"), "--epochs", "1",
                 "--encoder-weights", "none", "--alpha", "0.35", "--class-weights", "none"]) == 0
    saved = json.loads((tmp_path / "run" / STATE_NAME).read_text())
    assert saved["options"]["class_weights"] is None and saved["class_balance"] is None


def test_repeat_factors_on_a_hand_made_presence_matrix():
    from coco_seg.class_balance import repeat_factors

    # 10 images: background everywhere, person in 5, car in 1 (image 0, with a person), image 9 background only
    presence = np.zeros((10, 3), bool)
    presence[:, 0] = True
    presence[:5, 1] = True
    presence[0, 2] = True
    # threshold 0.5: person f = 0.5 -> 1; car f = 0.1 -> sqrt(5) = 2.24 -> 2; background is never a reason
    np.testing.assert_array_equal(repeat_factors(presence, threshold=0.5), [2, 1, 1, 1, 1, 1, 1, 1, 1, 1])
    # threshold 1: person sqrt(2) = 1.41 -> 1; car sqrt(10) = 3.16 -> 3
    np.testing.assert_array_equal(repeat_factors(presence, threshold=1.0), [3, 1, 1, 1, 1, 1, 1, 1, 1, 1])
    presence[:8, 1] = True  # person in 8 of 10 at threshold 1: sqrt(1.25) = 1.12 -> 1
    assert repeat_factors(presence, threshold=1.0).tolist() == [3] + [1] * 9
    presence[:, 1:] = False  # no target class anywhere: nothing repeats
    assert repeat_factors(presence, threshold=1.0).tolist() == [1] * 10
    assert repeat_factors(np.zeros((0, 3), bool), threshold=0.5).tolist() == []
    for threshold in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="repeat-factor threshold must be in"):
            repeat_factors(presence, threshold=threshold)


def test_class_presence_agrees_with_the_pixel_statistics(tmp_path, dataset):
    from coco_seg.class_balance import class_presence

    config = load_config(write_config(tmp_path, dataset))
    split = load_labeled_split(config, "training", data_root=config.data_root)
    presence = class_presence(split)
    assert presence.shape == (len(split.sample_ids), 3)
    statistics = class_pixel_statistics(split)
    for column in range(3):  # each image holding class c contributes its whole area to image_pixels[c]
        areas = [split.records[s].height * split.records[s].width for s, held in zip(split.sample_ids, presence[:, column])
                 if held]
        assert sum(areas) == statistics.image_pixels[column]


def test_repeated_samples_appear_that_often_with_their_own_augmentation(tmp_path, generated_root):
    from coco_seg.sample_store import open_sample_store
    from coco_seg.training import make_dataset

    config = load_config(write_config(tmp_path, data_tree(generated_root) | {"image_size": 64,
                                                                            "sample_limit_per_split": 5}))
    store = open_sample_store(load_labeled_split(config, "training", data_root=config.data_root))
    repeats = np.array([3, 1, 1, 1, 2])
    plain = [i.numpy() for i, _ in make_dataset(store, batch_size=1, shuffle=False, augment=False, seed=0,
                                                   repeats=repeats)]
    assert len(plain) == 8
    for position, sample in enumerate([0, 0, 0, 1, 2, 3, 4, 4]):
        first = [i.numpy() for i, _ in make_dataset(store, batch_size=1, shuffle=False, augment=False, seed=0)]
        np.testing.assert_array_equal(plain[position], first[sample])
    augmented = [i.numpy() for i, _ in make_dataset(store, batch_size=1, shuffle=False, augment=True, seed=0,
                                                       repeats=repeats)]
    assert not np.array_equal(augmented[0], augmented[1]) or not np.array_equal(augmented[1], augmented[2])
    shuffled = [i.numpy() for i, _ in make_dataset(store, batch_size=8, shuffle=True, augment=False, seed=0,
                                                      repeats=repeats)][0]
    assert shuffled.shape[0] == 8  # one epoch: every occurrence once, in a seed-drawn order
    assert sorted(map(lambda image: image.tobytes(), shuffled)) == sorted(map(lambda image: image.tobytes(), plain))
    with pytest.raises(ValueError, match="repeats needs one count >= 1 per sample"):
        make_dataset(store, batch_size=1, shuffle=False, augment=False, seed=0, repeats=np.array([1, 0, 1, 1, 1]))


def test_training_with_repeat_factor_sampling_records_it_and_resumes(tmp_path, generated_root):
    from coco_seg.class_balance import class_presence, repeat_factors
    from coco_seg.training import STATE_NAME, TrainOptions, train

    root = tmp_path / "coco"  # the generated sample with cars left in 2 training images only: a rare class
    (root / "annotations").mkdir(parents=True)
    for folder in ("train2017", "val2017"):
        (root / folder).symlink_to(generated_root / folder)
    (root / "annotations" / "instances_val2017.json").write_text(
        (generated_root / "annotations" / "instances_val2017.json").read_text())
    train_file = json.loads((generated_root / "annotations" / "instances_train2017.json").read_text())
    car_images = sorted({a["image_id"] for a in train_file["annotations"] if a["category_id"] == 3})[:2]
    train_file["annotations"] = [a for a in train_file["annotations"]
                                 if a["category_id"] != 3 or a["image_id"] in car_images]
    (root / "annotations" / "instances_train2017.json").write_text(json.dumps(train_file))
    config = load_config(write_config(tmp_path, data_tree(root) | {"image_size": 64}))
    split = load_labeled_split(config, "training", data_root=config.data_root)
    expected = repeat_factors(class_presence(split), threshold=1.0)
    assert sorted(expected.tolist())[-2:] == [3, 3] and (expected > 1).sum() == 2  # car: 2 of 24 images, sqrt(12) = 3.46
    options = TrainOptions(epochs=1, batch_size=8, encoder_weights="none", alpha=0.35, repeat_threshold=1.0)
    messages: list[str] = []
    state = train(config, tmp_path / "run", options, log=messages.append)
    assert state.sampling == {"method": "repeat-factor", "images_repeated": int((expected > 1).sum()),
                              "epoch_samples": int(expected.sum()), "max_repeats": int(expected.max())}
    saved = json.loads((tmp_path / "run" / STATE_NAME).read_text())
    assert saved["sampling"] == state.sampling and saved["options"]["repeat_threshold"] == 1.0
    assert any(line.startswith("repeat-factor sampling (threshold 1.0): ") for line in messages)
    resumed = train(config, tmp_path / "run", TrainOptions(**{**saved["options"], "epochs": 2}), resume=True,
                    log=messages.append)
    assert resumed.epochs_done == 2 and resumed.sampling == state.sampling
    with pytest.raises(ValueError, match=r"repeat_threshold must be 0 \(off\) or in \(0, 1\], got 2.0"):
        train(config, tmp_path / "other", TrainOptions(epochs=1, encoder_weights="none", repeat_threshold=2.0))
