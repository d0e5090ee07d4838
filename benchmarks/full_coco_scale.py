"""Full-COCO size, measured (issue 16 point 4): each stage at 1k, 10k and 118,287 training images.

Data: a synthetic COCO 2017 train of the requested size in the official layout, made in a subprocess. Image i is
a hard link to real image i mod 367 of ``../shared/coco_sample`` train2017 (so disk stays small), with that
image's own annotations (real polygons and RLE crowds, real vertex counts and class mix) under new ids; a seeded
draw keeps ~7.3 of them per image on average, COCO 2017 train's 860,001 / 118,287. val2017 is the real sample's
30 images. Every image is one of 367 photos, so the data is full of exact duplicates (a stress case for the
duplicate search, not what COCO holds).

Stages, each in a fresh subprocess (wall seconds; peak RSS from os.wait4: the largest of the process and the
children it waited for; cold: a fresh cache folder per size):

* ``json.load + COCO()`` — the reference: pycocotools' own load and index of the same training file;
* ``preprocess`` — ``load_labeled_split`` of the training split (parse, index cache, every image's header checked);
* ``check`` — ``coco-seg check`` (the engine loader and the integration test, preprocess of both splits included);
* ``sample store`` — ``open_sample_store`` of the training split (every sample decoded once; also its disk);
* ``train steps`` — ``--steps`` steps of ``coco-seg train``'s step reading that store (alpha 0.35, no encoder
  weights: the throughput of a fixed amount of work, which must not depend on the dataset size);
* ``analyze`` — ``coco-seg analyze --split training`` with the index cache built beforehand (the cold parse is
  the preprocess row), the untrained alpha-0.35 model the benchmark exports once into WORK_DIR; its own per-stage
  seconds and peak RSS from summary.json, and the output folder's disk.

``--stages`` measures some stages now and keeps the others' figures from the results JSON, so the long 118k run
can be taken in parts; ``--table`` prints the tables of the results JSON. Prints each stage's growth exponent
between consecutive sizes (log time ratio / log size ratio). ``--quick`` (1k and 3k images, analyze at 1k: a
few minutes) is what CI could afford.
Usage:

    python benchmarks/full_coco_scale.py [--sizes 1000,10000,118287] [--analyze-max 10000] [--quick]
                                         [--stages STAGE,...] [--table]
"""

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from analysis_scale import analyze_once, checked, cli, disk_mb, exponent, fmt, run_child, stages_of, write_config

REPO_ROOT = Path(__file__).resolve().parent.parent
REAL_SAMPLE = REPO_ROOT.parent / "shared" / "coco_sample"
COCO_TRAIN_IMAGES, COCO_TRAIN_ANNOTATIONS = 118_287, 860_001
STAGES = ("json.load + COCO()", "preprocess", "check", "sample store", "train steps", "analyze")

CHILD = r"""
import json, sys, time
mode, config_path = sys.argv[1], sys.argv[2]
started = time.perf_counter()
result = {}
if mode == "coco":
    from pycocotools.coco import COCO
    COCO(sys.argv[3])
else:
    from coco_seg.config import load_config
    from coco_seg.coco_data import load_labeled_split
    config = load_config(config_path)
    split = load_labeled_split(config, "training", data_root=config.data_root)
    result["samples"] = len(split.sample_ids)
    if mode in ("store", "train"):
        from coco_seg.sample_store import open_sample_store
        store = open_sample_store(split)
        result |= {"encoded": store.encoded, "store_mb": store.bytes / 1e6, "failures": len(store.failures)}
    if mode == "train":
        import tensorflow as tf, keras
        from coco_seg.model import build_unet
        from coco_seg.training import SegmentationLoss, make_dataset, make_train_step
        steps, batch = int(sys.argv[3]), 16
        model = build_unet(image_size=config.image_size, num_classes=config.num_classes, encoder_weights="none",
                           alpha=0.35)
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=SegmentationLoss())
        model.optimizer.build(model.trainable_variables)
        strategy = tf.distribute.get_strategy()
        dataset = make_dataset(store, batch_size=batch, shuffle=True, augment=True, seed=0, epochs=(0, 10 ** 6))
        iterator = iter(strategy.experimental_distribute_dataset(dataset))
        step = make_train_step(model, model.loss, strategy)
        float(step(iterator)[0])  # tracing
        timed = time.perf_counter()
        for _ in range(steps):
            float(step(iterator)[0])
        result["samples_per_second"] = steps * batch / (time.perf_counter() - timed)
result["seconds_inside"] = time.perf_counter() - started
print("RESULT " + json.dumps(result))
"""


