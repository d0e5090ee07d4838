"""The per-sample cache over a long walk, in any call order, in several processes (issue 6, goal 5).

The engine walks 100k+ samples and calls the input encoder, the GT encoder and every metadata function of each,
in an order of its own, from one or more worker processes. This walks ``--samples`` distinct sample ids (the real
images of ../shared/coco_sample, or of a generated sample, each served under many ids) in a shuffled order; each
sample's calls are shuffled too, and every tenth step goes back to a random earlier sample (a cache miss by then,
or a hit). It reports the cache's largest size, the resident memory (RSS) after the first 1,000 samples and at
the end — flat when the cache is bounded — and checks a digest of every served value of a fixed subset against
a fresh, uncached decode. Two processes run the walk at once with different orders; their digests must agree.
Usage:
    python benchmarks/cache_bound.py [--samples 20000]
"""

import argparse
import dataclasses
import hashlib
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TL_DISABLE_ANALYTICS", "true")

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
CHECKED = 200  # sample ids whose served values are digested and compared


def _rss_mib() -> float:
    """Current resident memory of this process (Linux /proc; the peak from getrusage elsewhere)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
    except (OSError, ValueError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _digest(image, mask, metadata: dict) -> str:
    values = json.dumps({k: (None if v != v else v) for k, v in metadata.items()}, sort_keys=True)  # NaN → null
    return hashlib.sha256(image.tobytes() + mask.tobytes() + values.encode()).hexdigest()


def walk(samples: int, seed: int) -> dict:
    """One process's walk (run in a subprocess by ``main``)."""
    from per_sample import dataset_config

    from coco_seg.coco_data import load_labeled_split
    from coco_seg.config import load_config
    from coco_seg.encoders import encode_image, encode_mask, sample_metadata
    from coco_seg.metadata import metadata_names
    from coco_seg.samples import CACHE, _decode

    with tempfile.TemporaryDirectory() as scratch:
        config = load_config(dataset_config(Path(scratch), 128))
        split = load_labeled_split(config, "training", data_root=config.data_root)
        real = list(split.records.values())
        # `samples` distinct ids over the real files: the cache keys on the id, so each is a separate sample
        split.records = {f"{k}-{r.sample_id}": dataclasses.replace(r, sample_id=f"{k}-{r.sample_id}")
                         for k in range(-(-samples // len(real))) for r in real}
        ids = list(split.records)[:samples]
        names = list(metadata_names(config))
        order = random.Random(seed)
        order.shuffle(ids)
        checked = set(sorted(ids)[:CHECKED])
        served: dict[str, dict] = {}
        largest, rss_early = 0, None
        for step, sample_id in enumerate(ids):
            calls = [("image", None), ("mask", None)] + [("metadata", name) for name in names]
            order.shuffle(calls)
            image = mask = None
            metadata = {}
            for kind, name in calls:
                if kind == "image":
                    image = encode_image(split, sample_id)
                elif kind == "mask":
                    mask = encode_mask(split, sample_id)
                else:
                    metadata[name] = sample_metadata(split, sample_id)[name]
            if step % 10 == 9:  # out of order: back to an earlier sample
                encode_mask(split, ids[order.randrange(step + 1)])
            largest = max(largest, len(CACHE._entries))
            if sample_id in checked:
                served[sample_id] = _digest(image, mask, metadata)
            if step + 1 == 1000:
                rss_early = _rss_mib()
        # the reference: a fresh decode of each checked sample, outside the cache, through the same encoders' maths
        from coco_seg.encoders import normalize_image
        from coco_seg.masks import one_hot

        mismatches = 0
        for sample_id in checked:
            fresh = _decode(split.records[sample_id], split)
            expected = _digest(normalize_image(fresh.image), one_hot(fresh.mask, num_classes=config.num_classes),
                               {name: fresh.metadata[name] for name in names})
            mismatches += expected != served[sample_id]
        return {"samples": len(ids), "capacity": CACHE.capacity, "largest": largest, "decodes": CACHE.decodes,
                "rss_after_1000_mib": rss_early, "rss_end_mib": _rss_mib(), "checked": len(checked),
                "mismatches": mismatches, "digests": served}


def run(samples: int) -> dict:
    """Two walks at once in separate processes; their figures and whether they agree."""
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); import cache_bound; "
            "print(json.dumps(cache_bound.walk(int(sys.argv[2]), int(sys.argv[3]))))")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    processes = [subprocess.Popen([sys.executable, "-c", code, str(REPO_ROOT / "benchmarks"), str(samples), str(seed)],
                                  cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, text=True) for seed in (1, 2)]
    results = []
    for process in processes:
        output, _ = process.communicate()
        if process.returncode != 0:
            raise SystemExit(f"a walk failed (exit {process.returncode})")
        results.append(json.loads(output.strip().splitlines()[-1]))
    agree = results[0].pop("digests") == results[1].pop("digests")
    return {"walks": results, "processes_agree": agree}


def print_table(result: dict) -> None:
    print("\n| process | samples walked | cache capacity | largest cache seen | decodes | RSS after 1,000 samples "
          "(MiB) | RSS at the end (MiB) | checked values equal to a fresh decode |\n|---|---|---|---|---|---|---|---|")
    for number, walked in enumerate(result["walks"], start=1):
        print(f"| {number} | {walked['samples']} | {walked['capacity']} | {walked['largest']} | {walked['decodes']} | "
              f"{walked['rss_after_1000_mib']:.0f} | {walked['rss_end_mib']:.0f} | "
              f"{walked['checked'] - walked['mismatches']} of {walked['checked']} |")
    print(f"both processes served identical values for the checked samples: {result['processes_agree']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=20_000)  # ~1 min for two processes on 2 cores
    parser.add_argument("--json", type=Path, help="also write the figures to this file (benchmarks/run.py reads it)")
    args = parser.parse_args()
    result = run(args.samples)
    print_table(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
