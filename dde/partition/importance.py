"""Streaming importance sampling of log Z = log ∫ exp f(x) dx with a proposal q:

    log Ẑ = logsumexp_i( f(x_i) − log q(x_i) ) − log M,        x_i ~ q, i = 1..M,

in batches, each folded into the running weight statistics of `dde.partition.weights`
(memory O(batch), whatever M). The batch step is compiled once per (log_density_fn, proposal)
and cached while both live, so repeated estimates (other seeds or sample sizes) do not trace
again.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from dde._cache import compiled_function, weak
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


def importance_sampling(log_density_fn, proposal, m, batch_size, seed, progress, nan_policy,
                        jit_compile, min_ess=100.0, reference_samples=None,
                        coverage_test="ks") -> LogPartitionResult:
    """IS estimate of log Z from M = m samples of `proposal` (seed: int64 [2]); see
    `dde.partition.estimate_log_partition` for the arguments."""
    step = _is_step(log_density_fn, proposal, jit_compile)
    base = tf.constant(seed, tf.int64)
    num_batches = -(-m // batch_size)
    bar = progress_bar(num_batches, "batch", progress)
    state = stats_init(pareto_tail_size(m) + 1)
    kept = []
    for b in range(num_batches):
        n = min(batch_size, m - b * batch_size)
        batch_seed = tf.random.experimental.stateless_fold_in(base, b)
        state, log_w = step(state, tf.cast(batch_seed, tf.int32), tf.constant(n, tf.int32))
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
                                            "coverage_test": coverage_test})


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
