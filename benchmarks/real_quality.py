"""Model quality on real COCO photos: an ablation of the training loss on ../shared/coco_sample (issue 13).

For each label mode and each loss variant, trains ``coco-seg train``'s model (128 px, alpha 1.0, ImageNet encoder
from ``--encoder-weights``, frozen) on the sample's train2017 and evaluates ``best.keras`` — picked, as ``train``
does, by validation mean IoU — on its val2017 (30 photos: too few to rank by alone). With ``--folds K`` it also
runs a K-fold over train2017 (fold k held out by image id, training on the rest; the held-out fold picks the best
epoch and is scored), and reports the mean and spread of the folds. Prints one table in the README's reference
layout, with the seed's full-COCO figures beside it and the run time. Usage:

    python benchmarks/real_quality.py --encoder-weights ../shared/weights/<file>.h5 [--epochs 20] [--folds 3]
        [--modes category,supercategory] [--losses plain,median-frequency,median-frequency+dice] [--out DIR]

Loss variants: ``plain`` (cross-entropy), ``median-frequency`` (class-weighted cross-entropy, weights from the
training split's pixel frequencies), ``median-frequency+dice`` (the same + 0.5 × (1 − soft dice)), ``dice`` (plain
cross-entropy + 0.5 × (1 − soft dice)), ``median-frequency+boundary`` (class weights + boundary weight 2).
"""

import argparse
import json
import os
import shutil
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TL_DISABLE_ANALYTICS", "true")

import numpy as np  # noqa: E402

REAL_SAMPLE = Path(__file__).resolve().parent.parent.parent / "shared" / "coco_sample"
SEED_FIGURES = {"category": {"person": 0.309, "car": 0.262}, "supercategory": {"person": 0.319, "vehicle": 0.312}}
LOSSES = {
    "plain": {"class_weights": None},  # spelt out: median-frequency is train's default
    "median-frequency": {"class_weights": "median-frequency"},
    "median-frequency+dice": {"class_weights": "median-frequency", "dice_weight": 0.5},
    "dice": {"class_weights": None, "dice_weight": 0.5},
    "median-frequency+boundary": {"class_weights": "median-frequency", "boundary_weight": 2.0},
}


def fold_files(out: Path, folds: int) -> list[Path]:
    """K data roots over train2017: fold k's images held out as validation, the rest for training."""
    dataset = json.loads((REAL_SAMPLE / "annotations" / "instances_train2017.json").read_text())
    ids = sorted(image["id"] for image in dataset["images"])
    roots = []
    for k in range(folds):
        held_out = set(ids[k::folds])
        root = out / f"fold-{k}"
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        for name, keep in (("train", lambda i: i not in held_out), ("val", lambda i: i in held_out)):
            part = dict(dataset, images=[i for i in dataset["images"] if keep(i["id"])],
                        annotations=[a for a in dataset["annotations"] if keep(a["image_id"])])
            (root / "annotations" / f"instances_{name}.json").write_text(json.dumps(part))
        if not (root / "images").exists():
            (root / "images").symlink_to(REAL_SAMPLE / "train2017")
        roots.append(root)
    return roots


def parse_override(item: str) -> tuple[str, object]:
    """``name=value`` for a TrainOptions field, the value parsed as the field's type (a comma list: a tuple)."""
    from dataclasses import fields

    from coco_seg.training import TrainOptions

    name, _, text = item.partition("=")
    known = {field.name: field for field in fields(TrainOptions)}
    if name not in known:
        raise SystemExit(f"--set {item!r}: no TrainOptions field {name!r} (known: {', '.join(known)})")
    if "," in text:
        return name, tuple(float(part) for part in text.split(","))
    default = known[name].default
    if text.lower() in ("none", "null"):
        return name, None
    if isinstance(default, bool):
        return name, text.lower() in ("1", "true", "yes")
    if isinstance(default, (int, float)) and not isinstance(default, bool):
        return name, type(default)(float(text)) if isinstance(default, int) else float(text)
    return name, text


