"""coco_seg.analysis.insights on synthetic tables: Holm, each kind of insight (planted effects found, null data
quiet), validation, strict-JSON output and memory at scale. No files are read, no TensorFlow."""

import json
import math
import tracemalloc

import numpy as np
import pandas as pd
import pytest

from coco_seg.analysis.insights import (
    KINDS,
    Finding,
    InsightsConfig,
    InsightsResults,
    domain_gap_findings,
    duplicate_findings,
    find_insights,
    holm,
    label_issue_findings,
    leakage_findings,
    low_performance_clusters,
    metadata_trends,
    out_of_distribution,
)

CLASSES = ("person", "car")
METADATA = ("car_percent", "is_colored", "brightness")


def make_table(n: int = 200, *, seed: int = 0, clusters: int = 4, splits: dict | None = None) -> pd.DataFrame:
    """A null table: loss, IoU and label scores independent of cluster and metadata."""
    rng = np.random.default_rng(seed)
    splits = splits or {"training": n}
    split = np.concatenate([[name] * count for name, count in splits.items()])
    n = len(split)
    labeled = split != "unlabeled"
    iou = {f"iou_{name}": rng.uniform(0.2, 0.9, n) for name in CLASSES}
    frame = pd.DataFrame({
        "key": [f"s{i:05d}" for i in range(n)],
        "split": split,
        "cluster": rng.integers(0, clusters, n),
        "loss": rng.normal(0.5, 0.1, n),
        **iou,
        "car_percent": rng.uniform(0.0, 1.0, n),
        "is_colored": rng.random(n) < 0.5,
        "brightness": rng.normal(100.0, 20.0, n),
        "label_issue_score": 1.0 - rng.uniform(0.0, 0.01, n),
    })
    frame["mean_iou"] = frame[list(iou)].mean(axis=1)
    for column in ("loss", "mean_iou", *iou, "label_issue_score"):
        frame.loc[~labeled, column] = np.nan
    return frame


def embeddings(n: int, *, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed + 1000)
    return {"latent": rng.normal(size=(n, 16)), "appearance": rng.normal(size=(n, 105)),
            "encoder": rng.normal(size=(n, 24))}


# --------------------------------------------------------------------------------------------------- holm ---


def test_holm_matches_a_hand_computed_example():
    # sorted: 0.005 x4 = 0.02, 0.01 x3 = 0.03, 0.03 x2 = 0.06, 0.04 x1 = 0.04 -> raised to 0.06 (monotone)
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])


def test_holm_leaves_nan_out_of_the_count_and_clips_to_one():
    adjusted = holm([0.02, float("nan"), 0.5, 0.01])
    assert math.isnan(adjusted[1])
    np.testing.assert_allclose(adjusted[[0, 2, 3]], [0.04, 0.5, 0.03])  # m = 3, not 4
    assert holm([0.6, 0.7])[0] == 1.0
    assert holm([]).shape == (0,)
    assert np.isnan(holm([float("nan")])).all()


def test_holm_is_monotone_and_never_below_the_raw_p_value():
    p = np.random.default_rng(3).random(40) ** 3
    adjusted = holm(p)
    order = np.argsort(p)
    assert np.all(np.diff(adjusted[order]) >= 0)
    assert np.all(adjusted >= p) and np.all(adjusted <= 1)


# ------------------------------------------------------------------------------------ clusters and trends ---


def test_null_table_gives_no_cluster_or_trend_finding():
    table = make_table(200, seed=0)
    assert low_performance_clusters(table, metadata_columns=METADATA) == []
    assert metadata_trends(table, metadata_columns=METADATA, class_names=CLASSES) == []


def test_false_positive_rate_over_seeds_is_at_most_about_alpha():
    # Holm controls the family-wise rate per seed at 0.05: 4+ of 20 seeds with a finding has probability < 2 %
    cluster_hits = trend_hits = 0
    for seed in range(1, 21):
        table = make_table(200, seed=seed)
        cluster_hits += bool(low_performance_clusters(table, metadata_columns=METADATA))
        trend_hits += bool(metadata_trends(table, metadata_columns=METADATA, class_names=CLASSES))
    assert cluster_hits <= 3 and trend_hits <= 3, (cluster_hits, trend_hits)