def make_dataset(data: Path, images: int, seed: int = 0) -> dict[str, Any]:
    """The synthetic COCO of ``images`` training images in ``data`` (module comment); reused when made before."""
    marker = data / "made.json"
    if marker.is_file() and json.loads(marker.read_text()).get("images") == images:
        return json.loads(marker.read_text())
    shutil.rmtree(data, ignore_errors=True)
    (data / "annotations").mkdir(parents=True)
    real = json.loads((REAL_SAMPLE / "annotations" / "instances_train2017.json").read_text())
    by_image: dict[int, list[dict]] = {}
    for annotation in real["annotations"]:
        by_image.setdefault(annotation["image_id"], []).append(annotation)
    sources = sorted(real["images"], key=lambda i: i["id"])
    keep = min(1.0, COCO_TRAIN_ANNOTATIONS / COCO_TRAIN_IMAGES / (len(real["annotations"]) / len(sources)))
    rng = np.random.default_rng(seed)
    train_dir = data / "train2017"
    train_dir.mkdir()
    out_images, out_annotations = [], []
    for index in range(images):
        source = sources[index % len(sources)]
        name = f"{index + 1:012d}.jpg"
        os.link(REAL_SAMPLE / "train2017" / source["file_name"], train_dir / name)
        out_images.append({**source, "id": index + 1, "file_name": name})
        for annotation in by_image.get(source["id"], []):
            if rng.random() < keep:
                out_annotations.append({**annotation, "id": len(out_annotations) + 1, "image_id": index + 1})
    (data / "annotations" / "instances_train2017.json").write_text(json.dumps(
        {**real, "images": out_images, "annotations": out_annotations}))
    shutil.copy(REAL_SAMPLE / "annotations" / "instances_val2017.json", data / "annotations")
    shutil.copytree(REAL_SAMPLE / "val2017", data / "val2017", copy_function=os.link)
    info = {"images": images, "annotations": len(out_annotations),
            "annotation_file_mb": (data / "annotations" / "instances_train2017.json").stat().st_size / 1e6}
    marker.write_text(json.dumps(info))
    return info


def make_dataset_apart(data: Path, images: int, env: dict[str, str]) -> dict[str, Any]:
    """``make_dataset`` in a subprocess: building a 118k-image file holds about 1.3 GB of Python objects, which
    this process would keep (the allocator does not return it), and every child forked from it would then report
    that as its own peak (Linux carries the pre-exec high-water mark into ru_maxrss)."""
    data.parent.mkdir(parents=True, exist_ok=True)
    log = data.parent / "make-dataset.log"
    checked(run_child([sys.executable, __file__, "--make-dataset", str(data), str(images)], log=log, env=env),
            "make-dataset", log)
    return json.loads((data / "made.json").read_text())


def child(mode: str, config: Path, extra: str, *, log: Path, env: dict[str, str]) -> dict[str, Any]:
    result = checked(run_child([sys.executable, "-c", CHILD, mode, str(config), extra], log=log, env=env), mode, log)
    lines = [line for line in log.read_text().splitlines() if line.startswith("RESULT ")]
    return {**result, **json.loads(lines[-1].removeprefix("RESULT "))}