def run(config_tree: dict, out: Path, options: dict) -> dict:
    import yaml

    from coco_seg.config import load_config
    from coco_seg.evaluate import evaluate_model
    from coco_seg.export import load_model
    from coco_seg.training import BEST_NAME, TrainOptions, train

    out.mkdir(parents=True, exist_ok=True)
    config_path = out / "config.yaml"
    config_path.write_text(yaml.safe_dump(config_tree))
    config = load_config(config_path)
    started = time.monotonic()
    train(config, out / "run", TrainOptions(**options), log=lambda line: print("   ", line, flush=True))
    evaluation = evaluate_model(load_model(out / "run" / "checkpoints" / BEST_NAME), config)
    return {"iou": evaluation.iou, "boundary_iou": evaluation.boundary_iou, "minutes": (time.monotonic() - started) / 60}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder-weights", required=True, help="imagenet, or the local ImageNet weights file")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--folds", type=int, default=0, help="K-fold over train2017 as well (0: val2017 only)")
    parser.add_argument("--modes", default="category,supercategory")
    parser.add_argument("--losses", default="plain,median-frequency,median-frequency+dice")
    parser.add_argument("--out", default="/tmp/coco-seg-real-quality")
    parser.add_argument("--set", action="append", default=[], metavar="OPTION=VALUE",
                        help="override a TrainOptions field for every run (e.g. batch_size=8, "
                             "class_weights=0.2,1,8); repeatable")
    args = parser.parse_args()
    overrides = dict(parse_override(item) for item in args.set)
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    started = time.monotonic()
    val2017 = {"root": str(REAL_SAMPLE), "splits": {
        "training": {"annotations": "annotations/instances_train2017.json", "images": "train2017"},
        "validation": {"annotations": "annotations/instances_val2017.json", "images": "val2017"}}}
    roots = fold_files(out / "folds", args.folds) if args.folds else []
    rows = []
    for mode in args.modes.split(","):
        for loss in args.losses.split(","):
            options = {"epochs": args.epochs, "encoder_weights": args.encoder_weights, **LOSSES[loss],
                       **overrides}
            print(f"{mode} / {loss}: train2017 -> val2017", flush=True)
            tree = {"data": val2017, "labels": {"mode": mode}, "image_size": 128}
            result = {"mode": mode, "loss": loss, "val2017": run(tree, out / mode / loss / "val2017", options)}
            result["folds"] = []
            for k, root in enumerate(roots):
                print(f"{mode} / {loss}: fold {k + 1} of {len(roots)}", flush=True)
                fold_tree = {"data": {"root": str(root), "splits": {
                    "training": {"annotations": "annotations/instances_train.json", "images": "images"},
                    "validation": {"annotations": "annotations/instances_val.json", "images": "images"}}},
                    "labels": {"mode": mode}, "image_size": 128}
                result["folds"].append(run(fold_tree, out / mode / loss / f"fold-{k}", options))
            rows.append(result)
            (out / "results.json").write_text(json.dumps(rows, indent=1, default=str))

    print(f"\nreal COCO sample: {args.epochs} epochs, 128 px, alpha 1.0, encoder frozen; "
          f"{(time.monotonic() - started) / 60:.1f} min in all\n")
    print("| mode | loss | IoU person (val2017) | IoU car / vehicle (val2017) | k-fold person | k-fold car / vehicle "
          "| Boundary IoU person / car-vehicle (val2017) | seed (full COCO 2014) |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        second = "car" if row["mode"] == "category" else "vehicle"
        val = row["val2017"]

        def fold_cell(name: str) -> str:
            values = [f["iou"][name] for f in row["folds"] if f["iou"][name] is not None]
            return f"{np.mean(values):.3f} ± {np.std(values):.3f}" if values else "—"

        cell = lambda value: "n/a" if value is None else f"{value:.3f}"  # noqa: E731
        seed = SEED_FIGURES[row["mode"]]
        print(f"| {row['mode']} | {row['loss']} | {cell(val['iou']['person'])} | {cell(val['iou'][second])} | "
              f"{fold_cell('person')} | {fold_cell(second)} | {cell(val['boundary_iou']['person'])} / "
              f"{cell(val['boundary_iou'][second])} | {seed['person']:.3f} / {seed[second]:.3f} |")


if __name__ == "__main__":
    main()
