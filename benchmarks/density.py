"""Density estimation on tabular data: the DDE against KDE, a Gaussian mixture, two
normalizing flows (a masked autoregressive flow and a rational-quadratic neural spline flow)
and a score network's probability-flow likelihood, on the same splits.

    python benchmarks/density.py --dataset NAME[,NAME...] [--data-dir DIR] [--quick]
                                 [--methods M1,M2] [--max-steps N] [--seed S] [--out FILE]
                                 [--nsf-structure autoregressive|coupling] [--threads N]
    python benchmarks/density.py merge A.json B.json ... --out FILE   # runs on disjoint sets

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
  1, 2, 4, … by validation log-likelihood, fitted on at most 100,000 training rows (a random
  subset on larger sets, as for the DDE's mixture base);
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
- DDE: a base-density `dde.DenoisingDensityEstimator`, f = log q + g. Bases: a Gaussian
  mixture (`dde.bases.fit_mixture_base`, components by validation log-likelihood), used as
  is and smoothed at σ = 0.1 (covariances + σ²I), and the RQ-NSF peer's trained flow (a
  `dde.bases.FlowBase`; drawing from an autoregressive flow takes d passes, so its training
  base batches come from a pool of `dde_base_pool` draws made once, `base_pool_size`, and
  the validation draws are made once per candidate and reused at every evaluation). The
  residual g is `dde.nets.residual_energy_mlp` (3 × 128 swish, |g| < 3, last layer zero:
  the untrained model is its base), trained by maximum likelihood under the base with the
  ESS penalty 0.3·log(M/ESS) (Adam, learning rate 3e-3 with cosine decay over 15,000
  steps, batch 256, 1,024 base samples per step); every 500 steps it is normalized by
  importance sampling under its base (50,000 samples) and scored on the validation split
  (`dde.ValidationLogLikelihood`), with early stopping (patience 8, at least 2,000 steps)
  restoring the best weights; the base itself is a candidate. The candidate with the best
  validation ALL is normalized twice, independently: importance sampling under its base
  (10⁵ samples, the training data as reference samples of the coverage check) — row
  "DDE (IS)" — and AIS from the base (HMC, 512 chains × 300 temperatures) — row "DDE
  (AIS)". Their difference in combined SE is reported; a DDE row is marked † (unreliable,
  never bolded) when its estimate is flagged (k̂, ESS, coverage), its ESS is below 100, or
  the two differ by more than 3·SE. The recipe was chosen on the validation splits of the
  development sets;
- ScoreNet (PF): `dde.ScoreNetwork` on the VP-SDE with the likelihood weighting λ = β(t),
  early stopping on the validation loss, test log-likelihood by the probability-flow ODE
  (exact divergence for d ≤ 10, Hutchinson with one Rademacher probe above), evaluated on at
  most `pf_max_test` test points (the table gives n).

Reported per method: test average log-likelihood (ALL, nats per example) ± 2·SE, where SE
combines the test-set standard error with the standard error of log Ẑ (DDE); log Ẑ with its
standard error, effective sample size and Pareto k̂; the IS − AIS agreement; train time (fitting plus model selection) and
eval time (normalization plus test evaluation), in seconds of wall time on this machine.
Writes JSON (default `benchmarks/results/density.json`) and prints markdown tables; the
markdown is also written next to the JSON (`.md`). `--quick` runs a tiny budget (smoke test).
"""
from __future__ import annotations

import argparse
import json
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
UNRELIABLE_MARK = "†"
_START = time.perf_counter()


