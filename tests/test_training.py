"""Training, evaluation and export of a trained model: it learns, it resumes exactly, the figures are right."""

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from _support import REAL_SAMPLE, REAL_SPLITS, REPO_ROOT, data_tree, subprocess_env, write_config
from coco_seg import metrics
from coco_seg.coco_data import load_labeled_split
from coco_seg.config import load_config
from coco_seg.encoders import encode_image, encode_mask
from coco_seg.evaluate import dataset_iou, evaluate_model, evaluate_split

IMAGE_SIZE = 64
OPTIONS = dict(epochs=3, batch_size=8, encoder_weights="none", alpha=0.35, fine_tune=True, seed=3)


def test_dataset_iou_on_known_labels():
    ground_truth = np.eye(4, dtype=np.float32)[np.array([[[0, 0, 1], [1, 2, 2]]])]
    predicted = np.eye(4, dtype=np.float32)[np.array([[[0, 1, 1], [1, 2, 0]]])]
    true_positives, false_positives, false_negatives = (c.sum(axis=0) for c in
                                                        metrics.confusion_counts(ground_truth, predicted))
    assert (true_positives.tolist(), false_positives.tolist(), false_negatives.tolist()) == \
        ([1, 2, 1, 0], [1, 1, 0, 0], [1, 0, 1, 0])
    iou = dataset_iou(true_positives, false_positives, false_negatives)
    # background: TP 1, FP 1 (a 2 predicted as 0), FN 1 → 1/3; class 1: TP 2, FP 1 → 2/3; class 2: 1/2; class 3: unseen
    np.testing.assert_allclose(iou[:3], [1 / 3, 2 / 3, 1 / 2])
    assert np.isnan(iou[3])


@pytest.fixture(scope="module")
def small_config(tmp_path_factory, generated_root):
    folder = tmp_path_factory.mktemp("train-config")
    return load_config(write_config(folder, data_tree(generated_root) | {"image_size": IMAGE_SIZE}))


def test_evaluate_split_against_oracles(small_config):
    split = load_labeled_split(small_config, "validation", data_root=small_config.data_root)
    masks = {i: encode_mask(split, i) for i in split.sample_ids}
    lookup = {encode_image(split, i).tobytes(): masks[i] for i in split.sample_ids}
    perfect = evaluate_split(lambda images: np.stack([lookup[image.tobytes()] for image in images]), split)
    assert perfect.mean_iou == 1.0 and perfect.mean_per_image_iou == 1.0 and perfect.pixel_accuracy == 1.0
    assert all(v == 1.0 for v in perfect.iou.values())

    background_only = evaluate_split(lambda images: np.tile([10.0, 0.0, 0.0], images.shape[:3] + (1,)), split)
    labels = np.stack(list(masks.values())).argmax(-1)
    assert background_only.iou["background"] == pytest.approx(np.mean(labels == 0))
    assert background_only.iou["person"] == 0.0 and background_only.iou["car"] == 0.0
    assert "| validation |" in background_only.table() and "IoU person" in background_only.table()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, small_config):
    """One uninterrupted run, and the same run interrupted after one epoch and resumed."""
    from coco_seg.training import TrainOptions, train

    base = tmp_path_factory.mktemp("runs")
    options = TrainOptions(**OPTIONS)
    messages: list[str] = []
    whole = train(small_config, base / "whole", options, log=messages.append)
    train(small_config, base / "resumed", replace(options, epochs=1), log=lambda _: None)
    resumed = train(small_config, base / "resumed", options, resume=True, log=lambda _: None)
    return {"base": base, "whole": whole, "resumed": resumed, "messages": messages}


def test_training_loss_falls_and_progress_is_reported(trained):
    losses = [record["train_loss"] for record in trained["whole"].history]
    assert len(losses) == OPTIONS["epochs"]
    assert losses[-1] < 0.8 * losses[0], losses
    epoch_lines = [m for m in trained["messages"] if m.startswith("epoch ")]
    assert len(epoch_lines) == OPTIONS["epochs"]
    assert "train loss" in epoch_lines[0] and "validation mean IoU" in epoch_lines[0]


def test_resume_continues_exactly_where_the_run_stopped(trained):
    whole, resumed = trained["whole"], trained["resumed"]
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3]
    np.testing.assert_allclose([r["train_loss"] for r in resumed.history],
                               [r["train_loss"] for r in whole.history], rtol=1e-4)
    run = trained["base"] / "resumed"
    assert (run / "checkpoints" / "last.keras").is_file() and (run / "checkpoints" / "best.keras").is_file()
    state = json.loads((run / "train_state.json").read_text())
    assert state["epochs_done"] == 3 and state["split_sizes"]["training"] > 0


