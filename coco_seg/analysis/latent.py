# Latent-space analysis of per-sample embeddings, in the spirit of the FiftyOne Brain (visualization, similarity,
# uniqueness / representativeness), on plain numpy arrays.
#
# Algorithms:
#   * Working space. Each embedding is centred on the dataset mean and L2-normalised (``normalize=True``, the
#     default): Euclidean distance between rows is then the chordal distance sqrt(2 - 2 cos) of the centred
#     vectors ("centred cosine"). Centring removes the large component that post-ReLU, globally pooled CNN
#     features all share, which would otherwise push every cosine towards 1. With D > REDUCED_DIMENSIONS a
#     PCA reduction of it to REDUCED_DIMENSIONS (50) dimensions is used for clustering, the map and (for large
#     inputs) the neighbour candidates.
#   * Nearest neighbours. Exact brute force (sklearn NearestNeighbors, chunked: never an N x N matrix) in the
#     full normalised space while N^2 x D <= EXACT_SEARCH_WORK (20,000^2 x 1280 multiply-adds, ~20 s on 2
#     cores: every 20k-sample set of MobileNetV2-sized embeddings). Beyond, candidates (3x as many as needed,
#     + RERANK_MARGIN) come from the PCA-50 space and are re-ranked by their exact full-space distance, so
#     the neighbours are exact except where PCA ranks a true neighbour below every candidate. Distances are
#     Euclidean in the full normalised space. A sample is never its own neighbour (its duplicates can be).
#     The same graph (15 per sample) feeds UMAP through ``precomputed_knn``: UMAP runs no search of its own.
#   * 2-D map. UMAP (n_neighbors 15, min_dist 0.1, spectral init, default epochs — 500, or 200 above 10,000
#     samples — random_state = seed, single-threaded so it is deterministic); method "auto" falls back to
#     PCA (first two principal components, zero-padded below 2 dimensions) when umap-learn is missing or
#     fails, or when N < MIN_UMAP_SAMPLES.
#   * Clusters. KMeans (k-means++, N_INIT restarts, random_state = seed) on the PCA-50 space, with
#     n_clusters = clamp(round(sqrt(N / 2)), 2, 20) by default, never more than the number of distinct
#     samples. Every sample gets a cluster (no noise label, unlike HDBSCAN); ids are renumbered by cluster size,
#     0 = largest, so they do not depend on KMeans' internal order.
#   * Pruning (FiftyOne "representativeness" turned around): within each cluster a sample is redundant when it
#     sits near the cluster centroid and has a low loss. redundancy_score = 1 - mean(percentile rank of the
#     distance to the centroid, percentile rank of the loss), percentile rank = (rank - 0.5) / cluster size;
#     the highest scores are dropped until max(min_keep, ceil(keep_share x size)) samples remain.
#   * Labelling (uniqueness x uncertainty): novelty = mean distance from an unlabelled sample to its k nearest
#     labelled samples (same working space and search); priority = mean of the percentile ranks of novelty
#     and uncertainty over the unlabelled set; rank 1 = label first.
"""Latent map (UMAP / PCA), clusters and nearest neighbours of embeddings; pruning and labelling suggestions."""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.stats import rankdata

__all__ = [
    "LatentMap",
    "build_latent_map",
    "pruning_suggestions",
    "pruning_summary",
    "labelling_suggestions",
    "default_cluster_count",
    "keep_count",
]

EXACT_SEARCH_WORK = 20_000**2 * 1280  # largest N^2 x D searched exactly in the full space
REDUCED_DIMENSIONS = 50  # PCA dimensions of the reduced space
RERANK_MARGIN = 10  # reduced search: fetch 3 x needed + this many candidates, re-ranked by exact distance
UMAP_NEIGHBORS = 15
UMAP_MIN_DIST = 0.1
MIN_UMAP_SAMPLES = 10  # "auto" uses PCA below this many samples
MAX_DEFAULT_CLUSTERS = 20
N_INIT = 4  # KMeans restarts
_METHODS = ("auto", "umap", "pca")
_CHUNK_ELEMENTS = 1 << 23  # float32 elements per chunk of gathered candidates (32 MiB)


