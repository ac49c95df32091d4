"""The estimators' front doors: `estimate_log_partition` (any log-density function and
proposal), `estimate_model_log_partition` (an energy model: what `model.normalize` runs) and
`average_log_likelihood` (a normalized model on test data).

Models enter only through the public members of `dde.protocols.EnergyModelLike`
(`log_density_fn`, `resolve_noise_std`, `ensure_built`, ...): this module never imports the
models.
"""
from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np
import tensorflow_probability as tfp

from dde._cache import expected_retracing
from dde._registry import Registry
from dde._validation import check_data, check_finite_results, check_positive, sanitize_seed
from dde.partition.ais import annealed_importance_sampling
from dde.partition.importance import check_draws, importance_sampling, proposal_draws
from dde.partition.proposals import event_size, make_proposal, proposal_option_names
from dde.partition.results import (AverageLogLikelihood, LogPartitionResult,
                                   UnreliableEstimateWarning)
from dde.partition.weights import (COVERAGE_TESTS, LOW_ESS_POLICIES, MAX_REFERENCE_SAMPLES,
                                   NAN_POLICIES, check_reliability)
from dde.protocols import EnergyModelLike, input_dim_of

tfd = tfp.distributions

#: Estimators by name: "is" (streaming importance sampling), "ais" (annealed IS).
METHODS = Registry("normalization method")
METHODS.register("is", importance_sampling)
METHODS.register("ais", annealed_importance_sampling)
DEFAULT_NUM_SAMPLES = {"is": 100_000, "ais": 1_000}
DEFAULT_BATCH_SIZE = {"is": 8192, "ais": 4096}
#: The salt of the estimators' seed stream (see `dde._validation.sanitize_seed`).
SEED_SALT = 0
#: Flattened proposal keywords of earlier versions → their `proposal_options` names.
_LEGACY_PROPOSAL_KEYWORDS = {"n_components": "n_components", "proposal_scale": "scale",
                             "proposal_df": "df", "smoothing_std": "noise_std"}


