"""How accurate are the partition-function estimates, and are their error bars honest?

    python benchmarks/partition.py [--quick] [--dims 2,6,21,43] [--budgets 1e3,1e4,1e5,1e6]
                                   [--dde-dataset NAME --data-dir DIR] [--seed S] [--out FILE]

Part 1 — energies with known log Z. For each d and four targets, f = log p + C with C known:
"gaussian" (a random full-covariance Gaussian), "mixture" (three well-separated Gaussian
components with random full covariances and weights 0.5/0.3/0.2), and two outside every
proposal's family (`targets.py`): "banana" (a rotated banana, volume-preserving) and
"student_t" (a correlated Student-t, 5 degrees of freedom). Proposals are fitted to
20,000 samples of the target (the "training data"), as they would be to data; 2,000 further
exact draws are the reference samples of the reliability checks. For every
budget of density evaluations (1e3 … 1e6) each method estimates log Z once:

- IS (gaussian): full-covariance Gaussian fitted to the data;
- IS (student_t): multivariate Student-t (df = 5) with the data's mean and covariance;
- IS (gmm): Gaussian mixture fitted to the data, number of components (1, 2, 3, 4) by BIC
  on 5,000 of the points;
- IS (smoothed): the σ-smoothed empirical mixture of 1,000 data points with Scott's
  bandwidth σ = n^(−1/(d+4))·mean std (its log-density costs O(points·d) per sample, so it
  runs up to 1e5 evaluations);
- AIS (HMC): from the Gaussian proposal, sigmoid schedule, 5 leapfrog steps per transition,
  K = 10/40/100/200 temperatures at budgets 1e3/1e4/1e5/1e6 and as many chains as the
  budget allows. Each AIS evaluation includes the gradient (≈2–3× the cost of a plain
  evaluation): compare wall times too.

Reported: |log Ẑ − log Z|, the reported standard error, the ESS, the Pareto k̂, whether the
estimate is marked reliable (`dde.partition`), and the wall time. Headline: on the
out-of-family targets at the largest d and budget, the best method among those marked
reliable, its error in nats and in standard errors, and the methods marked unreliable.

Part 2 — a trained DDE (no known log Z): `dde.DenoisingDensityEstimator` (3 × 128 softplus,
σ = 0.1) trained on 20,000 samples of the d = 6 (and, full run, d = 21) mixture above, or on
the training split of `--dde-dataset` (anything `dde.datasets.load_dataset` accepts). Each
method normalizes it with 1e5 evaluations under 5 seeds: the spread (standard deviation) of
log Ẑ across seeds is set against the mean reported standard error, and the methods' means
against each other (a method whose mean lies below the others by more than its error bar has
an ESS too small to be trusted).

Prints markdown tables, writes JSON (default `benchmarks/results/partition.json`), the
markdown next to it (`.md`) and a plot (`.png`). `--quick` runs a tiny budget (smoke test).
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from targets import Target  # noqa: E402

METHODS = ("IS (gaussian)", "IS (student_t)", "IS (gmm)", "IS (smoothed)", "AIS (HMC)")
AIS_TEMPERATURES = {1e3: 10, 1e4: 40, 1e5: 100, 1e6: 200}
AIS_LEAPFROG = 5
SMOOTHED_MAX_BUDGET = 1e5
SMOOTHED_POINTS = 1000
N_TRAIN = 20_000
N_REFERENCE = 2_000
TARGETS = ("gaussian", "mixture", "banana", "student_t")
#: The headline: targets outside every proposal's family.
OUT_OF_FAMILY = ("banana", "student_t")
#: Proposals of a target's own family, left out of its headline.
SAME_FAMILY = {"student_t": ("IS (student_t)",)}
_START = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - _START:7.1f}s] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------- targets
def random_covariance(d, rng):
    """Random rotation of eigenvalues log-uniform in [0.1, 3]."""
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    eig = np.exp(rng.uniform(np.log(0.1), np.log(3.0), size=d))
    return (q * eig) @ q.T


def make_target(kind, d, seed):
    """(log_density_fn, true log Z, training samples [N_TRAIN, d], reference samples
    [N_REFERENCE, d]): the reference samples are independent exact draws of the target, for
    the reliability checks (`reference_samples` of `dde.partition`). "gaussian" and "mixture"
    as described above; "banana" and "student_t" are `targets.Target` families, outside the
    proposals' own families."""
    import tensorflow as tf
    import tensorflow_probability as tfp

    if kind in ("banana", "student_t"):
        target = Target(kind, d, seed)
        rng = np.random.default_rng([seed, d, 2])
        return (target.energy(), target.c, target.sample(N_TRAIN, rng),
                target.sample(N_REFERENCE, rng))
    tfd = tfp.distributions
    rng = np.random.default_rng([seed, d, 0 if kind == "gaussian" else 1])
    constant = float(rng.uniform(-20, 20))
    if kind == "gaussian":
        cov = random_covariance(d, rng)
        dist = tfd.MultivariateNormalTriL(tf.constant(rng.normal(size=d)),
                                          tf.constant(np.linalg.cholesky(cov)))
    else:
        means = 1.5 * rng.normal(size=(3, d))
        chol = np.stack([np.linalg.cholesky(random_covariance(d, rng)) for _ in range(3)])
        dist = tfd.MixtureSameFamily(
            tfd.Categorical(probs=tf.constant([0.5, 0.3, 0.2], tf.float64)),
            tfd.MultivariateNormalTriL(tf.constant(means), tf.constant(chol)))
    x = dist.sample(N_TRAIN + N_REFERENCE, seed=tf.constant([seed, d], tf.int32)).numpy()

    def log_density(x):
        return dist.log_prob(x) + constant

    return log_density, constant, x[:N_TRAIN], x[N_TRAIN:]


