# Metadata dashboards: how loss and IoU vary with each metadata field, and which slices are significantly worse.
#
# Statistics, per metadata field (one row per sample in the input DataFrame):
#   * Binning. Booleans, non-numeric fields and numeric fields with <= max_bins distinct values get one bin per
#     value (categorical). Other numeric fields get quantile bins (up to max_bins; bins whose edges coincide
#     because of ties are merged, and empty bins are merged into their left neighbour). A zero-inflated field
#     (>= 20% of its values exactly 0, e.g. `car_percent`) gets a bin of its own for 0 and the non-zero values are
#     quantile-binned into up to max_bins - 1 bins. Bins are half-open "[low, high)", the last one closed
#     "[low, high]". Samples whose field is NaN are left out of every bin and counted in `missing`.
#   * Per bin: sample count, mean loss and the NaN-ignoring mean of every IoU column (NaN = class undefined for
#     that sample; a bin with no defined value reads NaN).
#   * Significance. One-sided Mann-Whitney U test (alternative="greater") of the bin's losses against the losses of
#     all other binned samples of that field, Bonferroni-corrected over the field's bins (p x number of bins,
#     capped at 1). A bin is flagged when corrected p < alpha AND its mean loss exceeds the rest's AND it holds
#     at least 5 samples with a defined loss.
#   * Spearman rank correlation of the field with loss (over samples where both are defined) and with each IoU
#     column (over samples where that IoU is defined); NaN when either side is constant or fewer than 3 pairs.
#   * Constant fields (<= 1 distinct non-NaN value) produce no dashboard.
"""Per-metadata-field dashboards of loss / IoU by bin, with significance flags and rank correlations."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

__all__ = ["MetadataDashboard", "metadata_dashboards", "dashboards_to_records"]

MIN_FLAG_SAMPLES = 5  # a bin needs at least this many samples (with a defined loss) to be flagged
ZERO_BIN_FRACTION = 0.2  # a numeric field with at least this fraction of exact zeros gets its own "0" bin


@dataclass(frozen=True, eq=False)  # eq=False: DataFrame fields have no boolean ==; dashboards compare by identity
class MetadataDashboard:
    """One metadata field's dashboard.

    ``bins`` has one row per bin, in order: ``label`` (str, e.g. "[0, 12.5)", "0", "True"), ``low`` / ``high``
    (float bin edges; NaN for categorical bins; both 0 for the zero bin of a zero-inflated field), ``count``,
    ``mean_loss``, ``mean_<iou column>`` for each IoU column, ``flagged`` (bool) and ``p_value`` (the
    Bonferroni-corrected one-sided Mann-Whitney p-value; NaN when the bin or the rest has no defined loss).
    """

    field: str
    bins: pd.DataFrame
    spearman_loss: float
    spearman_iou: dict[str, float]
    flagged_bins: list[str]
    missing: int = 0  # samples whose field value is NaN (in no bin)
    categorical: bool = False  # True when the bins are one per distinct value


# ---------------------------------------------------------------------------------------------------- binning


def _is_bool_like(values: pd.Series) -> bool:
    if pd.api.types.is_bool_dtype(values.dtype):
        return True
    if values.dtype == object:
        present = values.dropna()
        return len(present) > 0 and all(isinstance(v, (bool, np.bool_)) for v in present)
    return False


def _format_edges(edges: np.ndarray) -> list[str]:
    """Shortest '%g' text (4 significant digits or more) that keeps distinct edges distinct."""
    for digits in (4, 6, 8, 12, 17):
        texts = [format(float(e), f".{digits}g") for e in edges]
        if len(set(texts)) == len(set(float(e) for e in edges)):
            return texts
    return [repr(float(e)) for e in edges]


def _categorical_label(value: Any) -> str:
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, float, np.integer, np.floating)):
        return format(float(value), "g")
    return str(value)


def _quantile_edges(values: np.ndarray, n_bins: int) -> np.ndarray:
    """Unique quantile edges of `values`, with edges that would leave a bin empty removed."""
    edges = np.unique(np.quantile(values, np.linspace(0.0, 1.0, n_bins + 1)))
    if len(edges) < 2:
        return edges
    index = _assign_intervals(values, edges)
    counts = np.bincount(index, minlength=len(edges) - 1)
    # An empty bin i = [e_i, e_{i+1}) merges into bin i-1 by dropping its lower edge e_i (bin 0 starts at the
    # minimum, so it is never empty); no sample changes bin except by relabelling.
    drop = np.flatnonzero(counts == 0)
    drop = drop[drop > 0]
    return np.delete(edges, drop)


def _assign_intervals(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin index of each value for bins [e_0, e_1), ..., [e_{n-1}, e_n] (last one closed)."""
    index = np.searchsorted(edges, values, side="right") - 1
    return np.clip(index, 0, len(edges) - 2)


