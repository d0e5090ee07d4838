"""Ranked, statistically corrected insights from the per-sample analysis table (Tensorleap-platform style).

Input: one row per usable sample (``key``, ``split``, ``cluster``, ``loss``, ``mean_iou``, ``iou_<class>``, the
metadata columns, ``label_issue_score``) and three row-aligned embeddings: ``latent`` (the latent map's input),
``appearance`` (colour-layout descriptors, :mod:`coco_seg.analysis.appearance`) and optionally ``encoder``
(encoder features). A row is labeled when its split is not "unlabeled"; the reference split is "training".

Common rules. Every family of tests is corrected with Holm–Bonferroni (:func:`holm`: NaN p-values are no test);
a finding is reported only when its adjusted p < ``alpha``. Severity lies in [0, 1]; findings are sorted by
severity (descending; ties by kind, then title). Each finding lists at most ``max_samples`` sample ids and at
most MAX_EVIDENCE_ROWS rows per evidence list, with the full count beside it. An analysis that has nothing to
run on (no training split, fewer than 2 clusters, ...) is recorded in ``skipped`` with its reason.

1. ``low_performance_cluster``. Labeled rows with a finite loss; for every cluster with >= min_cluster_size of
   them inside and outside: one-sided Mann–Whitney U (loss in the cluster greater than the rest), Holm over the
   clusters. Severity = rank-biserial correlation 2U/(n1·n2) − 1, clipped to [0, 1]. The cluster's composition
   (``over_represented_metadata``): per metadata field a two-sided Mann–Whitney test of all the cluster's rows
   (labeled or not, finite values) against all other rows, Holm over the fields; each significant field with its
   means and standardized difference (mean − mean_rest) / pooled within-group sd (the overall sd when both
   groups are constant), sorted by |standardized difference|. ``splits`` counts all the cluster's rows.
   Sample ids: the cluster's labeled rows by loss, highest first (the clearest examples of the failure).
2. ``metadata_trend``. For each (metadata field with >= 2 distinct finite values, metric in loss and each
   ``iou_<class>``), on labeled rows where both are finite (at least 2·min_bin_size of them, metric not
   constant; for ``iou_<class>`` only rows whose ground truth holds the class, ``<class>_percent`` > 0, where
   the table has that column): Spearman ρ, and Kruskal–Wallis over bins — quantile bins (``pd.qcut``,
   trend_bins, duplicate edges dropped; when ties leave fewer than 2 bins of min_bin_size rows, one split at the
   distinct value that balances the two sides best), or the two values of a bool or two-valued field — keeping bins of
   >= min_bin_size rows and needing >= 2 of them. The pair's p = min(1, 2·min(p_spearman, p_kruskal))
   (Bonferroni over the two tests). Holm over all pairs; per field at most one finding, its significant metric
   of smallest adjusted p (ties: the larger severity), the field's other significant metrics listed in
   ``other_significant_metrics``. Severity = max(|ρ|, sqrt(ε²)), ε² = H / (n − 1). Direction from the sign of
   ρ (of the last bin's mean minus the first's when ρ is 0 or undefined): a higher loss or a lower IoU is
   worse. Sample ids: the worst bin's rows, worst metric value first.
3. ``label_issues``. Labeled rows whose share of flagged pixels (1 − label_issue_score) reaches the higher of
   label_issue_share and the robust upper fence of all labeled rows' shares (median + 3 × 1.4826 × MAD): a share
   typical of the dataset is no finding. No significance test: cleanlab's confident learning already is the decision.
   Severity = min(1, 10 × flagged share of labeled rows). Sample ids by score, lowest first.
4. ``out_of_distribution``. Reference: the training rows (at least ood_neighbors + 2). Spaces: latent and
   encoder, centred on the training mean and scaled to unit length (centring removes the component all pooled
   CNN features share, which would push every cosine towards 1); appearance scaled to unit length only (it is a
   unit colour-layout descriptor without DC terms already, so it has no such shared component); image statistics
   (when given) standardized per statistic on the training rows (appearance.standardized_rows). A row's
   distance = mean Euclidean distance to its ood_neighbors nearest training rows (a training row's own row is
   left out; sklearn searches in chunks of query rows, never an N × N matrix). Robust z of log(distance)
   against the training rows' own log-distances: (x − median) / (1.4826·MAD) (the scale floored at 1e-12 when
   the MAD is 0); one-sided p = norm.sf(z) per space, combined per row as min p × number of spaces (Bonferroni,
   capped at 1); Holm over all non-training rows (training rows are the reference, not tested). One finding per
   split with flagged rows; severity = min(1, 10 × flagged share of the split); sample ids by the largest z over
   the spaces, highest first.
5. ``duplicates``. Per split, rows of :func:`~coco_seg.analysis.appearance.duplicate_space` (encoder view
   centred on the training rows), whose dot product is the mean of the two views' cosines. Pairs with
   dot >= duplicate_similarity, found from the dot products of a chunk of rows with every row (never an N × N
   matrix). Groups are the connected components of those pairs (a chain A~B~C is one group), kept as a spanning
   forest whenever the pairs held grow large, so a split of many copies of one image needs O(N) memory. Severity = min(1, 10 × share of the split's rows that
   are in a group beyond the first member of each group). A group is ``exact`` when its most similar pair
   reaches exact_similarity. Sample ids: group members, most similar group first.
6. ``leakage``. Per non-training split, every row's nearest training row in the same duplicate space; leaked when
   their dot product >= duplicate_similarity, ``exact`` when >= exact_similarity. Severity = min(1, 10 × leaked
   share of the split), at least 0.5 when an exact copy exists. Sample ids: the leaked rows, most similar first.
7. ``domain_gap``. Each non-training split with >= min_cluster_size rows against training (also >=
   min_cluster_size rows): per metadata field a two-sample Kolmogorov–Smirnov test on the finite values (each
   side >= min_cluster_size of them), and an embedding test: the biased MMD² with an RBF kernel on the latent
   rows (centred on the training mean, unit length), each side subsampled to <= max_gap_samples rows (numpy
   rng seeded by ``seed``), bandwidth = median pairwise distance of the pooled subsample; its p-value from
   ``permutations`` label permutations computed at once: the pooled kernel K is built once and all statistics
   are the column sums of W ⊙ (K @ W), W holding ±1/n weights per permutation; p = (1 + #{perm >= observed}) /
   (1 + permutations). Two Holm families: the KS tests of all (split, field) pairs, and the embedding tests (one
   per split; pooled with dozens of KS tests, a permutation p-value could never pass). One finding per split with a significant
   test; severity = the largest KS D or sqrt(MMD² / 2) among its significant tests. Sample ids: the split's rows
   by the MMD witness function (mean kernel to the split's subsample minus mean kernel to training's), highest
   first, evaluated in chunks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from coco_seg.analysis.appearance import duplicate_space, standardized_rows, unit_rows
from coco_seg.atomic import strict_json, write_json_atomically

__all__ = [
    "KINDS",
    "InsightsConfig",
    "Finding",
    "InsightsResults",
    "holm",
    "find_insights",
    "low_performance_clusters",
    "metadata_trends",
    "label_issue_findings",
    "out_of_distribution",
    "duplicate_findings",
    "leakage_findings",
    "domain_gap_findings",
]

KINDS = ("low_performance_cluster", "metadata_trend", "label_issues", "out_of_distribution", "duplicates",
         "leakage", "domain_gap")
REFERENCE_SPLIT = "training"
UNLABELED_SPLIT = "unlabeled"
OOD_SPACES = ("latent", "appearance", "encoder", "image_statistics")
MAX_EVIDENCE_ROWS = 50  # rows per evidence list (pairs, groups, samples); the full count is given beside it
MAD_TO_SD = 1.4826  # MAD of a normal distribution x this = its standard deviation
_CHUNK_ELEMENTS = 1 << 20  # float64 query x base distances per chunk (8 MiB)


# -------------------------------------------------------------------------------------------------- config ---


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"InsightsConfig.{name} must be an integer >= {minimum}, got {value!r}")


def _check_float(name: str, value: Any, low: float, high: float, *, low_open: bool, high_open: bool) -> None:
    valid = not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating))
    if valid:
        value = float(value)
        valid = (math.isfinite(value) and (value > low if low_open else value >= low)
                 and (value < high if high_open else value <= high))
    if not valid:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ValueError(f"InsightsConfig.{name} must be a number in {interval}, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class InsightsConfig:
    """Options of :func:`find_insights` (see the module docstring for what each one steers)."""

    alpha: float = 0.05  # family-wise error rate after Holm
    min_cluster_size: int = 5
    trend_bins: int = 5  # quantile bins for metadata trends
    min_bin_size: int = 5
    duplicate_similarity: float = 0.82  # on duplicate_space's dot product (see appearance.py's docstring)
    exact_similarity: float = 0.999
    ood_neighbors: int = 5
    permutations: int = 1000  # MMD permutation test
    max_gap_samples: int = 500  # per split, subsample for MMD
    label_issue_share: float = 0.02  # "mislabeled" when >= this share of a sample's pixels is flagged
    max_samples: int = 24  # sample_ids listed per finding
    seed: int = 0

    def __post_init__(self) -> None:
        _check_float("alpha", self.alpha, 0.0, 1.0, low_open=True, high_open=True)
        _check_int("min_cluster_size", self.min_cluster_size, 2)
        _check_int("trend_bins", self.trend_bins, 2)
        _check_int("min_bin_size", self.min_bin_size, 2)
        _check_float("duplicate_similarity", self.duplicate_similarity, 0.0, 1.0, low_open=True, high_open=False)
        _check_float("exact_similarity", self.exact_similarity, 0.0, 1.0, low_open=True, high_open=False)
        if self.exact_similarity < self.duplicate_similarity:
            raise ValueError(f"InsightsConfig.exact_similarity ({self.exact_similarity}) must be >= "
                             f"duplicate_similarity ({self.duplicate_similarity})")
        _check_int("ood_neighbors", self.ood_neighbors, 1)
        _check_int("permutations", self.permutations, 1)
        _check_int("max_gap_samples", self.max_gap_samples, 2)
        _check_float("label_issue_share", self.label_issue_share, 0.0, 1.0, low_open=True, high_open=False)
        _check_int("max_samples", self.max_samples, 1)
        _check_int("seed", self.seed, 0)


# ------------------------------------------------------------------------------------------------ results ---


@dataclass
class Finding:
    """One insight: what kind, how severe (0..1), a title, a one-sentence summary, example samples, evidence."""

    kind: str
    severity: float
    title: str
    summary: str
    sample_ids: list[str]
    evidence: dict

    def to_record(self) -> dict:
        """Plain JSON types only (non-finite floats → None), keys in the dataclass order."""
        return {
            "kind": str(self.kind),
            "severity": strict_json(self.severity),
            "title": str(self.title),
            "summary": str(self.summary),
            "sample_ids": [str(key) for key in self.sample_ids],
            "evidence": strict_json(self.evidence),
        }


def _sort_key(finding: Finding) -> tuple:
    return -float(finding.severity), finding.kind, finding.title


@dataclass
class InsightsResults:
    """Findings, most severe first, and the analyses that had nothing to run on."""

    findings: list[Finding] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)  # [{"kind": ..., "reason": ...}]

    def __post_init__(self) -> None:
        self.findings = sorted(self.findings, key=_sort_key)

    def to_records(self) -> dict:
        return {"findings": [finding.to_record() for finding in self.findings],
                "skipped": [strict_json(dict(entry)) for entry in self.skipped]}

    def write(self, folder: Path) -> Path:
        """Write ``folder/insights.json`` (strict JSON, atomically) and return its path."""
        path = Path(folder) / "insights.json"
        write_json_atomically(path, self.to_records(), indent=2)
        return path


# --------------------------------------------------------------------------------------------- statistics ---


def holm(p_values) -> np.ndarray:
    """Holm–Bonferroni adjusted p-values, in the input's order: the i-th smallest of m finite p-values becomes
    max over j <= i of min(1, (m − j + 1)·p_(j)). NaN stays NaN and does not count towards m; a p-value outside
    [0, 1] raises ValueError."""
    p = np.asarray(p_values, dtype=np.float64).reshape(-1)
    adjusted = np.full(p.shape, np.nan)
    tested = np.flatnonzero(~np.isnan(p))
    if tested.size == 0:
        return adjusted
    if np.any((p[tested] < 0) | (p[tested] > 1)):
        raise ValueError("p-values must lie in [0, 1] (or be NaN)")
    order = tested[np.argsort(p[tested], kind="stable")]
    m = order.size
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adjusted[order] = np.maximum.accumulate(scaled)
    return adjusted


def _clip01(value: float) -> float:
    return float(min(1.0, max(0.0, value))) if math.isfinite(value) else 0.0


def _fmt(value: float) -> str:
    return format(float(value), ".3g")


def _fmt_p(value: float) -> str:
    return format(float(value), ".2g")


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _distinct(values: np.ndarray) -> int:
    return int(np.unique(values).size)


def _mann_whitney(inside: np.ndarray, outside: np.ndarray, alternative: str) -> tuple[float, float]:
    """(U of ``inside``, p); (NaN, NaN) when the pooled values are constant (no test)."""
    if inside.size == 0 or outside.size == 0 or _distinct(np.concatenate([inside, outside])) < 2:
        return float("nan"), float("nan")
    result = stats.mannwhitneyu(inside, outside, alternative=alternative)
    return float(result.statistic), float(result.pvalue)


def _standardized_difference(inside: np.ndarray, outside: np.ndarray) -> float:
    n1, n2 = inside.size, outside.size
    pooled_variance = ((n1 - 1) * inside.var(ddof=1) + (n2 - 1) * outside.var(ddof=1)) / max(1, n1 + n2 - 2)
    sd = math.sqrt(max(0.0, float(pooled_variance)))
    if sd <= 1e-12:  # both groups constant (but different): the overall spread instead
        sd = float(np.concatenate([inside, outside]).std(ddof=1))
    return float((inside.mean() - outside.mean()) / sd) if sd > 1e-12 else 0.0


# ------------------------------------------------------------------------------------------------ validation ---


@dataclass(frozen=True, eq=False)
class _Table:
    frame: pd.DataFrame  # the samples, index reset
    keys: np.ndarray  # (N,) str
    splits: np.ndarray  # (N,) str
    labeled: np.ndarray  # (N,) bool: split != "unlabeled"
    training: np.ndarray  # (N,) bool: split == "training"

    def column(self, name: str) -> np.ndarray:
        """A numeric or bool column as float64 (bool → 0/1, missing → NaN)."""
        values = self.frame[name]
        if pd.api.types.is_bool_dtype(values.dtype):
            return values.to_numpy(dtype=np.float64, na_value=np.nan)
        try:
            return pd.to_numeric(values, errors="raise").astype("float64").to_numpy(dtype=np.float64,
                                                                                     na_value=np.nan)
        except (TypeError, ValueError) as error:
            raise ValueError(f"column {name!r} must be numeric or bool, got dtype {values.dtype}") from error


def _prepare(samples: pd.DataFrame, required: Sequence[str]) -> _Table:
    if not isinstance(samples, pd.DataFrame):
        raise ValueError(f"samples must be a pandas DataFrame, got {type(samples).__name__}")
    if len(samples) == 0:
        raise ValueError("samples is empty: there is nothing to analyse")
    required = list(dict.fromkeys(["key", "split", *required]))
    missing = [name for name in required if name not in samples.columns]
    if missing:
        raise ValueError(f"samples lacks the required column(s) {missing}")
    frame = samples.reset_index(drop=True)
    if frame["key"].isna().any() or frame["split"].isna().any():
        raise ValueError("samples has missing values in 'key' or 'split'")
    keys = frame["key"].astype(str).to_numpy(dtype=object)
    repeated = pd.Series(keys).duplicated(keep=False)
    if repeated.any():
        listed = sorted(set(keys[repeated.to_numpy()]))
        raise ValueError(f"samples has duplicate keys: {listed[:5]}{' ...' if len(listed) > 5 else ''}")
    splits = frame["split"].astype(str).to_numpy(dtype=object)
    table = _Table(frame=frame, keys=keys, splits=splits, labeled=splits != UNLABELED_SPLIT,
                   training=splits == REFERENCE_SPLIT)
    for name in required[2:]:
        table.column(name)  # raises for a non-numeric column
    if "cluster" in required:
        clusters = table.column("cluster")
        if not np.all(np.isfinite(clusters)) or np.any(clusters != np.round(clusters)):
            raise ValueError("column 'cluster' must hold an integer for every row")
    return table


def _matrix(values: np.ndarray | None, *, name: str, rows: int, optional: bool = False) -> np.ndarray | None:
    if values is None:
        if optional:
            return None
        raise ValueError(f"{name} is required")
    matrix = np.asarray(values)
    if matrix.ndim != 2 or matrix.shape[1] < 1:
        raise ValueError(f"{name} must be a 2-D (N, D) array with D >= 1, got shape {matrix.shape}")
    if matrix.shape[0] != rows:
        raise ValueError(f"{name} has {matrix.shape[0]} rows but samples has {rows}: they must be row-aligned")
    if not np.issubdtype(matrix.dtype, np.number) or np.issubdtype(matrix.dtype, np.complexfloating):
        raise ValueError(f"{name} must hold real numbers, got dtype {matrix.dtype}")
    if not np.isfinite(matrix).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    return matrix


def _metric_columns(class_names: Sequence[str]) -> list[str]:
    if isinstance(class_names, str):
        raise ValueError("class_names must be a sequence of names, not one string")
    return [f"iou_{name}" for name in class_names]


def _listed(names: Sequence[str], what: str) -> list[str]:
    if isinstance(names, str):
        raise ValueError(f"{what} must be a sequence of column names, not one string")
    return list(names)


def _capped(ids: Sequence[str], config: InsightsConfig) -> list[str]:
    return [str(key) for key in list(ids)[: config.max_samples]]


# ------------------------------------------------------------------------------- 1. low-performance clusters ---


def _low_performance_clusters(table: _Table, metadata_columns: list[str],
                              config: InsightsConfig) -> tuple[list[Finding], str | None]:
    loss, iou = table.column("loss"), table.column("mean_iou")
    clusters = table.column("cluster").astype(np.int64)
    usable = table.labeled & np.isfinite(loss)
    if not usable.any():
        return [], "no labeled samples with a finite loss"
    candidates = []
    for cluster in np.unique(clusters[usable]):
        inside = usable & (clusters == cluster)
        outside = usable & (clusters != cluster)
        if inside.sum() < config.min_cluster_size or outside.sum() < config.min_cluster_size:
            continue
        u, p = _mann_whitney(loss[inside], loss[outside], "greater")
        candidates.append((int(cluster), inside, outside, u, p))
    if not candidates:
        return [], f"fewer than 2 clusters with at least {config.min_cluster_size} labeled samples"
    adjusted = holm([candidate[4] for candidate in candidates])
    metadata = {name: table.column(name) for name in metadata_columns}
    findings = []
    for (cluster, inside, outside, u, p), p_adjusted in zip(candidates, adjusted):
        if not p_adjusted < config.alpha:
            continue
        n1, n2 = int(inside.sum()), int(outside.sum())
        effect = 2.0 * u / (n1 * n2) - 1.0
        composition = _cluster_composition(clusters == cluster, metadata, config)
        order = np.flatnonzero(inside)[np.argsort(-loss[inside], kind="stable")]
        members = clusters == cluster
        split_names, split_counts = np.unique(table.splits[members], return_counts=True)
        evidence = {
            "cluster": cluster, "size": n1, "size_rest": n2,
            "mean_loss": float(loss[inside].mean()), "mean_loss_rest": float(loss[outside].mean()),
            "mean_iou": float(np.nanmean(iou[inside])) if np.isfinite(iou[inside]).any() else float("nan"),
            "mean_iou_rest": float(np.nanmean(iou[outside])) if np.isfinite(iou[outside]).any() else float("nan"),
            "p_value": p, "p_value_adjusted": float(p_adjusted), "effect_size": float(effect),
            "over_represented_metadata": composition,
            "splits": {str(name): int(count) for name, count in zip(split_names, split_counts)},
        }
        summary = (f"Cluster {cluster} ({n1} samples) has mean loss {_fmt(evidence['mean_loss'])} vs "
                   f"{_fmt(evidence['mean_loss_rest'])} elsewhere (p={_fmt_p(p_adjusted)} after Holm)")
        if composition:
            described = ", ".join(
                f"{'higher' if item['standardized_difference'] > 0 else 'lower'} {item['field']} "
                f"({_fmt(item['mean'])} vs {_fmt(item['mean_rest'])})" for item in composition[:2])
            summary += f"; its samples have {described}"
        findings.append(Finding(kind="low_performance_cluster", severity=_clip01(effect),
                                title=f"Cluster {cluster} has high loss", summary=summary + ".",
                                sample_ids=_capped(table.keys[order], config), evidence=evidence))
    return findings, None


def _cluster_composition(members: np.ndarray, metadata: dict[str, np.ndarray],
                         config: InsightsConfig) -> list[dict]:
    """Metadata fields whose distribution in the cluster (all its rows) differs from the rest's, Holm-corrected."""
    tested = []
    for name, values in metadata.items():
        finite = np.isfinite(values)
        inside, outside = values[members & finite], values[~members & finite]
        if inside.size < 2 or outside.size < 2:
            continue
        _, p = _mann_whitney(inside, outside, "two-sided")
        tested.append((name, inside, outside, p))
    adjusted = holm([item[3] for item in tested])
    composition = [
        {"field": name, "mean": float(inside.mean()), "mean_rest": float(outside.mean()),
         "standardized_difference": _standardized_difference(inside, outside), "p_value_adjusted": float(q)}
        for (name, inside, outside, _), q in zip(tested, adjusted) if q < config.alpha]
    return sorted(composition, key=lambda item: -abs(item["standardized_difference"]))