@dataclass(frozen=True, eq=False)
class LatentMap:
    """The latent map of N samples. Arrays are read-only; equality is identity (arrays do not compare as bools)."""

    coordinates: np.ndarray  # (N, 2) float32 map positions
    method: str  # "umap" or "pca": what actually produced `coordinates`
    clusters: np.ndarray  # (N,) int64 cluster ids >= 0, 0 = largest cluster; no noise label
    neighbors: np.ndarray  # (N, k) int64 rows of the k nearest other samples, nearest first (never the row itself)
    neighbor_distances: np.ndarray  # (N, k) float32 distances of `neighbors` in the working space, ascending
    stage_seconds: dict[str, float] = field(default_factory=dict, compare=False, repr=False)
    # ^ wall-clock seconds of the stages "prepare", "neighbors", "map", "clusters" (for benchmarks and logs)


# ----------------------------------------------------------------------------------------------- validation ---


def _as_matrix(values: np.ndarray, *, name: str, min_rows: int = 0) -> np.ndarray:
    matrix = np.asarray(values)
    if matrix.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (N, D) array, got shape {matrix.shape}")
    if matrix.shape[0] < min_rows:
        raise ValueError(f"{name} needs at least {min_rows} row(s), got {matrix.shape[0]}")
    if matrix.shape[1] < 1:
        raise ValueError(f"{name} must have at least one column, got shape {matrix.shape}")
    if not np.issubdtype(matrix.dtype, np.number) or np.issubdtype(matrix.dtype, np.complexfloating):
        raise ValueError(f"{name} must be real numbers, got dtype {matrix.dtype}")
    matrix = matrix.astype(np.float32, copy=False)  # never modified in place: callers build new arrays
    if not np.isfinite(matrix).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    return matrix


def _as_vector(values: np.ndarray, *, name: str, length: int) -> np.ndarray:
    vector = np.asarray(values)
    if vector.shape != (length,):
        raise ValueError(f"{name} must have shape ({length},), got {vector.shape}")
    if not np.issubdtype(vector.dtype, np.number) or np.issubdtype(vector.dtype, np.complexfloating):
        raise ValueError(f"{name} must be real numbers, got dtype {vector.dtype}")
    vector = vector.astype(np.float64)
    if not np.isfinite(vector).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    return vector


