"""Training input pipeline: samples/s with 1 and 2 parallel workers, against the frozen-encoder training step
(issue 16 point 3).

Measures, in one run on the training split of ``../shared/coco_sample`` (else a generated sample), 128 px,
batch 16, augmentation on:

* ``store build`` — coco_seg.sample_store decoding every sample through the binder's path and writing its PNG,
  with 1 worker (in this process) and 2 worker processes, each into a fresh store; repeated ``--build-rounds``
  times so that each measurement decodes enough samples to dwarf a worker's start;
* ``pipeline (store)`` — ``training.make_dataset`` reading the store (native ``tf.io`` PNG decode, normalisation,
  augmentation, one-hot), with a tf.data thread pool of 1 and of 2 threads (and intra-op parallelism 1, so a
  worker is one thread); one warm-up epoch, then ``--epochs`` timed ones;
* ``pipeline (numpy_function)`` — the pipeline this replaced, for comparison: the same augmentation and one-hot,
  but each sample decoded in Python by the binder's encoders inside ``tf.numpy_function`` (the decode cache cleared
  before each epoch, as a split larger than the cache would be);
* ``training step`` — ``coco-seg train``'s step (``training.make_train_step``: frozen ImageNet encoder forward,
  decoder forward and backward, Adam) on one fixed batch, so it does not wait on any pipeline.

Goals: 2 workers ≥ 1.7× one worker; the pipeline with every core ≥ 3× the training step, so the model never waits.
On a 2-core machine the measurement of 2 workers takes both cores; nothing else should run meanwhile. Usage:

    python benchmarks/input_pipeline.py [--epochs 4] [--build-rounds 3] [--encoder-weights FILE|imagenet|none]
"""

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TL_DISABLE_ANALYTICS", "true")

from training_speed import BATCH_SIZE, IMAGE_SIZE, SHARED_WEIGHTS, fresh_model, training_split  # noqa: E402


def build_rate(split, workers: int, rounds: int, folder: Path) -> float:
    from coco_seg.sample_store import open_sample_store

    started, samples = time.monotonic(), 0
    for round_ in range(rounds):
        samples += open_sample_store(split, workers=workers, root=folder / f"w{workers}-{round_}").encoded
    return samples / (time.monotonic() - started)


def with_threads(dataset, threads: int):
    import tensorflow as tf

    options = tf.data.Options()
    options.threading.private_threadpool_size = threads
    options.threading.max_intra_op_parallelism = 1
    return dataset.with_options(options)


