"""Clustering time and peak memory: our Ward with temporal adjacency against scikit-learn's Ward with
the same chain connectivity and against unconstrained Ward (the quadratic baseline).

A one-hour video sampled 1 in 4 is about 27k frames. Target: under 3 s and 1 GiB for it on a
2-core machine. Each measurement runs in a fresh process so peak memory is its own.

    python benchmarks/segment.py [--sizes 1000 10000 27000 100000] [--baseline-max 10000]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import time

import numpy as np

DIM = 1408  # V-JEPA 2 ViT-g hidden size


def _measure(kind: str, n: int, queue: mp.Queue) -> None:
    from scipy.cluster.hierarchy import ward

    from action100m.stages.segment import ward_merges

    rng = np.random.default_rng(0)
    # Piecewise-constant scenes plus noise, like real per-frame embeddings.
    scenes = rng.standard_normal((max(1, n // 300), DIM), dtype=np.float32)
    features = scenes[np.minimum(np.arange(n) // 300, len(scenes) - 1)]
    features += 0.3 * rng.standard_normal((n, DIM), dtype=np.float32)
    features = features.astype(np.float16)  # as stored in the embed artifact
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    if kind == "ours":
        ward_merges(features)
    elif kind == "sklearn":
        sklearn_chain_ward(features)
    else:
        ward(features.astype(np.float64))  # unconstrained Ward (the quadratic baseline)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    queue.put({"seconds": seconds, "peak_mib": peak / 1024, "delta_mib": (peak - before) / 1024})


def sklearn_chain_ward(features: np.ndarray) -> None:
    import warnings

    from scipy.sparse import diags
    from sklearn.cluster import AgglomerativeClustering

    n = len(features)
    chain = diags([np.ones(n - 1), np.ones(n - 1)], [-1, 1], shape=(n, n), format="csr")
    model = AgglomerativeClustering(
        n_clusters=1, linkage="ward", connectivity=chain, compute_full_tree=True
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(features.astype(np.float64))


def measure(kind: str, n: int) -> dict[str, float]:
    queue: mp.Queue = mp.Queue()
    process = mp.get_context("fork").Process(target=_measure, args=(kind, n, queue))
    process.start()
    result = queue.get()
    process.join()
    return dict(result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 27000, 100000])
    parser.add_argument(
        "--baseline-max", type=int, default=10000, help="largest n for the baseline"
    )
    args = parser.parse_args()
    rows = []
    header = ["frames", "ours s", "ours MiB", "sklearn s", "sklearn MiB", "full s", "full MiB"]
    print(" ".join(f"{h:>11}" for h in header) + "  ours vs sklearn / full")
    for n in args.sizes:
        ours = measure("ours", n)
        sklearn = measure("sklearn", n)
        full = measure("full", n) if n <= args.baseline_max else None
        cells = [n, ours["seconds"], ours["peak_mib"], sklearn["seconds"], sklearn["peak_mib"]]
        cells += [full["seconds"], full["peak_mib"]] if full else [float("nan")] * 2
        ratios = f"{sklearn['seconds'] / ours['seconds']:.1f}x"
        ratios += f" / {full['seconds'] / ours['seconds']:.1f}x" if full else " / -"
        print(
            " ".join(f"{c:>11.2f}" if isinstance(c, float) else f"{c:>11}" for c in cells), ratios
        )
        rows.append({"frames": n, "ours": ours, "sklearn": sklearn, "full": full})
    one_hour = min(rows, key=lambda r: abs(r["frames"] - 27000))
    verdict = one_hour["ours"]["seconds"] < 3 and one_hour["ours"]["peak_mib"] < 1024
    print(
        f"target (~1 h video, {one_hour['frames']} frames: < 3 s, < 1 GiB): "
        f"{'met' if verdict else 'MISSED'}"
    )
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
