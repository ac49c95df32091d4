"""Langevin samplers on toy densities: sample quality, MALA acceptance and speed vs eager loops.

For `8gaussians` and `2spirals` (dde.datasets.toy) the script trains a DDE (3×128 softplus,
σ = 0.1; 20,000 points, 30 epochs, Adam 5e-3) and a NoiseConditionalDDE (σ from 0.1 to 4;
60 epochs) and draws M samples (independent chains,
started from N(data_mean, data_cov); annealed: covariance + σ₁²I) with
  - ULA (h = 0.1σ², N steps), MALA (h adapted to 0.574 acceptance over N/2 burn-in steps, then
    N steps) and annealed Langevin (10 levels, N/10 steps each, h = 0.05σ_L²), the in-graph
    layers of `dde.sampling` (plain tf.function and with jit_compile=True / XLA), and
  - the reference: the same loops written as plain Python loops of eager TensorFlow steps.
Sample quality against M fresh true samples: squared energy distance
D² = 2E‖X−Y‖ − E‖X−X'‖ − E‖Y−Y'‖ (U-statistics; 0 for equal laws), beside two baselines — a
second set of true samples (the noise floor) and true samples smoothed by N(0, σ²I) (the law
p_σ a perfect DDE sampler would reach) — and, for 8gaussians, the fraction of the 8 modes
covered (≥ 25 % of a mode's share of samples within 3 component std of its centre), the
fraction of samples near some mode and the largest mode-weight error.
For 8gaussians the same three samplers also run on the exact p_σ (closed form), which
separates the samplers' error from the trained models' error.
Speed: samples per second (chains / wall time of all steps, compilation excluded and reported
separately) at a small and a large chain count. The eager loop is timed over its first
`--eager-steps` steps and extrapolated linearly to the full run (its cost per step is constant).
At scale: ULA and MALA with `--large-chains` (10,000) chains of the 8gaussians DDE, against
this CPU's arithmetic limit (`roofline.py`: the float32 matmul peak measured in the same run;
a Langevin step costs 2F per chain, F the network's forward pass), not only eager Python.
The chains here start from explicit Gaussian draws (`initial_points`), not from the SMC start
of `model.sample`: `benchmarks/sampler_weights.py` measures the weights.
Prints markdown tables, writes JSON and one PNG of samples per data set. `--quick` trains
for ~400 batches only: its quality figures check that the script runs, not the samplers.
XLA compiles once per chain count (the "first call" column); the plain tf.function does not.

    python benchmarks/sampling.py [--quick] [--out benchmarks/results/sampling.json]
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import dde  # noqa: E402
import roofline  # noqa: E402
from dde import _io  # noqa: E402
from dde.datasets import toy  # noqa: E402

DATASETS = ("8gaussians", "2spirals")
SIGMA = 0.1
SIGMA_MAX = 4.0
NUM_LEVELS = 10
EIGHT_CENTRES = 2 * math.sqrt(2) * np.stack(
    [np.cos(np.arange(8) * np.pi / 4), np.sin(np.arange(8) * np.pi / 4)], axis=1)
EIGHT_STD = 1 / (2 * math.sqrt(2))


# ------------------------------------------------------------------------------ metrics
def energy_distance_sq(x, y, chunk=1024):
    """Squared energy distance 2E‖X−Y‖ − E‖X−X'‖ − E‖Y−Y'‖ (within-set terms without the
    diagonal, i.e. U-statistics): [n, d], [m, d] → float."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)

    def mean_dist(a, b, same):
        total = 0.0
        for i in range(0, len(a), chunk):
            d = np.sqrt(np.maximum(((a[i:i + chunk, None, :] - b[None]) ** 2).sum(-1), 0.0))
            total += d.sum()
        n_pairs = len(a) * (len(b) - 1) if same else len(a) * len(b)
        return total / n_pairs

    return 2 * mean_dist(x, y, False) - mean_dist(x, x, True) - mean_dist(y, y, True)


def mode_metrics(x):
    """8gaussians: fraction of modes covered, fraction of samples within 3 std of a centre,
    largest |share_k − 1/8|."""
    d = np.linalg.norm(x[:, None, :] - EIGHT_CENTRES[None], axis=-1)
    nearest = d.argmin(1)
    near = d.min(1) < 3 * EIGHT_STD
    shares = np.array([np.mean(near & (nearest == k)) for k in range(8)])
    return {"modes_covered": float(np.mean(shares >= 0.25 / 8)),
            "fraction_near_a_mode": float(near.mean()),
            "max_mode_weight_error": float(np.max(np.abs(shares / max(near.mean(), 1e-12)
                                                         - 1 / 8)))}