def gmm_components_by_bic(x, seed, choices=(1, 2, 3, 4)):
    from sklearn.mixture import GaussianMixture

    sub = x[:5_000]
    bics = {k: GaussianMixture(k, random_state=seed).fit(sub).bic(sub) for k in choices}
    return min(bics, key=bics.get)


def scott_bandwidth(x, n_points):
    d = x.shape[1]
    return float(n_points ** (-1.0 / (d + 4)) * np.mean(np.std(x, axis=0)))


def build_proposals(x, seed, smoothing_std=None):
    """Fitted proposals by method name (gmm K by BIC; smoothed σ by Scott unless given)."""
    from dde import partition as P

    k = gmm_components_by_bic(x, seed)
    sigma = scott_bandwidth(x, SMOOTHED_POINTS) if smoothing_std is None else smoothing_std
    proposals = {
        "IS (gaussian)": P.gaussian_proposal(x),
        "IS (student_t)": P.student_t_proposal(x, df=5.0),
        "IS (gmm)": P.gaussian_mixture_proposal(x, n_components=k, seed=seed),
        "IS (smoothed)": P.smoothed_empirical_proposal(x, sigma, max_points=SMOOTHED_POINTS,
                                                       seed=seed),
    }
    proposals["AIS (HMC)"] = proposals["IS (gaussian)"]
    return proposals, {"gmm_components": k, "smoothing_std": sigma}


