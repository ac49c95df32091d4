"""Density estimation on tabular data: the DDE against KDE, a Gaussian mixture, two
normalizing flows (a masked autoregressive flow and a rational-quadratic neural spline flow)
and a score network's probability-flow likelihood, on the same splits.

    python benchmarks/density.py --dataset NAME[,NAME...] [--data-dir DIR] [--quick]
                                 [--methods M1,M2] [--max-steps N] [--seed S] [--out FILE]
                                 [--nsf-structure autoregressive|coupling] [--threads N]

NAME is anything `dde.datasets.load_dataset` accepts: scikit-learn's UCI sets (`iris`,
`wine`, `breast_cancer`, `digits`), ADBench files (`adbench:magic.gamma`, …, in DIR or
DIR/adbench), the MAF suite (`power`, `gas`, `hepmass`, `miniboone`, `bsds300` in DIR, see
benchmarks/README.md) and the toy sets. DIR defaults to `DDE_DATA_DIR`.

Protocol (every choice on the validation split; the test split is read once per method, for
the reported number):

- KDE: Gaussian kernel (the model of `sklearn.neighbors.KernelDensity`, evaluated exactly),
  bandwidth from a geometric grid by validation log-likelihood, on at most 50,000 training
  rows (a random subset on larger sets);
- GMM: `sklearn.mixture.GaussianMixture` (full covariances), the number of components from
  1, 2, 4, … by validation log-likelihood;
- MAF and RQ-NSF: `dde.flows` normalizing flows on a standard normal base, trained by
  maximum likelihood with Keras (Adam, gradient norm clipped, non-finite batches skipped and
  counted, the learning rate halved on validation plateaus) with early stopping on the
  validation log-likelihood (best weights restored). MAF: 5 affine autoregressive layers
  (MADE conditioners 2 × 128, ReLU, log-scales soft-clipped to ±5, the order reversed between
  layers). RQ-NSF: 5 rational-quadratic spline layers (`tfp.bijectors.RationalQuadraticSpline`,
  8 bins on [−5, 5], identity tails; MADE 2 × 128), autoregressive by default
  (`--nsf-structure coupling` for the coupling variant). Both start with a learnable
  sinh–arcsinh tail layer (`learn_tails`), so that points far out in heavy-tailed data do not
  get Gaussian-tail log-densities. Sizes, tail bound, tail layer, learning rate (1e-3) and
  batch size (256) were chosen on the validation splits of iris, wine, magic.gamma and
  annthyroid (`flows_dev.py`, benchmarks/README.md);
- DDE: `dde.DenoisingDensityEstimator` on a softplus `energy_mlp` plus a fixed Gaussian
  envelope −‖x‖²/18 (so that exp f is integrable). Per architecture one model is trained
  along a decreasing σ path (0.4 → 0.05, warm-started, Adam, early stopping on the
  validation denoising loss at each σ); after each σ it is normalized by AIS and scored on
  the validation split, and the (architecture, σ) with the best validation average
  log-likelihood is kept. That model is normalized again with more samples by importance
  sampling (Gaussian or Student-t proposal, whichever gives the larger effective sample
  size) — row "DDE (IS)" — and by annealed importance sampling (HMC from the Gaussian
  proposal) — row "DDE (AIS)". The DDE models the σ-smoothed density p * N(0, σ²I), so its
  likelihood is that of the smoothed model;
- ScoreNet (PF): `dde.ScoreNetwork` on the VP-SDE with the likelihood weighting λ = β(t),
  early stopping on the validation loss, test log-likelihood by the probability-flow ODE
  (exact divergence for d ≤ 10, Hutchinson with one Rademacher probe above), evaluated on at
  most `pf_max_test` test points (the table gives n).

Reported per method: test average log-likelihood (ALL, nats per example) ± 2·SE, where SE
combines the test-set standard error with the standard error of log Ẑ (DDE); log Ẑ with its
standard error and effective sample size; train time (fitting plus model selection) and
eval time (normalization plus test evaluation), in seconds of wall time on this machine.
Writes JSON (default `benchmarks/results/density.json`) and prints markdown tables; the
markdown is also written next to the JSON (`.md`). `--quick` runs a tiny budget (smoke test).
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

METHODS = ("KDE", "GMM", "MAF", "RQ-NSF", "DDE-IS", "DDE-AIS", "ScoreNet-PF")
LABELS = {"KDE": "KDE", "GMM": "GMM", "MAF": "MAF", "RQ-NSF": "RQ-NSF", "DDE-IS": "DDE (IS)",
          "DDE-AIS": "DDE (AIS)", "ScoreNet-PF": "ScoreNet (PF)"}
FLOWS = ("MAF", "RQ-NSF")  # the flow peers; the DDE is compared with every peer
_START = time.perf_counter()


@dataclass
class Budget:
    """Every size and count of a run (the full defaults, or `Budget.quick()`)."""

    kde_bandwidths: list = field(default_factory=lambda: np.geomspace(0.02, 2.0, 16).tolist())
    kde_max_validation: int = 3000
    kde_max_train: int = 50_000
    gmm_components: list = field(default_factory=lambda: [1, 2, 4, 8, 16, 32, 64])
    gmm_max_iter: int = 200
    gmm_patience: int = 2           # counts without validation improvement before stopping
    maf_layers: int = 5
    maf_hidden: list = field(default_factory=lambda: [128, 128])
    maf_max_steps: int = 8000
    maf_patience: int = 15          # validation checks without improvement
    nsf_structure: str = "autoregressive"   # or "coupling"
    nsf_layers: int = 5
    nsf_hidden: list = field(default_factory=lambda: [128, 128])
    nsf_bins: int = 8
    nsf_tail_bound: float = 5.0
    nsf_max_steps: int = 8000
    nsf_patience: int = 15
    flow_learning_rate: float = 1e-3
    flow_weight_decay: float = 0.0  # Adam's decoupled weight decay (0: none)
    flow_batch_size: int = 256
    flow_whiten: bool = False       # a fixed whitening layer from the training data
    flow_learn_tails: bool = True   # a learnable sinh–arcsinh tail layer (dde.flows)
    flow_max_grad_norm: float = 10.0
    batch_size: int = 256
    learning_rate: float = 1e-3
    # The DDE's σ path: one model per architecture, trained at each σ in turn (warm start).
    dde_noise_stds: list = field(default_factory=lambda: np.geomspace(0.4, 0.05, 6).tolist())
    dde_architectures: list = field(default_factory=lambda: [[3, 128]])
    dde_max_steps: int = 6000       # per architecture, split evenly over the σ path
    dde_envelope_scale: float = 3.0  # f = MLP(x) − ‖x‖²/(2s²); 0: the bare MLP
    dde_patience: int = 6           # epochs without validation-loss improvement (per σ)
    select_ais_chains: int = 256
    select_ais_steps: int = 100
    final_is_samples: int = 100_000
    final_is_proposals: list = field(
        default_factory=lambda: ["gaussian", "student_t"])
    final_ais_chains: int = 512
    final_ais_steps: int = 300
    score_max_steps: int = 3000
    score_patience: int = 8
    pf_max_test: int = 500
    pf_rtol: float = 1e-5
    pf_jit_compile: bool = True
    min_steps_per_epoch: int = 25

    @classmethod
    def quick(cls) -> "Budget":
        return cls(kde_bandwidths=np.geomspace(0.1, 1.0, 4).tolist(), kde_max_validation=500,
                   gmm_components=[1, 2], gmm_max_iter=100, maf_layers=2, maf_hidden=[16, 16],
                   maf_max_steps=30, maf_patience=3, nsf_layers=2, nsf_hidden=[16, 16],
                   nsf_bins=4, nsf_max_steps=30, nsf_patience=3, flow_batch_size=64,
                   batch_size=64,
                   dde_noise_stds=[0.5, 0.3], dde_architectures=[[2, 32]], dde_max_steps=40,
                   dde_patience=3, select_ais_chains=32,
                   select_ais_steps=10, final_is_samples=4000, final_is_proposals=["gaussian"],
                   final_ais_chains=32, final_ais_steps=10, score_max_steps=30,
                   score_patience=3, pf_max_test=32,
                   pf_rtol=1e-3, pf_jit_compile=False, min_steps_per_epoch=10)


# ----------------------------------------------------------------------------- helpers
def log(msg: str) -> None:
    """Progress line with the elapsed wall time."""
    print(f"[{time.perf_counter() - _START:7.1f}s] {msg}", flush=True)


def mean_and_se(values) -> tuple[float, float]:
    """(mean, standard error) of per-example log-likelihoods."""
    v = np.asarray(values, dtype=np.float64)
    if not np.isfinite(v).all():
        return float("-inf"), float("nan")
    return float(v.mean()), float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else 0.0


def result(test_ll, *, val_all=None, train_time, eval_time, **extra) -> dict:
    """A method's result dict from its per-example test log-likelihoods."""
    mean, se = mean_and_se(test_ll)
    test_ll = np.asarray(test_ll, dtype=np.float64)
    out = {"test_all": mean, "test_se": se, "stderr": se, "n_test": int(len(test_ll)),
           "test_median": float(np.median(test_ll)), "test_min": float(np.min(test_ll)),
           "val_all": val_all, "log_z": None, "log_z_stderr": None, "ess": None,
           "train_time_s": float(train_time), "eval_time_s": float(eval_time)}
    out.update(extra)
    return out


