"""Inference latency of the U-Net: Keras (tf.function) against onnxruntime, batch 1 and 8, 128 and 224 px.

Both runtimes run the same exported model (random weights: latency does not depend on them) on the CPU. Each cell
is the median of --repeats timed calls after --warmup untimed ones; the ratio column is Keras / onnxruntime
measured in the same run. Usage: python benchmarks/inference.py [--alpha 1.0] [--repeats 20]
"""

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TL_DISABLE_ANALYTICS", "true")

import numpy as np  # noqa: E402


def median_ms(call, *, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alpha", type=float, default=1.0, help="MobileNetV2 width multiplier")
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 224])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()

    import tensorflow as tf

    from coco_seg.export import export_model, load_model
    from coco_seg.model import build_unet

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"TensorFlow {tf.__version__}, GPUs seen: {len(tf.config.list_physical_devices('GPU'))}")
    print("\n| input | batch | Keras tf.function (ms) | onnxruntime (ms) | Keras / onnxruntime |")
    print("|---|---|---|---|---|")
    for size in args.sizes:
        model = build_unet(image_size=size, num_classes=3, encoder_weights="none", alpha=args.alpha)
        keras_call = tf.function(lambda images: model(images, training=False), reduce_retracing=True)
        with tempfile.TemporaryDirectory() as folder:
            session = load_model(export_model(model, Path(folder), card={"benchmark": True})["onnx"])
        for batch in args.batches:
            images = np.random.default_rng(0).uniform(-1, 1, (batch, size, size, 3)).astype(np.float32)
            tensor = tf.constant(images)
            keras_ms = median_ms(lambda: keras_call(tensor).numpy(), warmup=args.warmup, repeats=args.repeats)
            onnx_ms = median_ms(lambda: session.run(None, {"image": images}), warmup=args.warmup,
                                repeats=args.repeats)
            print(f"| {size} px | {batch} | {keras_ms:.1f} | {onnx_ms:.1f} | {keras_ms / onnx_ms:.2f} |", flush=True)


if __name__ == "__main__":
    main()
