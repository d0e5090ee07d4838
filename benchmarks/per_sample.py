"""Per-sample costs of the binder, as ratios measured in one run (issue 6, goals 1, 2 and 4).

1. The per-sample path — input encoder + GT encoder + every metadata value of one sample, cold (nothing cached) —
   against the floor: decoding the same JPEG and resizing it alone. Goal: ≤ 1.3×, at 128 and 224 px.
2. The same path against a faithful re-implementation of the approach of Tensorleap's original COCO example, in
   which every metadata function re-derives the mask from the annotations with pycocotools ``annToMask`` (and the
   image fields re-read the file). Goal: ≥ 5× faster.
4. Metrics + loss + visualizers for one sample against the model's batch-1 CPU inference time (onnxruntime, the
   runtime the binder loads; alpha 1.0). Goal: ≤ 10 %.

Runs on ../shared/coco_sample (real COCO 2017 photos) when present, else on a generated sample. Usage:
    python benchmarks/per_sample.py [--repeats 3]
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TL_DISABLE_ANALYTICS", "true")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import yaml  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
REAL_SAMPLE = REPO_ROOT.parent / "shared" / "coco_sample"


def dataset_config(folder: Path, image_size: int) -> Path:
    if REAL_SAMPLE.is_dir():
        split = {"annotations": "annotations/instances_train2017.json", "images": "train2017"}
        tree = {"data": {"root": str(REAL_SAMPLE), "splits": {"training": split, "validation": split}}}
    else:
        from coco_seg.sample_data import make_sample

        tree = {"data": {"root": str(make_sample(folder / "generated", images=120).out_dir)}}
    path = folder / f"config-{image_size}.yaml"
    path.write_text(yaml.safe_dump(tree | {"image_size": image_size}))
    return path


def per_sample_ms(run, sample_ids, *, repeats: int) -> float:
    """Median over repeats of the mean time per sample."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        for sample_id in sample_ids:
            run(sample_id)
        times.append((time.perf_counter() - started) / len(sample_ids))
    return 1000 * statistics.median(times)