def _batch_size(n: int, batch_size: int) -> int:
    """`batch_size`, reduced on small training sets so that an epoch has ≥ 4 steps."""
    return int(max(8, min(batch_size, n // 4)))


# --------------------------------------------------------------------------- baselines
def gaussian_kde_log_density(train, x, bandwidths, chunk: int = 512) -> np.ndarray:
    """Exact Gaussian-kernel KDE log-densities for several bandwidths at once:
    log p_h(x) = logsumexp_j(−‖x − x_j‖² / 2h²) − log N − (d/2) log(2πh²).

    train [N, d], x [n, d], bandwidths [H] → [H, n] (float64). The squared distances are
    computed once per chunk of x and shared by every bandwidth.
    """
    from scipy.special import logsumexp

    train = np.asarray(train, np.float64)
    x = np.asarray(x, np.float64)
    h = np.asarray(bandwidths, np.float64)
    n_train, d = train.shape
    sq_train = np.einsum("ij,ij->i", train, train)
    out = np.empty((len(h), len(x)))
    for start in range(0, len(x), chunk):
        xb = x[start:start + chunk]
        dist = np.maximum(np.einsum("ij,ij->i", xb, xb)[:, None] + sq_train[None, :]
                          - 2.0 * xb @ train.T, 0.0)
        for k, hk in enumerate(h):
            out[k, start:start + chunk] = logsumexp(-dist / (2 * hk * hk), axis=1)
    return out - math.log(n_train) - 0.5 * d * np.log(2 * math.pi * h * h)[:, None]


def run_kde(splits, budget: Budget, seed: int) -> dict:
    """Gaussian KDE with the bandwidth maximizing the validation log-likelihood.

    Log-densities are computed exactly (`gaussian_kde_log_density`). scikit-learn's
    `KernelDensity` defines the same model, but its tree algorithms overestimate the density
    far from the data (by 12 nats at a test point 9 bandwidths from the nearest training
    point, with atol = rtol = 0); its test ALL is recorded as `sklearn_test_all`. Training
    sets above `kde_max_train` rows are subsampled (recorded as `n_train_used`).
    """
    from sklearn.neighbors import KernelDensity

    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    train, val = splits.train, splits.validation
    if len(train) > budget.kde_max_train:
        train = train[rng.choice(len(train), budget.kde_max_train, replace=False)]
    if len(val) > budget.kde_max_validation:
        val = val[rng.choice(len(val), budget.kde_max_validation, replace=False)]
    grid = list(budget.kde_bandwidths)
    val_ll = gaussian_kde_log_density(train, val, grid)
    scores = {h: float(np.mean(row)) for h, row in zip(grid, val_ll)}
    best = max(scores, key=scores.get)
    t1 = time.perf_counter()
    test_ll = gaussian_kde_log_density(train, splits.test, [best])[0]
    eval_time = time.perf_counter() - t1
    sk = KernelDensity(bandwidth=best).fit(train).score_samples(splits.test)
    return result(test_ll, val_all=scores[best], train_time=t1 - t0, eval_time=eval_time,
                  selected={"bandwidth": round(best, 5)},
                  at_grid_edge=best in (grid[0], grid[-1]), n_train_used=int(len(train)),
                  sklearn_test_all=float(np.mean(sk)),
                  candidates={f"{h:.4g}": s for h, s in scores.items()})


def _fit_gmm(k: int, x, budget: Budget, seed: int):
    """GaussianMixture(k, full) on x; if EM meets a collapsed component, refit in float64
    with reg_covar 1e-4, then 1e-2 (the value used is the model's `reg_covar`)."""
    from sklearn.mixture import GaussianMixture

    attempts = [(x, 1e-6), (x.astype(np.float64), 1e-4), (x.astype(np.float64), 1e-2)]
    for i, (data, reg) in enumerate(attempts):
        try:
            return GaussianMixture(k, covariance_type="full", max_iter=budget.gmm_max_iter,
                                   reg_covar=reg, random_state=seed).fit(data)
        except ValueError:
            if i == len(attempts) - 1:
                raise


def run_gmm(splits, budget: Budget, seed: int) -> dict:
    """GaussianMixture (full covariance) with the component count maximizing the validation
    log-likelihood. Counts are tried in increasing order until `gmm_patience` successive ones
    fail to improve it, or a mixture would have more parameters than training values."""

    t0 = time.perf_counter()
    n, d = splits.train.shape
    params_per_component = d + d * (d + 1) / 2 + 1
    scores, models, bad = {}, {}, 0
    for k in budget.gmm_components:
        if k > 1 and k * params_per_component > n * d:
            break
        gmm = _fit_gmm(k, splits.train, budget, seed)
        scores[k] = float(np.mean(gmm.score_samples(splits.validation)))
        models[k] = gmm
        bad = 0 if scores[k] >= max(scores.values()) else bad + 1
        if bad >= budget.gmm_patience:
            break
    best = max(scores, key=scores.get)
    t1 = time.perf_counter()
    test_ll = models[best].score_samples(splits.test)
    return result(test_ll, val_all=scores[best], train_time=t1 - t0,
                  eval_time=time.perf_counter() - t1, selected={"n_components": best},
                  reg_covar=models[best].reg_covar,
                  candidates={str(k): s for k, s in scores.items()})


# ------------------------------------------------------------------------------ flows
def build_flow(d: int, method: str, budget: Budget, seed: int):
    """The `dde.flows` model of a flow method ("MAF" or "RQ-NSF") on R^d."""
    from dde import flows

    common = dict(whiten=budget.flow_whiten, learn_tails=budget.flow_learn_tails,
                  max_grad_norm=budget.flow_max_grad_norm, seed=seed)
    if method == "MAF":
        return flows.masked_autoregressive_flow(d, num_layers=budget.maf_layers,
                                                hidden_units=budget.maf_hidden, **common)
    return flows.neural_spline_flow(d, structure=budget.nsf_structure,
                                    num_layers=budget.nsf_layers,
                                    hidden_units=budget.nsf_hidden, num_bins=budget.nsf_bins,
                                    tail_bound=budget.nsf_tail_bound, **common)


def fit_flow(splits, method: str, budget: Budget, seed: int):
    """(flow, training record) of a flow method trained on the training split by maximum
    likelihood with early stopping on the validation split (best weights restored)."""
    import keras

    keras.utils.set_random_seed(seed)  # the order of the training batches
    flow = build_flow(splits.dim, method, budget, seed)
    if method == "MAF":
        max_steps, patience = budget.maf_max_steps, budget.maf_patience
    else:
        max_steps, patience = budget.nsf_max_steps, budget.nsf_patience
    steps, val_loss, history = _fit_keras(flow, splits, budget, max_steps, patience, method,
                                          learning_rate=budget.flow_learning_rate,
                                          batch_size=budget.flow_batch_size,
                                          weight_decay=budget.flow_weight_decay)
    skipped = int(sum(history.history.get("skipped_steps", [])))
    return flow, {"steps": steps, "skipped_steps": skipped, "val_loss": val_loss}


def _flow_selection(method: str, budget: Budget) -> dict:
    if method == "MAF":
        sizes = {"layers": budget.maf_layers, "hidden": list(budget.maf_hidden)}
    else:
        sizes = {"structure": budget.nsf_structure, "layers": budget.nsf_layers,
                 "hidden": list(budget.nsf_hidden), "bins": budget.nsf_bins,
                 "tail_bound": budget.nsf_tail_bound}
    return {**sizes, "whiten": budget.flow_whiten, "learn_tails": budget.flow_learn_tails,
            "learning_rate": budget.flow_learning_rate,
            "weight_decay": budget.flow_weight_decay, "batch_size": budget.flow_batch_size}


def run_flow(splits, budget: Budget, seed: int, method: str) -> dict:
    """A flow (`fit_flow`) and its test log-likelihoods."""
    t0 = time.perf_counter()
    flow, record = fit_flow(splits, method, budget, seed)
    val_all = float(np.mean(flow.log_prob(splits.validation)))
    t1 = time.perf_counter()
    test_ll = flow.log_prob(splits.test)
    return result(test_ll, val_all=val_all, train_time=t1 - t0,
                  eval_time=time.perf_counter() - t1,
                  selected={**_flow_selection(method, budget), "steps": record["steps"]},
                  skipped_steps=record["skipped_steps"])


def run_maf(splits, budget: Budget, seed: int) -> dict:
    """The masked autoregressive flow (`run_flow`)."""
    return run_flow(splits, budget, seed, "MAF")


def run_nsf(splits, budget: Budget, seed: int) -> dict:
    """The rational-quadratic neural spline flow (`run_flow`)."""
    return run_flow(splits, budget, seed, "RQ-NSF")


# -------------------------------------------------------------------------------- DDE
class _Progress:
    """A Keras callback printing the losses every `every` epochs."""

    def __new__(cls, label, every):
        import keras

        class Progress(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                if (epoch + 1) % every == 0 and logs:
                    log(f"  {label} epoch {epoch + 1}: loss {logs.get('loss', np.nan):.4f} "
                        f"val_loss {logs.get('val_loss', np.nan):.4f}")

        return Progress()


def _fit_keras(model, splits, budget: Budget, max_steps: int, patience: int, label: str,
               compile: bool = True, learning_rate: float | None = None,
               batch_size: int | None = None, weight_decay: float = 0.0):
    """Adam + early stopping on val_loss (best weights restored); returns (steps run, best
    validation loss, the Keras History). compile=False continues with the model's optimizer
    (and its state). learning_rate, batch_size: default the budget's; weight_decay: Adam's
    decoupled weight decay (0: none)."""
    import keras

    n = len(splits.train)
    batch = _batch_size(n, batch_size or budget.batch_size)
    steps_per_epoch = int(math.ceil(n / batch))
    # Small sets: several passes per "epoch" so that validation runs every ≥ N steps.
    repeat = max(1, int(math.ceil(budget.min_steps_per_epoch / steps_per_epoch)))
    x = np.concatenate([splits.train] * repeat) if repeat > 1 else splits.train
    epochs = max(1, int(math.ceil(max_steps / (steps_per_epoch * repeat))))
    callbacks = [keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience,
                                               restore_best_weights=True),
                 _Progress(label, every=max(1, epochs // 5))]
    if compile:
        model.compile(optimizer=keras.optimizers.Adam(learning_rate or budget.learning_rate,
                                                      weight_decay=weight_decay or None))
        callbacks.append(keras.callbacks.ReduceLROnPlateau(
            monitor="val_loss", factor=0.5, patience=max(2, patience // 2)))
    history = model.fit(x, epochs=epochs, batch_size=batch, validation_data=splits.validation,
                        callbacks=callbacks, verbose=0, shuffle=True)
    n_epochs = len(history.history["loss"])
    return (n_epochs * repeat * steps_per_epoch, float(np.min(history.history["val_loss"])),
            history)


def _normalize(model, x_train, method: str, samples: int, steps: int, proposal="gaussian",
               seed: int = 0):
    """model.normalize with the warnings of a small ESS recorded rather than printed."""
    from dde.partition import LowEffectiveSampleSizeWarning

    options = {"num_samples": samples, "seed": seed}
    if method == "ais":
        options.update(num_steps=steps, batch_size=min(samples, 1024))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LowEffectiveSampleSizeWarning)
        return model.normalize(x_train, method=method, proposal=proposal, **options)


def _all_of(model, x) -> tuple:
    from dde.partition import average_log_likelihood

    res = average_log_likelihood(model, x)
    return res, model.log_density(x).astype(np.float64) - float(model.log_z.numpy())


def energy_network(d: int, depth: int, width: int, envelope_scale: float = 0.0):
    """`dde.nets.energy_mlp` (softplus), plus a fixed Gaussian envelope −‖x‖²/(2s²) when
    envelope_scale s > 0: f(x) = MLP(x) − ‖x‖²/(2s²), [batch, d] → [batch, 1].

    A softplus MLP is asymptotically linear, so exp f need not be integrable; the envelope
    makes ∫ exp f finite whatever the MLP learns (on standardized data s = 3 barely touches
    the data region, whose log-density the MLP learns as a residual).
    """
    import keras

    from dde import nets

    mlp = nets.energy_mlp(d, depth=depth, width=width, activation="softplus")
    if not envelope_scale:
        return mlp
    x = keras.Input(shape=(d,), name="x")
    quad = keras.ops.sum(keras.ops.square(x), axis=-1, keepdims=True) * (
        -0.5 / envelope_scale ** 2)
    return keras.Model(x, keras.layers.Add(name="energy")([mlp(x), quad]),
                       name="enveloped_energy_mlp")


def run_dde(splits, budget: Budget, seed: int) -> dict:
    """DDEs along a σ path, the (architecture, σ) with the best validation ALL kept; its IS
    and AIS test results.

    Per architecture one model is trained at σ₁ > σ₂ > … in turn (`dde_noise_stds`, an even
    share of `dde_max_steps` each, early stopping per σ), each stage starting from the
    previous one's weights. After each stage the model — a DDE of the σ-smoothed density at
    that σ — is normalized by AIS (importance sampling alone underestimates log Z when its
    effective sample size is small, which would favour the worst-normalized candidate) and
    scored on the validation split.
    """
    import keras

    from dde import DenoisingDensityEstimator

    d = splits.dim
    stage_steps = max(1, budget.dde_max_steps // len(budget.dde_noise_stds))
    t0 = time.perf_counter()
    candidates, best, best_model, best_weights = [], None, None, None
    for depth, width in budget.dde_architectures:
        keras.utils.set_random_seed(seed)
        model = DenoisingDensityEstimator(
            energy_network(d, depth, width, budget.dde_envelope_scale),
            noise_std=budget.dde_noise_stds[0], seed=seed)
        model.compile(optimizer=keras.optimizers.Adam(budget.learning_rate))
        total_steps = 0
        for sigma in budget.dde_noise_stds:
            label = f"DDE σ={sigma:.3g} {depth}×{width}"
            tc = time.perf_counter()
            model.noise_std.assign(sigma)
            steps, val_loss, _ = _fit_keras(model, splits, budget, stage_steps,
                                            budget.dde_patience, label, compile=False)
            total_steps += steps
            z = _normalize(model, splits.train, "ais", budget.select_ais_chains,
                           budget.select_ais_steps, seed=seed)
            val = _all_of(model, splits.validation)[0]
            entry = {"noise_std": round(float(sigma), 5), "depth": depth, "width": width,
                     "steps": total_steps, "val_loss": val_loss, "val_all": val.mean,
                     "val_all_se": val.stderr, "log_z": z.log_z, "log_z_stderr": z.stderr,
                     "ess": z.ess, "selection_normalization": "ais",
                     "seconds": time.perf_counter() - tc}
            candidates.append(entry)
            log(f"  {label}: {total_steps} steps, validation ALL {val.mean:.3f} ± "
                f"{2 * val.stderr:.3f} (log Ẑ by AIS, ESS {z.ess:.0f})")
            if best is None or val.mean > best["val_all"]:
                best, best_model, best_weights = entry, model, model.get_weights()
    train_time = time.perf_counter() - t0
    model = best_model
    model.set_weights(best_weights)  # includes σ
    out = {}
    # Importance sampling: Gaussian and GMM proposals, the larger ESS is kept.
    t1 = time.perf_counter()
    tries = []
    from dde.partition import PROPOSALS

    for proposal in [p for p in budget.final_is_proposals if p in PROPOSALS]:
        z = _normalize(model, splits.train, "is", budget.final_is_samples, 0, proposal,
                       seed=seed + 1)
        tries.append((z.ess, proposal, z))
    ess, proposal, z = max(tries, key=lambda item: item[0])
    model.set_log_partition(z.log_z, z.stderr, z.ess)
    val_is = _all_of(model, splits.validation)[0]
    test_is, test_ll = _all_of(model, splits.test)
    out["DDE-IS"] = _dde_result(test_is, test_ll, z, val_is, best, candidates, train_time,
                                time.perf_counter() - t1, proposal=proposal,
                                other_proposals={p: {"log_z": r.log_z, "ess": r.ess}
                                                 for _, p, r in tries})
    # Annealed importance sampling from the Gaussian proposal.
    t2 = time.perf_counter()
    z = _normalize(model, splits.train, "ais", budget.final_ais_chains,
                   budget.final_ais_steps, "gaussian", seed=seed + 2)
    val_ais = _all_of(model, splits.validation)[0]
    test_ais, test_ll = _all_of(model, splits.test)
    out["DDE-AIS"] = _dde_result(test_ais, test_ll, z, val_ais, best, candidates, train_time,
                                 time.perf_counter() - t2, proposal="gaussian",
                                 ais_steps=budget.final_ais_steps,
                                 acceptance_rate=z.diagnostics.get("acceptance_rate"))
    return out


def _dde_result(test, test_ll, z, val, best, candidates, train_time, eval_time, **extra):
    out = result(test_ll, val_all=val.mean, train_time=train_time, eval_time=eval_time,
                 selected={k: best[k] for k in ("noise_std", "depth", "width", "steps")},
                 candidates=candidates, num_samples=z.num_samples, **extra)
    out.update(test_all=test.mean, stderr=test.stderr, test_se=test.test_stderr,
               log_z=z.log_z, log_z_stderr=z.stderr, ess=z.ess)
    return out


# ------------------------------------------------------------------- score network (PF)
def run_score_pf(splits, budget: Budget, seed: int) -> dict:
    """ScoreNetwork (VP-SDE, likelihood weighting) and its probability-flow test ALL."""
    import keras

    from dde.likelihood import probability_flow_log_prob
    from dde.score import ScoreNetwork

    t0 = time.perf_counter()
    keras.utils.set_random_seed(seed)
    model = ScoreNetwork(sde="vp", weighting="beta", seed=seed)
    steps, val_loss, _ = _fit_keras(model, splits, budget, budget.score_max_steps,
                                    budget.score_patience, "ScoreNet")
    t1 = time.perf_counter()
    test = splits.test
    if len(test) > budget.pf_max_test:
        test = test[np.sort(np.random.default_rng(seed).choice(len(test), budget.pf_max_test,
                                                               replace=False))]
    divergence = "exact" if splits.dim <= 10 else "hutchinson"
    pf = probability_flow_log_prob(model, model.sde, test, divergence=divergence,
                                   rtol=budget.pf_rtol, atol=budget.pf_rtol, seed=seed,
                                   batch_size=1024, jit_compile=budget.pf_jit_compile)
    return result(pf.log_prob, train_time=t1 - t0, eval_time=time.perf_counter() - t1,
                  selected={"network": "score_mlp 3×128 swish", "sde": "vp",
                            "weighting": "beta", "steps": steps},
                  val_loss=val_loss, divergence=divergence,
                  function_evaluations=int(pf.num_function_evaluations),
                  max_latent_norm=float(np.linalg.norm(pf.latent, axis=1).max()))


# ---------------------------------------------------------------------------- reporting
def _cell(r: dict | None) -> str:
    if r is None:
        return "—"
    if "error" in r:
        return "failed"
    if not np.isfinite(r["test_all"]):
        return "−∞"
    fmt = ".2f" if abs(r["test_all"]) < 1e5 and 2 * r["stderr"] < 1e5 else ".1e"
    return f"{r['test_all']:{fmt}} ± {2 * r['stderr']:{fmt}}"


def markdown(report: dict, methods) -> str:
    """The summary table (test ALL ± 2·SE) and the per-method details table."""
    lines = ["| data set | d | n train / val / test | " + " | ".join(LABELS[m] for m in methods)
             + " |", "|---|---|---|" + "---|" * len(methods)]
    for name, ds in report["datasets"].items():
        n = ds["sizes"]
        best = max((ds["methods"][m]["test_all"] for m in methods
                    if m in ds["methods"] and "error" not in ds["methods"][m]),
                   default=None)
        cells = []
        for m in methods:
            r = ds["methods"].get(m)
            text = _cell(r)
            if r is not None and "error" not in r and r["test_all"] == best:
                text = f"**{text}**"
            cells.append(text)
        lines.append(f"| {name} | {ds['d']} | {n['train']} / {n['validation']} / {n['test']} | "
                     + " | ".join(cells) + " |")
    lines += ["", "| data set | method | test ALL ± 2·SE | median | n test | validation ALL | "
              "log Ẑ ± SE (ESS) | selected | train s | eval s |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for name, ds in report["datasets"].items():
        for m in methods:
            r = ds["methods"].get(m)
            if r is None:
                continue
            if "error" in r:
                lines.append(f"| {name} | {LABELS[m]} | failed: {r['error'][:60]} | | | | | | | |")
                continue
            z = "exact"
            if r.get("log_z") is not None:
                z = f"{r['log_z']:.2f} ± {r['log_z_stderr']:.3f} ({r['ess']:.0f})"
            sel = ", ".join(f"{k}={v}" for k, v in (r.get("selected") or {}).items())
            val = "—" if r.get("val_all") is None else f"{r['val_all']:.2f}"
            lines.append(f"| {name} | {LABELS[m]} | {_cell(r)} | {r['test_median']:.2f} | "
                         f"{r['n_test']} | {val} | {z} | "
                         f"{sel} | {r['train_time_s']:.1f} | {r['eval_time_s']:.1f} |")
    return "\n".join(lines)


def closing_note(report: dict, methods) -> str:
    """How the DDE compares with KDE, GMM and the flows on each data set.

    Both log Ẑ estimates (IS and AIS) are biased low in expectation, so each DDE ALL is
    biased high: the note uses the lower of the two.
    """
    rows = [m for m in ("DDE-IS", "DDE-AIS") if m in methods]
    if not rows:
        return ""
    notes = []
    for name, ds in report["datasets"].items():
        found = [ds["methods"][m] for m in rows
                 if m in ds["methods"] and "error" not in ds["methods"][m]]
        if not found:
            continue
        r = min(found, key=lambda item: item["test_all"])
        parts = []
        for peer in ("KDE", "GMM", *FLOWS):
            p = ds["methods"].get(peer)
            if p is None or "error" in p or not np.isfinite(p["test_all"]):
                continue
            gap = r["test_all"] - p["test_all"]
            se = math.sqrt(r["stderr"] ** 2 + p["stderr"] ** 2)
            parts.append(f"{peer} {gap:+.2f} (2·SE {2 * se:.2f})")
        if parts:
            notes.append(f"- {name}: DDE − " + ", ".join(parts))
    if not notes:
        return ""
    return ("Test ALL of the DDE (the lower of its IS and AIS values) minus each peer's "
            "(positive: the DDE is better; the 2·SE of a difference treats the two estimates "
            "as independent):\n" + "\n".join(notes))


# --------------------------------------------------------------------------------- main
RUNNERS = {"KDE": run_kde, "GMM": run_gmm, "MAF": run_maf, "RQ-NSF": run_nsf,
           "ScoreNet-PF": run_score_pf}


def run_dataset(name: str, data_dir, methods, budget: Budget, seed: int) -> dict:
    from dde.datasets import load_splits

    splits = load_splits(name, data_dir)
    log(f"{name}: d = {splits.dim}, sizes {splits.sizes()}")
    entry = {"d": splits.dim, "sizes": splits.sizes(), "methods": {},
             "preprocessing": {k: splits.info[k] for k in ("source", "dequantized",
                                                           "kept_columns", "seed")
                               if k in splits.info}}
    jobs = [m for m in methods if m in RUNNERS and m != "ScoreNet-PF"]
    if {"DDE-IS", "DDE-AIS"} & set(methods):
        jobs.append("DDE")
    if "ScoreNet-PF" in methods:
        jobs.append("ScoreNet-PF")
    for job in jobs:
        log(f"{name}: {job} …")
        try:
            if job == "DDE":
                out = run_dde(splits, budget, seed)
                out = {m: r for m, r in out.items() if m in methods}
            else:
                out = {job: RUNNERS[job](splits, budget, seed)}
        except Exception as err:  # one failing method must not lose the others' results
            log(f"{name}: {job} failed: {type(err).__name__}: {err}")
            labels = ["DDE-IS", "DDE-AIS"] if job == "DDE" else [job]
            out = {m: {"error": f"{type(err).__name__}: {err}"} for m in labels
                   if m in methods}
        for m, r in out.items():
            entry["methods"][m] = r
            if "error" not in r:
                log(f"{name}: {LABELS[m]} test ALL {_cell(r)} (train {r['train_time_s']:.1f}s,"
                    f" eval {r['eval_time_s']:.1f}s)")
    return entry


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", action="append", required=True,
                        help="data set name (comma-separated or repeated for several)")
    parser.add_argument("--data-dir", default=None,
                        help="data root (MAF suite) / folder of ADBench files "
                             "(default: $DDE_DATA_DIR)")
    parser.add_argument("--quick", action="store_true", help="tiny budget, for smoke tests")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help=f"comma-separated subset of {','.join(METHODS)}")
    parser.add_argument("--max-steps", type=int, default=None,
                        help="training steps per model (MAF, RQ-NSF, each DDE candidate, "
                             "ScoreNet); default 6,000 for the DDE, 3,000 for ScoreNet, "
                             "8,000 for the flows")
    parser.add_argument("--nsf-structure", choices=["autoregressive", "coupling"],
                        default=None, help="RQ-NSF layers (default: autoregressive)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice")
    parser.add_argument("--threads", type=int, default=None,
                        help="TensorFlow intra- and inter-op threads (default: TensorFlow's)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" /
                                             "density.json"), help="JSON output file")
    args = parser.parse_args(argv)
    names = [n.strip() for item in args.dataset for n in item.split(",") if n.strip()]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        parser.error(f"unknown method(s) {unknown}; choose from {','.join(METHODS)}")
    methods = [m for m in METHODS if m in methods]

    from dde.datasets import load_splits

    for name in names:  # fail early, before any training, on a bad name or missing file
        try:
            load_splits(name, args.data_dir)
        except (ValueError, TypeError) as err:
            print(f"density.py: error: {err}", file=sys.stderr)
            return 2

    import keras
    import sklearn
    import tensorflow as tf

    from dde import _io

    if args.threads is not None:
        if args.threads < 1:
            parser.error("--threads must be a positive integer")
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    budget = Budget.quick() if args.quick else Budget()
    if args.max_steps is not None:
        if args.max_steps < 1:
            parser.error("--max-steps must be a positive integer")
        budget.maf_max_steps = budget.nsf_max_steps = args.max_steps
        budget.dde_max_steps = budget.score_max_steps = args.max_steps
    if args.nsf_structure is not None:
        budget.nsf_structure = args.nsf_structure
    report = {"benchmark": "density", "command": " ".join(["python", "benchmarks/density.py"]
                                                          + list(argv or sys.argv[1:])),
              "quick": args.quick, "seed": args.seed, "methods": methods,
              "budget": asdict(budget), "datasets": {},
              "environment": {"python": sys.version.split()[0],
                              "platform": platform.platform(), "tensorflow": tf.__version__,
                              "keras": keras.__version__, "sklearn": sklearn.__version__,
                              "cpus": os.cpu_count(), "threads": args.threads}}
    for name in names:
        report["datasets"][name] = run_dataset(name, args.data_dir, methods, budget,
                                               args.seed)
    report["wall_time_s"] = time.perf_counter() - _START
    text = markdown(report, methods)
    note = closing_note(report, methods)
    report["markdown"] = text
    report["note"] = note
    print("\n" + text + ("\n\n" + note if note else ""))
    out = Path(args.out)
    _io.write_json(out, report)
    _io.write_text(out.with_suffix(".md"), f"Command: `{report['command']}`\n\n{text}\n"
                   + (f"\n{note}\n" if note else ""))
    log(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
