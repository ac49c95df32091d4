"""Sequential Monte Carlo: a population of draws from exp f with the right mode masses.

Langevin chains started from a proposal stay in the basin they start in, so in a
multi-modal density the basins' sizes, not their masses, set the weights of the samples.
A tempered SMC sampler (Del Moral, Doucet & Jasra 2006; adaptive temperatures as in Jasra
et al. 2011) carries a population of n particles through the densities of AIS,

    π_β ∝ q^{1−β} exp(β f),      0 = β_0 < β_1 < … < β_K = 1,

starting from x_i ~ q (the proposal). At each temperature:

1. **reweight**: log w_i = (β_k − β_{k−1}) (f(x_i) − log q(x_i)), where β_k is chosen (by
   bisection) as the largest β ≤ 1 whose weights keep an effective sample size
   ESS = (Σw)²/Σw² of `target_ess`·n;
2. **resample**: systematic resampling by w (every particle now has weight 1/n);
3. **move**: `num_moves` MCMC transitions leaving π_{β_k} invariant (the HMC or MALA kernels
   of `dde.mcmc`, in coordinates whitened by the proposal's covariance, step size adapted to
   a target acceptance rate; the same compiled transitions as `dde.partition`'s AIS).

At β = 1 the population is an equally weighted sample of exp f/Z: the fraction of particles
in a mode estimates the mode's mass, with an error that shrinks as 1/sqrt(n) when the
moves mix within modes. As a by-product, log Ẑ = Σ_k log( (1/n) Σ_i w_i^{(k)} ), consistent
as n grows (with fixed temperatures Ẑ would be unbiased; chosen from the particles
themselves, it is not exactly). The number of temperatures grows with the divergence between
q and exp f; `max_temperatures` bounds it.

`tempered_smc(log_density_fn, proposal, n, seed=...)` → `SMCResults`. `model.sample(...,
init="smc")` (the default for ULA and MALA) starts its chains from such a population.
"""
from __future__ import annotations

import collections

import numpy as np
import tensorflow as tf

import dde.mcmc as mcmc
from dde._cache import compiled_function, expected_retracing
from dde._validation import check_positive, sanitize_seed
from dde.partition.ais import resolve_kernel, tempering_functions, whitening
from dde.partition.proposals import event_size
from dde.progress import progress_bar

SMCResults = collections.namedtuple(
    "SMCResults", ["samples", "log_z", "temperatures", "ess", "acceptance_rate", "step_size",
                   "num_evaluations"])
SMCResults.__doc__ = """Output of `tempered_smc` (NumPy).

samples: [n, d] equally weighted draws of exp f / Z (float64).
log_z: the SMC estimate of log Z = log ∫ exp f (float).
temperatures: [K + 1] the inverse temperatures β_0 = 0 < … < β_K = 1 chosen.
ess: [K] effective sample size of each reweighting, before resampling.
acceptance_rate: mean acceptance probability of the moves.
step_size: the kernel's final step size (whitened coordinates).
num_evaluations: evaluations of f (and its gradient) per particle.
"""

#: The salt of the SMC seed stream (see `dde._validation.sanitize_seed`).
SEED_SALT = 0x53C


def effective_sample_size(log_w) -> float:
    """ESS = (Σw)²/Σw² of log-weights [n] (−inf and NaN count as zero weight)."""
    log_w = np.where(np.isnan(log_w), -np.inf, np.asarray(log_w, np.float64))
    top = np.max(log_w)
    if not np.isfinite(top):
        return 0.0
    w = np.exp(log_w - top)
    return float(w.sum() ** 2 / np.sum(w * w))


def next_temperature(beta: float, delta, target_ess: float, tol: float = 1e-10) -> float:
    """The largest β' in (β, 1] with ESS((β' − β)·delta) ≥ target_ess (bisection; ESS of
    these weights falls as β' grows). delta [n] = f − log q at the particles."""
    if effective_sample_size((1.0 - beta) * delta) >= target_ess:
        return 1.0
    lo, hi = beta, 1.0
    while hi - lo > tol:
        mid = 0.5 * (lo + hi)
        if effective_sample_size((mid - beta) * delta) >= target_ess:
            lo = mid
        else:
            hi = mid
    return max(lo, beta + tol)


def systematic_resample(log_w, rng) -> np.ndarray:
    """Indices [n] of a systematic resampling of n particles by weights exp(log_w): particle
    i is copied ⌊n w̄_i⌋ or ⌈n w̄_i⌉ times (w̄ the normalized weights), the lowest-variance
    unbiased scheme of the standard ones."""
    log_w = np.where(np.isnan(log_w), -np.inf, np.asarray(log_w, np.float64))
    top = np.max(log_w)
    if not np.isfinite(top):
        raise ValueError("Cannot resample: no particle has a finite positive weight (every "
                         f"log-weight is −inf or NaN, or one is +inf; largest {top}).")
    w = np.exp(log_w - top)
    cdf = np.cumsum(w / w.sum())
    n = len(log_w)
    u = (rng.uniform() + np.arange(n)) / n
    return np.minimum(np.searchsorted(cdf, u, side="right"), n - 1)


def _gather(state, index, n):
    """The particles `index` of a nest of per-particle tensors [n, ...] (scalars kept)."""
    def take(t):
        if isinstance(t, tf.Tensor) and t.shape.rank and t.shape[0] == n:
            return tf.gather(t, index)
        return t
    return tf.nest.map_structure(take, state)


