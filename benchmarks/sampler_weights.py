"""Do the samplers' samples carry the right weights? Mode masses on 8gaussians and moments on
exact Gaussians, separating the samplers' error from the models'.

A model's own mode masses are computed without any sampler: importance sampling under its
proposal (400,000 draws; the masses' Monte Carlo error is printed), each draw assigned to
its nearest centre. A sampler's shares (M chains, each sample assigned to the nearest of the
8 centres) are then compared with those masses (the sampler's error) and with 1/8 (the
model's and sampler's together). Rows:

- **exact p_σ** (closed form): MALA from the tempered-SMC start (`dde.smc`, the default of
  `model.sample`) and from the data Gaussian; annealed Langevin on the exact scores;
- **trained models** (20,000 points, σ = 0.1, Adam 5e-3, batch 256): a DDE (3×128 softplus,
  20 epochs), a base-density DDE (`bases.fit_mixture_base` + `residual_energy_mlp`, same
  training), a NoiseConditionalDDE (σ ∈ [0.1, 4], 60 epochs) and one with the mixture base;
  `model.sample(M, method="mala")` with init "smc" and "proposal", and "annealed";
- **exact Gaussian energy** (a DDE whose network is an exact correlated 2-D Gaussian
  log-density, proposal 4× too wide and shifted) and a **DDE trained on 2-D standard-normal
  data**: MALA's sample mean and variance in Monte Carlo standard errors (SE = sd/√M and
  var·√(2/M); M independent chains), against the model's own moments by importance sampling.

Several seeds per row; prints markdown tables, writes JSON.

    python benchmarks/sampler_weights.py [--chains 4000] [--seeds 3] [--out benchmarks/results/sampler_weights.json]
"""
from __future__ import annotations

import argparse
import os
import platform
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import dde  # noqa: E402
from dde import _io  # noqa: E402
from dde.datasets import toy  # noqa: E402
from sampling import EIGHT_CENTRES, SIGMA, SIGMA_MAX, eight_gaussians_log_prob, \
    eight_gaussians_score  # noqa: E402

NUM_IS = 400_000


def shares(x):
    """Fraction of the rows of x [n, 2] nearest to each of the 8 centres."""
    nearest = np.linalg.norm(x[:, None] - EIGHT_CENTRES[None], axis=-1).argmin(1)
    return np.bincount(nearest, minlength=8) / len(x)


def model_masses(log_density, proposal, seed=12345):
    """(mode masses [8], their MC standard errors [8], IS ESS) of exp f by importance
    sampling under `proposal` (a float64 TFP distribution); log_density: [n, 2] → [n]."""
    x = np.asarray(proposal.sample(NUM_IS, seed=tf.constant([seed, 1], tf.int32)))
    log_w = np.asarray(log_density(x), np.float64).reshape(-1) - np.asarray(
        proposal.log_prob(x), np.float64)
    w = np.exp(log_w - log_w.max())
    w = w / w.sum()
    nearest = np.linalg.norm(x[:, None] - EIGHT_CENTRES[None], axis=-1).argmin(1)
    masses = np.array([w[nearest == k].sum() for k in range(8)])
    # Delta-method SE of a self-normalized IS ratio: sqrt(Σ w_i² (1[i∈k] − m_k)²).
    se = np.array([np.sqrt(np.sum(w ** 2 * ((nearest == k) - masses[k]) ** 2))
                   for k in range(8)])
    return masses, se, float(1.0 / np.sum(w ** 2))


def data_gaussian(x):
    return dde.partition.gaussian_from_moments(x.mean(0), np.cov(x, rowvar=False))


def weight_row(label, sampler, samples, masses, seconds):
    s = shares(samples)
    return {"target": label, "sampler": sampler, "n": len(samples),
            "shares": s.tolist(),
            "sampler_error": float(np.max(np.abs(s - masses))),
            "error_vs_eighth": float(np.max(np.abs(s - 1 / 8))), "seconds": seconds}


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


# ------------------------------------------------------------------------------- exact
def exact_rows(x_train, chains, seed):
    target = dde.LogDensity(lambda x: eight_gaussians_log_prob(x, SIGMA),
                            score_fn=lambda x: eight_gaussians_score(x, SIGMA), input_dim=2)
    q = data_gaussian(x_train)
    mala = dde.MALASampler(step_size=SIGMA ** 2, num_steps=1000, num_burnin_steps=500)
    rows = []
    start, t_smc = timed(lambda: dde.tempered_smc(
        lambda x: eight_gaussians_log_prob(x, SIGMA), q, chains, seed=seed).samples)
    res, t = timed(lambda: mala(target, start.astype("float32"), seed=seed))
    rows.append(weight_row("exact p_σ", "mala, SMC start", res.samples, np.full(8, 1 / 8),
                           t + t_smc))
    x0 = np.asarray(q.sample(chains, seed=tf.constant([seed, 7], tf.int32)), np.float32)
    res, t = timed(lambda: mala(target, x0, seed=seed))
    rows.append(weight_row("exact p_σ", "mala, proposal start", res.samples,
                           np.full(8, 1 / 8), t))
    annealed = dde.AnnealedLangevinSampler(
        steps_per_level=100, noise_levels=np.geomspace(SIGMA_MAX, SIGMA, 10).tolist())
    x0 = x0 + SIGMA_MAX * np.random.default_rng(seed).normal(size=x0.shape).astype("float32")
    res, t = timed(lambda: annealed(eight_gaussians_score, x0, seed=seed))
    rows.append(weight_row("exact p_σ", "annealed", res.samples, np.full(8, 1 / 8), t))
    return rows


