"""coco_seg.analysis.report: the self-contained HTML report, statically and in Debian's headless Chromium."""

import base64
import json
import re
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from _support import report_page
from coco_seg.analysis import report as report_module
from coco_seg.analysis.report import DATA_SCRIPT_ID, MAP_DIV_ID, write_report

CLASS_NAMES = ["background", "person", "car"]
N = 50
ODD_ID = 'img<7>&"x"'  # must come out escaped in the HTML
ODD_FILE = "<b>odd</b>.jpg"
COLOR_FIELDS = ["loss", "cluster", "mean_iou", "person_percent", "is_colored", "brightness", "scene"]


def data_uri(image: np.ndarray, kind: str = ".jpg") -> str:
    ok, encoded = cv2.imencode(kind, image)
    assert ok
    mime = "jpeg" if kind == ".jpg" else "png"
    return f"data:image/{mime};base64," + base64.b64encode(encoded.tobytes()).decode("ascii")


def tiny_image(rng: np.random.Generator, size: int = 24) -> np.ndarray:
    image = np.zeros((size, size, 3), np.uint8)
    image[:] = rng.integers(0, 256, 3)
    cv2.circle(image, (size // 2, size // 2), size // 4, tuple(int(v) for v in rng.integers(0, 256, 3)), -1)
    return image


def make_inputs(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    ids = [f"s{i:03d}" for i in range(N)]
    ids[7] = ODD_ID
    clusters = rng.integers(0, 4, N)
    iou = {name: rng.uniform(0, 1, N) for name in CLASS_NAMES}
    iou["person"][rng.random(N) < 0.3] = np.nan
    iou["car"][rng.random(N) < 0.5] = np.nan
    neighbors = []
    for i in range(N):
        others = [ids[j] for j in rng.choice([j for j in range(N) if j != i], 5, replace=False)]
        neighbors.append(" ".join(others + (["ghost-1"] if i == 3 else [])))
    samples = pd.DataFrame({
        "sample_id": ids,
        "file_name": [ODD_FILE if i == 7 else f"{i:012d}.jpg" for i in range(N)],
        "map_x": rng.normal(clusters * 3.0, 0.7), "map_y": rng.normal(clusters % 2 * 3.0, 0.7),
        "cluster": clusters, "loss": rng.gamma(2.0, 0.4, N),
        **{f"iou_{name}": values for name, values in iou.items()},
        "label_issue_score": rng.uniform(0, 1, N), "neighbors": neighbors,
        "person_percent": np.where(rng.random(N) < 0.2, np.nan, rng.uniform(0, 60, N)),
        "brightness": rng.uniform(0, 255, N), "is_colored": rng.random(N) < 0.8,
        "scene": rng.choice(["indoor", "outdoor", "street"], N),
    })
    samples["mean_iou"] = np.nanmean(np.stack([iou[n] for n in CLASS_NAMES]), axis=0)
    samples.loc[5, "loss"] = np.nan
    thumbnails = {sid: data_uri(tiny_image(rng)) for sid in ids}

    bins = [{"label": "[0, 20)", "count": 20, "mean_loss": 0.6, "mean_iou_person": 0.5, "mean_iou_car": np.nan,
             "flagged": False, "p_value": 0.8},
            {"label": "[20, 60]", "count": 22, "mean_loss": 1.4, "mean_iou_person": 0.2, "mean_iou_car": 0.4,
             "flagged": True, "p_value": 0.01}]
    dashboards = [
        {"field": "person_percent", "missing": 8, "spearman_loss": 0.42,
         "spearman_iou": {"iou_person": -0.3, "iou_car": None}, "flagged_bins": ["[20, 60]"], "bins": bins},
        {"field": "is_colored", "spearman_loss": float("nan"), "spearman_iou": {}, "flagged_bins": [],
         "bins": [{"label": "False", "count": 10, "mean_loss": 0.7, "flagged": False, "p_value": None},
                  {"label": "True", "count": 40, "mean_loss": 0.8, "flagged": False, "p_value": 1.0}]},
    ]
    panel = data_uri(tiny_image(rng, 32), ".png")
    label_issues = [{"sample_id": sid, "score": score, "rank": rank, "issue_share": share,
                     "panels": {"image": panel, "ground_truth": panel, "prediction": panel, "issues": panel}}
                    for rank, (sid, score, share) in enumerate([(ODD_ID, 0.01, 0.31), ("s010", 0.05, 0.12)], 1)]
    class_swaps = [{"given_label": "car", "predicted_label": "person", "pixels": 1234, "share": 0.21},
                   {"given_label": "person", "predicted_label": "background", "pixels": 99, "share": 0.02}]
    pruning = [{"cluster": c, "size": 12, "kept": 10, "dropped": 2, "share_kept": 10 / 12,
                "drop_ids": [ids[c], ids[c + 10]]} for c in range(4)]
    labelling = [{"sample_id": f"u{i}", "rank": i + 1, "priority": 1 - i / 10, "uncertainty": 0.5,
                  "novelty": float("nan") if i == 2 else 0.3} for i in range(4)]
    summary = {"model": "/tmp/model.onnx", "split": "validation", "samples": N, "mean_loss": float("nan"),
               "mean IoU per class": {n: float(np.nanmean(iou[n])) for n in CLASS_NAMES},
               "planted_defect_recall": 0.75}
    return dict(title="coco-seg analysis <test>", samples=samples, class_names=CLASS_NAMES,
                color_fields=COLOR_FIELDS, thumbnails=thumbnails, dashboards=dashboards,
                label_issues=label_issues, class_swaps=class_swaps, pruning=pruning, labelling=labelling,
                summary=summary)


@pytest.fixture(scope="module")
def inputs() -> dict:
    return make_inputs()


@pytest.fixture(scope="module")
def report(tmp_path_factory, inputs) -> Path:
    out = tmp_path_factory.mktemp("report") / "report.html"
    assert write_report(out, **inputs) == out
    return out


def inline_data(text: str) -> str:
    match = re.search(rf'<script type="application/json" id="{DATA_SCRIPT_ID}">(.*?)</script>', text, re.S)
    assert match, "inline JSON data block missing"
    return match.group(1)


# ---------------------------------------------------------------------------------------------------- static


def test_html_is_offline_escaped_and_nan_free(report: Path, inputs: dict):
    text = report.read_text(encoding="utf-8")
    assert [p.name for p in report.parent.iterdir()] == ["report.html"]  # atomic write left no temp file
    assert report.stat().st_mode & 0o777 == 0o644
    # No remote resources: no src/href to http(s), and plotly.js is inline.
    assert not re.search(r"""<(script|link|img|iframe)\b[^>]*\b(src|href)\s*=\s*["']?\s*(https?:)?//""", text, re.I)
    assert "plotly.js v" in text and "cdn.plot.ly/plotly" not in text
    # Strings are escaped: the odd sample id / file name / title never appear raw.
    assert ODD_ID not in text and ODD_FILE not in text and "<test>" not in text
    assert html_escape(ODD_ID) in text and html_escape(ODD_FILE) in text
    assert "coco-seg analysis &lt;test&gt;" in text
    # The inline JSON is strict: no bare NaN / Infinity, parses without constants, NaN became null.
    raw = inline_data(text)
    assert not re.search(r"\b(NaN|-?Infinity)\b", raw)
    data = json.loads(raw, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    points = data["points"]
    assert points["id"] == list(inputs["samples"]["sample_id"])
    assert points["columns"]["loss"][5] is None
    assert points["columns"]["person_percent"].count(None) == inputs["samples"]["person_percent"].isna().sum()
    assert points["neighbors"][3][-1] == "ghost-1"  # unknown neighbour kept as its id
    assert set(data["thumbs"]) == set(inputs["samples"]["sample_id"])  # each thumbnail once, only needed ones
    assert data["fields"]["cluster"]["kind"] == "category" and data["fields"]["is_colored"]["kind"] == "bool"
    assert data["fields"]["loss"]["kind"] == "numeric" and data["fields"]["scene"]["kind"] == "category"
    # Sections and tables.
    for needle in ("Latent map", "Metadata dashboards", "Worst 20 samples", "Label issues", "class swaps",
                   "Pruning suggestions", "Labelling priorities", "21.0%", "planted defect recall", "75.0%"):
        assert needle in text, needle
    assert text.count('class="issue"') == 2 and text.count("<figure>") == 8


def html_escape(text: str) -> str:
    import html

    return html.escape(text, quote=True)


def test_no_labelling_split_and_missing_fields(tmp_path: Path, inputs: dict):
    samples = inputs["samples"].drop(columns=["neighbors", "file_name"]).copy()
    samples.loc[0, "map_x"] = np.nan
    out = write_report(tmp_path / "sub" / "r.html", **{**inputs, "samples": samples, "labelling": None,
                                                          "color_fields": [*COLOR_FIELDS, "not_a_column"],
                                                          "label_issues": [], "class_swaps": [], "pruning": []})
    text = out.read_text(encoding="utf-8")
    assert "No unlabeled split configured" in text and "No label issues flagged" in text
    assert "1 samples have no map coordinates" in text and "not_a_column" in text
    data = json.loads(inline_data(text))
    assert "not_a_column" not in data["fields"] and data["points"]["x"][0] is None


def test_rejects_bad_samples(tmp_path: Path, inputs: dict):
    with pytest.raises(ValueError, match="map_x"):
        write_report(tmp_path / "r.html", **{**inputs, "samples": inputs["samples"].drop(columns=["map_x"])})
    doubled = pd.concat([inputs["samples"].iloc[:2], inputs["samples"].iloc[:1]])
    with pytest.raises(ValueError, match="unique"):
        write_report(tmp_path / "r.html", **{**inputs, "samples": doubled})
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------------------------------------------- thumbnail cap

CAP_N = 30


def capped_inputs(*, with_gaps: bool = True) -> dict:
    """30 samples s000..s029 (s001 without a usable thumbnail when ``with_gaps``), one insight, two label issues,
    labelling ids outside the sample table (u0 with a thumbnail, u1 without) and a thumbnail for an unknown id."""
    rng = np.random.default_rng(3)
    ids = [f"s{i:03d}" for i in range(CAP_N)]
    loss = np.full(CAP_N, 0.1)
    loss[25], loss[29] = 5.0, 4.0  # the worst two (WORST_COUNT is patched to 2)
    samples = pd.DataFrame({"sample_id": ids, "file_name": [f"{i:012d}.jpg" for i in range(CAP_N)],
                            "map_x": rng.normal(0, 1, CAP_N), "map_y": rng.normal(0, 1, CAP_N),
                            "loss": loss, "cluster": np.arange(CAP_N) % 3})
    thumbnails = {sid: data_uri(tiny_image(rng)) for sid in [*ids, "u0", "stranger"]}
    if with_gaps:
        thumbnails["s001"] = "not an image"  # ignored: never embedded, takes no slot
    # Insight: INSIGHT_THUMBS is patched to 3, so s027 is not shown on the card (not referenced).
    insights = [{"kind": "low_performance_cluster", "severity": 0.7, "title": "t", "summary": "s",
                 "sample_ids": ["s020", "s001", "s003", "s027"], "evidence": {"n": 4}}]
    label_issues = [{"sample_id": "s011", "score": 0.1, "rank": 1, "issue_share": 0.9, "panels": {}},
                    {"sample_id": "s025", "score": 0.2, "rank": 2, "issue_share": 0.8, "panels": {}}]
    labelling = [{"sample_id": "u0", "rank": 1, "priority": 0.9, "uncertainty": 0.5, "novelty": 0.4},
                 {"sample_id": "u1", "rank": 2, "priority": 0.8, "uncertainty": 0.4, "novelty": 0.3}]
    return dict(title="capped", samples=samples, class_names=CLASS_NAMES, color_fields=["loss", "cluster"],
                thumbnails=thumbnails, dashboards=[], label_issues=label_issues, class_swaps=[],
                pruning=[{"cluster": 0, "size": 10, "kept": 9, "dropped": 1, "share_kept": 0.9,
                          "drop_ids": ["s013"]}],
                labelling=labelling, summary={"samples": CAP_N}, insights=insights)


@pytest.fixture
def small_limits(monkeypatch):
    monkeypatch.setattr(report_module, "WORST_COUNT", 2)
    monkeypatch.setattr(report_module, "INSIGHT_THUMBS", 3)
    return lambda cap: monkeypatch.setattr(report_module, "MAX_REPORT_THUMBNAILS", cap)


def map_note(text: str) -> str:
    match = re.search(r'<section id="map">.*?<p class="note">(.*?)</p>', text, re.S)
    assert match, "map note missing"
    return match.group(1)


# Referenced, in priority order: the insight card's shown ids with a thumbnail (s020, s003; s001 has none), the
# worst samples (s025, s029), the label-issue gallery (s011; s025 already in), the labelling priorities (u0; u1
# has none). The other 24 samples with a thumbnail, in table order:
REFERENCED = ["s020", "s003", "s025", "s029", "s011", "u0"]
REST = ["s000", "s002", "s004", "s005", "s006", "s007", "s008", "s009", "s010", "s012", "s013", "s014", "s015",
        "s016", "s017", "s018", "s019", "s021", "s022", "s023", "s024", "s026", "s027", "s028"]


def test_thumbnails_capped_referenced_first_then_evenly_spaced(tmp_path: Path, small_limits):
    small_limits(12)
    inputs = capped_inputs()
    assert [s for s in inputs["samples"]["sample_id"] if s not in REFERENCED and s != "s001"] == REST
    text = write_report(tmp_path / "a.html", **inputs).read_text(encoding="utf-8")
    data = json.loads(inline_data(text))
    # 6 referenced, then 6 slots over the 24 others: positions 0, 4, 8, 12, 16, 20 (every 4th).
    expected = REFERENCED + ["s000", "s006", "s010", "s015", "s019", "s024"]
    assert [REST[j * 4] for j in range(6)] == expected[6:]
    assert list(data["thumbs"]) == expected
    assert data["thumbs"] == {sid: inputs["thumbnails"][sid] for sid in expected}  # the right images
    # Deterministic: a second write embeds the same thumbnails in the same order, byte for byte the same page.
    again = write_report(tmp_path / "b.html", **inputs).read_text(encoding="utf-8")
    assert again == text
    # Every sample is still on the map with its values; only the thumbnails are capped.
    points = data["points"]
    assert points["id"] == list(inputs["samples"]["sample_id"])
    assert all(x is not None for x in points["x"]) and all(y is not None for y in points["y"])
    assert points["columns"]["loss"] == [float(v) for v in inputs["samples"]["loss"]]
    assert points["file"][13] == "000000000013.jpg" and "s013" not in data["thumbs"]
    # The static content shows the referenced thumbnails: insight card, worst table, labelling table.
    insight = re.search(r'<section id="insights">.*?</section>', text, re.S).group(0)
    assert re.findall(r'<div class="insight-thumbs">(.*?)</div>', insight) == [
        '<img class="thumb" data-sample="s020" alt=""><img class="thumb" data-sample="s003" alt="">'
        '<span class="muted">+1 more</span>']
    worst = re.search(r'<section id="worst">.*?</section>', text, re.S).group(0)
    assert re.findall(r'data-sample="([^"]+)"', worst) == ["s025", "s029"]
    labelling = re.search(r'<section id="labelling">.*?</section>', text, re.S).group(0)
    assert re.findall(r'data-sample="([^"]+)"', labelling) == ["u0", "u1"]
    # The note gives the count (u0 is not a plotted sample) and where the other images are.
    note = map_note(text)
    assert "Thumbnails are embedded for 11 of the 30 plotted samples (at most 12 per report" in note
    assert "no thumbnail embedded" in note and "file_name column of samples.parquet" in note
    assert "no thumbnail embedded" in text.split('<script type="application/json"')[1]  # the script's placeholder


def test_thumbnail_cap_smaller_than_referenced(tmp_path: Path, small_limits):
    small_limits(4)
    inputs = capped_inputs()
    data = json.loads(inline_data(write_report(tmp_path / "r.html", **inputs).read_text(encoding="utf-8")))
    assert list(data["thumbs"]) == REFERENCED[:4]  # the cap holds, in priority order, no evenly spaced fill
    assert len(data["points"]["id"]) == CAP_N


def test_thumbnail_selection_spreads_over_large_tables():
    from coco_seg.analysis.report import _select_thumbnails

    ids = [f"x{i}" for i in range(1000)]
    uri = "data:image/jpeg;base64,AA=="
    thumbs, capped = _select_thumbnails(ids, ["x999", "x5"], {i: uri for i in ids}, 10)
    others = [i for i in ids if i not in ("x999", "x5")]
    assert capped and list(thumbs) == ["x999", "x5"] + [others[j * 998 // 8] for j in range(8)]
    assert list(thumbs)[2:] == ["x0", "x125", "x250", "x375", "x500", "x624", "x749", "x874"]
    assert _select_thumbnails(ids, [], {i: uri for i in ids}, 1000) == ({i: uri for i in ids}, False)


@pytest.mark.parametrize("cap", [31, 10_000])
def test_under_the_cap_every_sample_keeps_its_thumbnail(tmp_path: Path, small_limits, cap: int):
    small_limits(cap)  # 30 samples + u0 = 31 thumbnails without s001's gap (31: exactly the cap), 30 with it
    inputs = capped_inputs()
    text = write_report(tmp_path / "r.html", **inputs).read_text(encoding="utf-8")
    data = json.loads(inline_data(text))
    available = [s for s in inputs["samples"]["sample_id"] if s != "s001"] + ["u0"]
    assert sorted(data["thumbs"]) == sorted(available)
    assert data["thumbs"] == {sid: inputs["thumbnails"][sid] for sid in available}
    # s001 has no usable thumbnail: the note says so, without mentioning a cap.
    note = map_note(text)
    assert "Thumbnails are embedded for 29 of the 30 plotted samples; for the others" in note
    assert "per report" not in note
    full = capped_inputs(with_gaps=False)
    text = write_report(tmp_path / "full.html", **full).read_text(encoding="utf-8")
    data = json.loads(inline_data(text))
    assert data["thumbs"] == {sid: full["thumbnails"][sid] for sid in [*full["samples"]["sample_id"], "u0"]}
    assert "Thumbnails are embedded" not in text


def test_default_cap_keeps_every_thumbnail(report: Path, inputs: dict):
    from coco_seg.analysis.report import MAX_REPORT_THUMBNAILS

    assert MAX_REPORT_THUMBNAILS == 10_000
    text = report.read_text(encoding="utf-8")
    data = json.loads(inline_data(text))
    assert data["thumbs"] == {sid: inputs["thumbnails"][sid] for sid in inputs["samples"]["sample_id"]}
    assert "Thumbnails are embedded" not in text


# ---------------------------------------------------------------------------------------------------- browser

POINT_POSITION_JS = """(i) => {
  const gd = document.getElementById('%s');
  const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis, box = gd.getBoundingClientRect();
  for (const t of gd.data) {
    const k = t.customdata.indexOf(i);
    if (k >= 0) return {x: box.left + xa._offset + xa.l2p(t.x[k]), y: box.top + ya._offset + ya.l2p(t.y[k])};
  }
  return null;
}""" % MAP_DIV_ID


def test_report_in_chromium(report: Path, inputs: dict):
    samples = inputs["samples"]
    neighbors = dict(zip(samples["sample_id"], samples["neighbors"].str.split()))
    with report_page(report) as (page, errors, requests):
        state = page.evaluate("window.cocoSegReport")
        assert state["ready"] is True, state.get("error")
        assert state["points"] == len(samples)
        count_js = f"document.getElementById('{MAP_DIV_ID}').data.reduce((s, t) => s + t.x.length, 0)"
        assert page.evaluate(count_js) == len(samples)
        assert page.evaluate("document.querySelectorAll('.dashboard .main-svg').length") >= 2
        # Static tables got their thumbnails from the JSON map.
        assert page.evaluate("[...document.querySelectorAll('tr[data-select] img.thumb')]"
                             ".every(i => i.src.startsWith('data:image/'))")

        # Colour by every field: re-drawn without errors, same points, one trace per value for discrete fields.
        for field in [*COLOR_FIELDS[1:], "loss"]:
            page.select_option("#color-by", field)
            page.wait_for_function(f"window.cocoSegReport.colorBy === {json.dumps(field)}", timeout=10_000)
            assert page.evaluate(count_js) == len(samples), field
            traces = page.evaluate(f"document.getElementById('{MAP_DIV_ID}').data.length")
            if field == "cluster":
                assert traces == samples["cluster"].nunique()
            if field == "is_colored":
                assert traces == samples["is_colored"].nunique()
            if field == "person_percent":
                assert traces == 2  # colour scale + "no value"

        # A real mouse hover shows the custom panel with the thumbnail and the sample's values.
        page.evaluate(f"document.getElementById('{MAP_DIV_ID}').scrollIntoView({{block: 'center'}})")
        target = page.evaluate(POINT_POSITION_JS, 20)
        page.mouse.move(target["x"], target["y"])
        page.wait_for_function("document.getElementById('hover-panel').style.display === 'block'",
                               timeout=5_000)
        hovered = page.evaluate("window.cocoSegReport.hovered")
        assert hovered in neighbors
        panel = page.inner_text("#hover-panel")
        assert hovered in panel and "loss" in panel and "mean IoU" in panel
        assert page.evaluate("document.querySelector('#hover-panel img').src.startsWith('data:image/jpeg')")

        # A real click fills the similars panel with the clicked sample's neighbours.
        page.mouse.click(target["x"], target["y"])
        page.wait_for_function("document.getElementById('similars').hasAttribute('data-selected')",
                               timeout=5_000)
        selected = page.get_attribute("#similars", "data-selected")
        listed = page.evaluate("[...document.querySelectorAll('#similars .nb')].map(n => n.dataset.sample)")
        assert selected in neighbors and listed == neighbors[selected]

        # A click emitted on the graph for a known sample (index 3: one neighbour not in the report).
        page.evaluate(f"""() => {{
            const gd = document.getElementById('{MAP_DIV_ID}');
            const t = gd.data.findIndex(tr => tr.customdata.includes(3));
            gd.emit('plotly_click', {{points: [{{curveNumber: t, pointNumber: gd.data[t].customdata.indexOf(3),
                                                customdata: 3}}]}});
        }}""")
        page.wait_for_function("document.getElementById('similars').dataset.selected === 's003'",
                               timeout=5_000)
        listed = page.evaluate("[...document.querySelectorAll('#similars .nb')].map(n => n.dataset.sample)")
        assert listed == neighbors["s003"] and listed[-1] == "ghost-1"
        assert "not in this report" in page.inner_text("#similars")
        # Clicking a row of the worst-samples table selects that sample too (its id is escaped there).
        page.click(f"tr[data-select='{samples['sample_id'][samples['loss'].idxmax()]}']")
        page.wait_for_function("document.getElementById('similars').dataset.selected !== 's003'",
                               timeout=5_000)
        assert page.get_attribute("#similars", "data-selected") == samples["sample_id"][samples["loss"].idxmax()]
        page.wait_for_timeout(200)  # let any late error surface

    assert not errors, errors
    remote = [url for url in requests if not url.startswith(("file://", "data:", "blob:"))]
    assert not remote, remote
    assert any(url.startswith("file://") for url in requests)


def test_the_labelling_table_shows_its_first_rows_and_says_where_the_rest_are(tmp_path, inputs, monkeypatch):
    """An unlabeled split of tens of thousands would make a table of as many rows; the page shows the first
    LABELLING_ROWS (and embeds only their thumbnails first), labelling_suggestions.json holds every one."""
    monkeypatch.setattr(report_module, "LABELLING_ROWS", 2)
    labelling = [{"sample_id": f"u{i}", "rank": i + 1, "priority": 1 - i / 10, "uncertainty": 0.5,
                  "novelty": 0.3} for i in range(5)]
    text = write_report(tmp_path / "r.html", **{**inputs, "labelling": labelling}).read_text(encoding="utf-8")
    section = re.search(r'<section id="labelling">.*?</section>', text, re.S).group(0)
    assert [i for i in ("u0", "u1", "u2", "u3", "u4") if re.search(rf"\b{i}\b", section)] == ["u0", "u1"]
    assert "The first 2 of 5; labelling_suggestions.json ranks them all." in section
    referenced = report_module._referenced_ids(inputs["samples"], None, [], labelling)
    assert [i for i in referenced if i.startswith("u")] == ["u0", "u1"]
