"""Training on tf.distribute: the strategy choice, the sharded input, and end-to-end runs on 2 CPU replicas and on
a 2-process multi-worker cluster on localhost.

The end-to-end runs are subprocesses: the CPU split and MultiWorkerMirroredStrategy must come before TensorFlow's
runtime starts, which in this test process has long happened.
"""

import json
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from _support import REPO_ROOT, data_tree, subprocess_env, write_config
from coco_seg.coco_data import load_labeled_split
from coco_seg.config import load_config
from coco_seg.distribute import (DistributeConfig, check_global_batch, is_chief, make_distribution,
                                 read_tf_config)

IMAGE_SIZE = 64
DIGEST = re.compile(r"trained weights sha256 ([0-9a-f]{64})")


# ---- the strategy choice -------------------------------------------------------------------------------------

def test_the_chief_is_the_chief_task_or_worker_0_of_a_cluster_without_one():
    assert is_chief(None, None, [])
    assert is_chief("chief", 0, ["chief", "worker"])
    assert is_chief("worker", 0, ["worker"])
    assert not is_chief("worker", 0, ["chief", "worker"])
    assert not is_chief("worker", 1, ["worker"])
    assert not is_chief("evaluator", 0, ["worker", "evaluator"])


@pytest.mark.parametrize("text, message", [
    (None, "TF_CONFIG environment variable, which is not set"),
    ("{not json", "TF_CONFIG is not JSON"),
    (json.dumps({"cluster": {"worker": []}, "task": {"type": "worker", "index": 0}}), "'cluster' must map"),
    (json.dumps({"cluster": {"worker": ["a:1"]}, "task": {"type": "chief", "index": 0}}), "'task' must name"),
    (json.dumps({"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 1}}), "'task' must name"),
    (json.dumps({"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": "0"}}), "'task' must name"),
    (json.dumps([1, 2]), "'cluster' must map"),
])
def test_a_bad_tf_config_is_refused_naming_the_key(text, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        read_tf_config(text)


def test_a_good_tf_config_is_returned_as_parsed():
    text = json.dumps({"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}})
    assert read_tf_config(text) == json.loads(text)


@pytest.mark.parametrize("config, environ, message", [
    (DistributeConfig("none", 2), {}, "--distribute none trains on one device"),
    (DistributeConfig("multi-worker", 2), {}, "--replicas does not apply to --distribute multi-worker"),
    (DistributeConfig("multi-worker"), {}, "TF_CONFIG environment variable, which is not set"),
    (DistributeConfig("mirrored", 0), {}, "--replicas must be a whole number >= 1"),
    (DistributeConfig("mirrored", True), {}, "--replicas must be a whole number >= 1"),
    (DistributeConfig("parameter-server"), {}, "--distribute must be one of"),
])
def test_bad_combinations_are_refused_before_a_strategy_is_made(config, environ, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        make_distribution(config, environ=environ)


def test_none_and_auto_without_gpus_train_on_one_device_as_the_chief():
    for config in (DistributeConfig("none"), DistributeConfig("auto"), DistributeConfig("none", 1)):
        distribution = make_distribution(config, environ={})
        assert (distribution.name, distribution.replicas, distribution.is_chief) == ("none", 1, True)
        assert distribution.as_json() == {"strategy": "none", "replicas": 1}


def test_the_global_batch_must_divide_by_the_replicas():
    assert check_global_batch(16, 2) == 8 and check_global_batch(5, 1) == 5
    with pytest.raises(ValueError, match=r"--batch-size 15 is the global batch and must divide by the 2 replicas"):
        check_global_batch(15, 2)


# ---- the sharded input ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def split(tmp_path_factory, generated_root):
    folder = tmp_path_factory.mktemp("distribute-config")
    config = load_config(write_config(folder, data_tree(generated_root) | {"image_size": IMAGE_SIZE}))
    return load_labeled_split(config, "training", data_root=config.data_root)


def _batches(dataset) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(images.numpy(), masks.numpy()) for images, masks in dataset]


@pytest.mark.parametrize("replica_batch, pipelines", [(2, 1), (2, 2), (1, 2), (1, 1)])
def test_the_replicas_of_one_step_together_see_the_global_batch_of_one_device(split, replica_batch, pipelines):
    """A global batch over 1 or 2 pipelines (workers) of replicas of batch ``replica_batch``: step k's replica
    batches, in order, concatenate to one device's batch k; the last, partial batch is padded with the epoch's first
    samples (as many as it lacks), each with the same augmentation as its first appearance."""
    from coco_seg.sample_store import open_sample_store
    from coco_seg.training import make_dataset

    count, batch = len(split.sample_ids), 5 * pipelines * replica_batch
    assert count % batch, "the split must leave a partial last batch, to test the padding"
    options = dict(batch_size=batch, shuffle=True, augment=True, seed=5, epochs=(1, 3))
    store = open_sample_store(split)
    single = _batches(make_dataset(store, **options))
    pipelines_batches = [_batches(make_dataset(store, **options, replica_batch=replica_batch, pipeline=(i, pipelines)))
                         for i in range(pipelines)]
    per_step = batch // pipelines // replica_batch  # replica batches each pipeline yields per step
    steps = -(-count // batch)
    assert all(len(b) == 2 * steps * per_step for b in pipelines_batches)
    for epoch in range(2):
        first = single[epoch * steps]
        for step in range(steps):
            k = epoch * steps + step
            parts = [b[k * per_step + j] for b in pipelines_batches for j in range(per_step)]
            assert all(p[0].shape[0] == replica_batch for p in parts)
            images, masks = (np.concatenate([p[n] for p in parts]) for n in (0, 1))
            expected_images, expected_masks = single[k]
            lacking = batch - len(expected_images)
            if lacking:  # padded with the epoch's first positions
                expected_images = np.concatenate([expected_images, first[0][:lacking]])
                expected_masks = np.concatenate([expected_masks, first[1][:lacking]])
            np.testing.assert_array_equal(images, expected_images)
            np.testing.assert_array_equal(masks, expected_masks)


def test_a_global_batch_that_does_not_split_into_the_pipelines_is_refused(split):
    from coco_seg.sample_store import open_sample_store
    from coco_seg.training import make_dataset

    with pytest.raises(ValueError, match="a global batch of 6 does not split into 4 pipelines"):
        make_dataset(open_sample_store(split), batch_size=6, shuffle=False, augment=False, seed=0, replica_batch=1, pipeline=(0, 4))


# ---- end to end -----------------------------------------------------------------------------------------------

def _train(home: Path, config: Path, out: Path, *args: str, env: dict | None = None,
           background: bool = False):
    command = [sys.executable, "-m", "coco_seg.cli", "--config", str(config), "train", "--out", str(out),
               "--encoder-weights", "none", "--alpha", "0.35", "--no-augment", "--class-weights", "none",
               "--seed", "2", *args]
    environment = subprocess_env(home=home) | (env or {})
    if background:
        return subprocess.Popen(command, cwd=REPO_ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env=environment)
    return subprocess.run(command, cwd=REPO_ROOT, text=True, capture_output=True, env=environment, timeout=600)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, generated_root, split):
    """One epoch on one device and on 2 logical CPU replicas (same global batch, frozen encoder, no augmentation,
    no padding: the batch divides the training split); and 2 epochs on 2 replicas, whole and resumed."""
    folder = tmp_path_factory.mktemp("distributed-runs")
    config = write_config(folder, data_tree(generated_root) | {"image_size": IMAGE_SIZE})
    count = len(split.sample_ids)
    batch = next(b for b in (8, 12, 6, 4, 2) if count % b == 0)
    common = ("--batch-size", str(batch))
    results = {
        "one_device": _train(folder, config, folder / "one", *common, "--epochs", "1", "--distribute", "none"),
        "two_replicas": _train(folder, config, folder / "two", *common, "--epochs", "1", "--distribute", "mirrored",
                               "--replicas", "2"),
        "whole": _train(folder, config, folder / "whole", *common, "--epochs", "2", "--distribute", "mirrored",
                        "--replicas", "2"),
    }
    results["first_half"] = _train(folder, config, folder / "resumed", *common, "--epochs", "1", "--distribute",
                                   "mirrored", "--replicas", "2")
    results["resumed"] = _train(folder, config, folder / "resumed", *common, "--epochs", "2", "--distribute",
                                "mirrored", "--replicas", "2", "--resume")
    for name, result in results.items():
        assert result.returncode == 0, (name, result.stdout[-3000:] + result.stderr[-3000:])
    return {"folder": folder, "config": config, "batch": batch, "count": count, **results}


def _state(folder: Path) -> dict:
    return json.loads((folder / "train_state.json").read_text())


def test_two_cpu_replicas_train_and_record_the_strategy(runs):
    state = _state(runs["folder"] / "two")
    assert state["distribute"] == {"strategy": "mirrored", "replicas": 2, "replica_batch": runs["batch"] // 2,
                                   "epoch_samples": runs["count"]}
    assert _state(runs["folder"] / "one")["distribute"] == {"strategy": "none", "replicas": 1,
                                                           "replica_batch": runs["batch"],
                                                           "epoch_samples": runs["count"]}
    assert "(mirrored, 2 replica(s) of" in runs["two_replicas"].stdout
    assert (runs["folder"] / "two" / "checkpoints" / "last.keras").is_file()


def test_two_replicas_agree_with_one_device_on_the_first_epoch_loss(runs):
    """Same global batches, same initial weights (seeded), synchronised BatchNorm, the update of the global mean
    loss: the two runs compute the same thing in a different order. What differs is float32 rounding — per-replica
    partial sums, the all-reduce, and the one-pass variance of synchronised BatchNorm (E[x²] − E[x]²) against
    TensorFlow's two-pass one — amplified by Adam, whose first steps move each weight by about the learning rate
    in the direction of its gradient's sign, so a gradient component near zero can flip. Measured here (22
    samples, global batch 2, 11 steps): 1.2e-8 relative; the tolerance, 1e-5, leaves that amplification room. A
    real fault is orders larger: with BatchNorm left per replica (each normalising its one-sample slice) the
    epoch's loss differed by 1.3e-3 relative (measured by disabling the synchronisation), which a 1e-3 tolerance
    would have let through."""
    one = _state(runs["folder"] / "one")["history"][0]["train_loss"]
    two = _state(runs["folder"] / "two")["history"][0]["train_loss"]
    assert np.isfinite(one) and one > 0
    assert abs(two - one) / one < 1e-5, (one, two)


def test_resume_under_the_strategy_ends_with_the_uninterrupted_run_weights(runs):
    whole, resumed = (DIGEST.findall(runs[name].stdout) for name in ("whole", "resumed"))
    assert len(whole) == 1 and whole == resumed, (runs["whole"].stdout[-1500:], runs["resumed"].stdout[-1500:])
    assert "resuming after epoch 1 of 2" in runs["resumed"].stdout
    assert [h["epoch"] for h in _state(runs["folder"] / "resumed")["history"]] == [1, 2]
    np.testing.assert_allclose([h["train_loss"] for h in _state(runs["folder"] / "resumed")["history"]],
                               [h["train_loss"] for h in _state(runs["folder"] / "whole")["history"]], rtol=1e-6)


def test_a_global_batch_that_does_not_divide_by_the_replicas_is_refused_by_train(runs):
    result = _train(runs["folder"], runs["config"], runs["folder"] / "odd", "--batch-size", "5", "--epochs", "1",
                    "--distribute", "mirrored", "--replicas", "2")
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert "--batch-size 5 is the global batch and must divide by the 2 replicas" in result.stderr
    assert not (runs["folder"] / "odd").exists()


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_two_workers_on_localhost_end_with_identical_weights_and_a_chief_checkpoint(runs, tmp_path):
    """Two processes, a TF_CONFIG each (worker 0 is the chief: the cluster has no chief task). Each keeps its
    own --out so that the test sees that the other worker writes nothing; on shared storage all give the same."""
    cluster = {"worker": [f"localhost:{port}" for port in _free_ports(2)]}
    outs = [tmp_path / "chief", tmp_path / "worker1"]
    processes = [_train(runs["folder"], runs["config"], out, "--batch-size", str(runs["batch"]), "--epochs", "2",
                        "--distribute", "multi-worker", background=True,
                        env={"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})})
                 for i, out in enumerate(outs)]
    outputs = []
    for process in processes:
        try:
            outputs.append(process.communicate(timeout=600)[0])
        finally:
            process.kill()
    assert [p.returncode for p in processes] == [0, 0], [o[-3000:] for o in outputs]
    digests = [DIGEST.findall(o) for o in outputs]
    assert len(digests[0]) == 1 and digests[0] == digests[1], digests
    assert not outs[1].exists(), "a non-chief worker wrote its --out"
    state = _state(outs[0])
    assert state["distribute"]["strategy"] == "multi-worker" and state["distribute"]["replicas"] == 2
    assert [h["epoch"] for h in state["history"]] == [1, 2]
    evaluation = subprocess.run([sys.executable, "-m", "coco_seg.cli", "--config", str(runs["config"]), "evaluate",
                                 "--model", str(outs[0] / "checkpoints" / "last.keras")], cwd=REPO_ROOT, text=True,
                                capture_output=True, env=subprocess_env(home=runs["folder"]), timeout=600)
    assert evaluation.returncode == 0, evaluation.stdout[-2000:] + evaluation.stderr[-2000:]
    assert "| validation |" in evaluation.stdout


def test_the_cpu_split_is_refused_once_the_runtime_started():
    """In this process TensorFlow has run ops already: asking for 2 logical CPUs now says why it cannot."""
    import tensorflow as tf

    tf.constant(1.0) + 1.0  # the runtime is up, with one logical CPU
    assert len(tf.config.list_logical_devices("CPU")) == 1
    with pytest.raises(RuntimeError, match="cannot split the CPU into 3 logical devices: TensorFlow's runtime"):
        make_distribution(DistributeConfig("mirrored", 3), environ={})
