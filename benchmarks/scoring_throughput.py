"""Scoring throughput: log-densities of 100,000 query points by a DDE vs scikit-learn's
KernelDensity fitted on N points, and anomaly scores of the same queries by
`DDEAnomalyDetector` vs pyod's KNN detector, for d ∈ {6, 21, 43} and N ∈ {10,000, 100,000}.

    python benchmarks/scoring_throughput.py [--data-dir DIR] [--quick] [--out FILE]

A DDE costs O(d·width + width²) per query whatever N is; a Gaussian KDE costs O(N·d) per query
in the worst case (its KD-tree prunes far-away points, which helps less as d grows). Both
sides run in this process on the same queries, one after the other:

- DDE: a `DenoisingDensityEstimator` with the anomaly detector's default network (3 × 128
  softplus), briefly trained on the N points (at most `--train-steps` batches: the cost of a
  forward pass does not depend on the weights); `model.log_density(queries)` (compiled,
  batches of 8,192), timed after one warm-up call.
- KDE: `KernelDensity(kernel="gaussian", bandwidth=Scott's rule)` on the same N points, exact
  (rtol = 0, the default) and approximate (rtol = 1e-4, the setting of the anomaly benchmark).
  When scoring all queries would take too long, a random subset of them is timed (growing
  until it takes ≥ `--min-seconds`, capped by `--max-seconds`) and the rate is extrapolated to
  100,000 queries; the table says how many queries were timed.
- Anomaly scores: `DDEAnomalyDetector` (default network, `max_steps=--train-steps`, fixed
  σ) `score_samples(queries)` in the original units (standardization, float32 range checks
  and fixed-shape batches included), against pyod's `KNN()` (5 neighbours, its default
  tree search) `decision_function(queries)`, timed like the KDE.

Data: a 10-component Gaussian mixture in d dimensions (standardized); with `--data-dir`, the
MAF sets POWER (d = 6), HEPMASS (d = 21) and MINIBOONE (d = 43) via `dde.datasets` (training
rows as the N points, test rows as queries, resampled with replacement when fewer than
needed). Prints a markdown table, writes JSON (default
`benchmarks/results/scoring_throughput.json`).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from sklearn.neighbors import KernelDensity  # noqa: E402

DIMS = (6, 21, 43)
SIZES = (10_000, 100_000)
N_QUERIES = 100_000
MAF_BY_DIM = {6: "power", 21: "hepmass", 43: "miniboone"}


def mixture_data(n, d, seed):
    """n points of a fixed random 10-component Gaussian mixture in d dimensions,
    standardized; the same mixture for every n (its parameters come from a seed of d)."""
    prm = np.random.default_rng(1000 + d)
    means = prm.normal(scale=2.0, size=(10, d))
    scales = prm.uniform(0.3, 1.0, size=(10, d))
    rng = np.random.default_rng(seed)
    k = rng.integers(0, 10, n)
    x = means[k] + scales[k] * rng.normal(size=(n, d))
    ref = means[np.arange(20_000) % 10] + scales[np.arange(20_000) % 10] * prm.normal(
        size=(20_000, d))
    return ((x - ref.mean(0)) / ref.std(0)).astype(np.float32)


def load_points(d, n, n_queries, data_dir, seed):
    """(train [n, d], queries [n_queries, d], source description)."""
    if data_dir is None:
        return mixture_data(n, d, seed), mixture_data(n_queries, d, seed + 1), "mixture"
    from dde.datasets import load_dataset

    name = MAF_BY_DIM[d]
    train = load_dataset(name, "train", data_dir=data_dir)
    test = load_dataset(name, "test", data_dir=data_dir)
    rng = np.random.default_rng(seed)
    note = name
    if len(train) < n:
        note += f" (N resampled from {len(train)} rows)"
        train = train[rng.choice(len(train), n, replace=True)]
    else:
        train = train[rng.choice(len(train), n, replace=False)]
    queries = test[rng.choice(len(test), n_queries, replace=len(test) < n_queries)]
    return train.astype(np.float32), queries.astype(np.float32), note


def time_dde(train, queries, seed, train_steps):
    import keras

    from dde import DenoisingDensityEstimator, nets

    d = train.shape[1]
    model = DenoisingDensityEstimator(nets.energy_mlp(d, depth=3, width=128), noise_std=0.3,
                                      seed=seed)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    model.fit(train, epochs=1, batch_size=256,
              steps_per_epoch=max(1, min(train_steps, len(train) // 256)), verbose=0)
    return timed_once(model.log_density, queries)


def timed_once(score, queries):
    """Queries per second of one call `score(queries)` after a warm-up call on 1,000 of them
    (tracing of compiled functions); the scores must be finite, one per query."""
    score(queries[:1000])
    t0 = time.perf_counter()
    out = score(queries)
    seconds = time.perf_counter() - t0
    assert out.shape == (len(queries),) and np.isfinite(out).all()
    return {"seconds": seconds, "points_per_second": len(queries) / seconds,
            "timed_queries": len(queries), "extrapolated": False}


def time_kde(train, queries, rtol, min_seconds, max_seconds, seed):
    n, d = train.shape
    bandwidth = float(n ** (-1.0 / (d + 4)))
    kde = KernelDensity(bandwidth=bandwidth, rtol=rtol).fit(train)
    out = timed_rate(kde.score_samples, queries, min_seconds, max_seconds, seed)
    return {**out, "bandwidth": bandwidth}


def time_detectors(train, queries, min_seconds, max_seconds, seed, train_steps):
    """Anomaly scores of `queries`: DDEAnomalyDetector vs pyod's KNN (both fitted on train)."""
    from pyod.models.knn import KNN

    from dde.anomaly import DDEAnomalyDetector

    det = DDEAnomalyDetector(noise_std=0.3, max_steps=max(1, train_steps), random_state=seed,
                             activation="softplus").fit(train)
    dde_t = timed_once(det.score_samples, queries)
    knn = KNN().fit(train)
    knn_t = timed_rate(knn.decision_function, queries, min_seconds, max_seconds, seed)
    return dde_t, knn_t


