"""How ``coco-seg analyze`` scales: time, peak memory and disk, end to end, at several dataset sizes.

For each size N (``--sizes``, images over both splits): ``coco-seg make-sample --images N`` writes the generated
COCO-layout dataset, a config YAML points ``data.root`` at it, and ``coco-seg analyze`` runs on it in a fresh
subprocess, cold: its output folder, its index cache (``$COCO_SEG_CACHE_DIR``) and its bad-sample reports
(``$COCO_SEG_REPORTS_DIR``) are emptied first, under the work dir. The model is one small untrained export shared by
every size (``coco-seg export --untrained --alpha 0.35 --encoder-weights none``: the analysis' cost hardly depends
on the weights). Before the timed runs, an untimed warm-up analyze on 40 images fills numba's on-disk cache (kept
in the work dir), so that UMAP's JIT compile, a constant, does not flatten the first size's growth
(``--no-warmup`` skips it).

Measured per size:

* wall time of the analyze subprocess;
* its peak resident set: ``os.wait4`` on that one child returns its rusage, whose ``ru_maxrss`` is the largest
  peak of the child and of every descendant it reaped (the forked preprocess parser included), so each size is
  measured on its own (``RUSAGE_CHILDREN`` of this process would be the maximum over all earlier children too);
  since the child's own ``ru_maxrss`` is its high-water mark at exit, which analyze resets per stage (below), the
  peak reported is the larger of that and the largest stage peak (``whole_peak_mb``);
* per stage, seconds and peak RSS MB from ``summary.json``'s ``"stages"`` (``n/a`` where the summary has none).
  on Linux analyze resets the process's high-water mark at each stage start (summary ``stage_peak_rss`` = "per
  stage"), so a stage's peak is its own; elsewhere it is the peak so far, and the table marks the stages that
  raised it;
* disk used by the output folder, ``work/`` (the resumable parts and memmaps) included: allocated blocks, which
  for the up-front-allocated memmaps is their full size.

Growth exponent between consecutive sizes, per stage: log(t2/t1) / log(n2/n1), n the samples analysed (summed
over the splits; the images when the summary gives no count), for seconds, and the same for RSS
above the baseline, the peak RSS of a process that only imports what analyze imports (TensorFlow, onnxruntime,
tf2onnx, umap, cleanlab, pandas, ...). Stages whose time exponent or whose memory exponent exceeds 1.15 are flagged
"super-linear" (times under 1 s are marked as noisy). Prints markdown tables; the results JSON goes to ``--out``.
Usage:

    python benchmarks/analysis_scale.py [--sizes 500,2000 | --quick] [--split training,validation]
        [--batch-size 16] [--work-dir /tmp/coco-seg-analysis-scale] [--out DIR/results.json] [--no-warmup]

``--quick`` = sizes 100,400. ``--split`` is passed to analyze as given (default: analyze's own default split set).
Each size costs minutes on 2 cores.
"""

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TL_DISABLE_ANALYTICS", "true")

REPO_ROOT = Path(__file__).resolve().parent.parent
SUPER_LINEAR = 1.15
NOISY_SECONDS = 1.0  # a stage this short is mostly noise; its exponent is marked as such
WARMUP_IMAGES = 40
# What `coco-seg analyze` imports (coco_seg.analysis.run and the libraries it loads on the way): the floor of its
# resident set, independent of the dataset size.
BASELINE_IMPORTS = ("import tensorflow, keras, onnxruntime, tf2onnx, umap, pandas, pyarrow, sklearn, scipy, "
                    "plotly, cleanlab.segmentation.filter, cleanlab.segmentation.summary, code_loader; "
                    "import coco_seg.analysis.run, coco_seg.analysis.report, coco_seg.analysis.latent, "
                    "coco_seg.analysis.dashboards")


def cli(*args: str) -> list[str]:
    """The `coco-seg` command line: the CLI module run by this interpreter (works with or without the entry point
    installed, as long as the repository is the working directory)."""
    return [sys.executable, "-m", "coco_seg.cli", *args]