@dataclass
class Budget:
    """Every size and count of a run (the full defaults, or `Budget.quick()`)."""

    kde_bandwidths: list = field(default_factory=lambda: np.geomspace(0.02, 2.0, 16).tolist())
    kde_max_validation: int = 3000
    kde_max_train: int = 50_000
    gmm_components: list = field(default_factory=lambda: [1, 2, 4, 8, 16, 32, 64])
    gmm_max_iter: int = 200
    gmm_max_train: int = 100_000    # larger training sets: a random subset (as the DDE's base)
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
    # The DDE: f = log q + g, q a base density fitted first (dde.bases), g a bounded residual
    # network trained by maximum likelihood under q with the χ² (ESS) penalty.
    # ("flow": the RQ-NSF peer's trained flow as the base, when RQ-NSF ran)
    dde_bases: list = field(default_factory=lambda: ["gmm", "flow"])
    dde_base_smoothings: list = field(default_factory=lambda: [0.0, 0.1])  # mixture base only
    # The flow base's training base batches come from a pool of this many draws (drawing
    # from an autoregressive flow takes d passes through every layer).
    dde_base_pool: int = 32_768
    dde_depth: int = 3
    dde_width: int = 128
    dde_bound: float = 3.0          # |g| < 3 (UpperBound "tanh")
    dde_max_steps: int = 15_000
    dde_eval_every: int = 500       # steps between validation-ALL evaluations
    dde_patience: int = 8           # evaluations without improvement before stopping
    dde_min_steps: int = 2_000
    dde_learning_rate: float = 3e-3  # cosine decay to 0 over dde_max_steps
    dde_ess_penalty: float = 0.3
    dde_base_batch: int = 1024      # base samples per step (the in-batch log Ẑ)
    dde_eval_samples: int = 50_000  # IS samples of each validation evaluation
    final_is_samples: int = 100_000
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
                   dde_base_smoothings=[0.0], dde_base_pool=1024, dde_depth=2,
                   dde_width=16, dde_max_steps=60,
                   dde_eval_every=20, dde_patience=2, dde_min_steps=20, dde_base_batch=128,
                   dde_eval_samples=2000, final_is_samples=4000,
                   final_ais_chains=32, final_ais_steps=10, score_max_steps=30,
                   score_patience=3, pf_max_test=32,
                   pf_rtol=1e-3, pf_jit_compile=False, min_steps_per_epoch=10)


