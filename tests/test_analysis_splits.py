"""The pieces of `coco-seg analyze` that several splits and ignored pixels go through, without a model: split
parsing, unique keys, label issues over several splits, planted recall per split, output matching, stage clock,
and the appearance / image-statistics views."""

import json

import cv2
import numpy as np
import pandas as pd
import pytest

from coco_seg.analysis import run
from coco_seg.analysis.appearance import (APPEARANCE_DIMENSIONS, STATISTICS, appearance_descriptors,
                                          duplicate_space, image_statistics, standardized_rows)
from coco_seg.samples import IGNORED_LABEL

CONFIGURED = ["training", "validation", "unlabeled"]


def test_split_lists_are_parsed_and_checked_against_the_configured_splits():
    assert run.parse_splits(None, CONFIGURED) == CONFIGURED
    assert run.parse_splits("validation", CONFIGURED) == ["validation"]
    assert run.parse_splits(" training , unlabeled", CONFIGURED) == ["training", "unlabeled"]
    assert run.parse_splits(["validation", "training"], CONFIGURED) == ["validation", "training"]
    with pytest.raises(ValueError, match=r"--split names 'test', which is not a configured split \(configured: "
                                         r"training, validation, unlabeled\)"):
        run.parse_splits("training,test", CONFIGURED)
    with pytest.raises(ValueError, match="names a split twice"):
        run.parse_splits("training,training", CONFIGURED)
    for bad in ("", "training,", ",validation"):
        with pytest.raises(ValueError, match="one or more splits separated by commas"):
            run.parse_splits(bad, CONFIGURED)


def test_keys_are_the_sample_ids_unless_an_id_repeats_across_splits():
    keys = run.sample_keys(["training", "training", "validation", "unlabeled"], ["1", "2", "2", "x"])
    assert keys == ["1", "training/2", "validation/2", "x"]
    assert len(set(keys)) == len(keys)


def _streamed(labels: np.ndarray, probabilities: np.ndarray) -> run.StreamedSplit:
    count = len(labels)
    ignored = (labels == IGNORED_LABEL).reshape(count, -1).sum(axis=1)
    return run.StreamedSplit(samples=pd.DataFrame({"row": np.arange(count), "ignored_pixels": ignored}),
                             embeddings=np.zeros((count, 2)),
                             probabilities=np.moveaxis(probabilities, -1, 1).astype(np.float16), labels=labels,
                             predicted=probabilities.argmax(-1).astype(np.uint8), appearance=np.zeros((count, 1)),
                             encoder_features=np.zeros((count, 1)), statistics=np.zeros((count, 1)))


def _confident(labels: np.ndarray, classes: int, rng: np.random.Generator, *, agree: float = 0.95) -> np.ndarray:
    """(N, S, S, K) probabilities that put `agree` on the given label (on class 1 where the label is ignored)."""
    target = np.where(labels == IGNORED_LABEL, 1, labels)
    probabilities = np.full(labels.shape + (classes,), (1 - agree) / (classes - 1))
    np.put_along_axis(probabilities, target[..., None], agree, axis=-1)
    noise = rng.uniform(0, 0.02, probabilities.shape)
    probabilities = probabilities + noise
    return probabilities / probabilities.sum(-1, keepdims=True)


