"""Preprocess at COCO scale (issue 6, goal 3): a generated instances file with COCO 2014 train's counts.

Writes (once, into --scratch) an annotation file with 82,783 images and 605,000 annotations in the real file's
structure — polygons of realistic vertex counts, ~1 % crowd RLE, all 80 categories with COCO's frequency of
person and car — and an image folder of 82,783 hard links to one real 640×480 JPEG (the per-file checks read
each file's header, so the files must exist; links cost no disk). Then it times, in fresh subprocesses:
``json.load`` of the file (the reference; also with the garbage collector paused, the way preprocess parses, for
a comparison of the parsers alone) and preprocess (``load_labeled_split`` for the training split), twice:
the first run parses the file and builds the index cache, the second reads the cache. Peak memory (ru_maxrss) of
each process (and of the child process preprocess forks for its first parse) is reported, and the memory the
process still holds after (RSS). Usage:
    python benchmarks/preprocess_scale.py [--scratch /tmp/coco-seg-scale]
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

IMAGES, ANNOTATIONS = 82_783, 605_000
LINKS_PER_FILE = 30_000
REPO_ROOT = Path(__file__).resolve().parent.parent

TIMED = r"""
import json, resource, sys, time
from pathlib import Path
started = time.perf_counter()
if sys.argv[1] in ("json", "json-collector-paused"):
    import gc
    if sys.argv[1] == "json-collector-paused":
        gc.disable()
    with open(sys.argv[2], "rb") as handle:
        json.load(handle)
    detail = ""
else:
    from coco_seg.config import load_config
    from coco_seg.coco_data import load_labeled_split
    config = load_config(sys.argv[2])
    split = load_labeled_split(config, "training", data_root=config.data_root)
    detail = f"{len(split.sample_ids)} samples"
seconds = time.perf_counter() - started
rss_mib = int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize() / 2 ** 20
print(json.dumps({"seconds": seconds, "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "child_peak_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
                  "rss_after_mib": rss_mib, "detail": detail}))
