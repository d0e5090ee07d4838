"""Every performance goal of issue 6 in one command: runs the three benchmarks, then prints one summary table.

* ``per_sample.py`` — goals 1 (per-sample path vs the decode floor), 2 (vs a re-deriving binder) and 4
  (metrics + loss + visualizers vs batch-1 inference);
* ``preprocess_scale.py`` — goal 3 (preprocess of a COCO-2014-scale annotation file, first and cached run);
* ``cache_bound.py`` — goal 5 (the per-sample cache over a long shuffled walk, two processes at once).

Each prints its own table (kept in the output) and writes its figures as JSON; every ratio is measured within one
run of one script, on the same machine. Takes ~3 minutes on 2 cores once the scale file exists (generating it the
first time adds ~2 minutes and ~330 MB under --scratch). Usage:
    python benchmarks/run.py [--scratch /tmp/coco-seg-scale] [--walk 20000]
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _run(script: str, *args: str, results: Path) -> dict:
    print(f"\n## {script} {' '.join(args)}".rstrip(), flush=True)
    env = dict(os.environ, TL_DISABLE_ANALYTICS="true", TF_CPP_MIN_LOG_LEVEL="2")
    subprocess.run([sys.executable, str(HERE / script), *args, "--json", str(results)], check=True, env=env,
                   cwd=HERE.parent)
    return json.loads(results.read_text())


def _verdict(met: bool) -> str:
    return "met" if met else "**not met**"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scratch", default="/tmp/coco-seg-scale", help="where the scale file is generated")
    parser.add_argument("--walk", type=int, default=20_000, help="samples walked per process for goal 5")
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}, "
          f"Python {platform.python_version()}")
    with tempfile.TemporaryDirectory() as folder:
        per_sample = _run("per_sample.py", results=Path(folder) / "per_sample.json")
        preprocess = _run("preprocess_scale.py", "--scratch", args.scratch, results=Path(folder) / "scale.json")
        cache = _run("cache_bound.py", "--samples", str(args.walk), results=Path(folder) / "cache.json")

    rows = []
    for size in per_sample["path"]:
        ratio = size["path_ms"] / size["floor_ms"]
        rows.append((f"1. per-sample path / decode + resize floor, {size['size']} px", f"{ratio:.2f}×", "≤ 1.3×",
                     ratio <= 1.3))
    for size in per_sample["path"]:
        speed_up = size["rederiving_ms"] / size["path_ms"]
        rows.append((f"2. speed-up over the re-deriving binder, {size['size']} px", f"{speed_up:.1f}×", "≥ 5×",
                     speed_up >= 5))
    reference = preprocess["json_load"]["seconds"]
    first, cached = preprocess["first"], preprocess["cached"]
    paused = preprocess["json_load_collector_paused"]["seconds"]
    rows.append(("3a. first preprocess / json.load of the file", f"{first['seconds'] / reference:.2f}× "
                 f"({first['seconds']:.1f} s vs {reference:.1f} s; {first['seconds'] / paused:.2f}× json.load with "
                 f"the collector paused; peak {first['peak_mib']:.0f} MiB, its parsing child "
                 f"{first['child_peak_mib']:.0f} MiB; holds {first['rss_after_mib']:.0f} MiB after)", "≤ 1.5×",
                 first["seconds"] <= 1.5 * reference))
    rows.append(("3b. later preprocess (index cache)", f"{cached['seconds']:.2f} s (peak {cached['peak_mib']:.0f} MiB)",
                 "≤ 2 s", cached["seconds"] <= 2))
    post = per_sample["post_inference"]
    share = post["after_ms"] / post["inference_ms"]
    rows.append(("4. metrics + loss + visualizers / batch-1 inference", f"{100 * share:.1f} % "
                 f"({post['after_ms']:.2f} of {post['inference_ms']:.2f} ms)", "≤ 10 %", share <= 0.10))
    walks = cache["walks"]
    bounded = all(w["largest"] <= w["capacity"] for w in walks)
    correct = cache["processes_agree"] and all(w["mismatches"] == 0 for w in walks)
    growth = max(w["rss_end_mib"] - w["rss_after_1000_mib"] for w in walks)
    rows.append(("5. per-sample cache: bounded, correct in any order and in two processes",
                 f"largest {max(w['largest'] for w in walks)} of {walks[0]['capacity']} over {walks[0]['samples']} "
                 f"samples; RSS growth after the first 1,000: {growth:+.0f} MiB; "
                 f"{sum(w['checked'] - w['mismatches'] for w in walks)} of {sum(w['checked'] for w in walks)} "
                 f"values equal a fresh decode; processes agree: {cache['processes_agree']}",
                 "bounded, correct", bounded and correct))
    print("\n## Summary (issue 6)\n\n| goal | measured | target | |\n|---|---|---|---|")
    for name, measured, target, met in rows:
        print(f"| {name} | {measured} | {target} | {_verdict(met)} |")


if __name__ == "__main__":
    main()
