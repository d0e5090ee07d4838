"""What ``coco-seg analyze``'s insights find on real COCO photos, against the findings of the seed's write-up.

On ../shared/coco_sample (real COCO 2017 photos, see its SOURCES.md), driving the CLI as a user would, each step in
its own subprocess:

1. a config YAML (category mode: background, person, car; 128 px) naming the sample's train2017 / val2017;
2. ``coco-seg train``: the category model of benchmarks/real_quality.py — alpha 1.0, the ImageNet MobileNetV2
   encoder of ``--encoder-weights`` frozen, ``train``'s default median-frequency class weights, ``--epochs``
   (default 20); ``--skip-train`` reuses the run folder (``--run``, default OUT/run) of an earlier run;
3. ``coco-seg export --checkpoint RUN/checkpoints/best.keras``;
4. ``coco-seg analyze --split training,validation`` into OUT/analysis (``--skip-analyze`` reuses it and skips
   steps 2-4, to redo only what follows).

Then: report.html and insights.json are copied to OUT; the top 10 findings (by severity, then in the file's order)
are printed as a markdown table; ``section#insights`` of report.html is screenshotted with Playwright in Debian's
Chromium (/usr/bin/chromium, never a downloaded browser) and shrunk below 300 KB (``--screenshot``, default
OUT/insights.png). Last, the seed's findings (from full COCO, in Tensorleap) are looked for among the findings:

  (a) a low_performance_cluster whose over-represented metadata includes is_colored (the seed's B&W cluster);
  (b) a metadata_trend on car_percent where the loss rises;
  (c) a metadata_trend on bus_count where iou_car rises (the seed: car loss falls as bus_count rises);
  (d) a metadata_trend on person_count or person_avg_size where iou_person falls;
  (e) a label_issues finding (the seed's mislabelled images).

Then (unless ``--skip-ood``) an out-of-distribution check on real photos: an unlabeled folder of 10 val2017 photos
as they are, 10 more colour-inverted, two of uniform noise and a checkerboard, analysed with the training split
(``analyze --split training,unlabeled``); printed: how many planted images lead the unlabeled split's
out_of_distribution finding, and how many unaltered photos it flags.

Each seed finding is "reproduced", "not reproduced" (findings of that kind exist, none matches; what they say is shown) or "no
finding of that kind", with the evidence numbers found; dashboards.json's Spearman correlation of the same field
and metric is printed beside it. Everything also goes to OUT/real_insights.json. Usage:

    python benchmarks/real_insights.py [--encoder-weights ../shared/weights/<file>.h5] [--epochs 20]
        [--out /tmp/coco-seg-real-insights] [--skip-train [--run DIR]] [--skip-analyze] [--skip-ood]
        [--screenshot PNG]

The training takes a few minutes on 2 cores (real_quality.py measured 2.0-3.6 min per 20-epoch run), the analysis
of the ~250 samples about as long again.
"""

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TL_DISABLE_ANALYTICS", "true")

import numpy as np  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
REAL_SAMPLE = REPO_ROOT.parent / "shared" / "coco_sample"
DEFAULT_WEIGHTS = REPO_ROOT.parent / "shared" / "weights" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
# The tree real_quality.py trains its val2017 runs on: the sample's two splits as COCO ships them.
REAL_SPLITS = {"training": {"annotations": "annotations/instances_train2017.json", "images": "train2017"},
               "validation": {"annotations": "annotations/instances_val2017.json", "images": "val2017"}}
CHROMIUM = "/usr/bin/chromium"
MAX_SCREENSHOT_BYTES = 300_000
POSTERIZE_LEVELS = 16  # per channel, when the screenshot must shrink and Pillow is not installed
TOP_FINDINGS = 10
SEVERITY_RANK = {"critical": 4, "high": 3, "medium": 2, "moderate": 2, "low": 1, "info": 0}
RISES = ("rise", "rises", "rising", "increase", "increases", "increasing", "up", "higher", "grows", "positive")
FALLS = ("fall", "falls", "falling", "decrease", "decreases", "decreasing", "down", "lower", "drops", "negative")
FIELD_KEYS = ("metadata", "field", "metadata_field", "feature", "column", "name")
METRIC_KEYS = ("metric", "target", "measure", "outcome")
DIRECTION_KEYS = ("direction", "trend")
CORRELATION_KEYS = ("spearman", "rho", "spearman_rho", "correlation", "slope", "tau")