def test_label_issues_never_flag_ignored_pixels_and_score_the_labelled_ones(tmp_path):
    """An image whose left half is ignored (a crowd region) while the model sees a person there: the old argmax of
    the all-zero one-hot called it background, which cleanlab flagged. Ignored, it is clean; a planted swap in the
    labelled half is still found."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, (12, 16, 16)).astype(np.uint8)
    probabilities = _confident(labels, 3, rng)
    labels[0, :, :8] = IGNORED_LABEL  # the model is confident in person (1) there
    labels[1, :4, :4] = 2  # a swap: the model is surer these 16 pixels are background than of any labelled pixel
    probabilities[1, :4, :4] = _confident(np.zeros((4, 4), np.uint8), 3, rng, agree=0.99)
    issues = run.find_label_issues([("training", _streamed(labels, probabilities), np.arange(12))],
                                   class_names=["background", "person", "car"], work=tmp_path)
    masks, scores = issues.issue_masks["training"], issues.image_scores["training"]
    assert not masks[0][:, :8].any() and scores[0] == pytest.approx(1.0 - masks[0].sum() / 128)
    inside, outside = masks[1][:4, :4].mean(), (masks[1].sum() - masks[1][:4, :4].sum()) / (256 - 16)
    # every swapped pixel is confidently another class and has the lowest self-confidence: exactly those flagged
    assert inside == 1.0 and outside == 0.0 and scores[1] == pytest.approx(1.0 - 16 / 256)
    assert scores[1] == scores.min()
    swaps = issues.class_swaps.set_index(["given_label", "predicted_label"])["pixels"].to_dict()
    assert max(swaps, key=swaps.get) == ("car", "background") and ("background", "person") not in swaps


def test_label_issues_over_two_splits_equal_one_call_on_their_rows(tmp_path):
    """One confident-learning estimate over every labeled split's kept rows: the scores of training + validation
    are those of a single split holding the same rows; a row left out gets NaN and no flagged pixel."""
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, (10, 8, 8)).astype(np.uint8)
    probabilities = _confident(labels, 3, rng, agree=0.7)
    probabilities[:3] = _confident(rng.integers(0, 3, (3, 8, 8)).astype(np.uint8), 3, rng)  # noisy labels
    together = run.find_label_issues([("all", _streamed(labels, probabilities), np.arange(10))],
                                     class_names=["b", "p", "c"], work=tmp_path / "one")
    kept_validation = np.array([0, 2, 3])  # validation row 1 (global row 7) is left out (say, non-finite)
    split = run.find_label_issues([("training", _streamed(labels[:6], probabilities[:6]), np.arange(6)),
                                   ("validation", _streamed(labels[6:], probabilities[6:]), kept_validation)],
                                  class_names=["b", "p", "c"], work=tmp_path / "two")
    alone = run.find_label_issues([("all", _streamed(np.delete(labels, 7, 0), np.delete(probabilities, 7, 0)),
                                    np.arange(9))], class_names=["b", "p", "c"], work=tmp_path / "three")
    expected = alone.image_scores["all"]
    np.testing.assert_allclose(split.image_scores["training"], expected[:6])
    np.testing.assert_allclose(split.image_scores["validation"][kept_validation], expected[6:])
    assert np.isnan(split.image_scores["validation"][1]) and not split.issue_masks["validation"][1].any()
    assert together.image_scores["all"][:3].max() < together.image_scores["all"][3:].min()


def test_planted_recall_ranks_within_the_planted_split(tmp_path):
    planted = tmp_path / "planted_defects.json"
    planted.write_text(json.dumps({"planted": [{"image_id": 1, "split": "training"},
                                               {"image_id": 2, "split": "training"}]}))
    samples = pd.DataFrame({"split": ["training"] * 5 + ["validation"] * 4,
                            "sample_id": ["1", "2", "3", "4", "5", "6", "7", "8", "9"],
                            "label_issue_score": [0.2, 0.5, 0.3, 0.9, 0.95, 0.01, 0.02, 0.03, 0.04]})
    recall = run.planted_defect_recall(samples, planted)
    # within training the top 4 are 1, 3, 2, 4; validation's lower scores do not push them out
    assert recall == {"planted": 2, "found_in_top": 2, "top": 4, "recall": 1.0}
    samples.loc[samples["sample_id"] == "2", "label_issue_score"] = 0.99
    assert run.planted_defect_recall(samples, planted)["found_in_top"] == 1
    assert run.planted_defect_recall(samples, tmp_path / "absent.json") is None


def test_model_outputs_are_matched_by_shape_not_order():
    logits, features, pooled = np.zeros((2, 8, 8, 3)), np.zeros((2, 4, 4, 16)), np.zeros((2, 96))
    expected = [(8, 8, 3), (None, None, 16), (96,)]
    for order in ([0, 1, 2], [2, 0, 1], [1, 2, 0]):
        produced = [[logits, features, pooled][i] for i in order]
        got = run._order_outputs(produced, expected)
        assert [g is t for g, t in zip(got, (logits, features, pooled))] == [True, True, True]


def test_stage_clock_records_each_stage_with_its_own_peak():
    clock = run.StageClock()
    block = np.ones(200_000_000 // 8)
    block[::4096] = 2.0  # touched: resident
    del block
    clock.done("big")
    clock.done("small")
    big, small = clock.stages
    assert [big["stage"], small["stage"]] == ["big", "small"] and big["seconds"] >= small["seconds"] >= 0
    if clock.peak_is_cumulative:
        assert small["peak_rss_mb"] >= big["peak_rss_mb"]
    else:  # Linux: the high-water mark was reset after "big"
        assert big["peak_rss_mb"] > small["peak_rss_mb"] + 150


def _scene(seed: int, size: int = 96) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = np.zeros((size, size, 3), np.uint8)
    image[:] = rng.integers(60, 200, 3)
    for _ in range(4):
        x, y = rng.integers(0, size - 30, 2)
        cv2.rectangle(image, (int(x), int(y)), (int(x) + 30, int(y) + 20), tuple(int(v) for v in rng.integers(0, 256, 3)), -1)
    return image


def test_appearance_descriptors_survive_a_reencode_and_a_crop_but_tell_scenes_apart():
    scenes = np.stack([_scene(seed) for seed in range(6)])
    copy = cv2.imdecode(cv2.imencode(".jpg", scenes[0][3:-3, 3:-3], [cv2.IMWRITE_JPEG_QUALITY, 60])[1],
                        cv2.IMREAD_UNCHANGED)
    rows = appearance_descriptors(np.concatenate([scenes, cv2.resize(copy, (96, 96))[None]]))
    assert rows.shape == (7, APPEARANCE_DIMENSIONS) and rows.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, rtol=1e-5)
    similarity = rows @ rows.T
    assert similarity[0, 6] > 0.9
    assert similarity[:6, :6][~np.eye(6, dtype=bool)].max() < similarity[0, 6]
    flat = appearance_descriptors(np.full((1, 32, 32, 3), 128, np.uint8))
    assert not flat.any()  # no layout at all: a zero row, not NaN
    with pytest.raises(ValueError, match=r"images must be \(N, H, W, 3\)"):
        appearance_descriptors(np.zeros((32, 32, 3), np.uint8))


def test_duplicate_space_dot_product_is_the_mean_of_the_two_cosines():
    rng = np.random.default_rng(0)
    appearance, encoder = rng.normal(size=(5, 4)), rng.normal(size=(5, 3)) + 2.0
    reference = np.array([True, True, True, False, False])
    space = duplicate_space(appearance, encoder, reference=reference)
    centred = encoder - encoder[reference].mean(axis=0)
    a = appearance / np.linalg.norm(appearance, axis=1, keepdims=True)
    e = centred / np.linalg.norm(centred, axis=1, keepdims=True)
    np.testing.assert_allclose(space @ space.T, 0.5 * (a @ a.T + e @ e.T), atol=1e-12)
    np.testing.assert_allclose(duplicate_space(appearance, None, reference=reference), a)


def test_image_statistics_measure_what_they_name():
    gray = np.full((1, 64, 64, 3), 128, np.uint8)
    noise = np.random.default_rng(0).integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)
    red = np.zeros((1, 64, 64, 3), np.uint8)
    red[..., 0] = 220
    rows = dict(zip(["gray", "noise", "red"], image_statistics(np.concatenate([gray, noise, red]))))
    stat = {name: index for index, name in enumerate(STATISTICS)}
    assert rows["gray"][stat["saturation"]] == 0 and rows["red"][stat["saturation"]] == pytest.approx(1.0)
    assert rows["gray"][stat["gradient"]] == 0 == rows["red"][stat["gradient"]] and rows["noise"][stat["gradient"]] > 0.5
    assert rows["noise"][stat["high_frequency_share"]] > 0.5 and rows["red"][stat["a_mean"]] > 0.5
    assert rows["gray"][stat["L_sd"]] == pytest.approx(0, abs=1e-4) and rows["noise"][stat["L_sd"]] > 0.1


def test_standardized_rows_use_the_reference_rows_with_a_floor():
    matrix = np.array([[1.0, 5.0], [2.0, 5.0], [3.0, 5.0], [10.0, 6.0]])
    reference = np.array([True, True, True, False])
    z = standardized_rows(matrix, reference=reference)
    scale = max(1.4826 * 1.0, np.std([1.0, 2.0, 3.0]))
    np.testing.assert_allclose(z[:, 0], (matrix[:, 0] - 2.0) / scale)
    np.testing.assert_allclose(z[:, 1], [0, 0, 0, 1e3])  # constant in the reference: the floor 1e-3
