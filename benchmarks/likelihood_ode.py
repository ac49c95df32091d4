"""Probability-flow likelihoods: the in-graph solver of `dde.likelihood` vs the tutorial's
method, and exact vs Hutchinson divergences.

Part 1 — 10,000 points of the 1-D three-Gaussian mixture (`gaussian_mixture_1d`), VP-SDE,
T_ε = 1e-5, rtol = atol = 1e-5, one solve over all points (as in the tutorial):
  - in-graph: `dde.ProbabilityFlow` — Dormand–Prince (TFP) on [x, Δlog p] in float64 inside one
    `tf.function` (and XLA-compiled, `jit_compile=True`), exact divergence; wall time of the
    first call (tracing / compilation included) and of a second call;
  - reference: the probability-flow tutorial's method — SciPy `solve_ivp` (RK45) on the
    flattened [x, Δlog p] state, the score network evaluated eagerly from NumPy at every call,
    the drift and the divergence by separate network calls (as the tutorial's `ode_func` and
    `ode_func_div` do); also a fused variant (one eager call with a GradientTape for both).
  Both solve the same ODE for the same model: wall time, NFE and max |Δ log p| side by side.
  Models: two score networks trained here (3,000 steps; 2×64 and 3×128 swish MLPs), and the
  exact score of the mixture (closed form), for which the error against the true log-density
  of the marginal at T_ε is reported too (prior: the exact p_T, so only solver error remains).
  A learned score is unreliable far outside the data; the rare points whose probability flow
  leaves the data region (log p < −50) are counted and excluded from the "data" error column.
  The in-graph solve is also run at rtol = atol = 1e-6: its distance to the reference then
  measures mostly the reference's own solver error. Both solvers control one error norm over
  the whole state (all points at once), so single points can be off by more than the
  tolerance: the table gives the maximum and the 99th percentile of |Δ log p|.

Part 2 — d = 2, 10, 43 (Gaussian data with a random covariance, a 3×128 score network trained
for 600 steps): exact divergence (batched Jacobian, cost ∝ d) vs Hutchinson–Skilling with one
Rademacher probe: wall time (warm) and the error of the Hutchinson log p against the exact-
divergence log p of the same model (mean, i.e. bias, and RMS over points); and the time of
one exact divergence by reverse mode with a vectorized Jacobian vs forward mode.

Solvers: every Part-1 model is also solved with each Runge–Kutta pair of `dde.ode` —
"dopri5" (the default: Dormand–Prince with SciPy's error norm and step control), "tsit5"
and TFP's DormandPrince ("tfp") — warm, against the same SciPy reference.

    python benchmarks/likelihood_ode.py [--quick] [--out benchmarks/results/likelihood_ode.json]

`--data-dir` is accepted for uniformity with the other benchmarks; this one uses generated data.
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from scipy.integrate import solve_ivp  # noqa: E402

import dde  # noqa: E402
from dde import _io  # noqa: E402
from dde.datasets import toy  # noqa: E402

EPS = 1e-5
TOL = 1e-5
COLLAPSED = -50.0  # log p below this: the flow left the region the network was trained on
MIX = dict(means=[-0.5, 1.0, 2.0], stds=[0.25, 0.25, 0.5], weights=[0.4, 0.3, 0.3])
SOLVERS = ("dopri5", "tsit5", "tfp")


# ------------------------------------------------------------------------------- models
def train_score_network(x, depth, width, steps, seed=0, batch_size=512, lr=1e-2):
    keras.utils.set_random_seed(seed)
    d = x.shape[1]
    model = dde.ScoreNetwork(dde.nets.score_mlp(d, depth=depth, width=width), sde=dde.VPSDE(),
                             weighting="beta", eps=EPS, seed=seed)
    per_epoch = -(-len(x) // batch_size)
    epochs = max(1, steps // per_epoch)
    schedule = keras.optimizers.schedules.CosineDecay(lr, epochs * per_epoch, alpha=0.02)
    model.compile(optimizer=keras.optimizers.Adam(schedule))
    start = time.perf_counter()
    model.fit(x, epochs=epochs, batch_size=batch_size, verbose=0)
    return model, time.perf_counter() - start


class MixtureScore:
    """The exact score of the VP-diffused mixture, p_t = Σ w_i N(α m_i, α² s_i² + σ²)."""

    def __init__(self, sde):
        self.sde = sde
        self.m = tf.constant(MIX["means"], tf.float64)
        self.s2 = tf.constant(np.square(MIX["stds"]), tf.float64)
        self.logw = tf.constant(np.log(MIX["weights"]), tf.float64)

    def _parts(self, x, t):
        alpha, std = self.sde.marginal_coefficients(tf.cast(t, tf.float64))
        var = tf.square(alpha) * self.s2 + tf.square(std)
        diff = tf.cast(x, tf.float64) - alpha * self.m  # [n, 3]
        logits = self.logw - 0.5 * tf.math.log(2 * math.pi * var) - 0.5 * diff ** 2 / var
        return logits, diff, var

    def __call__(self, x, t):
        logits, diff, var = self._parts(x, t)
        r = tf.nn.softmax(logits, axis=-1)
        return tf.reduce_sum(r * (-diff / var), axis=-1, keepdims=True)

    def log_prob(self, x, t):
        return tf.reduce_logsumexp(self._parts(x, t)[0], axis=-1)


# ---------------------------------------------------------------------------- reference
def reference_log_prob(score_call, x, sde, fused=False):
    """The tutorial's method: SciPy RK45 on the flat state [x, Δ], the score evaluated eagerly
    from NumPy at each call. score_call(x_tensor [n, 1] float32, t_tensor [n, 1]) → [n, 1].
    Returns (log p with the N(0, 1) prior, latent z, NFE)."""
    n, d = x.shape
    beta_min, beta_max = sde.beta_min, sde.beta_max
    count = [0]

    def div_call(xx, tt):
        with tf.GradientTape() as tape:
            tape.watch(xx)
            out = score_call(xx, tt)
        return out, tape.gradient(out, xx)

    def rhs(t, y):
        count[0] += 1
        xx = tf.constant(y[:n * d].reshape(n, d), tf.float32)
        tt = tf.constant(np.full((n, 1), t, np.float32))
        if fused:
            s, ds = div_call(xx, tt)
        else:  # as the tutorial: ode_func, then ode_func_div with its own network call
            s = score_call(xx, tt)
            _, ds = div_call(xx, tt)
        beta = beta_min + t * (beta_max - beta_min)
        drift = -0.5 * beta * (y[:n * d] + s.numpy().astype(np.float64).reshape(-1))
        div = -0.5 * beta * (d + ds.numpy().astype(np.float64).reshape(n, d).sum(1))
        return np.concatenate([drift, div])

    y0 = np.concatenate([x.reshape(-1), np.zeros(n)])
    sol = solve_ivp(rhs, (EPS, sde.T), y0, method="RK45", rtol=TOL, atol=TOL)
    if sol.status != 0:
        raise RuntimeError(f"solve_ivp failed: {sol.message}")
    z = sol.y[:n * d, -1].reshape(n, d)
    delta = sol.y[n * d:, -1]
    prior = -0.5 * d * math.log(2 * math.pi) - 0.5 * np.sum(z ** 2, axis=1)
    return prior + delta, z, count[0]


def network_call(model):
    def call(xx, tt):
        return model([xx, tt])
    return call


# ------------------------------------------------------------------------------ helpers
def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def error_stats(a, b):
    ok = (a > COLLAPSED) & (b > COLLAPSED)
    diff = np.abs(a - b)
    return {"max_abs_diff": float(diff.max()),
            "max_abs_diff_data": float(diff[ok].max()) if ok.any() else float("nan"),
            "p99_abs_diff": float(np.percentile(diff, 99)),
            "num_collapsed": int((~ok).sum())}


def part1(n, steps, fused, seed=0):
    sde = dde.VPSDE()
    x_train = toy.sample("gaussian_mixture_1d", 20_000, seed=seed)
    x = toy.sample("gaussian_mixture_1d", n, seed=seed + 1).astype(np.float64)
    rows = []
    models = [("exact mixture score", None, None)]
    for depth, width in ((2, 64), (3, 128)):
        model, train_time = train_score_network(x_train, depth, width, steps, seed=seed)
        models.append((f"score MLP {depth}x{width}", model, train_time))
    for name, model, train_time in models:
        row = {"model": name, "n": n, "train_seconds": train_time}
        if model is None:
            score = MixtureScore(sde)
            p_T = score.log_prob
            flow = dde.ProbabilityFlow(score, sde, eps=EPS, rtol=TOL, atol=TOL,
                                       prior_log_prob=lambda z: p_T(z, sde.T))
            call = lambda xx, tt: tf.cast(score(xx, tt[0, 0]), tf.float32)  # noqa: E731
        else:
            flow = dde.ProbabilityFlow(model, eps=EPS, rtol=TOL, atol=TOL)
            call = network_call(model)
        first, t_first = timed(flow.log_prob, x, batch_size=n)
        second, t_warm = timed(flow.log_prob, x, batch_size=n)
        assert np.array_equal(first.log_prob, second.log_prob)
        xla_flow = dde.ProbabilityFlow(flow.score, sde, eps=EPS, rtol=TOL, atol=TOL,
                                       prior_log_prob=flow.prior_log_prob, jit_compile=True)
        xla, t_xla_first = timed(xla_flow.log_prob, x, batch_size=n)
        _, t_xla_warm = timed(xla_flow.log_prob, x, batch_size=n)
        (ref, z_ref, nfe_ref), t_ref = timed(reference_log_prob, call, x, sde)
        ours = first.log_prob
        if model is None:  # the reference used the N(0, 1) prior; give both the exact p_T
            ref = ref - (-0.5 * math.log(2 * math.pi) - 0.5 * z_ref[:, 0] ** 2) + p_T(
                tf.constant(z_ref), sde.T).numpy()
        row.update({"graph_seconds_first": t_first, "graph_seconds_warm": t_warm,
                    "graph_nfe": first.num_function_evaluations,
                    "reference_seconds": t_ref, "reference_nfe": nfe_ref,
                    "speedup_first": t_ref / t_first, "speedup_warm": t_ref / t_warm,
                    "xla_seconds_first": t_xla_first, "xla_seconds_warm": t_xla_warm,
                    "xla_nfe": xla.num_function_evaluations,
                    "xla_speedup_first": t_ref / t_xla_first,
                    "xla_speedup_warm": t_ref / t_xla_warm,
                    "xla_vs_graph_max_abs_diff": float(np.max(np.abs(xla.log_prob - ours))),
                    **error_stats(ours, ref)})
        # The in-graph solve at 10× tighter tolerances: its difference to the reference is
        # then mostly the reference's own solver error.
        tight_flow = dde.ProbabilityFlow(flow.score, sde, eps=EPS, rtol=TOL / 10, atol=TOL / 10,
                                         prior_log_prob=flow.prior_log_prob)
        tight, t_tight = timed(tight_flow.log_prob, x, batch_size=n)
        row.update({"graph_tight_seconds_first": t_tight,
                    "graph_tight_nfe": tight.num_function_evaluations,
                    "tight_vs_reference": error_stats(tight.log_prob, ref),
                    "tight_vs_graph": error_stats(tight.log_prob, ours)})
        # The other Runge–Kutta solvers of dde.ode on the same problem (warm timings).
        for solver in SOLVERS:
            other = dde.ProbabilityFlow(flow.score, sde, eps=EPS, rtol=TOL, atol=TOL,
                                        prior_log_prob=flow.prior_log_prob, solver=solver)
            other.log_prob(x, batch_size=n)
            res, t_other = timed(other.log_prob, x, batch_size=n)
            entry = {"seconds_warm": t_other, "nfe": res.num_function_evaluations,
                     "speedup_warm": t_ref / t_other, **error_stats(res.log_prob, ref)}
            if model is None:
                entry["max_err_vs_truth"] = float(np.max(np.abs(
                    res.log_prob - score.log_prob(tf.constant(x), EPS).numpy())))
            row[f"solver_{solver}"] = entry
        if fused:
            (_, _, nfe_fused), t_fused = timed(reference_log_prob, call, x, sde, fused=True)
            row.update({"reference_fused_seconds": t_fused, "reference_fused_nfe": nfe_fused,
                        "speedup_fused_first": t_fused / t_first,
                        "speedup_fused_warm": t_fused / t_warm})
        if model is None:
            truth = score.log_prob(tf.constant(x), EPS).numpy()
            row["graph_max_err_vs_truth"] = float(np.max(np.abs(ours - truth)))
            row["graph_tight_max_err_vs_truth"] = float(np.max(np.abs(tight.log_prob - truth)))
            row["reference_max_err_vs_truth"] = float(np.max(np.abs(ref - truth)))
        else:
            truth = toy.log_density("gaussian_mixture_1d", x)
            ok = ours > COLLAPSED
            row["graph_mean_log_p_data"] = float(ours[ok].mean())
            row["true_mean_log_p_data"] = float(truth[ok].mean())
        rows.append(row)
        print(f"  {name}: graph {t_first:.1f}s (warm {t_warm:.1f}s, NFE "
              f"{first.num_function_evaluations}) vs reference {t_ref:.1f}s (NFE {nfe_ref})",
              flush=True)
    return rows


def divergence_timings(model, x, repeats=5):
    """Milliseconds of one exact divergence ∇ₓ·s of a batch x [n, d] (float64) at t = 0.5:
    reverse mode with a vectorized Jacobian (`tape.batch_jacobian`, what dde.likelihood
    uses) vs forward mode (`tf.autodiff.ForwardAccumulator`, the d basis tangents stacked
    into one batch of d·n rows)."""
    d = x.shape[1]
    score = dde.score.as_score_fn(model)
    t = tf.constant(0.5, tf.float64)
    xt = tf.constant(x, tf.float64)

    @tf.function
    def reverse(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            s = tf.cast(score(x, t), x.dtype)
        return tf.linalg.trace(tape.batch_jacobian(s, x))

    @tf.function
    def forward(x):
        b = tf.shape(x)[0]
        tangents = tf.repeat(tf.eye(d, dtype=x.dtype), b, axis=0)
        x_rep = tf.tile(x, [d, 1])
        with tf.autodiff.ForwardAccumulator(x_rep, tangents) as acc:
            s = tf.cast(score(x_rep, t), x.dtype)
        diag = tf.reduce_sum(acc.jvp(s) * tangents, -1)
        return tf.reduce_sum(tf.reshape(diag, [d, b]), 0)

    out = {}
    values = {}
    for name, fn in (("reverse", reverse), ("forward", forward)):
        values[name] = fn(xt).numpy()
        best = np.inf
        for _ in range(repeats):
            start = time.perf_counter()
            fn(xt).numpy()
            best = min(best, time.perf_counter() - start)
        out[f"divergence_{name}_ms"] = 1e3 * best
    out["divergence_forward_vs_reverse_max_abs_diff"] = float(
        np.max(np.abs(values["forward"] - values["reverse"])))
    return out


def part2(dims, n, steps, seed=0):
    rows = []
    for d in dims:
        rng = np.random.default_rng(seed + d)
        a = rng.normal(size=(d, d)) / math.sqrt(d)
        cov = a @ a.T + 0.3 * np.eye(d)
        x_train = rng.multivariate_normal(np.zeros(d), cov, size=20_000).astype(np.float32)
        x = rng.multivariate_normal(np.zeros(d), cov, size=n)
        model, _ = train_score_network(x_train, 3, 128, steps, seed=seed, lr=3e-3)
        row = {"d": d, "n": n}
        results = {}
        for div in ("exact", "hutchinson"):
            flow = dde.ProbabilityFlow(model, eps=EPS, rtol=TOL, atol=TOL, divergence=div)
            flow.log_prob(x[:8], seed=1, batch_size=n)  # trace
            res, t = timed(flow.log_prob, x, seed=1, batch_size=n)
            results[div] = res
            row[f"{div}_seconds"] = t
            row[f"{div}_nfe"] = res.num_function_evaluations
        row.update(divergence_timings(model, x))
        diff = results["hutchinson"].log_prob - results["exact"].log_prob
        row.update({"hutchinson_bias": float(diff.mean()),
                    "hutchinson_bias_se": float(diff.std(ddof=1) / math.sqrt(n)),
                    "hutchinson_rmse": float(np.sqrt(np.mean(diff ** 2))),
                    "exact_over_hutchinson_time": row["exact_seconds"]
                    / row["hutchinson_seconds"]})
        rows.append(row)
        print(f"  d={d}: exact {row['exact_seconds']:.1f}s, hutchinson "
              f"{row['hutchinson_seconds']:.1f}s, RMSE {row['hutchinson_rmse']:.3f}",
              flush=True)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, a smoke run")
    parser.add_argument("--out", default="benchmarks/results/likelihood_ode.json")
    parser.add_argument("--data-dir", default=None, help="unused (generated data)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    n1, steps1, n2, steps2 = (1000, 200, 200, 100) if args.quick else (10_000, 3000, 1000, 600)
    print(f"Part 1: 1-D mixture, {n1} points", flush=True)
    rows1 = part1(n1, steps1, fused=not args.quick, seed=args.seed)
    print(f"Part 2: exact vs Hutchinson, {n2} points", flush=True)
    rows2 = part2((2, 10, 43), n2, steps2, seed=args.seed)

    print("\n### Probability-flow likelihood, 1-D mixture (in-graph vs SciPy RK45 + eager "
          "network)\n")
    print("| model | n | in-graph s, first / warm (XLA) | NFE | reference s | NFE | speedup "
          "first (XLA) | speedup warm (XLA) | max abs Δlog p (data) | p99 abs Δlog p | "
          "collapsed |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows1:
        print(f"| {r['model']} | {r['n']} | {r['graph_seconds_first']:.1f} / "
              f"{r['graph_seconds_warm']:.1f} ({r['xla_seconds_first']:.1f} / "
              f"{r['xla_seconds_warm']:.1f}) | {r['graph_nfe']} | {r['reference_seconds']:.1f}"
              f" | {r['reference_nfe']} | {r['speedup_first']:.1f}× ({r['xla_speedup_first']:.1f}×)"
              f" | {r['speedup_warm']:.1f}× ({r['xla_speedup_warm']:.1f}×) | "
              f"{r['max_abs_diff_data']:.1e} | {r['p99_abs_diff']:.1e} | {r['num_collapsed']} |")
    if "reference_fused_seconds" in rows1[0]:
        print("\nFused reference (one eager call per evaluation): " + ", ".join(
            f"{r['model']}: {r['reference_fused_seconds']:.1f}s (speedup "
            f"{r['speedup_fused_first']:.1f}× / {r['speedup_fused_warm']:.1f}×)" for r in rows1))
    print("\nIn-graph at rtol = atol = 1e-6 (first call, tracing included): " + "; ".join(
        f"{r['model']}: {r['graph_tight_seconds_first']:.1f}s, NFE {r['graph_tight_nfe']}, "
        f"max abs Δlog p vs reference {r['tight_vs_reference']['max_abs_diff_data']:.2e}, vs "
        f"in-graph at 1e-5 {r['tight_vs_graph']['max_abs_diff_data']:.2e}" for r in rows1))
    print("\n### The solvers of dde.ode (warm, rtol = atol = 1e-5) against SciPy RK45\n")
    print("| model | solver | s (warm) | NFE | SciPy NFE | speedup | max abs Δlog p vs SciPy "
          "(data) | max error vs truth |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows1:
        for solver in SOLVERS:
            e = r[f"solver_{solver}"]
            truth = f"{e['max_err_vs_truth']:.1e}" if "max_err_vs_truth" in e else "–"
            print(f"| {r['model']} | {solver} | {e['seconds_warm']:.2f} | {e['nfe']} | "
                  f"{r['reference_nfe']} | {e['speedup_warm']:.1f}× | "
                  f"{e['max_abs_diff_data']:.1e} | {truth} |")
    exact = rows1[0]
    print(f"\nExact score, max error vs the true log-density: in-graph "
          f"{exact['graph_max_err_vs_truth']:.2e} (at 1e-6: "
          f"{exact['graph_tight_max_err_vs_truth']:.2e}), reference "
          f"{exact['reference_max_err_vs_truth']:.2e} nats.")
    print("\n### Exact vs Hutchinson divergence (3×128 score MLP, Gaussian data)\n")
    print("| d | n | exact s | NFE | Hutchinson s | NFE | time ratio | bias ± SE (nats) | "
          "RMSE (nats) | one exact divergence: reverse (vectorized Jacobian) / forward mode, "
          "ms |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows2:
        print(f"| {r['d']} | {r['n']} | {r['exact_seconds']:.2f} | {r['exact_nfe']} | "
              f"{r['hutchinson_seconds']:.2f} | {r['hutchinson_nfe']} | "
              f"{r['exact_over_hutchinson_time']:.1f}× | {r['hutchinson_bias']:+.3f} ± "
              f"{r['hutchinson_bias_se']:.3f} | {r['hutchinson_rmse']:.3f} | "
              f"{r['divergence_reverse_ms']:.1f} / {r['divergence_forward_ms']:.1f} |")
    _io.write_json(args.out, {
        "benchmark": "likelihood_ode", "quick": args.quick, "seed": args.seed,
        "eps": EPS, "rtol": TOL, "atol": TOL,
        "platform": {"python": platform.python_version(), "tensorflow": tf.__version__,
                     "machine": platform.machine(), "cpus": os.cpu_count()},
        "mixture": rows1, "divergence": rows2})
    print(f"\nWrote {args.out}")


if __name__ == "__main__":
    main()