# ----------------------------------------------------------------------------- trained
def train(name, x, xv, seed):
    keras.utils.set_random_seed(seed)
    epochs = 20
    if name == "DDE":
        model = dde.DenoisingDensityEstimator(dde.nets.energy_mlp(2, depth=3, width=128),
                                              noise_std=SIGMA, seed=seed)
    elif name == "DDE, mixture base":
        base, _ = dde.bases.fit_mixture_base(x, xv, seed=seed)
        model = dde.DenoisingDensityEstimator(
            dde.nets.residual_energy_mlp(2, depth=3, width=128), base=base, noise_std=SIGMA,
            seed=seed)
    elif name == "NoiseConditionalDDE":
        epochs = 60
        model = dde.NoiseConditionalDDE(dde.nets.conditional_energy_mlp(2, depth=3, width=128),
                                        sigma_min=SIGMA, sigma_max=SIGMA_MAX, seed=seed)
    else:  # NoiseConditionalDDE, mixture base
        epochs = 60
        base, _ = dde.bases.fit_mixture_base(x, xv, seed=seed)
        model = dde.NoiseConditionalDDE(
            dde.nets.conditional_residual_energy_mlp(2, depth=3, width=128), base=base,
            sigma_min=SIGMA, sigma_max=SIGMA_MAX, seed=seed)
    model.compile(optimizer=keras.optimizers.Adam(5e-3))
    _, seconds = timed(lambda: model.fit(x, epochs=epochs, batch_size=256, verbose=0))
    return model, seconds


MODELS = ("DDE", "DDE, mixture base", "NoiseConditionalDDE", "NoiseConditionalDDE, mixture base")


def trained_rows(x, xv, chains, seed):
    rows, masses_rows = [], []
    for name in MODELS:
        model, fit_seconds = train(name, x, xv, seed)
        masses, se, ess = model_masses(lambda z: model.log_density(z.astype("float32")),
                                       model.default_proposal())
        masses_rows.append({"model": name, "seed": seed, "masses": masses.tolist(),
                            "masses_se": se.tolist(), "is_ess": ess,
                            "max_mass_error": float(np.max(np.abs(masses - 1 / 8))),
                            "fit_seconds": fit_seconds})
        methods = [("mala", "smc"), ("mala", "proposal")]
        if isinstance(model, dde.NoiseConditionalDDE):
            methods.append(("annealed", None))
        for method, init in methods:
            res, t = timed(lambda: model.sample(chains, method=method, init=init, seed=seed,
                                                return_results=True))
            label = method if init is None else f"{method}, {init} start"
            row = weight_row(name, label, res.samples, masses, t)
            row["seed"] = seed
            if res.diagnostics and "init" in res.diagnostics:
                row["init"] = res.diagnostics["init"]
            rows.append(row)
        print(f"  {name} (seed {seed}): model mass error {masses_rows[-1]['max_mass_error']:.3f}"
              + "".join(f"; {r['sampler']}: sampler error {r['sampler_error']:.3f}"
                        for r in rows[-len(methods):]), flush=True)
    return rows, masses_rows


# ----------------------------------------------------------------------------- moments
@keras.saving.register_keras_serializable(package="dde_benchmarks")
class GaussianNetwork(keras.layers.Layer):
    """f(x) = −½ (x − μ)ᵀ Σ⁻¹ (x − μ): an exact correlated 2-D Gaussian energy."""

    MEAN = np.array([1.0, -2.0])
    COV = np.array([[2.0, 0.8], [0.8, 0.5]])

    def call(self, x):
        prec = tf.constant(np.linalg.inv(self.COV), x.dtype)
        u = x - tf.constant(self.MEAN, x.dtype)
        return -0.5 * tf.reduce_sum(u * tf.linalg.matvec(prec, u), -1, keepdims=True)


def moment_row(label, samples, mean, var, seed):
    m = len(samples)
    x = np.asarray(samples, np.float64)
    mean_z = (x.mean(0) - mean) / (np.sqrt(var) / np.sqrt(m))
    var_z = (x.var(0) - var) / (var * np.sqrt(2.0 / m))
    return {"target": label, "seed": seed, "n": m, "mean_error_in_se": mean_z.tolist(),
            "variance_error_in_se": var_z.tolist(),
            "max_abs_error_in_se": float(np.max(np.abs(np.concatenate([mean_z, var_z]))))}


