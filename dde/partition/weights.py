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
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from dde.partition.results import UnreliableEstimateWarning

NAN_POLICIES = ("raise", "zero")
LOW_ESS_POLICIES = ("warn", "raise", "ignore")


def stats_init(tail_size: int = 1):
    """(c, S₁, S₂, n, n_nan, n_posinf, tail): running max c, Σ exp(lw − c), Σ exp(2(lw − c)),
    counts, and the `tail_size` largest log-weights so far (for the Pareto diagnostic; size
    it `pareto_tail_size(M) + 1` for M draws)."""
    f64 = tf.float64
    return (tf.constant(-np.inf, f64), tf.constant(0.0, f64), tf.constant(0.0, f64),
            tf.constant(0, tf.int64), tf.constant(0, tf.int64), tf.constant(0, tf.int64),
            tf.fill([int(tail_size)], tf.constant(-np.inf, f64)))


def stats_update(state, log_w):
    """Fold log-weights [batch] (float64) into the running statistics (tensor level).

    The running max c is raised to the batch max; old sums are rescaled by exp(c_old − c_new)
    (and its square), so the largest weight contributes exactly exp(0) = 1 once. log w = −inf
    is a zero weight; NaN and +inf are counted apart and contribute nothing. The largest
    log-weights are merged into the tail buffer.
    """
    c, s1, s2, n, n_nan, n_posinf, tail = state
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
    tail = tf.math.top_k(tf.concat([tail, lw], 0), k=tf.shape(tail)[0], sorted=False).values
    return (c_new, s1, s2, n + tf.size(log_w, out_type=tf.int64),
            n_nan + tf.reduce_sum(tf.cast(is_nan, tf.int64)),
            n_posinf + tf.reduce_sum(tf.cast(is_posinf, tf.int64)), tail)


class WeightSummary(NamedTuple):
    """What the importance weights of an estimate say (see the module docstring).

    log_z: log mean weight (the IS estimate); stderr_delta: its delta-method standard error;
    ess: (Σw)²/Σw²; num_samples: M; num_nan: NaN log-weights (counted as zero weights);
    pareto_k: PSIS's k̂ of the weights' right tail (inf when it cannot be fitted);
    log_z_psis, stderr_psis: the same two quantities from the Pareto-smoothed weights.
    """

    log_z: float
    stderr_delta: float
    ess: float
    num_samples: int
    num_nan: int
    pareto_k: float
    log_z_psis: float
    stderr_psis: float


def _log_mean_and_delta_se(log_s1, log_s2, m):
    """(log(S₁/M), delta-method SE, ESS) from log Σw and log Σw² of M weights."""
    ess = math.exp(2 * log_s1 - log_s2)
    stderr = math.sqrt(max(m / ess - 1.0, 0.0) / (m - 1)) if m > 1 else float("inf")
    return log_s1 - math.log(m), stderr, ess


def finalize(state, nan_policy) -> WeightSummary:
    """The `WeightSummary` of the running statistics; raises when they are unusable."""
    c, s1, s2, n, n_nan, n_posinf, tail = (v.numpy() for v in state)
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
    c = float(c)
    log_z, stderr, ess = _log_mean_and_delta_se(c + math.log(s1), 2 * c + math.log(s2), m)
    tail = tail[np.isfinite(tail)]
    k, raw, smooth = pareto_smooth_tail(tail, m) if len(tail) else (float("inf"), tail, tail)
    log_z_psis, stderr_psis = log_z, stderr
    if np.isfinite(k):
        # swap the raw tail for the smoothed one in the sums (relative to c, in float64)
        s1_psis = s1 - np.exp(raw - c).sum() + np.exp(smooth - c).sum()
        s2_psis = s2 - np.exp(2 * (raw - c)).sum() + np.exp(2 * (smooth - c)).sum()
        if s1_psis > 0 and s2_psis > 0:
            log_z_psis, stderr_psis, _ = _log_mean_and_delta_se(
                c + math.log(s1_psis), 2 * c + math.log(s2_psis), m)
    return WeightSummary(float(log_z), float(stderr), float(ess), m, int(n_nan), float(k),
                         float(log_z_psis), float(stderr_psis))