def _interval_bins(values: np.ndarray, edges: np.ndarray) -> tuple[list[str], list[float], list[float], np.ndarray]:
    texts = _format_edges(edges)
    n = len(edges) - 1
    labels = [f"[{texts[i]}, {texts[i + 1]}{']' if i == n - 1 else ')'}" for i in range(n)]
    return labels, [float(e) for e in edges[:-1]], [float(e) for e in edges[1:]], _assign_intervals(values, edges)


def _bin_field(values: pd.Series, max_bins: int) -> tuple[list[str], list[float], list[float], np.ndarray, bool] | None:
    """(labels, lows, highs, bin index per non-NaN value, categorical) or None for a constant field."""
    distinct = pd.unique(values)
    if len(distinct) <= 1:
        return None
    nan = float("nan")
    numeric = pd.api.types.is_numeric_dtype(values.dtype) and not _is_bool_like(values)
    if not numeric or len(distinct) <= max_bins:
        if not numeric and not _is_bool_like(values) and len(distinct) > max_bins:
            raise ValueError(f"metadata field {values.name!r} is non-numeric with {len(distinct)} distinct values "
                             f"(more than max_bins={max_bins}); it cannot be binned")
        order = sorted(distinct, key=lambda v: (float(v) if numeric or _is_bool_like(values) else str(v)))
        position = {v: i for i, v in enumerate(order)}
        index = np.fromiter((position[v] for v in values), dtype=np.int64, count=len(values))
        labels = [_categorical_label(v) for v in order]
        return labels, [nan] * len(order), [nan] * len(order), index, True

    x = values.to_numpy(dtype=np.float64)
    zero = x == 0.0
    if zero.mean() >= ZERO_BIN_FRACTION and not zero.all():
        rest = x[~zero]
        edges = _quantile_edges(rest, max_bins - 1)
        if len(edges) < 2:  # all non-zero values equal (cannot happen with > max_bins distinct values)
            edges = np.array([rest[0], rest[0]])
        labels, lows, highs, rest_index = _interval_bins(rest, edges)
        index = np.zeros(len(x), dtype=np.int64)
        index[~zero] = rest_index + 1
        return ["0", *labels], [0.0, *lows], [0.0, *highs], index, False
    edges = _quantile_edges(x, max_bins)
    labels, lows, highs, index = _interval_bins(x, edges)
    return labels, lows, highs, index, False


# ---------------------------------------------------------------------------------------------------- statistics


def _nanmean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else float("nan")


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    defined = ~(np.isnan(x) | np.isnan(y))
    x, y = x[defined], y[defined]
    if x.size < 3 or np.all(x == x[0]) or np.all(y == y[0]):
        return float("nan")
    return float(stats.spearmanr(x, y).statistic)


def _greater_p_value(inside: np.ndarray, outside: np.ndarray) -> float:
    """One-sided Mann-Whitney p-value that `inside` is stochastically greater than `outside` (uncorrected)."""
    if inside.size == 0 or outside.size == 0:
        return float("nan")
    combined = np.concatenate([inside, outside])
    if np.all(combined == combined[0]):
        return 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(stats.mannwhitneyu(inside, outside, alternative="greater").pvalue)


def _numeric_column(samples: pd.DataFrame, name: str) -> np.ndarray:
    return pd.to_numeric(samples[name], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)


def _field_as_float(values: pd.Series) -> np.ndarray:
    """The field as floats for rank correlation (booleans as 0/1); all-NaN for non-numeric categories."""
    if _is_bool_like(values):
        return values.astype(float).to_numpy(dtype=np.float64)
    if pd.api.types.is_numeric_dtype(values.dtype):
        return values.to_numpy(dtype=np.float64, na_value=np.nan)
    return np.full(len(values), np.nan)