class RederivingBinder:
    """The original example's approach: each function starts from the file and the annotations again."""

    def __init__(self, split, config):
        from pycocotools.coco import COCO

        self.split, self.config = split, config
        self.size = config.image_size
        annotations = config.data_root / config.splits["training"].annotations
        import contextlib
        import io

        with contextlib.redirect_stdout(io.StringIO()):
            self.coco = COCO(str(annotations))

    def _image(self, sample_id):
        return cv2.cvtColor(cv2.imread(str(self.split.records[sample_id].path)), cv2.COLOR_BGR2RGB)

    def _mask(self, sample_id):
        info = self.coco.imgs[int(sample_id)]
        mask = np.zeros((info["height"], info["width"]), np.uint8)
        for target in range(len(self.config.target_classes), 0, -1):
            for annotation in self.coco.imgToAnns[int(sample_id)]:
                if self.split.class_of_category.get(annotation["category_id"]) == target:
                    mask[self.coco.annToMask(annotation) > 0] = target
        return mask

    def run(self, sample_id):
        """Both encoders, then every metadata function — each starting from the annotations (and, for the image
        fields, the file) again, as the original example's functions did."""
        from coco_seg.metadata import metadata_names

        size, classes = self.size, self.config.num_classes
        cv2.resize(self._image(sample_id), (size, size), interpolation=cv2.INTER_AREA).astype(np.float32) / 127.5 - 1
        np.eye(classes, dtype=np.float32)[cv2.resize(self._mask(sample_id), (size, size),
                                                      interpolation=cv2.INTER_NEAREST)]
        for name in metadata_names(self.config):
            mask = self._mask(sample_id)
            if name in ("is_colored", "brightness"):
                self._image(sample_id).mean()
            elif name.endswith("_percent"):
                np.bincount(mask.ravel(), minlength=classes)
            else:
                [a["area"] for a in self.coco.imgToAnns[int(sample_id)]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from coco_seg.coco_data import load_labeled_split
    from coco_seg.config import load_config
    from coco_seg.encoders import encode_image, encode_mask, sample_metadata
    from coco_seg.metadata import metadata_names
    from coco_seg.samples import CACHE

    print(f"data: {'../shared/coco_sample (real COCO 2017)' if REAL_SAMPLE.is_dir() else 'generated sample'}; "
          f"{os.cpu_count()} CPUs")
    print("\n| input | floor: decode + resize (ms) | per-sample path (ms) | path / floor (goal ≤ 1.3) | "
          "re-deriving binder (ms) | speed-up (goal ≥ 5) |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as scratch:
        for size in (128, 224):
            config = load_config(dataset_config(Path(scratch), size))
            split = load_labeled_split(config, "training", data_root=config.data_root)
            ids = split.sample_ids
            paths = {i: str(split.records[i].path) for i in ids}

            def floor(sample_id):
                cv2.resize(cv2.imread(paths[sample_id]), (size, size), interpolation=cv2.INTER_AREA)

            names = list(metadata_names(config))

            def path(sample_id):
                CACHE.clear()  # cold: the first call of the sample decodes it
                encode_image(split, sample_id)
                encode_mask(split, sample_id)
                for name in names:  # one engine call per metadata name, as leap_binder registers them
                    sample_metadata(split, sample_id)[name]

            rederiving = RederivingBinder(split, config)
            floor(ids[0]), path(ids[0]), rederiving.run(ids[0])  # warm-up: imports, allocator
            floor_ms = per_sample_ms(floor, ids, repeats=args.repeats)
            path_ms = per_sample_ms(path, ids, repeats=args.repeats)
            old_ms = per_sample_ms(rederiving.run, ids, repeats=1)
            print(f"| {size} px | {floor_ms:.2f} | {path_ms:.2f} | {path_ms / floor_ms:.2f} | {old_ms:.1f} | "
                  f"{old_ms / path_ms:.1f}× |", flush=True)

    # Goal 4: the engine's per-sample work after inference, against inference itself.
    sys.path.insert(0, str(REPO_ROOT))
    from coco_seg import metrics, visualizers
    from coco_seg.export import export_model, load_model
    from coco_seg.model import build_unet

    size, classes = 128, 3
    class_names = ["background", "person", "car"]
    with tempfile.TemporaryDirectory() as folder:
        session = load_model(export_model(build_unet(image_size=size, num_classes=classes, encoder_weights="none"),
                                          Path(folder), card={"benchmark": True})["onnx"])
    rng = np.random.default_rng(0)
    image = rng.uniform(-1, 1, (1, size, size, 3)).astype(np.float32)
    ground_truth = np.eye(classes, dtype=np.float32)[rng.integers(0, classes, (1, size, size))]
    prediction = session.run(None, {"image": image})[0].astype(np.float16)  # the engine casts to float16
    gt16 = ground_truth.astype(np.float16)

    def post_inference(_):
        metrics.iou_per_class(gt16, prediction)
        metrics.mean_iou(gt16, prediction)
        metrics.mean_dice(gt16, prediction)
        metrics.pixel_accuracy(gt16, prediction)
        metrics.cross_entropy_loss(gt16, prediction)
        shown = visualizers.denormalize_image(image[0])
        visualizers.label_map(ground_truth[0])
        visualizers.label_map(prediction[0])
        visualizers.error_map(ground_truth[0], prediction[0], class_names=class_names)
        visualizers.loss_heatmap(ground_truth[0], prediction[0])
        visualizers.confidence_heatmaps(prediction[0])
        return shown

    repeats = list(range(50))
    inference_ms = per_sample_ms(lambda _: session.run(None, {"image": image}), repeats, repeats=3)
    after_ms = per_sample_ms(post_inference, repeats, repeats=3)
    print(f"\n| 128 px, batch 1 | model inference, onnxruntime (ms) | metrics + loss + visualizers (ms) | "
          f"share (goal ≤ 10 %) |\n|---|---|---|---|\n| | {inference_ms:.2f} | {after_ms:.2f} | "
          f"{100 * after_ms / inference_ms:.0f} % |")


if __name__ == "__main__":
    main()