def test_planted_low_performance_cluster_is_found_with_its_metadata():
    rng = np.random.default_rng(7)
    table = make_table(240, seed=7, splits={"training": 200, "validation": 40})
    bad = table["cluster"] == 2
    table.loc[bad, "loss"] += 0.1  # +1 sd of the loss noise
    table.loc[bad, "is_colored"] = rng.random(int(bad.sum())) < 0.1  # mostly grayscale in the bad cluster
    findings = low_performance_clusters(table, metadata_columns=METADATA)
    assert findings and findings[0].evidence["cluster"] == 2
    assert [f.evidence["cluster"] for f in findings] == [2]  # the other clusters are not worse
    top = findings[0]
    assert 0 < top.severity <= 1 and top.kind == "low_performance_cluster"
    evidence = top.evidence
    assert evidence["p_value_adjusted"] < 0.05 and evidence["mean_loss"] > evidence["mean_loss_rest"] + 0.05
    assert top.severity == pytest.approx(evidence["effect_size"])
    assert evidence["p_value_adjusted"] == pytest.approx(4 * evidence["p_value"])  # Holm: smallest of 4 p x 4
    fields = {item["field"]: item for item in evidence["over_represented_metadata"]}
    assert "is_colored" in fields and "brightness" not in fields
    assert fields["is_colored"]["standardized_difference"] < 0
    assert fields["is_colored"]["mean"] < fields["is_colored"]["mean_rest"]
    members = table[bad & table["loss"].notna()].sort_values("loss", ascending=False)
    assert top.sample_ids == list(members["key"][:24])  # by loss, highest first, capped at max_samples
    assert sum(evidence["splits"].values()) == int(bad.sum()) and set(evidence["splits"]) <= {"training", "validation"}
    assert "Cluster 2" in top.summary and "lower is_colored" in top.summary


def test_planted_trend_is_found_for_its_field_only():
    table = make_table(300, seed=11)
    table["loss"] += 0.8 * np.maximum(0.0, table["car_percent"] - 0.5)
    findings = metadata_trends(table, metadata_columns=METADATA, class_names=CLASSES)
    assert [f.evidence["field"] for f in findings] == ["car_percent"]
    evidence = findings[0].evidence
    assert evidence["metric"] == "loss" and evidence["direction"] == "worse as car_percent rises"
    assert evidence["spearman_rho"] > 0 and evidence["p_value_adjusted"] < 0.05
    assert len(evidence["bins"]) == 5 and sum(b["count"] for b in evidence["bins"]) == 300
    assert evidence["worst_bin"] == evidence["bins"][-1]["range"]
    means = [b["mean"] for b in evidence["bins"]]
    assert means[-1] == max(means) and means[-1] > means[0] + 0.1
    severity = findings[0].severity
    epsilon = math.sqrt(evidence["kruskal_h"] / 299)
    assert severity == pytest.approx(max(abs(evidence["spearman_rho"]), epsilon))
    worst = table[table["car_percent"] >= table["car_percent"].quantile(0.8)].sort_values("loss", ascending=False)
    assert findings[0].sample_ids == list(worst["key"][:24])


def test_trend_on_an_iou_uses_lower_is_worse_and_bool_bins():
    table = make_table(300, seed=5)
    table.loc[table["is_colored"], "iou_car"] -= 0.3
    findings = metadata_trends(table, metadata_columns=["is_colored"], class_names=CLASSES)
    assert len(findings) == 1
    evidence = findings[0].evidence
    assert evidence["metric"] == "iou_car" and evidence["direction"] == "worse as is_colored rises"
    assert [b["range"] for b in evidence["bins"]] == ["False", "True"] and evidence["worst_bin"] == "True"