def run_cli(*args: str, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "coco_seg.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env=subprocess_env())


def test_export_of_a_checkpoint_records_training_and_matches_keras_on_real_images(tmp_path, trained, small_config,
                                                                                  generated_root):
    from coco_seg.export import load_model, predict_logits

    checkpoint = trained["base"] / "whole" / "checkpoints" / "best.keras"
    config_path = write_config(tmp_path, data_tree(small_config.data_root) | {"image_size": IMAGE_SIZE})
    result = run_cli("--config", str(config_path), "export", "--checkpoint", str(checkpoint), "--out",
                     str(tmp_path / "model"))
    assert result.returncode == 0, result.stderr
    card = json.loads((tmp_path / "model" / "model_card.json").read_text())
    assert card["trained"] is True and card["epochs"] == trained["whole"].best_epoch
    assert card["training_data"] == trained["whole"].split_sizes
    assert card["evaluation"]["mean_iou"] == pytest.approx(trained["whole"].best_validation["mean_iou"])
    assert card["classes"] == ["background", "person", "car"] and card["image_size"] == IMAGE_SIZE

    # ONNX parity on real images (the real COCO sample when present, the generated one otherwise). Not a
    # parametrised fixture: that would make pytest set the module's training fixture up once per dataset.
    dataset = (data_tree(REAL_SAMPLE, splits=REAL_SPLITS) if REAL_SAMPLE.is_dir() else data_tree(generated_root))
    images_config = load_config(write_config(tmp_path / "images", dataset | {"image_size": IMAGE_SIZE}))
    split = load_labeled_split(images_config, "training", data_root=images_config.data_root)
    images = np.stack([encode_image(split, i) for i in split.sample_ids[:8]])
    onnx_logits = predict_logits(load_model(tmp_path / "model" / "model.onnx"), images)
    keras_logits = predict_logits(load_model(checkpoint), images)
    assert np.abs(onnx_logits - keras_logits).max() <= 1e-4


def test_evaluate_command_prints_the_table_and_writes_json(tmp_path, trained, small_config):
    checkpoint = trained["base"] / "whole" / "checkpoints" / "last.keras"
    config_path = write_config(tmp_path, data_tree(small_config.data_root) | {"image_size": IMAGE_SIZE})
    result = run_cli("--config", str(config_path), "evaluate", "--model", str(checkpoint), "--json",
                     str(tmp_path / "eval.json"))
    assert result.returncode == 0, result.stderr
    figures = json.loads((tmp_path / "eval.json").read_text())
    assert f"{figures['mean_iou']:.3f}" in result.stdout and "IoU car" in result.stdout
    from coco_seg.export import load_model

    direct = evaluate_model(load_model(checkpoint), small_config)
    assert figures["iou"] == pytest.approx(direct.iou) and figures["samples"] == direct.samples
    last_epoch = trained["whole"].history[-1]
    assert figures["mean_iou"] == pytest.approx(last_epoch["validation_mean_iou"], abs=1e-6)


def test_imagenet_weights_offline_fail_fast_naming_the_option(tmp_path, small_config):
    config_path = write_config(tmp_path, data_tree(small_config.data_root) | {"image_size": IMAGE_SIZE})
    result = run_cli("--config", str(config_path), "train", "--out", str(tmp_path / "run"), "--epochs", "1",
                     "--alpha", "0.35")
    if result.returncode == 0:  # a machine that can download the weights trains instead
        assert (tmp_path / "run" / "checkpoints" / "last.keras").is_file()
        return
    assert result.returncode == 2
    assert "--encoder-weights none" in result.stderr and "PATH" in result.stderr


def test_evaluation_names_a_model_that_outputs_nan_instead_of_averaging_it(small_config):
    split = load_labeled_split(small_config, "validation", data_root=small_config.data_root)
    pixels = len(split.sample_ids) * IMAGE_SIZE ** 2
    broken = evaluate_split(lambda images: np.full(images.shape[:3] + (3,), np.nan, np.float32), split)
    assert (broken.scored_samples, broken.labelled_pixels, broken.non_finite_pixels) == (
        len(split.sample_ids), pixels, pixels)
    assert broken.degenerate() == (f"the model's output is NaN or Inf at every one of the {pixels} labelled pixels "
                                   f"of split validation: it predicts nothing (a diverged or broken model)")

    def one_inf_row(images):
        logits = np.tile(np.array([10.0, 0.0, 0.0], np.float32), images.shape[:3] + (1,))
        logits[:, 0, :, 1] = np.inf
        return logits
    partly = evaluate_split(one_inf_row, split)
    assert partly.non_finite_pixels == len(split.sample_ids) * IMAGE_SIZE and partly.degenerate() is None


def test_evaluation_of_a_split_whose_every_sample_failed_is_refused(small_config, monkeypatch):
    from coco_seg import evaluate

    split = load_labeled_split(small_config, "validation", data_root=small_config.data_root)
    real_batches = evaluate.batches

    def placeholders(*args, **kwargs):  # what every sample looks like when every file fails to decode
        for images, ground_truth in real_batches(*args, **kwargs):
            yield np.full_like(images, -1.0), np.zeros_like(ground_truth)
    monkeypatch.setattr(evaluate, "batches", placeholders)
    failed = evaluate_split(lambda images: np.zeros(images.shape[:3] + (3,), np.float32), split)
    assert failed.scored_samples == 0 and failed.labelled_pixels == 0
    assert failed.degenerate() == (f"no sample of split validation could be scored: none of its "
                                   f"{len(split.sample_ids)} samples has a labelled pixel (every one failed to "
                                   f"decode; they are listed in the split's bad-sample report)")