def _dashboard(samples: pd.DataFrame, name: str, iou_columns: Sequence[str], loss: np.ndarray,
               ious: dict[str, np.ndarray], max_bins: int, alpha: float) -> MetadataDashboard | None:
    column = samples[name]
    present = column.notna().to_numpy()
    values = column[present]
    binned = _bin_field(values, max_bins)
    if binned is None:
        return None
    labels, lows, highs, index, categorical = binned
    field_loss = loss[present]
    field_ious = {c: ious[c][present] for c in iou_columns}
    defined_loss = ~np.isnan(field_loss)
    n_bins = len(labels)

    rows = []
    for b in range(n_bins):
        inside = index == b
        bin_loss = field_loss[inside & defined_loss]
        rest_loss = field_loss[~inside & defined_loss]
        raw_p = _greater_p_value(bin_loss, rest_loss)
        p_value = min(1.0, raw_p * n_bins) if not math.isnan(raw_p) else float("nan")
        mean_loss = _nanmean(field_loss[inside])
        rest_mean = _nanmean(rest_loss)
        flagged = (not math.isnan(p_value) and p_value < alpha and bin_loss.size >= MIN_FLAG_SAMPLES
                   and mean_loss > rest_mean)
        row = {"label": labels[b], "low": lows[b], "high": highs[b], "count": int(inside.sum()),
               "mean_loss": mean_loss}
        row |= {f"mean_{c}": _nanmean(field_ious[c][inside]) for c in iou_columns}
        row |= {"flagged": bool(flagged), "p_value": float(p_value)}
        rows.append(row)
    columns = ["label", "low", "high", "count", "mean_loss", *(f"mean_{c}" for c in iou_columns), "flagged",
               "p_value"]
    bins = pd.DataFrame(rows, columns=columns).astype({"label": object, "low": float, "high": float,
                                                       "count": np.int64, "flagged": bool, "p_value": float})

    x = _field_as_float(column)
    return MetadataDashboard(
        field=name,
        bins=bins,
        spearman_loss=_spearman(x, loss),
        spearman_iou={c: _spearman(x, ious[c]) for c in iou_columns},
        flagged_bins=[row["label"] for row in rows if row["flagged"]],
        missing=int((~present).sum()),
        categorical=bool(categorical),
    )


def metadata_dashboards(samples: pd.DataFrame, *, metadata_columns: Sequence[str], iou_columns: Sequence[str],
                        loss_column: str = "loss", max_bins: int = 8, alpha: float = 0.01) -> list[MetadataDashboard]:
    """One dashboard per non-constant metadata field, in the order of `metadata_columns`.

    Args:
        samples: one row per sample, holding the metadata, loss and IoU columns (IoU NaN = undefined).
        metadata_columns: fields to bin (numeric, boolean, or non-numeric with <= max_bins values).
        iou_columns: metric columns summarised per bin as ``mean_<column>`` (NaN-ignoring), e.g.
            ``iou_person``, ``mean_iou``.
        loss_column: the per-sample loss column.
        max_bins: most bins per field (>= 2).
        alpha: family-wise significance level for flagging bins (0 < alpha < 1).
    """
    if int(max_bins) < 2:
        raise ValueError(f"max_bins must be >= 2, got {max_bins}")
    if not 0.0 < float(alpha) < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    metadata_columns, iou_columns = list(metadata_columns), list(iou_columns)
    missing_columns = [c for c in (*metadata_columns, *iou_columns, loss_column) if c not in samples.columns]
    if missing_columns:
        raise KeyError(f"columns not in the samples table: {missing_columns}")
    loss = _numeric_column(samples, loss_column)
    ious = {c: _numeric_column(samples, c) for c in iou_columns}
    dashboards = []
    for name in metadata_columns:
        dashboard = _dashboard(samples, name, iou_columns, loss, ious, int(max_bins), float(alpha))
        if dashboard is not None:
            dashboards.append(dashboard)
    return dashboards


# ---------------------------------------------------------------------------------------------------- export


def _json_value(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return None if not math.isfinite(float(value)) else float(value)
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    return value


def dashboards_to_records(dashboards: Iterable[MetadataDashboard]) -> list[dict[str, Any]]:
    """JSON-serialisable records (NaN / ±Inf -> None, numpy scalars -> Python) for the HTML report.

    Each record: ``field``, ``missing``, ``categorical``, ``spearman_loss``, ``spearman_iou`` (dict),
    ``flagged_bins`` (list of labels) and ``bins`` (list of dicts with the bin table's columns).
    """
    records = []
    for dashboard in dashboards:
        records.append({
            "field": dashboard.field,
            "missing": int(dashboard.missing),
            "categorical": bool(dashboard.categorical),
            "spearman_loss": _json_value(dashboard.spearman_loss),
            "spearman_iou": _json_value(dict(dashboard.spearman_iou)),
            "flagged_bins": [str(label) for label in dashboard.flagged_bins],
            "bins": [_json_value(row) for row in dashboard.bins.to_dict(orient="records")],
        })
    return records