# The seed's findings. sign: +1 the metric rises as the field rises, -1 it falls.
SEEDS = [
    {"id": "a", "kind": "low_performance_cluster", "metadata": ["is_colored"],
     "seed": "a low-performance cluster over-representing is_colored (the B&W cluster: loss higher on greyscale)"},
    {"id": "b", "kind": "metadata_trend", "fields": ["car_percent"], "metric": "loss", "sign": +1,
     "seed": "loss rises with car_percent"},
    {"id": "c", "kind": "metadata_trend", "fields": ["bus_count"], "metric": "iou_car", "sign": +1,
     "seed": "car better (iou_car rises; the seed: car loss falls) as bus_count rises"},
    {"id": "d", "kind": "metadata_trend", "fields": ["person_count", "person_avg_size"], "metric": "iou_person",
     "sign": -1, "seed": "iou_person falls as person_count / person_avg_size rises"},
    {"id": "e", "kind": "label_issues", "seed": "mislabelled images (label issues)"},
]


def cli(*args: str) -> list[str]:
    """The `coco-seg` command line: the CLI module run by this interpreter, from the repository."""
    return [sys.executable, "-m", "coco_seg.cli", *args]


def step(name: str, command: list[str]) -> float:
    print(f"\n== {name}: coco-seg {' '.join(command[3:])}", flush=True)
    started = time.monotonic()
    completed = subprocess.run(command, cwd=REPO_ROOT)
    if completed.returncode != 0:
        raise SystemExit(f"{name} failed (exit {completed.returncode})")
    return time.monotonic() - started


def write_config(out: Path) -> Path:
    import yaml

    out.mkdir(parents=True, exist_ok=True)
    path = out / "config.yaml"
    tree = {"data": {"root": str(REAL_SAMPLE), "splits": REAL_SPLITS}, "labels": {"mode": "category"},
            "image_size": 128}
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


OOD_PHOTOS = 10  # val2017 photos planted as they are and, colour-inverted, as out-of-distribution samples


def plant_ood_folder(folder: Path) -> list[str]:
    """An unlabeled folder of real val2017 photos: OOD_PHOTOS as they are (in distribution), the next OOD_PHOTOS
    colour-inverted, two of uniform noise and a checkerboard. Returns the planted (out-of-distribution) ids."""
    import cv2

    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    photos = sorted((REAL_SAMPLE / "val2017").glob("*.jpg"))
    letters = "abcdefghijklmnopqrstuvwxyz"
    for letter, photo in zip(letters, photos[:OOD_PHOTOS]):  # no digits: the id would be the number in the name
        shutil.copyfile(photo, folder / f"photo_{letter}.jpg")
    planted = []
    for letter, photo in zip(letters, photos[OOD_PHOTOS:2 * OOD_PHOTOS]):
        cv2.imwrite(str(folder / f"inverted_{letter}.png"), 255 - cv2.imread(str(photo)))
        planted.append(f"inverted_{letter}")
    rng = np.random.default_rng(0)
    for letter in "ab":
        cv2.imwrite(str(folder / f"noise_{letter}.png"), rng.integers(0, 256, (360, 480, 3), dtype=np.uint8))
        planted.append(f"noise_{letter}")
    board = np.kron((np.indices((9, 12)).sum(axis=0) % 2).astype(np.uint8) * 255, np.ones((40, 40), np.uint8))
    cv2.imwrite(str(folder / "checkerboard.png"), board)
    return planted + ["checkerboard"]


