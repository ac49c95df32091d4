"""Importance weights: streaming statistics, log Ẑ with its standard error, and the
effective sample size.

For log-weights `log w_i` of M samples, `log Ẑ = logsumexp_i(log w_i) − log M`. Streaming
over batches keeps a running maximum c of the log-weights and the sums `S₁ = Σ w_i`,
`S₂ = Σ w_i²` of `w_i = exp(log w_i − c)`, rescaled whenever c grows, so the largest weight
counts exactly once. The effective sample size is `ESS = S₁² / S₂` and the delta-method
standard error of log Ẑ, `se = sqrt(Var(w) / M) / mean(w)` with the unbiased variance, is

    se = sqrt( (M / ESS − 1) / (M − 1) ),

computed from S₁ and S₂ without leaving log space.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import tensorflow as tf

from dde.partition.results import LowEffectiveSampleSizeWarning

NAN_POLICIES = ("raise", "zero")
LOW_ESS_POLICIES = ("warn", "raise", "ignore")


def stats_init():
    """(c, S₁, S₂, n, n_nan, n_posinf): running max c, Σ exp(lw − c), Σ exp(2(lw − c))."""
    f64 = tf.float64
    return (tf.constant(-np.inf, f64), tf.constant(0.0, f64), tf.constant(0.0, f64),
            tf.constant(0, tf.int64), tf.constant(0, tf.int64), tf.constant(0, tf.int64))


def stats_update(state, log_w):
    """Fold log-weights [batch] (float64) into the running statistics (tensor level).

    The running max c is raised to the batch max; old sums are rescaled by exp(c_old − c_new)
    (and its square), so the largest weight contributes exactly exp(0) = 1 once. log w = −inf
    is a zero weight; NaN and +inf are counted apart and contribute nothing.
    """
    c, s1, s2, n, n_nan, n_posinf = state
    log_w = tf.reshape(tf.cast(log_w, tf.float64), [-1])
    is_nan = tf.math.is_nan(log_w)
    is_posinf = tf.equal(log_w, np.inf)
    usable = tf.logical_not(tf.logical_or(is_nan, is_posinf))
    lw = tf.where(usable, log_w, tf.constant(-np.inf, tf.float64))
    c_new = tf.maximum(c, tf.reduce_max(tf.concat([lw, [-np.inf]], 0)))
    finite_c = tf.math.is_finite(c_new)
    ref = tf.where(finite_c, c_new, tf.zeros_like(c_new))
    old_scale = tf.where(tf.math.is_finite(c), tf.exp(c - ref), tf.zeros_like(c))
    terms = tf.exp(lw - ref)
    s1 = s1 * old_scale + tf.reduce_sum(terms)
    s2 = s2 * tf.square(old_scale) + tf.reduce_sum(tf.square(terms))
    return (c_new, s1, s2, n + tf.size(log_w, out_type=tf.int64),
            n_nan + tf.reduce_sum(tf.cast(is_nan, tf.int64)),
            n_posinf + tf.reduce_sum(tf.cast(is_posinf, tf.int64)))


def finalize(state, nan_policy):
    """(log_z, stderr, ess, M, num_nan) from the running statistics; raises when unusable."""
    c, s1, s2, n, n_nan, n_posinf = (v.numpy() for v in state)
    m = int(n)
    if n_posinf:
        raise ValueError(
            f"{int(n_posinf)} of {m} log-weights are +inf (log_density_fn returned +inf or the "
            "proposal's log-density was -inf at a sample): log Z is not finite.")
    if n_nan:
        msg = f"log_density_fn returned NaN for {int(n_nan)} of {m} samples"
        if nan_policy == "raise":
            raise ValueError(
                msg + "; the estimate would be meaningless. Fix the model (or pass "
                "nan_policy='zero' to count NaN as zero weight).")
        if n_nan == m:
            raise ValueError(msg + ": no usable weight.")
        warnings.warn(msg + "; they count as zero weights (nan_policy='zero').",
                      RuntimeWarning, stacklevel=3)
    if not s1 > 0:
        raise ValueError(f"All {m} importance weights are zero (log-weights -inf): the "
                         "proposal does not overlap exp f.")
    log_z = float(c + math.log(s1) - math.log(m))
    ess = float(s1 * s1 / s2)
    if m > 1:
        stderr = math.sqrt(max(m / ess - 1.0, 0.0) / (m - 1))
    else:
        stderr = float("inf")
    return log_z, stderr, ess, m, int(n_nan)


def importance_statistics(log_weights) -> tuple[float, float, float]:
    """(log mean exp(log w), its delta-method standard error, ESS) of log-weights [M].

    The same computation as the streaming estimator, on an array: NaN or +inf raise.
    """
    lw = np.asarray(log_weights, dtype=np.float64).reshape(-1)
    if lw.size == 0:
        raise ValueError("log_weights is empty.")
    state = stats_update(stats_init(), tf.constant(lw))
    return finalize(state, "raise")[:3]


def check_ess(result_ess, m, min_ess, on_low_ess):
    """Warn (or raise, or ignore) when ESS < min(min_ess, 0.1·M)."""
    threshold = min(float(min_ess), 0.1 * m)
    if result_ess >= threshold or on_low_ess == "ignore":
        return
    msg = (f"The effective sample size is {result_ess:.1f} of {m} samples (below "
           f"min(min_ess={min_ess:g}, 0.1·M) = {threshold:g}): the weights are dominated by "
           "a few samples, log Z is likely underestimated and its standard error unreliable. "
           "Use a better proposal, more samples, or method='ais' with more steps.")
    if on_low_ess == "raise":
        raise RuntimeError(msg)
    warnings.warn(msg, LowEffectiveSampleSizeWarning, stacklevel=4)
