"""Train the MobileNetV2 + pix2pix U-Net on the configured COCO splits.

Algorithm: the training split's samples are first decoded by the binder's own path and stored losslessly
(coco_seg.sample_store: once per sample, again only when its file changes; in parallel processes). A tf.data
pipeline draws sample indices (shuffled with a seed), reads each stored PNG and normalises it in native TensorFlow
ops, which run on every core (the image and mask are bit for bit what the binder's ``encode_image`` /
``encode_label_mask`` serve, so the trained model and the binder cannot disagree), optionally augments image and mask together
(horizontal flip; scale by 1–1.5 then crop back to S×S) with stateless random ops seeded per sample, one-hot
encodes the mask and batches. The loss is pixel cross-entropy on logits, optionally class-weighted, plus an
optional soft-dice term; Adam. The encoder is frozen unless ``fine_tune``. The loop is ``make_train_step`` under a
``tf.distribute`` strategy (coco_seg.distribute; the default strategy on one device), not ``model.fit``, whose
Keras 3 version fails under MultiWorkerMirroredStrategy (keras-team/keras#20585). After every epoch the model (with its
optimizer state) is written to ``checkpoints/last.keras``, the best by validation mean IoU to ``best.keras``, and
``train_state.json`` records the finished epochs, so ``resume`` continues an interrupted run without losing one.

Checkpoint journal: an epoch's checkpoints are first saved under pending names (``last.pending.keras``), then
``train_state.json`` is written naming each checkpoint's epoch and sha256 — the commit point — and only then do
the pending files take their names. A kill before the commit leaves the previous epoch's state and checkpoints
(the pending files are removed on resume); a kill after it is rolled forward on resume (or when export reads the
run) by renaming the pending files whose digest the state names. A checkpoint whose digest is neither the
state's nor its pending file's was changed after training: resume and export refuse it instead of resuming a
model that the state does not describe.
"""

import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import tensorflow as tf
import keras

from coco_seg import class_balance
from coco_seg.atomic import write_atomically, write_json_atomically as _write_json_atomically
from coco_seg.coco_data import SplitData, load_labeled_split, resolve_data_root
from coco_seg.config import Config
from coco_seg.distribute import DistributeConfig, Distribution, check_global_batch, make_distribution
from coco_seg.encoders import NORMALIZE_SCALE
from coco_seg.evaluate import evaluate_split
from coco_seg.index_cache import content_digest
from coco_seg.model import build_unet
from coco_seg.sample_store import SampleStore, open_sample_store

STATE_NAME = "train_state.json"
LAST_NAME = "last.keras"
BEST_NAME = "best.keras"
MAX_SCALE = 1.5  # scale-crop augmentation: enlarge by up to 50 %, then crop back to the input size
# Keras' MobileNetV2 keeps BatchNorm moving averages with momentum 0.999: after a few hundred steps they still
# reflect their initial values, so a model trained from scratch (or fine-tuned briefly) predicts garbage in
# inference mode. 0.9 lets the statistics follow the data within tens of steps.
BATCHNORM_MOMENTUM = 0.9


@dataclass(frozen=True)
class TrainOptions:
    epochs: int = 10
    batch_size: int = 16
    learning_rate: float = 1e-3
    encoder_weights: str = "imagenet"
    alpha: float = 1.0
    fine_tune: bool = False
    augment: bool = True
    # "median-frequency" (coco_seg.class_balance; the default, chosen by the README's ablation), computed from the
    # training split at the start and recorded in train_state.json and the model card; one weight per class,
    # background first; or None for plain cross-entropy
    class_weights: Union[tuple[float, ...], str, None] = class_balance.METHOD
    dice_weight: float = 0.0
    boundary_weight: float = 0.0  # pixels on a ground-truth class boundary weigh 1 + this in the cross-entropy
    # repeat-factor sampling (coco_seg.class_balance.repeat_factors): images holding a class found in fewer than
    # this fraction of the training images appear more than once per epoch; 0 turns it off
    repeat_threshold: float = 0.0
    seed: int = 0
    # Keras' mixed_float16 policy: layers compute in float16, variables stay float32, the logits and the loss are
    # float32 (model.build_unet), the optimizer is wrapped in a LossScaleOptimizer (dynamic loss scaling)
    mixed_precision: bool = False


