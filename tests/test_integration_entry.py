"""leap_integration.py, today's Tensorleap entry file: its status table, the engine's dataset check with the custom
latent spaces, the latent vectors, typed metadata, and an import graph without cycles."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from coco_seg.config import load_config
from coco_seg.export import export_model, model_card_for
from coco_seg.metadata import metadata_names
from coco_seg.model import build_unet
from _support import REPO_ROOT, subprocess_env, write_config

IMAGE_SIZE = 64
STATUS_ROWS = ("tensorleap_integration_test", "tensorleap_preprocess", "tensorleap_input_encoder",
               "tensorleap_gt_encoder", "tensorleap_load_model", "tensorleap_custom_loss",
               "tensorleap_custom_metric (optional)", "tensorleap_metadata (optional)",
               "tensorleap_custom_visualizer (optional)")
READY = "All parts have been successfully set"


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, Path]:
    """coco-seg's export (two outputs) and a user's own single-output model, as ONNX (+ h5) files."""
    folder = tmp_path_factory.mktemp("models")
    config = load_config(write_config(folder, {"image_size": IMAGE_SIZE}))
    model = build_unet(image_size=IMAGE_SIZE, num_classes=config.num_classes, encoder_weights="none", alpha=0.35)
    paths = {"exported": export_model(model, folder / "exported", card=model_card_for(config, trained=False))["onnx"]}
    # A user's own model: the logits output alone, no model card.
    from coco_seg.export import keras_to_onnx

    own = folder / "own" / "model.onnx"
    own.parent.mkdir()
    own.write_bytes(keras_to_onnx(model))
    paths["own"] = own
    return paths


def entry_config(tmp_path: Path, root: Path, model_path: Path, **extra) -> Path:
    tree = {"data": {"root": str(root)}, "image_size": IMAGE_SIZE, "model": {"path": str(model_path)},
            "sample_limit_per_split": 6} | extra
    return write_config(tmp_path, tree)


def run_entry(config_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "leap_integration.py"], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=600, env=subprocess_env(COCO_SEG_CONFIG=str(config_path)))


def status_table(stdout: str) -> dict[str, str]:
    rows = {}
    for line in stdout.splitlines():
        name, separator, status = line.partition(" | ")
        if separator and name.strip() in STATUS_ROWS:
            rows[name.strip()] = status.strip()
    return rows


def test_running_the_entry_file_prints_an_all_green_status_table(tmp_path, generated_root, exported):
    process = run_entry(entry_config(tmp_path, generated_root, exported["exported"]))
    output = process.stdout + process.stderr
    assert process.returncode == 0, output
    assert status_table(process.stdout) == {name: "✅" for name in STATUS_ROWS}, process.stdout
    assert READY in process.stdout
    # No parameter left to a default (code-loader lists those under "Warnings:"), no failed mapping.
    assert "Warnings:" not in process.stdout and "defaults to" not in process.stdout, process.stdout
    tested = next(line for line in process.stdout.splitlines() if line.startswith("integration test ran on"))
    splits = [item.split(":")[0] for item in tested.removeprefix("integration test ran on ").split(", ")]
    assert splits.count("training") >= 2 and splits.count("validation") >= 2


def test_a_users_single_output_model_loads_with_the_latent_space_off(tmp_path, generated_root, exported):
    process = run_entry(entry_config(tmp_path, generated_root, exported["own"]))
    assert process.returncode == 0, process.stdout + process.stderr
    assert READY in process.stdout
    assert "custom latent spaces are off" in process.stderr


def probe(config_path: Path) -> dict:
    process = subprocess.run([sys.executable, str(REPO_ROOT / "tests" / "engine_probe.py")], cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=600,
                             env=subprocess_env(COCO_SEG_CONFIG=str(config_path)))
    for line in process.stdout.splitlines():
        if line.startswith("ENGINE_PROBE "):
            return json.loads(line.removeprefix("ENGINE_PROBE "))
    raise AssertionError(f"the engine probe printed no result:\n{process.stdout}\n{process.stderr}")


@pytest.fixture(scope="module")
def engine_report(tmp_path_factory, generated_root, exported) -> dict:
    folder = tmp_path_factory.mktemp("engine")
    tree_extra = {"data": {"root": str(generated_root), "splits": {
        "training": {"annotations": "annotations/instances_train2017.json", "images": "train2017"},
        "validation": {"annotations": "annotations/instances_val2017.json", "images": "val2017"},
        "unlabeled": {"images": "val2017"}}}}
    return probe(entry_config(folder, generated_root, exported["exported"], **tree_extra))


def test_the_engine_check_of_the_entry_file_passes_with_the_custom_latent_space(engine_report):
    assert engine_report["is_valid"] and engine_report["general_error"] is None, engine_report
    payloads = engine_report["payloads"]
    assert payloads["model_custom_latent_space"]["is_passed"], payloads["model_custom_latent_space"]
    assert all(p["is_passed"] for p in payloads.values()), {n: p for n, p in payloads.items() if not p["is_passed"]}
    assert {"integration_test", "preprocess", "image", "mask"} <= set(payloads)
    assert set(engine_report["latent_specs"]) == {"decoder_gt_pooled", "decoder_prediction_pooled"}
    assert all(spec["computed_at"] == "model" for spec in engine_report["latent_specs"].values())
    assert engine_report["analysis_space"] == "decoder_gt_pooled"


def test_latent_vectors_are_finite_class_pooled_and_tell_samples_apart(engine_report):
    channels = engine_report["features_channels"]
    assert engine_report["outputs"][1] == [4, IMAGE_SIZE // 2, IMAGE_SIZE // 2, channels]
    for name in ("gt_space", "prediction_space"):
        vectors = np.array(engine_report[name])
        assert vectors.shape == (4, 3 * channels) and 3 * channels <= 1024, name
        assert np.isfinite(vectors).all(), name
    gt_space = np.array(engine_report["gt_space"]).reshape(4, 3, channels)
    for vector, labels in zip(gt_space, engine_report["gt_label_sets"]):
        # A class present in the ground truth has a non-zero mean of non-negative features; an absent one is 0.
        for k in range(3):
            assert (np.abs(vector[k]).sum() > 0) == (k in labels), (labels, k)
    for i in range(4):
        for j in range(i + 1, 4):
            assert not np.allclose(gt_space[i], gt_space[j]), (i, j)  # different ground truth, different vector


def test_metadata_come_out_of_the_engine_with_their_declared_types(engine_report):
    config_names = metadata_names(load_config(None))
    for sample in engine_report["metadata"]:
        assert set(sample) == set(config_names)
        for name, (type_name, value, is_none) in sample.items():
            assert not is_none, name
            if config_names[name] is int:
                # code-loader 1.0.214 widens int to float when it infers the type from the first training sample
                # (local loader only); the value itself is a whole number and our function returned an int.
                assert type_name in ("int", "float") and float(value).is_integer(), (name, value)
            elif config_names[name] is bool:
                assert type_name == "bool", name
            else:
                assert type_name == "float", name
    none = engine_report["unlabeled_metadata_none"]
    assert none["person_count"] and none["person_percent"] and none["car_avg_size"]  # unknown there: missing
    assert not none["brightness"] and not none["is_colored"] and not none["image_width"]


def test_registered_metadata_declare_int_bool_and_float(tmp_path, generated_root, exported):
    """The types leap_binder declares to code-loader, read from code-loader's own registry."""
    config_path = entry_config(tmp_path, generated_root, exported["exported"])
    script = ("import json, leap_binder; from code_loader import leap_binder as r; "
              "print(json.dumps({m.name: m.metadata_type.name for m in r.setup_container.metadata}))")
    output = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True,
                            check=True, env=subprocess_env(COCO_SEG_CONFIG=str(config_path))).stdout
    declared = json.loads(output.strip().splitlines()[-1])
    expected = {int: "int", float: "float", bool: "boolean"}
    assert declared == {name: expected[kind] for name, kind in metadata_names(load_config(config_path)).items()}
    assert declared["person_count"] == "int" and declared["is_colored"] == "boolean"
    assert declared["person_percent"] == "float" and declared["image_width"] == "int"