def low_performance_clusters(samples: pd.DataFrame, *, metadata_columns: Sequence[str],
                             config: InsightsConfig = InsightsConfig()) -> list[Finding]:
    """Clusters whose labeled samples have a significantly higher loss than the rest (kind 1 of the module doc)."""
    metadata_columns = _listed(metadata_columns, "metadata_columns")
    table = _prepare(samples, ["cluster", "loss", "mean_iou", *metadata_columns])
    return _low_performance_clusters(table, metadata_columns, config)[0]


# -------------------------------------------------------------------------------------- 2. metadata trends ---


@dataclass
class _Trend:
    field: str
    metric: str
    rows: np.ndarray  # row indices used
    rho: float
    p_spearman: float
    h: float
    p_kruskal: float
    p_value: float
    severity: float
    direction: str
    bins: list[dict]
    worst_rows: np.ndarray  # rows of the worst bin


def _trend_bins(values: np.ndarray, bool_field: bool, config: InsightsConfig) -> tuple[list[str], np.ndarray]:
    """(labels, bin index per value) for a trend test."""
    distinct = np.unique(values)
    if distinct.size == 2:
        labels = [str(bool(v)) if bool_field else _fmt(v) for v in distinct]
        return labels, np.searchsorted(distinct, values)
    codes = pd.qcut(values, config.trend_bins, labels=False, duplicates="drop")
    codes = np.asarray(codes, dtype=np.int64)
    if np.sum(np.bincount(codes) >= config.min_bin_size) < 2:
        # Ties collapsed the quantile bins (a count that is mostly 0): split once, at the distinct value that
        # leaves the most samples on the smaller side, so "0 vs more" is still compared.
        below = np.searchsorted(np.sort(values), distinct, side="right")
        best = int(np.argmax(np.minimum(below, values.size - below)[:-1])) if distinct.size > 1 else 0
        codes = (values > distinct[best]).astype(np.int64)
    labels = []
    for code in range(int(codes.max()) + 1):
        inside = values[codes == code]
        labels.append(f"[{_fmt(inside.min())}, {_fmt(inside.max())}]" if inside.size else "")
    return labels, codes