def ood_check(out: Path, model: Path) -> dict[str, Any]:
    """analyze training + an unlabeled folder of real photos, inverted photos, noise and a checkerboard; where the
    planted images rank in the unlabeled split's out_of_distribution finding."""
    import yaml

    planted = plant_ood_folder(out / "ood_unlabeled")
    config = out / "config-ood.yaml"
    tree = {"data": {"root": str(REAL_SAMPLE), "splits": {**REAL_SPLITS, "unlabeled": {
        "images": str(out / "ood_unlabeled")}}}, "labels": {"mode": "category"}, "image_size": 128}
    config.write_text(yaml.safe_dump(tree, sort_keys=False))
    seconds = step("analyze (out-of-distribution check)",
                   cli("--config", str(config), "analyze", "--split", "training,unlabeled", "--model", str(model),
                       "--out", str(out / "ood_analysis")))
    findings = json.loads((out / "ood_analysis" / "insights.json").read_text())["findings"]
    ood = next((f for f in findings if f["kind"] == "out_of_distribution"
                and f["evidence"].get("split") == "unlabeled"), None)
    ranked = ood["sample_ids"] if ood else []
    result = {"seconds": seconds, "planted": planted, "flagged": ranked,
              "planted_in_first": sum(key in ranked[:len(planted)] for key in planted),
              "photos_flagged": sum(key.startswith("photo_") for key in ranked),
              "inverted_flagged": sum(key.startswith("inverted_") for key in ranked)}
    print(f"\nout-of-distribution check: {result['planted_in_first']} of {len(planted)} planted images in the "
          f"first {len(planted)}; flagged {result['inverted_flagged']} of {OOD_PHOTOS} inverted photos and "
          f"{result['photos_flagged']} of {OOD_PHOTOS} unaltered photos")
    return result


# ------------------------------------------------------------------------------------------------ findings


def severity_rank(severity: Any) -> float:
    if isinstance(severity, (int, float)) and not isinstance(severity, bool):
        return float(severity)
    return float(SEVERITY_RANK.get(str(severity).lower(), -1))


def top_findings(findings: list[dict[str, Any]], count: int = TOP_FINDINGS) -> list[dict[str, Any]]:
    """The ``count`` most severe findings; within a severity, the file's order (stable sort)."""
    return sorted(findings, key=lambda f: -severity_rank(f.get("severity")))[:count]


def cell(text: Any, width: int = 220) -> str:
    text = re.sub(r"\s+", " ", str(text if text is not None else "")).replace("|", "\\|").strip()
    return text if len(text) <= width else text[:width - 1] + "…"


def findings_table(findings: list[dict[str, Any]]) -> str:
    lines = ["| # | kind | severity | title | summary |", "|---|---|---|---|---|"]
    for number, finding in enumerate(findings, 1):
        severity = finding.get("severity")
        severity = f"{severity:.2f}" if isinstance(severity, float) else cell(severity)
        lines.append(f"| {number} | {cell(finding.get('kind'))} | {severity} | "
                     f"{cell(finding.get('title'), 120)} | {cell(finding.get('summary'))} |")
    if not findings:
        lines.append("| — | (no findings) | | | |")
    return "\n".join(lines)