def estimate_log_partition(log_density_fn, proposal, num_samples: int, batch_size: int = 8192,
                           seed=None, method: str = "is", progress: bool = False,
                           nan_policy: str = "raise", min_ess: float = 100.0,
                           on_low_ess: str = "warn", jit_compile: bool = False,
                           reference_samples=None, coverage_test: str = "ks",
                           draws=None, **ais_options) -> LogPartitionResult:
    """Estimate log Z = log ∫ exp f(x) dx by importance sampling or AIS.

    log_density_fn: f, a TensorFlow-traceable callable [batch, d] → [batch] (any float dtype;
        it receives x in the proposal's dtype). For AIS it must be differentiable.
    proposal: a `tfd.Distribution` with event shape [d] (see `make_proposal`).
    num_samples: M, the number of samples (IS) or of chains (AIS).
    batch_size: samples (IS) or chains (AIS) processed at once.
    seed: int, pair of ints or None. The result is a deterministic function of (seed,
        batch_size, M, the method's options); each batch uses `stateless_fold_in(seed, b)`.
    method: "is" (streaming importance sampling) or "ais" (see `ais_options`); the names
        registered in `METHODS`.
    progress: show a progress bar.
    nan_policy: "raise" (default): any NaN log-density raises ValueError naming how many;
        "zero": NaN counts as a zero weight, with a RuntimeWarning giving the count.
    min_ess, on_low_ess: when the estimate is not reliable — ESS < min(min_ess, 0.1·M), or
        the weights' Pareto k̂ above `pareto_k_threshold(M)` (0.7 for M ≥ 2·10⁴) — "warn"
        (an `UnreliableEstimateWarning`, a `LowEffectiveSampleSizeWarning`), "raise"
        (RuntimeError) or "ignore". The result says it either way (`reliable`, `pareto_k`).
    jit_compile: compile the batch step with XLA.
    reference_samples: optional draws [n, d] of (approximately) the target exp f / Z, e.g.
        the data a model was fitted to. Importance sampling checks with them that the
        proposal covers the target (at most `MAX_REFERENCE_SAMPLES` of them, a seeded random
        subset): an estimate is unreliable when several lie beyond the proposal's largest
        weight — mass the proposal never visits, which no statistic of its own weights can
        show (`dde.partition.weights.CoverageCheck`). AIS runs its chains backwards from
        them (up to M of them) for an upper bound of log Z, and is unreliable when it
        disagrees.
    coverage_test: "ks" (exact draws of the target: a two-sample test of their weights
        against the importance-weighted proposal sample) or "beyond_max" (approximate draws,
        such as training data: only draws beyond the largest proposal weight count).
    draws (IS): (samples [M, d], log q [M]) of this proposal from
        `proposal_draws(proposal, M, sanitize_seed(seed, SEED_SALT), batch_size)` — the
        estimate is then the one `seed` gives, without drawing again (`seed` is recorded
        only).
    ais_options (method="ais"): num_steps=200 (K temperatures), schedule="sigmoid" ("linear",
        "geometric" or an increasing array from 0 to 1; see `ais_schedule`), kernel="hmc"
        ("mala", or a callable make_kernel(target_fn, step_size) returning a `dde.mcmc`
        kernel), num_leapfrog_steps=5, steps_per_temperature=1, step_size=None (initial, in
        whitened coordinates, in `dde.mcmc`'s convention), target_accept_rate=None (0.85 HMC,
        0.8 MALA: higher than the rates optimal for plain MCMC, because chains that stall at
        a temperature inflate the variance of the AIS weights), adapt_step_size=True (after
        every transition log h += adaptation_rate·(mean acceptance − target), shared by the
        chains of a batch; adaptation_rate=1.0). Adaptation makes the transitions at a
        temperature depend on the batch's chains at the previous one, an O(1/batch) effect;
        for exactly independent chains pass adapt_step_size=False and a fixed step_size.

    Returns a `LogPartitionResult` (log_z, stderr, ess, num_samples, pareto_k, reliable, ...).
    """
    check_positive(num_samples, "num_samples", integer=True)
    check_positive(batch_size, "batch_size", integer=True)
    check_positive(min_ess, "min_ess", allow_zero=True)
    estimator = METHODS.lookup(method)
    if nan_policy not in NAN_POLICIES:
        raise ValueError(f"nan_policy must be one of {NAN_POLICIES}, got {nan_policy!r}.")
    if on_low_ess not in LOW_ESS_POLICIES:
        raise ValueError(f"on_low_ess must be one of {LOW_ESS_POLICIES}, got {on_low_ess!r}.")
    if not callable(log_density_fn):
        raise TypeError("log_density_fn must be callable: [batch, d] → [batch].")
    d = event_size(proposal)
    seed = sanitize_seed(seed, SEED_SALT)
    if reference_samples is not None:
        reference_samples = check_data(reference_samples, name="reference_samples",
                                       n_features=d, owner="the proposal", dtype=np.float64)
        if len(reference_samples) > MAX_REFERENCE_SAMPLES:
            rng = np.random.default_rng(seed)
            reference_samples = reference_samples[rng.choice(
                len(reference_samples), MAX_REFERENCE_SAMPLES, replace=False)]
    if coverage_test not in COVERAGE_TESTS:
        raise ValueError(f"coverage_test must be one of {COVERAGE_TESTS}, got "
                         f"{coverage_test!r}.")
    if method == "is" and ais_options:
        raise TypeError(f"Unexpected options for method='is': {sorted(ais_options)}.")
    if draws is not None:
        if method != "is":
            raise ValueError("draws are importance-sampling draws: use method='is'.")
        draws = check_draws(draws, int(num_samples), d, proposal.dtype)
    with expected_retracing():
        if method == "is":
            result = estimator(log_density_fn, proposal, int(num_samples), int(batch_size),
                               seed, progress, nan_policy, jit_compile, min_ess=min_ess,
                               reference_samples=reference_samples,
                               coverage_test=coverage_test, draws=draws)
        else:
            result = estimator(log_density_fn, proposal, d, int(num_samples), int(batch_size),
                               seed, progress, nan_policy, jit_compile, min_ess=min_ess,
                               reference_samples=reference_samples, **ais_options)
    check_reliability(result, min_ess, on_low_ess)
    return result


def check_model(model):
    """Raise TypeError unless `model` is an energy model (`dde.protocols.EnergyModelLike`)."""
    if not isinstance(model, EnergyModelLike):
        raise TypeError(f"model must be a dde EnergyModel (DenoisingDensityEstimator or "
                        f"NoiseConditionalDDE), got {type(model).__name__}.")


def model_log_density_fn(model, noise_std: float | None = None):
    """f of an energy model as a traceable function [batch, d] (any float) → [batch] in x's
    dtype: `model.log_density_fn(noise_std)` (for a NoiseConditionalDDE, f(·, σ) with σ =
    noise_std, default sigma_min)."""
    check_model(model)
    return model.log_density_fn(noise_std)


