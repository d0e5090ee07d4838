"""coco_seg.analysis.latent on seeded Gaussian blobs and hand-built pruning / labelling cases.

UMAP runs only on ~200 samples (its numba kernels compile once per process, a few seconds).
"""

import math
import sys

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import adjusted_rand_score, silhouette_score

import _support  # noqa: F401  (sets TL_DISABLE_ANALYTICS before anything imports code-loader)
from coco_seg.analysis import latent
from coco_seg.analysis.latent import (LatentMap, build_latent_map, keep_count, labelling_suggestions,
                                      pruning_suggestions, pruning_summary)

BLOBS, PER_BLOB, DIMS = 4, 50, 64


def blobs(*, blobs: int = BLOBS, per_blob: int = PER_BLOB, dims: int = DIMS, seed: int = 0,
          spread: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Well-separated Gaussian blobs (centre distance ~ 8.5 x spread x sqrt(2)), shuffled; float32 and labels."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 6.0, size=(blobs, dims))
    labels = rng.permutation(np.repeat(np.arange(blobs), per_blob))
    points = centres[labels] + spread * rng.normal(size=(len(labels), dims))
    return points.astype(np.float32), labels


def normalised(embeddings: np.ndarray) -> np.ndarray:
    """The documented working space: centred on the mean, rows scaled to unit length."""
    centred = embeddings.astype(np.float64) - embeddings.mean(axis=0, dtype=np.float64)
    return centred / np.linalg.norm(centred, axis=1, keepdims=True)


def brute_force_neighbours(embeddings: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    space = normalised(embeddings)
    distances = np.linalg.norm(space[:, None, :] - space[None, :, :], axis=2)
    np.fill_diagonal(distances, np.inf)
    rows = np.argsort(distances, axis=1, kind="stable")[:, :k]
    return rows, np.take_along_axis(distances, rows, axis=1)


@pytest.fixture(scope="module")
def blob_data() -> tuple[np.ndarray, np.ndarray]:
    return blobs()


@pytest.fixture(scope="module")
def umap_map(blob_data) -> LatentMap:
    embeddings, _ = blob_data
    return build_latent_map(embeddings, k=5, seed=0, n_clusters=BLOBS)


# --------------------------------------------------------------------------------------------- latent map ---


def test_umap_map_shape_and_separation(umap_map, blob_data):
    _, labels = blob_data
    assert umap_map.method == "umap"
    assert umap_map.coordinates.shape == (len(labels), 2)
    assert umap_map.coordinates.dtype == np.float32
    assert np.isfinite(umap_map.coordinates).all()
    # Blobs stay apart on the map.
    assert silhouette_score(umap_map.coordinates, labels) > 0.5
    assert set(umap_map.stage_seconds) == {"prepare", "neighbors", "map", "clusters"}


def test_clusters_recover_blobs(umap_map, blob_data):
    _, labels = blob_data
    assert umap_map.clusters.shape == labels.shape
    assert np.issubdtype(umap_map.clusters.dtype, np.integer)
    assert umap_map.clusters.min() >= 0
    assert adjusted_rand_score(labels, umap_map.clusters) > 0.9
    # Ids are renumbered by size, 0 = largest.
    sizes = np.bincount(umap_map.clusters)
    assert list(sizes) == sorted(sizes, reverse=True)


def test_neighbours_are_the_exact_nearest_others_in_the_own_blob(umap_map, blob_data):
    embeddings, labels = blob_data
    rows = np.arange(len(labels))
    assert umap_map.neighbors.shape == (len(labels), 5)
    assert umap_map.neighbor_distances.shape == (len(labels), 5)
    assert umap_map.neighbor_distances.dtype == np.float32
    assert not (umap_map.neighbors == rows[:, None]).any()
    assert (labels[umap_map.neighbors] == labels[:, None]).all()
    assert (np.diff(umap_map.neighbor_distances, axis=1) >= 0).all()
    expected_rows, expected_distances = brute_force_neighbours(embeddings, 5)
    np.testing.assert_array_equal(umap_map.neighbors, expected_rows)
    np.testing.assert_allclose(umap_map.neighbor_distances, expected_distances, rtol=1e-4, atol=1e-5)


def test_deterministic_for_a_seed(umap_map, blob_data):
    embeddings, _ = blob_data
    again = build_latent_map(embeddings.copy(), k=5, seed=0, n_clusters=BLOBS)
    assert again.method == umap_map.method
    np.testing.assert_array_equal(again.coordinates, umap_map.coordinates)
    np.testing.assert_array_equal(again.clusters, umap_map.clusters)
    np.testing.assert_array_equal(again.neighbors, umap_map.neighbors)
    np.testing.assert_array_equal(again.neighbor_distances, umap_map.neighbor_distances)


def test_outputs_are_read_only(umap_map):
    with pytest.raises(ValueError):
        umap_map.coordinates[0, 0] = 1.0
    with pytest.raises(AttributeError):
        umap_map.method = "pca"


def test_pca_method(blob_data):
    embeddings, labels = blob_data
    first = build_latent_map(embeddings, method="pca", seed=3, n_clusters=BLOBS)
    second = build_latent_map(embeddings, method="pca", seed=3, n_clusters=BLOBS)
    assert first.method == "pca"
    assert first.coordinates.shape == (len(labels), 2) and first.coordinates.dtype == np.float32
    assert np.isfinite(first.coordinates).all()
    np.testing.assert_array_equal(first.coordinates, second.coordinates)
    np.testing.assert_array_equal(first.clusters, second.clusters)
    variances = first.coordinates.var(axis=0)
    assert variances[0] >= variances[1] > 0  # principal components, in order
    assert adjusted_rand_score(labels, first.clusters) > 0.9


def test_auto_falls_back_to_pca_when_umap_is_missing(blob_data, monkeypatch):
    embeddings, _ = blob_data
    monkeypatch.setitem(sys.modules, "umap", None)  # `import umap` now raises ImportError
    assert build_latent_map(embeddings, method="auto").method == "pca"
    with pytest.raises(RuntimeError, match="UMAP failed"):
        build_latent_map(embeddings, method="umap")


def test_auto_falls_back_to_pca_with_a_warning_when_umap_fails(blob_data, monkeypatch):
    embeddings, _ = blob_data

    def broken_umap(*args, **kwargs):
        raise FloatingPointError("spectral initialisation diverged")

    monkeypatch.setattr(latent, "_umap_map", broken_umap)
    with pytest.warns(RuntimeWarning, match="uses PCA instead"):
        result = build_latent_map(embeddings, method="auto")
    assert result.method == "pca" and np.isfinite(result.coordinates).all()
    with pytest.raises(RuntimeError, match="UMAP failed"):
        build_latent_map(embeddings, method="umap")


def test_default_cluster_count():
    assert [latent.default_cluster_count(n) for n in (1, 2, 3, 8, 32, 200, 800, 20_000)] == [1, 2, 2, 2, 4, 10, 20, 20]
    embeddings, _ = blobs(per_blob=8)  # 32 samples -> 4 clusters by default
    assert len(np.unique(build_latent_map(embeddings, method="pca").clusters)) == 4


@pytest.mark.parametrize("samples, dims", [(3, 2), (3, 1), (2, 5), (1, 4), (9, 3)])
def test_tiny_inputs(samples, dims):
    embeddings = np.random.default_rng(samples * 10 + dims).normal(size=(samples, dims)).astype(np.float32)
    result = build_latent_map(embeddings, k=5)
    k = min(5, samples - 1)
    assert result.method == "pca"  # below MIN_UMAP_SAMPLES
    assert result.coordinates.shape == (samples, 2) and np.isfinite(result.coordinates).all()
    assert result.neighbors.shape == (samples, k) and result.neighbor_distances.shape == (samples, k)
    assert not (result.neighbors == np.arange(samples)[:, None]).any()
    for row in range(samples):  # the k nearest are all the other samples when k = N - 1
        if k == samples - 1:
            assert set(result.neighbors[row]) == set(range(samples)) - {row}
    assert result.clusters.shape == (samples,) and result.clusters.min() >= 0
    assert len(np.unique(result.clusters)) == min(samples, 2)
    if dims == 1:
        assert (result.coordinates[:, 1] == 0).all()


def test_umap_needs_enough_samples():
    with pytest.raises(ValueError, match="at least"):
        build_latent_map(np.zeros((5, 3), dtype=np.float32), method="umap")


def test_duplicates_never_list_a_sample_as_its_own_neighbour():
    embeddings = np.tile(np.arange(6, dtype=np.float32), (12, 1))  # 12 identical rows
    result = build_latent_map(embeddings, k=3)
    assert not (result.neighbors == np.arange(12)[:, None]).any()
    assert (result.neighbor_distances == 0).all()
    assert (result.clusters == 0).all()  # one distinct point, one cluster
    assert np.isfinite(result.coordinates).all()


def test_reduced_search_reranks_to_the_exact_neighbours(monkeypatch):
    embeddings, labels = blobs(blobs=6, per_blob=50, dims=80, seed=1)
    monkeypatch.setattr(latent, "EXACT_SEARCH_WORK", 0)  # force the PCA-50 candidate search
    monkeypatch.setattr(latent, "_CHUNK_ELEMENTS", 1000)  # and many small re-ranking chunks
    result = build_latent_map(embeddings, k=5, method="pca")
    expected_rows, expected_distances = brute_force_neighbours(embeddings, 5)
    assert (labels[result.neighbors] == labels[:, None]).all()
    recall = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(result.neighbors, expected_rows)])
    assert recall > 0.95
    # Distances are exact full-space distances even though candidates came from the reduction.
    chosen = normalised(embeddings)
    recomputed = np.linalg.norm(chosen[:, None, :] - chosen[result.neighbors], axis=2)
    np.testing.assert_allclose(result.neighbor_distances, recomputed, rtol=1e-4, atol=1e-5)