# ------------------------------------------------------------------------------------------- label issues ---


def test_label_issues_flags_low_scores_in_order():
    table = make_table(100, seed=2, splits={"training": 80, "unlabeled": 20})
    low = {"s00003": 0.5, "s00010": 0.9, "s00020": 0.98, "s00030": 0.7}
    for key, score in low.items():
        table.loc[table["key"] == key, "label_issue_score"] = score
    table.loc[table["key"] == "s00040", "label_issue_score"] = 0.985  # under 2 % flagged: not an issue
    swaps = [{"given_label": "person", "predicted_label": "background", "pixels": 900 - i, "share": 0.1}
             for i in range(7)]
    findings = label_issue_findings(table, class_swaps=swaps, planted_recall={"recall": 0.75, "planted": 4})
    assert len(findings) == 1
    finding = findings[0]
    assert finding.sample_ids == ["s00003", "s00030", "s00010", "s00020"]
    assert finding.evidence["flagged"] == 4 and finding.evidence["labeled"] == 80
    assert finding.severity == pytest.approx(min(1.0, 10 * 4 / 80))
    assert finding.evidence["class_swaps"] == swaps[:5] and finding.evidence["class_swap_count"] == 7
    assert finding.evidence["planted_recall"] == {"recall": 0.75, "planted": 4}
    assert label_issue_findings(make_table(50, seed=2)) == []


def test_label_issues_raise_the_bar_to_the_datasets_robust_fence():
    """When most samples have many flagged pixels (a mediocre model on coarse polygons), only the outliers above
    median + 3 × 1.4826 × MAD are reported, and the evidence says which bar was used."""
    table = make_table(100, seed=4)
    rng = np.random.default_rng(4)
    shares = rng.uniform(0.04, 0.08, 100)  # every sample above 2 %
    shares[[7, 42]] = [0.40, 0.30]
    table["label_issue_score"] = 1.0 - shares
    (finding,) = label_issue_findings(table)
    median = np.median(shares)
    fence = median + 3 * 1.4826 * np.median(np.abs(shares - median))
    assert finding.evidence["threshold"] == pytest.approx(fence) and fence > 0.08
    assert finding.evidence["configured_threshold"] == 0.02
    assert finding.sample_ids == ["s00007", "s00042"] and finding.evidence["flagged"] == 2
    assert finding.severity == pytest.approx(10 * 2 / 100)


def test_an_iou_trend_is_measured_only_where_the_class_is_in_the_ground_truth():
    """iou_car of a sample without a car is 0 for any false-positive pixel: a trend over car_percent that is only
    "the car is there or not" must not be reported; one among samples that hold a car is."""
    table = make_table(400, seed=8)
    absent = table.index < 200
    table.loc[absent, "car_percent"] = 0.0
    table.loc[absent, "iou_car"] = 0.0  # false positives everywhere the car is missing
    null = metadata_trends(table, metadata_columns=["car_percent"], class_names=CLASSES)
    assert not [f for f in null if f.evidence["metric"] == "iou_car"], [f.evidence for f in null]
    present = ~absent
    table.loc[present, "iou_car"] = 0.2 + 0.6 * table.loc[present, "car_percent"]
    (finding,) = metadata_trends(table, metadata_columns=["car_percent"], class_names=CLASSES)
    assert finding.evidence["metric"] == "iou_car" and finding.evidence["samples"] == 200
    assert finding.evidence["direction"] == "better as car_percent rises"


def test_a_mostly_zero_count_is_binned_zero_against_the_rest():
    """Quantile bins of a count that is 0 for 90 % of the samples collapse into one: the trend then compares 0
    with the rest, and its worst bin is not the whole table."""
    table = make_table(300, seed=13)
    rng = np.random.default_rng(1313)  # not make_table's stream: its draws would correlate with the IoUs
    table["car_percent"] = np.where(rng.random(300) < 0.9, 0.0, rng.integers(1, 12, 300))
    table.loc[table["car_percent"] > 0, "loss"] += 0.3
    (finding,) = metadata_trends(table, metadata_columns=["car_percent"], class_names=("person",))
    bins = finding.evidence["bins"]
    assert [b["range"] for b in bins][0] == "[0, 0]" and len(bins) == 2
    assert sum(b["count"] for b in bins) == 300 and finding.evidence["worst_bin"] == bins[1]["range"]
    assert finding.evidence["p_value_kruskal"] < 0.05