def _imports(path: Path, package_modules: set[str]) -> set[str]:
    """Our modules that ``path`` imports anywhere in it (module level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        found |= {name for name in names if name in package_modules}
    return found


def test_no_import_cycle_anywhere():
    files = {"leap_binder": REPO_ROOT / "leap_binder.py", "leap_integration": REPO_ROOT / "leap_integration.py"}
    for path in (REPO_ROOT / "coco_seg").rglob("*.py"):
        parts = path.relative_to(REPO_ROOT).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {name: _imports(path, set(files)) - {name} for name, path in files.items()}
    assert "leap_binder" in graph["leap_integration"]
    # Only `coco-seg check` imports the entry file, inside the subprocess it runs it in; no library module does.
    assert {name for name, targets in graph.items() if "leap_integration" in targets} == {"coco_seg.check"}
    # No library module imports the binder either: coco_seg.registry reads what it registered from code-loader.
    assert not any("leap_binder" in targets for name, targets in graph.items() if name.startswith("coco_seg"))
    state: dict[str, str] = {}

    def visit(name: str, trail: list[str]) -> None:
        state[name] = "open"
        for target in sorted(graph[name]):
            assert state.get(target) != "open", f"import cycle: {' -> '.join(trail + [name, target])}"
            if target not in state:
                visit(target, trail + [name])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [])


@pytest.mark.parametrize("spec_file, entry", [("leap.yaml", "leap_integration.py"), (".tensorleap.yaml",
                                                                                       "leap_binder.py")])
def test_each_bundle_includes_what_its_entry_file_reads_and_no_generator(tmp_path, generated_root, exported,
                                                                          spec_file, entry):
    config_path = entry_config(tmp_path, generated_root, exported["exported"])
    module = entry.removesuffix(".py")
    probe_code = (f"import sys, {module}; {module}.preprocess() if hasattr({module}, 'preprocess') else None; "
                  f"import leap_binder; leap_binder.preprocess(); "
                  "print('\\n'.join(m.__file__ for m in list(sys.modules.values()) if getattr(m, '__file__', None) "
                  "and m.__name__.split('.')[0] in ('coco_seg', 'leap_binder', 'leap_integration')))")
    output = subprocess.run([sys.executable, "-c", probe_code], cwd=REPO_ROOT, capture_output=True, text=True,
                            check=True, env=subprocess_env(COCO_SEG_CONFIG=str(config_path))).stdout
    read = {str(Path(line).resolve().relative_to(REPO_ROOT)) for line in output.split()}
    read |= {"coco_seg/default_config.yaml", "requirements.txt"}
    spec = yaml.safe_load((REPO_ROOT / spec_file).read_text())
    assert spec["entryFile"] == entry
    included = set(spec["include"])
    assert read <= included, f"{spec_file} misses {sorted(read - included)}"
    assert all((REPO_ROOT / path).is_file() for path in included), f"{spec_file} names a missing file"
    assert "coco_seg/sample_data.py" not in included  # the synthetic-data generator is not part of the bundle
    assert not any(path.endswith((".onnx", ".h5", ".keras")) for path in included)  # the model is pushed apart
    if spec_file == "leap.yaml":
        assert spec["pythonVersion"] == "py311"


BLOCK_TENSORFLOW = ("import sys\n"
                    "for name in ('tensorflow', 'keras', 'tf2onnx', 'h5py'):\n"
                    "    sys.modules[name] = None  # as on the platform: requirements.txt installs none of these\n")


def test_the_onnx_path_runs_without_tensorflow(tmp_path, generated_root, exported):
    script = BLOCK_TENSORFLOW + ("import leap_integration\n"
                                 "print('tested', len(leap_integration.main(samples_per_split=2)))\n")
    process = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True,
                             timeout=600, env=subprocess_env(COCO_SEG_CONFIG=str(
                                 entry_config(tmp_path, generated_root, exported["exported"]))))
    assert process.returncode == 0, process.stdout + process.stderr
    assert "tested 4" in process.stdout


def test_a_keras_model_without_tensorflow_names_the_onnx_file_instead(tmp_path, exported):
    script = BLOCK_TENSORFLOW + ("from coco_seg.export import ModelLoadError, load_model\n"
                                 f"try:\n    load_model({str(exported['exported'].with_suffix('.h5'))!r})\n"
                                 "except ModelLoadError as error:\n    print('ERROR', error)\n")
    output = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=300, env=subprocess_env()).stdout
    assert "ERROR model file" in output and "needs TensorFlow (not installed here)" in output
    assert "model.path" in output and ".onnx" in output