def _metric_rows(table: _Table, metric: str) -> np.ndarray:
    """(N,) bool: the rows a metric's trend is measured on. A class's IoU only where the ground truth holds the
    class (``<class>_percent`` > 0, when the table has that column): elsewhere it is 0 for any false-positive
    pixel, and mixing those samples in would turn "how well is the class segmented" into "is the class there"."""
    rows = table.labeled.copy()
    if metric.startswith("iou_") and f"{metric[4:]}_percent" in table.frame.columns:
        share = table.column(f"{metric[4:]}_percent")
        rows &= np.isfinite(share) & (share > 0)
    return rows


def _trend(table: _Table, name: str, values: np.ndarray, bool_field: bool, metric: str, metric_values: np.ndarray,
           config: InsightsConfig) -> _Trend | None:
    rows = np.flatnonzero(_metric_rows(table, metric) & np.isfinite(values) & np.isfinite(metric_values))
    if rows.size < 2 * config.min_bin_size:
        return None
    x, y = values[rows], metric_values[rows]
    if _distinct(x) < 2 or _distinct(y) < 2:
        return None
    rho, p_spearman = (float(v) for v in stats.spearmanr(x, y))
    labels, codes = _trend_bins(x, bool_field, config)
    kept = [code for code in range(len(labels)) if np.sum(codes == code) >= config.min_bin_size]
    h = p_kruskal = float("nan")
    bins, bin_rows = [], []
    for code in kept:
        inside = codes == code
        bins.append({"range": labels[code], "count": int(inside.sum()), "mean": float(y[inside].mean())})
        bin_rows.append(rows[inside])
    if len(kept) >= 2:
        groups = [y[codes == code] for code in kept]
        if _distinct(np.concatenate(groups)) >= 2:
            h, p_kruskal = (float(v) for v in stats.kruskal(*groups))
    finite_p = [p for p in (p_spearman, p_kruskal) if math.isfinite(p)]
    if not finite_p or not bins:
        return None
    n_binned = sum(item["count"] for item in bins)
    epsilon_squared = h / (n_binned - 1) if math.isfinite(h) and n_binned > 1 else 0.0
    severity = _clip01(max(abs(rho) if math.isfinite(rho) else 0.0, math.sqrt(max(0.0, epsilon_squared))))
    higher_is_worse = metric == "loss"
    slope = rho if math.isfinite(rho) and rho != 0 else bins[-1]["mean"] - bins[0]["mean"]
    direction = f"{'worse' if (slope > 0) == higher_is_worse else 'better'} as {name} rises"
    means = [item["mean"] for item in bins]
    worst = int(np.argmax(means) if higher_is_worse else np.argmin(means))
    for index, item in enumerate(bins):
        item["worst"] = index == worst
    worst_rows = bin_rows[worst]
    worst_rows = worst_rows[np.argsort(-metric_values[worst_rows] if higher_is_worse else metric_values[worst_rows],
                                       kind="stable")]
    return _Trend(field=name, metric=metric, rows=rows, rho=rho, p_spearman=p_spearman, h=h, p_kruskal=p_kruskal,
                  p_value=min(1.0, 2.0 * min(finite_p)), severity=severity, direction=direction, bins=bins,
                  worst_rows=worst_rows)