def test_a_trend_lists_the_fields_other_significant_metrics():
    table = make_table(300, seed=12)
    table["loss"] += 1.0 * table["car_percent"]
    table["iou_person"] -= 0.3 * table["car_percent"]
    (finding,) = metadata_trends(table, metadata_columns=["car_percent"], class_names=CLASSES)
    others = finding.evidence["other_significant_metrics"]
    assert finding.evidence["metric"] == "loss"
    assert [o["metric"] for o in others] == ["iou_person"] and others[0]["direction"] == "worse as car_percent rises"
    assert others[0]["p_value_adjusted"] < 0.05


# ------------------------------------------------------------------------------------ out of distribution ---


def structured(rng: np.random.Generator, n: int, dimensions: int, factors: int = 3) -> np.ndarray:
    """Rows near a `factors`-dimensional subspace (as real features are), offset from the origin."""
    basis = np.random.default_rng(dimensions).normal(size=(factors, dimensions))
    return 3.0 + rng.normal(size=(n, factors)) @ basis + 0.1 * rng.normal(size=(n, dimensions))


def test_out_of_distribution_flags_rows_far_off_in_one_space():
    rng = np.random.default_rng(4)
    n_train, n_held = 300, 100
    table = make_table(n_train + n_held + 6, seed=4,
                       splits={"training": n_train, "validation": n_held + 6})
    n = len(table)
    spaces = {"latent": structured(rng, n, 16), "appearance": structured(rng, n, 105),
              "encoder": structured(rng, n, 24)}
    planted = np.arange(n_train + n_held, n)
    for index, name in zip(planted, ["latent", "latent", "appearance", "appearance", "encoder", "encoder"]):
        spaces[name][index] = 3.0 + 3.0 * rng.normal(size=spaces[name].shape[1])  # off the subspace
    findings = out_of_distribution(table, **spaces)
    assert len(findings) == 1 and findings[0].evidence["split"] == "validation"
    finding = findings[0]
    planted_keys = set(table["key"].iloc[planted])
    assert set(finding.sample_ids[:6]) == planted_keys
    assert finding.evidence["flagged"] <= 6 + 0.05 * n_held
    assert finding.evidence["tested"] == n_held + 6 and finding.evidence["reference_size"] == n_train
    assert finding.severity == pytest.approx(min(1.0, 10 * finding.evidence["flagged"] / (n_held + 6)))
    rows = {row["key"]: row for row in finding.evidence["samples"]}
    latent_key = table["key"].iloc[planted[0]]
    assert rows[latent_key]["z_latent"] > 5 and rows[latent_key]["z_latent"] > rows[latent_key]["z_appearance"]
    zs = [max(row["z_latent"], row["z_appearance"], row["z_encoder"]) for row in finding.evidence["samples"]]
    assert zs == sorted(zs, reverse=True)


def test_out_of_distribution_needs_enough_training_rows():
    table = make_table(40, seed=1, splits={"training": 5, "validation": 35})
    results = find_insights(table, **embeddings(40), metadata_columns=METADATA, class_names=CLASSES)
    assert {"kind": "out_of_distribution", "reason": "fewer than 7 training samples (ood_neighbors + 2)"} \
        in results.skipped


# ------------------------------------------------------------------------------- duplicates and leakage ---