def _proposal_options(proposal, proposal_options, legacy, sigma):
    """The builder options of a named proposal: `proposal_options`, plus the flattened
    keywords of earlier versions (deprecated; as then, those the proposal does not take are
    ignored), plus the model's σ as the "smoothed" proposal's default noise_std."""
    options = dict(proposal_options or {})
    if legacy:
        warnings.warn(f"{sorted(legacy)} are deprecated keywords; pass proposal_options="
                      "{...} instead (e.g. {'n_components': 8, 'scale': 1.0, 'df': 5.0}).",
                      DeprecationWarning, stacklevel=4)
    accepted = proposal_option_names(proposal) if isinstance(proposal, str) else ()
    for key, value in legacy.items():
        name = _LEGACY_PROPOSAL_KEYWORDS[key]
        if value is not None and name in accepted:
            options.setdefault(name, value)
    if proposal == "smoothed":
        options.setdefault("noise_std", sigma)
    return options


def estimate_model_log_partition(model, x_train=None, method: str = "is",
                                 proposal="default", num_samples: int | None = None,
                                 batch_size: int | None = None, seed=None,
                                 noise_std: float | None = None,
                                 proposal_options: dict | None = None,
                                 reference_samples="auto",
                                 **options) -> LogPartitionResult:
    """log Ẑ of an energy model's `exp f` (the computation behind `model.normalize`).

    x_train [N, d]: the data the proposal is fitted to (not needed for a given Distribution
        or a base-density model's default).
    proposal: "default" — the model's base density (smoothed at its σ) when it has one,
        whose importance weights are exp g; otherwise "gaussian" —, a name registered in
        `dde.partition.PROPOSALS` — "gaussian" (full covariance), "student_t", "gmm",
        "smoothed" (σ-smoothed empirical mixture, σ default the model's) — or a
        `tfd.Distribution` with event size d.
    proposal_options: the named proposal's options, e.g. {"n_components": 8} (gmm),
        {"df": 5.0, "scale": 1.2} (student_t), {"noise_std": 0.1} (smoothed); see
        `dde.partition.make_proposal`.
    num_samples / batch_size: default 100,000 / 8192 for IS, 1,000 chains / 4096 for AIS.
    seed: default the model's seed (so normalizing twice gives the same result).
    noise_std: for a NoiseConditionalDDE, the σ of f(·, σ) to normalize (default sigma_min).
    reference_samples: draws of exp f for the coverage check of importance sampling (see
        `estimate_log_partition`): "auto" (default) — x_train plus N(0, σ²I) noise at the
        model's σ, approximate draws of the σ-smoothed data density that f approximates,
        checked by the "beyond_max" test (IS only) —, an array of exact draws of exp f (the
        "ks" test for IS, the reverse run for AIS), or None (no check).
    options: passed to `estimate_log_partition` (progress, nan_policy, min_ess, on_low_ess,
        AIS options). The keywords n_components, proposal_scale, proposal_df and
        smoothing_std of earlier versions are accepted (deprecated) and go to
        proposal_options.
    """
    check_model(model)
    METHODS.lookup(method)
    legacy = {k: options.pop(k) for k in list(options) if k in _LEGACY_PROPOSAL_KEYWORDS}
    if isinstance(proposal, str) and proposal == "default":
        if getattr(model, "base", None) is not None:
            proposal = model.default_proposal(noise_std)
        else:
            proposal = "gaussian"
    d = input_dim_of(model)
    if x_train is not None:
        x_train = check_data(x_train, name="x_train", n_features=d,
                             owner=type(model).__name__, dtype=np.float64)
        d = x_train.shape[1]
    elif isinstance(proposal, tfd.Distribution):
        d = event_size(proposal, d)
    else:
        raise ValueError(f"x_train is required to fit the {proposal!r} proposal.")
    model.ensure_built(d)
    sigma = model.resolve_noise_std(noise_std)
    seed_arr = sanitize_seed(model.seed if seed is None else seed, SEED_SALT)
    popts = _proposal_options(proposal, proposal_options, legacy, sigma)
    q = make_proposal(proposal, x_train, seed=int(seed_arr[1]) % (2**31 - 1), input_dim=d,
                      **(popts if isinstance(proposal, str) else {}))
    num_samples = DEFAULT_NUM_SAMPLES[method] if num_samples is None else num_samples
    batch_size = DEFAULT_BATCH_SIZE[method] if batch_size is None else batch_size
    fn = model.log_density_fn(noise_std)
    auto_reference = isinstance(reference_samples, str)
    if auto_reference:
        if reference_samples != "auto":
            raise ValueError(f"reference_samples must be 'auto', an array or None, got "
                             f"{reference_samples!r}.")
        reference_samples = None
        # (AIS's reverse run needs exact draws of exp f: not from the training data)
        if x_train is not None and method == "is":
            rng = np.random.default_rng(seed_arr)
            pick = x_train if len(x_train) <= MAX_REFERENCE_SAMPLES else x_train[
                rng.choice(len(x_train), MAX_REFERENCE_SAMPLES, replace=False)]
            reference_samples = pick + sigma * rng.standard_normal(pick.shape)
    options.setdefault("coverage_test", "beyond_max" if auto_reference else "ks")
    result = estimate_log_partition(fn, q, num_samples, batch_size=batch_size, seed=seed_arr,
                                    method=method, reference_samples=reference_samples,
                                    **options)
    diagnostics = dict(result.diagnostics)
    diagnostics.update({"proposal": proposal if isinstance(proposal, str) else q.name,
                        "noise_std": sigma})
    if isinstance(proposal, str):
        diagnostics["proposal_options"] = popts
        # also under the flat names of earlier versions (n_components, proposal_scale, ...)
        diagnostics.update({legacy_name: popts[name] for legacy_name, name
                            in _LEGACY_PROPOSAL_KEYWORDS.items() if name in popts})
    return dataclasses.replace(result, diagnostics=diagnostics)