@dataclass
class TrainState:
    """What ``train_state.json`` holds: enough to resume and to describe the model in its card."""

    options: dict[str, Any]
    label_mode: str
    classes: list[str]
    image_size: int
    split_sizes: dict[str, int]
    epochs_done: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: Optional[int] = None
    best_validation: Optional[dict[str, Any]] = None
    # the cross-entropy weights used, background first, and how they were chosen (with the statistics behind them)
    class_balance: Optional[dict[str, Any]] = None
    # repeat-factor sampling, when on: the threshold, the images repeated and the samples per epoch
    sampling: Optional[dict[str, Any]] = None
    # the checkpoint journal: {"last.keras": {"epoch": N, "sha256": ...}, "best.keras": {...}} (see the module
    # comment); None in a run written before the journal existed
    checkpoints: Optional[dict[str, dict[str, Any]]] = None
    # the tf.distribute strategy of the latest (resumed) run: {"strategy": "none"|"mirrored"|"multi-worker",
    # "replicas": N, "replica_batch": b, "epoch_samples": samples per epoch, padded to whole global batches}
    distribute: Optional[dict[str, Any]] = None


class CheckpointMismatch(ValueError):
    """A checkpoint of a run folder is not the one its ``train_state.json`` describes."""


def _pending(name: str) -> str:
    """last.keras → last.pending.keras (Keras picks the format from the suffix, so the suffix stays)."""
    stem, _, suffix = name.rpartition(".")
    return f"{stem}.pending.{suffix}"


def _take_name(pending: Path, final: Path) -> None:
    os.replace(pending, final)


def write_checkpoints(model: keras.Model, out_dir: Path, state: TrainState, names: list[str]) -> None:
    """Save ``model`` as each of ``names`` in ``out_dir/checkpoints`` and commit ``state`` with their digests,
    through the journal of the module comment."""
    folder = out_dir / "checkpoints"
    entries = {}
    # One save, then copies: the names hold the same model, and under MultiWorkerMirroredStrategy a save runs
    # collectives that every worker must match (see _save_as_non_chief), so each epoch saves exactly once.
    save_model_atomically(model, folder / _pending(names[0]))
    for name in names[1:]:
        write_atomically(folder / _pending(name), lambda temp: shutil.copyfile(folder / _pending(names[0]), temp))
    for name in names:
        entries[name] = {"epoch": state.epochs_done, "sha256": content_digest(folder / _pending(name))}
    state.checkpoints = {**(state.checkpoints or {}), **entries}
    _write_json_atomically(out_dir / STATE_NAME, asdict(state))  # the commit point
    for name in names:
        _take_name(folder / _pending(name), folder / name)


def committed_checkpoint(out_dir: Path, state: TrainState, name: str) -> Path:
    """The file holding checkpoint ``name`` as ``state`` commits it: its final name, or its pending one when the
    run stopped between commit and rename; raise :class:`CheckpointMismatch` when neither has the digest. Reads
    only (a non-chief worker resumes through it while the chief settles the folder)."""
    folder, entry = out_dir / "checkpoints", (state.checkpoints or {})[name]
    final, pending = folder / name, folder / _pending(name)
    if final.is_file() and content_digest(final) == entry["sha256"]:
        return final
    if pending.is_file() and content_digest(pending) == entry["sha256"]:
        return pending
    found = "is missing" if not final.is_file() else f"has sha256 {content_digest(final)[:12]}…"
    raise CheckpointMismatch(
        f"{final} {found}, but {out_dir / STATE_NAME} describes epoch {entry['epoch']} with sha256 "
        f"{entry['sha256'][:12]}…: the checkpoint was replaced or changed after training, so the run's "
        f"state does not describe it; put the original back, or train afresh in another --out")


def settle_checkpoints(out_dir: Path, state: TrainState) -> None:
    """Make ``out_dir/checkpoints`` hold what ``state`` describes: roll a committed epoch forward, drop an
    uncommitted one; raise :class:`CheckpointMismatch` for a checkpoint that is neither."""
    folder = out_dir / "checkpoints"
    for name in (state.checkpoints or {}):
        final, pending = folder / name, folder / _pending(name)
        if committed_checkpoint(out_dir, state, name) == final:
            pending.unlink(missing_ok=True)  # an epoch saved but never committed
        else:
            _take_name(pending, final)  # committed, not yet renamed when the run stopped
    for name in (LAST_NAME, BEST_NAME):
        if state.checkpoints is None or name not in state.checkpoints:
            (folder / _pending(name)).unlink(missing_ok=True)


