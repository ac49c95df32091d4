"""Anomaly scores of the density a DDE detector learns, computed exactly: the Gaussian KDE at
the detector's held-out bandwidth σ*, and variants of it (multi-scale, whitened), against the
5-nearest-neighbour distance.

    python benchmarks/anomaly_kde_target.py --data-dir DIR [--seeds 2] [--out FILE]

A DDE trained at σ approximates the data density smoothed by N(0, σ²I), whose sample version
is this KDE; so a score variant that does not help the KDE is unlikely to help the DDE. Per
ADBench set in DIR and seed: the split of `benchmarks/anomaly.py`, at most 3,000 training
rows (10 % held out to choose σ* on `DDEAnomalyDetector.AUTO_NOISE_GRID` by held-out
likelihood, as the detector does) and 4,000 test rows. Variants: "kde*" (σ*), "knn5",
"multiscale" (mean of log-densities at σ*·{0.5, 0.71, 1, 1.41, 2}, each standardized on the
held-out rows), "fixed_grid" (the same over 7 bandwidths 0.2–2), "half" (σ*/2), "double"
(2σ*) and "whitened" (the KDE in PCA-whitened coordinates, its own σ*). Prints mean AUROC and
mean rank per variant, writes JSON (default `benchmarks/results/anomaly_kde_target.json`).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy.spatial.distance import cdist
from scipy.special import logsumexp
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).parent))
from anomaly import load_npz, split  # noqa: E402

MAX_TRAIN, MAX_TEST = 3000, 4000
GRID = np.geomspace(0.2, 2.0, 17)


def kde_log_density(sq_dist, h, d):
    """log Σ_j exp(−‖x − c_j‖² / 2h²) − d log h (up to constants) from squared distances."""
    return logsumexp(-sq_dist / (2 * h * h), axis=1) - d * np.log(h)


def best_bandwidth(sq_held, d):
    return GRID[int(np.argmax([kde_log_density(sq_held, h, d).mean() for h in GRID]))]


def variants(x_train, x_test, y_test, seed):
    """{variant: AUROC} for one split."""
    rng = np.random.default_rng(seed)
    if len(x_train) > MAX_TRAIN:
        x_train = x_train[rng.choice(len(x_train), MAX_TRAIN, replace=False)]
    if len(x_test) > MAX_TEST:
        keep = rng.choice(len(x_test), MAX_TEST, replace=False)
        x_test, y_test = x_test[keep], y_test[keep]
    perm = rng.permutation(len(x_train))
    n_held = len(x_train) // 10
    held, fit = x_train[perm[:n_held]], x_train[perm[n_held:]]
    d = x_train.shape[1]
    sq_held, sq_test = cdist(held, fit, "sqeuclidean"), cdist(x_test, fit, "sqeuclidean")
    h = best_bandwidth(sq_held, d)

    def auroc(log_density):
        return float(roc_auc_score(y_test, -log_density))

    def multiscale(bandwidths):
        total = 0.0
        for b in bandwidths:
            ref = kde_log_density(sq_held, b, d)
            total = total + (kde_log_density(sq_test, b, d) - ref.mean()) / ref.std()
        return total

    cov = np.cov(fit.T) + 1e-6 * np.eye(d)
    eigval, eigvec = np.linalg.eigh(cov)
    keep = eigval > 1e-3 * eigval.max()
    w = eigvec[:, keep] / np.sqrt(eigval[keep])
    sq_held_w = cdist(held @ w, fit @ w, "sqeuclidean")
    sq_test_w = cdist(x_test @ w, fit @ w, "sqeuclidean")
    h_w = best_bandwidth(sq_held_w, int(keep.sum()))
    return {"kde*": auroc(kde_log_density(sq_test, h, d)),
            "knn5": float(roc_auc_score(y_test, np.sort(sq_test, 1)[:, 4])),
            "multiscale": auroc(multiscale(h * np.array([0.5, 0.71, 1.0, 1.41, 2.0]))),
            "fixed_grid": auroc(multiscale(np.geomspace(0.2, 2.0, 7))),
            "half": auroc(kde_log_density(sq_test, h / 2, d)),
            "double": auroc(kde_log_density(sq_test, 2 * h, d)),
            "whitened": auroc(kde_log_density(sq_test_w, h_w, int(keep.sum())))}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--skip", default="1,10,11",
                        help="file numbers to leave out (default: the three largest sets)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" /
                                             "anomaly_kde_target.json"))
    args = parser.parse_args(argv)
    from dde import _io

    skip = set(args.skip.split(","))
    files = [f for f in sorted(Path(args.data_dir).glob("*.npz"))
             if f.stem.split("_")[0] not in skip]
    results = {}
    for path in files:
        x, y = load_npz(path)
        runs = [variants(*split(x, y, seed), seed) for seed in range(args.seeds)]
        results[path.stem] = {k: float(np.mean([r[k] for r in runs])) for k in runs[0]}
        print(path.stem, {k: round(v, 3) for k, v in results[path.stem].items()}, flush=True)
    names = list(next(iter(results.values())))
    table = np.array([[results[s][k] for k in names] for s in results])
    ranks = np.mean([rankdata(-row) for row in table], axis=0)
    summary = {k: {"mean_auroc": float(table[:, j].mean()), "mean_rank": float(ranks[j])}
               for j, k in enumerate(names)}
    for k, v in summary.items():
        print(f"{k:12s} mean AUROC {v['mean_auroc']:.4f}  mean rank {v['mean_rank']:.2f}")
    _io.write_json(args.out, {"benchmark": "anomaly_kde_target", "seeds": args.seeds,
                              "per_set": results, "summary": summary})
    return 0


if __name__ == "__main__":
    sys.exit(main())