def tempered_smc(log_density_fn, proposal, n: int, seed=None, kernel: str = "hmc",
                 num_moves: int = 3, num_leapfrog_steps: int = 5, target_ess: float = 0.9,
                 step_size: float | None = None, target_accept_rate: float | None = None,
                 max_temperatures: int = 1000, jit_compile: bool = False,
                 progress: bool = False) -> SMCResults:
    """Adaptive tempered SMC from `proposal` q to exp f (see module): n particles.

    log_density_fn: x [batch, d] → f [batch] or [batch, 1] (a tensor function, e.g.
    `dde.partition.model_log_density_fn(model)`). proposal: a `tfp.distributions.Distribution`
    with `sample` and `log_prob` (float64 recommended). kernel: "hmc" or "mala" (moves in
    whitened coordinates), `num_moves` per temperature (HMC: `num_leapfrog_steps` each).
    target_ess: the fraction of n the ESS of each reweighting is kept at (0 < · < 1).
    step_size / target_accept_rate: of the kernel (defaults as for AIS). max_temperatures:
    raise a `RuntimeError` beyond this many temperatures (the proposal is too far from exp f).
    """
    n = int(check_positive(n, "n", integer=True))
    if n < 2:
        raise ValueError(f"SMC needs at least 2 particles, got n = {n}.")
    check_positive(num_moves, "num_moves", integer=True)
    check_positive(num_leapfrog_steps, "num_leapfrog_steps", integer=True)
    check_positive(max_temperatures, "max_temperatures", integer=True)
    if kernel not in ("hmc", "mala"):
        raise ValueError(f"kernel must be 'hmc' or 'mala', got {kernel!r}.")
    if not 0.0 < target_ess < 1.0:
        raise ValueError(f"target_ess must be in (0, 1), got {target_ess}.")
    d = event_size(proposal)
    seeds = np.asarray(sanitize_seed(seed, SEED_SALT), np.int64)
    rng = np.random.default_rng(seeds)
    make_kernel, h0, target_accept, kernel_name = resolve_kernel(kernel, d, step_size,
                                                                 target_accept_rate)
    leapfrog = int(num_leapfrog_steps) if kernel_name == "hmc" else 1
    f64 = tf.float64
    mean_np, tril_np = whitening(proposal, d, seeds)
    init, advance, _ = compiled_function(
        log_density_fn, ("smc", kernel_name, bool(jit_compile)),
        tempering_functions(log_density_fn, proposal, make_kernel, jit_compile),
        companions=(proposal,))
    mu, tril = tf.constant(mean_np, f64), tf.constant(tril_np, f64)
    settings = (tf.constant(leapfrog, tf.int32), tf.constant(int(num_moves), tf.int32),
                tf.constant(target_accept, f64), tf.constant(1.0, f64))
    base = tf.constant(seeds, tf.int64)

    x0 = proposal.sample(n, seed=tf.cast(tf.random.experimental.stateless_fold_in(base, -1),
                                         tf.int32))
    with expected_retracing():  # compiled per log-density, retraced per population size
        z, results = init(x0, mu, tril, tf.constant(h0, f64))
    state = (z, results, tf.zeros([n], f64), tf.constant(0.0, f64), tf.constant(0.0, f64),
             tf.constant(0, tf.int64))
    betas, ess_history, log_z = [0.0], [], 0.0
    bar = progress_bar(None, "temperature", progress)
    while betas[-1] < 1.0:
        if len(betas) > max_temperatures:
            raise RuntimeError(
                f"SMC needed more than max_temperatures = {max_temperatures} temperatures "
                f"(reached β = {betas[-1]:.3g}): the proposal is far from exp f. Use a closer "
                "proposal or raise max_temperatures.")
        inner = state[1].inner_results
        f, lq = (np.asarray(t, np.float64) for t in inner.extra[:2])
        delta = np.where(np.isfinite(f), f - lq, -np.inf)
        if not np.isfinite(delta).any():
            raise RuntimeError("Every particle has a non-finite log-density f − log q.")
        beta = next_temperature(betas[-1], delta, target_ess * n)
        log_w = (beta - betas[-1]) * delta
        top = np.max(log_w)
        log_z += float(top + np.log(np.mean(np.exp(log_w - top))))
        ess_history.append(effective_sample_size(log_w))
        # Resample; the log-weight increment is then 0 and the moves run at β.
        state = _gather(state, tf.constant(systematic_resample(log_w, rng)), n)
        k = len(betas)
        with expected_retracing():
            state = advance(state, tf.constant([beta, beta], f64), tf.constant(1, tf.int32),
                            tf.constant(2, tf.int32),
                            tf.random.experimental.stateless_fold_in(base, k), mu, tril,
                            *settings)
        betas.append(beta)
        if bar is not None:
            bar.add(1)
    x = (mean_np + np.asarray(state[0], np.float64) @ tril_np.T)
    acc_sum, acc_n = float(state[3]), float(state[4])
    num_temps = len(betas) - 1
    return SMCResults(samples=x, log_z=log_z, temperatures=np.asarray(betas),
                      ess=np.asarray(ess_history),
                      acceptance_rate=acc_sum / acc_n if acc_n else float("nan"),
                      step_size=float(mcmc.step_size_of(state[1])),
                      num_evaluations=1 + num_temps * int(num_moves) * leapfrog)