def test_leakage_and_duplicates_find_planted_copies():
    rng = np.random.default_rng(9)
    n_train, n_val = 60, 40
    table = make_table(n_train + n_val, seed=9, splits={"training": n_train, "validation": n_val})
    appearance = rng.normal(size=(n_train + n_val, 105))
    encoder = rng.normal(size=(n_train + n_val, 24))
    near = {60: 0, 61: 5, 62: 10, 63: 15, 64: 20, 65: 25}  # validation row -> the training row it copies
    exact = {66: 30, 67: 35}
    for target, source in near.items():
        appearance[target] = appearance[source] + 0.1 * rng.normal(size=105)
        encoder[target] = encoder[source] + 0.1 * rng.normal(size=24)
    for target, source in exact.items():
        appearance[target], encoder[target] = appearance[source], encoder[source]
    appearance[71] = appearance[70] + 0.05 * rng.normal(size=105)  # a within-validation pair
    encoder[71] = encoder[70] + 0.05 * rng.normal(size=24)
    # two flat images (zero appearance rows) with equal encoder features: at distance 0, but their dot product
    # is 0.5 (only the encoder view counts), below the threshold: the dot product decides, not the radius
    appearance[[80, 81]] = 0.0
    encoder[81] = encoder[80]
    keys = table["key"].to_numpy()

    leaks = leakage_findings(table, appearance=appearance, encoder=encoder)
    assert len(leaks) == 1 and leaks[0].evidence["split"] == "validation"
    pairs = {pair["key"]: pair for pair in leaks[0].evidence["pairs"]}
    copied = near | exact
    assert set(pairs) == {keys[i] for i in copied} and leaks[0].evidence["leaked"] == 8
    for target, source in copied.items():
        assert pairs[keys[target]]["training_key"] == keys[source]
        assert pairs[keys[target]]["exact"] == (target in exact)
    assert set(leaks[0].sample_ids[:2]) == {keys[66], keys[67]}  # exact copies are the most similar
    assert set(leaks[0].sample_ids) == {keys[i] for i in copied}
    similarities = [pair["similarity"] for pair in leaks[0].evidence["pairs"]]
    assert similarities == sorted(similarities, reverse=True) and 0.82 <= min(similarities)
    assert leaks[0].severity == pytest.approx(1.0)  # 8 / 40 = 20 % leaked -> min(1, 2)

    duplicates = duplicate_findings(table, appearance=appearance, encoder=encoder)
    assert len(duplicates) == 1 and duplicates[0].evidence["split"] == "validation"
    groups = duplicates[0].evidence["groups"]
    assert [sorted(group["keys"]) for group in groups] == [[keys[70], keys[71]]]
    assert groups[0]["exact"] is False and 0.82 <= groups[0]["max_similarity"] < 0.999
    assert duplicates[0].evidence["duplicated_samples"] == 1
    assert duplicates[0].severity == pytest.approx(10 * 1 / n_val)


def test_leakage_with_one_exact_copy_is_at_least_half_severe():
    rng = np.random.default_rng(2)
    table = make_table(300, seed=2, splits={"training": 200, "test": 100})
    appearance = rng.normal(size=(300, 105))
    appearance[250] = appearance[3]
    leaks = leakage_findings(table, appearance=appearance, encoder=None)
    assert len(leaks) == 1 and leaks[0].sample_ids == [table["key"][250]]
    assert leaks[0].severity == 0.5 and leaks[0].evidence["exact_copies"] == 1


# ------------------------------------------------------------------------------------------- domain gap ---


def test_domain_gap_finds_the_shifted_split_only():
    rng = np.random.default_rng(21)
    table = make_table(400, seed=21, splits={"training": 200, "validation": 100, "test": 100})
    latent = rng.normal(size=(400, 8))
    shifted = (table["split"] == "validation").to_numpy()
    latent[shifted, 0] += 1.5
    table.loc[shifted, "brightness"] += 20.0  # +1 sd
    config = InsightsConfig(permutations=300)
    findings = domain_gap_findings(table, latent=latent, metadata_columns=METADATA, config=config)
    assert [f.evidence["split"] for f in findings] == ["validation"]
    evidence = findings[0].evidence
    assert [item["field"] for item in evidence["shifted_metadata"]] == ["brightness"]
    brightness = evidence["shifted_metadata"][0]
    assert brightness["mean_split"] > brightness["mean_training"] + 10
    embedding = evidence["embedding"]
    assert embedding["significant"] and embedding["p_value_adjusted"] < 0.05 and embedding["mmd2"] > 0
    assert embedding["samples_per_split"] == {"training": 200, "validation": 100}
    expected = max(brightness["ks_statistic"], math.sqrt(embedding["mmd2"] / 2))
    assert findings[0].severity == pytest.approx(expected)
    # witness ranking: the rows shifted furthest along the shifted axis come first
    top = table.set_index("key").index.get_indexer(findings[0].sample_ids[:10])
    assert latent[top, 0].mean() > latent[shifted, 0].mean()


