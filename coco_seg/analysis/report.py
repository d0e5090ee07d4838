# The analysis report: ONE self-contained HTML page that works offline from disk (plotly.js, CSS, JS and the data
# are all inline; no CDN, no network). It holds, top to bottom:
#   1. the title and a summary table of headline figures (model, split, sample count, mean IoU per class, ...);
#   2. an interactive latent map, one point per sample: hovering shows the sample's thumbnail and values in a
#      custom panel, a <select> re-colours the map by any colour field, clicking a point lists its nearest
#      neighbours ("similar samples") with thumbnails;
#   3. metadata dashboards: mean loss per bin (bar chart, flagged bins highlighted), correlations, per-class IoU;
#   4. the worst samples by loss;
#   5. the label-issue gallery (image / ground truth / prediction / issues) and the class-swap table;
#   6. the pruning table and the labelling priorities of the unlabeled split.
# Each thumbnail is stored once, in the inline JSON. At most MAX_REPORT_THUMBNAILS are embedded so that the page
# stays openable at full-COCO scale: first those of the samples the sections show or link (insight cards, worst
# samples, label-issue gallery, labelling priorities), then an evenly spaced subset of the other samples (every
# k-th in table order). The map plots, and its hover lists the values of, every sample; a sample without an
# embedded thumbnail reads "no thumbnail embedded" there, and the map's note gives the count.
"""Write the offline, self-contained HTML analysis report (``write_report``)."""

from __future__ import annotations

import html
import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from coco_seg.atomic import strict_json, write_atomically

__all__ = ["MAP_DIV_ID", "MAX_REPORT_THUMBNAILS", "write_report"]

MAP_DIV_ID = "latent-map"
DATA_SCRIPT_ID = "coco-seg-data"
COLOR_SELECT_ID = "color-by"
HOVER_PANEL_ID = "hover-panel"
SIMILARS_PANEL_ID = "similars"
WORST_COUNT = 20  # rows of the worst-samples table
LABELLING_ROWS = 100  # rows of the labelling-priorities table (labelling_suggestions.json holds every one)
SCATTERGL_MIN_POINTS = 5000  # from this many points the map uses WebGL (scattergl); below, SVG (works everywhere)
MAX_CATEGORIES = 20  # a categorical colour field keeps its most frequent values; the rest read "other"
HOVER_EXTRA_FIELDS = 4  # colour fields (beyond loss / IoU / cluster / issue score) shown in the hover panel
CORE_FIELDS = ("loss", "mean_iou", "cluster", "label_issue_score")
PERCENT_KEYS = frozenset({"share", "share_kept", "issue_share"})
REQUIRED_COLUMNS = ("sample_id", "map_x", "map_y")
MAX_REPORT_THUMBNAILS = 10_000  # thumbnails embedded at most (~3-4 KB each as JPEG data URIs: ~40 MB at most)


# ---------------------------------------------------------------------------------------------------- values


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, (float, np.floating)):
        return not math.isfinite(float(value))
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _round(value: float) -> float | None:
    """Six significant digits (keeps the inline JSON small); None for NaN / ±inf."""
    return float(f"{value:.6g}") if math.isfinite(value) else None