def leaves(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every scalar in a nested dict / list."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from leaves(item, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from leaves(item, f"{prefix}[{index}]")
    else:
        yield prefix, value


def numbers(value: Any, limit: int = 10) -> dict[str, float]:
    """The numeric leaves of ``value`` (evidence), at most ``limit``, for printing."""
    found = {}
    for key, item in leaves(value):
        if isinstance(item, (int, float)) and not isinstance(item, bool) and math.isfinite(item):
            found[key] = item
            if len(found) == limit:
                break
    return found


def mentions(value: Any, name: str) -> bool:
    """Whether ``name`` appears as a key, or as a word of a string value, anywhere in ``value``."""
    pattern = re.compile(rf"(?<![A-Za-z0-9_]){re.escape(name)}(?![A-Za-z0-9_])")
    if isinstance(value, dict):
        return any(pattern.search(str(k)) or mentions(v, name) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return any(mentions(v, name) for v in value)
    return isinstance(value, str) and bool(pattern.search(value))


def kind_matches(finding: dict[str, Any], kind: str) -> bool:
    given = str(finding.get("kind", "")).lower().replace("-", "_")
    return given == kind or given.rstrip("s") == kind.rstrip("s")


def first_str(evidence: dict[str, Any], keys: tuple[str, ...]) -> Optional[str]:
    for key in keys:
        if isinstance(evidence.get(key), str):
            return evidence[key]
    return None


def sign_of(value: Any) -> Optional[int]:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value != 0:
        return 1 if value > 0 else -1
    return None


def worse_sign(metric: str) -> int:
    """How ``metric`` moves when the model gets worse: a higher loss, a lower IoU."""
    return +1 if "loss" in metric else -1


def direction_sign(direction: Any, metric: str) -> Optional[int]:
    """How ``metric`` moves as the field rises, from a direction given as a number or as words: "worse as X rises"
    / "better as X rises" (about the model, so read with the metric's polarity), or "rises" / "falls" (about the
    metric itself: the words before any " as ")."""
    if not isinstance(direction, str):
        return sign_of(direction)
    text = direction.lower()
    words = set(re.findall(r"[a-z]+", text))
    field_falls = bool(re.search(r"\bas\b.*\b(" + "|".join(FALLS) + r")\b", text))
    flip = -1 if field_falls else 1
    if "worse" in words or "better" in words:
        return flip * (worse_sign(metric) if "worse" in words else -worse_sign(metric))
    head = set(re.findall(r"[a-z]+", text.split(" as ")[0]))
    rises, falls = bool(head & set(RISES)), bool(head & set(FALLS))
    return flip * (+1 if rises else -1) if rises != falls else None


def trend_reading(evidence: dict[str, Any], metric: str) -> dict[str, Any]:
    """What a metadata_trend's evidence says about ``metric``: ``metric`` (the one the finding is about, when it
    names one), ``sign`` (+1 / -1: how that metric moves as the field rises; None when not stated) and the numbers
    that say so. A finding naming its metric (``metric: iou_car``) is read from its correlation (``spearman_rho``,
    ``rho``, ...), else its ``direction``; one that does not is searched for a correlation keyed by ``metric``
    (``spearman_iou_car``, ``{"iou_car": 0.3}``, ``spearman_loss``)."""
    named = first_str(evidence, METRIC_KEYS)
    if named is not None:
        values = {k: evidence[k] for k in CORRELATION_KEYS if sign_of(evidence.get(k)) is not None}
        sign = sign_of(next(iter(values.values()))) if values else None
        if sign is None:
            sign = direction_sign(evidence.get("direction", evidence.get("trend")), named)
        for key in ("direction", "p_value_adjusted", "samples"):
            if key in evidence and key not in values:
                values[key] = evidence[key]
        return {"metric": named, "sign": sign, "numbers": values}
    by_name: dict[str, float] = {}
    for key, value in leaves(evidence):
        last = re.split(r"[.\[]", key)[-1]
        if sign_of(value) is not None and (last == metric or last.endswith("_" + metric)):
            by_name[key] = value
    correlations = {k: v for k, v in by_name.items() if any(c in k for c in CORRELATION_KEYS)} or by_name
    sign = sign_of(next(iter(correlations.values()))) if correlations else None
    return {"metric": metric if sign is not None else None, "sign": sign, "numbers": correlations}


def finding_field(finding: dict[str, Any], fields: list[str]) -> Optional[str]:
    """Which of ``fields`` the finding is about: its evidence's field key, else the first one it mentions."""
    evidence = finding.get("evidence") or {}
    named = first_str(evidence, FIELD_KEYS) if isinstance(evidence, dict) else None
    if named is not None:
        return named if named in fields else None
    return next((f for f in fields if mentions([finding.get("title"), evidence], f)), None)


def brief(finding: dict[str, Any]) -> dict[str, Any]:
    evidence = finding.get("evidence")
    return {"title": finding.get("title"), "severity": finding.get("severity"),
            "samples": len(finding.get("sample_ids") or []), "numbers": numbers(evidence)}


def dashboard_records(analysis: Path) -> list[dict[str, Any]]:
    """dashboards.json's records, whether it is one list or one list per split (``split`` added then)."""
    path = analysis / "dashboards.json"
    if not path.is_file():
        return []
    loaded = json.loads(path.read_text())
    if isinstance(loaded, dict):
        return [{**r, "split": split} for split, records in loaded.items() if isinstance(records, list)
                for r in records if isinstance(r, dict)]
    return [r for r in loaded if isinstance(r, dict)]


def dashboard_spearman(records: list[dict[str, Any]], field: str, metric: str) -> list[dict[str, Any]]:
    found = []
    for record in records:
        if record.get("field") != field:
            continue
        value = (record.get("spearman_loss") if metric == "loss"
                 else (record.get("spearman_iou") or {}).get(metric))
        found.append({"split": record.get("split", "all"), "field": field, "metric": metric, "spearman": value})
    return found


def is_colored_bins(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"split": r.get("split", "all"), "spearman_loss": r.get("spearman_loss"),
             "bins": [{k: b.get(k) for k in ("label", "count", "mean_loss")} for b in r.get("bins", [])]}
            for r in records if r.get("field") == "is_colored"]


def skipped_mentions(skipped: list[Any], kind: str) -> list[Any]:
    return [item for item in skipped if mentions(item, kind)]


def match_seed(seed: dict[str, Any], findings: list[dict[str, Any]], skipped: list[Any],
               records: list[dict[str, Any]]) -> dict[str, Any]:
    """The verdict for one seed finding: status, the matching finding(s) and their evidence numbers."""
    of_kind = [f for f in findings if kind_matches(f, seed["kind"])]
    result: dict[str, Any] = {"id": seed["id"], "seed": seed["seed"], "kind": seed["kind"],
                              **{k: seed[k] for k in ("fields", "metric", "sign", "metadata") if k in seed}}
    if seed["kind"] == "low_performance_cluster":
        result["dashboard"] = is_colored_bins(records)
        matched = []
        for finding in of_kind:
            evidence = finding.get("evidence") or {}
            over = evidence.get("over_represented_metadata") if isinstance(evidence, dict) else None
            where = over if over is not None else evidence
            if all(mentions(where, name) for name in seed["metadata"]):
                entries = [item for item in (over if isinstance(over, list) else [])
                           if isinstance(item, dict) and item.get("field") in seed["metadata"]]
                matched.append({**brief(finding), "over_represented_metadata": over,
                                "metric_numbers": {f"{item['field']}.{k}": v for item in entries
                                                   for k, v in item.items() if sign_of(v) is not None or v == 0}})
        result["matches"] = matched
        result["others"] = [{**brief(f), "over_represented_metadata": (f.get("evidence") or {}).get(
            "over_represented_metadata") if isinstance(f.get("evidence"), dict) else None} for f in of_kind
            if not any(f.get("title") == m["title"] for m in matched)][:5]
    elif seed["kind"] == "metadata_trend":
        result["dashboard"] = [s for field in seed["fields"]
                               for s in dashboard_spearman(records, field, seed["metric"])]
        matched, others = [], []
        for finding in of_kind:
            field = finding_field(finding, seed["fields"])
            if field is None:
                continue
            evidence = finding.get("evidence") if isinstance(finding.get("evidence"), dict) else {}
            reading = trend_reading(evidence, seed["metric"])
            entry = {**brief(finding), "field": field, "metric": reading["metric"], "sign": reading["sign"],
                     "metric_numbers": reading["numbers"]}
            hit = reading["metric"] == seed["metric"] and reading["sign"] == seed["sign"]
            (matched if hit else others).append(entry)
        result["matches"], result["others"] = matched, others
        if not matched and not others:
            # findings of the kind exist but none on these fields: show which fields they are about
            result["others"] = [{**brief(f), "field": first_str(f.get("evidence") or {}, FIELD_KEYS)
                                 if isinstance(f.get("evidence"), dict) else None} for f in of_kind][:8]
    else:
        result["matches"] = [brief(f) for f in of_kind]
        result["others"] = []
    if not of_kind:
        result["status"] = "no finding of that kind"
    else:
        result["status"] = "reproduced" if result["matches"] else "not reproduced"
    result["skipped"] = skipped_mentions(skipped, seed["kind"])
    return result


def moved(other: dict[str, Any]) -> str:
    """"iou_car falls (worse)" for a trend reading."""
    metric, sign = other.get("metric"), other.get("sign")
    if metric is None:
        return "metric not stated"
    if sign is None:
        return f"{metric}, direction not stated"
    worse = sign == worse_sign(metric)
    return f"{metric} {'rises' if sign > 0 else 'falls'} ({'worse' if worse else 'better'})"


def shown(values: dict[str, Any], limit: int = 6) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, (int, float)) and not isinstance(v, bool) else f"{k}={v}"
                     for k, v in list(values.items())[:limit])