def timed_rate(score, queries, min_seconds, max_seconds, seed):
    """Queries per second of `score` on a random subset of `queries`, grown until one call
    takes ≥ min_seconds (or every query is scored, or the next subset would exceed
    max_seconds); extrapolated to all queries when a subset was timed."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(queries))
    m = 100
    while True:
        sub = queries[order[:m]]
        t0 = time.perf_counter()
        out = score(sub)
        seconds = time.perf_counter() - t0
        assert np.all(out < np.inf)
        if m == len(queries) or seconds >= min_seconds:
            break
        rate = m / max(seconds, 1e-6)
        nxt = int(min(len(queries), max(2 * m, rate * min(1.5 * min_seconds, max_seconds))))
        if nxt <= m:
            break
        m = nxt
    rate = m / seconds
    return {"seconds": seconds, "points_per_second": rate, "timed_queries": int(m),
            "extrapolated": m < len(queries),
            "seconds_for_all_queries": len(queries) / rate}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=None,
                        help="MAF data root (power, hepmass, miniboone); default: synthetic")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" /
                                             "scoring_throughput.json"))
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: N ∈ {1,000, 5,000}, 10,000 queries, short timings")
    parser.add_argument("--min-seconds", type=float, default=5.0,
                        help="time KDE query subsets until one takes at least this long")
    parser.add_argument("--max-seconds", type=float, default=60.0,
                        help="cap on one KDE timing")
    parser.add_argument("--train-steps", type=int, default=200,
                        help="DDE training steps before timing (default 200)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import tensorflow as tf

    from dde import _io

    sizes = (1_000, 5_000) if args.quick else SIZES
    n_queries = 10_000 if args.quick else N_QUERIES
    min_s, max_s = (0.5, 5.0) if args.quick else (args.min_seconds, args.max_seconds)
    rows = []
    start = time.perf_counter()
    for d in DIMS:
        for n in sizes:
            train, queries, source = load_points(d, n, n_queries, args.data_dir, args.seed)
            dde_t = time_dde(train, queries, args.seed, 20 if args.quick else args.train_steps)
            kde_exact = time_kde(train, queries, 0.0, min_s, max_s, args.seed)
            kde_fast = time_kde(train, queries, 1e-4, min_s, max_s, args.seed)
            det_t, knn_t = time_detectors(train, queries, min_s, max_s, args.seed,
                                          20 if args.quick else args.train_steps)
            row = {"d": d, "N": n, "queries": n_queries, "source": source, "dde": dde_t,
                   "kde_exact": kde_exact, "kde_rtol_1e-4": kde_fast,
                   "detector": det_t, "pyod_knn": knn_t,
                   "ratio_detector_vs_knn": det_t["points_per_second"]
                   / knn_t["points_per_second"],
                   "ratio_vs_exact": dde_t["points_per_second"]
                   / kde_exact["points_per_second"],
                   "ratio_vs_rtol_1e-4": dde_t["points_per_second"]
                   / kde_fast["points_per_second"]}
            rows.append(row)
            print(f"d={d:2d} N={n:6d}: DDE {dde_t['points_per_second']:10.0f} pts/s | KDE "
                  f"exact {kde_exact['points_per_second']:9.1f} pts/s "
                  f"({kde_exact['timed_queries']} timed) | KDE rtol=1e-4 "
                  f"{kde_fast['points_per_second']:9.1f} pts/s | ratio "
                  f"{row['ratio_vs_exact']:.0f}× / {row['ratio_vs_rtol_1e-4']:.0f}× | "
                  f"detector {det_t['points_per_second']:9.0f} vs pyod KNN "
                  f"{knn_t['points_per_second']:8.1f} pts/s: "
                  f"{row['ratio_detector_vs_knn']:.0f}×", flush=True)
    lines = ["| d | N | DDE points/s | KDE exact points/s (queries timed) | ratio | "
             "KDE rtol=1e-4 points/s (queries timed) | ratio |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        ke, kf = r["kde_exact"], r["kde_rtol_1e-4"]
        lines.append(
            f"| {r['d']} | {r['N']:,} | {r['dde']['points_per_second']:,.0f} | "
            f"{ke['points_per_second']:,.1f} ({ke['timed_queries']:,}"
            f"{', extrapolated' if ke['extrapolated'] else ''}) | "
            f"{r['ratio_vs_exact']:,.0f}× | {kf['points_per_second']:,.1f} "
            f"({kf['timed_queries']:,}{', extrapolated' if kf['extrapolated'] else ''}) | "
            f"{r['ratio_vs_rtol_1e-4']:,.0f}× |")
    lines += ["", "| d | N | DDEAnomalyDetector points/s | pyod KNN points/s (queries timed) "
              "| ratio |", "|---|---|---|---|---|"]
    for r in rows:
        k = r["pyod_knn"]
        lines.append(
            f"| {r['d']} | {r['N']:,} | {r['detector']['points_per_second']:,.0f} | "
            f"{k['points_per_second']:,.1f} ({k['timed_queries']:,}"
            f"{', extrapolated' if k['extrapolated'] else ''}) | "
            f"{r['ratio_detector_vs_knn']:,.0f}× |")
    table = "\n".join(lines)
    big = [r for r in rows if r["N"] == max(sizes)]
    worst = min(r["ratio_vs_exact"] for r in big)
    worst_knn = min(r["ratio_detector_vs_knn"] for r in rows)
    note = (f"At N = {max(sizes):,} the DDE is {worst:,.0f}× or more faster than the exact KDE "
            f"(target ≥ 20×: {'met' if worst >= 20 else 'missed'}). The anomaly detector "
            f"scores {worst_knn:,.0f}× or more faster than pyod's KNN at every size "
            f"(target ≥ 50×: {'met' if worst_knn >= 50 else 'missed'}).")
    print(f"\n{n_queries:,} queries; KDE rates from the timed subsets, extrapolated to all "
          f"queries where marked.\n")
    print(table)
    print("\n" + note)
    _io.write_json(args.out, {
        "benchmark": "scoring_throughput", "quick": args.quick, "rows": rows, "note": note,
        "wall_seconds": time.perf_counter() - start,
        "environment": {"python": sys.version.split()[0], "platform": platform.platform(),
                        "tensorflow": tf.__version__, "cpus": os.cpu_count(),
                        "load_average": os.getloadavg()},
    })
    md_path = Path(args.out).with_suffix(".md")
    _io.write_text(md_path, f"# Scoring throughput ({n_queries:,} queries)\n\n{table}\n\n"
                   f"KDE rates from the timed query subsets, extrapolated where marked.\n"
                   f"{note}\n")
    print(f"\nwrote {args.out} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