def measure_size(work: Path, images: int, *, model: Path, steps: int, analyze: bool, stages: set[str],
                 previous: Optional[dict[str, Any]], env: dict[str, str]) -> dict[str, Any]:
    """Measure ``stages`` at ``images``; stages not asked for keep their figures from ``previous`` (an earlier run's
    row for this size), so a long run can be taken in parts."""
    size_dir = work / f"n{images}"
    data = size_dir / "data"
    made = make_dataset_apart(data, images, env)
    print(f"{images} images, {made['annotations']} annotations ({made['annotation_file_mb']:.0f} MB file)",
          flush=True)
    cache = size_dir / "cache"
    if stages & {"preprocess", "sample store"}:
        shutil.rmtree(cache, ignore_errors=True)  # cold: preprocess builds the index cache, the store its samples
    env = {**env, "COCO_SEG_CACHE_DIR": str(cache)}
    config = write_config(size_dir / "config.yaml", data_root=data, reports=size_dir / "reports", model=model)
    row: dict[str, Any] = {"images": images, "dataset": made,
                           "stages": dict(previous["stages"]) if previous else {}}
    annotation_file = str(data / "annotations" / "instances_train2017.json")
    runs = [("json.load + COCO()", "coco", annotation_file), ("preprocess", "preprocess", ""),
            ("sample store", "store", ""), ("train steps", "train", str(steps))]
    for stage, mode, extra in runs:
        if stage not in stages:
            continue
        row["stages"][stage] = child(mode, config, extra, log=size_dir / f"{mode}.log", env=env)
        print(f"  {stage}: {row['stages'][stage]['seconds']:.1f} s, {row['stages'][stage]['peak_rss_mb']:.0f} MB",
              flush=True)
    if "sample store" in stages:
        row["stages"]["sample store"]["disk_mb"] = disk_mb(cache / "samples")
    if "check" in stages:
        log = size_dir / "check.log"
        row["stages"]["check"] = checked(run_child(cli("--config", str(config), "check"), log=log, env=env), "check",
                                         log)
        print(f"  check: {row['stages']['check']['seconds']:.1f} s", flush=True)
    if analyze and "analyze" in stages:
        # after the index cache exists (as after check, train or any earlier run): a first, cold preprocess
        # parses the annotation file in a forked child whose time and memory are the preprocess row's
        result = analyze_once(size_dir, model=model, split="training", batch_size=16, env=env,
                              warm_up=lambda config, env: child("preprocess", config, "", log=size_dir / "warm-up.log",
                                                                env=env))
        stages = stages_of(result["summary"]) or {}
        peak = max([result["peak_rss_mb"], *[s["peak_rss_mb"] for s in stages.values() if s.get("peak_rss_mb")]])
        row["stages"]["analyze"] = {"seconds": result["seconds"], "peak_rss_mb": peak, "disk_mb": result["disk_mb"],
                                    "per_stage": stages}
        print(f"  analyze: {result['seconds']:.1f} s, {peak:.0f} MB, {result['disk_mb']:.0f} MB on disk", flush=True)
    return row