def describe(verdict: dict[str, Any]) -> str:
    """One line of evidence for a verdict."""
    parts = []
    for match in verdict["matches"][:3]:
        nums = shown(match.get("metric_numbers") or match["numbers"])
        parts.append(f"\"{cell(match['title'], 80)}\" ({match['samples']} sample ids{'; ' + nums if nums else ''})")
    if not verdict["matches"]:
        for other in verdict["others"][:3]:
            if verdict["kind"] == "metadata_trend" and other.get("field") in verdict.get("fields", []):
                nums = shown(other.get("metric_numbers") or {}, 4)
                parts.append(f"instead: {other['field']}: {moved(other)}{' (' + nums + ')' if nums else ''}")
            elif verdict["kind"] == "metadata_trend":
                parts.append(f"trend on {other.get('field') or cell(other['title'], 60)}")
            else:
                fields = [item.get("field") for item in (other.get("over_represented_metadata") or [])
                          if isinstance(item, dict)]
                parts.append(f"\"{cell(other['title'], 60)}\" over-represents "
                             f"{', '.join(map(str, fields[:4])) or 'nothing'}")
    for item in verdict.get("dashboard", [])[:3]:
        if "spearman" in item:
            value = item["spearman"]
            parts.append(f"dashboards.json {item['split']}: spearman({item['field']}, {item['metric']}) = "
                         f"{'n/a' if value is None else format(value, '.3f')}")
        else:
            bins = "; ".join(f"{b['label']}: n={b['count']}, loss {b['mean_loss']:.3f}" for b in item["bins"]
                             if b.get("mean_loss") is not None)
            parts.append(f"dashboards.json {item['split']} is_colored: {bins or 'no bins'}")
    if verdict["skipped"]:
        parts.append(f"skipped: {cell(json.dumps(verdict['skipped']), 120)}")
    return "; ".join(parts) or "—"


