"""Train on the real COCO sample (../shared/coco_sample, 190 train2017 images) with a held-out validation split.

The sample has one annotation file, so this script splits it by image id (every fourth image with a class goes to
validation) into a scratch folder (annotation files written there, images symlinked), trains with the encoder
weights given (default ``none``: no download), and prints the first and last training loss, the validation table
and the all-background baseline — the figures to beat. Usage:

    python benchmarks/real_sample_training.py [--epochs 30] [--out /tmp/coco-seg-real] [--encoder-weights none]
"""

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TL_DISABLE_ANALYTICS", "true")

import numpy as np  # noqa: E402

REAL_SAMPLE = Path(__file__).resolve().parent.parent.parent / "shared" / "coco_sample"


def split_sample(out: Path) -> Path:
    """Write instances_{train,val}.json (validation = every fourth image id) and link the image folder."""
    dataset = json.loads((REAL_SAMPLE / "annotations" / "instances_train2017.json").read_text())
    image_ids = sorted(image["id"] for image in dataset["images"])
    validation_ids = set(image_ids[3::4])
    root = out / "data"
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for name, keep in (("train", lambda i: i not in validation_ids), ("val", lambda i: i in validation_ids)):
        part = dict(dataset, images=[i for i in dataset["images"] if keep(i["id"])],
                    annotations=[a for a in dataset["annotations"] if keep(a["image_id"])])
        (root / "annotations" / f"instances_{name}.json").write_text(json.dumps(part))
    link = root / "images"
    if not link.exists():
        link.symlink_to(REAL_SAMPLE / "train2017")
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/coco-seg-real")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--encoder-weights", default="none")
    parser.add_argument("--alpha", type=float, default=0.35)
    parser.add_argument("--image-size", type=int, default=128)
    args = parser.parse_args()

    import yaml

    from coco_seg.config import load_config
    from coco_seg.evaluate import evaluate_model, evaluate_split
    from coco_seg.coco_data import load_labeled_split
    from coco_seg.export import load_model
    from coco_seg.training import TrainOptions, train

    out = Path(args.out)
    root = split_sample(out)
    splits = {"training": {"annotations": "annotations/instances_train.json", "images": "images"},
              "validation": {"annotations": "annotations/instances_val.json", "images": "images"}}
    config_path = out / "config.yaml"
    config_path.write_text(yaml.safe_dump({"data": {"root": str(root), "splits": splits},
                                           "image_size": args.image_size}))
    config = load_config(config_path)
    options = TrainOptions(epochs=args.epochs, batch_size=8, encoder_weights=args.encoder_weights, alpha=args.alpha,
                           fine_tune=args.encoder_weights == "none")
    state = train(config, out / "run", options, resume=(out / "run" / "train_state.json").is_file())
    validation = load_labeled_split(config, "validation", data_root=root)
    baseline = evaluate_split(
        lambda images: np.tile(np.eye(config.num_classes, dtype=np.float32)[0], images.shape[:3] + (1,)), validation)
    best = evaluate_model(load_model(out / "run" / "checkpoints" / "best.keras"), config)
    print(f"\ntraining loss: epoch 1 {state.history[0]['train_loss']:.4f} -> epoch {state.epochs_done} "
          f"{state.history[-1]['train_loss']:.4f}")
    print("\nall-background baseline:\n" + baseline.table())
    print(f"\nbest checkpoint (epoch {state.best_epoch}):\n" + best.table())


if __name__ == "__main__":
    main()