def run_child(command: list[str], *, log: Path, env: dict[str, str]) -> dict[str, Any]:
    """Run ``command`` (output to ``log``); its exit code, wall seconds and peak RSS in MB (os.wait4's rusage)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as handle:
        started = time.perf_counter()
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait for it again
    peak = usage.ru_maxrss / 2**20 if sys.platform == "darwin" else usage.ru_maxrss / 2**10  # bytes / KiB
    return {"returncode": process.returncode, "seconds": seconds, "peak_rss_mb": peak}


def checked(result: dict[str, Any], what: str, log: Path) -> dict[str, Any]:
    if result["returncode"] != 0:
        tail = log.read_text(errors="replace").splitlines()[-30:]
        raise SystemExit(f"{what} failed (exit {result['returncode']}); last lines of {log}:\n" + "\n".join(tail))
    return result


def disk_mb(folder: Path) -> float:
    """Allocated size of every file under ``folder`` (st_blocks, so sparse files count what they occupy)."""
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except OSError:
                pass
    return total / 2**20


def write_config(path: Path, *, data_root: Path, reports: Path, model: Optional[Path] = None) -> Path:
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    tree: dict[str, Any] = {"data": {"root": str(data_root)}, "labels": {"mode": "category"}, "image_size": 128,
                            "reports_dir": str(reports)}
    if model is not None:
        tree["model"] = {"path": str(model)}
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


def make_data(size_dir: Path, images: int, env: dict[str, str]) -> dict[str, Any]:
    """The generated dataset of ``images`` images in ``size_dir/data``, reused when an earlier run made it."""
    data, marker = size_dir / "data", size_dir / "make-sample.json"
    if marker.is_file() and data.is_dir() and json.loads(marker.read_text()).get("images") == images:
        return {"reused": True, **json.loads(marker.read_text())}
    log = size_dir / "make-sample.log"
    result = checked(run_child(cli("make-sample", "--out", str(data), "--images", str(images)), log=log, env=env),
                     f"make-sample --images {images}", log)
    info = {"images": images, "seconds": result["seconds"], "output": log.read_text().strip()}
    marker.write_text(json.dumps(info))
    return {"reused": False, **info}


def analyze_once(size_dir: Path, *, model: Path, split: Optional[str], batch_size: int, env: dict[str, str],
                 warm_up: Optional[Callable[[Path, dict[str, str]], None]] = None) -> dict[str, Any]:
    """One analyze of ``size_dir``'s dataset (``size_dir/data``) in a fresh subprocess, its output, index cache and
    reports new: cold, unless ``warm_up(config, env)`` (untimed, same cache) builds what it should find."""
    out, cache, reports = size_dir / "analysis", size_dir / "index-cache", size_dir / "reports"
    for folder in (out, cache, reports):
        shutil.rmtree(folder, ignore_errors=True)
    config = write_config(size_dir / "config.yaml", data_root=size_dir / "data", reports=reports)
    env = {**env, "COCO_SEG_CACHE_DIR": str(cache)}
    if warm_up is not None:
        warm_up(config, env)
    command = cli("--config", str(config), "analyze", "--model", str(model), "--out", str(out),
                  "--batch-size", str(batch_size))
    if split is not None:
        command += ["--split", split]
    log = size_dir / "analyze.log"
    result = checked(run_child(command, log=log, env=env), "analyze", log)
    summary = json.loads((out / "summary.json").read_text())
    return {**result, "summary": summary, "disk_mb": disk_mb(out), "work_disk_mb": disk_mb(out / "work"),
            "command": command}


def stages_of(summary: dict[str, Any]) -> Optional[dict[str, dict[str, Any]]]:
    """summary["stages"] as {stage: {"seconds", "peak_rss_mb"}}; None when the summary has no stages."""
    stages = summary.get("stages")
    if not isinstance(stages, list):
        return None
    return {str(s.get("stage")): {"seconds": s.get("seconds"), "peak_rss_mb": s.get("peak_rss_mb")}
            for s in stages if isinstance(s, dict)}


def total_samples(samples: Any) -> Optional[int]:
    """summary["samples"]: an int, or one count per split (summed)."""
    if isinstance(samples, dict):
        counts = [v for v in samples.values() if isinstance(v, int)]
        return sum(counts) if counts else None
    return samples if isinstance(samples, int) else None


def whole_peak_mb(wait4_mb: float, stages: Optional[dict[str, dict[str, Any]]], stage_peak_rss: Any) -> float:
    """The analyze subprocess's peak RSS. Linux's ru_maxrss of an exited child is its mm high-water mark at exit,
    and analyze resets that mark at each stage start (/proc/self/clear_refs) so that stages have their own peaks:
    os.wait4 then reports only the peak since the last reset (or a forked child's). Where the stages were reset,
    the process's peak is the largest stage peak; os.wait4 still covers the forked children."""
    peaks = [s["peak_rss_mb"] for s in (stages or {}).values() if s.get("peak_rss_mb") is not None]
    return max([wait4_mb, *peaks]) if stage_peak_rss == "per stage" else wait4_mb


def exponent(v1: Optional[float], v2: Optional[float], n1: int, n2: int) -> Optional[float]:
    """log(v2/v1) / log(n2/n1); None when either value is missing or not positive."""
    if v1 is None or v2 is None or v1 <= 0 or v2 <= 0 or n1 == n2:
        return None
    return math.log(v2 / v1) / math.log(n2 / n1)


def fmt(value: Optional[float], spec: str = ".1f") -> str:
    return "n/a" if value is None or (isinstance(value, float) and not math.isfinite(value)) else format(value, spec)


def growth(rows: list[dict[str, Any]], baseline_mb: float) -> list[dict[str, Any]]:
    """Per stage (and for the whole process), the time and memory exponents between consecutive sizes."""
    names: list[str] = []
    for row in rows:
        names += [name for name in (row["stages"] or {}) if name not in names]
    series = {"analyze (whole subprocess)": [(row["n"], row["seconds"], row["peak_rss_mb"]) for row in rows]}
    for name in names:
        series[name] = [(row["n"], (row["stages"] or {}).get(name, {}).get("seconds"),
                         (row["stages"] or {}).get(name, {}).get("peak_rss_mb")) for row in rows]
    out = []
    for name, points in series.items():
        for (n1, t1, m1), (n2, t2, m2) in zip(points, points[1:]):
            time_exp = exponent(t1, t2, n1, n2)
            above1 = None if m1 is None else m1 - baseline_mb
            above2 = None if m2 is None else m2 - baseline_mb
            memory_exp = exponent(above1, above2, n1, n2)
            noisy = t1 is not None and t2 is not None and max(t1, t2) < NOISY_SECONDS
            flags = []
            if time_exp is not None and time_exp > SUPER_LINEAR:
                flags.append("super-linear time" + (" (noisy: < 1 s)" if noisy else ""))
            if memory_exp is not None and memory_exp > SUPER_LINEAR:
                flags.append("super-linear memory")
            out.append({"stage": name, "from_n": n1, "to_n": n2, "time_exponent": time_exp,
                        "rss_above_baseline_mb": [above1, above2], "memory_exponent": memory_exp,
                        "noisy": noisy, "flags": flags})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="500,2000", help="images per dataset (both splits), comma-separated")
    parser.add_argument("--quick", action="store_true", help="sizes 100,400")
    parser.add_argument("--split", help="passed to analyze --split (default: analyze's own default)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--work-dir", default="/tmp/coco-seg-analysis-scale")
    parser.add_argument("--out", help="results JSON (default: WORK_DIR/results.json)")
    parser.add_argument("--no-warmup", action="store_true", help="no untimed warm-up analyze (numba's JIT cache)")
    args = parser.parse_args()
    sizes = [100, 400] if args.quick else sorted(int(s) for s in args.sizes.split(","))
    work = Path(args.work_dir).resolve()
    out_path = Path(args.out) if args.out else work / "results.json"
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "NUMBA_CACHE_DIR": str(work / "numba-cache")}
    started = time.monotonic()

    made = {}
    for images in sizes:
        made[images] = make_data(work / f"n{images}", images, env)
        print(f"{images} images: {'reused' if made[images]['reused'] else 'made'} the dataset", flush=True)

    print("exporting the small untrained model (alpha 0.35, random encoder)", flush=True)
    model_dir = work / "model"
    # export reads only the classes and the image size from the config, the same at every size
    export_config = write_config(work / "export-config.yaml", data_root=work / f"n{sizes[0]}" / "data",
                                 reports=work / "reports")
    log = work / "export.log"
    checked(run_child(cli("--config", str(export_config), "export", "--untrained", "--alpha", "0.35",
                          "--encoder-weights", "none", "--out", str(model_dir)), log=log, env=env), "export", log)
    model = model_dir / "model.onnx"

    warmup = None
    if not args.no_warmup:
        print(f"warm-up analyze on {WARMUP_IMAGES} images (untimed: fills numba's on-disk cache)", flush=True)
        warmup_dir = work / "warmup"
        make_data(warmup_dir, WARMUP_IMAGES, env)
        warmup = analyze_once(warmup_dir, model=model, split=args.split, batch_size=args.batch_size, env=env)
        print(f"  {warmup['seconds']:.1f} s", flush=True)

    # after the warm-up: with numba's cache still empty, importing umap / pynndescent compiles (~100 MB more)
    print("measuring the import-only baseline (peak RSS of a process importing what analyze imports)", flush=True)
    baseline = checked(run_child([sys.executable, "-c", BASELINE_IMPORTS], log=work / "baseline.log", env=env),
                       "baseline imports", work / "baseline.log")
    print(f"  baseline {baseline['peak_rss_mb']:.0f} MB ({baseline['seconds']:.1f} s)", flush=True)

    rows = []
    for images in sizes:
        size_dir = work / f"n{images}"
        print(f"{images} images: analyze ...", flush=True)
        result = analyze_once(size_dir, model=model, split=args.split, batch_size=args.batch_size, env=env)
        summary = result["summary"]
        analysed = total_samples(summary.get("samples"))
        stages = stages_of(summary)
        row = {"images": images, "make_sample": made[images], "samples": summary.get("samples"),
               "n": analysed if analysed else images,
               "splits": summary.get("splits", summary.get("split")), "seconds": result["seconds"],
               "peak_rss_mb": whole_peak_mb(result["peak_rss_mb"], stages, summary.get("stage_peak_rss")),
               "wait4_peak_rss_mb": result["peak_rss_mb"], "disk_mb": result["disk_mb"],
               "work_disk_mb": result["work_disk_mb"], "stages": stages,
               "stage_peak_rss": summary.get("stage_peak_rss"), "command": result["command"],
               "summary": summary}
        rows.append(row)
        print(f"  {row['seconds']:.1f} s, peak RSS {row['peak_rss_mb']:.0f} MB, {row['disk_mb']:.1f} MB on disk "
              f"({row['samples']} samples, splits {row['splits']})", flush=True)
        results = {"sizes": sizes, "cpu_count": os.cpu_count(), "baseline_rss_mb": baseline["peak_rss_mb"],
                   "rss_method": "the larger of os.wait4's ru_maxrss (descendants included) and the largest "
                                 "per-stage peak (see whole_peak_mb)",
                   "warmup": None if warmup is None else {k: warmup[k] for k in ("seconds", "peak_rss_mb")},
                   "runs": rows}
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(results, indent=1, default=str))

    exponents = growth(rows, baseline["peak_rss_mb"])
    results["growth"] = exponents
    out_path.write_text(json.dumps(results, indent=1, default=str))

    print(f"\ncoco-seg analyze, generated data, untrained alpha-0.35 model, 128 px, batch {args.batch_size}, "
          f"{os.cpu_count()} CPU cores, cold (no index cache, no resumable parts); baseline (imports only) "
          f"{baseline['peak_rss_mb']:.0f} MB; {(time.monotonic() - started) / 60:.1f} min in all\n")
    header = " | ".join(f"{n} images: s | {n} images: peak RSS MB" for n in sizes)
    print(f"| stage | {header} |")
    print("|---|" + "---|---|" * len(sizes))
    names: list[str] = []
    for row in rows:
        names += [name for name in (row["stages"] or {}) if name not in names]
    if not names:
        print("| (summary.json has no \"stages\") | " + " | ".join("n/a | n/a" for _ in sizes) + " |")
    previous_peak: dict[int, Optional[float]] = {}
    cumulative = any(row.get("stage_peak_rss") != "per stage" for row in rows)
    for name in names:
        cells = []
        for row in rows:
            stage = (row["stages"] or {}).get(name, {})
            peak, before = stage.get("peak_rss_mb"), previous_peak.get(row["images"])
            raised = cumulative and peak is not None and before is not None and peak > before + 1.0
            cells += [fmt(stage.get("seconds")), fmt(peak, ".0f") + (" ↑" if raised else "")]
            if peak is not None:
                previous_peak[row["images"]] = peak
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("| **analyze (whole subprocess: wall, peak RSS)** | "
          + " | ".join(f"**{row['seconds']:.1f}** | **{row['peak_rss_mb']:.0f}**" for row in rows) + " |")
    print("| output folder on disk, MB (of which work/) | "
          + " | ".join(f"{row['disk_mb']:.1f} ({row['work_disk_mb']:.1f}) | " for row in rows) + " |")
    print("| samples analysed (n of the exponents) | " + " | ".join(
        f"{row['n']} ({', '.join(f'{k} {v}' for k, v in row['samples'].items())}) | "
        if isinstance(row["samples"], dict) else f"{row['n']} | " for row in rows) + " |\n")
    if names and cumulative:
        print("A stage's peak RSS is the process's peak so far (ru_maxrss when the stage ended); ↑ marks the "
              "stages that raised it.\n")
    elif names:
        print("A stage's peak RSS is its own (the high-water mark is reset at each stage's start).\n")

    print("| stage | samples | time exponent | RSS above baseline, MB | memory exponent | flag |")
    print("|---|---|---|---|---|---|")
    for item in exponents:
        above = " → ".join(fmt(v, ".0f") for v in item["rss_above_baseline_mb"])
        print(f"| {item['stage']} | {item['from_n']} → {item['to_n']} | {fmt(item['time_exponent'], '.2f')} | {above} | "
              f"{fmt(item['memory_exponent'], '.2f')} | {', '.join(item['flags']) or '—'} |")
    flagged = sorted({item["stage"] for item in exponents if item["flags"]})
    print(f"\nsuper-linear (exponent > {SUPER_LINEAR}): {', '.join(flagged) if flagged else 'none'}")
    print(f"results: {out_path}")


if __name__ == "__main__":
    main()
