"""Frozen-encoder training speed: samples/s of ``coco-seg train``'s training loop, and the most any encoder cache
could give (issue 13).

Measures, in one run on the same data and model (128 px, alpha 1.0, encoder frozen, augmentation on, batch 16):

* ``training loop`` — ``coco-seg train``'s pipeline and step: the stored samples (coco_seg.sample_store, built
  before timing) read, augmented and one-hot encoded in tf.data, the frozen encoder's forward, the decoder's
  forward and backward, Adam (``training.make_train_step``);
* ``decoder only`` — the ceiling of any encoder-feature cache (per image and augmentation variant, or in feature
  space): the same decoder trained by the same step on encoder features computed beforehand, a step that runs
  neither the data pipeline nor the encoder.

A cache of decoded samples held in memory (tried for issue 13) measured 1.00× the training loop here: on 2 cores
the step, not the decode, bounds the loop; benchmarks/input_pipeline.py measures the pipeline on its own. Each
variant trains a fresh model for one warm-up epoch, then ``--epochs`` timed epochs; samples/s counts training
samples over the timed epochs' wall time.
Uses ``../shared/coco_sample`` train2017 when present, else a generated sample. Usage:

    python benchmarks/training_speed.py [--encoder-weights imagenet|none|FILE] [--epochs 2] [--limit N]
"""

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TL_DISABLE_ANALYTICS", "true")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
REAL_SAMPLE = REPO.parent / "shared" / "coco_sample"
SHARED_WEIGHTS = REPO.parent / "shared" / "weights" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
IMAGE_SIZE, BATCH_SIZE = 128, 16


def training_split(folder: Path, limit: int):
    import yaml

    from coco_seg.coco_data import load_labeled_split
    from coco_seg.config import load_config

    if (REAL_SAMPLE / "annotations" / "instances_train2017.json").is_file():
        root, split = REAL_SAMPLE, {"annotations": "annotations/instances_train2017.json", "images": "train2017"}
    else:
        from coco_seg.sample_data import make_sample

        root = folder / "generated"
        make_sample(root)
        split = {"annotations": "annotations/instances_train2017.json", "images": "train2017"}
    tree = {"data": {"root": str(root), "splits": {"training": split, "validation": split}},
            "labels": {"mode": "category"}, "image_size": IMAGE_SIZE}
    if limit:
        tree["sample_limit_per_split"] = limit
    (folder / "config.yaml").write_text(yaml.safe_dump(tree))
    config = load_config(folder / "config.yaml")
    return load_labeled_split(config, "training", data_root=config.data_root), str(root)


def fresh_model(encoder_weights: str, num_classes: int):
    import keras

    from coco_seg.model import build_unet
    from coco_seg.training import SegmentationLoss

    keras.utils.set_random_seed(0)
    model = build_unet(image_size=IMAGE_SIZE, num_classes=num_classes, encoder_weights=encoder_weights)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=SegmentationLoss())
    return model


def decoder_only(model):
    """The model's own decoder layers on (skip features, bottleneck) inputs: what an encoder-feature cache trains."""
    import keras

    from coco_seg.model import UP_FILTERS

    encoder = model.get_layer("encoder")
    inputs = [keras.Input(tensor.shape[1:]) for tensor in encoder.outputs]
    *skips, x = inputs
    for index, skip in enumerate(reversed(skips), start=1):
        for part in ("conv", "bn", "relu"):
            x = model.get_layer(f"up{index}_{part}")(x)
        x = model.get_layer(f"up{index}_concat")([x, skip])
    assert len(skips) == len(UP_FILTERS)
    decoder = keras.Model(inputs, model.get_layer("logits")(x))
    decoder.compile(optimizer=keras.optimizers.Adam(1e-3), loss=model.loss)
    return decoder


def timed_steps(model, dataset, *, steps: int, epochs: int) -> float:
    """Samples/s of ``coco-seg train``'s step (training.make_train_step, default strategy) over ``epochs`` timed
    epochs of ``steps`` steps after one warm-up epoch (tracing, first decodes)."""
    import tensorflow as tf

    from coco_seg.training import make_train_step

    strategy = tf.distribute.get_strategy()
    model.optimizer.build(model.trainable_variables)
    step = make_train_step(model, model.loss, strategy)
    iterator = iter(strategy.experimental_distribute_dataset(dataset))
    for _ in range(steps):
        float(step(iterator)[0])
    started = time.monotonic()
    for _ in range(steps * epochs):
        float(step(iterator)[0])  # float(): wait for the step, as train() does to sum the loss
    return steps * BATCH_SIZE * epochs / (time.monotonic() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder-weights", default=str(SHARED_WEIGHTS) if SHARED_WEIGHTS.is_file() else "none")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--limit", type=int, default=0, help="use the first N training samples only (0: all)")
    args = parser.parse_args()

    import tensorflow as tf

    from coco_seg.sample_store import open_sample_store
    from coco_seg.training import make_dataset

    with tempfile.TemporaryDirectory() as folder:
        split, root = training_split(Path(folder), args.limit)
        count = len(split.sample_ids)
        steps = count // BATCH_SIZE  # whole batches only, so every step has the same shape
        epochs = (0, args.epochs + 2)

        store = open_sample_store(split, root=Path(folder) / "store")

        def dataset():
            return make_dataset(store, batch_size=BATCH_SIZE, shuffle=True, augment=True, seed=0,
                                epochs=epochs).unbatch().batch(BATCH_SIZE, drop_remainder=True)

        first_epoch = [(i.numpy(), m.numpy()) for i, m in dataset().take(steps)]

        rates = {}
        num_classes = split.config.num_classes
        rates["training loop"] = timed_steps(fresh_model(args.encoder_weights, num_classes), dataset(),
                                           steps=steps, epochs=args.epochs)
        model = fresh_model(args.encoder_weights, num_classes)
        encoder = model.get_layer("encoder")
        features = [np.concatenate(parts) for parts in zip(*(
            [f.numpy() for f in encoder(images, training=False)] for images, _ in first_epoch))]
        masks = np.concatenate([m for _, m in first_epoch])
        cached = tf.data.Dataset.from_tensor_slices((tuple(features), masks)).batch(BATCH_SIZE).repeat()
        rates["decoder only"] = timed_steps(decoder_only(model), cached, steps=steps, epochs=args.epochs)
        feature_mib = sum(f[0].nbytes for f in features) / 2 ** 20

    before = rates["training loop"]
    print(f"\nfrozen-encoder training, {count} samples of {root}, {IMAGE_SIZE} px, alpha 1.0, batch {BATCH_SIZE}, "
          f"encoder weights {Path(args.encoder_weights).name}, {args.epochs} timed epochs, {os.cpu_count()} CPUs\n")
    print("| step | samples/s | × training loop |")
    print("|---|---|---|")
    for name, rate in rates.items():
        print(f"| {name} | {rate:.1f} | {rate / before:.2f}× |")
    print(f"\nan encoder-feature cache would hold {feature_mib:.2f} MiB per sample and augmentation variant "
          f"(float32 skip features)")


if __name__ == "__main__":
    main()