def main() -> None:
    if sys.argv[1:2] == ["--make-dataset"]:  # the child of make_dataset_apart
        make_dataset(Path(sys.argv[2]), int(sys.argv[3]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=f"1000,10000,{COCO_TRAIN_IMAGES}")
    parser.add_argument("--analyze-max", type=int, default=10_000, help="run analyze up to this many images")
    parser.add_argument("--steps", type=int, default=30, help="timed training steps per size")
    parser.add_argument("--quick", action="store_true", help="sizes 1000,3000; analyze at 1000 only")
    parser.add_argument("--stages", default=",".join(STAGES),
                        help="comma-separated stages to measure now; the others keep an earlier run's figures")
    parser.add_argument("--work-dir", default="/tmp/coco-seg-full-coco")
    parser.add_argument("--out", help="results JSON (default: WORK_DIR/results.json)")
    parser.add_argument("--table", action="store_true", help="print the tables of the results JSON; measure nothing")
    args = parser.parse_args()
    if args.table:
        out_path = Path(args.out) if args.out else Path(args.work_dir).resolve() / "results.json"
        print_tables(json.loads(out_path.read_text())["runs"])
        return
    if not (REAL_SAMPLE / "annotations" / "instances_train2017.json").is_file():
        raise SystemExit(f"needs the real COCO sample at {REAL_SAMPLE} (its images are linked, its annotations copied)")
    sizes = [1000, 3000] if args.quick else sorted(int(s) for s in args.sizes.split(","))
    analyze_max = 1000 if args.quick else args.analyze_max
    work = Path(args.work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    out_path = Path(args.out) if args.out else work / "results.json"
    env = {**os.environ, "NUMBA_CACHE_DIR": str(work / "numba-cache"), "TL_DISABLE_ANALYTICS": "true",
           "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(REPO_ROOT)}
    started = time.monotonic()

    model_dir = work / "model"
    if not (model_dir / "model.onnx").is_file():
        first = work / f"n{sizes[0]}"
        make_dataset_apart(first / "data", sizes[0], env)
        config = write_config(work / "export-config.yaml", data_root=first / "data", reports=work / "reports")
        log = work / "export.log"
        checked(run_child(cli("--config", str(config), "export", "--untrained", "--alpha", "0.35",
                              "--encoder-weights", "none", "--out", str(model_dir)), log=log, env=env), "export", log)
    model = model_dir / "model.onnx"

    stages = {stage.strip() for stage in args.stages.split(",")}
    unknown = stages - set(STAGES)
    if unknown:
        raise SystemExit(f"--stages: unknown {', '.join(sorted(unknown))} (stages: {', '.join(STAGES)})")
    earlier = {row["images"]: row for row in json.loads(out_path.read_text())["runs"]} if out_path.is_file() else {}
    rows = []
    for images in sizes:
        rows.append(measure_size(work, images, model=model, steps=args.steps, analyze=images <= analyze_max,
                                 stages=stages, previous=earlier.get(images), env=env))
        kept = [row for images, row in earlier.items() if images not in {r["images"] for r in rows}]
        out_path.write_text(json.dumps({"cpu_count": os.cpu_count(),
                                        "runs": sorted(rows + kept, key=lambda row: row["images"])},
                                       indent=1, default=str))

    print(f"\n{(time.monotonic() - started) / 60:.1f} min measured now")
    print_tables(sorted(rows + [row for images, row in earlier.items() if images not in sizes],
                        key=lambda row: row["images"]))


def _exponents(series: list[tuple[int, float]]) -> str:
    return ", ".join(fmt(exponent(v1, v2, n1, n2), ".2f") for (n1, v1), (n2, v2) in zip(series, series[1:]))


def _table(first_column: str, names: list[str], rows: list[dict[str, Any]],
           measured_of: Callable[[dict[str, Any], str], Optional[dict[str, Any]]]) -> None:
    """One markdown table: a line per name, seconds and peak RSS per size, and the time exponents."""
    print(f"| {first_column} | " + " | ".join(f"{row['images']:,} images: s | peak RSS MB" for row in rows)
          + " | time exponent |")
    print("|---|" + "---|---|" * len(rows) + "---|")
    for name in names:
        cells, series = [], []
        for row in rows:
            measured = measured_of(row, name) or {}
            cells += [fmt(measured.get("seconds")), fmt(measured.get("peak_rss_mb"), ".0f")]
            if measured.get("seconds") is not None:
                series.append((row["images"], measured["seconds"]))
        print(f"| {name} | " + " | ".join(cells) + f" | {_exponents(series)} |")


def print_tables(rows: list[dict[str, Any]]) -> None:
    """The stage table (seconds, peak RSS, time exponents), analyze's own stages, and the goal figures."""
    print(f"\nfull-COCO scale, synthetic train2017 (images linked to ../shared/coco_sample), 128 px, "
          f"{os.cpu_count()} cores, cold\n")
    _table("stage", list(STAGES), rows, lambda row, name: row["stages"].get(name))
    analysed = [row for row in rows if "analyze" in row["stages"]]
    if analysed:
        names = list(dict.fromkeys(name for row in analysed for name in row["stages"]["analyze"]["per_stage"]))
        print("\nanalyze --split training, per stage (seconds, the stage's own peak RSS MB):\n")
        _table("analyze stage", names, analysed, lambda row, name: row["stages"]["analyze"]["per_stage"].get(name))
    for row in rows:
        stages = row["stages"]
        parts = [f"{row['images']:,} images ({row['dataset']['annotations']:,} annotations)"]
        if "preprocess" in stages and "json.load + COCO()" in stages:
            parts.append(f"preprocess peak {stages['preprocess']['peak_rss_mb'] / stages['json.load + COCO()']['peak_rss_mb']:.2f}× "
                         f"json.load + COCO()'s")
        if "sample store" in stages:
            parts.append(f"{stages['sample store']['samples']:,} training samples, store "
                         f"{stages['sample store']['disk_mb']:.0f} MB on disk")
        if "train steps" in stages:
            parts.append(f"training {stages['train steps']['samples_per_second']:.1f} samples/s")
        if "analyze" in stages:
            parts.append(f"analyze {stages['analyze']['disk_mb']:.0f} MB on disk, peak "
                         f"{stages['analyze']['peak_rss_mb']:.0f} MB")
        print("; ".join(parts))


if __name__ == "__main__":
    main()