def model_proposal_draws(model, num_samples: int | None = None, seed=None,
                         noise_std: float | None = None, batch_size: int | None = None):
    """(proposal, draws) for repeated importance-sampling estimates of one energy model's
    log Ẑ: the model's default proposal (its base, smoothed at its σ when `smooth_base`) and
    its `num_samples` draws with log q, exactly those `model.normalize(num_samples=,
    seed=, batch_size=)` would draw. `model.normalize(proposal=proposal, draws=draws, ...)`
    then gives that estimate for the model's current weights without drawing again (how
    `dde.ValidationLogLikelihood` evaluates every epoch on the same samples). Needs a model
    with a base or training statistics."""
    check_model(model)
    proposal = model.default_proposal(noise_std)
    if proposal is None:
        raise ValueError(f"This {type(model).__name__} has no default proposal (no base and "
                         "no training statistics): fit it first.")
    num_samples = DEFAULT_NUM_SAMPLES["is"] if num_samples is None else num_samples
    batch_size = DEFAULT_BATCH_SIZE["is"] if batch_size is None else batch_size
    check_positive(num_samples, "num_samples", integer=True)
    check_positive(batch_size, "batch_size", integer=True)
    seed_arr = sanitize_seed(model.seed if seed is None else seed, SEED_SALT)
    return proposal, proposal_draws(proposal, int(num_samples), seed_arr, int(batch_size))


def average_log_likelihood(model, x_test, noise_std: float | None = None,
                           batch_size: int = 8192) -> AverageLogLikelihood:
    """Average log-likelihood of x_test [n, d] under a normalized model:
    mean_j f(x_j) − log Ẑ ± sqrt(Var_j f(x_j)/n + se(log Ẑ)²) (Var with ddof 1; NaN for n=1).

    Raises RuntimeError if the model is not normalized (`model.normalize`), ValueError if its
    log Ẑ belongs to another σ (see `EnergyModel.normalized_noise_std`).
    noise_std: for a NoiseConditionalDDE, the σ to evaluate at; it must be the one log Ẑ was
    estimated at (default: that σ).
    """
    check_model(model)
    if not model.is_normalized:
        raise RuntimeError(
            f"This {type(model).__name__} is not normalized: call model.normalize(x_train, "
            "...) (or `dde normalize`) before computing a log-likelihood.")
    x = check_data(x_test, name="x_test", n_features=input_dim_of(model),
                   owner=type(model).__name__, dtype=np.float32)
    # f(x) − log Ẑ at the σ log Ẑ was estimated at (log_prob checks it)
    f = check_finite_results(model.log_prob(x, noise_std=noise_std, batch_size=batch_size),
                             "model's log-density")
    log_z = float(model.log_z.numpy())
    se_z = float(model.log_z_stderr.numpy())
    n = len(f)
    test_se = float(np.std(f, ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    se_z_term = se_z if np.isfinite(se_z) else 0.0
    reliable = model.log_z_is_reliable
    result = AverageLogLikelihood(mean=float(f.mean()),
                                  stderr=math.sqrt(test_se**2 + se_z_term**2), n=n,
                                  test_stderr=test_se, log_z=log_z, log_z_stderr=se_z,
                                  log_z_ess=float(model.log_z_ess.numpy()),
                                  log_z_pareto_k=float(model.log_z_pareto_k.numpy()),
                                  reliable=reliable)
    if not reliable:
        warnings.warn(
            f"The model's log Ẑ is unreliable (ESS {result.log_z_ess:.1f}, Pareto k̂ "
            f"{result.log_z_pareto_k:.2f}): the average log-likelihood {result} may be off "
            "by many standard errors. Normalize again with a better proposal, more samples "
            "or AIS.", UnreliableEstimateWarning, stacklevel=2)
    return result