"""


def polygon(rng: np.random.Generator, width: int, height: int) -> list[float]:
    cx, cy = rng.uniform(0.1, 0.9) * width, rng.uniform(0.1, 0.9) * height
    radius = rng.uniform(5, 120)
    vertices = int(rng.integers(8, 40))
    angles = np.sort(rng.uniform(0, 2 * np.pi, vertices))
    points = np.stack([cx + radius * np.cos(angles), np.clip(cy + radius * np.sin(angles), 0, height)], axis=1)
    return [round(float(v), 2) for v in np.clip(points, 0, [width, height]).ravel()]


def generate(scratch: Path) -> tuple[Path, Path]:
    annotations_path = scratch / "annotations" / "instances_train2014.json"
    images_dir = scratch / "train2014"
    if annotations_path.is_file() and images_dir.is_dir():
        return annotations_path, images_dir
    from coco_seg.categories import COCO_CATEGORIES

    rng = np.random.default_rng(0)
    annotations_path.parent.mkdir(parents=True, exist_ok=True)
    images_dir.mkdir(parents=True, exist_ok=True)
    import cv2

    template_bytes = cv2.imencode(".jpg", np.random.default_rng(1).integers(0, 255, (480, 640, 3), dtype=np.uint8))[1]
    images = []
    for index in range(IMAGES):
        template = scratch / f"template-{index // LINKS_PER_FILE}.jpg"  # file systems cap the links per file
        if not template.is_file():
            template.write_bytes(template_bytes.tobytes())
        image_id = 9 + index * 7
        name = f"COCO_train2014_{image_id:012d}.jpg"
        link = images_dir / name
        if not link.exists():
            os.link(template, link)
        images.append({"license": 1, "file_name": name, "coco_url": "", "height": 480, "width": 640,
                       "date_captured": "2013-11-14 11:18:45", "flickr_url": "", "id": image_id})
    # COCO 2014 train: about 30 % of instances are persons, 7 % cars; the rest spread over the other categories.
    category_ids = [c.id for c in COCO_CATEGORIES]
    weights = np.full(len(category_ids), 0.63 / 78)
    weights[category_ids.index(1)], weights[category_ids.index(3)] = 0.30, 0.07
    chosen = rng.choice(category_ids, size=ANNOTATIONS, p=weights / weights.sum())
    owners = rng.integers(0, IMAGES, size=ANNOTATIONS)
    annotations = []
    for index in range(ANNOTATIONS):
        image = images[owners[index]]
        crowd = rng.random() < 0.01
        if crowd:
            counts = [int(c) for c in rng.integers(1, 4000, size=40)]
            counts.append(640 * 480 - sum(counts))
            segmentation = {"counts": counts, "size": [480, 640]}
        else:
            segmentation = [polygon(rng, 640, 480)]
        annotations.append({"segmentation": segmentation, "area": float(rng.uniform(20, 40000)),
                            "iscrowd": int(crowd), "image_id": image["id"], "bbox": [1.0, 2.0, 30.0, 40.0],
                            "category_id": int(chosen[index]), "id": index + 1})
    document = {"info": {"description": "coco-seg scale benchmark"}, "licenses": [{"id": 1, "name": "x", "url": ""}],
                "images": images, "annotations": annotations,
                "categories": [{"supercategory": c.supercategory, "id": c.id, "name": c.name}
                               for c in COCO_CATEGORIES]}
    annotations_path.write_text(json.dumps(document))
    return annotations_path, images_dir


def timed(kind: str, argument: Path, *, cache: Path) -> dict:
    env = dict(os.environ, TL_DISABLE_ANALYTICS="true", COCO_SEG_CACHE_DIR=str(cache))
    output = subprocess.run([sys.executable, "-c", TIMED, kind, str(argument)], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, check=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def run(scratch: Path) -> dict:
    """Generate (once) and time: json.load, json.load with the collector paused, preprocess twice."""
    annotations_path, _ = generate(scratch)
    config_path = scratch / "config.yaml"
    split = {"annotations": "annotations/instances_train2014.json", "images": "train2014"}
    config_path.write_text(json.dumps({"data": {"root": str(scratch), "splits": {"training": split,
                                                                                 "validation": split}},
                                       "reports_dir": str(scratch / "reports")}))
    cache = scratch / "cache"
    shutil.rmtree(cache, ignore_errors=True)  # the first run builds the index cache, the second reads it
    return {"size_mib": annotations_path.stat().st_size / 2 ** 20,
            "json_load": timed("json", annotations_path, cache=cache),
            "json_load_collector_paused": timed("json-collector-paused", annotations_path, cache=cache),
            "first": timed("preprocess", config_path, cache=cache),
            "cached": timed("preprocess", config_path, cache=cache)}


def print_table(result: dict) -> None:
    reference, paused = result["json_load"], result["json_load_collector_paused"]
    print(f"annotation file: {result['size_mib']:.0f} MiB, {IMAGES} images, {ANNOTATIONS} annotations")
    print("\n| step | seconds | ratio to json.load (goal: first run ≤ 1.5) | ratio to json.load with the collector "
          "paused | peak memory (MiB): the process / its child | memory held after (MiB) |\n|---|---|---|---|---|---|")
    rows = [("json.load (as pycocotools reads the file)", reference),
            ("json.load with the garbage collector paused", paused),
            (f"preprocess, first run ({result['first']['detail']})", result["first"]),
            (f"preprocess, later run, index cache ({result['cached']['detail']}; goal ≤ 2 s)", result["cached"])]
    for name, run_ in rows:
        child = f" / {run_['child_peak_mib']:.0f}" if run_["child_peak_mib"] else ""
        print(f"| {name} | {run_['seconds']:.2f} | {run_['seconds'] / reference['seconds']:.2f} | "
              f"{run_['seconds'] / paused['seconds']:.2f} | {run_['peak_mib']:.0f}{child} | "
              f"{run_['rss_after_mib']:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scratch", default="/tmp/coco-seg-scale")
    parser.add_argument("--json", type=Path, help="also write the figures to this file (benchmarks/run.py reads it)")
    args = parser.parse_args()
    result = run(Path(args.scratch))
    print_table(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