def test_invalid_inputs():
    good = np.zeros((4, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="2-D"):
        build_latent_map(np.zeros(5, dtype=np.float32))
    with pytest.raises(ValueError, match="NaN"):
        build_latent_map(np.full((4, 3), np.nan, dtype=np.float32))
    with pytest.raises(ValueError, match="method"):
        build_latent_map(good, method="tsne")
    with pytest.raises(ValueError, match="k"):
        build_latent_map(good, k=0)
    with pytest.raises(ValueError, match="at least 1"):
        build_latent_map(np.zeros((0, 3), dtype=np.float32))


# ------------------------------------------------------------------------------------------------- pruning ---


def line_cluster() -> tuple[np.ndarray, np.ndarray]:
    """11 points on a line around 0; loss grows with the distance from 0, except the centre point, the worst.

    Scores (1 - mean of percentile ranks, n = 11): -1: 0.886, +1: 0.841, -2: 0.705, +2: 0.659, ..., 0: 0.5.
    """
    positions = np.array([0, -1, 1, -2, 2, -3, 3, -4, 4, -5, 5], dtype=np.float32)
    loss = np.abs(positions) + 0.01 * (positions > 0)
    loss[0] = 100.0  # central but not learned: must be kept
    coordinates = np.stack([positions, np.zeros_like(positions)], axis=1)
    return coordinates, loss


def test_pruning_drops_low_loss_central_samples_first():
    coordinates, loss = line_cluster()
    result = pruning_suggestions(np.zeros(11, dtype=np.int64), loss, coordinates, keep_share=0.7, min_keep=2)
    assert list(result.columns[:4]) == ["row", "cluster", "drop", "redundancy_score"]
    assert result["row"].tolist() == list(range(11))
    # keep ceil(0.7 x 11) = 8, drop 3: positions -1, +1, -2 (rows 1, 2, 3); the central high-loss row 0 stays.
    assert result.loc[result["drop"], "row"].tolist() == [1, 2, 3]
    assert not result.loc[0, "drop"]
    np.testing.assert_allclose(result.loc[[1, 2, 3, 0], "redundancy_score"],
                               [1 - (2 / 11 + 0.5 / 11) / 2, 1 - (2 / 11 + 1.5 / 11) / 2,
                                1 - (4 / 11 + 2.5 / 11) / 2, 0.5])
    dropped_scores = result.loc[result["drop"], "redundancy_score"]
    kept_scores = result.loc[~result["drop"], "redundancy_score"]
    assert dropped_scores.min() > kept_scores.max()


def test_pruning_keeps_the_documented_number_per_cluster():
    rng = np.random.default_rng(0)
    sizes = {0: 11, 1: 2, 2: 1, 3: 7, -1: 20, 7: 3}
    cluster = np.concatenate([np.full(size, cid) for cid, size in sizes.items()])
    rng.shuffle(cluster)
    points = rng.normal(size=(len(cluster), 16)).astype(np.float32)
    loss = rng.uniform(size=len(cluster))
    for keep_share, min_keep in [(0.7, 2), (0.3, 1), (0.5, 5), (1.0, 0)]:
        result = pruning_suggestions(cluster, loss, points, keep_share=keep_share, min_keep=min_keep)
        summary = pruning_summary(result).set_index("cluster")
        assert sorted(summary.index) == sorted(sizes)
        for cid, size in sizes.items():
            expected = min(size, max(min_keep, math.ceil(keep_share * size)))
            assert summary.loc[cid, "size"] == size
            assert summary.loc[cid, "kept"] == expected == keep_count(size, keep_share=keep_share,
                                                                      min_keep=min_keep)
            assert summary.loc[cid, "kept"] >= min(min_keep, size)
            assert summary.loc[cid, "dropped"] == size - expected
            assert summary.loc[cid, "share_kept"] == pytest.approx(expected / size)
        assert list(summary.reset_index().columns) == ["cluster", "size", "kept", "dropped", "share_kept"]
        assert result["redundancy_score"].between(0, 1, inclusive="neither").all()


def test_keep_count_ignores_float_noise():
    assert 0.07 * 100 > 7  # 7.000000000000001
    assert keep_count(100, keep_share=0.07, min_keep=0) == 7
    assert keep_count(3, keep_share=0.7, min_keep=0) == 3  # ceil(2.1)
    assert keep_count(3, keep_share=0.7, min_keep=5) == 3  # never more than the cluster


def test_pruning_with_latent_map_clusters(umap_map, blob_data):
    embeddings, _ = blob_data
    loss = np.random.default_rng(1).uniform(size=len(embeddings))
    result = pruning_suggestions(umap_map.clusters, loss, embeddings)
    summary = pruning_summary(result)
    assert summary["size"].sum() == len(embeddings)
    assert (summary["kept"] == [keep_count(s, keep_share=0.7, min_keep=2) for s in summary["size"]]).all()


def test_pruning_rejects_bad_arguments():
    coordinates, loss = line_cluster()
    cluster = np.zeros(11, dtype=np.int64)
    with pytest.raises(ValueError, match="keep_share"):
        pruning_suggestions(cluster, loss, coordinates, keep_share=0.0)
    with pytest.raises(ValueError, match="loss"):
        pruning_suggestions(cluster, loss[:5], coordinates)
    with pytest.raises(ValueError, match="cluster"):
        pruning_suggestions(cluster.astype(float), loss, coordinates)


# ----------------------------------------------------------------------------------------------- labelling ---


def labelling_case() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labelled: two tight blobs. Unlabelled rows 0-4 sit in the blobs, row 5 far from both, row 6 half-way."""
    rng = np.random.default_rng(0)
    dims = 8
    centre_a, centre_b, elsewhere = np.zeros(dims), np.zeros(dims), np.zeros(dims)
    centre_a[0], centre_b[1], elsewhere[2] = 10.0, 10.0, 10.0
    labeled = np.vstack([centre_a + 0.3 * rng.normal(size=(40, dims)), centre_b + 0.3 * rng.normal(size=(40, dims))])
    unlabeled = np.vstack([centre_a + 0.3 * rng.normal(size=(3, dims)), centre_b + 0.3 * rng.normal(size=(2, dims)),
                           elsewhere + 0.3 * rng.normal(size=(1, dims)),
                           (centre_a + elsewhere) / 2 + 0.3 * rng.normal(size=(1, dims))])
    uncertainty = np.array([0.1, 0.5, 0.2, 0.3, 0.4, 0.9, 0.05])
    return unlabeled.astype(np.float32), labeled.astype(np.float32), uncertainty


def test_labelling_ranks_far_and_uncertain_first():
    unlabeled, labeled, uncertainty = labelling_case()
    result = labelling_suggestions(unlabeled, labeled, uncertainty, k=5)
    assert list(result.columns) == ["row", "novelty", "uncertainty", "priority", "rank"]
    assert result.loc[0, "row"] == 5 and result.loc[0, "rank"] == 1
    assert result["rank"].tolist() == list(range(1, 8))
    assert sorted(result["row"]) == list(range(7))
    assert result["priority"].is_monotonic_decreasing
    by_row = result.set_index("row")
    assert by_row["novelty"].idxmax() == 5  # far from every labelled sample
    assert by_row.loc[6, "novelty"] > by_row.loc[[0, 1, 2, 3, 4], "novelty"].max()  # half-way: more than in-blob
    np.testing.assert_allclose(by_row.sort_index()["uncertainty"], uncertainty)
    # Dominance: more novel and more uncertain always means higher priority.
    for i in range(7):
        for j in range(7):
            if by_row.loc[i, "novelty"] > by_row.loc[j, "novelty"] and uncertainty[i] > uncertainty[j]:
                assert by_row.loc[i, "priority"] > by_row.loc[j, "priority"]


def test_labelling_novelty_is_the_mean_distance_to_the_k_nearest_labelled():
    unlabeled, labeled, uncertainty = labelling_case()
    result = labelling_suggestions(unlabeled, labeled, uncertainty, k=3).set_index("row").sort_index()
    space = normalised(np.vstack([labeled, unlabeled]))
    distances = np.linalg.norm(space[len(labeled):, None, :] - space[None, :len(labeled), :], axis=2)
    expected = np.sort(distances, axis=1)[:, :3].mean(axis=1)
    np.testing.assert_allclose(result["novelty"], expected, rtol=1e-4)


def test_labelling_edge_cases():
    unlabeled, labeled, uncertainty = labelling_case()
    few = labelling_suggestions(unlabeled, labeled[:2], uncertainty, k=5)  # k clamped to 2 labelled samples
    assert len(few) == 7 and np.isfinite(few["novelty"]).all()
    empty = labelling_suggestions(unlabeled[:0], labeled, uncertainty[:0])
    assert isinstance(empty, pd.DataFrame) and len(empty) == 0
    assert list(empty.columns) == ["row", "novelty", "uncertainty", "priority", "rank"]
    with pytest.raises(ValueError, match="at least 1"):
        labelling_suggestions(unlabeled, labeled[:0], uncertainty)
    with pytest.raises(ValueError, match="dimensions"):
        labelling_suggestions(unlabeled[:, :4], labeled, uncertainty)
    with pytest.raises(ValueError, match="uncertainty"):
        labelling_suggestions(unlabeled, labeled, uncertainty[:3])