def test_domain_gap_subsamples_and_is_reproducible():
    table = make_table(300, seed=8, splits={"training": 150, "validation": 150})
    latent = np.random.default_rng(8).normal(size=(300, 8))
    latent[150:, 1] += 2.0
    config = InsightsConfig(permutations=100, max_gap_samples=60, seed=3)
    first = domain_gap_findings(table, latent=latent, metadata_columns=(), config=config)
    second = domain_gap_findings(table, latent=latent, metadata_columns=(), config=config)
    assert len(first) == 1 and first[0].to_record() == second[0].to_record()
    assert first[0].evidence["embedding"]["samples_per_split"] == {"training": 60, "validation": 60}
    assert first[0].evidence["embedding"]["p_value"] == pytest.approx(1 / 101)
    assert len(first[0].sample_ids) == 24


# ------------------------------------------------------------------------------------------- validation ---


@pytest.mark.parametrize("name, value", [
    ("alpha", 0.0), ("alpha", 1.5), ("alpha", "0.05"), ("min_cluster_size", 1), ("min_cluster_size", 2.5),
    ("trend_bins", 1), ("min_bin_size", True), ("duplicate_similarity", 1.2), ("exact_similarity", float("nan")),
    ("ood_neighbors", 0), ("permutations", 0), ("max_gap_samples", 1), ("label_issue_share", 0.0),
    ("max_samples", 0), ("seed", -1),
])
def test_config_rejects_bad_values_naming_the_field(name, value):
    with pytest.raises(ValueError, match=name):
        InsightsConfig(**{name: value})


def test_config_requires_exact_at_least_duplicate_similarity():
    with pytest.raises(ValueError, match="exact_similarity"):
        InsightsConfig(duplicate_similarity=0.9, exact_similarity=0.85)


def test_input_validation_names_the_problem():
    table = make_table(30, seed=0)
    arrays = embeddings(30)
    call = dict(metadata_columns=METADATA, class_names=CLASSES)
    with pytest.raises(ValueError, match="label_issue_score"):
        find_insights(table.drop(columns="label_issue_score"), **arrays, **call)
    with pytest.raises(ValueError, match="iou_car"):
        find_insights(table.drop(columns="iou_car"), **arrays, **call)
    duplicated = table.copy()
    duplicated.loc[3, "key"] = duplicated.loc[4, "key"]
    with pytest.raises(ValueError, match="duplicate keys.*s00004"):
        find_insights(duplicated, **arrays, **call)
    bad = dict(arrays, latent=arrays["latent"].copy())
    bad["latent"][5, 2] = np.nan
    with pytest.raises(ValueError, match="latent holds NaN"):
        find_insights(table, **bad, **call)
    with pytest.raises(ValueError, match="encoder has 29 rows but samples has 30"):
        find_insights(table, **dict(arrays, encoder=arrays["encoder"][:29]), **call)
    with pytest.raises(ValueError, match="appearance must be a 2-D"):
        find_insights(table, **dict(arrays, appearance=arrays["appearance"][:, 0]), **call)
    text = table.copy()
    text["brightness"] = "bright"
    with pytest.raises(ValueError, match="brightness"):
        find_insights(text, **arrays, **call)


# ------------------------------------------------------------------------------------------------ output ---


