"""Streaming importance sampling of log Z = log ∫ exp f(x) dx with a proposal q:

    log Ẑ = logsumexp_i( f(x_i) − log q(x_i) ) − log M,        x_i ~ q, i = 1..M,

in batches, each folded into the running weight statistics of `dde.partition.weights`
(memory O(batch), whatever M). The batch step is compiled once per (log_density_fn, proposal)
and cached while both live, so repeated estimates (other seeds or sample sizes) do not trace
again.
"""
from __future__ import annotations

import tensorflow as tf

from dde._cache import compiled_function, weak
from dde.partition.results import LogPartitionResult
from dde.progress import progress_bar
from dde.partition.weights import (finalize, is_reliable, pareto_tail_size, reported_stderr,
                                   stats_init, stats_update)


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
            return stats_update(state, log_w)
        return step

    return compiled_function(log_density_fn, ("importance_step", bool(jit_compile)), build,
                             companions=(proposal,))


def importance_sampling(log_density_fn, proposal, m, batch_size, seed, progress, nan_policy,
                        jit_compile, min_ess=100.0) -> LogPartitionResult:
    """IS estimate of log Z from M = m samples of `proposal` (seed: int64 [2]); see
    `dde.partition.estimate_log_partition` for the arguments."""
    step = _is_step(log_density_fn, proposal, jit_compile)
    base = tf.constant(seed, tf.int64)
    num_batches = -(-m // batch_size)
    bar = progress_bar(num_batches, "batch", progress)
    state = stats_init(pareto_tail_size(m) + 1)
    for b in range(num_batches):
        n = min(batch_size, m - b * batch_size)
        batch_seed = tf.random.experimental.stateless_fold_in(base, b)
        state = step(state, tf.cast(batch_seed, tf.int32), tf.constant(n, tf.int32))
        if bar is not None:
            bar.update(b + 1)
    summary = finalize(state, nan_policy)
    return result_from_summary(summary, "is", seed, min_ess, num_evaluations=summary.num_samples,
                               diagnostics={"proposal": proposal.name,
                                            "batch_size": batch_size})


def result_from_summary(summary, method, seed, min_ess, replicate_stderr=float("nan"),
                        num_replicates=None, **fields) -> LogPartitionResult:
    """A `LogPartitionResult` from a `WeightSummary` (reported SE, reliability flag)."""
    return LogPartitionResult(
        log_z=summary.log_z, stderr=reported_stderr(summary, replicate_stderr),
        ess=summary.ess, num_samples=summary.num_samples, method=method,
        num_nonfinite=summary.num_nan, seed=tuple(int(s) for s in seed),
        pareto_k=summary.pareto_k, reliable=is_reliable(summary, min_ess),
        stderr_delta=summary.stderr_delta, log_z_psis=summary.log_z_psis,
        stderr_psis=summary.stderr_psis,
        num_replicates=summary.num_samples if num_replicates is None else num_replicates,
        **fields)
