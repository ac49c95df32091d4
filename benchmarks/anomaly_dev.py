"""Development sets for the anomaly detector's defaults: scikit-learn's bundled data only.

    python benchmarks/anomaly_dev.py [--variants JSON] [--seeds 2] [--out FILE]

The defaults of `dde.anomaly.DDEAnomalyDetector` are chosen here, never on the ADBench sets
that `benchmarks/anomaly.py` reports. One class of a bundled data set is "normal", the rest are
anomalies, and the protocol of `benchmarks/anomaly.py` applies (train on a random 60 % of the
normal rows; test on the other normal rows plus the anomalies):

- breast_cancer: benign normal, malignant anomalies (d = 30);
- wine0, wine1, wine2: one cultivar normal (d = 13);
- digits0, digits3, digits8: one digit normal, a random fifth as many other digits as
  anomalies (d = 64, pixel counts).

Each variant is a dict of detector parameters over the defaults (default variants: the
activations softplus, swish and GELU). Prints, per set and variant, the mean AUROC and the
mean best held-out denoising loss (the early-stopping criterion, on a validation split of
the training rows: it needs no labels, lower = a better fit of the smoothed density), and
writes JSON (default `benchmarks/results/anomaly_dev.json`).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from sklearn import datasets as skd  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from anomaly import evaluate, split  # noqa: E402

DEFAULT_VARIANTS = {"softplus": {"activation": "softplus"}, "swish": {"activation": "swish"},
                    "gelu": {"activation": "gelu"}}


def development_sets():
    """[(name, X [n, d], y [n] with 1 = anomaly)] from scikit-learn's bundled data."""
    sets = []
    bc = skd.load_breast_cancer()
    sets.append(("breast_cancer", bc.data, (bc.target == 0).astype(int)))  # 0 = malignant
    wine = skd.load_wine()
    for c in range(3):
        sets.append((f"wine{c}", wine.data, (wine.target != c).astype(int)))
    digits = skd.load_digits()
    for c in (0, 3, 8):
        rng = np.random.default_rng(c)
        normal = np.flatnonzero(digits.target == c)
        other = rng.choice(np.flatnonzero(digits.target != c), len(normal) // 5, replace=False)
        idx = np.concatenate([normal, other])
        sets.append((f"digits{c}", digits.data[idx], (digits.target[idx] != c).astype(int)))
    return sets


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default=None,
                        help='JSON {"name": {detector parameters}, ...} (default: activations)')
    parser.add_argument("--seeds", type=int, default=2, help="splits per set (default 2)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" /
                                             "anomaly_dev.json"))
    args = parser.parse_args(argv)
    try:
        variants = json.loads(args.variants) if args.variants else DEFAULT_VARIANTS
        if not isinstance(variants, dict) or not all(isinstance(v, dict)
                                                     for v in variants.values()):
            raise ValueError("--variants must be a JSON object of parameter objects")
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from dde import _io

    results = {}
    for name, x, y in development_sets():
        results[name] = {}
        for vname, params in variants.items():
            runs = [evaluate("DDE", *split(x, y, seed), seed, params)
                    for seed in range(args.seeds)]
            results[name][vname] = {"auroc": float(np.mean([r["auroc"] for r in runs])),
                                    "ap": float(np.mean([r["ap"] for r in runs])),
                                    "best_val_loss": float(np.mean([r["best_val_loss"]
                                                                    for r in runs])),
                                    "fit_seconds": float(np.mean([r["fit_seconds"]
                                                                  for r in runs]))}
            print(f"{name:14s} {vname:12s} AUROC {results[name][vname]['auroc']:.4f} "
                  f"held-out DSM loss {results[name][vname]['best_val_loss']:.3f}", flush=True)
    names = list(variants)
    lines = ["| set | " + " | ".join(f"{v} AUROC" for v in names) + " | "
             + " | ".join(f"{v} DSM loss" for v in names) + " |",
             "|---|" + "---|" * (2 * len(names))]
    for ds, row in results.items():
        lines.append(f"| {ds} | " + " | ".join(f"{row[v]['auroc']:.3f}" for v in names)
                     + " | " + " | ".join(f"{row[v]['best_val_loss']:.3f}" for v in names)
                     + " |")
    mean = {v: float(np.mean([results[ds][v]["auroc"] for ds in results])) for v in names}
    lines.append("| **mean** | " + " | ".join(f"{mean[v]:.3f}" for v in names) + " |"
                 + " |" * len(names))
    table = "\n".join(lines)
    print("\n" + table)
    _io.write_json(args.out, {"benchmark": "anomaly_dev", "variants": variants,
                              "seeds": args.seeds, "results": results, "mean_auroc": mean,
                              "table": table, "environment": {
                                  "python": platform.python_version(),
                                  "cpus": os.cpu_count()}})
    _io.write_text(Path(args.out).with_suffix(".md"),
                   f"# Anomaly detector: development sets (mean AUROC over {args.seeds} "
                   f"splits)\n\n{table}\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