def test_to_record_gives_plain_json_types():
    finding = Finding(kind="leakage", severity=np.float32(0.5), title="t", summary="s", sample_ids=["a"],
                      evidence={"count": np.int64(3), "nan": float("nan"), "flag": np.bool_(True),
                                "rows": [{"z": np.float64(np.inf)}], "array": np.arange(2)})
    record = finding.to_record()
    assert list(record) == ["kind", "severity", "title", "summary", "sample_ids", "evidence"]
    assert record["evidence"] == {"count": 3, "nan": None, "flag": True, "rows": [{"z": None}], "array": [0, 1]}
    assert type(record["severity"]) is float and type(record["evidence"]["count"]) is int
    assert type(record["evidence"]["flag"]) is bool


def strict_loads(text: str):
    def refuse(constant):
        raise ValueError(f"non-strict JSON constant {constant}")
    return json.loads(text, parse_constant=refuse)


def test_find_insights_writes_strict_sorted_json(tmp_path):
    table = make_table(260, seed=13, splits={"training": 160, "validation": 60, "unlabeled": 40})
    table.loc[table["cluster"] == 1, "loss"] += 0.15
    table.loc[table.index[:12], "label_issue_score"] = 0.8
    table.loc[table["split"] == "validation", "brightness"] += 30.0
    arrays = embeddings(260, seed=13)
    arrays["appearance"][200] = arrays["appearance"][0]  # an exact leak
    arrays["encoder"][200] = arrays["encoder"][0]
    table.loc[:5, "iou_car"] = np.nan  # class absent: NaN passes through the statistics
    results = find_insights(table, **arrays, metadata_columns=METADATA, class_names=CLASSES,
                            class_swaps=[{"given_label": "car", "predicted_label": "person", "pixels": 10,
                                          "share": 0.5}], config=InsightsConfig(permutations=200))
    kinds = {finding.kind for finding in results.findings}
    assert {"low_performance_cluster", "label_issues", "leakage", "domain_gap"} <= kinds <= set(KINDS)
    severities = [finding.severity for finding in results.findings]
    assert severities == sorted(severities, reverse=True) and all(0 <= s <= 1 for s in severities)
    path = results.write(tmp_path)
    assert path == tmp_path / "insights.json"
    payload = strict_loads(path.read_text())
    assert set(payload) == {"findings", "skipped"}
    assert [item["severity"] for item in payload["findings"]] == severities
    assert payload["findings"][0] == json.loads(json.dumps(results.findings[0].to_record()))


def test_results_sort_ties_by_kind_then_title_and_record_skips():
    findings = [Finding(kind=kind, severity=0.5, title=title, summary="", sample_ids=[], evidence={})
                for kind, title in [("leakage", "b"), ("duplicates", "z"), ("leakage", "a")]]
    findings.append(Finding(kind="domain_gap", severity=0.9, title="x", summary="", sample_ids=[], evidence={}))
    results = InsightsResults(findings=findings, skipped=[{"kind": "leakage", "reason": "no training split"}])
    assert [(f.kind, f.title) for f in results.findings] == [
        ("domain_gap", "x"), ("duplicates", "z"), ("leakage", "a"), ("leakage", "b")]
    assert results.to_records()["skipped"] == [{"kind": "leakage", "reason": "no training split"}]


def test_without_a_training_split_the_reference_analyses_are_skipped():
    table = make_table(60, seed=3, splits={"validation": 60})
    results = find_insights(table, **embeddings(60), metadata_columns=METADATA, class_names=CLASSES)
    reasons = {entry["kind"]: entry["reason"] for entry in results.skipped}
    assert reasons["out_of_distribution"] == "no training split"
    assert reasons["leakage"] == "no training split" and reasons["domain_gap"] == "no training split"
    one_cluster = make_table(60, seed=3, clusters=1)
    results = find_insights(one_cluster, **embeddings(60), metadata_columns=METADATA, class_names=CLASSES)
    assert {"kind": "low_performance_cluster", "reason": "fewer than 2 clusters with at least 5 labeled samples"} \
        in results.skipped


