"""Which ``tf.distribute`` strategy ``coco-seg train`` runs under, and who writes the run folder.

Strategies (``--distribute``):

* ``none`` — TensorFlow's default strategy: one device.
* ``mirrored`` — ``tf.distribute.MirroredStrategy`` over the local GPUs (all of them, or the first ``replicas``).
  On a machine without a GPU, ``replicas=N`` splits the CPU into N logical devices
  (``tf.config.set_logical_device_configuration``) and mirrors over them: a testing aid that runs the distributed
  code path, with its all-reduces, on any machine; it is not faster than one device.
* ``multi-worker`` — ``tf.distribute.MultiWorkerMirroredStrategy``, the cluster read from ``TF_CONFIG``; the
  replica count is the cluster's (workers × local devices), so ``replicas`` is refused.
* ``auto`` — ``mirrored`` when more than one GPU is visible (or ``replicas`` > 1 is asked for), else ``none``.

The chief — the task of type ``chief``, or worker 0 of a cluster that has no chief, or the only process of the
other strategies — is the one that writes checkpoints and ``train_state.json``; the other workers train in
lock-step and write nothing.

Both must happen before TensorFlow initialises its runtime (the first op): the CPU split cannot change afterwards,
and ``MultiWorkerMirroredStrategy`` must be created at the start of the program; :func:`make_distribution` is the
first thing ``train`` calls and says so when it is too late.
"""

import json
import os
from dataclasses import dataclass
from typing import Any, Optional

import tensorflow as tf

STRATEGIES = ("auto", "none", "mirrored", "multi-worker")


@dataclass(frozen=True)
class DistributeConfig:
    """What the user asked for: a strategy name of :data:`STRATEGIES` and, for ``mirrored``, a replica count."""

    strategy: str = "none"
    replicas: Optional[int] = None


@dataclass(frozen=True)
class Distribution:
    """The strategy chosen, its name (``none``/``mirrored``/``multi-worker``), the replicas in sync, and whether
    this process is the chief."""

    strategy: tf.distribute.Strategy
    name: str
    replicas: int
    is_chief: bool
    task: str  # "worker:1", "chief:0"; "local" outside a cluster

    def as_json(self) -> dict[str, Any]:
        return {"strategy": self.name, "replicas": self.replicas}


def is_chief(task_type: Optional[str], task_id: Optional[int], jobs: list[str]) -> bool:
    """Whether a cluster task writes the run: the ``chief`` task, or ``worker`` 0 when the cluster has no chief;
    True outside a cluster (``task_type`` None)."""
    if task_type is None:
        return True
    if task_type == "chief":
        return True
    return task_type == "worker" and int(task_id or 0) == 0 and "chief" not in jobs


def read_tf_config(text: Optional[str]) -> dict[str, Any]:
    """``TF_CONFIG`` parsed and checked for what multi-worker needs: ``cluster`` (job → addresses) and ``task``
    (``type``, ``index``) naming one of them."""
    if not text:
        raise ValueError("--distribute multi-worker reads the cluster from the TF_CONFIG environment variable, which "
                         "is not set: set it on every worker to {\"cluster\": {\"worker\": [\"host:port\", ...]}, "
                         "\"task\": {\"type\": \"worker\", \"index\": I}}")
    try:
        tf_config = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"TF_CONFIG is not JSON ({error})") from None
    cluster, task = (tf_config.get(key) if isinstance(tf_config, dict) else None for key in ("cluster", "task"))
    if not isinstance(cluster, dict) or not cluster or not all(
            isinstance(v, list) and v and all(isinstance(a, str) for a in v) for v in cluster.values()):
        raise ValueError(f"TF_CONFIG's 'cluster' must map each job to a list of \"host:port\", got {cluster!r}")
    if not isinstance(task, dict) or task.get("type") not in cluster or not isinstance(task.get("index"), int) \
            or not 0 <= task["index"] < len(cluster[task["type"]]):
        raise ValueError(f"TF_CONFIG's 'task' must name a job of the cluster ({', '.join(cluster)}) and an index "
                         f"into its addresses, got {task!r}")
    return tf_config


def split_cpu(replicas: int) -> list[str]:
    """Split the first CPU into ``replicas`` logical devices; their names."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * replicas)
    except RuntimeError as error:  # the runtime is already initialised
        existing = tf.config.list_logical_devices("CPU")
        if len(existing) == replicas:
            return [d.name for d in existing]
        raise RuntimeError(f"cannot split the CPU into {replicas} logical devices: TensorFlow's runtime was "
                           f"initialised before the strategy was chosen ({error}); run train in a fresh process") \
            from None
    return [d.name for d in tf.config.list_logical_devices("CPU")]


def make_distribution(config: DistributeConfig, *, environ: Optional[dict[str, str]] = None) -> Distribution:
    """The strategy ``config`` asks for (see the module comment); raises ValueError for a bad combination."""
    environ = os.environ if environ is None else environ
    name, replicas = config.strategy, config.replicas
    if name not in STRATEGIES:
        raise ValueError(f"--distribute must be one of {', '.join(STRATEGIES)}, got {name!r}")
    if replicas is not None and (isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1):
        raise ValueError(f"--replicas must be a whole number >= 1, got {replicas!r}")
    gpus = tf.config.list_physical_devices("GPU")
    if name == "auto":
        name = "mirrored" if len(gpus) > 1 or (replicas or 1) > 1 else "none"
    if name == "none":
        if (replicas or 1) != 1:
            raise ValueError(f"--distribute none trains on one device; --replicas {replicas} needs --distribute "
                             f"mirrored")
        return Distribution(tf.distribute.get_strategy(), "none", 1, True, "local")
    if name == "multi-worker":
        if replicas is not None:
            raise ValueError("--replicas does not apply to --distribute multi-worker: its replicas are the "
                             "cluster's workers × their local devices (TF_CONFIG)")
        tf_config = read_tf_config(environ.get("TF_CONFIG"))
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        task = tf_config["task"]
        return Distribution(strategy, "multi-worker", strategy.num_replicas_in_sync,
                            is_chief(task["type"], task["index"], list(tf_config["cluster"])),
                            f"{task['type']}:{task['index']}")
    # mirrored
    if gpus:
        if replicas is not None and replicas > len(gpus):
            raise ValueError(f"--replicas {replicas} asks for more GPUs than the {len(gpus)} visible")
        devices = [f"/gpu:{i}" for i in range(replicas or len(gpus))]
    else:
        devices = split_cpu(replicas) if (replicas or 1) > 1 else ["/cpu:0"]
    strategy = tf.distribute.MirroredStrategy(devices)
    return Distribution(strategy, "mirrored", strategy.num_replicas_in_sync, True, "local")


def check_global_batch(batch_size: int, replicas: int) -> int:
    """The per-replica batch of a global ``batch_size``; refused when it does not divide by ``replicas``."""
    if batch_size % replicas:
        raise ValueError(f"--batch-size {batch_size} is the global batch and must divide by the {replicas} replicas "
                         f"(each replica gets batch-size / replicas samples); use a multiple of {replicas}")
    return batch_size // replicas
