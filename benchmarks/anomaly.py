"""Anomaly detection on ADBench-format data: the DDE detector vs pyod's and scikit-learn's.

    python benchmarks/anomaly.py --data-dir ../shared/data/adbench [--quick] [--out FILE]

Every `.npz` in DATA_DIR (arrays `X` [n, d], `y` [n], 1 = anomaly). Protocol per data set
and seed: a random 60 % of the normal points train, the other normal points plus all
anomalies test; features are standardized with the training statistics. Methods (scores:
higher = more normal, negated for AUROC / average precision with anomaly = positive class):

- DDE: `dde.anomaly.DDEAnomalyDetector` with its defaults (chosen on scikit-learn's bundled
  data sets and on validation splits of training data, never on these test points);
- pyod's detectors with their defaults, as ADBench and Livernoche et al. (ICLR 2024) run
  them: KNN (5 neighbours, distance to the farthest), LOF (20 neighbours), IForest (100
  trees), ECOD, COPOD, OCSVM (RBF kernel, nu=0.5);
- KernelDensity (Gaussian kernel; bandwidth by 5-fold cross-validated log-likelihood over
  a geometric grid, on at most 3,000 training rows; then fitted on all training rows and
  evaluated with relative tolerance 1e-4, which moves log-densities by < 1e-4);
- GaussianMixture (full covariances, 1–10 components by BIC on at most 3,000 training rows,
  then refitted on all training rows; reg_covar=1e-4 since several sets have discrete or
  nearly constant columns).

Reports AUROC and average precision per data set (mean ± std over seeds), the mean AUROC and
mean rank of each method over the data sets, and fit / scoring wall times; prints markdown
tables and writes JSON (default `benchmarks/results/anomaly.json`).
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from scipy.stats import rankdata  # noqa: E402
from sklearn.metrics import average_precision_score, roc_auc_score  # noqa: E402
from sklearn.mixture import GaussianMixture  # noqa: E402
from sklearn.model_selection import GridSearchCV  # noqa: E402
from sklearn.neighbors import KernelDensity  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

#: pyod detector classes of the peers (module, class), constructed with their defaults.
PYOD_PEERS = {"KNN": ("pyod.models.knn", "KNN"), "LOF": ("pyod.models.lof", "LOF"),
              "IForest": ("pyod.models.iforest", "IForest"),
              "ECOD": ("pyod.models.ecod", "ECOD"), "COPOD": ("pyod.models.copod", "COPOD"),
              "OCSVM": ("pyod.models.ocsvm", "OCSVM")}
METHODS = ("DDE", *PYOD_PEERS, "KDE", "GMM")
KDE_BANDWIDTHS = np.geomspace(0.03, 3.0, 21)
KDE_CV_MAX_ROWS = 3000
KDE_RTOL = 1e-4
GMM_MAX_COMPONENTS = 10
GMM_BIC_MAX_ROWS = 3000


def load_npz(path):
    """(X float64 [n, d], y int [n]) of an ADBench file (no pickle)."""
    with np.load(path, allow_pickle=False) as archive:
        if "X" not in archive.files or "y" not in archive.files:
            raise ValueError(f"{path}: expected arrays 'X' and 'y', found {archive.files}.")
        x = np.asarray(archive["X"], dtype=np.float64)
        y = np.asarray(archive["y"]).astype(int).ravel()
    if x.ndim != 2 or len(y) != len(x):
        raise ValueError(f"{path}: X must be [n, d] and y [n]; got {x.shape}, {y.shape}.")
    return x, y


def split(x, y, seed, train_fraction=0.6):
    """Protocol split: a random `train_fraction` of the normal rows train; the remaining
    normal rows and every anomaly test. Standardized on the training rows.
    Returns (x_train, x_test, y_test)."""
    rng = np.random.default_rng(seed)
    normal = np.flatnonzero(y == 0)
    rng.shuffle(normal)
    n_train = int(round(train_fraction * len(normal)))
    train, test_normal = normal[:n_train], normal[n_train:]
    test = np.concatenate([test_normal, np.flatnonzero(y == 1)])
    scaler = StandardScaler().fit(x[train])
    return scaler.transform(x[train]), scaler.transform(x[test]), y[test]


class _KDE:
    """KernelDensity with the bandwidth chosen by cross-validated log-likelihood."""

    def __init__(self, seed):
        self.seed = seed

    def fit(self, x):
        rng = np.random.default_rng(self.seed)
        sub = x if len(x) <= KDE_CV_MAX_ROWS else x[rng.choice(len(x), KDE_CV_MAX_ROWS,
                                                               replace=False)]
        search = GridSearchCV(KernelDensity(), {"bandwidth": KDE_BANDWIDTHS}, cv=5)
        search.fit(sub)
        self.bandwidth = float(search.best_params_["bandwidth"])
        self.model = KernelDensity(bandwidth=self.bandwidth, rtol=KDE_RTOL).fit(x)
        return self

    def score_samples(self, x):
        return self.model.score_samples(x)


class _GMM:
    """GaussianMixture with the number of components chosen by BIC on the training data."""

    def __init__(self, seed):
        self.seed = seed

    def _gmm(self, k):
        return GaussianMixture(k, covariance_type="full", reg_covar=1e-4,
                               random_state=self.seed)

    def fit(self, x):
        rng = np.random.default_rng(self.seed)
        sub = x if len(x) <= GMM_BIC_MAX_ROWS else x[rng.choice(len(x), GMM_BIC_MAX_ROWS,
                                                                replace=False)]
        best, best_bic = None, np.inf
        for k in range(1, min(GMM_MAX_COMPONENTS, len(sub) // 2) + 1):
            gmm = self._gmm(k).fit(sub)
            bic = gmm.bic(sub)
            if bic < best_bic:
                best, best_bic = gmm, bic
        self.model = best if sub is x else self._gmm(best.n_components).fit(x)
        self.n_components = best.n_components
        return self

    def score_samples(self, x):
        return self.model.score_samples(x)


class _PyOD:
    """A pyod detector behind `score_samples` (higher = more normal: −decision_function)."""

    def __init__(self, name, seed):
        module, cls = PYOD_PEERS[name]
        klass = getattr(importlib.import_module(module), cls)
        params = inspect.signature(klass).parameters
        self.model = klass(random_state=seed) if "random_state" in params else klass()

    def fit(self, x):
        self.model.fit(x)
        return self

    def score_samples(self, x):
        return -self.model.decision_function(x)


def make_method(name, seed, dde_params=None):
    """A fresh detector with `fit(x)` and `score_samples(x)` (higher = more normal)."""
    if name == "DDE":
        from dde.anomaly import DDEAnomalyDetector
        return DDEAnomalyDetector(random_state=seed, **(dde_params or {}))
    if name in PYOD_PEERS:
        return _PyOD(name, seed)
    if name == "KDE":
        return _KDE(seed)
    if name == "GMM":
        return _GMM(seed)
    raise ValueError(f"Unknown method {name!r}; choose from {METHODS}.")


def evaluate(name, x_train, x_test, y_test, seed, dde_params=None):
    """Fit on x_train, score x_test: dict with auroc, ap, fit_seconds, score_seconds."""
    det = make_method(name, seed, dde_params)
    t0 = time.perf_counter()
    det.fit(x_train)
    t1 = time.perf_counter()
    scores = det.score_samples(x_test)
    t2 = time.perf_counter()
    if not np.isfinite(scores).all():  # e.g. a KDE underflowing to -inf far from the data
        finite = scores[np.isfinite(scores)]
        scores = np.where(np.isfinite(scores), scores,
                          (finite.min() if finite.size else 0.0) - 1e6)
    out = {"auroc": float(roc_auc_score(y_test, -scores)),
           "ap": float(average_precision_score(y_test, -scores)),
           "fit_seconds": t1 - t0, "score_seconds": t2 - t1}
    if name == "DDE":
        out.update(noise_std=det.noise_std_, n_steps=det.n_steps_, best_step=det.best_step_,
                   step_milliseconds=step_milliseconds(det),
                   best_val_loss=restored_val_loss(det), activation=det.activation_,
                   val_loss_by_activation=det.activation_val_losses_)
    elif name == "KDE":
        out["bandwidth"] = det.bandwidth
    elif name == "GMM":
        out["n_components"] = det.n_components
    return out


def step_milliseconds(det) -> float:
    """Wall time per optimizer step of the selected network's training, without its first
    interval (tracing and compilation); NaN with a single interval."""
    seconds = det.history_.get("seconds", [])
    if len(seconds) < 2:
        return float("nan")
    interval = det.n_steps_ / len(seconds)
    return 1000.0 * float(np.sum(seconds[1:])) / (interval * (len(seconds) - 1))


def restored_val_loss(det) -> float:
    """The held-out denoising loss of a fitted DDEAnomalyDetector at its restored (best)
    step, at the final σ: a label-free measure of fit. NaN without a validation split."""
    return float(det.activation_val_losses_.get(det.activation_, float("nan")))


def subsample_for_quick(x, y, seed, max_rows=3000):
    """Quick mode: at most `max_rows` rows, stratified by label."""
    if len(x) <= max_rows:
        return x, y
    rng = np.random.default_rng(seed)
    keep = np.concatenate([
        rng.choice(idx, max(1, int(round(max_rows * len(idx) / len(x)))), replace=False)
        for idx in (np.flatnonzero(y == 0), np.flatnonzero(y == 1))])
    return x[np.sort(keep)], y[np.sort(keep)]


def matches(stem, key):
    """Whether the file stem `stem` ("22_magic.gamma") is selected by `key`: its number
    ("22"), its name ("magic.gamma"), the whole stem, or a prefix of it ending in "_"."""
    number, _, name = stem.partition("_")
    return key in (stem, number, name) or (key.endswith("_") and stem.startswith(key))


def summarize(results, methods):
    """Per data set mean/std of every metric, mean AUROC / AP and mean rank per method."""
    datasets = list(results)
    table = {}
    for ds in datasets:
        table[ds] = {}
        for m in methods:
            runs = results[ds][m]
            table[ds][m] = {key: {"mean": float(np.mean([r[key] for r in runs])),
                                  "std": float(np.std([r[key] for r in runs]))}
                            for key in ("auroc", "ap", "fit_seconds", "score_seconds")}
    overall = {}
    for metric in ("auroc", "ap"):
        means = np.array([[table[ds][m][metric]["mean"] for m in methods] for ds in datasets])
        ranks = np.vstack([rankdata(-row) for row in means])  # 1 = best, ties averaged
        for j, m in enumerate(methods):
            overall.setdefault(m, {})[f"mean_{metric}"] = float(means[:, j].mean())
            overall[m][f"mean_rank_{metric}"] = float(ranks[:, j].mean())
    for m in methods:
        overall[m]["total_fit_seconds"] = float(sum(
            sum(r["fit_seconds"] for r in results[ds][m]) for ds in datasets))
        overall[m]["total_score_seconds"] = float(sum(
            sum(r["score_seconds"] for r in results[ds][m]) for ds in datasets))
    return table, overall


def markdown(table, overall, methods, info):
    lines = []
    for metric, title in (("auroc", "AUROC"), ("ap", "Average precision")):
        lines.append(f"\n### {title} (mean ± std over {info['n_seeds']} seeds)\n")
        lines.append("| data set | n | d | anomalies | " + " | ".join(methods) + " |")
        lines.append("|---|---|---|---|" + "---|" * len(methods))
        for ds, row in table.items():
            best = max(row[m][metric]["mean"] for m in methods)
            cells = []
            for m in methods:
                s = f"{row[m][metric]['mean']:.3f} ± {row[m][metric]['std']:.3f}"
                cells.append(f"**{s}**" if row[m][metric]["mean"] == best else s)
            meta = info["datasets"][ds]
            lines.append(f"| {ds} | {meta['n']} | {meta['d']} | {meta['anomalies']} | "
                         + " | ".join(cells) + " |")
        lines.append(f"| **mean {title}** | | | | " + " | ".join(
            f"{overall[m]['mean_' + metric]:.3f}" for m in methods) + " |")
        lines.append("| **mean rank** | | | | " + " | ".join(
            f"{overall[m]['mean_rank_' + metric]:.2f}" for m in methods) + " |")
    lines.append("\n### Wall time (seconds, summed over data sets and seeds)\n")
    lines.append("| | " + " | ".join(methods) + " |")
    lines.append("|---|" + "---|" * len(methods))
    lines.append("| fit | " + " | ".join(
        f"{overall[m]['total_fit_seconds']:.1f}" for m in methods) + " |")
    lines.append("| score | " + " | ".join(
        f"{overall[m]['total_score_seconds']:.2f}" for m in methods) + " |")
    return "\n".join(lines)


def closing_note(overall, methods):
    if "DDE" not in methods or len(methods) < 2:
        return ""
    peers = [m for m in methods if m != "DDE"]
    best = max(peers, key=lambda m: overall[m]["mean_auroc"])
    gap = overall["DDE"]["mean_auroc"] - overall[best]["mean_auroc"]
    verdict = "meets" if gap >= 0 else "misses"
    return (f"DDE mean AUROC {overall['DDE']['mean_auroc']:.3f} vs best peer {best} "
            f"{overall[best]['mean_auroc']:.3f}: the target (≥ best peer) {verdict} "
            f"by {abs(gap):.3f}.")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True, help="folder of ADBench .npz files")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" /
                                             "anomaly.json"), help="JSON output file")
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds (default 3)")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help=f"comma-separated subset of {','.join(METHODS)}")
    parser.add_argument("--datasets", default=None,
                        help="comma-separated data sets to keep, by number (22), name "
                             "(magic.gamma) or file stem (default all)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 1 seed, ≤ 3,000 rows per set, DDE max_steps=300")
    parser.add_argument("--dde-params", default=None, metavar="JSON",
                        help='DDEAnomalyDetector parameters over its defaults, e.g. '
                             '\'{"activation": "swish"}\'')
    args = parser.parse_args(argv)
    try:
        extra = json.loads(args.dde_params) if args.dde_params else {}
    except ValueError as err:
        parser.error(f"--dde-params is not valid JSON: {err}")
    if not isinstance(extra, dict):
        parser.error("--dde-params must be a JSON object of detector parameters")

    from dde import _io

    data_dir = Path(args.data_dir)
    files = sorted(data_dir.glob("*.npz"), key=lambda p: (len(p.stem.split("_")[0]), p.stem))
    if args.datasets:
        keys = [k.strip() for k in args.datasets.split(",") if k.strip()]
        files = [f for f in files if any(matches(f.stem, k) for k in keys)]
    if not files:
        parser.error(f"no .npz files found in {data_dir}")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in methods:
        if m not in METHODS:
            parser.error(f"unknown method {m!r}; choose from {METHODS}")
    n_seeds = 1 if args.quick else args.seeds
    dde_params = {**({"max_steps": 300} if args.quick else {}), **extra}

    results, info = {}, {"n_seeds": n_seeds, "datasets": {}}
    start = time.perf_counter()
    for path in files:
        x, y = load_npz(path)
        if args.quick:
            x, y = subsample_for_quick(x, y, 0)
        name = path.stem
        info["datasets"][name] = {"n": int(len(x)), "d": int(x.shape[1]),
                                  "anomalies": int(y.sum())}
        results[name] = {m: [] for m in methods}
        for seed in range(n_seeds):
            x_train, x_test, y_test = split(x, y, seed)
            for m in methods:
                r = evaluate(m, x_train, x_test, y_test, seed, dde_params)
                results[name][m].append(r)
                print(f"{name:22s} seed {seed} {m:16s} AUROC {r['auroc']:.3f} AP {r['ap']:.3f}"
                      f" fit {r['fit_seconds']:6.1f}s score {r['score_seconds']:5.2f}s",
                      flush=True)
    table, overall = summarize(results, methods)
    text = markdown(table, overall, methods, info)
    note = closing_note(overall, methods)
    print(text)
    if note:
        print("\n" + note)
    import sklearn
    import tensorflow as tf
    _io.write_json(args.out, {
        "benchmark": "anomaly", "quick": args.quick, "data_dir": str(data_dir),
        "protocol": "standardize on training rows; train on a random 60% of the normal "
                    "points; test on the other normal points plus all anomalies",
        "methods": methods, "dde_params": dde_params, "info": info, "table": table,
        "overall": overall, "runs": results, "note": note,
        "wall_seconds": time.perf_counter() - start,
        "environment": {"python": sys.version.split()[0], "platform": platform.platform(),
                        "tensorflow": tf.__version__, "sklearn": sklearn.__version__,
                        "cpus": os.cpu_count()},
    })
    md_path = Path(args.out).with_suffix(".md")
    _io.write_text(md_path, f"# Anomaly detection on {data_dir.name}\n\nProtocol: "
                   "standardize on training rows; train on a random 60 % of the normal "
                   "points; test on the other normal points plus all anomalies.\n"
                   + text + ("\n\n" + note if note else "") + "\n")
    print(f"\nwrote {args.out} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
