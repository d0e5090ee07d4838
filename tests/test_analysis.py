"""`coco-seg analyze` and the main job (`coco-seg demo`): outputs, resumability, planted defects, the report."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from _support import (REAL_SAMPLE, REAL_SPLITS, REPO_ROOT, data_tree, render_report, requires_real_sample,
                      subprocess_env, write_config)
from coco_seg.metadata import metadata_names



def cli(*args: str, home: Path, config: Path | None = None) -> subprocess.CompletedProcess:
    prefix = ["--config", str(config)] if config else []
    return subprocess.run([sys.executable, "-m", "coco_seg.cli", *prefix, *args], cwd=REPO_ROOT, text=True,
                          capture_output=True, env=subprocess_env(home=home))


def expected_columns(config_path: Path) -> set[str]:
    from coco_seg.config import load_config

    config = load_config(config_path)
    metric_columns = {f"iou_{c}" for c in config.class_names} | {"mean_iou", "dice", "pixel_accuracy", "loss"}
    return ({"sample_id", "file_name", "cluster", "map_x", "map_y", "label_issue_score", "uncertainty", "neighbors"}
            | set(metadata_names(config)) | metric_columns)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """The main job, exactly as the README runs it (default budget: ~3 minutes on 2 cores)."""
    out = tmp_path_factory.mktemp("demo")
    result = cli("demo", "--out", str(out / "run"), home=out)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    (out / "stdout.txt").write_text(result.stdout)
    return out / "run"


def test_demo_ranks_planted_label_defects_at_the_top(demo):
    planted = json.loads((demo / "data" / "planted_defects.json").read_text())["planted"]
    samples = pd.read_parquet(demo / "analysis" / "samples.parquet")
    samples = samples[samples["split"] == "training"]  # where the defects were planted
    ranked = samples.sort_values("label_issue_score")["sample_id"].tolist()
    top = set(ranked[:2 * len(planted)])
    found = sum(str(p["image_id"]) in top for p in planted)
    assert found >= 0.9 * len(planted), f"{found} of {len(planted)} planted defects in the top {2 * len(planted)}"
    summary = json.loads((demo / "analysis" / "summary.json").read_text())
    assert summary["planted_defect_recall"] == pytest.approx(found / len(planted))
    stdout = (demo.parent / "stdout.txt").read_text()
    assert "[PASS] engine loader" in stdout and "[PASS] integration test" in stdout
    assert "planted label defects found" in stdout and str(demo / "analysis" / "report.html") in stdout


def test_demo_tables_hold_every_field_for_every_sample(demo):
    samples = pd.read_parquet(demo / "analysis" / "samples.parquet")
    csv = pd.read_csv(demo / "analysis" / "samples.csv", dtype={"sample_id": str, "key": str})
    assert expected_columns(demo / "config.yaml") <= set(samples.columns)
    assert csv["sample_id"].tolist() == samples["sample_id"].tolist()
    for split, file in (("training", "train"), ("validation", "val")):
        annotations = json.loads((demo / "data" / "annotations" / f"instances_{file}2017.json").read_text())
        assert (samples["split"] == split).sum() == len({a["image_id"] for a in annotations["annotations"]
                                                          if a["category_id"] in (1, 3)})
    assert samples["key"].tolist() == samples["sample_id"].tolist()  # ids are unique across the two splits
    assert samples["loss"].notna().all() and np.isfinite(samples[["map_x", "map_y"]].to_numpy()).all()
    neighbors = samples["neighbors"].str.split()
    assert all(len(n) == 5 and sid not in n for sid, n in zip(samples["sample_id"], neighbors))
    assert set(np.concatenate(neighbors.to_numpy())) <= set(samples["sample_id"])


def test_demo_report_renders_offline_with_one_point_per_sample(demo):
    samples = pd.read_parquet(demo / "analysis" / "samples.parquet")
    rendered = render_report(demo / "analysis" / "report.html")
    assert rendered["state"]["ready"] is True and rendered["errors"] == []
    assert rendered["points"] == len(samples) == rendered["state"]["points"]
    assert all(url.startswith(("file:", "data:")) for url in rendered["requests"])


@pytest.fixture(scope="module")
def small_model(tmp_path_factory, generated_root) -> dict[str, Path]:
    """A briefly trained 64 px model on the generated sample, exported."""
    folder = tmp_path_factory.mktemp("small-model")
    config = write_config(folder, data_tree(generated_root) | {"image_size": 64,
                                                               "model": {"path": "model/model.onnx"}})
    for args in (["train", "--out", str(folder / "run"), "--epochs", "2", "--encoder-weights", "none", "--alpha",
                  "0.35", "--fine-tune", "--batch-size", "8"],
                 ["export", "--checkpoint", str(folder / "run" / "checkpoints" / "last.keras"), "--out",
                  str(folder / "model")]):
        result = cli(*args, home=folder, config=config)
        assert result.returncode == 0, result.stderr[-3000:]
    return {"config": config, "model": folder / "model" / "model.onnx"}


def test_analyze_resumes_without_redoing_finished_batches(tmp_path, small_model):
    out = tmp_path / "analysis"
    args = ["analyze", "--model", str(small_model["model"]), "--out", str(out), "--split", "validation",
            "--batch-size", "2"]
    first = cli(*args, home=tmp_path, config=small_model["config"])
    assert first.returncode == 0, first.stderr[-3000:]
    work = out / "work" / "validation"
    parts = sorted(work.glob("part-*.parquet"))
    assert len(parts) >= 3
    before = {p: p.stat().st_mtime_ns for p in parts}
    table = pd.read_parquet(out / "samples.parquet")
    # An interrupted run: the last batch never finished.
    parts[-1].unlink()
    parts[-1].with_suffix(".npy").unlink()
    second = cli(*args, home=tmp_path, config=small_model["config"])
    assert second.returncode == 0, second.stderr[-3000:]
    assert parts[-1].is_file()
    assert all(p.stat().st_mtime_ns == before[p] for p in parts[:-1]), "finished batches were recomputed"
    again = pd.read_parquet(out / "samples.parquet")
    pd.testing.assert_frame_equal(table.drop(columns=["map_x", "map_y"]), again.drop(columns=["map_x", "map_y"]),
                                  check_exact=False, rtol=1e-5)


def test_a_rerun_after_the_labels_changed_or_with_another_batch_size_recomputes(tmp_path, small_model,
                                                                                   generated_root):
    """Resumable parts never serve results of other inputs: fixed labels (copied in with ``cp -p``, same size and
    times) are what the rerun reports; another --batch-size starts afresh instead of failing."""
    import shutil

    root = tmp_path / "coco"
    shutil.copytree(generated_root, root)
    config = write_config(tmp_path, data_tree(root) | {"image_size": 64, "model": {"path": str(small_model["model"])}})
    out = tmp_path / "analysis"
    args = ["analyze", "--model", str(small_model["model"]), "--out", str(out), "--split", "validation",
            "--batch-size", "2"]
    first = cli(*args, home=tmp_path, config=config)
    assert first.returncode == 0, first.stderr[-3000:]
    before = pd.read_parquet(out / "samples.parquet").set_index("sample_id")

    path = root / "annotations" / "instances_val2017.json"
    dataset = json.loads(path.read_text())
    person = next(a for a in dataset["annotations"] if a["category_id"] == 1 and not a.get("iscrowd")
                  and str(a["image_id"]) in before.index)
    relabelled = json.dumps(dict(dataset, annotations=[dict(a, category_id=3) if a["id"] == person["id"] else a
                                                       for a in dataset["annotations"]]))
    staged = tmp_path / "fixed.json"
    staged.write_text(relabelled)
    path.write_text(json.dumps(dataset))  # same formatting as the relabelled file: same size
    assert staged.stat().st_size == path.stat().st_size
    first = cli(*args, home=tmp_path, config=config)  # the reference for this exact file
    assert first.returncode == 0, first.stderr[-3000:]
    reference = pd.read_parquet(out / "samples.parquet").set_index("sample_id")
    stat = path.stat()
    import os

    os.utime(staged, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    subprocess.run(["cp", "-p", str(staged), str(path)], check=True)
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)
    second = cli(*args, home=tmp_path, config=config)
    assert second.returncode == 0, second.stderr[-3000:]
    after = pd.read_parquet(out / "samples.parquet").set_index("sample_id")
    sample = str(person["image_id"])
    assert after.loc[sample, "car_count"] == reference.loc[sample, "car_count"] + 1
    assert after.loc[sample, "person_count"] == reference.loc[sample, "person_count"] - 1
    assert after.loc[sample, "loss"] != pytest.approx(reference.loc[sample, "loss"])
    others = [i for i in reference.index if i != sample]
    pd.testing.assert_series_equal(after.loc[others, "loss"], reference.loc[others, "loss"], rtol=1e-5)

    third = cli(*args[:-1], "3", home=tmp_path, config=config)
    assert third.returncode == 0, third.stderr[-3000:]
    assert len(list((out / "work" / "validation").glob("part-*.parquet"))) == -(-len(after) // 3)
    rebatched = pd.read_parquet(out / "samples.parquet").set_index("sample_id")
    pd.testing.assert_frame_equal(rebatched[["loss", "mean_iou", "car_count"]], after[["loss", "mean_iou", "car_count"]],
                                  check_exact=False, rtol=1e-5)


def test_analyze_with_an_unlabeled_split_ranks_images_to_label(tmp_path, small_model, generated_root):
    tree = {"data": {"root": str(generated_root), "splits": {"unlabeled": {"images": "val2017"}}},
            "image_size": 64, "model": {"path": str(small_model["model"])}}
    config = write_config(tmp_path, tree)
    result = cli("analyze", "--model", str(small_model["model"]), "--out", str(tmp_path / "out"), "--split",
                 "validation,unlabeled", home=tmp_path, config=config)
    assert result.returncode == 0, result.stderr[-3000:]
    suggestions = json.loads((tmp_path / "out" / "labelling_suggestions.json").read_text())
    assert [s["rank"] for s in suggestions] == list(range(1, len(suggestions) + 1))
    assert len(suggestions) == len(list((generated_root / "val2017").iterdir()))


@requires_real_sample
def test_analyze_on_the_real_coco_sample(tmp_path):
    config = write_config(tmp_path, data_tree(REAL_SAMPLE, splits=REAL_SPLITS) | {"image_size": 64})
    for args in (["train", "--out", str(tmp_path / "run"), "--epochs", "1", "--encoder-weights", "none", "--alpha",
                  "0.35", "--batch-size", "8"],
                 ["export", "--checkpoint", str(tmp_path / "run" / "checkpoints" / "last.keras"), "--out",
                  str(tmp_path / "model")],
                 ["analyze", "--model", str(tmp_path / "model" / "model.onnx"), "--out", str(tmp_path / "analysis"),
                  "--split", "training", "--limit", "40"]):  # val2017 has 12 samples with a person or car
        result = cli(*args, home=tmp_path, config=config)
        assert result.returncode == 0, result.stderr[-3000:]
    samples = pd.read_parquet(tmp_path / "analysis" / "samples.parquet")
    assert len(samples) == 40 and expected_columns(config) <= set(samples.columns)
    assert samples["file_name"].str.endswith(".jpg").all()
    rendered = render_report(tmp_path / "analysis" / "report.html")
    assert rendered["errors"] == [] and rendered["points"] == 40


def test_analyze_maps_the_same_latent_space_the_integration_registers(tmp_path, small_model):
    """By default the map's embedding is the integration's `decoder_gt_pooled`: the exported model's decoder
    features pooled per class over the ground truth — recomputed here from the ONNX file and the encoders."""
    import os

    from coco_seg import latent_space
    from coco_seg.coco_data import load_labeled_split
    from coco_seg.config import load_config
    from coco_seg.encoders import encode_image, encode_mask
    from coco_seg.export import load_model, predict_outputs

    out = tmp_path / "analysis"
    result = cli("analyze", "--model", str(small_model["model"]), "--out", str(out), "--split", "validation",
                 "--limit", "6", home=tmp_path, config=small_model["config"])
    assert result.returncode == 0, result.stderr[-3000:]
    embeddings = np.load(out / "embeddings.npy")
    samples = pd.read_parquet(out / "samples.parquet")
    assert json.loads((out / "summary.json").read_text())["embedding"] == "tensorleap"
    os.environ.setdefault("COCO_SEG_CACHE_DIR", str(tmp_path / "cache"))
    config = load_config(small_model["config"])
    split = load_labeled_split(config, "validation", data_root=config.data_root)
    ids = samples["sample_id"].tolist()
    images = np.stack([encode_image(split, i) for i in ids])
    masks = np.stack([encode_mask(split, i) for i in ids])
    _, features = predict_outputs(load_model(small_model["model"]), images)
    expected = latent_space.pool_by_ground_truth(features, masks)
    assert embeddings.shape == expected.shape == (6, config.num_classes * features.shape[-1])
    np.testing.assert_allclose(embeddings, expected, rtol=1e-4, atol=1e-5)

    encoder = cli("analyze", "--model", str(small_model["model"]), "--out", str(tmp_path / "encoder"), "--split",
                  "validation", "--limit", "6", "--latent-space", "encoder", home=tmp_path, config=small_model["config"])
    assert encoder.returncode == 0, encoder.stderr[-3000:]
    assert np.load(tmp_path / "encoder" / "embeddings.npy").shape[1] != embeddings.shape[1]