def summarize_log_weights(log_weights, nan_policy: str = "raise") -> WeightSummary:
    """The `WeightSummary` of log-weights [M] (an array): the streaming estimator's
    computation in one batch."""
    lw = np.asarray(log_weights, dtype=np.float64).reshape(-1)
    if lw.size == 0:
        raise ValueError("log_weights is empty.")
    state = stats_update(stats_init(pareto_tail_size(lw.size) + 1), tf.constant(lw))
    return finalize(state, nan_policy)


def importance_statistics(log_weights) -> tuple[float, float, float]:
    """(log mean exp(log w), its delta-method standard error, ESS) of log-weights [M].

    The same computation as the streaming estimator, on an array: NaN or +inf raise.
    """
    summary = summarize_log_weights(log_weights)
    return summary.log_z, summary.stderr_delta, summary.ess


def check_reliability(result, min_ess, on_unreliable, stacklevel=4):
    """Warn (`UnreliableEstimateWarning`), raise (RuntimeError) or do nothing
    (on_unreliable = "warn" / "raise" / "ignore") when a result is not `reliable`: its ESS
    is below min(min_ess, 0.1·M) or its Pareto k̂ above `pareto_k_threshold(M)`."""
    if result.reliable or on_unreliable == "ignore":
        return
    m = result.num_samples
    reasons = []
    threshold = min(float(min_ess), 0.1 * m)
    if not result.ess >= threshold:
        reasons.append(f"the effective sample size is {result.ess:.1f} of {m} samples (below "
                       f"min(min_ess={min_ess:g}, 0.1·M) = {threshold:g})")
    if not result.pareto_k <= pareto_k_threshold(m):
        reasons.append(f"the Pareto k̂ of the weights is {result.pareto_k:.2f} (above "
                       f"{pareto_k_threshold(m):.2f}: heavy-tailed weights)")
    msg = (f"Unreliable log Z estimate ({result.method.upper()}): " + " and ".join(reasons)
           + ". The weights are dominated by a few samples: log Z is likely underestimated and "
           "its error can be many standard errors. Use a better proposal, more samples, or "
           "method='ais' with more steps.")
    if on_unreliable == "raise":
        raise RuntimeError(msg)
    warnings.warn(msg, UnreliableEstimateWarning, stacklevel=stacklevel)


# ----------------------------------------------------------- Pareto-smoothed diagnostics
def pareto_tail_size(m: int) -> int:
    """The number of largest weights PSIS fits its Pareto tail to: ⌈min(M/5, 3√M)⌉."""
    return int(math.ceil(min(m / 5.0, 3.0 * math.sqrt(m))))


def pareto_k_threshold(m: int) -> float:
    """The largest k̂ at which an importance-sampling estimate from M draws is reliable:
    min(1 − 1/log₁₀ M, 0.7) (Vehtari et al. 2024, section 3.2.3; 0 for M ≤ 10)."""
    if m <= 10:
        return 0.0
    return min(1.0 - 1.0 / math.log10(m), 0.7)


def generalized_pareto_fit(excesses) -> tuple[float, float]:
    """(k̂, σ̂) of a generalized Pareto distribution fitted to sorted positive excesses by the
    empirical-Bayes method of Zhang & Stephens (2009) with the weakly informative prior of
    Vehtari et al. (k shrunk towards 0.5 by 10 pseudo-observations) — ArviZ's `_gpdfit`."""
    x = np.asarray(excesses, dtype=np.float64)
    n = len(x)
    m_est = 30 + int(n ** 0.5)
    b = 1.0 - np.sqrt(m_est / (np.arange(1, m_est + 1, dtype=float) - 0.5))
    b /= 3.0 * x[int(n / 4 + 0.5) - 1]
    b += 1.0 / x[-1]
    k = np.log1p(-b[:, None] * x).mean(axis=1)
    len_scale = n * (np.log(-(b / k)) - k - 1.0)
    with np.errstate(over="ignore"):
        weights = 1.0 / np.exp(len_scale - len_scale[:, None]).sum(axis=1)
    keep = weights >= 10 * np.finfo(float).eps
    weights, b = weights[keep], b[keep]
    weights /= weights.sum()
    b_post = np.sum(b * weights)
    k_post = np.log1p(-b_post * x).mean()
    sigma = -k_post / b_post
    k_post = (n * k_post + 10 * 0.5) / (n + 10)
    return float(k_post), float(sigma)