# ----------------------------------------------------------------------------- helpers
def log(msg: str) -> None:
    """Progress line with the elapsed wall time."""
    print(f"[{time.perf_counter() - _START:7.1f}s] {msg}", flush=True)


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB (`getrusage`; Linux reports KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


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


def run_kde(splits, budget: Budget, seed: int, context=None) -> dict:
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


def run_gmm(splits, budget: Budget, seed: int, context=None) -> dict:
    """GaussianMixture (full covariance) with the component count maximizing the validation
    log-likelihood. Counts are tried in increasing order until `gmm_patience` successive ones
    fail to improve it, or a mixture would have more parameters than training values."""

    t0 = time.perf_counter()
    train = splits.train
    if len(train) > budget.gmm_max_train:
        rng = np.random.default_rng(seed)
        train = train[np.sort(rng.choice(len(train), budget.gmm_max_train, replace=False))]
    n, d = train.shape
    params_per_component = d + d * (d + 1) / 2 + 1
    scores, models, bad = {}, {}, 0
    for k in budget.gmm_components:
        if k > 1 and k * params_per_component > n * d:
            break
        gmm = _fit_gmm(k, train, budget, seed)
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
                  reg_covar=models[best].reg_covar, n_train_used=int(n),
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


def run_flow(splits, budget: Budget, seed: int, method: str, context=None) -> dict:
    """A flow (`fit_flow`) and its test log-likelihoods; the trained flow is kept in
    `context[method]` (the DDE's flow base)."""
    t0 = time.perf_counter()
    flow, record = fit_flow(splits, method, budget, seed)
    if context is not None:
        context[method] = flow
    val_all = float(np.mean(flow.log_prob(splits.validation)))
    t1 = time.perf_counter()
    test_ll = flow.log_prob(splits.test)
    return result(test_ll, val_all=val_all, train_time=t1 - t0,
                  eval_time=time.perf_counter() - t1,
                  selected={**_flow_selection(method, budget), "steps": record["steps"]},
                  skipped_steps=record["skipped_steps"])


def run_maf(splits, budget: Budget, seed: int, context=None) -> dict:
    """The masked autoregressive flow (`run_flow`)."""
    return run_flow(splits, budget, seed, "MAF", context)


def run_nsf(splits, budget: Budget, seed: int, context=None) -> dict:
    """The rational-quadratic neural spline flow (`run_flow`)."""
    return run_flow(splits, budget, seed, "RQ-NSF", context)


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


def _all_of(model, x):
    """(AverageLogLikelihood, per-example log-likelihoods [n]) of a normalized model."""
    from dde.partition import average_log_likelihood

    with warnings.catch_warnings():  # reliability is recorded in the result, not printed
        warnings.simplefilter("ignore")
        res = average_log_likelihood(model, x)
    return res, model.log_density(x).astype(np.float64) - float(model.log_z.numpy())


def fit_dde_base(kind: str, splits, budget: Budget, seed: int, flow=None):
    """The base density of a DDE candidate: "gmm" — `dde.bases.fit_mixture_base` (full
    covariances, the component count by validation log-likelihood); "flow" — the RQ-NSF
    peer's trained flow (None when it did not run)."""
    from dde import bases

    if kind == "flow":
        return None if flow is None else bases.as_base(flow)
    base, _ = bases.fit_mixture_base(splits.train, splits.validation,
                                     n_components=budget.gmm_components, seed=seed,
                                     max_fit_points=budget.gmm_max_train)
    return base


def train_dde(splits, base, smoothing: float, budget: Budget, seed: int, label: str):
    """One DDE candidate f = log q_s + g: `nets.residual_energy_mlp` (swish, |g| < bound,
    last layer zero: the untrained model is its base), trained by maximum likelihood under
    the base with the ESS penalty (Adam, cosine-decayed learning rate, `dde_base_batch` base
    samples per step), evaluated every `dde_eval_every` steps on the validation ALL
    (`dde.ValidationLogLikelihood`: importance sampling under the base), early stopping with
    the best weights — and their log Ẑ — restored. The untrained model (the base itself) is
    a candidate too. Returns (model, record)."""
    import keras
    import tensorflow as tf

    import dde
    from dde import bases, nets

    d = splits.dim
    keras.utils.set_random_seed(seed)
    model = dde.DenoisingDensityEstimator(
        nets.residual_energy_mlp(d, budget.dde_depth, budget.dde_width, activation="swish",
                                 bound=budget.dde_bound, bound_kind="tanh"),
        noise_std=smoothing if smoothing > 0 else 0.1, base=base,
        smooth_base=smoothing > 0, objective="likelihood", ess_penalty=budget.dde_ess_penalty,
        num_base_samples=budget.dde_base_batch, seed=seed,
        base_pool_size=budget.dde_base_pool if isinstance(base, bases.FlowBase) else None)
    model.ensure_built(d)
    model.set_data_statistics(splits.train)
    selector = dde.ValidationLogLikelihood(splits.validation,
                                           num_samples=budget.dde_eval_samples, seed=seed)
    selector.set_model(model)
    start = selector.evaluate()  # the base itself (g ≡ 0)
    initial = model.get_weights()
    epochs = max(1, budget.dde_max_steps // budget.dde_eval_every)
    schedule = keras.optimizers.schedules.CosineDecay(budget.dde_learning_rate,
                                                      epochs * budget.dde_eval_every)
    model.compile(optimizer=keras.optimizers.Adam(schedule))
    batch = _batch_size(len(splits.train), budget.batch_size)
    data = (tf.data.Dataset.from_tensor_slices(splits.train.astype(np.float32))
            .shuffle(min(len(splits.train), 100_000), seed=seed).repeat().batch(batch)
            .prefetch(2))
    stopper = keras.callbacks.EarlyStopping(
        "val_all", mode="max", patience=budget.dde_patience, restore_best_weights=True,
        start_from_epoch=max(0, budget.dde_min_steps // budget.dde_eval_every - 1))
    model.fit(data, epochs=epochs, steps_per_epoch=budget.dde_eval_every, verbose=0,
              callbacks=[selector, stopper])
    history = [{"step": (h["epoch"] + 1) * budget.dde_eval_every, **h}
               for h in selector.history]
    best = max(history, key=lambda h: h["val_all"])
    if not best["val_all"] > start["val_all"]:  # training did not beat the base
        model.set_weights(initial)
        best = {"step": 0, **start}
    log(f"  {label}: best validation ALL {best['val_all']:.3f} at step {best['step']} of "
        f"{history[-1]['step'] if history else 0} (base {start['val_all']:.3f}; log Ẑ "
        f"{best['val_log_z']:.3f}, ESS {best['val_ess']:.0f}, k̂ {best['val_pareto_k']:.2f})")
    return model, {"base_val_all": start["val_all"], "val_all": best["val_all"],
                   "best_step": best["step"],
                   "steps_run": history[-1]["step"] if history else 0,
                   "val_log_z": best["val_log_z"], "val_ess": best["val_ess"],
                   "val_pareto_k": best["val_pareto_k"]}


def run_dde(splits, budget: Budget, seed: int, context=None) -> dict:
    """Base-density DDEs (`train_dde`) on each base of `dde_bases` (a Gaussian mixture,
    unsmoothed and smoothed at each of `dde_base_smoothings`; the RQ-NSF peer's flow when it
    ran), the candidate with the best validation ALL kept; its test results under two
    independent normalizations: importance sampling under its base with `final_is_samples`
    ("DDE (IS)", the training data as reference samples of the coverage check) and AIS from
    the base (HMC, `final_ais_chains` × `final_ais_steps`, "DDE (AIS)"). Their difference in
    combined standard errors is the agreement column; a row is unreliable when its own
    estimate is (k̂, ESS, coverage), when ESS < 100, or when the two differ by > 3·SE.
    A selected candidate that never beat its base is the base exactly (`_base_itself`:
    log Ẑ = 0, no sampling)."""
    flow = (context or {}).get("RQ-NSF")
    t0 = time.perf_counter()
    candidates, best = [], None
    for kind in budget.dde_bases:
        base = fit_dde_base(kind, splits, budget, seed, flow)
        if base is None:
            continue
        for s in (budget.dde_base_smoothings if kind == "gmm" else [0.0]):
            label = f"DDE on {kind} base" + (f" (smoothed at {s:g})" if s else "")
            tc = time.perf_counter()
            model, record = train_dde(splits, base, s, budget, seed, label)
            entry = {"base": kind, "base_smoothing": s, **record,
                     "seconds": time.perf_counter() - tc}
            if kind == "gmm":
                entry["base_components"] = int(base.num_components)
            candidates.append(entry)
            if best is None or record["val_all"] > best[0]["val_all"]:
                best = (entry, model)
    entry, model = best
    train_time = time.perf_counter() - t0
    if entry["best_step"] == 0:
        return _base_itself(model, entry, candidates, splits, train_time)
    out = {}
    t1 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        z_is = model.normalize(splits.train, num_samples=budget.final_is_samples,
                               seed=seed + 1)
    test_is, ll_is = _all_of(model, splits.test)
    val_is = _all_of(model, splits.validation)[0]
    is_time = time.perf_counter() - t1
    t2 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        z_ais = model.normalize(method="ais", num_samples=budget.final_ais_chains,
                                num_steps=budget.final_ais_steps, seed=seed + 2,
                                batch_size=min(budget.final_ais_chains, 1024))
    test_ais, ll_ais = _all_of(model, splits.test)
    val_ais = _all_of(model, splits.validation)[0]
    ais_time = time.perf_counter() - t2
    gap = z_is.log_z - z_ais.log_z
    gap_se = math.sqrt(z_is.stderr ** 2 + z_ais.stderr ** 2)
    agreement = {"is_minus_ais": gap, "combined_se": gap_se,
                 "in_se": abs(gap) / gap_se if gap_se > 0 else (0.0 if gap == 0 else math.inf)}
    agree = agreement["in_se"] <= 3.0
    for name, z, test, ll, val, seconds in (("DDE-IS", z_is, test_is, ll_is, val_is, is_time),
                                           ("DDE-AIS", z_ais, test_ais, ll_ais, val_ais,
                                            ais_time)):
        reasons = [r for r, bad in (("estimate", not z.reliable), ("ESS < 100", z.ess < 100),
                                    ("IS and AIS differ > 3 SE", not agree)) if bad]
        out[name] = _dde_row(test, ll, val, entry, candidates, agreement, reasons,
                             train_time=train_time, eval_time=seconds,
                             num_samples=z.num_samples, pareto_k=z.pareto_k, log_z=z.log_z,
                             log_z_stderr=z.stderr, ess=z.ess)
    out["DDE-AIS"]["acceptance_rate"] = z_ais.diagnostics.get("acceptance_rate")
    return out


def _dde_row(test, ll, val, entry, candidates, agreement, reasons, *, train_time,
             eval_time, **extra) -> dict:
    """A DDE row from the AverageLogLikelihood of the test and validation splits (the test
    SE combines the test set's and log Ẑ's), ll the per-example test log-likelihoods."""
    r = result(ll, val_all=val.mean, train_time=train_time, eval_time=eval_time,
               selected=_selected(entry), candidates=candidates, agreement=agreement,
               unreliable=bool(reasons), unreliable_reasons=reasons, **extra)
    r.update(test_all=test.mean, stderr=test.stderr, test_se=test.test_stderr)
    return r


def _selected(entry) -> dict:
    """The selection record of a DDE row: base, smoothing, best step (and components)."""
    selected = {k: entry[k] for k in ("base", "base_smoothing", "best_step")}
    if "base_components" in entry:
        selected["base_components"] = entry["base_components"]
    return selected


def _base_itself(model, entry, candidates, splits, train_time) -> dict:
    """The rows of a selected candidate that never beat its base (best step 0): its
    residual's last layer is zero, so g ≡ 0 and f = log q is normalized by construction —
    log Ẑ = 0 exactly, which is also what IS under q (every weight e^g = 1) and AIS from q
    (every intermediate density is q) return for any number of draws. Checked on the test
    points (g = 0 there exactly), then stored without sampling; both rows are that density."""
    t1 = time.perf_counter()
    g = np.asarray(model.network(splits.test.astype(np.float32)))
    if np.any(g != 0):
        raise RuntimeError(f"the selected candidate (step 0) has a non-zero residual "
                           f"(max |g| {np.abs(g).max():.3g}): its weights were not reset")
    model.set_log_partition(0.0, 0.0, reliable=True)
    test, ll = _all_of(model, splits.test)
    val = _all_of(model, splits.validation)[0]
    seconds = time.perf_counter() - t1
    agreement = {"is_minus_ais": 0.0, "combined_se": 0.0, "in_se": 0.0, "exact": True}
    return {name: _dde_row(test, ll, val, entry, candidates, agreement, [],
                           train_time=train_time, eval_time=seconds, exact_log_z="g ≡ 0")
            for name in ("DDE-IS", "DDE-AIS")}


# ------------------------------------------------------------------- score network (PF)
def run_score_pf(splits, budget: Budget, seed: int, context=None) -> dict:
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
    mark = UNRELIABLE_MARK if r.get("unreliable") else ""
    return f"{r['test_all']:{fmt}} ± {2 * r['stderr']:{fmt}}{mark}"


def _comparable(r: dict | None) -> bool:
    """A result that may be compared (and bolded): it ran, is finite and is not marked
    unreliable."""
    return (r is not None and "error" not in r and np.isfinite(r["test_all"])
            and not r.get("unreliable"))


def markdown(report: dict, methods) -> str:
    """The summary table (test ALL ± 2·SE) and the per-method details table."""
    lines = ["| data set | d | n train / val / test | " + " | ".join(LABELS[m] for m in methods)
             + " |", "|---|---|---|" + "---|" * len(methods)]
    for name, ds in report["datasets"].items():
        n = ds["sizes"]
        best = max((ds["methods"][m]["test_all"] for m in methods
                    if _comparable(ds["methods"].get(m))), default=None)
        cells = []
        for m in methods:
            r = ds["methods"].get(m)
            text = _cell(r)
            if _comparable(r) and r["test_all"] == best:
                text = f"**{text}**"
            cells.append(text)
        lines.append(f"| {name} | {ds['d']} | {n['train']} / {n['validation']} / {n['test']} | "
                     + " | ".join(cells) + " |")
    lines += ["", f"{UNRELIABLE_MARK} unreliable: the normalization is flagged (Pareto k̂, "
              "ESS or the coverage check), its ESS is below 100, or IS and AIS differ by more "
              "than 3 combined SE; such rows are never bolded.", "",
              "| data set | method | test ALL ± 2·SE | median | n test | validation ALL | "
              "log Ẑ ± SE (ESS) | k̂ | IS − AIS (SE) | selected | train s | eval s |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, ds in report["datasets"].items():
        for m in methods:
            r = ds["methods"].get(m)
            if r is None:
                continue
            if "error" in r:
                lines.append(f"| {name} | {LABELS[m]} | failed: {r['error'][:60]} "
                             "| | | | | | | | | |")
                continue
            z, k, agree = "exact", "—", "—"
            if r.get("exact_log_z"):
                z = f"0 ({r['exact_log_z']})"
            if r.get("log_z") is not None:
                z = f"{r['log_z']:.2f} ± {r['log_z_stderr']:.3f} ({r['ess']:.0f})"
            if r.get("pareto_k") is not None:
                k = f"{r['pareto_k']:.2f}"
            if r.get("agreement"):
                a = r["agreement"]
                agree = ("0 (exact)" if a.get("exact")
                         else f"{a['is_minus_ais']:+.3f} ({a['in_se']:.1f})")
            sel = ", ".join(f"{k}={v}" for k, v in (r.get("selected") or {}).items())
            val = "—" if r.get("val_all") is None else f"{r['val_all']:.2f}"
            lines.append(f"| {name} | {LABELS[m]} | {_cell(r)} | {r['test_median']:.2f} | "
                         f"{r['n_test']} | {val} | {z} | {k} | {agree} | "
                         f"{sel} | {r['train_time_s']:.1f} | {r['eval_time_s']:.1f} |")
    return "\n".join(lines)


def closing_note(report: dict, methods) -> str:
    """How the DDE compares with KDE, GMM and the flows on each data set.

    Both log Ẑ estimates (IS and AIS) are biased low in expectation, so each DDE ALL is
    biased high: the note uses the lower of the two (marked † when unreliable).
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
            mark = UNRELIABLE_MARK if r.get("unreliable") else ""
            notes.append(f"- {name}: DDE{mark} − " + ", ".join(parts))
    if not notes:
        return ""
    goal = goal_summary(report, methods)
    return ("Test ALL of the DDE (the lower of its IS and AIS values) minus each peer's "
            "(positive: the DDE is better; the 2·SE of a difference treats the two estimates "
            "as independent):\n" + "\n".join(notes) + (f"\n\n{goal}" if goal else ""))


def goal_summary(report: dict, methods) -> str:
    """On how many data sets the DDE (the lower of its IS and AIS values) has the best test
    ALL or is within 2·SE of the best comparable method, and on how many its two
    normalizations agree within 3 combined SE."""
    rows = [m for m in ("DDE-IS", "DDE-AIS") if m in methods]
    if not rows:
        return ""
    won, agreed, total = [], [], 0
    for name, ds in report["datasets"].items():
        found = [ds["methods"][m] for m in rows
                 if m in ds["methods"] and "error" not in ds["methods"][m]]
        if not found:
            continue
        total += 1
        r = min(found, key=lambda item: item["test_all"])
        if r.get("agreement") and r["agreement"]["in_se"] <= 3.0:
            agreed.append(name)
        peers = [p for m, p in ds["methods"].items() if m not in rows and _comparable(p)]
        best = max(peers, key=lambda p: p["test_all"], default=None)
        if best is None or (not r.get("unreliable") and (
                r["test_all"] >= best["test_all"]
                or best["test_all"] - r["test_all"] <= 2 * math.sqrt(
                    r["stderr"] ** 2 + best["stderr"] ** 2))):
            won.append(name)
    return (f"The DDE is best or within 2·SE of the best on {len(won)} of {total} data sets "
            f"({', '.join(won) or 'none'}); its IS and AIS normalizations agree within 3·SE "
            f"on {len(agreed)} of {total}.")


# --------------------------------------------------------------------------------- main
RUNNERS = {"KDE": run_kde, "GMM": run_gmm, "MAF": run_maf, "RQ-NSF": run_nsf,
           "ScoreNet-PF": run_score_pf}


def run_dataset(name: str, data_dir, methods, budget: Budget, seed: int) -> dict:
    from dde.datasets import load_splits

    splits = load_splits(name, data_dir)
    log(f"{name}: d = {splits.dim}, sizes {splits.sizes()}")
    raw_dim = len(splits.info.get("dequantized", [])) or splits.dim
    if raw_dim > splits.dim:
        log(f"{name}: {raw_dim - splits.dim} of {raw_dim} columns dropped (constant on the "
            "training split)")
    entry = {"d": splits.dim, "sizes": splits.sizes(), "methods": {},
             "preprocessing": {k: splits.info[k] for k in ("source", "dequantized",
                                                           "kept_columns", "seed")
                               if k in splits.info}}
    jobs = [m for m in methods if m in RUNNERS and m != "ScoreNet-PF"]
    if {"DDE-IS", "DDE-AIS"} & set(methods):
        jobs.append("DDE")
    if "ScoreNet-PF" in methods:
        jobs.append("ScoreNet-PF")
    context = {}  # trained models shared between methods (the RQ-NSF flow: a DDE base)
    for job in jobs:
        log(f"{name}: {job} …")
        try:
            if job == "DDE":
                out = run_dde(splits, budget, seed, context)
                out = {m: r for m, r in out.items() if m in methods}
            else:
                out = {job: RUNNERS[job](splits, budget, seed, context)}
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


def merge_reports(paths, out) -> int:
    """`density.py merge a.json b.json ... --out c.json`: one report from runs of this script
    on disjoint data sets (e.g. run side by side, one core each) with the same budget and
    seed; data sets in the order given, every part's command recorded. A run stopped early
    contributes the data sets it finished (each is written when it ends)."""
    parts = []
    for path in paths:
        try:
            parts.append(json.loads(Path(path).read_text(encoding="utf-8")))
        except (OSError, ValueError) as err:
            print(f"density.py merge: error: cannot read {path}: {err}", file=sys.stderr)
            return 2
    for path, part in zip(paths, parts):
        if part.get("benchmark") != "density" or not part.get("datasets"):
            print(f"density.py merge: error: {path} is not a density report with results",
                  file=sys.stderr)
            return 2
        if (part["budget"], part["seed"]) != (parts[0]["budget"], parts[0]["seed"]):
            print(f"density.py merge: error: {path} ran with another budget or seed than "
                  f"{paths[0]}", file=sys.stderr)
            return 2
    datasets = {}
    for path, part in zip(paths, parts):
        for name, record in part["datasets"].items():
            if name in datasets:
                print(f"density.py merge: error: {name} is in more than one report",
                      file=sys.stderr)
                return 2
            datasets[name] = record
    methods = [m for m in METHODS if any(m in part["methods"] for part in parts)]
    report = {**parts[0], "command": " ; ".join(part["command"] for part in parts),
              "commands": [part["command"] for part in parts],
              "parts": [{"command": part["command"], "datasets": list(part["datasets"]),
                         "complete": bool(part.get("complete"))} for part in parts],
              "methods": methods,
              "datasets": datasets, "complete": True,
              "part_wall_times_s": [part.get("wall_time_s") for part in parts]}
    # the parts ran side by side: the longest one's time
    text, note = _write_report(report, methods, Path(out), wall_time_s=max(
        t or 0.0 for t in report["part_wall_times_s"]))
    print("\n" + text + ("\n\n" + note if note else ""))
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["merge"]:
        merge = argparse.ArgumentParser(prog="density.py merge",
                                        description=merge_reports.__doc__.split("\n")[0])
        merge.add_argument("reports", nargs="+", help="JSON reports of this script")
        merge.add_argument("--out", required=True, help="JSON output file")
        margs = merge.parse_args(argv[1:])
        return merge_reports(margs.reports, margs.out)
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
                             "ScoreNet); default 15,000 for the DDE, 3,000 for ScoreNet, "
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
    out = Path(args.out)
    for i, name in enumerate(names):
        report["datasets"][name] = run_dataset(name, args.data_dir, methods, budget,
                                               args.seed)
        # the process's peak resident memory so far (data sets run in order, so the first
        # set's figure is its own; later ones include the earlier sets' peaks)
        report["datasets"][name]["peak_rss_mb"] = peak_rss_mb()
        report["complete"] = i == len(names) - 1
        text, note = _write_report(report, methods, out)  # after every data set
    print("\n" + text + ("\n\n" + note if note else ""))
    log(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


def _write_report(report: dict, methods, out: Path, wall_time_s: float | None = None):
    """Write the JSON and the markdown (atomically); returns (table, note). wall_time_s:
    default this process's elapsed time."""
    from dde import _io

    report["wall_time_s"] = (time.perf_counter() - _START if wall_time_s is None
                             else wall_time_s)
    text = markdown(report, methods)
    note = closing_note(report, methods)
    report["markdown"] = text
    report["note"] = note
    _io.write_json(out, report)
    _io.write_text(out.with_suffix(".md"), f"Command: `{report['command']}`\n\n{text}\n"
                   + (f"\n{note}\n" if note else ""))
    return text, note


if __name__ == "__main__":
    sys.exit(main())