def save_model_atomically(model: keras.Model, path: Path) -> None:
    """``model.save`` through a temporary file and a rename: an interrupted save (kill, full disk) leaves the previous
    checkpoint intact instead of a truncated one that ``--resume`` would fail on."""
    write_atomically(path, model.save)


def read_state(out_dir: Path) -> Optional[TrainState]:
    path = out_dir / STATE_NAME
    return TrainState(**json.loads(path.read_text())) if path.is_file() else None


@keras.saving.register_keras_serializable(package="coco_seg")
class SegmentationLoss(keras.losses.Loss):
    """Mean pixel cross-entropy on logits (optionally class-weighted, optionally boundary-weighted) +
    ``dice_weight`` × (1 − soft dice).

    Boundary weighting (against the "blobs" failure, seed 003): a pixel whose 3 × 3 neighbourhood holds another
    ground-truth class than its own (a class boundary, both sides of it) weighs ``1 + boundary_weight`` in the
    cross-entropy; ignored pixels (all-zero one-hot) weigh nothing as before.
    """

    def __init__(self, class_weights: Optional[list[float]] = None, dice_weight: float = 0.0,
                 boundary_weight: float = 0.0, name: str = "segmentation_loss", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        self.class_weights = None if class_weights is None else [float(w) for w in class_weights]
        self.dice_weight = float(dice_weight)
        self.boundary_weight = float(boundary_weight)

    def call(self, y_true, y_pred):
        y_true = tf.cast(y_true, tf.float32)
        y_pred = tf.cast(y_pred, tf.float32)
        cross_entropy = tf.nn.softmax_cross_entropy_with_logits(labels=y_true, logits=y_pred)  # (B, S, S)
        if self.class_weights is not None:
            cross_entropy *= tf.reduce_sum(y_true * tf.constant(self.class_weights, tf.float32), axis=-1)
        if self.boundary_weight:
            cross_entropy *= 1.0 + self.boundary_weight * class_boundaries(y_true)
        loss = tf.reduce_mean(cross_entropy, axis=[1, 2])
        if self.dice_weight:
            probabilities = tf.nn.softmax(y_pred, axis=-1)
            overlap = tf.reduce_sum(probabilities * y_true, axis=[1, 2])
            total = tf.reduce_sum(probabilities + y_true, axis=[1, 2])
            dice = (2.0 * overlap + 1.0) / (total + 1.0)  # +1 smoothing: an absent class scores ~1, not 0/0
            loss += self.dice_weight * (1.0 - tf.reduce_mean(dice, axis=-1))
        return loss

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "class_weights": self.class_weights, "dice_weight": self.dice_weight,
                "boundary_weight": self.boundary_weight}


def class_boundaries(one_hot: tf.Tensor) -> tf.Tensor:
    """(B, S, S, K) one-hot → (B, S, S) float32: 1 where the 3 × 3 neighbourhood (image border replicated) holds a
    class other than the pixel's own, else 0; ignored (all-zero) pixels count as no class."""
    padded = tf.pad(one_hot, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="SYMMETRIC")
    seen = tf.nn.max_pool2d(padded, ksize=3, strides=1, padding="VALID")  # classes present around each pixel
    others = tf.reduce_sum(seen, axis=-1) - tf.reduce_sum(seen * one_hot, axis=-1)
    labelled = tf.reduce_sum(one_hot, axis=-1)
    return tf.cast((others > 0.5) & (labelled > 0.5), tf.float32)