def _metadata_trends(table: _Table, metadata_columns: list[str], metric_columns: list[str],
                     config: InsightsConfig) -> tuple[list[Finding], str | None]:
    if not metadata_columns:
        return [], "no metadata columns"
    if not table.labeled.any():
        return [], "no labeled samples"
    metrics = {name: table.column(name) for name in ["loss", *metric_columns]}
    trends = []
    for name in metadata_columns:
        values = table.column(name)
        bool_field = pd.api.types.is_bool_dtype(table.frame[name].dtype)
        if _distinct(values[table.labeled & np.isfinite(values)]) < 2:
            continue
        for metric, metric_values in metrics.items():
            trend = _trend(table, name, values, bool_field, metric, metric_values, config)
            if trend is not None:
                trends.append(trend)
    if not trends:
        return [], "no (metadata field, metric) pair with enough labeled samples to test"
    adjusted = holm([trend.p_value for trend in trends])
    best: dict[str, tuple[_Trend, float]] = {}
    significant: dict[str, list[tuple[_Trend, float]]] = {}
    for trend, p_adjusted in zip(trends, adjusted):
        if not p_adjusted < config.alpha:
            continue
        significant.setdefault(trend.field, []).append((trend, float(p_adjusted)))
        held = best.get(trend.field)
        if held is None or (p_adjusted, -trend.severity) < (held[1], -held[0].severity):
            best[trend.field] = (trend, float(p_adjusted))
    findings = []
    for trend, p_adjusted in best.values():
        worst = next(item for item in trend.bins if item["worst"])
        overall = float(table.column(trend.metric)[trend.rows].mean())
        evidence = {
            "field": trend.field, "metric": trend.metric, "spearman_rho": trend.rho,
            "p_value_spearman": trend.p_spearman, "kruskal_h": trend.h, "p_value_kruskal": trend.p_kruskal,
            "p_value_adjusted": p_adjusted, "direction": trend.direction, "samples": int(trend.rows.size),
            "bins": [{"range": item["range"], "count": item["count"], "mean": item["mean"]} for item in trend.bins],
            "worst_bin": worst["range"],
            "other_significant_metrics": [
                {"metric": other.metric, "spearman_rho": other.rho, "p_value_adjusted": q,
                 "direction": other.direction, "samples": int(other.rows.size)}
                for other, q in sorted(significant[trend.field], key=lambda item: item[1]) if other is not trend],
        }
        summary = (f"{trend.metric} gets {trend.direction} (Spearman rho={trend.rho:.2f}, p={_fmt_p(p_adjusted)} "
                   f"after Holm); the worst {trend.field} bin {worst['range']} ({worst['count']} samples) has mean "
                   f"{trend.metric} {_fmt(worst['mean'])} vs {_fmt(overall)} overall.")
        findings.append(Finding(kind="metadata_trend", severity=trend.severity,
                                title=f"{trend.metric} {trend.direction}", summary=summary,
                                sample_ids=_capped(table.keys[trend.worst_rows], config), evidence=evidence))
    return findings, None


