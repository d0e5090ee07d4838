"""Metadata dashboards: binning, significance flags, rank correlations (coco_seg.analysis.dashboards)."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from coco_seg.analysis.dashboards import MetadataDashboard, dashboards_to_records, metadata_dashboards

IOU_COLUMNS = ["iou_person", "iou_car", "mean_iou"]


def make_samples(n: int = 400, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    car = np.where(rng.random(n) < 0.4, 0.0, rng.uniform(0, 100, n))  # zero-inflated, like car_percent
    person_count = rng.integers(0, 30, n).astype(float)
    loss = rng.normal(0.5, 0.1, n) + np.where(car > 50, 2.0, 0.0)  # loss jumps when car_percent > 50
    mean_iou = np.clip(0.9 - 0.02 * person_count + rng.normal(0, 0.05, n), 0, 1)
    iou_car = np.where(car > 0, np.clip(0.8 - 0.005 * car + rng.normal(0, 0.05, n), 0, 1), np.nan)
    return pd.DataFrame({
        "car_percent": car,
        "person_count": person_count,
        "brightness": rng.uniform(0, 255, n),
        "image_width": np.full(n, 640.0),
        "is_colored": rng.random(n) < 0.7,
        "loss": loss,
        "iou_person": rng.uniform(0, 1, n),
        "iou_car": iou_car,
        "mean_iou": mean_iou,
    })


def by_field(dashboards: list[MetadataDashboard]) -> dict[str, MetadataDashboard]:
    return {d.field: d for d in dashboards}


@pytest.fixture(scope="module")
def samples() -> pd.DataFrame:
    return make_samples()


@pytest.fixture(scope="module")
def dashboards(samples) -> dict[str, MetadataDashboard]:
    return by_field(metadata_dashboards(
        samples, metadata_columns=["car_percent", "person_count", "brightness", "image_width", "is_colored"],
        iou_columns=IOU_COLUMNS))


def test_high_car_percent_bins_are_flagged_and_low_ones_are_not(dashboards):
    bins = dashboards["car_percent"].bins
    assert bins["label"].iloc[0] == "0" and bins["low"].iloc[0] == 0 == bins["high"].iloc[0]
    above = bins["low"] >= 50 - 1e-9
    below = bins["high"] <= 50 + 1e-9
    assert above.any() and below.sum() >= 3
    assert bins.loc[above, "flagged"].all()
    assert not bins.loc[below, "flagged"].any()
    assert (bins.loc[above, "p_value"] < 0.01).all()
    assert dashboards["car_percent"].flagged_bins == bins.loc[bins["flagged"], "label"].tolist()
    assert dashboards["car_percent"].flagged_bins[-1] == bins["label"].iloc[-1]
    assert dashboards["car_percent"].spearman_loss > 0.3


def test_counts_sum_to_number_of_samples(samples, dashboards):
    for name, dashboard in dashboards.items():
        assert dashboard.bins["count"].sum() == len(samples), name
        assert dashboard.missing == 0
        assert (dashboard.bins["count"] > 0).all()
        assert len(dashboard.bins) <= 8


def test_quantile_bin_labels_and_edges(dashboards):
    bins = dashboards["brightness"].bins
    assert not dashboards["brightness"].categorical
    assert len(bins) == 8
    assert bins["label"].iloc[0].startswith("[") and bins["label"].iloc[0].endswith(")")
    assert bins["label"].iloc[-1].endswith("]")
    assert np.all(bins["low"].to_numpy()[1:] == bins["high"].to_numpy()[:-1])  # contiguous edges
    assert bins["count"].max() - bins["count"].min() <= 2  # quantile bins are balanced
    car = dashboards["car_percent"].bins
    assert 2 <= len(car) <= 8 and (car["low"].iloc[1:] > 0).all()


def test_constant_field_yields_no_dashboard(dashboards):
    assert "image_width" not in dashboards
    assert set(dashboards) == {"car_percent", "person_count", "brightness", "is_colored"}


def test_boolean_field_has_two_categorical_bins(samples, dashboards):
    dashboard = dashboards["is_colored"]
    assert dashboard.categorical
    assert dashboard.bins["label"].tolist() == ["False", "True"]
    assert dashboard.bins["count"].tolist() == [int((~samples["is_colored"]).sum()), int(samples["is_colored"].sum())]
    assert dashboard.bins["low"].isna().all() and dashboard.bins["high"].isna().all()
    assert dashboard.flagged_bins == []  # loss does not depend on it


def test_spearman_sign(dashboards):
    assert dashboards["person_count"].spearman_iou["mean_iou"] < -0.5
    assert abs(dashboards["person_count"].spearman_loss) < 0.2
    assert dashboards["car_percent"].spearman_iou["iou_car"] < 0
    means = dashboards["person_count"].bins["mean_mean_iou"].to_numpy()
    assert means[0] > means[-1]


def test_nan_iou_values_are_ignored_in_the_means(samples, dashboards):
    bins = dashboards["car_percent"].bins
    # car absent -> iou_car NaN for every sample of the zero bin
    assert math.isnan(bins["mean_iou_car"].iloc[0])
    assert bins["mean_iou_car"].iloc[1:].notna().all()
    # brightness bins mix defined and undefined iou_car; the mean is over the defined ones only
    data = samples.copy()
    data["is_colored_int"] = data["is_colored"].astype(int)
    dashboard = by_field(metadata_dashboards(data, metadata_columns=["is_colored_int"], iou_columns=["iou_car"]))
    bins = dashboard["is_colored_int"].bins
    for value, row in zip([0, 1], bins.itertuples()):
        expected = np.nanmean(data.loc[data["is_colored_int"] == value, "iou_car"])
        assert row.mean_iou_car == pytest.approx(expected)
        assert row.label == str(value)


def test_spearman_iou_uses_only_defined_values():
    data = pd.DataFrame({"x": np.arange(10, dtype=float), "loss": np.arange(10, dtype=float),
                         "iou_a": [np.nan] * 5 + [0.9, 0.8, 0.7, 0.6, 0.5]})
    dashboard = metadata_dashboards(data, metadata_columns=["x"], iou_columns=["iou_a"])[0]
    assert dashboard.spearman_iou["iou_a"] == pytest.approx(-1.0)
    assert dashboard.spearman_loss == pytest.approx(1.0)


def test_missing_field_values_are_left_out():
    data = make_samples(120, seed=1)
    data.loc[:9, "brightness"] = np.nan
    dashboard = by_field(metadata_dashboards(data, metadata_columns=["brightness"], iou_columns=IOU_COLUMNS))
    assert dashboard["brightness"].missing == 10
    assert dashboard["brightness"].bins["count"].sum() == 110


def test_heavy_ties_merge_bins():
    values = np.array([1.0] * 80 + [2.0] * 5 + list(np.linspace(3, 4, 15)))  # 1 dominates but is not 0
    data = pd.DataFrame({"f": values, "loss": np.zeros(len(values))})
    dashboard = metadata_dashboards(data, metadata_columns=["f"], iou_columns=[])[0]
    bins = dashboard.bins
    assert bins["count"].sum() == len(values)
    assert (bins["count"] > 0).all()
    assert bins["label"].is_unique
    assert dashboard.flagged_bins == []  # constant loss: nothing significant
    assert math.isnan(dashboard.spearman_loss)


def test_small_bins_are_never_flagged():
    rng = np.random.default_rng(3)
    flag = np.zeros(200, dtype=bool)
    flag[:4] = True  # 4 samples with a huge loss
    data = pd.DataFrame({"flag": flag, "loss": rng.normal(0, 0.1, 200) + np.where(flag, 10.0, 0.0)})
    dashboard = metadata_dashboards(data, metadata_columns=["flag"], iou_columns=[])[0]
    assert dashboard.flagged_bins == []
    data.loc[:7, "flag"] = True  # 8 samples, 4 of them high: enough samples, still a strong effect
    data.loc[:7, "loss"] = 10.0
    dashboard = metadata_dashboards(data, metadata_columns=["flag"], iou_columns=[])[0]
    assert dashboard.flagged_bins == ["True"]
    assert dashboard.bins.set_index("label").loc["True", "p_value"] < 0.01


def test_bonferroni_correction_caps_at_one(dashboards):
    for dashboard in dashboards.values():
        p = dashboard.bins["p_value"]
        assert ((p >= 0) & (p <= 1)).all()


def test_records_are_json_serialisable(dashboards):
    records = dashboards_to_records(dashboards.values())
    text = json.dumps(records, allow_nan=False)
    loaded = json.loads(text)
    car = next(r for r in loaded if r["field"] == "car_percent")
    assert car["bins"][0]["mean_iou_car"] is None  # NaN -> None
    assert car["bins"][0]["label"] == "0"
    assert car["flagged_bins"] == dashboards["car_percent"].flagged_bins
    assert set(car["bins"][0]) == {"label", "low", "high", "count", "mean_loss", "mean_iou_person", "mean_iou_car",
                                   "mean_mean_iou", "flagged", "p_value"}
    colored = next(r for r in loaded if r["field"] == "is_colored")
    assert colored["bins"][0]["low"] is None and colored["categorical"] is True


def test_bad_arguments_raise(samples):
    with pytest.raises(KeyError):
        metadata_dashboards(samples, metadata_columns=["nope"], iou_columns=[])
    with pytest.raises(ValueError):
        metadata_dashboards(samples, metadata_columns=["brightness"], iou_columns=[], max_bins=1)
    with pytest.raises(TypeError):
        metadata_dashboards(samples, ["brightness"], [])  # keyword-only options