def _augment(image: tf.Tensor, mask: tf.Tensor, seed: tf.Tensor, size: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Flip and scale-crop image (S, S, 3) float and mask (S, S) uint8 identically; ``seed`` is a (2,) int64."""
    flip_seed, scale_seed, crop_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    flip = tf.random.stateless_uniform([], flip_seed) < 0.5
    image = tf.cond(flip, lambda: tf.reverse(image, [1]), lambda: image)
    mask = tf.cond(flip, lambda: tf.reverse(mask, [1]), lambda: mask)
    scaled = tf.cast(tf.round(size * tf.random.stateless_uniform([], scale_seed, 1.0, MAX_SCALE)), tf.int32)
    image = tf.image.resize(image, [scaled, scaled], method="bilinear")
    mask = tf.image.resize(mask[..., None], [scaled, scaled], method="nearest")[..., 0]
    offset = tf.random.stateless_uniform([2], crop_seed, 0, scaled - size + 1, dtype=tf.int32)
    image = image[offset[0]:offset[0] + size, offset[1]:offset[1] + size]
    mask = mask[offset[0]:offset[0] + size, offset[1]:offset[1] + size]
    return tf.ensure_shape(image, [size, size, 3]), tf.ensure_shape(mask, [size, size])


def make_dataset(store: SampleStore, *, batch_size: int, shuffle: bool, augment: bool, seed: int,
                 epochs: tuple[int, int] = (0, 1), repeats: Optional[np.ndarray] = None,
                 replica_batch: Optional[int] = None, pipeline: tuple[int, int] = (0, 1)) -> tf.data.Dataset:
    """Batches of (image (B, S, S, 3) float32 in [-1, 1], mask (B, S, S, K+1) one-hot) of ``store.split``, read
    from the store (coco_seg.sample_store): without augmentation exactly the binder encoders' values.

    Covers epochs ``epochs[0]`` to ``epochs[1] - 1`` back to back; each epoch's order and augmentation depend only
    on (seed, epoch), so a resumed run sees exactly the batches the uninterrupted run would have seen. ``repeats``
    ((N,) int >= 1, per ``split.sample_ids``) makes sample i appear ``repeats[i]`` times per epoch, each time with
    its own augmentation.

    Distributed (``replica_batch`` < ``batch_size``, the global batch): input pipeline ``pipeline[0]`` of
    ``pipeline[1]`` (one per worker) yields its contiguous share of every global batch, cut into batches of
    ``replica_batch`` that go to its local replicas in order — so the replicas of one step together see exactly the
    global batch one device would. Each epoch is then padded to a whole number of global batches by repeating its
    first positions (as torch's DistributedSampler does): every replica gets a full batch at every step, and no
    replica runs out of data while another waits for it in an all-reduce.
    """
    split = store.split
    sample_ids = split.sample_ids
    if repeats is None:
        repeats = np.ones(len(sample_ids), np.int64)
    if len(repeats) != len(sample_ids) or np.any(np.asarray(repeats) < 1):
        raise ValueError(f"repeats needs one count >= 1 per sample ({len(sample_ids)}), got {len(repeats)}")
    # position p of an epoch shows sample occurrence[p]; augmentation keys on p, so repeats differ
    occurrence = np.repeat(np.arange(len(sample_ids), dtype=np.int64), repeats)
    count = len(occurrence)
    size, num_classes = split.config.image_size, split.config.num_classes
    replica_batch = batch_size if replica_batch is None else replica_batch
    index, pipelines = pipeline
    share = batch_size // pipelines  # samples of each global batch this pipeline feeds
    if batch_size % pipelines or share % replica_batch or not 0 <= index < pipelines:
        raise ValueError(f"a global batch of {batch_size} does not split into {pipelines} pipelines of batches of "
                         f"{replica_batch} (pipeline {index})")
    distributed = replica_batch != batch_size or pipelines > 1
    padded = -(-count // batch_size) * batch_size if distributed else count

    paths = tf.constant(np.asarray(store.paths, dtype=object)[occurrence], tf.string)  # the PNG of each position

    def load_sample(epoch, index):
        rgba = tf.ensure_shape(tf.io.decode_png(tf.io.read_file(paths[index]), channels=4), [size, size, 4])
        # the float32 arithmetic of coco_seg.encoders.normalize_image: pixel * (1 / 127.5), then - 1
        image = tf.cast(rgba[..., :3], tf.float32) * NORMALIZE_SCALE - 1.0
        mask = rgba[..., 3]
        if augment:
            image, mask = _augment(image, mask, tf.stack([tf.constant(seed, tf.int64), epoch * count + index]), size)
        return image, tf.one_hot(tf.cast(mask, tf.int32), num_classes)

    def one_epoch(epoch):
        if shuffle:  # a permutation drawn from (seed, epoch) alone
            order = tf.argsort(tf.random.stateless_uniform([count], tf.stack([tf.constant(seed, tf.int64), epoch])))
            order = tf.cast(order, tf.int64)
        else:
            order = tf.range(count, dtype=tf.int64)
        if distributed:  # pad to whole global batches, keep this pipeline's share of each
            order = tf.gather(order, tf.range(padded, dtype=tf.int64) % count)
            order = tf.reshape(tf.reshape(order, [-1, batch_size])[:, index * share:(index + 1) * share], [-1])
        return (tf.data.Dataset.from_tensor_slices(order)
                .map(lambda position: load_sample(epoch, position), num_parallel_calls=tf.data.AUTOTUNE,
                     deterministic=True)
                .batch(replica_batch))

    return tf.data.Dataset.range(*epochs).flat_map(one_epoch).prefetch(tf.data.AUTOTUNE)


def _all_layers(model: keras.Model) -> list[keras.layers.Layer]:
    layers = []
    for layer in model.layers:
        layers.append(layer)
        if isinstance(layer, keras.Model):
            layers += _all_layers(layer)
    return layers


def keras_predict(model: keras.Model) -> Callable[[np.ndarray], np.ndarray]:
    compiled = tf.function(lambda images: model(images, training=False), reduce_retracing=True)
    return lambda images: compiled(tf.constant(images)).numpy()


def _end_epoch(model: keras.Model, *, predict: Callable[[np.ndarray], np.ndarray], epoch: int, train_loss: float,
               seconds: float, epochs: int, out_dir: Path, state: TrainState, validation: SplitData,
               log: Callable[[str], None]) -> None:
    """The chief's work after an epoch: validate (``predict``: ``keras_predict(model)``, made once per run so that
    it is traced once, not once per epoch), checkpoint (through the journal) and report."""
    evaluation = evaluate_split(predict, validation)
    record = {"epoch": epoch + 1, "train_loss": train_loss, "validation_mean_iou": evaluation.mean_iou,
              "validation_iou": evaluation.iou, "seconds": round(seconds, 1)}
    names = [LAST_NAME]
    if _improves(evaluation.mean_iou, state.best_validation):
        names.append(BEST_NAME)
        state.best_epoch, state.best_validation = epoch + 1, asdict(evaluation)
    state.epochs_done = epoch + 1
    state.history.append(record)
    write_checkpoints(model, out_dir, state, names)
    per_class = ", ".join(f"{n} {v:.3f}" for n, v in evaluation.iou.items() if v is not None and n != "background")
    log(f"epoch {epoch + 1}/{epochs}: train loss {train_loss:.4f}, validation mean IoU {evaluation.mean_iou:.3f} "
        f"({per_class}), {seconds:.0f} s")


def _save_as_non_chief(model: keras.Model) -> None:
    """Save into a temporary folder and drop it. Under MultiWorkerMirroredStrategy ``model.save`` runs collective
    ops (measured: a CollectiveBcastSend) that wait for every worker, so a worker must save whenever the chief does
    (TensorFlow's multi-worker guide does the same); only the chief's file is kept."""
    with tempfile.TemporaryDirectory(prefix="coco-seg-non-chief-") as scratch:
        model.save(Path(scratch) / LAST_NAME)


def make_train_step(model: keras.Model, loss: SegmentationLoss,
                    strategy: tf.distribute.Strategy) -> Callable[[Any], tuple[tf.Tensor, tf.Tensor]]:
    """One synchronous step over every replica: ``step(distributed_iterator)`` → (sum of the per-sample losses,
    samples) over the global batch.

    Each replica divides its loss sum by the global batch's sample count (all-reduced), and the optimizer sums the
    replicas' gradients (Keras all-reduces them inside ``apply_gradients``): the update is that of the global
    batch's mean loss, as one device computing the whole batch would make it. With the default strategy the
    all-reduces are the identity.
    """
    def replica_step(images, masks):
        with tf.GradientTape() as tape:
            per_sample = loss.call(masks, model(images, training=True))  # (b,)
            samples = tf.cast(tf.shape(per_sample)[0], tf.float32)
            global_samples = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, samples)
            objective = tf.reduce_sum(per_sample) / global_samples
            objective = model.optimizer.scale_loss(objective)  # × the dynamic loss scale under mixed precision
        gradients = tape.gradient(objective, model.trainable_variables)
        model.optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        return tf.reduce_sum(per_sample), samples

    @tf.function
    def step(iterator):
        total, samples = strategy.run(replica_step, args=next(iterator))
        return (strategy.reduce(tf.distribute.ReduceOp.SUM, total, axis=None),
                strategy.reduce(tf.distribute.ReduceOp.SUM, samples, axis=None))

    return step


def weights_digest(model: keras.Model) -> str:
    """sha256 of every weight's bytes, in order: equal in every worker of a synchronous run."""
    digest = hashlib.sha256()
    for weight in model.get_weights():
        digest.update(np.ascontiguousarray(weight).tobytes())
    return digest.hexdigest()


RUN_FILES = (STATE_NAME, *(f"checkpoints/{n}" for name in (LAST_NAME, BEST_NAME) for n in (name, _pending(name))))


def prepare_run_folder(out_dir: Path) -> None:
    """Create ``out_dir/checkpoints``; refuse a folder holding files that train does not write (it would overwrite
    or mix with them), and remove the temporaries that a killed save left (``.last.XXXX.tmp.keras``)."""
    from coco_seg.atomic import OutputFolderError, foreign_files

    temporaries = [out_dir / Path(name).parent / f".{Path(name).stem}.*.tmp{Path(name).suffix}" for name in RUN_FILES]
    for pattern in temporaries:
        for orphan in pattern.parent.glob(pattern.name):
            orphan.unlink(missing_ok=True)
    foreign = foreign_files(out_dir, known=RUN_FILES)
    if foreign:
        listed = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise OutputFolderError(f"refusing to train into {out_dir}: it holds files that train does not write "
                                f"({listed}); choose a new or empty folder, or move them away")
    (out_dir / "checkpoints").mkdir(parents=True, exist_ok=True)


def _improves(mean_iou: float, best: Optional[dict[str, Any]]) -> bool:
    """Whether an epoch's validation mean IoU beats the best so far. An undefined figure (NaN in memory, null once
    ``train_state.json`` was read back by a resume) is beaten by any defined one and beats nothing."""
    if best is None:
        return True
    previous = best.get("mean_iou")
    if previous is None or math.isnan(previous):
        return not math.isnan(mean_iou)
    return mean_iou > previous


def train(config: Config, out_dir: Path, options: TrainOptions, *, resume: bool = False,
          distribute: DistributeConfig = DistributeConfig(), log: Callable[[str], None] = print) -> TrainState:
    """Train per ``options`` under the ``distribute`` strategy (coco_seg.distribute); with ``resume`` continue the
    run in ``out_dir`` after its last finished epoch. Only the chief writes ``out_dir``; every worker is given the
    same ``out_dir`` (shared storage), which the others read on ``resume``."""
    distribution = make_distribution(distribute)  # first: it must precede TensorFlow's runtime initialisation
    policy = keras.mixed_precision.global_policy()
    if options.mixed_precision:  # the policy applies to the layers built from here on; restored at the end
        keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        return _train(config, out_dir, options, resume=resume, distribution=distribution, log=log)
    finally:
        keras.mixed_precision.set_global_policy(policy)


def _train(config: Config, out_dir: Path, options: TrainOptions, *, resume: bool, distribution: Distribution,
           log: Callable[[str], None]) -> TrainState:
    replica_batch = check_global_batch(options.batch_size, distribution.replicas)
    keras.utils.set_random_seed(options.seed)
    if distribution.is_chief:
        prepare_run_folder(out_dir)
    data_root = resolve_data_root(config)
    training = load_labeled_split(config, "training", data_root=data_root)
    validation = load_labeled_split(config, "validation", data_root=data_root)
    if not (options.boundary_weight >= 0 and np.isfinite(options.boundary_weight)):
        raise ValueError(f"boundary_weight must be a finite number >= 0, got {options.boundary_weight!r}")
    if isinstance(options.class_weights, str) and options.class_weights != class_balance.METHOD:
        raise ValueError(f"class_weights must be {class_balance.METHOD!r} or one number per class, got "
                         f"{options.class_weights!r}")
    if isinstance(options.class_weights, tuple) and len(options.class_weights) != config.num_classes:
        raise ValueError(f"class_weights needs {config.num_classes} values ({', '.join(config.class_names)}), "
                         f"got {len(options.class_weights)}")
    if isinstance(options.class_weights, tuple) and not (
            all(np.isfinite(w) and w >= 0 for w in options.class_weights) and any(w > 0 for w in options.class_weights)):
        raise ValueError(f"class_weights must be finite numbers >= 0, not all 0, got {options.class_weights!r}")

    if not (options.repeat_threshold == 0 or 0 < options.repeat_threshold <= 1):
        raise ValueError(f"repeat_threshold must be 0 (off) or in (0, 1], got {options.repeat_threshold!r}")
    repeats = (class_balance.repeat_factors(class_balance.class_presence(training), threshold=options.repeat_threshold)
               if options.repeat_threshold else None)

    state = read_state(out_dir) if resume else None
    if resume and state is None:
        raise FileNotFoundError(f"nothing to resume in {out_dir}: no {STATE_NAME}")
    if state is not None:
        if (state.label_mode, state.classes, state.image_size) != (config.label_mode, list(config.class_names),
                                                                   config.image_size):
            raise ValueError(f"{out_dir} was trained for {state.label_mode} {state.classes} at {state.image_size} px;"
                             f" the config asks for {config.label_mode} {list(config.class_names)} at "
                             f"{config.image_size} px")
        if distribution.is_chief:
            settle_checkpoints(out_dir, state)
        with distribution.strategy.scope():
            model = keras.models.load_model(committed_checkpoint(out_dir, state, LAST_NAME))
        log(f"resuming after epoch {state.epochs_done} of {options.epochs}")
    else:
        balance = _class_balance(options, training)
        if balance is not None:
            log(f"class weights ({balance['method']}): " + ", ".join(
                f"{name} {weight:.3f}" for name, weight in zip(config.class_names, balance["weights"])))
        state = TrainState(options=asdict(options), label_mode=config.label_mode, classes=list(config.class_names),
                           image_size=config.image_size,
                           split_sizes={"training": len(training.sample_ids), "validation": len(validation.sample_ids)},
                           class_balance=balance, sampling=_sampling(repeats))
        if state.sampling is not None:
            log(f"repeat-factor sampling (threshold {options.repeat_threshold}): {state.sampling['images_repeated']} "
                f"images repeated, up to {state.sampling['max_repeats']}x; {state.sampling['epoch_samples']} "
                f"samples per epoch")
        with distribution.strategy.scope():
            model = build_unet(image_size=config.image_size, num_classes=config.num_classes,
                               encoder_weights=options.encoder_weights, alpha=options.alpha,
                               trainable_encoder=options.fine_tune)
            for layer in _all_layers(model):
                if isinstance(layer, keras.layers.BatchNormalization):
                    layer.momentum = BATCHNORM_MOMENTUM
            model.compile(optimizer=keras.optimizers.Adam(options.learning_rate),
                          loss=SegmentationLoss(None if balance is None else balance["weights"], options.dice_weight,
                                                options.boundary_weight))
    synchronise_batchnorm(model, distribution.replicas)
    epoch_samples = len(training.sample_ids) if repeats is None else int(repeats.sum())
    steps_per_epoch = -(-epoch_samples // options.batch_size)
    state.distribute = {**distribution.as_json(), "replica_batch": replica_batch,
                        "epoch_samples": steps_per_epoch * options.batch_size if distribution.replicas > 1
                        else epoch_samples}
    devices = [d.name for d in tf.config.list_logical_devices("GPU")] or ["CPU"]
    log(f"training on {', '.join(devices)} ({distribution.name}, {distribution.replicas} replica(s) of "
        f"{replica_batch}, task {distribution.task}{', chief' if distribution.is_chief else ''}): "
        f"{state.split_sizes['training']} training / {state.split_sizes['validation']} validation samples, "
        f"{config.label_mode} {list(config.class_names)}, {config.image_size} px, encoder "
        f"{'fine-tuned' if options.fine_tune else 'frozen'}"
        f"{', mixed_float16' if model.dtype_policy.name == 'mixed_float16' else ''}")
    if state.epochs_done >= options.epochs:
        log(f"already trained for {state.epochs_done} epochs")
        return state

    store = open_sample_store(training)
    log(f"training samples stored in {store.folder}: {store.encoded} decoded now, {store.reused} reused, "
        f"{store.bytes / 1e6:.1f} MB" + (f"; {len(store.failures)} undecodable, trained on as ignored placeholders"
                                          if store.failures else ""))

    def dataset_for(context: tf.distribute.InputContext) -> tf.data.Dataset:
        return make_dataset(store, batch_size=options.batch_size, shuffle=True, augment=options.augment,
                            seed=options.seed, epochs=(state.epochs_done, options.epochs), repeats=repeats,
                            replica_batch=replica_batch,
                            pipeline=(context.input_pipeline_id, context.num_input_pipelines))

    with distribution.strategy.scope():
        if not model.optimizer.built:  # built outside the traced step (a variable created in it would not be)
            model.optimizer.build(model.trainable_variables)
        iterator = iter(distribution.strategy.distribute_datasets_from_function(dataset_for))
        step = make_train_step(model, model.loss, distribution.strategy)
        predict = keras_predict(model)
        for epoch in range(state.epochs_done, options.epochs):
            started, total, samples = time.monotonic(), 0.0, 0.0
            for _ in range(steps_per_epoch):
                step_total, step_samples = step(iterator)
                total, samples = total + float(step_total), samples + float(step_samples)
            if distribution.is_chief:
                _end_epoch(model, predict=predict, epoch=epoch, train_loss=total / samples, seconds=time.monotonic() - started,
                           epochs=options.epochs, out_dir=out_dir, state=state, validation=validation, log=log)
            else:
                _save_as_non_chief(model)
                state.epochs_done = epoch + 1
                log(f"epoch {epoch + 1}/{options.epochs}: train loss {total / samples:.4f} (task "
                    f"{distribution.task}: the chief validates and checkpoints)")
    log(f"trained weights sha256 {weights_digest(model)} (task {distribution.task})")
    return state


def synchronise_batchnorm(model: keras.Model, replicas: int) -> None:
    """With more than one replica, every BatchNormalization layer that trains computes its batch statistics over
    the global batch (``synchronized``: an all-reduce of sums per layer) instead of its replica's slice: the decoder
    then normalises exactly as on one device whatever the replica count, so a run's result does not depend on how
    many devices it had, and a small per-replica batch (the global 16 on 8 GPUs is 2 each) does not make the
    statistics noisy. The cost, a few all-reduces of per-channel sums per step, is small next to the gradients'."""
    if replicas > 1:
        for layer in _all_layers(model):
            if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable:
                layer.synchronized = True


def _sampling(repeats: Optional[np.ndarray]) -> Optional[dict[str, Any]]:
    if repeats is None:
        return None
    return {"method": "repeat-factor", "images_repeated": int(np.sum(repeats > 1)), "epoch_samples": int(repeats.sum()),
            "max_repeats": int(repeats.max(initial=1))}


def _class_balance(options: TrainOptions, training: SplitData) -> Optional[dict[str, Any]]:
    """The cross-entropy weights ``options`` ask for, with how they were chosen; None for plain cross-entropy."""
    if options.class_weights is None:
        return None
    if isinstance(options.class_weights, tuple):
        return {"method": "given", "weights": [float(w) for w in options.class_weights]}
    statistics = class_balance.class_pixel_statistics(training)
    return {"method": class_balance.METHOD, "weights": list(class_balance.median_frequency_weights(statistics)),
            "training_pixels": statistics.as_json()}


def training_card_fields(checkpoint: Path) -> dict[str, Any]:
    """Model-card fields for a checkpoint of a run folder: training data, epochs and validation figures."""
    run = checkpoint.resolve().parent.parent
    state = read_state(run)
    fields: dict[str, Any] = {"checkpoint": checkpoint.name}
    if state is not None:
        settle_checkpoints(run, state)  # the card describes this very checkpoint, or export refuses
        epoch = state.best_epoch if checkpoint.name == BEST_NAME else state.epochs_done
        fields |= {"training_data": state.split_sizes, "epochs": epoch, "train_options": state.options,
                   "class_balance": state.class_balance,
                   "evaluation": state.best_validation if checkpoint.name == BEST_NAME else None}
    return fields
