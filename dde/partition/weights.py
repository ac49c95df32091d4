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
    log_z_psis, stderr_psis: the same two quantities from the Pareto-smoothed weights;
    max_log_weight: the largest log-weight.
    """

    log_z: float
    stderr_delta: float
    ess: float
    num_samples: int
    num_nan: int
    pareto_k: float
    log_z_psis: float
    stderr_psis: float
    max_log_weight: float = float("nan")


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
                         float(log_z_psis), float(stderr_psis), c)


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
    (on_unreliable = "warn" / "raise" / "ignore") when a result is not `reliable` (see
    `is_reliable`); the message names every reason."""
    if result.reliable or on_unreliable == "ignore":
        return
    m = result.num_samples
    reasons = []
    coverage = CoverageCheck(result.coverage_statistic, result.coverage_critical,
                             result.reference_beyond_max, result.num_reference,
                             result.diagnostics.get("coverage_test", "ks"))
    if result.num_reference and not coverage.passed:
        reasons.append(f"the proposal misses part of the target's mass: the weights of "
                       f"{result.num_reference} reference draws differ from the proposal's "
                       f"(distance {result.coverage_statistic:.3f} > "
                       f"{result.coverage_critical:.3f}; {result.reference_beyond_max} lie "
                       "beyond its largest weight)")
    if np.isfinite(result.log_z_upper) and not bounds_agree(
            result.log_z, result.stderr, result.log_z_upper, result.stderr_upper):
        reasons.append(f"the reverse estimate from draws of the target ({result.log_z_upper:.3f}"
                       f" ± {2 * result.stderr_upper:.3f}) does not agree with it")
    threshold = min(float(min_ess), 0.1 * m)
    if not result.ess >= threshold:
        reasons.append(f"the effective sample size is {result.ess:.1f} of {m} samples (below "
                       f"min(min_ess={min_ess:g}, 0.1·M) = {threshold:g})")
    if not result.pareto_k <= pareto_k_threshold(m):
        reasons.append(f"the Pareto k̂ of the weights is {result.pareto_k:.2f} (above "
                       f"{pareto_k_threshold(m):.2f}: heavy-tailed weights)")
    msg = (f"Unreliable log Z estimate ({result.method.upper()}): " + "; ".join(reasons)
           + ". Its error can be many standard errors (log Z is likely underestimated). Use a "
           "better proposal (one close to the model, e.g. its base density), more samples, or "
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
    sorted; k̂ = inf when fewer than 5 weights lie above the cut-off (as in ArviZ), and
    k̂ = −inf when the K + 1 largest weights are all equal (a tail with no spread: the weights
    are bounded there, the ideal case of importance sampling, e.g. a proposal equal to the
    target).
    """
    lw = np.sort(np.asarray(tail_log_weights, dtype=np.float64))
    k_size = pareto_tail_size(m)
    top = lw[-1]
    x = lw - top
    cutoff = max(x[-(k_size + 1)] if len(x) > k_size else -np.inf,
                 math.log(np.finfo(float).tiny))
    if len(x) > k_size and x[-(k_size + 1)] == 0.0:
        return float("-inf"), lw[-k_size:], lw[-k_size:]
    tail = x[x > cutoff]
    if len(tail) <= 4:
        return float("inf"), tail + top, tail + top
    k, sigma = generalized_pareto_fit(np.exp(tail) - math.exp(cutoff))
    if not np.isfinite(k):
        return float("inf"), tail + top, tail + top
    probs = np.arange(0.5, len(tail)) / len(tail)
    smoothed = np.minimum(np.log(_pareto_quantiles(probs, k, sigma) + math.exp(cutoff)), 0.0)
    return k, tail + top, smoothed + top


#: At most this many reference samples (draws of the target) check a proposal's coverage, so
#: that the check means the same whatever the size of the training set.
MAX_REFERENCE_SAMPLES = 2000
#: The level α of the coverage test per side: a proposal that covers the target fails the
#: two-sided test at most 2α of the time (the DKW bound is conservative: in practice less).
COVERAGE_TEST_LEVEL = 0.01


#: With approximate reference draws (a model's training data), only this many of them beyond
#: the largest proposal weight fail the coverage check (see `CoverageCheck`).
BEYOND_MAX_COUNT = 5
COVERAGE_TESTS = ("ks", "beyond_max")


class CoverageCheck(NamedTuple):
    """Does the proposal cover the target? A two-sample test of the log-weights
    log w = f − log q: under the target p = exp f / Z, P_p(log w > t) = E_q[w; log w > t] / Z,
    which the importance-weighted proposal sample estimates by Σ_{log w_i > t} w_i / Σ w_i.
    `statistic` D = max_t |P̂_reference(log w > t) − P̂_IS(log w > t)| compares it with the
    reference draws' fraction (a one-sample-pair Kolmogorov–Smirnov distance; t over both
    samples). A proposal that never visits part of the target's mass — mass no statistic
    of its own weights can show — leaves reference draws with weights it never saw, at
    t = the largest proposal weight (`beyond_max` of them) or below. `critical` is the
    Dvoretzky–Kiefer–Wolfowitz bound sqrt(−½ log α · (1/n + 1/ESS)) at level α =
    `COVERAGE_TEST_LEVEL` per side (at most 2α for the two-sided D): D above it means the
    proposal misses mass. With a large budget the test is powerful, so it also flags a
    proposal whose estimate is accurate but which under-weights a small part of the target.

    The test assumes exact draws of the target. A model's training data are only
    approximate draws of exp f (a model never fits its data exactly), so there `test` is
    "beyond_max": the check fails only when `BEYOND_MAX_COUNT` or more reference draws have a
    larger weight exp f/q than every proposal sample — places where the model is high and
    the proposal never looked, whatever the fit."""

    statistic: float
    critical: float
    beyond_max: int
    num_reference: int
    test: str = "ks"

    @property
    def passed(self) -> bool:
        if self.test == "beyond_max":
            return self.beyond_max < BEYOND_MAX_COUNT
        return bool(self.statistic <= self.critical)


def coverage_check(log_weights, reference_log_weights, ess: float,
                   level: float = COVERAGE_TEST_LEVEL, test: str = "ks") -> CoverageCheck:
    """The `CoverageCheck` of a proposal sample's log-weights [M] against reference draws'
    log-weights [n] (non-finite reference weights count as beyond every proposal weight)."""
    lw = np.asarray(log_weights, dtype=np.float64).reshape(-1)
    lw = lw[~np.isnan(lw)]
    ref = np.asarray(reference_log_weights, dtype=np.float64).reshape(-1)
    ref = np.where(np.isnan(ref), np.inf, ref)
    order = np.argsort(lw)[::-1]
    lw_sorted = lw[order]
    w = np.exp(lw_sorted - lw_sorted[0])
    tail_mass = np.cumsum(w) / w.sum()  # P̂_IS(log w ≥ lw_sorted[i])
    ts = np.concatenate([lw_sorted, ref[np.isfinite(ref)]])
    above = np.searchsorted(-lw_sorted, -ts, side="left")  # proposal weights > t
    p_is = np.where(above > 0, tail_mass[np.maximum(above - 1, 0)], 0.0)
    p_ref = 1.0 - np.searchsorted(np.sort(ref), ts, side="right") / len(ref)
    stat = float(np.max(np.abs(p_ref - p_is))) if len(ts) else 1.0
    crit = math.sqrt(-0.5 * math.log(level) * (1.0 / len(ref) + 1.0 / max(ess, 1.0)))
    return CoverageCheck(stat, crit, int(np.sum(~(ref <= lw_sorted[0]))), int(len(ref)),
                         test)


#: The forward (lower) and reverse (upper) AIS estimates must agree within this many
#: combined standard errors.
BOUNDS_AGREEMENT = 3.0


def bounds_agree(log_z, stderr, log_z_upper, stderr_upper) -> bool:
    """Whether a lower estimate and an upper estimate of log Z agree: the upper one exceeds
    the lower by at most `BOUNDS_AGREEMENT` combined standard errors."""
    return bool(log_z_upper - log_z <= BOUNDS_AGREEMENT * math.hypot(stderr, stderr_upper))


def is_reliable(summary: WeightSummary, min_ess: float = 100.0, stderr: float | None = None,
                coverage: CoverageCheck | None = None, upper=None) -> bool:
    """Whether an estimate can be trusted:

    - its ESS is at least min(min_ess, 0.1·M) and the Pareto k̂ of its weights at most
      `pareto_k_threshold(M)` (a healthy ESS alone does not tell: heavy-tailed weights show
      one and are still several SE off);
    - with reference draws of the target (`coverage`), the proposal covers the target (the
      test of `CoverageCheck` passes). Mass in regions the proposal never visits is
      invisible to any statistic of its own weights (k̂ included); reference draws are the
      only way to see it;
    - with a reverse estimate `upper` = (log Z upper bound, its SE) (AIS from reference
      draws), the two agree (`bounds_agree`).
    """
    m = summary.num_samples
    ok = (summary.pareto_k <= pareto_k_threshold(m)
          and summary.ess >= min(float(min_ess), 0.1 * m))
    if ok and coverage is not None and coverage.num_reference:
        ok = coverage.passed
    if ok and upper is not None:
        se = summary.stderr_delta if stderr is None else stderr
        ok = bounds_agree(summary.log_z, se, *upper)
    return bool(ok)


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


def missing_mass_error(coverage: "CoverageCheck | None", num_samples: int) -> float:
    """With exact draws of the target (the "ks" coverage test): the share b/n of them whose
    weight exceeds every proposal weight, less the 1/(M + 1) expected when the proposal is
    the target itself, estimates the target mass m the M samples never reached, and
    −log(1 − m) the error this causes in log Ẑ (downward). NaN without such draws."""
    if coverage is None or coverage.test != "ks" or not coverage.num_reference:
        return float("nan")
    m = max(coverage.beyond_max / coverage.num_reference - 1.0 / (num_samples + 1), 0.0)
    return -math.log1p(-min(m, 1.0 - 1e-12))


def reported_stderr(summary: WeightSummary, replicate_stderr: float = float("nan"),
                    log_z_upper: float = float("nan"),
                    missing_mass: float = float("nan")) -> float:
    """The standard error a result reports: the largest of the delta-method SE of the raw
    weights, that of the Pareto-smoothed weights, (when there are independent replicates)
    the SE from their spread, and (with a reverse estimate log Z⁺ from draws of the target,
    AIS) half the width of the bidirectional sandwich, (log Z⁺ − log Ẑ)/2: in expectation
    log Ẑ ≤ log Z ≤ log Z⁺, so a wide sandwich means an error the chains' own spread cannot
    show (weights whose large values were not drawn), and (with exact draws of the target,
    IS) the error of the mass the sample never reached (`missing_mass_error`)."""
    candidates = [summary.stderr_delta, summary.stderr_psis, replicate_stderr,
                  0.5 * (log_z_upper - summary.log_z), missing_mass]
    return float(max(v for v in candidates if np.isfinite(v)))
