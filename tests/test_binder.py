"""leap_binder.py under the Tensorleap engine's own loader and its integration test, on both datasets and modes."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from coco_seg.check import engine_check, integration_test
from coco_seg.coco_data import load_labeled_split
from coco_seg.config import load_config
from coco_seg.export import export_model, model_card_for
from coco_seg.model import build_unet
from _support import REPO_ROOT, corrupt_jpeg_middle, subprocess_env, write_config

IMAGE_SIZE = 64  # small model input keeps the engine checks quick; the demo test covers the default 128


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """An untrained exported model (ONNX + h5 + card) per label mode."""
    paths = {}
    for mode in ("category", "supercategory"):
        folder = tmp_path_factory.mktemp(f"model-{mode}")
        config = load_config(write_config(folder, {"labels": {"mode": mode}, "image_size": IMAGE_SIZE}))
        model = build_unet(image_size=IMAGE_SIZE, num_classes=config.num_classes, encoder_weights="none", alpha=0.35)
        paths[mode] = export_model(model, folder / "model", card=model_card_for(config, trained=False))["onnx"]
    return paths


def binder_config(tmp_path: Path, dataset: dict, mode: str, model_path: Path, **extra) -> Path:
    tree = dataset | {"labels": {"mode": mode}, "image_size": IMAGE_SIZE, "model": {"path": str(model_path)},
                      "sample_limit_per_split": 6} | extra
    return write_config(tmp_path, tree)


@pytest.mark.parametrize("mode", ["category", "supercategory"])
def test_engine_loader_accepts_the_binder_and_samples_have_the_right_shapes(tmp_path, dataset, models, mode):
    config_path = binder_config(tmp_path, dataset, mode, models[mode])
    result = engine_check(config_path=config_path)
    assert result.passed, "\n".join(result.details)
    report = result.data
    assert report["is_valid"] and report["general_error"] is None
    names = {p["name"] for p in report["payloads"]}
    expected_class = "vehicle" if mode == "supercategory" else "car"
    assert {"preprocess", "image", "mask", "integration_test", f"{expected_class}_percent", "is_colored",
            f"{expected_class}_avg_size", "vehicle_count", "model_custom_latent_space"} <= names
    assert all(p["is_passed"] for p in report["payloads"])
    splits = {s["split"] for s in report["samples"]}
    assert splits == {"training", "validation"}
    for sample in report["samples"]:
        assert sample["image"] == [[IMAGE_SIZE, IMAGE_SIZE, 3], "float32"]
        assert sample["mask"] == [[IMAGE_SIZE, IMAGE_SIZE, 3], "float32"]
        assert sample["metadata_none"] == []


@pytest.mark.parametrize("mode", ["category", "supercategory"])
def test_integration_test_runs_every_function_with_the_exported_model(tmp_path, dataset, models, mode):
    result = integration_test(config_path=binder_config(tmp_path, dataset, mode, models[mode]))
    assert result.passed, "\n".join(result.details)
    assert [t.split(":")[0] for t in result.data["tested"]] == ["training", "validation"]


def test_integration_test_with_the_keras_model(tmp_path, dataset, models):
    h5 = models["category"].with_suffix(".h5")
    result = integration_test(config_path=binder_config(tmp_path, dataset, "category", h5))
    assert result.passed, "\n".join(result.details)


def test_unlabeled_split_is_served_by_the_engine(tmp_path, generated_root, models):
    tree = {"data": {"root": str(generated_root), "splits": {"unlabeled": {"images": "val2017"}}}}
    result = engine_check(config_path=binder_config(tmp_path, tree, "category", models["category"]))
    assert result.passed, "\n".join(result.details)
    unlabeled = [s for s in result.data["samples"] if s["split"] == "unlabeled"]
    assert unlabeled and all(s["image"] == [[IMAGE_SIZE, IMAGE_SIZE, 3], "float32"] for s in unlabeled)


def test_a_model_whose_card_disagrees_with_the_config_is_refused(tmp_path, generated_root, models):
    # The category model has the same number of outputs as the supercategory config: only the card can tell.
    config_path = binder_config(tmp_path, {"data": {"root": str(generated_root)}}, "supercategory",
                                models["category"])
    result = integration_test(config_path=config_path)
    assert not result.passed
    text = "\n".join(result.details)
    assert "model_card.json" in text or "card" in text
    assert "vehicle" in text and "labels" in text


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "coco_seg.cli", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, env=subprocess_env())


def test_check_command_passes_and_fails_with_the_right_exit_status(tmp_path, generated_root, models):
    good = binder_config(tmp_path / "good", {"data": {"root": str(generated_root)}}, "category", models["category"])
    passed = run_cli("--config", str(good), "check")
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert "[PASS] engine loader" in passed.stdout and "[PASS] integration test" in passed.stdout

    missing = binder_config(tmp_path / "bad", {"data": {"root": str(generated_root)}}, "category",
                            tmp_path / "no-model.onnx")
    failed = run_cli("--config", str(missing), "check")
    assert failed.returncode == 1
    assert "[FAIL] integration test" in failed.stdout and "model.path" in failed.stdout


def test_check_names_a_sample_that_fails_to_decode_instead_of_its_placeholder(tmp_path, generated_root, models):
    """A file that passes preprocess but does not decode is served as a placeholder; the check must say so, not
    report the placeholder's ignored mask and missing metadata as if the encoders were broken."""
    root = tmp_path / "coco"
    shutil.copytree(generated_root, root)
    config_path = binder_config(tmp_path, {"data": {"root": str(root)}}, "category", models["category"])
    config = load_config(config_path)
    split = load_labeled_split(config, "training", data_root=config.data_root)
    first = split.records[split.sample_ids[0]]
    corrupt_jpeg_middle(first.path)
    failed = run_cli("--config", str(config_path), "check")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert f"training sample {first.sample_id} ({first.file}) failed to decode (see the report" in failed.stdout
    assert "placeholder" in failed.stdout and "not one-hot" not in failed.stdout
    assert "metadata is None" not in failed.stdout