# ----------------------------------------------------------------------------- training
def train_models(name, n_train, epochs, seed):
    x = toy.sample(name, n_train, seed=seed)
    keras.utils.set_random_seed(seed)
    model = dde.DenoisingDensityEstimator(dde.nets.energy_mlp(2, depth=3, width=128),
                                          noise_std=SIGMA, seed=seed)
    model.compile(optimizer=keras.optimizers.Adam(5e-3))
    start = time.perf_counter()
    model.fit(x, epochs=epochs, batch_size=256, verbose=0)
    t_dde = time.perf_counter() - start
    nc = dde.NoiseConditionalDDE(dde.nets.conditional_energy_mlp(2, depth=3, width=128),
                                 sigma_min=SIGMA, sigma_max=SIGMA_MAX, seed=seed)
    nc.compile(optimizer=keras.optimizers.Adam(5e-3))
    start = time.perf_counter()
    nc.fit(x, epochs=2 * epochs, batch_size=256, verbose=0)
    t_nc = time.perf_counter() - start
    return model, nc, {"dde_seconds": t_dde, "ncdde_seconds": t_nc, "n_train": n_train,
                       "epochs_dde": epochs, "epochs_ncdde": 2 * epochs}


# ----------------------------------------------------------------------- eager reference
def _normal(shape, seed, step):
    return tf.random.stateless_normal(shape, [seed, step])


def eager_ula(model, x0, h, steps, seed):
    x = tf.constant(x0)
    for i in range(steps):
        g = model.score_tensor(x)
        x = x + h * g + math.sqrt(2 * h) * _normal(tf.shape(x), seed, i)
    return x.numpy()


def eager_mala(model, x0, h, steps, seed):
    x = tf.constant(x0)
    f, g = model.log_density_and_score(x)
    accepted = 0
    for i in range(steps):
        xi = _normal(tf.shape(x), seed, i)
        y = x + h * g + math.sqrt(2 * h) * xi
        fy, gy = model.log_density_and_score(y)
        log_alpha = (fy - f - tf.reduce_sum(tf.square(x - y - h * gy), -1) / (4 * h)
                     + 0.5 * tf.reduce_sum(tf.square(xi), -1))
        log_u = tf.math.log(tf.random.stateless_uniform(tf.shape(f), [seed, -i - 1]))
        accept = log_u < tf.where(tf.math.is_nan(log_alpha), -np.inf, log_alpha)
        x = tf.where(accept[:, None], y, x)
        f = tf.where(accept, fy, f)
        g = tf.where(accept[:, None], gy, g)
        accepted += int(tf.reduce_sum(tf.cast(accept, tf.int32)))
    return x.numpy(), accepted / (steps * len(x0))


def eager_annealed(model, x0, h, levels, steps_per_level, seed, max_steps=None):
    x = tf.constant(x0)
    i = 0
    for sigma in levels:
        h_i = h * (sigma / levels[-1]) ** 2
        for _ in range(steps_per_level):
            if max_steps is not None and i >= max_steps:
                return x.numpy()
            g = model.log_density_and_score(x, noise_std=float(sigma))[1]
            x = x + h_i * g + math.sqrt(2 * h_i) * _normal(tf.shape(x), seed, i)
            i += 1
    return x.numpy()


# ------------------------------------------------------------------ exact 8gaussians target
def eight_gaussians_log_prob(x, sigma):
    """log p_σ(x) of 8gaussians, the mixture of N(c_k, (s² + σ²)I): [b, 2] → [b]."""
    var = EIGHT_STD ** 2 + tf.square(tf.cast(sigma, x.dtype))
    d2 = tf.reduce_sum(tf.square(x[:, None, :] - tf.constant(EIGHT_CENTRES, x.dtype)), -1)
    return (tf.reduce_logsumexp(-d2 / (2 * var), -1) - math.log(8.0)
            - tf.math.log(2 * math.pi * var))


def eight_gaussians_score(x, sigma):
    """∇ log p_σ(x) = Σ_k r_k(x) (c_k − x)/(s² + σ²): [b, 2] → [b, 2]."""
    var = EIGHT_STD ** 2 + tf.square(tf.cast(sigma, x.dtype))
    diff = tf.constant(EIGHT_CENTRES, x.dtype)[None] - x[:, None, :]
    resp = tf.nn.softmax(-tf.reduce_sum(tf.square(diff), -1) / (2 * var), axis=-1)
    return tf.einsum("bk,bkd->bd", resp, diff) / var