def _positive_int(value: int, *, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


# ----------------------------------------------------------------------------------------- working space ---


def centre_and_normalise(matrix: np.ndarray, *, centre: np.ndarray, normalize: bool) -> np.ndarray:
    """Subtract `centre`; with `normalize`, scale every row to unit length (all-zero rows stay zero)."""
    # in the matrix's own float type: a float32 matrix gets no float64 copy, a float64 one loses no precision
    centred = matrix - centre.astype(matrix.dtype if matrix.dtype == np.float64 else np.float32)
    if normalize:
        norms = np.linalg.norm(centred, axis=1, keepdims=True)
        np.divide(centred, norms, out=centred, where=norms > 1e-12)
        centred[(norms <= 1e-12)[:, 0]] = 0.0
    return centred


def _exact_search(samples: int, dimensions: int) -> bool:
    return samples * samples * dimensions <= EXACT_SEARCH_WORK


def _reduced_space(full: np.ndarray, *, seed: int) -> np.ndarray:
    """PCA of `full` to REDUCED_DIMENSIONS dimensions; `full` itself when it has no more rows or columns."""
    if full.shape[1] <= REDUCED_DIMENSIONS or full.shape[0] <= REDUCED_DIMENSIONS:
        return full
    from sklearn.decomposition import PCA

    return PCA(n_components=REDUCED_DIMENSIONS, random_state=seed).fit_transform(full).astype(np.float32)


def _exact_distances(base: np.ndarray, query: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """(Nq, C) float32 Euclidean distances from query[i] to base[candidates[i, j]], computed in chunks."""
    distances = np.empty(candidates.shape, dtype=np.float32)
    rows_per_chunk = max(1, _CHUNK_ELEMENTS // max(1, candidates.shape[1] * base.shape[1]))
    for start in range(0, len(query), rows_per_chunk):
        stop = start + rows_per_chunk
        difference = base[candidates[start:stop]] - query[start:stop, None, :]
        distances[start:stop] = np.sqrt(np.einsum("ijk,ijk->ij", difference, difference))
    return distances


def _nearest(base_full: np.ndarray, base_search: np.ndarray, query_full: np.ndarray, query_search: np.ndarray,
             *, k: int, exclude_self: bool, reranked: bool) -> tuple[np.ndarray, np.ndarray]:
    """k nearest base rows of each query row, by distance in the full space, nearest first.

    Candidates come from an exact search in the search space (3 x needed + RERANK_MARGIN of them when
    `reranked`); their distances are recomputed in the full space and re-sorted (stable: ties keep the search
    order). With `exclude_self` (query is base), each row's own index is removed from its candidates.
    """
    from sklearn.neighbors import NearestNeighbors

    wanted = k + (1 if exclude_self else 0)
    wanted = min(3 * wanted + RERANK_MARGIN if reranked else wanted, len(base_search))
    search = NearestNeighbors(n_neighbors=wanted, algorithm="brute", metric="euclidean").fit(base_search)
    candidates = search.kneighbors(query_search, return_distance=False).astype(np.int64)
    distances = _exact_distances(base_full, query_full, candidates)
    if exclude_self:
        distances[candidates == np.arange(len(candidates))[:, None]] = np.inf
    order = np.argsort(distances, axis=1, kind="stable")[:, :k]
    return (np.take_along_axis(candidates, order, axis=1),
            np.take_along_axis(distances, order, axis=1).astype(np.float32))


# ------------------------------------------------------------------------------------------------------ map ---


def _pca_map(reduced: np.ndarray, *, seed: int) -> np.ndarray:
    """First two principal components, zero-padded when fewer exist (N or D below 2, or no variance)."""
    coordinates = np.zeros((len(reduced), 2), dtype=np.float32)
    components = min(2, reduced.shape[0], reduced.shape[1])
    if components == 0 or not np.any(reduced != reduced[0]):
        return coordinates
    from sklearn.decomposition import PCA

    projected = PCA(n_components=components, random_state=seed).fit_transform(reduced)
    coordinates[:, :components] = np.nan_to_num(projected, nan=0.0, posinf=0.0, neginf=0.0)
    return coordinates


def _umap_map(reduced: np.ndarray, knn_rows: np.ndarray, knn_distances: np.ndarray, *, seed: int) -> np.ndarray:
    """UMAP on the working space, fed our own (self-first) neighbour graph of UMAP_NEIGHBORS - 1 other samples."""
    import umap  # lazy: umap-learn imports numba and pynndescent (seconds)

    n_neighbors = min(UMAP_NEIGHBORS, len(reduced) - 1)
    self_rows = np.arange(len(reduced), dtype=np.int64)[:, None]
    graph_rows = np.hstack([self_rows, knn_rows[:, : n_neighbors - 1]])
    graph_distances = np.hstack([np.zeros_like(self_rows, dtype=np.float32), knn_distances[:, : n_neighbors - 1]])
    reducer = umap.UMAP(n_neighbors=n_neighbors, min_dist=UMAP_MIN_DIST, n_components=2, metric="euclidean",
                        init="spectral", random_state=seed, n_jobs=1, verbose=False,
                        precomputed_knn=(graph_rows, graph_distances))
    with warnings.catch_warnings():
        # No NNDescent index is passed, so UMAP.transform is unavailable: expected, we never call it.
        warnings.filterwarnings("ignore", message=r"precomputed_knn\[2\]")
        coordinates = np.asarray(reducer.fit_transform(reduced), dtype=np.float32)
    if coordinates.shape != (len(reduced), 2) or not np.isfinite(coordinates).all():
        raise RuntimeError("UMAP returned a map of the wrong shape or with non-finite values")
    return coordinates


# ------------------------------------------------------------------------------------------------- clusters ---


def default_cluster_count(samples: int) -> int:
    """clamp(round(sqrt(N / 2)), 2, 20), and never more than N."""
    return min(samples, max(2, min(MAX_DEFAULT_CLUSTERS, round(math.sqrt(samples / 2)))))


def _renumber_by_size(labels: np.ndarray) -> np.ndarray:
    """Cluster ids 0..m-1 by decreasing size; equal sizes by first appearance."""
    values, first_index, inverse, counts = np.unique(labels, return_index=True, return_inverse=True,
                                                     return_counts=True)
    order = np.lexsort((first_index, -counts))
    new_id = np.empty(len(values), dtype=np.int64)
    new_id[order] = np.arange(len(values))
    return new_id[inverse.ravel()]


def _kmeans_clusters(reduced: np.ndarray, *, n_clusters: int, seed: int) -> np.ndarray:
    distinct = len(np.unique(reduced, axis=0))
    n_clusters = min(n_clusters, distinct)
    if n_clusters <= 1:
        return np.zeros(len(reduced), dtype=np.int64)
    from sklearn.cluster import KMeans

    labels = KMeans(n_clusters=n_clusters, n_init=N_INIT, random_state=seed).fit_predict(reduced)
    return _renumber_by_size(labels)


# ----------------------------------------------------------------------------------------------------- main ---


def build_latent_map(embeddings: np.ndarray, *, k: int = 5, method: str = "auto", seed: int = 0,
                     n_clusters: int | None = None, normalize: bool = True) -> LatentMap:
    """2-D map, clusters and k nearest neighbours of (N, D) embeddings (see the module comment).

    k: neighbours per sample, clamped to N - 1 (so `neighbors` is (N, min(k, N - 1))).
    method: "auto" (UMAP, PCA when umap-learn is missing or fails or N < MIN_UMAP_SAMPLES), "umap" (UMAP or an
        error) or "pca". `LatentMap.method` says which one produced the map.
    seed: random state of PCA, UMAP and KMeans; equal inputs and seed give equal outputs.
    n_clusters: KMeans cluster count; default clamp(round(sqrt(N / 2)), 2, 20). Clamped to the number of
        distinct samples.
    normalize: centre and L2-normalise the embeddings (centred-cosine geometry); False keeps plain Euclidean
        distances between the (centred) embeddings.
    """
    if method not in _METHODS:
        raise ValueError(f"method must be one of {', '.join(_METHODS)}, got {method!r}")
    k = _positive_int(k, name="k")
    if n_clusters is not None:
        n_clusters = _positive_int(n_clusters, name="n_clusters")
    seed = int(seed)
    seconds: dict[str, float] = {}

    started = time.perf_counter()
    raw = _as_matrix(embeddings, name="embeddings", min_rows=1)
    samples = len(raw)
    full = centre_and_normalise(raw, centre=raw.mean(axis=0, dtype=np.float64), normalize=normalize)
    del raw
    reduced = _reduced_space(full, seed=seed)
    reranked = not _exact_search(samples, full.shape[1]) and reduced is not full
    seconds["prepare"] = time.perf_counter() - started

    started = time.perf_counter()
    use_umap = method == "umap" or (method == "auto" and samples >= MIN_UMAP_SAMPLES)
    if method == "umap" and samples < MIN_UMAP_SAMPLES:
        raise ValueError(f"method='umap' needs at least {MIN_UMAP_SAMPLES} samples, got {samples}; use 'auto'")
    k = min(k, samples - 1)
    graph_k = max(k, min(UMAP_NEIGHBORS, samples - 1) - 1) if use_umap else k
    if graph_k > 0:
        search = reduced if reranked else full
        graph_rows, graph_distances = _nearest(full, search, full, search, k=graph_k, exclude_self=True,
                                               reranked=reranked)
    else:
        graph_rows = np.zeros((samples, 0), dtype=np.int64)
        graph_distances = np.zeros((samples, 0), dtype=np.float32)
    seconds["neighbors"] = time.perf_counter() - started

    started = time.perf_counter()
    coordinates, used = None, "pca"
    if use_umap:
        try:
            coordinates, used = _umap_map(reduced, graph_rows, graph_distances, seed=seed), "umap"
        except Exception as error:  # "auto": any failure (missing package, numba, spectral init) -> PCA
            if method == "umap":
                raise RuntimeError(f"UMAP failed: {error}") from error
            if not isinstance(error, ImportError):
                warnings.warn(f"UMAP failed ({type(error).__name__}: {error}); the latent map uses PCA instead",
                              RuntimeWarning, stacklevel=2)
    if coordinates is None:
        coordinates = _pca_map(reduced, seed=seed)
    seconds["map"] = time.perf_counter() - started

    started = time.perf_counter()
    clusters = _kmeans_clusters(reduced, n_clusters=n_clusters or default_cluster_count(samples), seed=seed)
    seconds["clusters"] = time.perf_counter() - started

    neighbors = np.ascontiguousarray(graph_rows[:, :k])
    neighbor_distances = np.ascontiguousarray(graph_distances[:, :k])
    for array in (coordinates, clusters, neighbors, neighbor_distances):
        array.setflags(write=False)
    return LatentMap(coordinates=coordinates, method=used, clusters=clusters, neighbors=neighbors,
                     neighbor_distances=neighbor_distances, stage_seconds=seconds)


# -------------------------------------------------------------------------------------------------- pruning ---


def _percentile_rank(values: np.ndarray) -> np.ndarray:
    """(rank - 0.5) / n with average ranks for ties: in (0, 1), 0.5 for a single value."""
    return (rankdata(values, method="average") - 0.5) / len(values)


def keep_count(size: int, *, keep_share: float, min_keep: int) -> int:
    """Samples a cluster of `size` keeps: max(min_keep, ceil(keep_share x size)), at most `size`."""
    # round() first so that float noise (0.07 * 100 = 7.000000000000001) does not add a sample.
    return min(size, max(min_keep, math.ceil(round(keep_share * size, 9))))


def pruning_suggestions(cluster: np.ndarray, loss: np.ndarray, embeddings_or_coordinates: np.ndarray, *,
                        keep_share: float = 0.7, min_keep: int = 2) -> pd.DataFrame:
    """Which samples to drop as redundant: low-loss samples near their cluster's centroid.

    cluster: (N,) cluster id per sample (any integers; -1 is a group like any other).
    loss: (N,) per-sample loss (lower = already learned).
    embeddings_or_coordinates: (N, D) points the centroid distances are measured in, as given (raw embeddings,
        or `LatentMap.coordinates` for the map's geometry).
    Returns one row per sample, in input order: row, cluster, drop, redundancy_score (higher = more redundant,
    in (0, 1)), distance_to_centroid, loss. Each cluster keeps exactly keep_count(size) samples (see
    `keep_count`); the dropped ones are those with the highest redundancy_score (ties: lower loss, then
    closer to the centroid, then lower row first).
    """
    if not 0.0 < keep_share <= 1.0:
        raise ValueError(f"keep_share must be in (0, 1], got {keep_share!r}")
    if isinstance(min_keep, bool) or not isinstance(min_keep, (int, np.integer)) or min_keep < 0:
        raise ValueError(f"min_keep must be a non-negative integer, got {min_keep!r}")
    points = _as_matrix(embeddings_or_coordinates, name="embeddings_or_coordinates")
    samples = len(points)
    cluster_ids = np.asarray(cluster)
    if cluster_ids.shape != (samples,) or not np.issubdtype(cluster_ids.dtype, np.integer):
        raise ValueError(f"cluster must be an integer array of shape ({samples},), got {cluster_ids.dtype} "
                         f"{cluster_ids.shape}")
    losses = _as_vector(loss, name="loss", length=samples)

    distance = np.zeros(samples, dtype=np.float64)
    score = np.zeros(samples, dtype=np.float64)
    drop = np.zeros(samples, dtype=bool)
    for cluster_id in np.unique(cluster_ids):
        members = np.flatnonzero(cluster_ids == cluster_id)
        member_points = points[members]
        centroid = member_points.mean(axis=0, dtype=np.float64)
        distance[members] = np.linalg.norm(member_points - centroid.astype(np.float32), axis=1)
        score[members] = 1.0 - 0.5 * (_percentile_rank(distance[members]) + _percentile_rank(losses[members]))
        dropped = len(members) - keep_count(len(members), keep_share=keep_share, min_keep=int(min_keep))
        if dropped > 0:
            # lexsort: last key is primary -> highest score, then lowest loss, nearest, lowest row.
            order = np.lexsort((members, distance[members], losses[members], -score[members]))
            drop[members[order[:dropped]]] = True
    return pd.DataFrame({"row": np.arange(samples, dtype=np.int64), "cluster": cluster_ids.astype(np.int64),
                         "drop": drop, "redundancy_score": score, "distance_to_centroid": distance,
                         "loss": losses})


def pruning_summary(suggestions: pd.DataFrame) -> pd.DataFrame:
    """Per cluster of `pruning_suggestions` output: cluster, size, kept, dropped, share_kept (sorted by cluster)."""
    grouped = suggestions.groupby("cluster", sort=True)["drop"]
    summary = pd.DataFrame({"size": grouped.size(), "dropped": grouped.sum().astype(np.int64)}).reset_index()
    summary["kept"] = summary["size"] - summary["dropped"]
    summary["share_kept"] = summary["kept"] / summary["size"]
    return summary[["cluster", "size", "kept", "dropped", "share_kept"]].astype(
        {"cluster": np.int64, "size": np.int64, "kept": np.int64, "dropped": np.int64, "share_kept": np.float64})


# ------------------------------------------------------------------------------------------------ labelling ---


def labelling_suggestions(unlabeled_embeddings: np.ndarray, labeled_embeddings: np.ndarray, uncertainty: np.ndarray,
                          *, k: int = 5, normalize: bool = True, seed: int = 0) -> pd.DataFrame:
    """Which unlabelled samples to label first: far from the labelled set and uncertain.

    novelty = mean distance to the min(k, N_labeled) nearest labelled samples, in the working space of
    `build_latent_map` (both sets centred on their joint mean, then L2-normalised when `normalize`; exact
    search, or PCA-reduced candidates re-ranked exactly when N_unlabeled x N_labeled x D > EXACT_SEARCH_WORK).
    uncertainty as
    given (higher = model less sure). priority = mean of the two percentile ranks over the unlabelled set.
    Returns columns row, novelty, uncertainty, priority, rank, sorted by priority descending (ties: higher
    uncertainty, higher novelty, lower row); rank 1 = label first. seed only drives the PCA reduction.
    """
    k = _positive_int(k, name="k")
    labeled = _as_matrix(labeled_embeddings, name="labeled_embeddings", min_rows=1)
    unlabeled = _as_matrix(unlabeled_embeddings, name="unlabeled_embeddings")
    if unlabeled.shape[1] != labeled.shape[1]:
        raise ValueError(f"unlabeled_embeddings has {unlabeled.shape[1]} dimensions, labeled_embeddings "
                         f"{labeled.shape[1]}")
    uncertainty_values = _as_vector(uncertainty, name="uncertainty", length=len(unlabeled))
    columns = ["row", "novelty", "uncertainty", "priority", "rank"]
    if len(unlabeled) == 0:
        return pd.DataFrame({c: pd.Series(dtype=np.int64 if c in ("row", "rank") else np.float64) for c in columns})

    both = np.vstack([labeled, unlabeled])
    full = centre_and_normalise(both, centre=both.mean(axis=0, dtype=np.float64), normalize=normalize)
    split = len(labeled)
    reranked = len(unlabeled) * split * full.shape[1] > EXACT_SEARCH_WORK and full.shape[1] > REDUCED_DIMENSIONS
    search = _reduced_space(full, seed=int(seed)) if reranked else full
    k = min(k, split)
    _, distances = _nearest(full[:split], search[:split], full[split:], search[split:], k=k, exclude_self=False,
                            reranked=reranked and search is not full)
    novelty = distances.astype(np.float64).mean(axis=1)
    priority = 0.5 * (_percentile_rank(novelty) + _percentile_rank(uncertainty_values))
    rows = np.arange(len(unlabeled), dtype=np.int64)
    order = np.lexsort((rows, -novelty, -uncertainty_values, -priority))
    return pd.DataFrame({"row": rows[order], "novelty": novelty[order], "uncertainty": uncertainty_values[order],
                         "priority": priority[order], "rank": np.arange(1, len(order) + 1, dtype=np.int64)})