def metadata_trends(samples: pd.DataFrame, *, metadata_columns: Sequence[str], class_names: Sequence[str],
                    config: InsightsConfig = InsightsConfig()) -> list[Finding]:
    """Metadata fields along which loss or a class IoU changes significantly (kind 2 of the module doc)."""
    metadata_columns = _listed(metadata_columns, "metadata_columns")
    metric_columns = _metric_columns(class_names)
    table = _prepare(samples, ["loss", *metric_columns, *metadata_columns])
    return _metadata_trends(table, metadata_columns, metric_columns, config)[0]


# ------------------------------------------------------------------------------------------ 3. label issues ---


def _label_issues(table: _Table, class_swaps: Sequence[Mapping], planted_recall: Mapping | None,
                  config: InsightsConfig) -> tuple[list[Finding], str | None]:
    scores = table.column("label_issue_score")
    scored = table.labeled & np.isfinite(scores)
    labeled = int(scored.sum())
    if labeled == 0:
        return [], "no labeled samples with a label_issue_score"
    # A share typical of the whole dataset (a mediocre model on coarse COCO polygons flags boundary pixels
    # everywhere) is no finding: the bar is the higher of label_issue_share and the robust upper fence of the
    # labeled samples' shares, median + 3 × 1.4826 × MAD.
    shares = 1.0 - scores[scored]
    median = float(np.median(shares))
    fence = median + 3.0 * MAD_TO_SD * float(np.median(np.abs(shares - median)))
    threshold = max(config.label_issue_share, fence)
    # 1e-9: a score of exactly 1 − share, computed elsewhere, may carry a rounding error either way
    flagged_mask = scored & (scores <= 1.0 - threshold + 1e-9)
    flagged = int(flagged_mask.sum())
    if flagged == 0:
        return [], None
    rows = np.flatnonzero(flagged_mask)
    rows = rows[np.argsort(scores[rows], kind="stable")]
    share = flagged / labeled
    class_swaps = list(class_swaps)
    swaps = [dict(record) for record in class_swaps[:5]]
    evidence = {"flagged": flagged, "labeled": labeled, "share": share, "threshold": threshold,
                "configured_threshold": config.label_issue_share, "robust_fence": fence,
                "median_issue_share": median,
                "class_swaps": swaps, "class_swap_count": len(class_swaps)}
    if planted_recall is not None:
        evidence["planted_recall"] = dict(planted_recall)
    summary = (f"{flagged} of {_count(labeled, 'labeled sample')} ({share:.1%}) "
               f"{'has' if flagged == 1 else 'have'} at least {threshold:.1%} of the pixels flagged "
               f"as likely mislabeled by confident learning (the median sample {median:.1%})")
    if swaps:
        top = swaps[0]
        summary += (f"; the largest class swap is {top.get('given_label')} labeled where the model sees "
                    f"{top.get('predicted_label')} ({top.get('pixels')} pixels)")
    return [Finding(kind="label_issues", severity=_clip01(10.0 * share),
                    title=f"{_count(flagged, 'sample')} with likely label errors", summary=summary + ".",
                    sample_ids=_capped(table.keys[rows], config), evidence=evidence)], None


def label_issue_findings(samples: pd.DataFrame, *, class_swaps: Sequence[Mapping] = (),
                         planted_recall: Mapping | None = None,
                         config: InsightsConfig = InsightsConfig()) -> list[Finding]:
    """Labeled samples with a large share of pixels flagged by confident learning (kind 3 of the module doc)."""
    table = _prepare(samples, ["label_issue_score"])
    return _label_issues(table, class_swaps, planted_recall, config)[0]


# ----------------------------------------------------------------------------------- nearest-neighbour search ---