def exact_runs(model, chains, steps, seed):
    """The three samplers with the same settings on the exact p_σ of 8gaussians (annealed:
    the exact smoothed score at every level): separates sampler error from model error."""
    target = dde.LogDensity(lambda x: eight_gaussians_log_prob(x, SIGMA),
                            score_fn=lambda x: eight_gaussians_score(x, SIGMA), input_dim=2)
    out = {}
    for method in ("ula", "mala", "annealed"):
        x0 = initial_points(model, method, chains, seed)
        if method == "annealed":
            sampler = dde.AnnealedLangevinSampler(
                steps_per_level=max(steps // NUM_LEVELS, 1),
                noise_levels=np.geomspace(SIGMA_MAX, SIGMA, NUM_LEVELS).tolist())
            out[method] = sampler(eight_gaussians_score, x0, seed=seed)
        else:
            sampler = make_samplers(steps, False)[method](model)  # the DDE's default h
            out[method] = sampler(target, x0, seed=seed)
    return out


# ------------------------------------------------------------------------------ running
def make_samplers(steps, jit):
    return {
        "ula": lambda model: dde.LangevinSampler(step_size=dde.sampling.default_step_size(
            model, "ula"), num_steps=steps, jit_compile=jit),
        "mala": lambda model: dde.MALASampler(step_size=dde.sampling.default_step_size(
            model, "mala"), num_steps=steps, num_burnin_steps=steps // 2, jit_compile=jit),
        "annealed": lambda model: dde.AnnealedLangevinSampler(
            steps_per_level=max(steps // NUM_LEVELS, 1), num_levels=NUM_LEVELS,
            jit_compile=jit),
    }


def initial_points(model, method, n, seed):
    rng = np.random.default_rng(seed)
    inflation = SIGMA_MAX ** 2 if method == "annealed" else 0.0
    cov = model.data_cov.numpy() + inflation * np.eye(2)
    return rng.multivariate_normal(model.data_mean.numpy(), cov, size=n).astype("float32")


def timed(fn, repeats):
    best, out = np.inf, None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def run_method(method, model, nc, chains, steps, eager_steps, repeats, seed):
    """Speed (graph, XLA, eager) and the graph samples at `chains` chains."""
    target = nc if method == "annealed" else model
    x0 = initial_points(target, method, chains, seed)
    row = {"method": method, "chains": chains}
    samples = None
    for label, jit in (("graph", False), ("xla", True)):
        sampler = make_samplers(steps, jit)[method](target)
        start = time.perf_counter()
        res = sampler(target, x0, seed=seed)
        row[f"{label}_first_call_seconds"] = time.perf_counter() - start
        seconds, res = timed(lambda: sampler(target, x0, seed=seed), repeats)
        row[f"{label}_seconds"] = seconds
        row[f"{label}_samples_per_s"] = chains / seconds
        if label == "graph":
            samples = res
            row["acceptance_rate"] = res.acceptance_rate
            row["step_size"] = res.step_size
            row["num_diverged"] = res.num_diverged
            total = steps + (steps // 2 if method == "mala" else 0)
            if method == "annealed":
                total = NUM_LEVELS * max(steps // NUM_LEVELS, 1)
            row["total_steps"] = total
    # Eager reference: the same loop, timed over its first eager_steps steps.
    k = min(eager_steps, row["total_steps"])
    h = samples.step_size
    levels = nc.noise_levels(NUM_LEVELS)

    def eager(num):
        if method == "ula":
            return eager_ula(model, x0, h, num, seed)
        if method == "mala":
            return eager_mala(model, x0, h, num, seed)
        return eager_annealed(nc, x0, h, levels, max(steps // NUM_LEVELS, 1), seed,
                              max_steps=num)

    eager(2)  # warm-up of the eager kernels
    seconds, _ = timed(lambda: eager(k), 1)
    per_step = seconds / k
    row["eager_steps_timed"] = k
    row["eager_seconds_extrapolated"] = per_step * row["total_steps"]
    row["eager_samples_per_s"] = chains / row["eager_seconds_extrapolated"]
    row["graph_vs_eager"] = row["graph_samples_per_s"] / row["eager_samples_per_s"]
    row["xla_vs_eager"] = row["xla_samples_per_s"] / row["eager_samples_per_s"]
    return row, samples


def arithmetic_limit_rows(model, chains, steps, seed, peak):
    """ULA and MALA with `chains` chains of the DDE (graph, after a first call): samples/s,
    chain-steps/s and the achieved FLOP rate against the matmul peak (`roofline`: a step
    evaluates f and ∇ₓf, 2F per chain)."""
    d = model.input_dim
    flops_per_step = roofline.langevin_step_flops(d, 3, 128, chains)
    x0 = initial_points(model, "ula", chains, seed)
    rows = []
    for method in ("ula", "mala"):
        sampler = make_samplers(steps, False)[method](model)
        sampler(model, x0, seed=seed)  # trace
        seconds, res = timed(lambda: sampler(model, x0, seed=seed), 1)
        total = steps + (steps // 2 if method == "mala" else 0)
        rows.append({"method": method, "chains": chains, "total_steps": total,
                     "seconds": seconds, "samples_per_s": chains / seconds,
                     "chain_steps_per_s": chains * total / seconds,
                     "flops_per_step": flops_per_step,
                     "achieved_flops": flops_per_step * total / seconds,
                     "fraction_of_peak": flops_per_step * total / seconds / peak,
                     "limit_samples_per_s": chains * peak / (flops_per_step * total)})
    return rows


def plot(name, true, results, path):
    from matplotlib.figure import Figure

    panels = [("data (fresh samples)", true)] + [(m, r.samples) for m, r in results.items()]
    fig = Figure(figsize=(4 * len(panels), 4.2))
    for i, (title, x) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        ax.scatter(x[:, 0], x[:, 1], s=1.5, alpha=0.4, linewidths=0)
        ax.set_xlim(-4.5, 4.5)
        ax.set_ylim(-4.5, 4.5)
        ax.set_aspect("equal")
        ax.set_title(title)
    fig.suptitle(f"{name}: DDE σ = {SIGMA} (ULA, MALA), NoiseConditionalDDE (annealed)")
    fig.tight_layout()
    _io.save_figure(fig, path, dpi=110)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="small run: fewer training epochs, chains and steps")
    parser.add_argument("--chains", type=int, default=None,
                        help="chains = samples for the quality metrics (default 1000; quick 500)")
    parser.add_argument("--small-chains", type=int, default=100,
                        help="the small chain count of the speed table (default 100)")
    parser.add_argument("--steps", type=int, default=None,
                        help="Langevin steps N (default 1000; quick 300)")
    parser.add_argument("--eager-steps", type=int, default=None,
                        help="eager steps timed (default 100; quick 30)")
    parser.add_argument("--large-chains", type=int, default=10000,
                        help="chains of the arithmetic-limit table (default 10000; 0: skip)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/sampling.json")
    parser.add_argument("--plot-dir", default=None,
                        help="where to write the sample plots (default: beside --out)")
    args = parser.parse_args(argv)
    quick = args.quick
    chains = args.chains or (500 if quick else 1000)
    steps = args.steps or (300 if quick else 1000)
    eager_steps = args.eager_steps or (30 if quick else 100)
    n_train, epochs = (10000, 10) if quick else (20000, 30)
    repeats = 1
    plot_dir = Path(args.plot_dir) if args.plot_dir else Path(args.out).parent

    quality, speed, training, limit = [], [], {}, []
    peak = roofline.matmul_peak()["flops"] if args.large_chains else None
    for name in DATASETS:
        print(f"{name}: training DDE and NoiseConditionalDDE ...", flush=True)
        model, nc, info = train_models(name, n_train, epochs, args.seed)
        training[name] = info
        fresh = toy.sample(name, chains, seed=args.seed + 101)
        floor = toy.sample(name, chains, seed=args.seed + 202)
        smoothed = floor + SIGMA * np.random.default_rng(args.seed + 303).normal(
            size=floor.shape).astype("float32")
        baselines = {"true samples (noise floor)": floor, f"true + N(0, {SIGMA}²I) = p_σ":
                     smoothed}
        results = {}
        for method in ("ula", "mala", "annealed"):
            for n in sorted({args.small_chains, chains}):
                row, res = run_method(method, model, nc, n, steps, eager_steps, repeats,
                                      args.seed)
                row["data"] = name
                speed.append(row)
                print(f"  {method:8s} chains={n:5d}: graph {row['graph_samples_per_s']:9.1f}/s"
                      f"  XLA {row['xla_samples_per_s']:9.1f}/s  eager "
                      f"{row['eager_samples_per_s']:8.1f}/s  ({row['graph_vs_eager']:.1f}×, "
                      f"XLA {row['xla_vs_eager']:.1f}×)", flush=True)
                if n == chains:
                    results[method] = res
        if args.large_chains and name == DATASETS[0]:
            for row in arithmetic_limit_rows(model, args.large_chains, steps, args.seed, peak):
                row["data"] = name
                limit.append(row)
                print(f"  {row['method']:8s} chains={row['chains']}: "
                      f"{row['samples_per_s']:,.1f} samples/s, "
                      f"{100 * row['fraction_of_peak']:.0f} % of the matmul peak", flush=True)
        runs = dict(results)
        if name == "8gaussians":
            runs.update({f"{m} (exact p_σ)": r
                         for m, r in exact_runs(model, chains, steps, args.seed).items()})
        for label, x, extra in ([(k, v, {}) for k, v in baselines.items()]
                                + [(m, r.samples, {"acceptance_rate": r.acceptance_rate,
                                                   "num_diverged": r.num_diverged,
                                                   "step_size": r.step_size})
                                   for m, r in runs.items()]):
            q = {"data": name, "sampler": label, "n": len(x),
                 "energy_distance_sq": energy_distance_sq(x, fresh), **extra}
            if name == "8gaussians":
                q.update(mode_metrics(x))
            quality.append(q)
        plot(name, fresh, results, plot_dir / f"sampling_{name}.png")

    print(f"\n### Sample quality ({chains} samples vs {chains} fresh true samples; "
          f"N = {steps} steps)\n")
    print("| data | sampler | energy distance² (×10⁻³) | modes covered | near a mode | "
          "max weight error | MALA acceptance | h |")
    print("|---|---|---|---|---|---|---|---|")
    for q in quality:
        modes = (f"{q['modes_covered']:.3f} | {q['fraction_near_a_mode']:.3f} | "
                 f"{q['max_mode_weight_error']:.3f}" if "modes_covered" in q else "– | – | –")
        acc = "–" if q.get("acceptance_rate") is None else f"{q['acceptance_rate']:.3f}"
        h = "–" if "step_size" not in q else f"{q['step_size']:.2e}"
        print(f"| {q['data']} | {q['sampler']} | {1e3 * q['energy_distance_sq']:.2f} | "
              f"{modes} | {acc} | {h} |")
    print("\n### Speed (samples/s = chains / time of all steps; eager extrapolated from "
          f"{eager_steps} steps)\n")
    print("| data | method | chains | steps | eager loop | tf.function | tf.function + XLA | "
          "graph / eager | XLA / eager | first call (graph / XLA, s) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in speed:
        print(f"| {r['data']} | {r['method']} | {r['chains']} | {r['total_steps']} | "
              f"{r['eager_samples_per_s']:,.1f} | {r['graph_samples_per_s']:,.1f} | "
              f"{r['xla_samples_per_s']:,.1f} | {r['graph_vs_eager']:.1f}× | "
              f"{r['xla_vs_eager']:.1f}× | {r['graph_first_call_seconds']:.1f} / "
              f"{r['xla_first_call_seconds']:.1f} |")
    if limit:
        print(f"\n### {args.large_chains} chains against the arithmetic limit (float32 matmul "
              f"peak {peak / 1e9:.1f} GFLOP/s; a step = 2F = f and ∇ₓf)\n")
        print("| method | chains | steps | samples/s | chain-steps/s | GFLOP/s | limit "
              "(samples/s at peak) | % of peak |")
        print("|---|---|---|---|---|---|---|---|")
        for r in limit:
            print(f"| {r['method']} | {r['chains']} | {r['total_steps']} | "
                  f"{r['samples_per_s']:,.1f} | {r['chain_steps_per_s']:,.0f} | "
                  f"{r['achieved_flops'] / 1e9:.1f} | {r['limit_samples_per_s']:,.1f} | "
                  f"{100 * r['fraction_of_peak']:.0f} % |")
    _io.write_json(args.out, {
        "benchmark": "sampling", "quick": quick, "chains": chains, "steps": steps,
        "eager_steps_timed": eager_steps, "sigma": SIGMA, "sigma_max": SIGMA_MAX,
        "num_levels": NUM_LEVELS, "network": "energy_mlp / conditional_energy_mlp depth=3 "
        "width=128 softplus", "training": training, "quality": quality, "speed": speed,
        "arithmetic_limit": limit, "matmul_peak_flops": peak,
        "tensorflow": tf.__version__, "keras": keras.__version__,
        "machine": platform.machine(), "cpus": os.cpu_count()})
    print(f"\nwrote {args.out} and {plot_dir}/sampling_*.png")


if __name__ == "__main__":
    main()