# ------------------------------------------------------------------------------------------------ screenshot


def screenshot_insights(report: Path, png: Path, *, max_bytes: int = MAX_SCREENSHOT_BYTES) -> dict[str, Any]:
    """PNG of ``section#insights`` of ``report`` in headless Chromium, downscaled until it is under ``max_bytes``."""
    import cv2
    from playwright.sync_api import TimeoutError as PlaywrightTimeout, sync_playwright

    if not Path(CHROMIUM).exists():
        return {"error": f"{CHROMIUM} is missing (apt-get install chromium); no screenshot"}
    png.parent.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(report.resolve().as_uri())
            try:  # the report's scripts announce themselves when drawn (as the tests wait for them)
                page.wait_for_function("window.cocoSegReport && (window.cocoSegReport.ready || "
                                       "window.cocoSegReport.error)", timeout=30_000)
            except PlaywrightTimeout:
                pass  # no such flag: take the page as loaded
            section = page.locator("section#insights")
            if section.count() == 0:
                return {"error": f"{report} has no section#insights; no screenshot"}
            # a fixed or sticky bar (the report's navigation) would cover the section's top once it is scrolled
            # into view: put such elements back in the flow
            page.evaluate("""() => { for (const el of document.querySelectorAll('body *')) {
                const position = getComputedStyle(el).position;
                if ((position === 'fixed' || position === 'sticky') && !el.closest('section#insights'))
                    el.style.position = 'static'; } }""")
            raw = section.first.screenshot(type="png")
        finally:
            browser.close()
    image = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR)
    height, width = image.shape[:2]
    encoded, scale, method = raw, 1.0, "as taken"
    while len(encoded) > max_bytes and scale > 0.05:
        if method != "as taken":  # the first retry keeps the full size, with fewer colours
            scale *= 0.9
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        encoded, method = encode_png(cv2.resize(image, size, interpolation=cv2.INTER_AREA) if scale < 1 else image)
    png.write_bytes(encoded)
    return {"path": str(png), "bytes": len(encoded), "original_px": [width, height], "scale": round(scale, 3),
            "encoding": method}