def _chunks(query_rows: int, base_rows: int):
    step = max(1, _CHUNK_ELEMENTS // max(1, base_rows))
    for start in range(0, query_rows, step):
        yield slice(start, min(query_rows, start + step))


def _nearest(base: np.ndarray, query: np.ndarray, k: int, *, exclude_self: bool) -> tuple[np.ndarray, np.ndarray]:
    """(distances, indices) of the k nearest base rows of every query row, nearest first, searched in chunks of
    query rows. With ``exclude_self`` (query is base) a row's own index is dropped (the k+1-th neighbour when a
    duplicate pushed the row itself out of its list)."""
    from sklearn.neighbors import NearestNeighbors

    wanted = k + 1 if exclude_self else k
    search = NearestNeighbors(n_neighbors=wanted, algorithm="brute", metric="euclidean").fit(base)
    distances = np.empty((len(query), k))
    indices = np.empty((len(query), k), dtype=np.int64)
    for part in _chunks(len(query), len(base)):
        found_distances, found = search.kneighbors(query[part], n_neighbors=wanted)
        if exclude_self:
            drop = found == np.arange(part.start, part.stop)[:, None]
            drop[~drop.any(axis=1), -1] = True
            keep = ~drop
            found_distances = found_distances[keep].reshape(len(found), k)
            found = found[keep].reshape(len(found), k)
        distances[part], indices[part] = found_distances, found
    return distances, indices


# ----------------------------------------------------------------------------------- 4. out of distribution ---


def _robust_z(values: np.ndarray, reference: np.ndarray) -> np.ndarray:
    median = float(np.median(reference))
    scale = max(MAD_TO_SD * float(np.median(np.abs(reference - median))), 1e-12)
    return (values - median) / scale


def _out_of_distribution(table: _Table, spaces: dict[str, np.ndarray],
                         config: InsightsConfig) -> tuple[list[Finding], str | None]:
    k = config.ood_neighbors
    reference_size = int(table.training.sum())
    if reference_size == 0:
        return [], "no training split"
    if reference_size < k + 2:
        return [], f"fewer than {k + 2} training samples (ood_neighbors + 2)"
    tested_rows = np.flatnonzero(~table.training)
    if tested_rows.size == 0:
        return [], "no samples outside the training split"
    z_scores = {}
    for name, space in spaces.items():
        reference = space[table.training]
        own, _ = _nearest(reference, reference, k, exclude_self=True)
        others, _ = _nearest(reference, space[tested_rows], k, exclude_self=False)
        # 1e-12: an exact copy of a training row has distance 0, whose log would be -inf
        own_log, other_log = np.log(own.mean(axis=1) + 1e-12), np.log(others.mean(axis=1) + 1e-12)
        z_scores[name] = _robust_z(other_log, own_log)
    z = np.column_stack(list(z_scores.values()))
    combined = np.minimum(1.0, stats.norm.sf(z).min(axis=1) * len(spaces))
    adjusted = holm(combined)
    max_z = z.max(axis=1)
    flagged = adjusted < config.alpha
    findings = []
    space_names = list(spaces)
    for split in sorted(set(table.splits[tested_rows])):
        in_split = table.splits[tested_rows] == split
        hits = np.flatnonzero(in_split & flagged)
        if hits.size == 0:
            continue
        hits = hits[np.argsort(-max_z[hits], kind="stable")]
        tested, share = int(in_split.sum()), hits.size / int(in_split.sum())
        top = []
        for index in hits[:MAX_EVIDENCE_ROWS]:
            row = {"key": str(table.keys[tested_rows[index]]), "split": split}
            row |= {f"z_{name}": float(z_scores[name][index]) if name in z_scores else None
                    for name in OOD_SPACES}
            row["p_value_adjusted"] = float(adjusted[index])
            top.append(row)
        evidence = {"split": split, "flagged": int(hits.size), "tested": tested, "share": share,
                    "reference_size": reference_size, "neighbors": k, "spaces": space_names, "samples": top}
        summary = (f"{hits.size} of {_count(tested, f'{split} sample')} ({share:.1%}) lie far from their {k} nearest training "
                   f"samples in the {', '.join(space_names)} space(s) (robust z up to {_fmt(max_z[hits[0]])}, "
                   f"p<{config.alpha:g} after Holm against {reference_size} training samples).")
        findings.append(Finding(kind="out_of_distribution", severity=_clip01(10.0 * share),
                                title=f"{_count(int(hits.size), f'out-of-distribution {split} sample')}", summary=summary,
                                sample_ids=_capped(table.keys[tested_rows[hits]], config), evidence=evidence))
    return findings, None


def _ood_spaces(table: _Table, latent: np.ndarray, appearance: np.ndarray,
                encoder: np.ndarray | None, statistics: np.ndarray | None = None) -> dict[str, np.ndarray]:
    spaces = {}
    reference = table.training
    spaces["latent"] = unit_rows(latent, reference=reference)
    spaces["appearance"] = unit_rows(appearance)
    if encoder is not None:
        spaces["encoder"] = unit_rows(encoder, reference=reference)
    if statistics is not None:
        spaces["image_statistics"] = standardized_rows(statistics, reference=reference)
    return spaces


def out_of_distribution(samples: pd.DataFrame, *, latent: np.ndarray, appearance: np.ndarray,
                        encoder: np.ndarray | None = None, statistics: np.ndarray | None = None,
                        config: InsightsConfig = InsightsConfig()) -> list[Finding]:
    """Samples outside the training split that lie far from every training sample (kind 4 of the module doc)."""
    table = _prepare(samples, [])
    latent = _matrix(latent, name="latent", rows=len(table.keys))
    appearance = _matrix(appearance, name="appearance", rows=len(table.keys))
    encoder = _matrix(encoder, name="encoder", rows=len(table.keys), optional=True)
    statistics = _matrix(statistics, name="statistics", rows=len(table.keys), optional=True)
    return _out_of_distribution(table, _ood_spaces(table, latent, appearance, encoder, statistics), config)[0]


# ------------------------------------------------------------------------------- 5. duplicates, 6. leakage ---


_EDGE_BUDGET = 4_000_000  # similar pairs held before they are reduced to a spanning forest (~64 MB)


def _forest(rows: int, first: np.ndarray, second: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(component label per row, and the edges of a spanning forest: each row to its component's first row)."""
    graph = coo_matrix((np.ones(first.size, bool), (first, second)), shape=(rows, rows))
    _, labels = connected_components(graph, directed=False)
    lowest = np.full(labels.max() + 1, rows)
    np.minimum.at(lowest, labels, np.arange(rows))
    root = lowest[labels]
    moved = np.flatnonzero(root != np.arange(rows))
    return labels, moved, root[moved]


def _similar_groups(space: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Rows linked by dot >= threshold, grouped: ((N,) component label, (N,) each row's largest dot with another
    row). The dot products of a chunk of rows with every row decide (never an N × N matrix); the pairs found are
    reduced to a spanning forest whenever more than _EDGE_BUDGET are held, so memory stays O(N + budget) even
    when every row duplicates every other one."""
    rows = len(space)
    best = np.full(rows, -np.inf)
    firsts: list[np.ndarray] = []
    seconds: list[np.ndarray] = []
    held = 0
    for part in _chunks(rows, rows):
        block = space[part] @ space.T
        block[np.arange(part.stop - part.start), np.arange(part.start, part.stop)] = -np.inf  # not itself
        best[part] = block.max(axis=1)  # -inf for a split of one row
        first, second = np.nonzero(block >= threshold)
        del block  # before the next chunk's block is allocated: one block at a time
        first += part.start
        later = second > first  # each pair once
        firsts.append(first[later])
        seconds.append(second[later])
        held += int(later.sum())
        if held > _EDGE_BUDGET:
            _, kept_first, kept_second = _forest(rows, np.concatenate(firsts), np.concatenate(seconds))
            firsts, seconds, held = [kept_first], [kept_second], kept_first.size
    first = np.concatenate(firsts) if firsts else np.empty(0, np.int64)
    second = np.concatenate(seconds) if seconds else np.empty(0, np.int64)
    labels, _, _ = _forest(rows, first, second)
    return labels, best


def _duplicates(table: _Table, space: np.ndarray, config: InsightsConfig) -> tuple[list[Finding], str | None]:
    findings = []
    for split in sorted(set(table.splits)):
        rows = np.flatnonzero(table.splits == split)
        if rows.size < 2:
            continue
        labels, best = _similar_groups(space[rows], config.duplicate_similarity)
        sizes = np.bincount(labels)
        if sizes.max() < 2:
            continue
        order = np.argsort(labels, kind="stable")  # members of each group in row order
        bounds = np.concatenate([[0], np.cumsum(sizes)])
        groups = []
        for label in np.flatnonzero(sizes >= 2):
            members = order[bounds[label]:bounds[label + 1]]
            similarity = float(best[members].max())
            groups.append({"keys": [str(key) for key in table.keys[rows[members]]], "max_similarity": similarity,
                           "exact": bool(similarity >= config.exact_similarity)})
        groups.sort(key=lambda group: (-group["max_similarity"], group["keys"]))
        duplicated = sum(len(group["keys"]) - 1 for group in groups)
        share = duplicated / rows.size
        exact = sum(group["exact"] for group in groups)
        members = [key for group in groups for key in group["keys"]]
        evidence = {"split": split, "split_size": int(rows.size), "group_count": len(groups),
                    "duplicated_samples": duplicated, "exact_groups": exact, "share": share,
                    "groups": groups[:MAX_EVIDENCE_ROWS]}
        summary = (f"{_count(len(groups), 'group')} of near-duplicates in {split} hold {len(members)} samples, "
                   f"{duplicated} of them redundant ({share:.1%} of {rows.size}); {exact} of the groups hold exact "
                   f"copies.")
        findings.append(Finding(kind="duplicates", severity=_clip01(10.0 * share),
                                title=f"{_count(duplicated, 'redundant near-duplicate sample')} in {split}", summary=summary,
                                sample_ids=_capped(members, config), evidence=evidence))
    return findings, None


def _leakage(table: _Table, space: np.ndarray, config: InsightsConfig) -> tuple[list[Finding], str | None]:
    if not table.training.any():
        return [], "no training split"
    others = sorted(set(table.splits[~table.training]))
    if not others:
        return [], "no split besides training"
    reference_rows = np.flatnonzero(table.training)
    findings = []
    for split in others:
        rows = np.flatnonzero(table.splits == split)
        _, nearest = _nearest(space[reference_rows], space[rows], 1, exclude_self=False)
        partners = reference_rows[nearest[:, 0]]
        similarity = np.einsum("ij,ij->i", space[rows], space[partners])
        leaked = np.flatnonzero(similarity >= config.duplicate_similarity)
        if leaked.size == 0:
            continue
        leaked = leaked[np.argsort(-similarity[leaked], kind="stable")]
        exact = int(np.sum(similarity[leaked] >= config.exact_similarity))
        share = leaked.size / rows.size
        pairs = [{"key": str(table.keys[rows[i]]), "training_key": str(table.keys[partners[i]]),
                  "similarity": float(similarity[i]), "exact": bool(similarity[i] >= config.exact_similarity)}
                 for i in leaked[:MAX_EVIDENCE_ROWS]]
        severity = _clip01(10.0 * share)
        if exact:
            severity = max(severity, 0.5)  # an exact copy is leakage beyond doubt, however rare
        evidence = {"split": split, "split_size": int(rows.size), "leaked": int(leaked.size), "exact_copies": exact,
                    "share": share, "pairs": pairs}
        summary = (f"{leaked.size} of {_count(int(rows.size), f'{split} sample')} ({share:.1%}) "
                   f"{'is a near-copy' if leaked.size == 1 else 'are near-copies'} of training samples "
                   f"(similarity >= {config.duplicate_similarity:g}), {exact} of them exact.")
        findings.append(Finding(kind="leakage", severity=severity,
                                title=f"{_count(int(leaked.size), f'{split} sample')} leaked from training", summary=summary,
                                sample_ids=_capped(table.keys[rows[leaked]], config), evidence=evidence))
    return findings, None


def _duplicate_rows(table: _Table, appearance: np.ndarray, encoder: np.ndarray | None) -> np.ndarray:
    return duplicate_space(appearance, encoder, reference=table.training)


def _duplicate_inputs(samples: pd.DataFrame, appearance: np.ndarray,
                      encoder: np.ndarray | None) -> tuple[_Table, np.ndarray]:
    """The validated table and its rows in the near-duplicate space, for the public duplicate/leakage calls."""
    table = _prepare(samples, [])
    appearance = _matrix(appearance, name="appearance", rows=len(table.keys))
    encoder = _matrix(encoder, name="encoder", rows=len(table.keys), optional=True)
    return table, _duplicate_rows(table, appearance, encoder)


def duplicate_findings(samples: pd.DataFrame, *, appearance: np.ndarray, encoder: np.ndarray | None = None,
                       config: InsightsConfig = InsightsConfig()) -> list[Finding]:
    """Groups of near-duplicate samples within each split (kind 5 of the module doc)."""
    return _duplicates(*_duplicate_inputs(samples, appearance, encoder), config)[0]


def leakage_findings(samples: pd.DataFrame, *, appearance: np.ndarray, encoder: np.ndarray | None = None,
                     config: InsightsConfig = InsightsConfig()) -> list[Finding]:
    """Samples of other splits that are near-copies of training samples (kind 6 of the module doc)."""
    return _leakage(*_duplicate_inputs(samples, appearance, encoder), config)[0]


# --------------------------------------------------------------------------------------------- 7. domain gap ---


def _squared_distances(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    squared = left @ right.T
    squared *= -2.0
    squared += np.einsum("ij,ij->i", left, left)[:, None]
    squared += np.einsum("ij,ij->i", right, right)[None, :]
    return np.maximum(squared, 0.0, out=squared)


def _to_rbf_kernel(squared: np.ndarray, bandwidth: float) -> np.ndarray:
    """exp(−d² / 2σ²), in place."""
    squared *= -1.0 / (2.0 * bandwidth * bandwidth)
    return np.exp(squared, out=squared)


def _rbf_kernel(left: np.ndarray, right: np.ndarray, bandwidth: float) -> np.ndarray:
    return _to_rbf_kernel(_squared_distances(left, right), bandwidth)


def _median_distance(squared: np.ndarray) -> float:
    """Median pairwise distance from a symmetric matrix of squared distances (the off-diagonal entries)."""
    n = len(squared)
    if n < 2:
        return 1.0
    median = math.sqrt(float(np.median(squared[~np.eye(n, dtype=bool)])))
    return median if median > 1e-12 else 1.0  # identical points: any bandwidth gives MMD 0


def _mmd_test(split_points: np.ndarray, training_points: np.ndarray, permutations: int,
              rng: np.random.Generator) -> tuple[float, float, float]:
    """(MMD², permutation p-value, bandwidth) of two subsamples, all permutations from one pooled kernel."""
    pooled = np.vstack([split_points, training_points])
    n_split, n = len(split_points), len(pooled)
    squared = _squared_distances(pooled, pooled)
    bandwidth = _median_distance(squared)
    kernel = _to_rbf_kernel(squared, bandwidth)
    weights = np.concatenate([np.full(n_split, 1.0 / n_split), np.full(n - n_split, -1.0 / (n - n_split))])
    # column 0: the observed assignment; the others: label permutations (each column shuffled on its own)
    columns = np.tile(weights[:, None], (1, permutations + 1))
    columns[:, 1:] = rng.permuted(columns[:, 1:], axis=0)
    statistics = np.einsum("ij,ij->j", columns, kernel @ columns)
    observed = float(statistics[0])
    # 1e-12: a permutation equal to the observed one in exact arithmetic counts as at least as extreme
    p_value = (1 + int(np.sum(statistics[1:] >= observed - 1e-12))) / (1 + permutations)
    return max(observed, 0.0), p_value, bandwidth


def _witness(points: np.ndarray, split_points: np.ndarray, training_points: np.ndarray,
             bandwidth: float) -> np.ndarray:
    values = np.empty(len(points))
    for part in _chunks(len(points), len(split_points) + len(training_points)):
        values[part] = (_rbf_kernel(points[part], split_points, bandwidth).mean(axis=1)
                        - _rbf_kernel(points[part], training_points, bandwidth).mean(axis=1))
    return values


def _domain_gap(table: _Table, latent: np.ndarray, metadata_columns: list[str],
                config: InsightsConfig) -> tuple[list[Finding], str | None]:
    minimum = config.min_cluster_size
    training_rows = np.flatnonzero(table.training)
    if training_rows.size == 0:
        return [], "no training split"
    if training_rows.size < minimum:
        return [], f"the training split has fewer than {minimum} samples"
    splits = [split for split in sorted(set(table.splits[~table.training]))
              if np.sum(table.splits == split) >= minimum]
    if not splits:
        return [], f"no split besides training with at least {minimum} samples"
    rng = np.random.default_rng(config.seed)
    space = unit_rows(latent, reference=table.training)
    metadata = {name: table.column(name) for name in metadata_columns}

    def subsample(rows: np.ndarray) -> np.ndarray:
        return rows if rows.size <= config.max_gap_samples else np.sort(
            rng.choice(rows, config.max_gap_samples, replace=False))

    tests = []  # (split, field or None for the embedding, statistic, p, details)
    for split in splits:
        rows = np.flatnonzero(table.splits == split)
        for name, values in metadata.items():
            reference, other = values[training_rows], values[rows]
            reference, other = reference[np.isfinite(reference)], other[np.isfinite(other)]
            if reference.size < minimum or other.size < minimum:
                continue
            result = stats.ks_2samp(other, reference)
            tests.append((split, name, float(result.statistic), float(result.pvalue),
                          {"mean_training": float(reference.mean()), "mean_split": float(other.mean())}))
        split_sample, training_sample = subsample(rows), subsample(training_rows)
        mmd2, p_value, bandwidth = _mmd_test(space[split_sample], space[training_sample], config.permutations, rng)
        tests.append((split, None, mmd2, p_value,
                      {"bandwidth": bandwidth, "rows": rows, "split_sample": split_sample,
                       "training_sample": training_sample}))
    # Two Holm families: the metadata KS tests, and the embedding tests (one per split). Pooled into one, the
    # embedding's permutation p-value (never below 1 / (1 + permutations)) could not survive a family of dozens
    # of metadata tests.
    adjusted = np.empty(len(tests))
    for family in (True, False):
        members = [index for index, test in enumerate(tests) if (test[1] is None) is family]
        adjusted[members] = holm([tests[index][3] for index in members]) if members else []
    findings = []
    for split in splits:
        shifted, embedding, severities = [], None, []
        for (test_split, name, statistic, p_value, details), q in zip(tests, adjusted):
            if test_split != split:
                continue
            if name is None:
                embedding = (statistic, p_value, float(q), details)
                if q < config.alpha:
                    severities.append(math.sqrt(max(statistic, 0.0) / 2.0))
            elif q < config.alpha:
                shifted.append({"field": name, "ks_statistic": statistic, "p_value_adjusted": float(q), **details})
                severities.append(statistic)
        if not severities:
            continue
        shifted.sort(key=lambda item: -item["ks_statistic"])
        mmd2, p_value, q, details = embedding
        rows = details["rows"]
        witness = _witness(space[rows], space[details["split_sample"]], space[details["training_sample"]],
                           details["bandwidth"])
        ranked = rows[np.argsort(-witness, kind="stable")]
        evidence = {
            "split": split, "size": int(rows.size), "size_training": int(training_rows.size),
            "shifted_metadata": shifted,
            "embedding": {"mmd2": mmd2, "p_value": p_value, "p_value_adjusted": q, "significant": q < config.alpha,
                          "bandwidth": details["bandwidth"], "permutations": config.permutations,
                          "samples_per_split": {"training": int(details["training_sample"].size),
                                                split: int(details["split_sample"].size)}},
        }
        parts = [f"{item['field']} (KS D={item['ks_statistic']:.2f}, training mean {_fmt(item['mean_training'])} vs "
                 f"{_fmt(item['mean_split'])})" for item in shifted[:3]]
        if q < config.alpha:
            parts.append(f"the latent embeddings (MMD²={_fmt(mmd2)}, p={_fmt_p(q)} after Holm)")
        summary = f"{split} ({rows.size} samples) differs from training in " + ", ".join(parts) + "."
        findings.append(Finding(kind="domain_gap", severity=_clip01(max(severities)),
                                title=f"{split} differs from training", summary=summary,
                                sample_ids=_capped(table.keys[ranked], config), evidence=evidence))
    return findings, None


def domain_gap_findings(samples: pd.DataFrame, *, latent: np.ndarray, metadata_columns: Sequence[str],
                        config: InsightsConfig = InsightsConfig()) -> list[Finding]:
    """Splits whose metadata or latent embeddings differ from the training split's (kind 7 of the module doc)."""
    metadata_columns = _listed(metadata_columns, "metadata_columns")
    table = _prepare(samples, metadata_columns)
    latent = _matrix(latent, name="latent", rows=len(table.keys))
    return _domain_gap(table, latent, metadata_columns, config)[0]


# -------------------------------------------------------------------------------------------------- all ---


def find_insights(samples: pd.DataFrame, *, latent: np.ndarray, appearance: np.ndarray, encoder: np.ndarray | None,
                  metadata_columns: Sequence[str], class_names: Sequence[str], statistics: np.ndarray | None = None,
                  class_swaps: Sequence[Mapping] = (), planted_recall: Mapping | None = None,
                  config: InsightsConfig = InsightsConfig()) -> InsightsResults:
    """Every kind of insight on one validated table (see the module docstring), most severe first.

    Nothing is caught: an analysis that fails is a bug and raises. One that has nothing to run on is listed in
    ``skipped`` with its reason.
    """
    if not isinstance(config, InsightsConfig):
        raise ValueError(f"config must be an InsightsConfig, got {type(config).__name__}")
    metadata_columns = _listed(metadata_columns, "metadata_columns")
    metric_columns = _metric_columns(class_names)
    table = _prepare(samples, ["cluster", "loss", "mean_iou", *metric_columns, *metadata_columns,
                               "label_issue_score"])
    rows = len(table.keys)
    latent = _matrix(latent, name="latent", rows=rows)
    appearance = _matrix(appearance, name="appearance", rows=rows)
    encoder = _matrix(encoder, name="encoder", rows=rows, optional=True)
    statistics = _matrix(statistics, name="statistics", rows=rows, optional=True)
    duplicate_rows = _duplicate_rows(table, appearance, encoder)
    analyses = {
        "low_performance_cluster": lambda: _low_performance_clusters(table, metadata_columns, config),
        "metadata_trend": lambda: _metadata_trends(table, metadata_columns, metric_columns, config),
        "label_issues": lambda: _label_issues(table, class_swaps, planted_recall, config),
        "out_of_distribution": lambda: _out_of_distribution(
            table, _ood_spaces(table, latent, appearance, encoder, statistics), config),
        "duplicates": lambda: _duplicates(table, duplicate_rows, config),
        "leakage": lambda: _leakage(table, duplicate_rows, config),
        "domain_gap": lambda: _domain_gap(table, latent, metadata_columns, config),
    }
    findings, skipped = [], []
    for kind in KINDS:
        found, reason = analyses[kind]()
        findings.extend(found)
        if reason is not None:
            skipped.append({"kind": kind, "reason": reason})
    return InsightsResults(findings=findings, skipped=skipped)