def moment_rows(chains, seed):
    rows = []
    net = GaussianNetwork()
    exact = dde.DenoisingDensityEstimator(net, noise_std=0.5)
    exact(tf.zeros([1, 2]))
    exact.data_mean.assign(net.MEAN + 1.0)
    exact.data_cov.assign(4.0 * net.COV)
    for init in ("smc", "proposal"):
        x = exact.sample(chains, method="mala", init=init, seed=seed)
        rows.append(moment_row(f"exact Gaussian energy, MALA ({init} start)", x, net.MEAN,
                               np.diag(net.COV), seed))
    data = np.random.default_rng(seed).normal(size=(20000, 2)).astype("float32")
    keras.utils.set_random_seed(seed)
    model = dde.DenoisingDensityEstimator(dde.nets.energy_mlp(2, depth=3, width=128),
                                          noise_std=SIGMA, seed=seed)
    model.compile(optimizer=keras.optimizers.Adam(5e-3))
    model.fit(data, epochs=20, batch_size=256, verbose=0)
    # The model's own moments, by importance sampling under its proposal.
    q = model.default_proposal()
    z = np.asarray(q.sample(NUM_IS, seed=tf.constant([seed, 3], tf.int32)))
    log_w = np.asarray(model.log_density(z.astype("float32")), np.float64) - np.asarray(
        q.log_prob(z))
    w = np.exp(log_w - log_w.max())
    w /= w.sum()
    mean = w @ z
    var = w @ (z - mean) ** 2
    x = model.sample(chains, method="mala", seed=seed)
    row = moment_row("DDE of N(0, I) data, MALA vs the model's moments", x, mean, var, seed)
    row.update({"model_mean": mean.tolist(), "model_variance": var.tolist(),
                "smoothed_data_variance": 1 + SIGMA ** 2})
    rows.append(row)
    rows.append(moment_row("DDE of N(0, I) data, MALA vs N(0, (1 + σ²) I)", x, np.zeros(2),
                           np.full(2, 1 + SIGMA ** 2), seed))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chains", type=int, default=4000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results/sampler_weights.json")
    args = parser.parse_args(argv)
    x = toy.sample("8gaussians", 20000, seed=0)
    xv = toy.sample("8gaussians", 4000, seed=1)
    weights, masses, moments = [], [], []
    for seed in range(args.seeds):
        print(f"seed {seed}: exact p_σ ...", flush=True)
        for row in exact_rows(x, args.chains, seed):
            row["seed"] = seed
            weights.append(row)
        print(f"seed {seed}: trained models ...", flush=True)
        rows, mass_rows = trained_rows(x, xv, args.chains, seed)
        weights += rows
        masses += mass_rows
        moments += moment_rows(args.chains, seed)

    def worst(rows, key):
        return max(r[key] for r in rows)

    print(f"\n### Mode weights on 8gaussians ({args.chains} chains, {args.seeds} seeds: "
          "largest error over modes and seeds)\n")
    print("| target | model's own max mass error (IS) | sampler | max abs(share − model mass) "
          "| max abs(share − 1/8) | seconds per run |")
    print("|---|---|---|---|---|---|")
    targets = ["exact p_σ"] + list(MODELS)
    for target in targets:
        own = ("0 (exact)" if target == "exact p_σ" else
               f"{max(m['max_mass_error'] for m in masses if m['model'] == target):.3f}")
        samplers = dict.fromkeys(r["sampler"] for r in weights if r["target"] == target)
        for sampler in samplers:
            rows = [r for r in weights if r["target"] == target and r["sampler"] == sampler]
            print(f"| {target} | {own} | {sampler} | {worst(rows, 'sampler_error'):.3f} | "
                  f"{worst(rows, 'error_vs_eighth'):.3f} | "
                  f"{np.mean([r['seconds'] for r in rows]):.1f} |")
    print("\n### Moments (errors in Monte Carlo standard errors, largest over coordinates)\n")
    print("| target | seed | mean (SE) | variance (SE) | max abs error (SE) |")
    print("|---|---|---|---|---|")
    for r in moments:
        print(f"| {r['target']} | {r['seed']} | "
              f"{', '.join(f'{v:+.1f}' for v in r['mean_error_in_se'])} | "
              f"{', '.join(f'{v:+.1f}' for v in r['variance_error_in_se'])} | "
              f"{r['max_abs_error_in_se']:.1f} |")
    _io.write_json(args.out, {
        "benchmark": "sampler_weights", "chains": args.chains, "seeds": args.seeds,
        "sigma": SIGMA, "importance_draws": NUM_IS, "weights": weights, "model_masses": masses,
        "moments": moments, "tensorflow": tf.__version__, "keras": keras.__version__,
        "machine": platform.machine(), "cpus": os.cpu_count()})
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