def ais_settings(budget):
    k = AIS_TEMPERATURES.get(budget, int(max(10, min(200, round(math.sqrt(budget) / 5)))))
    chains = int(budget // (1 + (k - 1) * AIS_LEAPFROG))
    return k, max(chains, 2)


def run_method(method, fn, q, budget, seed, reference=None):
    """One estimate with `budget` density evaluations; returns a record (or None if the
    method does not run at this budget). reference: exact draws of the target for the
    reliability checks (IS: the coverage test; AIS: the reverse run, one chain per draw)."""
    from dde import partition as P

    if method == "IS (smoothed)" and budget > SMOOTHED_MAX_BUDGET:
        return None
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if method.startswith("AIS"):
            k, chains = ais_settings(budget)
            refs = None if reference is None else reference[
                np.random.default_rng(seed).choice(len(reference), chains)]
            r = P.estimate_log_partition(fn, q, chains, batch_size=4096, seed=seed,
                                         method="ais", num_steps=k,
                                         num_leapfrog_steps=AIS_LEAPFROG,
                                         reference_samples=refs)
        else:
            r = P.estimate_log_partition(fn, q, int(budget), batch_size=16384, seed=seed,
                                         reference_samples=reference)
    low_ess = any(issubclass(w.category, P.LowEffectiveSampleSizeWarning) for w in caught)
    return {"log_z": r.log_z, "stderr": r.stderr, "ess": r.ess, "num_samples": r.num_samples,
            "evaluations": r.num_evaluations, "seconds": time.perf_counter() - start,
            "low_ess_warning": low_ess, "pareto_k": r.pareto_k, "reliable": bool(r.reliable),
            "coverage_statistic": r.coverage_statistic,
            "coverage_critical": r.coverage_critical, "log_z_upper": r.log_z_upper,
            "stderr_upper": r.stderr_upper,
            "acceptance_rate": r.diagnostics.get("acceptance_rate")}


# ---------------------------------------------------------------------------- part 2
def mixture_samples(d, n, seed):
    return make_target("mixture", d, seed)[2][:n].astype("float32")


def train_dde(x, seed, epochs, noise_std=0.1):
    import keras

    import dde

    keras.utils.set_random_seed(seed)
    model = dde.DenoisingDensityEstimator(dde.nets.energy_mlp(x.shape[1], depth=3, width=128),
                                          noise_std=noise_std, seed=seed)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    model.fit(x, epochs=epochs, batch_size=256, verbose=0)
    return model


def dde_spread(model, x, budget, seeds, seed):
    from dde import partition as P

    proposals, info = build_proposals(x.astype(np.float64), seed,
                                      smoothing_std=float(model.noise_std.numpy()))
    fn = P.model_log_density_fn(model)
    rows = {}
    for method in METHODS:
        runs = []
        for s in seeds:
            rec = run_method(method, fn, proposals[method], budget, s)
            if rec is None:
                break
            runs.append(rec)
        if not runs:
            continue
        lz = np.array([r["log_z"] for r in runs])
        rows[method] = {
            "log_z_mean": float(lz.mean()), "log_z_sd_across_seeds": float(lz.std(ddof=1)),
            "mean_reported_stderr": float(np.mean([r["stderr"] for r in runs])),
            "mean_ess": float(np.mean([r["ess"] for r in runs])),
            "num_samples": runs[0]["num_samples"], "evaluations": runs[0]["evaluations"],
            "seconds_per_run": float(np.mean([r["seconds"] for r in runs])),
            "low_ess_warnings": int(sum(r["low_ess_warning"] for r in runs)),
            "log_z_per_seed": lz.tolist(),
        }
        row = rows[method]
        log(f"  DDE {method}: log Z = {lz.mean():.4f}, sd {row['log_z_sd_across_seeds']:.4f}, "
            f"SE {row['mean_reported_stderr']:.4f}")
    return rows, info


# ---------------------------------------------------------------------------- output
def fmt(v, digits=3):
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.{digits}f}"


def budget_label(b):
    return f"1e{int(round(math.log10(b)))}" if b >= 1 else str(b)


def known_z_tables(records, dims, budgets):
    lines = []
    for kind in TARGETS:
        for d in dims:
            rows = [r for r in records if r["target"] == kind and r["d"] == d]
            if not rows:
                continue
            meta = rows[0]
            lines.append(f"\n**{kind}, d = {d}** (true log Z = {meta['true_log_z']:.3f}; "
                         f"gmm K = {meta['gmm_components']}, smoothed σ = "
                         f"{meta['smoothing_std']:.3f}). Cells: |log Ẑ − log Z| / reported SE "
                         "(ESS); ! = marked unreliable (k̂, ESS or the coverage check)\n")
            lines.append("| method | " + " | ".join(budget_label(b) for b in budgets) + " |")
            lines.append("|---|" + "---|" * len(budgets))
            for method in METHODS:
                cells = []
                for b in budgets:
                    hit = [r for r in rows if r["method"] == method and r["budget"] == b]
                    if not hit:
                        cells.append("—")
                        continue
                    r = hit[0]
                    star = "" if r["reliable"] else "!"
                    cells.append(f"{fmt(r['abs_error'])} / {fmt(r['stderr'])} "
                                 f"({fmt(r['ess'], 0)}){star}")
                lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def target_line(records, budgets):
    """The headline: on each out-of-family target at the largest d and budget, the method
    with the smallest reported SE among those marked reliable (proposals of the target's own
    family left out), its error in nats and in SE,
    and which methods were marked unreliable there."""
    top = max(budgets)
    lines = []
    for kind in OUT_OF_FAMILY:
        rows = [r for r in records if r["target"] == kind and r["budget"] == top]
        if not rows:
            continue
        d = max(r["d"] for r in rows)
        rows = [r for r in rows if r["d"] == d and r["method"] not in SAME_FAMILY.get(kind, ())]
        reliable = [r for r in rows if r["reliable"]]
        flagged = ", ".join(r["method"] for r in rows if not r["reliable"]) or "none"
        if not reliable:
            lines.append(f"{kind}, d = {d}, {budget_label(top)} evaluations: no method "
                         f"reliable (flagged: {flagged}).")
            continue
        best = min(reliable, key=lambda r: r["stderr"])
        err = best["log_z"] - best["true_log_z"]
        lines.append(f"{kind}, d = {d}, {budget_label(top)} evaluations: best reliable "
                     f"method {best['method']}: log Ẑ − log Z = {err:+.4f} (SE "
                     f"{best['stderr']:.4f}, {abs(err) / best['stderr']:.1f} SE, ESS "
                     f"{best['ess']:,.0f}, k̂ {best['pareto_k']:.2f}); marked unreliable: "
                     f"{flagged}.")
    return "\n".join(lines) if lines else "Out-of-family targets: not run."


