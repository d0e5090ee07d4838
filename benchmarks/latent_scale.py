"""Scale benchmark of coco_seg.analysis.latent.build_latent_map: 20,000 clustered embeddings in 320 dimensions.

The embeddings are --blobs seeded Gaussian blobs of unequal sizes (a clustered latent space, like the pooled
features of a segmentation encoder). Stages, each timed in this one fresh process:

* import + JIT: ``import umap`` (numba, pynndescent and, when installed, TensorFlow through umap's
  ParametricUMAP) plus a 200-sample warm-up build_latent_map call that compiles UMAP's numba kernels. By default
  numba's on-disk cache is pointed at an empty temporary folder, so this is the cold cost a first run pays
  (--reuse-numba-cache keeps the usual cache and measures a later run).
* neighbours, map, clusters: ``LatentMap.stage_seconds`` of the full-size call ("prepare" — centring,
  normalising and the PCA reduction — is reported beside them).
* total: import + JIT + the full-size call, compared with the 2-minute goal.

Peak memory: the process's peak resident set (ru_maxrss, includes the interpreter and the libraries), its
growth during the full-size call, and the tracemalloc peak of Python / numpy allocations during that call
(--no-tracemalloc leaves tracing off). Usage: python benchmarks/latent_scale.py [--samples 20000] [--dims 320]
"""

import argparse
import os
import resource
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TL_DISABLE_ANALYTICS", "true")

import numpy as np  # noqa: E402

GOAL_SECONDS = 120.0


def clustered_embeddings(*, samples: int, dims: int, blobs: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(samples, dims) float32 Gaussian blobs of unequal sizes, non-negative like post-ReLU features; labels."""
    rng = np.random.default_rng(seed)
    weights = rng.uniform(0.5, 2.0, size=blobs)
    labels = rng.choice(blobs, size=samples, p=weights / weights.sum())
    centres = rng.normal(0.0, 1.0, size=(blobs, dims))
    spread = rng.uniform(0.4, 0.8, size=blobs)[labels, None]
    points = centres[labels] + spread * rng.normal(0.0, 1.0, size=(samples, dims))
    return np.maximum(points + 1.0, 0.0).astype(np.float32), labels


def max_rss_mib() -> float:
    """Peak resident set of this process so far (ru_maxrss is in bytes on macOS, KiB on Linux)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=20_000)
    parser.add_argument("--dims", type=int, default=320)
    parser.add_argument("--blobs", type=int, default=30)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reuse-numba-cache", action="store_true", help="keep numba's usual on-disk cache")
    parser.add_argument("--no-tracemalloc", action="store_true")
    args = parser.parse_args()

    if not args.reuse_numba_cache:
        os.environ["NUMBA_CACHE_DIR"] = tempfile.mkdtemp(prefix="latent-bench-numba-")

    embeddings, labels = clustered_embeddings(samples=args.samples, dims=args.dims, blobs=args.blobs,
                                              seed=args.seed)

    started = time.perf_counter()
    try:
        import umap  # noqa: F401
    except ImportError:
        print("umap-learn is not installed: the map falls back to PCA")
    from coco_seg.analysis.latent import build_latent_map

    import_seconds = time.perf_counter() - started
    warmup = clustered_embeddings(samples=200, dims=args.dims, blobs=4, seed=args.seed + 1)[0]
    build_latent_map(warmup, k=args.k, seed=args.seed)
    jit_seconds = time.perf_counter() - started - import_seconds

    import tracemalloc

    rss_before = max_rss_mib()
    if not args.no_tracemalloc:
        tracemalloc.start()
    started = time.perf_counter()
    latent = build_latent_map(embeddings, k=args.k, seed=args.seed)
    call_seconds = time.perf_counter() - started
    traced_peak = tracemalloc.get_traced_memory()[1] / 2**20 if tracemalloc.is_tracing() else float("nan")
    tracemalloc.stop()
    rss_after = max_rss_mib()

    from sklearn.metrics import adjusted_rand_score

    stages = latent.stage_seconds
    total = import_seconds + jit_seconds + call_seconds
    same_blob = float((labels[latent.neighbors] == labels[:, None]).mean())
    print(f"build_latent_map on {args.samples:,} x {args.dims} float32 ({args.blobs} blobs), k={args.k}, "
          f"method={latent.method}, {os.cpu_count()} CPU cores, numba cache "
          f"{'reused' if args.reuse_numba_cache else 'cold'}\n")
    print("| stage | seconds |\n|---|---|")
    print(f"| import + JIT (import {import_seconds:.1f} s, 200-sample warm-up {jit_seconds:.1f} s) "
          f"| {import_seconds + jit_seconds:.1f} |")
    for name in ("prepare", "neighbors", "map", "clusters"):
        print(f"| {name} | {stages.get(name, float('nan')):.1f} |")
    print(f"| build_latent_map call | {call_seconds:.1f} |")
    print(f"| **total (fresh process)** | **{total:.1f}** |\n")
    print("| memory | MiB |\n|---|---|")
    print(f"| peak RSS of the process (ru_maxrss) | {rss_after:.0f} |")
    print(f"| peak RSS growth during the call | {rss_after - rss_before:.0f} |")
    print(f"| tracemalloc peak during the call | {traced_peak:.0f} |")
    print(f"| input embeddings | {embeddings.nbytes / 2**20:.0f} |\n")
    print(f"clusters: {len(np.unique(latent.clusters))}, adjusted Rand index vs blobs "
          f"{adjusted_rand_score(labels, latent.clusters):.3f}; neighbours in the same blob {same_blob:.3f}")
    verdict = "met" if total <= GOAL_SECONDS else "NOT met"
    print(f"2-minute goal ({GOAL_SECONDS:.0f} s, fresh process including import + JIT): {verdict} ({total:.1f} s)")


if __name__ == "__main__":
    main()