def pipeline_rate(make, threads: int, epochs: int, count: int, before_epoch=lambda: None) -> float:
    """Samples/s of ``make(epochs)`` (a dataset of ``epochs`` + 1 epochs of ``count`` samples) over the timed
    epochs, after a warm-up one."""
    iterator = iter(with_threads(make((0, epochs + 1)), threads))
    seen, started = 0, None
    for epoch in range(epochs + 1):
        before_epoch()
        if epoch == 1:
            started = time.monotonic()
        for _ in range(-(-count // BATCH_SIZE)):
            seen += next(iterator)[0].shape[0] if epoch else 0
    return seen / (time.monotonic() - started)


def numpy_function_dataset(split, epochs: tuple[int, int]):
    """The replaced pipeline: training.make_dataset's order, augmentation and one-hot around a Python decode."""
    import tensorflow as tf

    from coco_seg.encoders import encode_image, encode_label_mask
    from coco_seg.training import _augment

    sample_ids, count = split.sample_ids, len(split.sample_ids)
    size, num_classes = split.config.image_size, split.config.num_classes

    def load(index):
        sample_id = sample_ids[int(index)]
        return encode_image(split, sample_id), encode_label_mask(split, sample_id)

    def load_sample(epoch, index):
        image, mask = tf.numpy_function(load, [index], [tf.float32, tf.uint8], stateful=False)
        image, mask = tf.ensure_shape(image, [size, size, 3]), tf.ensure_shape(mask, [size, size])
        image, mask = _augment(image, mask, tf.stack([tf.constant(0, tf.int64), epoch * count + index]), size)
        return image, tf.one_hot(tf.cast(mask, tf.int32), num_classes)

    def one_epoch(epoch):
        order = tf.cast(tf.argsort(tf.random.stateless_uniform([count], tf.stack([tf.constant(0, tf.int64), epoch]))),
                        tf.int64)
        return (tf.data.Dataset.from_tensor_slices(order)
                .map(lambda position: load_sample(epoch, position), num_parallel_calls=tf.data.AUTOTUNE,
                     deterministic=True).batch(BATCH_SIZE))

    return tf.data.Dataset.range(*epochs).flat_map(one_epoch).prefetch(tf.data.AUTOTUNE)


def step_rate(store, encoder_weights: str, steps: int) -> float:
    import tensorflow as tf

    from coco_seg.training import make_dataset, make_train_step

    model = fresh_model(encoder_weights, store.split.config.num_classes)
    model.optimizer.build(model.trainable_variables)
    batch = next(iter(make_dataset(store, batch_size=BATCH_SIZE, shuffle=True, augment=True, seed=0)))
    strategy = tf.distribute.get_strategy()
    iterator = iter(strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors(batch).repeat()))
    step = make_train_step(model, model.loss, strategy)
    for _ in range(3):  # tracing and first runs
        float(step(iterator)[0])
    started = time.monotonic()
    for _ in range(steps):
        float(step(iterator)[0])
    return steps * BATCH_SIZE / (time.monotonic() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder-weights", default=str(SHARED_WEIGHTS) if SHARED_WEIGHTS.is_file() else "none")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--build-rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20, help="timed training steps")
    args = parser.parse_args()

    from coco_seg.sample_store import open_sample_store
    from coco_seg.samples import CACHE
    from coco_seg.training import make_dataset

    with tempfile.TemporaryDirectory() as folder:
        split, root = training_split(Path(folder), 0)
        count = len(split.sample_ids)
        rates = {("store build", workers): build_rate(split, workers, args.build_rounds, Path(folder))
                 for workers in (1, 2)}
        store = open_sample_store(split, root=Path(folder) / "w1-0")

        def from_store(epochs):
            return make_dataset(store, batch_size=BATCH_SIZE, shuffle=True, augment=True, seed=0, epochs=epochs)

        for threads in (1, 2):
            rates["pipeline (store)", threads] = pipeline_rate(from_store, threads, args.epochs, count)
        for threads in (1, 2):
            rates["pipeline (numpy_function)", threads] = pipeline_rate(
                lambda epochs: numpy_function_dataset(split, epochs), threads, args.epochs, count,
                before_epoch=CACHE.clear)
        step = step_rate(store, args.encoder_weights, args.steps)
        store_mb = store.bytes / 1e6

    cores = len(os.sched_getaffinity(0))
    print(f"\ninput pipeline, {count} training samples of {root}, {IMAGE_SIZE} px, batch {BATCH_SIZE}, "
          f"augmentation on, {cores} cores; store {store_mb:.1f} MB ({store_mb * 1e3 / count:.1f} KB per sample)\n")
    print("| stage | 1 worker, samples/s | 2 workers, samples/s | 2 / 1 |")
    print("|---|---|---|---|")
    for name in ("store build", "pipeline (store)", "pipeline (numpy_function)"):
        one, two = rates[name, 1], rates[name, 2]
        print(f"| {name} | {one:.0f} | {two:.0f} | {two / one:.2f}× |")
    best = rates["pipeline (store)", 2]
    print(f"\ntraining step (frozen encoder {Path(args.encoder_weights).name}, fixed batch): {step:.1f} samples/s; "
          f"the store pipeline with {min(cores, 2)} workers feeds {best / step:.1f}× that "
          f"(the numpy_function one {rates['pipeline (numpy_function)', 2] / step:.1f}×)")
    print(f"goals: 2 workers >= 1.7x one: {'met' if best / rates['pipeline (store)', 1] >= 1.7 else 'NOT met'}; "
          f"pipeline >= 3x the step: {'met' if best / step >= 3 else 'NOT met'}")


if __name__ == "__main__":
    main()