def dde_tables(dde_results):
    lines = []
    for item in dde_results:
        lines.append(f"\n**Trained DDE on {item['data']}** (d = {item['d']}, σ = "
                     f"{item['noise_std']:.3g}, {item['budget']:.0e} evaluations, "
                     f"{len(item['seeds'])} seeds; gmm K = {item['gmm_components']})\n")
        lines.append("| method | mean log Ẑ | sd across seeds | mean reported SE | sd / SE | "
                     "mean ESS | low-ESS warnings | s / run |")
        lines.append("|---|---|---|---|---|---|---|---|")
        for method, row in item["methods"].items():
            ratio = row["log_z_sd_across_seeds"] / row["mean_reported_stderr"] if row[
                "mean_reported_stderr"] > 0 else float("nan")
            lines.append(
                f"| {method} | {row['log_z_mean']:.4f} | {row['log_z_sd_across_seeds']:.4f} "
                f"| {row['mean_reported_stderr']:.4f} | {ratio:.2f} | "
                f"{row['mean_ess']:,.0f} / {row['num_samples']:,} | "
                f"{row['low_ess_warnings']}/{len(item['seeds'])} | "
                f"{row['seconds_per_run']:.1f} |")
    return "\n".join(lines)


def plot(records, dims, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dde import _io

    kinds = TARGETS
    fig, axes = plt.subplots(len(kinds), len(dims), figsize=(3.6 * len(dims), 3.2 * len(kinds)),
                             squeeze=False,
                             sharex=True)
    colors = dict(zip(METHODS, ("C0", "C1", "C2", "C3", "C4")))
    for i, kind in enumerate(kinds):
        for j, d in enumerate(dims):
            ax = axes[i][j]
            for method in METHODS:
                rows = sorted((r for r in records if r["target"] == kind and r["d"] == d
                               and r["method"] == method), key=lambda r: r["budget"])
                if not rows:
                    continue
                b = [r["budget"] for r in rows]
                ax.plot(b, [max(r["abs_error"], 1e-5) for r in rows], "o-",
                        color=colors[method], label=method)
                ax.plot(b, [max(r["stderr"], 1e-5) for r in rows], "--",
                        color=colors[method], alpha=0.6)
            ax.axhline(0.05, color="k", lw=0.6, ls=":")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_title(f"{kind}, d = {d}")
            if j == 0:
                ax.set_ylabel("|log Ẑ − log Z| (solid), SE (dashed)")
            if i == len(kinds) - 1:
                ax.set_xlabel("density evaluations")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    _io.save_figure(fig, path, dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------------------ main
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny budget, for smoke tests")
    parser.add_argument("--dims", default=None,
                        help="comma-separated dimensions (default 2,6,21,43; quick: 2,6)")
    parser.add_argument("--budgets", default=None,
                        help="comma-separated evaluation budgets (default 1e3,1e4,1e5,1e6; "
                             "quick: 1e3,1e4)")
    parser.add_argument("--dde-dataset", default=None,
                        help="train the part-2 DDE on this data set's training split "
                             "(dde.datasets.load_dataset) instead of the synthetic mixtures")
    parser.add_argument("--data-dir", default=None,
                        help="data root for --dde-dataset (default: $DDE_DATA_DIR)")
    parser.add_argument("--dde-seeds", type=int, default=None,
                        help="seeds per method in part 2 (default 5; quick: 2)")
    parser.add_argument("--skip-dde", action="store_true", help="run part 1 only")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" /
                                             "partition.json"), help="JSON output file")
    args = parser.parse_args(argv)
    try:
        dims = [int(v) for v in (args.dims or ("2,6" if args.quick else "2,6,21,43")).split(",")]
        budgets = [float(v) for v in (args.budgets or ("1e3,1e4" if args.quick
                                                       else "1e3,1e4,1e5,1e6")).split(",")]
    except ValueError as err:
        parser.error(f"bad --dims/--budgets: {err}")
    if any(d < 1 for d in dims) or any(b < 10 for b in budgets):
        parser.error("dimensions must be ≥ 1 and budgets ≥ 10")
    n_seeds = args.dde_seeds or (2 if args.quick else 5)
    out = Path(args.out)

    dde_sources = []
    if not args.skip_dde:
        if args.dde_dataset:
            from dde.datasets import load_dataset
            try:
                x = load_dataset(args.dde_dataset, "train", data_dir=args.data_dir)
            except (ValueError, TypeError) as err:
                print(f"partition.py: error: {err}", file=sys.stderr)
                return 2
            dde_sources.append((args.dde_dataset, np.asarray(x, dtype="float32")))
        else:
            for d in ([6] if args.quick else [6, 21]):
                dde_sources.append((f"synthetic 3-component mixture (d = {d})",
                                    mixture_samples(d, 4000 if args.quick else N_TRAIN,
                                                    args.seed)))

    import tensorflow as tf

    import dde
    from dde import _io

    # Part 1: known log Z.
    records = []
    for d in dims:
        for kind in TARGETS:
            fn, true_log_z, x, reference = make_target(kind, d, args.seed)
            proposals, info = build_proposals(x, args.seed)
            log(f"{kind} d={d}: gmm K={info['gmm_components']}, smoothed σ="
                f"{info['smoothing_std']:.3f}")
            for b in budgets:
                for method in METHODS:
                    seed = [args.seed, int(b) % (2**31 - 1)]
                    rec = run_method(method, fn, proposals[method], b, seed, reference)
                    if rec is None:
                        continue
                    rec.update(target=kind, d=d, method=method, budget=b,
                               true_log_z=true_log_z,
                               abs_error=abs(rec["log_z"] - true_log_z),
                               error_over_se=(rec["log_z"] - true_log_z) / rec["stderr"]
                               if rec["stderr"] > 0 else None, **info)
                    records.append(rec)
                    log(f"  {method:15s} budget {budget_label(b)}: err "
                        f"{rec['log_z'] - true_log_z:+.4f}, SE {rec['stderr']:.4f}, "
                        f"ESS {rec['ess']:.1f}, k̂ {rec['pareto_k']:.2f}"
                        f"{'' if rec['reliable'] else ' UNRELIABLE'}, {rec['seconds']:.1f}s")

    # Part 2: a trained DDE, spread across seeds.
    dde_results = []
    for name, x in dde_sources:
        epochs = 3 if args.quick else 20
        start = time.perf_counter()
        model = train_dde(x, args.seed, epochs)
        train_seconds = time.perf_counter() - start
        log(f"DDE on {name}: trained {epochs} epochs in {train_seconds:.0f}s")
        budget = 1e4 if args.quick else 1e5
        rows, info = dde_spread(model, x, budget, list(range(100, 100 + n_seeds)), args.seed)
        dde_results.append({"data": name, "d": int(x.shape[1]), "n_train": int(len(x)),
                            "noise_std": float(model.noise_std.numpy()), "epochs": epochs,
                            "train_seconds": train_seconds, "budget": budget,
                            "seeds": list(range(100, 100 + n_seeds)), "methods": rows,
                            **info})

    markdown = "\n".join([
        "## Partition function: known log Z",
        known_z_tables(records, dims, budgets),
        "",
        target_line(records, budgets),
        "",
        "## Partition function: a trained DDE, spread across seeds" if dde_results else "",
        dde_tables(dde_results),
    ])
    print(markdown)
    payload = {
        "benchmark": "partition", "quick": args.quick, "dims": dims, "budgets": budgets,
        "seed": args.seed, "methods": list(METHODS), "n_train": N_TRAIN,
        "ais": {"temperatures": {budget_label(k): v for k, v in AIS_TEMPERATURES.items()},
                "num_leapfrog_steps": AIS_LEAPFROG, "kernel": "hmc", "schedule": "sigmoid",
                "proposal": "gaussian"},
        "smoothed": {"max_budget": SMOOTHED_MAX_BUDGET, "points": SMOOTHED_POINTS},
        "known_log_z": records, "trained_dde": dde_results,
        "target": target_line(records, budgets),
        "environment": {"python": platform.python_version(), "tensorflow": tf.__version__,
                        "dde": dde.__version__, "machine": platform.machine(),
                        "cpu_count": os.cpu_count()},
        "seconds": time.perf_counter() - _START,
    }
    _io.write_json(out, payload)
    _io.write_text(out.with_suffix(".md"), markdown + "\n")
    plot(records, dims, out.with_suffix(".png"))
    log(f"wrote {out}, {out.with_suffix('.md')} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