# ------------------------------------------------------------------------------------------------- scale ---


def test_scale_never_builds_an_n_by_n_matrix():
    n = 3000
    table = make_table(n, seed=17, clusters=12,
                       splits={"training": 2000, "validation": 500, "test": 300, "unlabeled": 200})
    arrays = {name: values.astype(np.float32) for name, values in embeddings(n, seed=17).items()}
    config = InsightsConfig(permutations=100, max_gap_samples=300)
    small = make_table(60, seed=1, splits={"training": 40, "validation": 20})
    find_insights(small, **embeddings(60), metadata_columns=METADATA, class_names=CLASSES, config=config)
    # ^ warm-up: the lazy imports (sklearn) and their caches are not counted as the analysis' memory
    tracemalloc.start()
    try:
        results = find_insights(table, **arrays, metadata_columns=METADATA, class_names=CLASSES, config=config)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < n * n * 8 / 4, f"peak {peak / 2**20:.1f} MiB"  # an N x N float64 matrix would be 69 MiB
    assert isinstance(results, InsightsResults)
    assert {entry["kind"] for entry in results.skipped}.isdisjoint(KINDS[3:])  # every reference analysis ran


def test_duplicate_groups_are_the_same_whatever_the_pair_budget(monkeypatch):
    """Chains (A~B, B~C, not A~C), exact copies and singletons: the groups and each row's best similarity do not
    depend on how often the pairs are reduced to a spanning forest."""
    from coco_seg.analysis import insights

    rng = np.random.default_rng(5)
    base = rng.normal(size=(40, 16))
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    space = np.concatenate([base, base[:6], 0.92 * base[10:14] + 0.39 * base[20:24]])  # copies, blends
    space /= np.linalg.norm(space, axis=1, keepdims=True)
    labels, best = insights._similar_groups(space, 0.82)
    for budget in (0, 1, 3):
        monkeypatch.setattr(insights, "_EDGE_BUDGET", budget)
        monkeypatch.setattr(insights, "_CHUNK_ELEMENTS", 50)  # one row per chunk: many reductions
        small_labels, small_best = insights._similar_groups(space, 0.82)
        np.testing.assert_allclose(small_best, best, rtol=1e-12)  # BLAS sums in another order per chunk shape
        same = labels[:, None] == labels[None, :]
        np.testing.assert_array_equal(small_labels[:, None] == small_labels[None, :], same)
    dots = space @ space.T
    np.fill_diagonal(dots, -np.inf)
    np.testing.assert_allclose(best, dots.max(axis=1))
    for copy in range(6):  # each copy is grouped with its original
        assert labels[40 + copy] == labels[copy]
    linked = dots >= 0.82
    for row in range(len(space)):  # a row with no similar row is alone; a similar pair shares a group
        assert (np.bincount(labels)[labels[row]] > 1) == linked[row].any()
        assert all(labels[row] == labels[other] for other in np.flatnonzero(linked[row]))


def test_many_copies_of_one_image_are_one_group_in_bounded_memory(monkeypatch):
    """n copies of one row hold n²/2 similar pairs; the grouping's memory is one chunk's pairs plus the budget,
    the same for 2,000 and 4,000 copies, while the 8 million pairs of 4,000 would take 128 MB as two index arrays
    (and 4 GB as the per-pair row copies of a per-pair dot product)."""
    from coco_seg.analysis import insights

    monkeypatch.setattr(insights, "_EDGE_BUDGET", 100_000)

    def peak(copies: int) -> int:
        space = np.tile(np.eye(1, 32), (copies, 1))
        tracemalloc.start()
        try:
            labels, best = insights._similar_groups(space, 0.82)
            measured = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert np.unique(labels).size == 1 and np.all(best == 1.0)
        return measured

    small, large = peak(2000), peak(4000)
    assert large < 1.3 * small and large < 100 * 2**20, (small / 2**20, large / 2**20)