def encode_png(image_bgr: np.ndarray) -> tuple[bytes, str]:
    """PNG bytes of an image with fewer colours, which a report (flat colour, text, small thumbnails) survives
    well and which compresses ~2.5x better: 256 colours when Pillow is installed, else OpenCV with each channel
    posterized to 16 levels."""
    import cv2

    try:
        from PIL import Image
    except ImportError:
        step = 256 // POSTERIZE_LEVELS
        posterized = (image_bgr // step) * step + step // 2
        ok, buffer = cv2.imencode(".png", posterized.astype(np.uint8), [cv2.IMWRITE_PNG_COMPRESSION, 9])
        return buffer.tobytes(), f"opencv png, {POSTERIZE_LEVELS} levels per channel"
    import io

    quantized = Image.fromarray(np.ascontiguousarray(image_bgr[..., ::-1])).quantize(256)
    stream = io.BytesIO()
    quantized.save(stream, format="PNG", optimize=True)
    return stream.getvalue(), "pillow png, 256 colours"


# ------------------------------------------------------------------------------------------------ main


def report_on(analysis: Path, out: Path, screenshot: Path) -> dict[str, Any]:
    """Everything after the analysis: copies, the findings table, the screenshot, the seed matching."""
    insights_path = analysis / "insights.json"
    report_path = analysis / "report.html"
    copied = []
    for path in (report_path, insights_path):
        if path.is_file() and path.resolve() != (out / path.name).resolve():
            shutil.copy2(path, out / path.name)
            copied.append(str(out / path.name))
    if insights_path.is_file():
        insights = json.loads(insights_path.read_text())
    else:
        print(f"\nwarning: {insights_path} is missing (an analyze without insights): no findings", flush=True)
        insights = {"findings": [], "skipped": []}
    findings = [f for f in insights.get("findings", []) if isinstance(f, dict)]
    skipped = list(insights.get("skipped", []))
    summary_path = analysis / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}

    top = top_findings(findings)
    print(f"\n{len(findings)} findings ({len(skipped)} analyses skipped); top {len(top)}:\n")
    print(findings_table(top))
    if skipped:
        print("\nskipped: " + "; ".join(cell(json.dumps(s) if not isinstance(s, str) else s, 100) for s in skipped))

    shot = screenshot_insights(report_path, screenshot) if report_path.is_file() else {"error": "no report.html"}
    print(f"\nscreenshot: {shot.get('path', shot.get('error'))}"
          + (f" ({shot['bytes'] / 1000:.0f} KB, scale {shot['scale']})" if "bytes" in shot else ""))

    records = dashboard_records(analysis)
    verdicts = [match_seed(seed, findings, skipped, records) for seed in SEEDS]
    print("\nthe seed's findings (full COCO, Tensorleap) on the real sample:\n")
    print("| | seed finding | status | evidence |\n|---|---|---|---|")
    for verdict in verdicts:
        print(f"| ({verdict['id']}) | {cell(verdict['seed'], 100)} | {verdict['status']} | "
              f"{cell(describe(verdict), 600)} |")
    reproduced = sum(v["status"] == "reproduced" for v in verdicts)
    print(f"\nreproduced {reproduced} of {len(verdicts)}")
    return {"analysis": str(analysis), "copied": copied, "summary": summary, "findings": len(findings),
            "top_findings": top, "skipped": skipped, "screenshot": shot, "seeds": verdicts,
            "reproduced": reproduced}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder-weights", default=str(DEFAULT_WEIGHTS),
                        help="the ImageNet MobileNetV2 weights file (or imagenet, which downloads)")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=16, help="train's batch size")
    parser.add_argument("--class-weights", default="median-frequency", help="train's --class-weights")
    parser.add_argument("--out", default="/tmp/coco-seg-real-insights")
    parser.add_argument("--run", help="train's run folder (default OUT/run)")
    parser.add_argument("--skip-train", action="store_true", help="reuse the run folder of an earlier run")
    parser.add_argument("--skip-analyze", action="store_true",
                        help="reuse OUT/analysis as it is (no train, export or analyze)")
    parser.add_argument("--split", default="training,validation", help="analyze's --split")
    parser.add_argument("--skip-ood", action="store_true",
                        help="skip the out-of-distribution check (inverted photos, noise, a checkerboard)")
    parser.add_argument("--screenshot", help="PNG of the report's insights section (default OUT/insights.png)")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    run = Path(args.run).resolve() if args.run else out / "run"
    analysis = out / "analysis"
    screenshot = Path(args.screenshot).resolve() if args.screenshot else out / "insights.png"
    if not REAL_SAMPLE.is_dir():
        raise SystemExit(f"the real COCO sample is not at {REAL_SAMPLE}")
    out.mkdir(parents=True, exist_ok=True)
    config = write_config(out)
    checkpoint = run / "checkpoints" / "best.keras"
    started = time.monotonic()
    seconds: dict[str, float] = {}
    if not args.skip_analyze:
        if args.skip_train:
            if not checkpoint.is_file():
                raise SystemExit(f"--skip-train: no {checkpoint} (train first, or give --run)")
        else:
            weights = args.encoder_weights
            if weights not in ("imagenet", "none"):
                if not Path(weights).is_file():
                    raise SystemExit(f"--encoder-weights: no file {weights}")
                weights = str(Path(weights).resolve())  # the CLI runs in the repository, not here
            seconds["train"] = step("train", cli("--config", str(config), "train", "--out", str(run),
                                                 "--epochs", str(args.epochs), "--encoder-weights", weights,
                                                 "--alpha", "1.0", "--batch-size", str(args.batch_size),
                                                 "--class-weights", args.class_weights))
        seconds["export"] = step("export", cli("--config", str(config), "export", "--checkpoint", str(checkpoint),
                                               "--out", str(out / "model")))
        seconds["analyze"] = step("analyze", cli("--config", str(config), "analyze", "--split", args.split,
                                                 "--model", str(out / "model" / "model.onnx"),
                                                 "--out", str(analysis)))
    elif not analysis.is_dir():
        raise SystemExit(f"--skip-analyze: no {analysis}")

    result = report_on(analysis, out, screenshot)
    if not args.skip_ood:
        result["out_of_distribution_check"] = ood_check(out, out / "model" / "model.onnx")
    state_path = run / "train_state.json"
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    result = {"config": str(config), "run": str(run), "epochs": args.epochs, "encoder_weights": args.encoder_weights,
              "best_epoch": state.get("best_epoch"), "best_validation": state.get("best_validation"),
              "seconds": seconds, **result}
    (out / "real_insights.json").write_text(json.dumps(result, indent=1, default=str))
    print(f"\n{(time.monotonic() - started) / 60:.1f} min; results: {out / 'real_insights.json'}")


if __name__ == "__main__":
    main()
