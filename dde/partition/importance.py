"""Streaming importance sampling of log Z = log ∫ exp f(x) dx with a proposal q:

    log Ẑ = logsumexp_i( f(x_i) − log q(x_i) ) − log M,        x_i ~ q, i = 1..M,

in batches, each folded into the running weight statistics of `dde.partition.weights`
(memory O(batch), whatever M; O(M·d) with given draws). The batch step is compiled once per
(log_density_fn, proposal) and cached while both live, so repeated estimates (other seeds or
sample sizes) do not trace again.

`proposal_draws(proposal, m, seed, batch_size)` draws the same samples, with their log q,
once: passed back as `draws=`, estimates of changing energies (a model during training) reuse
them (common random numbers) without drawing again — the cost that dominates when sampling q
is expensive, as for an autoregressive flow (d passes per draw). The draws are those of the
uncompiled step; with `jit_compile=True` XLA may draw other numbers from the same seeds.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from dde._cache import compiled_function, weak
from dde._validation import check_positive, sanitize_seed
from dde.partition.results import LogPartitionResult
from dde.partition.weights import (coverage_check, finalize, is_reliable,
                                   missing_mass_error, pareto_tail_size, reported_stderr,
                                   stats_init, stats_update)
from dde.progress import progress_bar


def as_log_density(log_density_fn, x):
    """log_density_fn(x) as a float64 [batch] tensor (a [batch, 1] output is flattened)."""
    out = tf.convert_to_tensor(log_density_fn(x))
    if out.shape.rank == 2 and out.shape[-1] == 1:
        out = out[:, 0]
    if out.shape.rank != 1:
        raise ValueError(f"log_density_fn must map [batch, d] to [batch]; got output shape "
                         f"{out.shape}.")
    return tf.cast(out, tf.float64)


def _is_step(log_density_fn, proposal, jit_compile):
    """The compiled batch step state → state for (log_density_fn, proposal)."""
    get_f, get_q = weak(log_density_fn), weak(proposal)

    def build():
        @tf.function(jit_compile=jit_compile, reduce_retracing=True)
        def step(state, batch_seed, n):
            q = get_q()
            x = q.sample(n, seed=batch_seed)
            log_w = as_log_density(get_f(), x) - tf.cast(q.log_prob(x), tf.float64)
            return stats_update(state, log_w), log_w
        return step

    return compiled_function(log_density_fn, ("importance_step", bool(jit_compile)), build,
                             companions=(proposal,))


def _given_draws_step(log_density_fn, jit_compile):
    """The compiled batch step (state, x, log q(x)) → state for given proposal draws."""
    get_f = weak(log_density_fn)

    def build():
        @tf.function(jit_compile=jit_compile, reduce_retracing=True)
        def step(state, x, log_q):
            log_w = as_log_density(get_f(), x) - log_q
            return stats_update(state, log_w), log_w
        return step

    return compiled_function(log_density_fn, ("importance_given_draws", bool(jit_compile)),
                             build)


def _batch_seed(seed, b):
    return tf.cast(tf.random.experimental.stateless_fold_in(tf.constant(seed, tf.int64), b),
                   tf.int32)


def _draw_step(proposal):
    """The compiled batch draw (batch_seed, n) → (x, log q(x)) of `proposal`, cached while it
    lives (the step `_is_step` draws with, without the weights)."""
    get_q = weak(proposal)

    def build():
        @tf.function(reduce_retracing=True)
        def draw(batch_seed, n):
            q = get_q()
            x = q.sample(n, seed=batch_seed)
            return x, tf.cast(q.log_prob(x), tf.float64)
        return draw

    return compiled_function(proposal, "proposal_draws", build)


def proposal_draws(proposal, m: int, seed, batch_size: int = 8192):
    """(x [m, d] in the proposal's dtype, log q(x) [m] float64): the m draws of `proposal` that
    `importance_sampling` with the same (m, seed, batch_size) and jit_compile=False uses
    (seed: [2] as the estimators use it, i.e. `sanitize_seed(s, SEED_SALT)` of a user's
    seed s; an int is sanitized with salt 0), to pass back as `draws=`."""
    check_positive(m, "m", integer=True)
    check_positive(batch_size, "batch_size", integer=True)
    seed = sanitize_seed(seed)
    m, batch_size = int(m), int(batch_size)

    draw = _draw_step(proposal)
    parts = [draw(_batch_seed(seed, b), tf.constant(min(batch_size, m - b * batch_size),
                                                    tf.int32))
             for b in range(-(-m // batch_size))]
    return tf.concat([p[0] for p in parts], 0), tf.concat([p[1] for p in parts], 0)


def check_draws(draws, m: int, d: int, dtype):
    """draws = (x [m, d] as `dtype`, log q [m] float64) tensors; a TypeError when draws is not
    a pair, a ValueError naming the mismatch of shapes or counts."""
    if not (isinstance(draws, (tuple, list)) and len(draws) == 2):
        raise TypeError("draws must be a pair (samples [M, d], log q [M]) from "
                        "dde.partition.proposal_draws.")
    x = tf.cast(tf.convert_to_tensor(draws[0]), dtype)
    log_q = tf.cast(tf.convert_to_tensor(draws[1]), tf.float64)
    if x.shape.rank != 2 or x.shape[1] != d or log_q.shape != (x.shape[0],):
        raise ValueError(f"draws must be samples [M, {d}] and log q [M]; got shapes "
                         f"{x.shape} and {log_q.shape}.")
    if x.shape[0] != m:
        raise ValueError(f"num_samples is {m} but draws hold {x.shape[0]} samples.")
    return x, log_q


def importance_sampling(log_density_fn, proposal, m, batch_size, seed, progress, nan_policy,
                        jit_compile, min_ess=100.0, reference_samples=None,
                        coverage_test="ks", draws=None) -> LogPartitionResult:
    """IS estimate of log Z from M = m samples of `proposal` (seed: int64 [2]), or from the
    given `draws` (x, log q(x)) of it (`proposal_draws`); see
    `dde.partition.estimate_log_partition` for the arguments."""
    if draws is None:
        step = _is_step(log_density_fn, proposal, jit_compile)
    else:
        x_all, log_q_all = draws
        given_step = _given_draws_step(log_density_fn, jit_compile)
    num_batches = -(-m // batch_size)
    bar = progress_bar(num_batches, "batch", progress)
    state = stats_init(pareto_tail_size(m) + 1)
    kept = []
    for b in range(num_batches):
        n = min(batch_size, m - b * batch_size)
        if draws is None:
            state, log_w = step(state, _batch_seed(seed, b), tf.constant(n, tf.int32))
        else:
            rows = slice(b * batch_size, b * batch_size + n)
            state, log_w = given_step(state, x_all[rows], log_q_all[rows])
        if reference_samples is not None:  # the coverage test needs every weight
            kept.append(log_w.numpy())
        if bar is not None:
            bar.update(b + 1)
    summary = finalize(state, nan_policy)
    coverage = None
    if reference_samples is not None:
        x_ref = tf.constant(reference_samples, proposal.dtype)
        ref_lw = as_log_density(log_density_fn, x_ref) - tf.cast(proposal.log_prob(x_ref),
                                                                 tf.float64)
        coverage = coverage_check(np.concatenate(kept), ref_lw.numpy(), summary.ess,
                                  test=coverage_test)
    return result_from_summary(summary, "is", seed, min_ess, coverage=coverage,
                               num_evaluations=summary.num_samples,
                               diagnostics={"proposal": proposal.name,
                                            "batch_size": batch_size,
                                            "coverage_test": coverage_test,
                                            "given_draws": draws is not None})


def result_from_summary(summary, method, seed, min_ess, replicate_stderr=float("nan"),
                        num_replicates=None, coverage=None, upper=None,
                        **fields) -> LogPartitionResult:
    """A `LogPartitionResult` from a `WeightSummary` (reported SE, reliability flag) and,
    when reference draws of the target were given, their `CoverageCheck` (IS) or the
    reverse estimate (log Z upper bound, its SE) (AIS)."""
    own_stderr = reported_stderr(summary, replicate_stderr)  # from the weights alone
    stderr = reported_stderr(summary, replicate_stderr,
                             upper[0] if upper is not None else float("nan"),
                             missing_mass_error(coverage, summary.num_samples))
    if upper is not None:
        fields.update(log_z_upper=upper[0], stderr_upper=upper[1])
    return LogPartitionResult(
        log_z=summary.log_z, stderr=stderr, ess=summary.ess, num_samples=summary.num_samples,
        method=method, num_nonfinite=summary.num_nan, seed=tuple(int(s) for s in seed),
        pareto_k=summary.pareto_k,
        reliable=is_reliable(summary, min_ess, stderr=own_stderr, coverage=coverage,
                             upper=upper),
        stderr_delta=summary.stderr_delta, log_z_psis=summary.log_z_psis,
        stderr_psis=summary.stderr_psis,
        num_replicates=summary.num_samples if num_replicates is None else num_replicates,
        num_reference=0 if coverage is None else coverage.num_reference,
        reference_beyond_max=0 if coverage is None else coverage.beyond_max,
        coverage_statistic=float("nan") if coverage is None else coverage.statistic,
        coverage_critical=float("nan") if coverage is None else coverage.critical, **fields)