def _pareto_quantiles(probs, k, sigma):
    if sigma <= 0:
        return np.full_like(probs, np.nan)
    if abs(k) < np.finfo(float).eps:
        return -sigma * np.log1p(-probs)
    return sigma * np.expm1(-k * np.log1p(-probs)) / k


def pareto_smooth_tail(tail_log_weights, m: int):
    """PSIS (Vehtari et al. 2024) on the largest log-weights of M draws.

    tail_log_weights: at least `pareto_tail_size(M) + 1` of the largest log-weights (any
    order; more are fine). The tail is the weights above the (K+1)-th largest, K =
    `pareto_tail_size(M)`; a generalized Pareto is fitted to their excesses and they are
    replaced by its quantiles at (i − ½)/K, capped at the largest raw weight.
    Returns (k̂, raw tail log-weights, smoothed tail log-weights) — the tail arrays are
    sorted; k̂ = inf when fewer than 5 weights lie above the cut-off (as in ArviZ).
    """
    lw = np.sort(np.asarray(tail_log_weights, dtype=np.float64))
    k_size = pareto_tail_size(m)
    top = lw[-1]
    x = lw - top
    cutoff = max(x[-(k_size + 1)] if len(x) > k_size else -np.inf,
                 math.log(np.finfo(float).tiny))
    tail = x[x > cutoff]
    if len(tail) <= 4:
        return float("inf"), tail + top, tail + top
    k, sigma = generalized_pareto_fit(np.exp(tail) - math.exp(cutoff))
    if not np.isfinite(k):
        return float("inf"), tail + top, tail + top
    probs = np.arange(0.5, len(tail)) / len(tail)
    smoothed = np.minimum(np.log(_pareto_quantiles(probs, k, sigma) + math.exp(cutoff)), 0.0)
    return k, tail + top, smoothed + top


def is_reliable(summary: WeightSummary, min_ess: float = 100.0) -> bool:
    """Whether an estimate can be trusted: its Pareto k̂ is at most `pareto_k_threshold(M)`
    and its ESS is at least min(min_ess, 0.1·M). A healthy ESS alone does not tell — heavy-
    tailed weights can show one and still be several SE off — which is why k̂ decides."""
    m = summary.num_samples
    return bool(summary.pareto_k <= pareto_k_threshold(m)
                and summary.ess >= min(float(min_ess), 0.1 * m))


def group_stderr(log_weights, group_sizes) -> float:
    """Standard error of log Ẑ from the spread of independent groups of weights: with
    Ẑ_g the mean weight of group g (n_g weights) and Ẑ = Σ n_g Ẑ_g / M,
    se = sqrt(G/(G − 1) · Σ_g (n_g/M)² (Ẑ_g − Ẑ)²) / Ẑ (NaN for a single group)."""
    lw = np.asarray(log_weights, dtype=np.float64)
    sizes = np.asarray(group_sizes, dtype=int)
    if len(sizes) < 2:
        return float("nan")
    top = np.max(lw[np.isfinite(lw)])
    w = np.exp(lw - top)
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    means = np.array([w[a:b].mean() for a, b in zip(bounds[:-1], bounds[1:])])
    frac = sizes / sizes.sum()
    z = np.sum(frac * means)
    g = len(sizes)
    return float(math.sqrt(g / (g - 1) * np.sum(frac**2 * (means - z) ** 2)) / z)


def reported_stderr(summary: WeightSummary, replicate_stderr: float = float("nan")) -> float:
    """The standard error a result reports: the largest of the delta-method SE of the raw
    weights, that of the Pareto-smoothed weights, and (when there are independent
    replicates) the SE from their spread."""
    candidates = [summary.stderr_delta, summary.stderr_psis, replicate_stderr]
    return float(max(v for v in candidates if np.isfinite(v)))