def _fmt(value: Any, *, percent: bool = False) -> str:
    """Human-readable text for a table cell (not yet HTML-escaped)."""
    if not isinstance(value, (Mapping, list, tuple, np.ndarray)) and _is_missing(value):
        return "—"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return f"{float(value) * 100:.1f}%" if percent else f"{float(value):.4g}"
    if isinstance(value, Mapping):
        return "; ".join(f"{k}: {_fmt(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple, np.ndarray)):
        return ", ".join(_fmt(v) for v in value)
    return str(value)


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _data_uri(value: Any) -> str | None:
    """The value when it is an inline image (data:image/...), else None: the page never loads anything remote."""
    return value if isinstance(value, str) and value.startswith("data:image/") else None


def _json_for_script(obj: Any) -> str:
    """Strict JSON (no NaN) safe to inline in a <script> element: <, >, & and the JS line separators escaped."""
    text = json.dumps(strict_json(obj, fallback=str), allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    for raw, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                         ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(raw, escaped)
    return text


# ---------------------------------------------------------------------------------------------------- map data


def _field_kind(name: str, series: pd.Series) -> str:
    """"bool", "category" (clusters, strings) or "numeric" — how the map colours by the field."""
    if pd.api.types.is_bool_dtype(series):
        return "bool"
    present = series.dropna()
    if len(present) and all(isinstance(v, (bool, np.bool_)) for v in present):
        return "bool"
    if name == "cluster" or name.endswith("_cluster"):
        return "category"
    if pd.api.types.is_numeric_dtype(series):
        return "numeric"
    return "category"


def _numeric_column(series: pd.Series) -> list[float | None]:
    values = pd.to_numeric(series, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    return [_round(v) for v in values]


def _category_value(value: Any) -> Any:
    if _is_missing(value):
        return None
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)) or (isinstance(value, (float, np.floating)) and float(value).is_integer()):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return _round(float(value))
    return str(value)


def _field_column(series: pd.Series, kind: str) -> tuple[list[Any], dict[str, Any]]:
    """The column's values for the inline JSON and its colouring metadata."""
    if kind == "numeric":
        values = _numeric_column(series)
        finite = [v for v in values if v is not None]
        meta: dict[str, Any] = {"kind": kind, "min": min(finite) if finite else None,
                                "max": max(finite) if finite else None}
        return values, meta
    if kind == "bool":
        return [None if _is_missing(v) else bool(v) for v in series], {"kind": kind}
    values = [_category_value(v) for v in series]
    counts = pd.Series([v for v in values if v is not None], dtype=object).value_counts(sort=True)
    kept = list(counts.index[:MAX_CATEGORIES])
    try:
        kept.sort()  # clusters in numeric order; mixed types keep the frequency order
    except TypeError:
        pass
    return values, {"kind": kind, "categories": kept, "other": len(counts) > MAX_CATEGORIES}


def _map_data(samples: pd.DataFrame, class_names: Sequence[str],
              color_fields: Sequence[str]) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """Column-oriented point data, per-field colouring metadata and the colour fields actually present."""
    ids = [str(v) for v in samples["sample_id"]]
    x, y = _numeric_column(samples["map_x"]), _numeric_column(samples["map_y"])
    files = ([None if _is_missing(v) else str(v) for v in samples["file_name"]]
             if "file_name" in samples else [None] * len(ids))

    fields = [f for f in dict.fromkeys([*CORE_FIELDS, *color_fields]) if f in samples.columns]
    columns, meta = {}, {}
    for name in fields:
        kind = _field_kind(name, samples[name])
        columns[name], meta[name] = _field_column(samples[name], kind)

    # Per-class IoU, sparse: [[class index, IoU], ...] over the classes defined for the sample.
    iou: list[list[list[float]]] = [[] for _ in ids]
    for k, name in enumerate(class_names):
        column = f"iou_{name}"
        if column in samples.columns:
            for row, value in enumerate(_numeric_column(samples[column])):
                if value is not None:
                    iou[row].append([k, value])

    # Neighbours: row indices for ids on the map, the id itself (a string) otherwise.
    position = {sid: i for i, sid in enumerate(ids)}
    neighbors: list[list[Any]] = []
    raw_neighbors = samples["neighbors"] if "neighbors" in samples.columns else [None] * len(ids)
    for value in raw_neighbors:
        names = str(value).split() if not _is_missing(value) else []
        neighbors.append([position.get(n, n) for n in names])

    points = {"id": ids, "file": files, "x": x, "y": y, "columns": columns, "iou": iou, "neighbors": neighbors}
    shown = [f for f in dict.fromkeys(color_fields) if f in samples.columns]
    return points, meta, shown


# ---------------------------------------------------------------------------------------------------- HTML parts


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]], *, cls: str = "",
           row_attrs: Sequence[str] | None = None) -> str:
    """A table from already-escaped cells."""
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    thead = f"<thead><tr>{head}</tr></thead>" if any(headers) else ""
    body = []
    for i, row in enumerate(rows):
        attrs = f" {row_attrs[i]}" if row_attrs and row_attrs[i] else ""
        body.append(f"<tr{attrs}>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>")
    return (f'<div class="scroll"><table class="{_e(cls)}">{thead}'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def _thumb(sample_id: str) -> str:
    """An <img> the page's script fills from the thumbnail map (each thumbnail is stored once)."""
    return f'<img class="thumb" data-sample="{_e(sample_id)}" alt="">'


def _records_table(records: Sequence[Mapping[str, Any]], preferred: Sequence[tuple[str, str]], *,
                   skip: Sequence[str] = (), thumbs: bool = False, cls: str = "") -> str:
    """Known columns first (with headers), then any other scalar key the records carry."""
    keys = [k for k, _ in preferred if any(k in r for r in records)]
    headers = [h for k, h in preferred if k in keys]
    for record in records:
        for key, value in record.items():
            if key not in keys and key not in skip and not isinstance(value, (Mapping, list, tuple)):
                keys.append(key)
                headers.append(key.replace("_", " "))
    rows = []
    for record in records:
        row = [_e(_fmt(record.get(k), percent=k in PERCENT_KEYS)) for k in keys]
        if thumbs:
            row.insert(0, _thumb(str(record.get("sample_id", ""))))
        rows.append(row)
    return _table([""] + headers if thumbs else headers, rows, cls=cls)


def _summary_html(summary: Mapping[str, Any]) -> str:
    rows = []
    for key, value in summary.items():
        if isinstance(value, Mapping) and value:
            inner = _table(["", ""], [[_e(k), _e(_fmt(v))] for k, v in value.items()], cls="inner")
            cell = (f"<details><summary>{len(value)} entries</summary>{inner}</details>" if len(value) > 6
                    else inner)
        else:
            cell = _e(_fmt(value, percent=isinstance(value, float) and "recall" in str(key)))
        rows.append([_e(str(key).replace("_", " ")), cell])
    return _table(["", ""], rows, cls="summary") if rows else "<p>No summary figures.</p>"


def _correlations(dashboard: Mapping[str, Any]) -> str:
    parts = [f"Spearman ρ with loss: <b>{_e(_fmt(dashboard.get('spearman_loss')))}</b>"]
    iou = dashboard.get("spearman_iou") or {}
    if iou:
        defined = ", ".join(f"{_e(k)} {_e(_fmt(v))}" for k, v in iou.items() if not _is_missing(v))
        parts.append(f"with IoU: {defined or '—'}")
    flagged = dashboard.get("flagged_bins") or []
    parts.append("flagged bins: " + (", ".join(f'<span class="flag">{_e(b)}</span>' for b in flagged)
                                     if flagged else "none"))
    if dashboard.get("missing"):
        parts.append(f"{_e(dashboard['missing'])} samples with no value")
    return "<p class=\"corr\">" + " · ".join(parts) + "</p>"


def _dashboards_html(dashboards: Sequence[Mapping[str, Any]], class_names: Sequence[str]) -> str:
    if not dashboards:
        return "<p>No metadata dashboards.</p>"
    out = []
    for k, dashboard in enumerate(dashboards):
        bins = list(dashboard.get("bins") or [])
        present = {key for b in bins for key, v in b.items() if key.startswith("mean_iou") and not _is_missing(v)}
        ordered = [f"mean_iou_{n}" for n in class_names]
        iou_keys = ([key for key in ("mean_iou",) if key in present] + [key for key in ordered if key in present]
                    + sorted(present - set(ordered) - {"mean_iou"}))
        headers = ["bin", "count", "mean loss", "p-value", "flagged",
                   *(key.removeprefix("mean_iou_") if key != "mean_iou" else "mean IoU" for key in iou_keys)]
        rows, attrs = [], []
        for b in bins:
            rows.append([_e(_fmt(b.get("label"))), _e(_fmt(b.get("count"))), _e(_fmt(b.get("mean_loss"))),
                         _e(_fmt(b.get("p_value"))), "⚑" if b.get("flagged") else "",
                         *(_e(_fmt(b.get(key))) for key in iou_keys)])
            attrs.append('class="flagged"' if b.get("flagged") else "")
        flagged = " has-flag" if dashboard.get("flagged_bins") else ""
        out.append(f'<div class="dashboard{flagged}"><h3>{_e(dashboard.get("field", "?"))}</h3>'
                   f'{_correlations(dashboard)}<div class="chart" id="dash-{k}"></div>'
                   f'<details><summary>bins and per-class mean IoU</summary>'
                   f'{_table(headers, rows, cls="bins", row_attrs=attrs)}</details></div>')
    return "".join(out)


def _dashboard_charts(dashboards: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    charts = []
    for k, dashboard in enumerate(dashboards):
        bins = list(dashboard.get("bins") or [])
        charts.append({"div": f"dash-{k}", "field": str(dashboard.get("field", "?")),
                       "labels": [str(b.get("label")) for b in bins],
                       "mean_loss": [b.get("mean_loss") for b in bins],
                       "count": [b.get("count") for b in bins],
                       "flagged": [bool(b.get("flagged")) for b in bins],
                       "p": [_fmt(b.get("p_value")) for b in bins]})
    return charts


def _worst_rows(samples: pd.DataFrame) -> list[Any]:
    """Index labels of the worst-samples table's rows: the WORST_COUNT highest losses (NaN last, stable)."""
    if "loss" not in samples.columns or samples.empty:
        return []
    losses = pd.to_numeric(samples["loss"], errors="coerce")
    return list(losses.sort_values(ascending=False, na_position="last", kind="stable").index[:WORST_COUNT])


def _worst_html(samples: pd.DataFrame) -> str:
    if "loss" not in samples.columns or samples.empty:
        return "<p>No loss column.</p>"
    rows, attrs = [], []
    for rank, index in enumerate(_worst_rows(samples), start=1):
        row = samples.loc[index]
        sid = str(row["sample_id"])
        rows.append([str(rank), _thumb(sid), _e(sid), _e(_fmt(row.get("file_name"))), _e(_fmt(row.get("loss"))),
                     _e(_fmt(row.get("mean_iou"))), _e(_fmt(row.get("cluster"))),
                     _e(_fmt(row.get("label_issue_score")))])
        attrs.append(f'data-select="{_e(sid)}" title="show on the map"')
    return _table(["#", "", "sample", "file", "loss", "mean IoU", "cluster", "label-issue score"], rows,
                  cls="worst clickable", row_attrs=attrs)


PANELS = (("image", "image"), ("ground_truth", "ground truth"), ("prediction", "prediction"),
          ("issues", "issues"))


def _gallery_html(label_issues: Sequence[Mapping[str, Any]], files: Mapping[str, str]) -> str:
    if not label_issues:
        return "<p>No label issues flagged.</p>"
    cards = []
    for issue in label_issues:
        sid = str(issue.get("sample_id", ""))
        panels = issue.get("panels") or {}
        figures = []
        for key, caption in PANELS:
            uri = _data_uri(panels.get(key))
            body = f'<img src="{_e(uri)}" alt="{_e(caption)}">' if uri else '<div class="na">n/a</div>'
            figures.append(f"<figure>{body}<figcaption>{_e(caption)}</figcaption></figure>")
        file_name = f' <span class="file">{_e(files[sid])}</span>' if files.get(sid) else ""
        share = issue.get("issue_share")
        share_text = f" · {_e(_fmt(share, percent=True))} of pixels flagged" if not _is_missing(share) else ""
        cards.append(f'<div class="issue"><div class="issue-head" data-select="{_e(sid)}">'
                     f'<b>#{_e(_fmt(issue.get("rank")))}</b> <span class="sid">{_e(sid)}</span>{file_name}'
                     f' · score <b>{_e(_fmt(issue.get("score")))}</b>{share_text}</div>'
                     f'<div class="panels">{"".join(figures)}</div></div>')
    return ('<p class="note">Ranked by label-quality score (lower = more likely mislabelled).</p>'
            f'<div class="gallery">{"".join(cards)}</div>')


def _swaps_html(class_swaps: Sequence[Mapping[str, Any]]) -> str:
    if not class_swaps:
        return "<p>No ambiguous label pairs.</p>"
    return _records_table(class_swaps, [("given_label", "given label"), ("predicted_label", "predicted label"),
                                        ("pixels", "pixels"), ("share", "share")], cls="swaps")


def _pruning_html(pruning: Sequence[Mapping[str, Any]]) -> str:
    if not pruning:
        return "<p>No pruning suggestions.</p>"
    table = _records_table(pruning, [("cluster", "cluster"), ("size", "size"), ("kept", "kept"),
                                     ("dropped", "dropped"), ("share_kept", "share kept")],
                           skip=("drop_ids",), cls="pruning")
    drops = [(r.get("cluster"), [str(s) for s in r.get("drop_ids") or []]) for r in pruning]
    total = sum(len(ids) for _, ids in drops)
    if not total:
        return table + "<p>No samples suggested for dropping.</p>"
    items = "".join(f"<li>cluster {_e(_fmt(c))}: {_e(' '.join(ids))}</li>" for c, ids in drops if ids)
    return table + (f"<details><summary>{total} samples suggested for dropping</summary>"
                    f'<ul class="ids">{items}</ul></details>')


def _labelling_html(labelling: Sequence[Mapping[str, Any]] | None, thumbs: Mapping[str, str]) -> str:
    if labelling is None:
        return "<p>No unlabeled split configured: no labelling priorities.</p>"
    if not labelling:
        return "<p>The unlabeled split holds no samples.</p>"
    shown = list(labelling[:LABELLING_ROWS])
    extra = (f" The first {LABELLING_ROWS} of {len(labelling):,}; labelling_suggestions.json ranks them all."
             if len(labelling) > LABELLING_ROWS else "")
    return (f'<p class="note">Unlabeled samples worth labelling first (high uncertainty and far from the labelled '
            f'data).{extra}</p>' + _records_table(shown, [("rank", "#"), ("sample_id", "sample"),
                                                       ("priority", "priority"), ("uncertainty", "uncertainty"),
                                                       ("novelty", "novelty")], cls="labelling",
                                                      thumbs=any(str(r.get("sample_id")) in thumbs
                                                                 for r in shown)))


INSIGHT_THUMBS = 8  # thumbnails shown per insight card (the full ranked list is in insights.json)
EVIDENCE_ROWS = 50  # rows of an evidence table shown on the page


def _evidence_html(evidence: Mapping[str, Any]) -> str:
    """An insight's evidence: scalars as a two-column table, lists of records as tables, nested mappings inline."""
    scalars, tables = [], []
    for key, value in evidence.items():
        label = _e(str(key).replace("_", " "))
        if isinstance(value, (list, tuple)) and value and all(isinstance(v, Mapping) for v in value):
            rows = [{k: _fmt(v) if isinstance(v, (list, tuple)) else v for k, v in record.items()}
                    for record in value[:EVIDENCE_ROWS]]
            extra = f'<p class="muted">first {EVIDENCE_ROWS} of {len(value)}</p>' if len(value) > EVIDENCE_ROWS else ""
            tables.append(f"<h4>{label}</h4>" + _records_table(rows, [], cls="inner") + extra)
        elif isinstance(value, Mapping) and any(isinstance(v, (Mapping, list, tuple)) for v in value.values()):
            tables.append(f"<h4>{label}</h4>" + _evidence_html(value))
        else:
            scalars.append([label, _e(_fmt(value))])
    return (_table(["", ""], scalars, cls="inner") if scalars else "") + "".join(tables)


def _insights_html(insights: Sequence[Mapping[str, Any]] | None, thumbs: Mapping[str, str]) -> str:
    if insights is None:
        return "<p>No insights were computed.</p>"
    if not insights:
        return ("<p>No finding holds at the configured significance (after correcting for the number of tests): "
                "no low-performance cluster, metadata trend, label issue, out-of-distribution sample, duplicate, "
                "leakage or domain gap.</p>")
    cards = []
    for number, finding in enumerate(insights, start=1):
        severity = finding.get("severity")
        level = "high" if (severity or 0) >= 0.5 else "medium" if (severity or 0) >= 0.2 else "low"
        ids = [str(i) for i in finding.get("sample_ids", [])]
        shown = "".join(_thumb(i) for i in ids[:INSIGHT_THUMBS] if i in thumbs)
        more = f'<span class="muted">+{len(ids) - INSIGHT_THUMBS} more</span>' if len(ids) > INSIGHT_THUMBS else ""
        cards.append(
            f'<article class="insight {level}" data-kind="{_e(finding.get("kind", ""))}">'
            f'<h3><span class="badge {level}" title="severity (0-1)">{_e(_fmt(severity))}</span> '
            f'<span class="kind">{_e(finding.get("kind", ""))}</span> {number}. {_e(finding.get("title", ""))}</h3>'
            f'<p>{_e(finding.get("summary", ""))}</p>'
            f'<div class="insight-thumbs">{shown}{more}</div>'
            f'<details><summary>evidence and sample ids</summary>{_evidence_html(finding.get("evidence", {}))}'
            f'<ul class="ids">{"".join(f"<li>{_e(i)}</li>" for i in ids)}</ul></details></article>')
    return ('<p class="note">Findings ordered by severity (0-1); each holds after correcting for the number of '
            'tests. Thumbnails: the most representative samples first.</p>' + "".join(cards))


# ---------------------------------------------------------------------------------------------------- thumbnails


def _referenced_ids(samples: pd.DataFrame, insights: Sequence[Mapping[str, Any]] | None,
                    label_issues: Sequence[Mapping[str, Any]],
                    labelling: Sequence[Mapping[str, Any]] | None) -> list[str]:
    """Ids whose thumbnail the page's static content shows (or shows once clicked), in priority order, once each:
    the insight cards' thumbnails, the worst samples, the label-issue gallery (its headings select the sample on
    the map), the labelling priorities in rank order. The pruning lists are plain text: not included."""
    ordered: list[str] = []
    for finding in insights or []:
        ordered += [str(i) for i in list(finding.get("sample_ids") or [])[:INSIGHT_THUMBS]]
    ordered += [str(samples.loc[index, "sample_id"]) for index in _worst_rows(samples)]
    ordered += [str(issue.get("sample_id", "")) for issue in label_issues or []]
    ordered += [str(record.get("sample_id")) for record in list(labelling or [])[:LABELLING_ROWS]]
    return list(dict.fromkeys(ordered))


def _select_thumbnails(ids: Sequence[str], referenced: Sequence[str], thumbnails: Mapping[Any, Any],
                       cap: int) -> tuple[dict[str, str], bool]:
    """The thumbnails to embed (at most ``cap``) and whether the cap left any available one out.

    Only ids in ``ids`` or ``referenced`` with an inline image (data:image/...) count. The referenced ids come
    first, in their order; the remaining slots go to an evenly spaced subset of the other ids in table order
    (positions ``floor(j * n / slots)``, j = 0..slots-1, of the n candidates): deterministic, the first one
    included. Under the cap every available thumbnail is embedded.
    """
    available: dict[str, str] = {}
    for key, value in thumbnails.items():
        uri = _data_uri(value)
        if uri:
            available[str(key)] = uri
    cap = max(int(cap), 0)
    wanted = [i for i in dict.fromkeys([*referenced, *ids]) if i in available]
    if len(wanted) <= cap:
        return {i: available[i] for i in wanted}, False
    chosen = [i for i in dict.fromkeys(referenced) if i in available][:cap]
    taken = set(chosen)
    rest = [i for i in ids if i in available and i not in taken]
    slots = cap - len(chosen)
    chosen += [rest[j * len(rest) // slots] for j in range(slots)] if slots else []
    return {i: available[i] for i in chosen}, True


def _thumbnail_note(ids: Sequence[str], points: Mapping[str, Any], thumbs: Mapping[str, str], capped: bool,
                    n_plotted: int) -> str:
    """The map's note on the thumbnails when fewer are embedded than samples plotted (else empty)."""
    with_thumb = sum(1 for sid, x, y in zip(ids, points["x"], points["y"])
                     if x is not None and y is not None and sid in thumbs)
    if with_thumb >= n_plotted:
        return ""
    how = (f" (at most {MAX_REPORT_THUMBNAILS:,} per report: first the samples the sections below show, then an "
           f"evenly spaced selection of the others in table order)") if capped else ""
    where = (" and gives the image's file name (the file_name column of samples.parquet and samples.csv)"
             if any(points["file"]) else "")
    return (f"Thumbnails are embedded for {with_thumb:,} of the {n_plotted:,} plotted samples{how}; for the "
            f"others the hover panel reads \u201cno thumbnail embedded\u201d{where}.")


# ---------------------------------------------------------------------------------------------------- page

_CSS = """
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#222;background:#fafafa}
header{background:#1f2d3d;color:#fff;padding:14px 24px}
header h1{margin:0;font-size:22px}
nav{background:#fff;border-bottom:1px solid #ddd;padding:6px 24px;position:sticky;top:0;z-index:5}
nav a{margin-right:16px;color:#1f5f9f;text-decoration:none}
main{padding:0 24px 40px}
section{margin:18px 0;background:#fff;border:1px solid #e3e3e3;border-radius:6px;padding:12px 16px}
h2{margin:4px 0 10px;font-size:18px}
h3{margin:12px 0 4px;font-size:15px}
table{border-collapse:collapse;font-size:13px}
th,td{border-bottom:1px solid #eee;padding:3px 8px;text-align:left;vertical-align:middle}
th{background:#f3f3f3;position:sticky;top:0}
.scroll{overflow-x:auto;max-width:100%}
table.summary td:first-child{font-weight:600;white-space:nowrap}
tr.flagged td{background:#fde8e8}
.flag{color:#b22;font-weight:600}
img.thumb{width:64px;height:64px;object-fit:cover;border-radius:3px;background:#eee;display:block}
img.thumb.none{visibility:hidden}
tr[data-select],.issue-head[data-select],.nb{cursor:pointer}
tr[data-select]:hover{background:#eef5ff}
.map-row{display:flex;gap:14px;align-items:flex-start;flex-wrap:wrap}
#latent-map{flex:1 1 640px;min-width:320px;height:620px}
.map-side{flex:0 1 340px;min-width:260px;max-height:640px;overflow-y:auto}
.controls{display:flex;gap:8px;align-items:center;flex-wrap:wrap;margin-bottom:8px}
.controls select,.controls input{font:inherit;padding:2px 4px}
#hover-panel{position:fixed;z-index:20;display:none;pointer-events:none;background:#fff;border:1px solid #999;
  border-radius:6px;box-shadow:0 3px 12px rgba(0,0,0,.25);padding:8px;max-width:330px;font-size:12px}
.card{display:flex;gap:8px;align-items:flex-start}
.card img{width:96px;height:96px;object-fit:cover;border-radius:4px;background:#eee;flex:none}
.card .sid{font-weight:600;word-break:break-all}
.card .file{color:#666;word-break:break-all}
.card table td{padding:0 6px 0 0;border:0}
#similars .nbs{display:grid;grid-template-columns:repeat(auto-fill,minmax(110px,1fr));gap:8px;margin-top:8px}
.nb{border:1px solid #ddd;border-radius:5px;padding:4px;font-size:12px;background:#fff}
.nb:hover{border-color:#1f5f9f}
.nb img{width:100%;aspect-ratio:1;object-fit:cover;border-radius:3px;background:#eee;display:block}
.nb .sid{font-weight:600;word-break:break-all}
.nothumb{display:flex;align-items:center;justify-content:center;text-align:center;background:#eee;color:#777;
  font-size:11px;border-radius:4px;padding:4px}
.card .nothumb{width:96px;height:96px;flex:none}
.nb .nothumb{width:100%;aspect-ratio:1}
.muted,.note{color:#666}
.dashboards{display:grid;grid-template-columns:repeat(auto-fill,minmax(430px,1fr));gap:12px}
.dashboard{border:1px solid #eee;border-radius:5px;padding:6px 10px}
.dashboard.has-flag{border-color:#e7a0a0}
.dashboard .chart{height:250px}
.corr{margin:2px 0;font-size:12px;color:#444}
.gallery{display:flex;flex-direction:column;gap:12px}
.issue{border:1px solid #eee;border-radius:5px;padding:6px 10px}
.issue .file{color:#666}
.panels{display:flex;gap:8px;flex-wrap:wrap;margin-top:6px}
.panels figure{margin:0;text-align:center;font-size:12px;color:#555}
.panels img,.panels .na{width:180px;height:180px;object-fit:contain;background:#f0f0f0;border-radius:3px;
  display:flex;align-items:center;justify-content:center;image-rendering:pixelated}
ul.ids{font-family:ui-monospace,monospace;font-size:12px}
.insight{border:1px solid #ddd;border-left:6px solid #bbb;border-radius:5px;padding:6px 12px;margin:10px 0}
.insight.high{border-left-color:#c33}.insight.medium{border-left-color:#e90}.insight.low{border-left-color:#9ab}
.insight h3{margin:4px 0;font-size:16px}.insight .kind{font-family:ui-monospace,monospace;font-size:12px;color:#555}
.badge{display:inline-block;min-width:36px;text-align:center;border-radius:10px;padding:1px 6px;color:#fff;
  font-size:12px;background:#9ab}.badge.high{background:#c33}.badge.medium{background:#e90}
.insight-thumbs{display:flex;gap:6px;flex-wrap:wrap;align-items:center}
#report-error{background:#fde8e8;border:1px solid #d66;padding:8px;margin:10px 0}
"""

_SCRIPT = r"""
(function () {
  "use strict";
  var report = window.cocoSegReport = {points: 0, ready: false};
  function fail(err) {
    report.error = String((err && err.stack) || err);
    console.error("coco-seg report: " + report.error);
    var box = document.getElementById("report-error");
    if (box) { box.textContent = "The interactive part of this report failed: " + report.error; box.hidden = false; }
  }
  try { main(); } catch (err) { fail(err); }

  function main() {
    var D = JSON.parse(document.getElementById("coco-seg-data").textContent);
    var P = D.points, cols = P.columns, thumbs = D.thumbs, fields = D.fields, n = P.id.length;
    var byId = new Map();
    P.id.forEach(function (id, i) { byId.set(id, i); });
    var plotted = [];
    for (var i = 0; i < n; i++) if (P.x[i] !== null && P.y[i] !== null) plotted.push(i);
    var gd = document.getElementById(D.mapDiv);
    var hover = document.getElementById(D.hoverDiv);
    var similars = document.getElementById(D.similarsDiv);
    var select = document.getElementById(D.selectId);
    var PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                   "#bcbd22", "#17becf", "#393b79", "#e7ba52", "#637939", "#843c39", "#7b4173", "#3182bd",
                   "#e6550d", "#31a354", "#756bb1", "#636363"];
    var MISSING = "#c8c8c8";
    var config = {displaylogo: false, responsive: true, scrollZoom: true};
    var mapType = D.mapType === "scattergl" && !webglAvailable() ? "scatter" : D.mapType;
    function webglAvailable() {
      try {
        var canvas = document.createElement("canvas");
        return !!(canvas.getContext("webgl2") || canvas.getContext("webgl"));
      } catch (err) { return false; }
    }
    var state = {field: select.value || null, selected: null, annotations: []};

    // ---- small DOM helpers (text only: data never goes through innerHTML)
    function el(tag, attrs, children) {
      var node = document.createElement(tag);
      Object.keys(attrs || {}).forEach(function (k) {
        if (k === "text") node.textContent = attrs[k];
        else if (k === "cls") node.className = attrs[k];
        else node.setAttribute(k, attrs[k]);
      });
      (children || []).forEach(function (c) { if (c) node.appendChild(c); });
      return node;
    }
    function fmt(v) {
      if (v === null || v === undefined) return "\u2014";
      if (typeof v === "boolean") return v ? "yes" : "no";
      if (typeof v === "number") return Number.isInteger(v) ? String(v) : String(Number(v.toPrecision(4)));
      return String(v);
    }
    function thumbOf(id) {  // the embedded thumbnail, or null (at most MAX_REPORT_THUMBNAILS are embedded)
      var uri = Object.prototype.hasOwnProperty.call(thumbs, id) ? thumbs[id] : null;
      return typeof uri === "string" ? uri : null;
    }
    function thumbImg(id) {
      var uri = thumbOf(id);
      if (!uri) return el("div", {cls: "nothumb", text: "no thumbnail embedded"});
      var img = el("img", {alt: ""});
      img.src = uri;
      return img;
    }
    function col(name, i) { return cols[name] ? cols[name][i] : undefined; }

    // ---- thumbnails in the static tables (stored once, in the JSON map)
    document.querySelectorAll("img[data-sample]").forEach(function (img) {
      var uri = thumbOf(img.getAttribute("data-sample"));
      if (uri) img.src = uri; else img.classList.add("none");
    });

    // ---- the map
    function legendLabel(field, value) {
      if (value === null) return field + ": no value";
      if (typeof value === "boolean") return field + ": " + (value ? "yes" : "no");
      return (field === "cluster" ? "cluster " : field + " = ") + value;
    }
    function trace(idx, extra) {
      var t = {type: mapType, mode: "markers", x: idx.map(function (i) { return P.x[i]; }),
               y: idx.map(function (i) { return P.y[i]; }), customdata: idx, hoverinfo: "none",
               marker: {size: D.markerSize, opacity: 0.85, line: {width: 0}}};
      Object.keys(extra).forEach(function (k) {
        if (k === "marker") Object.assign(t.marker, extra.marker); else t[k] = extra[k];
      });
      return t;
    }
    function buildTraces(field) {
      var meta = field ? fields[field] : null;
      if (!meta) return [trace(plotted, {name: "samples", showlegend: false, marker: {color: PALETTE[0]}})];
      var vals = cols[field], traces = [];
      if (meta.kind === "numeric") {
        var have = plotted.filter(function (i) { return vals[i] !== null; });
        var miss = plotted.filter(function (i) { return vals[i] === null; });
        // samples without a value first, so the coloured points are drawn on top of them
        if (miss.length) traces.push(trace(miss, {name: field + ": no value", marker: {color: MISSING}}));
        if (have.length) traces.push(trace(have, {name: field, showlegend: false, marker: {
          color: have.map(function (i) { return vals[i]; }), colorscale: "Viridis", showscale: true,
          cmin: meta.min, cmax: meta.max === meta.min ? meta.max + 1 : meta.max,
          colorbar: {title: {text: field}, thickness: 14}}}));
        return traces;
      }
      var keys = meta.kind === "bool" ? [false, true] : meta.categories.slice();
      var groups = new Map(keys.map(function (k) { return [k, []]; })), other = [], none = [];
      plotted.forEach(function (i) {
        var v = vals[i];
        if (v === null) none.push(i); else if (groups.has(v)) groups.get(v).push(i); else other.push(i);
      });
      keys.forEach(function (k, j) {
        var idx = groups.get(k);
        var color = meta.kind === "bool" ? (k ? "#d62728" : "#1f77b4") : PALETTE[j % PALETTE.length];
        if (idx.length) traces.push(trace(idx, {name: legendLabel(field, k), marker: {color: color}}));
      });
      if (other.length) traces.push(trace(other, {name: field + ": other", marker: {color: "#444"}}));
      if (none.length) traces.unshift(trace(none, {name: legendLabel(field, null), marker: {color: MISSING}}));
      return traces;
    }
    function layout() {
      return {margin: {l: 40, r: 10, t: 10, b: 30}, hovermode: "closest", dragmode: "zoom", uirevision: "map",
              xaxis: {zeroline: false, showticklabels: false, title: {text: ""}},
              yaxis: {zeroline: false, showticklabels: false, title: {text: ""}},
              legend: {orientation: "h", y: -0.02, yanchor: "top"}, annotations: state.annotations};
    }
    function countPoints() {
      return (gd.data || []).reduce(function (s, t) { return s + (t.x ? t.x.length : 0); }, 0);
    }
    function pointIndex(pt) {
      if (!pt) return null;
      if (typeof pt.customdata === "number") return pt.customdata;
      var t = gd.data && gd.data[pt.curveNumber];
      var i = t && t.customdata ? t.customdata[pt.pointNumber] : undefined;
      return typeof i === "number" ? i : null;
    }
    function draw(field) {
      return Plotly.react(gd, buildTraces(field), layout(), config).then(function () {
        state.field = field;
        report.colorBy = field;
        report.points = countPoints();
        report.traces = gd.data.length;
        report.mapType = mapType;
      });
    }

    // ---- sample card: thumbnail + values (hover panel and similars panel)
    function valueRows(i) {
      var rows = [["loss", col("loss", i)], ["mean IoU", col("mean_iou", i)], ["cluster", col("cluster", i)],
                  ["label-issue score", col("label_issue_score", i)]];
      rows = rows.filter(function (r) { return r[1] !== undefined; });
      var extra = D.hoverFields.slice();  // the current colour field first, then a few metadata fields
      if (state.field && extra.indexOf(state.field) < 0 && D.core.indexOf(state.field) < 0) {
        extra.unshift(state.field);
      }
      extra.forEach(function (f) { rows.push([f, col(f, i)]); });
      var iou = (P.iou[i] || []).slice().sort(function (a, b) { return a[1] - b[1]; }).slice(0, 6);
      if (iou.length) {
        rows.push(["IoU (worst)", iou.map(function (p) { return D.classNames[p[0]] + " " + fmt(p[1]); }).join(", ")]);
      }
      return rows;
    }
    function card(i) {
      var id = P.id[i];
      var table = el("table", {}, valueRows(i).map(function (r) {
        return el("tr", {}, [el("td", {cls: "muted", text: r[0]}), el("td", {text: fmt(r[1])})]);
      }));
      return el("div", {cls: "card"}, [thumbImg(id), el("div", {}, [
        el("div", {cls: "sid", text: id}), P.file[i] ? el("div", {cls: "file", text: P.file[i]}) : null, table])]);
    }
    function showHover(ev) {
      var i = pointIndex(ev && ev.points && ev.points[0]);
      if (i === null) return;
      hover.replaceChildren(card(i));
      hover.style.display = "block";
      var box = gd.getBoundingClientRect(), w = hover.offsetWidth, h = hover.offsetHeight;
      var x = ev.event && typeof ev.event.clientX === "number" ? ev.event.clientX : box.right - w;
      var y = ev.event && typeof ev.event.clientY === "number" ? ev.event.clientY : box.top;
      var left = x + 16 + w > window.innerWidth ? x - 16 - w : x + 16;
      var top = Math.min(Math.max(4, y - h / 2), window.innerHeight - h - 4);
      hover.style.left = Math.max(4, left) + "px";
      hover.style.top = Math.max(4, top) + "px";
      report.hovered = P.id[i];
    }
    function hideHover() { hover.style.display = "none"; }

    // ---- similar samples ("fetch similars"): the clicked sample's nearest neighbours in embedding space
    function neighbourCard(ref, rank) {
      if (typeof ref !== "number") {
        return el("div", {cls: "nb", "data-sample": ref}, [
          el("div", {cls: "sid", text: rank + ". " + ref}), el("div", {cls: "muted", text: "not in this report"})]);
      }
      var node = el("div", {cls: "nb", "data-sample": P.id[ref], title: "show this sample's neighbours"}, [
        thumbImg(P.id[ref]), el("div", {cls: "sid", text: rank + ". " + P.id[ref]}),
        el("div", {text: "loss " + fmt(col("loss", ref)) + " \u00b7 IoU " + fmt(col("mean_iou", ref))})]);
      node.addEventListener("click", function () { selectSample(ref); });
      return node;
    }
    function selectSample(i) {
      var id = P.id[i], nbs = P.neighbors[i] || [];
      var list = el("div", {cls: "nbs"}, nbs.map(function (ref, k) { return neighbourCard(ref, k + 1); }));
      similars.replaceChildren(
        el("h3", {text: "Selected sample"}), card(i),
        el("h3", {text: "Similar samples (" + nbs.length + " nearest neighbours)"}),
        nbs.length ? list : el("p", {cls: "muted", text: "No neighbours recorded for this sample."}));
      similars.setAttribute("data-selected", id);
      state.annotations = [];
      if (P.x[i] !== null && P.y[i] !== null) {
        state.annotations.push({x: P.x[i], y: P.y[i], text: id, showarrow: true, arrowhead: 2, ax: 30, ay: -30,
                                bgcolor: "rgba(255,255,255,.85)", bordercolor: "#222", font: {size: 11}});
      }
      nbs.forEach(function (ref, k) {
        if (typeof ref === "number" && P.x[ref] !== null && P.y[ref] !== null) {
          state.annotations.push({x: P.x[ref], y: P.y[ref], text: String(k + 1), showarrow: false,
                                  bgcolor: "rgba(255,255,255,.8)", bordercolor: "#555", borderpad: 1,
                                  font: {size: 9}});
        }
      });
      report.selected = id;
      return Plotly.relayout(gd, {annotations: state.annotations}).catch(fail);
    }
    report.select = function (id) { return byId.has(id) ? selectSample(byId.get(id)) : null; };

    // ---- wiring
    var ready = draw(state.field).then(function () {
      gd.on("plotly_hover", showHover);
      gd.on("plotly_unhover", hideHover);
      gd.on("plotly_click", function (ev) {
        var i = pointIndex(ev && ev.points && ev.points[0]);
        if (i !== null) selectSample(i);
      });
      select.addEventListener("change", function () { draw(select.value || null).catch(fail); });
    });
    document.addEventListener("click", function (ev) {
      var target = ev.target.closest ? ev.target.closest("[data-select]") : null;
      if (!target || !byId.has(target.getAttribute("data-select"))) return;
      selectSample(byId.get(target.getAttribute("data-select")));
      gd.scrollIntoView({behavior: "smooth", block: "center"});
    });
    var find = document.getElementById("find-sample");
    var findNote = document.getElementById("find-note");
    find.addEventListener("change", function () {
      var id = find.value.trim();
      findNote.textContent = !id || byId.has(id) ? "" : "no sample " + id;
      if (byId.has(id)) selectSample(byId.get(id));
    });

    // ---- dashboards: mean loss per bin, flagged bins in red, counts on the bars
    var charts = D.dashboards.map(function (c) {
      var div = document.getElementById(c.div);
      return Plotly.newPlot(div, [{
        type: "bar", x: c.labels, y: c.mean_loss, text: c.count.map(function (k) { return "n=" + k; }),
        textposition: "outside", cliponaxis: false,
        marker: {color: c.flagged.map(function (f) { return f ? "#d62728" : "#4a7fb5"; })},
        customdata: c.count.map(function (k, j) { return [k, c.p[j]]; }),
        hovertemplate: "%{x}<br>mean loss %{y:.4g}<br>n = %{customdata[0]}<br>p = %{customdata[1]}<extra></extra>"
      }], {margin: {l: 50, r: 10, t: 16, b: 60}, xaxis: {type: "category", automargin: true},
           yaxis: {title: {text: "mean loss"}, rangemode: "tozero"}, showlegend: false},
         {displaylogo: false, responsive: true, displayModeBar: false});
    });

    Promise.all([ready].concat(charts)).then(function () {
      report.points = countPoints();
      report.plotted = plotted.length;
      report.charts = charts.length;
      report.ready = true;
      document.body.setAttribute("data-ready", "true");
    }).catch(fail);
  }
})();
"""


def _page(*, title: str, data_json: str, body: str) -> str:
    import plotly.offline

    plotly_js = plotly.offline.get_plotlyjs().replace("</script", "<\\/script")
    csp = ("default-src 'none'; script-src 'unsafe-inline' 'unsafe-eval'; style-src 'unsafe-inline'; "
           "img-src data: blob:; font-src data:; worker-src blob:; connect-src 'none'")
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta http-equiv="Content-Security-Policy" content="{csp}">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n"
            f"<script>{plotly_js}</script>\n</head>\n<body>\n{body}\n"
            f'<script type="application/json" id="{DATA_SCRIPT_ID}">{data_json}</script>\n'
            f"<script>{_SCRIPT}</script>\n</body>\n</html>\n")


def write_report(path: Path, *, title: str, samples: pd.DataFrame, class_names: Sequence[str],
                 color_fields: Sequence[str], thumbnails: Mapping[str, str], dashboards: Sequence[Mapping],
                 label_issues: Sequence[Mapping], class_swaps: Sequence[Mapping], pruning: Sequence[Mapping],
                 labelling: Sequence[Mapping] | None, summary: Mapping[str, Any],
                 insights: Sequence[Mapping] | None = None) -> Path:
    """Write the self-contained HTML report to ``path`` (atomically) and return ``path``.

    ``samples`` needs ``sample_id``, ``map_x`` and ``map_y``; ``file_name``, ``loss``, ``mean_iou``,
    ``iou_<class>``, ``cluster``, ``label_issue_score`` and ``neighbors`` (space-separated ids) are used when
    present. Colour fields missing from ``samples`` are listed on the page and left out of the selector.
    ``insights``: the findings of coco_seg.analysis.insights (records), shown first; their sample ids are keys of
    ``samples``.
    Samples without finite map coordinates stay in the tables but are not plotted.
    ``thumbnails`` maps sample ids to inline images (data:image/... URIs; other values are ignored). At most
    ``MAX_REPORT_THUMBNAILS`` are embedded: first those of the samples the page shows or links (insight cards,
    worst samples, label-issue gallery, labelling priorities), then an evenly spaced, deterministic subset of the
    other samples (every k-th in table order); under the cap every sample keeps its thumbnail. The map still
    plots and describes every sample; its note says how many thumbnails are embedded when fewer than the samples
    plotted.
    """
    path = Path(path)
    if not isinstance(samples, pd.DataFrame):
        raise TypeError(f"samples must be a pandas DataFrame, got {type(samples).__name__}")
    missing = [c for c in REQUIRED_COLUMNS if c not in samples.columns]
    if missing:
        raise ValueError(f"samples lacks the column(s) {', '.join(missing)}")
    samples = samples.reset_index(drop=True)
    ids = [str(v) for v in samples["sample_id"]]
    duplicated = sorted(i for i, count in Counter(ids).items() if count > 1)
    if duplicated:
        raise ValueError(f"sample ids must be unique; repeated: {', '.join(duplicated[:5])}")
    class_names = [str(c) for c in class_names]

    points, field_meta, shown_fields = _map_data(samples, class_names, list(color_fields))
    absent_fields = [f for f in dict.fromkeys(color_fields) if f not in samples.columns]
    thumbs, capped = _select_thumbnails(ids, _referenced_ids(samples, insights, label_issues, labelling),
                                        thumbnails, MAX_REPORT_THUMBNAILS)
    hover_fields = [f for f in shown_fields if f not in CORE_FIELDS][:HOVER_EXTRA_FIELDS]
    n_plotted = sum(1 for x, y in zip(points["x"], points["y"]) if x is not None and y is not None)
    data = {"mapDiv": MAP_DIV_ID, "hoverDiv": HOVER_PANEL_ID, "similarsDiv": SIMILARS_PANEL_ID,
            "selectId": COLOR_SELECT_ID, "mapType": "scattergl" if n_plotted >= SCATTERGL_MIN_POINTS else "scatter",
            "markerSize": 8 if n_plotted < 2000 else 5 if n_plotted < 20000 else 3,
            "classNames": class_names, "core": list(CORE_FIELDS), "hoverFields": hover_fields,
            "fields": field_meta, "points": points, "thumbs": thumbs, "dashboards": _dashboard_charts(dashboards)}

    default = "loss" if "loss" in shown_fields else (shown_fields[0] if shown_fields else "")
    options = "".join(f'<option value="{_e(f)}"{" selected" if f == default else ""}>{_e(f)}</option>'
                      for f in shown_fields) or '<option value="">(no colour field)</option>'
    unplotted = len(ids) - n_plotted
    notes = []
    thumb_note = _thumbnail_note(ids, points, thumbs, capped, n_plotted)
    if thumb_note:
        notes.append(_e(thumb_note))
    if unplotted:
        notes.append(f"{unplotted} samples have no map coordinates and are not plotted.")
    if absent_fields:
        notes.append("Colour fields not in the sample table: " + ", ".join(_e(f) for f in absent_fields) + ".")
    files = {sid: f for sid, f in zip(points["id"], points["file"]) if f}
    sections = [
        ("insights", "Insights", _insights_html(insights, thumbs)),
        ("summary", "Summary", _summary_html(summary)),
        ("map", "Latent map",
         f'<div class="controls"><label>colour by <select id="{COLOR_SELECT_ID}">{options}</select></label>'
         f'<label>find sample <input id="find-sample" size="18" placeholder="sample id"></label>'
         f'<span id="find-note" class="muted"></span></div>'
         f'<p class="note">{n_plotted:,} samples; each point is one sample placed by its embedding. Hover for '
         f'the thumbnail and values, click a point for its most similar samples. '
         f'{" ".join(notes)}</p>'
         f'<div class="map-row"><div id="{MAP_DIV_ID}"></div><div class="map-side">'
         f'<div id="{SIMILARS_PANEL_ID}"><p class="muted">Click a point on the map (or a row in the tables '
         f'below) to list its similar samples here.</p></div></div></div>'
         f'<div id="{HOVER_PANEL_ID}"></div>'),
        ("dashboards", "Metadata dashboards",
         '<p class="note">Mean loss per bin of each metadata field (bar labels: sample counts; red: bins with a '
         'significantly higher loss).</p>'
         f'<div class="dashboards">{_dashboards_html(dashboards, class_names)}</div>'),
        ("worst", f"Worst {WORST_COUNT} samples by loss", _worst_html(samples)),
        ("label-issues", "Label issues", _gallery_html(label_issues, files)
         + "<h3>Ambiguous labels (class swaps)</h3>" + _swaps_html(class_swaps)),
        ("pruning", "Pruning suggestions", _pruning_html(pruning)),
        ("labelling", "Labelling priorities", _labelling_html(labelling, thumbs)),
    ]
    nav = "".join(f'<a href="#{key}">{_e(name)}</a>' for key, name, _ in sections)
    body = (f"<header><h1>{_e(title)}</h1></header><nav>{nav}</nav><main>"
            '<noscript><p>The map and charts need JavaScript.</p></noscript>'
            '<div id="report-error" hidden></div>'
            + "".join(f'<section id="{key}"><h2>{_e(name)}</h2>{content}</section>' for key, name, content in sections)
            + "</main>")
    page = _page(title=title, data_json=_json_for_script(data), body=body)
    write_atomically(path, lambda temp: temp.write_text(page, encoding="utf-8"))
    return path
