"""Monte Carlo partition functions of energy models and average log-likelihoods.

An energy model `f: R^d → R` defines the density `exp f(x) / Z` with `Z = ∫ exp f(x) dx`.

**Importance sampling** (`method="is"`) with a proposal density q:

    log Ẑ = logsumexp_i( f(x_i) − log q(x_i) ) − log M,        x_i ~ q, i = 1..M,

streamed over batches with a running maximum c of the log-weights (each weight counted once):
the sums `S₁ = Σ w_i` and `S₂ = Σ w_i²` of `w_i = exp(log w_i − c)` are rescaled whenever c
grows. The effective sample size is `ESS = S₁² / S₂`, and the standard error of log Ẑ by the
delta method, `se = sqrt(Var(w) / M) / mean(w)` with the unbiased variance, is

    se = sqrt( (M / ESS − 1) / (M − 1) ),

computed from S₁, S₂ without leaving log space. `log q` is the full joint log-density (a sum
over dimensions, never a mean).

**Annealed importance sampling** (`method="ais"`, Neal 2001) runs M chains through the
densities `π_k ∝ q^{1−β_k} exp(β_k f)`, 0 = β_0 < β_1 < … < β_K = 1: x_0 ~ q, and for
k = 1..K the log-weight gains `(β_k − β_{k−1}) (f(x_{k−1}) − log q(x_{k−1}))` before x moves by
an MCMC transition leaving π_k invariant (MALA or HMC, in coordinates whitened by the
proposal's covariance). log Ẑ, se and ESS follow from the final log-weights by the formulas
above.

Importance sampling collapses in high dimensions (ESS of a few samples out of 10⁵ on 36-D
data): every result carries its ESS, and a small ESS warns (or raises, `on_low_ess="raise"`).
A small ESS is a symptom, not a proof of failure the other way round: a proposal with lighter
tails than exp f can show a fine ESS while missing mass. MLP energies decay only linearly far
from the data, so their weights under a Gaussian proposal grow without bound in the tails;
the Student-t proposal (polynomial tails) or AIS are safer there.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import math
import numbers
import warnings

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from dde._validation import check_data, check_finite_results, check_positive, random_seed

tfd = tfp.distributions

__all__ = [
    "AverageLogLikelihood",
    "LogPartitionResult",
    "LowEffectiveSampleSizeWarning",
    "SmoothedEmpiricalDistribution",
    "ais_schedule",
    "average_log_likelihood",
    "estimate_log_partition",
    "estimate_model_log_partition",
    "gaussian_mixture_proposal",
    "gaussian_proposal",
    "importance_statistics",
    "make_proposal",
    "model_log_density_fn",
    "smoothed_empirical_proposal",
    "student_t_proposal",
]

METHODS = ("is", "ais")
PROPOSALS = ("gaussian", "student_t", "gmm", "smoothed")
SCHEDULES = ("linear", "geometric", "sigmoid")
KERNELS = ("hmc", "mala")
DEFAULT_NUM_SAMPLES = {"is": 100_000, "ais": 1_000}
DEFAULT_BATCH_SIZE = {"is": 8192, "ais": 4096}
_NAN_POLICIES = ("raise", "zero")
_LOW_ESS_POLICIES = ("warn", "raise", "ignore")


class LowEffectiveSampleSizeWarning(UserWarning):
    """The effective sample size of a partition-function estimate is too small to trust it."""


# ------------------------------------------------------------------------------- results
@dataclasses.dataclass(frozen=True)
class LogPartitionResult:
    """A Monte Carlo estimate of log Z.

    log_z: the estimate log Ẑ; stderr: its standard error (delta method); ess: the effective
    sample size (Σw)²/Σw² of the (final) importance weights; num_samples: M, the number of
    samples (IS) or chains (AIS); method: "is" or "ais"; num_nonfinite: samples whose
    log-weight was NaN (only possible with nan_policy="zero", where they count as zero
    weights); num_evaluations: evaluations of the log-density (AIS: each with its gradient);
    seed: the stateless seed [2] used; diagnostics: method-specific details (proposal, AIS
    schedule, acceptance rate, step size, ...); log_weights: the final log-weights of the
    AIS chains [M] (None for streaming IS, which keeps only running sums).
    """

    log_z: float
    stderr: float
    ess: float
    num_samples: int
    method: str = "is"
    num_nonfinite: int = 0
    num_evaluations: int = 0
    seed: tuple = ()
    diagnostics: dict = dataclasses.field(default_factory=dict)
    log_weights: np.ndarray | None = dataclasses.field(default=None, repr=False,
                                                       compare=False)

    @property
    def ess_fraction(self) -> float:
        """ESS / M."""
        return self.ess / self.num_samples

    def as_dict(self) -> dict:
        """A JSON-ready dict of every field but `log_weights` (plus `ess_fraction`)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name != "log_weights"}
        out["diagnostics"] = dict(self.diagnostics)
        out["seed"] = list(self.seed)
        out["ess_fraction"] = self.ess_fraction
        return out

    def __str__(self) -> str:
        unit = "chains" if self.method == "ais" else "samples"
        return (f"log Z = {self.log_z:.4f} ± {2 * self.stderr:.4f} (2·SE), "
                f"ESS = {self.ess:,.1f} of {self.num_samples:,} {unit} "
                f"({self.method.upper()})")


@dataclasses.dataclass(frozen=True)
class AverageLogLikelihood:
    """Average log-likelihood `mean_j f(x_j) − log Ẑ` of n test points.

    stderr = sqrt(Var(f)/n + se(log Ẑ)²) combines the test-set spread (`test_stderr`) with
    the uncertainty of the normalization (`log_z_stderr`). Printed as `mean ± 2·SE`.
    """

    mean: float
    stderr: float
    n: int
    test_stderr: float
    log_z: float
    log_z_stderr: float

    def as_dict(self) -> dict:
        """A JSON-ready dict of every field."""
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        return f"{self.mean:.3f} ± {2 * self.stderr:.3f} (2·SE)"


# ------------------------------------------------------------ streaming weight statistics
def _stats_init():
    """(c, S₁, S₂, n, n_nan, n_posinf): running max c, Σ exp(lw − c), Σ exp(2(lw − c))."""
    f64 = tf.float64
    return (tf.constant(-np.inf, f64), tf.constant(0.0, f64), tf.constant(0.0, f64),
            tf.constant(0, tf.int64), tf.constant(0, tf.int64), tf.constant(0, tf.int64))


def _stats_update(state, log_w):
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


def _finalize(state, nan_policy):
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
    state = _stats_update(_stats_init(), tf.constant(lw))
    return _finalize(state, "raise")[:3]


def _check_ess(result_ess, m, min_ess, on_low_ess):
    threshold = min(float(min_ess), 0.1 * m)
    if result_ess >= threshold or on_low_ess == "ignore":
        return
    msg = (f"The effective sample size is {result_ess:.1f} of {m} samples (below "
           f"min(min_ess={min_ess:g}, 0.1·M) = {threshold:g}): the weights are dominated by "
           "a few samples, log Z is likely underestimated and its standard error unreliable. "
           "Use a better proposal, more samples, or method='ais' with more steps.")
    if on_low_ess == "raise":
        raise RuntimeError(msg)
    warnings.warn(msg, LowEffectiveSampleSizeWarning, stacklevel=3)


# ---------------------------------------------------------------------------- proposals
def _check_train(x_train, name="x_train", n_features=None):
    return check_data(x_train, name=name, n_features=n_features, owner="the model",
                      dtype=np.float64)


def _scaled_tril(cov, scale, name):
    cov = np.asarray(cov, dtype=np.float64) * float(scale) ** 2
    cov = 0.5 * (cov + cov.T)
    d = cov.shape[0]
    jitter = 1e-10 * max(float(np.trace(cov)) / d, 1e-300)
    for _ in range(10):
        try:
            return np.linalg.cholesky(cov + jitter * np.eye(d))
        except np.linalg.LinAlgError:
            jitter *= 100.0
    raise ValueError(f"The covariance of {name} is not positive definite (the data may be "
                     "degenerate: constant or collinear features).")


def gaussian_proposal(x_train, scale: float = 1.0, dtype=tf.float64) -> tfd.Distribution:
    """Full-covariance Gaussian N(mean, scale²·Cov) fitted to x_train [N, d] (N ≥ 2).

    `scale` > 1 inflates the proposal (heavier coverage of the tails keeps IS weights bounded).
    """
    x = _check_train(x_train)
    check_positive(scale, "scale")
    if len(x) < 2:
        raise ValueError("gaussian_proposal needs at least 2 training points.")
    cov = np.atleast_2d(np.cov(x, rowvar=False))
    tril = _scaled_tril(cov, scale, "x_train")
    return tfd.MultivariateNormalTriL(loc=tf.constant(x.mean(0), dtype),
                                      scale_tril=tf.constant(tril, dtype),
                                      name="GaussianProposal")


def student_t_proposal(x_train, df: float = 5.0, scale: float = 1.0,
                       dtype=tf.float64) -> tfd.Distribution:
    """Multivariate Student-t with `df` > 2 degrees of freedom fitted to x_train [N, d]: mean
    and covariance (× scale²) equal to the data's, i.e. scale matrix Cov·(df − 2)/df.

    Its polynomial tails bound the weights exp f / q of energies whose log-density decays
    only linearly far from the data (as MLP energies do), where a Gaussian proposal's
    weights grow without bound. In high dimension its radial spread costs ESS.
    """
    x = _check_train(x_train)
    check_positive(df, "df")
    check_positive(scale, "scale")
    if df <= 2:
        raise ValueError(f"df must be > 2 (finite covariance), got {df}.")
    if len(x) < 2:
        raise ValueError("student_t_proposal needs at least 2 training points.")
    cov = np.atleast_2d(np.cov(x, rowvar=False)) * (df - 2.0) / df
    tril = _scaled_tril(cov, scale, "x_train")
    return tfd.MultivariateStudentTLinearOperator(
        df=tf.constant(df, dtype), loc=tf.constant(x.mean(0), dtype),
        scale=tf.linalg.LinearOperatorLowerTriangular(tf.constant(tril, dtype)),
        name="StudentTProposal")


def gaussian_mixture_proposal(x_train, n_components: int = 8, seed: int | None = 0,
                              scale: float = 1.0, covariance_type: str = "full",
                              max_fit_points: int | None = 100_000,
                              dtype=tf.float64) -> tfd.Distribution:
    """Gaussian mixture fitted to x_train [N, d] by scikit-learn's EM, as a
    `tfd.MixtureSameFamily` of `MultivariateNormalTriL` components (covariances × scale²).

    covariance_type: any of scikit-learn's ("full", "tied", "diag", "spherical").
    max_fit_points: fit on a random subset of this size when N is larger (None: all).
    """
    from sklearn.mixture import GaussianMixture

    x = _check_train(x_train)
    check_positive(n_components, "n_components", integer=True)
    check_positive(scale, "scale")
    if len(x) < n_components:
        raise ValueError(f"x_train has {len(x)} points, fewer than n_components="
                         f"{n_components}.")
    rng = np.random.default_rng(seed)
    if max_fit_points is not None and len(x) > max_fit_points:
        x = x[rng.choice(len(x), int(max_fit_points), replace=False)]
    gmm = GaussianMixture(n_components=n_components, covariance_type=covariance_type,
                          random_state=None if seed is None else int(seed) % (2**32),
                          reg_covar=1e-6 * float(np.mean(np.var(x, axis=0)) or 1.0))
    gmm.fit(x)
    d = x.shape[1]
    k = gmm.n_components
    cov = gmm.covariances_
    if covariance_type == "tied":
        cov = np.broadcast_to(cov, (k, d, d))
    elif covariance_type == "diag":
        cov = np.stack([np.diag(c) for c in cov])
    elif covariance_type == "spherical":
        cov = np.stack([c * np.eye(d) for c in cov])
    trils = np.stack([_scaled_tril(c, scale, f"mixture component {i}")
                      for i, c in enumerate(cov)])
    return tfd.MixtureSameFamily(
        mixture_distribution=tfd.Categorical(logits=tf.constant(np.log(gmm.weights_), dtype)),
        components_distribution=tfd.MultivariateNormalTriL(
            loc=tf.constant(gmm.means_, dtype), scale_tril=tf.constant(trils, dtype)),
        name="GaussianMixtureProposal")


class SmoothedEmpiricalDistribution(tfd.Distribution):
    """The σ-smoothed empirical distribution `(1/N) Σ_j N(x; p_j, σ² I)` of points p [N, d].

    Equal to `tfd.MixtureSameFamily(Categorical(zeros(N)), MultivariateNormalDiag(p, σ))`, but
    its log_prob never materializes a [batch, N, d] tensor: it streams over chunks of
    `chunk_size` points with ‖x − p‖² = ‖x‖² − 2x·p + ‖p‖² (a [batch, chunk] matrix) and a
    log-sum-exp over chunks, so it scales to large N and d.
    """

    def __init__(self, points, noise_std, chunk_size: int = 1024, validate_args=False,
                 allow_nan_stats=True, name="SmoothedEmpiricalDistribution"):
        parameters = dict(locals())
        with tf.name_scope(name) as name:
            self._points = tf.convert_to_tensor(points, dtype_hint=tf.float64, name="points")
            if self._points.shape.rank != 2 or self._points.shape[0] == 0:
                raise ValueError(f"points must have shape [N, d] with N ≥ 1, got "
                                 f"{self._points.shape}.")
            self._noise_std = tf.convert_to_tensor(noise_std, dtype=self._points.dtype,
                                                   name="noise_std")
            self._chunk_size = int(check_positive(chunk_size, "chunk_size", integer=True))
            n, d = self._points.shape
            chunk = min(self._chunk_size, n)
            n_chunks = -(-n // chunk)
            pad = n_chunks * chunk - n
            padded = tf.concat([self._points, tf.zeros([pad, d], self._points.dtype)], 0)
            self._chunks = tf.reshape(padded, [n_chunks, chunk, d])
            mask = tf.concat([tf.zeros([n], self._points.dtype),
                              tf.fill([pad], tf.constant(-np.inf, self._points.dtype))], 0)
            self._chunk_mask = tf.reshape(mask, [n_chunks, chunk])
            self._chunk_sq = tf.reduce_sum(tf.square(self._chunks), -1)
            super().__init__(dtype=self._points.dtype,
                             reparameterization_type=tfd.NOT_REPARAMETERIZED,
                             validate_args=validate_args, allow_nan_stats=allow_nan_stats,
                             parameters=parameters, name=name)

    @classmethod
    def _parameter_properties(cls, dtype, num_classes=None):
        return dict(points=tfp.util.ParameterProperties(event_ndims=2),
                    noise_std=tfp.util.ParameterProperties(event_ndims=0))

    @property
    def points(self):
        return self._points

    @property
    def noise_std(self):
        return self._noise_std

    def _batch_shape(self):
        return tf.TensorShape([])

    def _batch_shape_tensor(self):
        return tf.constant([], tf.int32)

    def _event_shape(self):
        return self._points.shape[-1:]

    def _event_shape_tensor(self):
        return tf.shape(self._points)[-1:]

    def _sample_n(self, n, seed=None):
        idx_seed, noise_seed = tfp.random.split_seed(seed, n=2)
        num_points = tf.shape(self._points)[0]
        idx = tf.random.stateless_uniform([n], idx_seed, minval=0, maxval=num_points,
                                          dtype=tf.int32)
        eps = tf.random.stateless_normal([n, tf.shape(self._points)[1]], noise_seed,
                                         dtype=self.dtype)
        return tf.gather(self._points, idx) + self._noise_std * eps

    def _log_prob(self, x):
        x = tf.convert_to_tensor(x, self.dtype)
        shape = tf.shape(x)
        d = self._points.shape[-1]
        flat = tf.reshape(x, [-1, d])
        x_sq = tf.reduce_sum(tf.square(flat), -1)
        inv_two_var = 0.5 / tf.square(self._noise_std)

        def chunk_lse(args):
            pts, sq, mask = args
            d2 = x_sq[:, None] - 2.0 * tf.matmul(flat, pts, transpose_b=True) + sq[None, :]
            return tf.reduce_logsumexp(-tf.maximum(d2, 0.0) * inv_two_var + mask[None, :], -1)

        per_chunk = tf.map_fn(chunk_lse, (self._chunks, self._chunk_sq, self._chunk_mask),
                              fn_output_signature=tf.TensorSpec([None], self.dtype))
        n = tf.cast(tf.shape(self._points)[0], self.dtype)
        log_norm = -0.5 * d * tf.math.log(2.0 * np.pi * tf.square(self._noise_std))
        lp = tf.reduce_logsumexp(per_chunk, 0) - tf.math.log(n) + log_norm
        return tf.reshape(lp, shape[:-1])

    def _mean(self):
        return tf.reduce_mean(self._points, 0)

    def _covariance(self):
        centered = self._points - tf.reduce_mean(self._points, 0)
        n = tf.cast(tf.shape(self._points)[0], self.dtype)
        d = self._points.shape[-1]
        return (tf.matmul(centered, centered, transpose_a=True) / n
                + tf.square(self._noise_std) * tf.eye(d, dtype=self.dtype))

    def _variance(self):
        return tf.linalg.diag_part(self._covariance())


def smoothed_empirical_proposal(x_train, noise_std: float, max_points: int | None = None,
                                seed: int | None = 0, chunk_size: int = 1024,
                                dtype=tf.float64) -> SmoothedEmpiricalDistribution:
    """The σ-smoothed empirical mixture `(1/N) Σ_j N(x_j, σ² I)` of the training points (the
    density a DDE with noise level σ approximates). `max_points`: use a random subset of this
    size when N is larger (each log_prob costs O(N·d) per point)."""
    x = _check_train(x_train)
    check_positive(noise_std, "noise_std")
    if max_points is not None:
        check_positive(max_points, "max_points", integer=True)
        if len(x) > max_points:
            x = x[np.random.default_rng(seed).choice(len(x), max_points, replace=False)]
    return SmoothedEmpiricalDistribution(tf.constant(x, dtype), noise_std,
                                         chunk_size=chunk_size, name="SmoothedEmpirical")


def _event_size(proposal, input_dim=None):
    if not isinstance(proposal, tfd.Distribution):
        raise TypeError(f"proposal must be a tfp.distributions.Distribution (or one of "
                        f"{PROPOSALS}), got {type(proposal).__name__}.")
    batch = proposal.batch_shape
    if batch.rank is None or batch.rank != 0:
        raise ValueError(f"The proposal must be a single distribution (batch_shape []), got "
                         f"batch_shape {batch}.")
    event = proposal.event_shape
    if event.rank != 1 or event[0] is None:
        raise ValueError(f"The proposal must have a vector event of known size [d], got "
                         f"event_shape {event}.")
    if not proposal.dtype.is_floating:
        raise TypeError(f"The proposal must have a floating dtype, got {proposal.dtype}.")
    d = int(event[0])
    if input_dim is not None and d != int(input_dim):
        raise ValueError(f"The proposal has event size {d}, but the model expects "
                         f"{input_dim} features.")
    return d


def make_proposal(proposal, x_train=None, *, noise_std: float | None = None,
                  n_components: int = 8, scale: float = 1.0, df: float = 5.0,
                  seed: int | None = 0, input_dim: int | None = None,
                  dtype=tf.float64) -> tfd.Distribution:
    """A proposal from its name ("gaussian", "student_t", "gmm", "smoothed") fitted to
    x_train, or a given `tfd.Distribution` checked for a vector event of size `input_dim`.

    noise_std: σ of the "smoothed" proposal; n_components: of "gmm"; df: of "student_t";
    scale: covariance inflation (standard-deviation factor) of "gaussian", "student_t", "gmm".
    """
    if isinstance(proposal, str):
        name = proposal.lower()
        if name not in PROPOSALS:
            raise ValueError(f"Unknown proposal {proposal!r}; expected one of {PROPOSALS} or "
                             "a tfp.distributions.Distribution.")
        if x_train is None:
            raise ValueError(f"The {name!r} proposal is fitted to training data: pass x_train.")
        x = _check_train(x_train, n_features=input_dim)
        if name == "gaussian":
            q = gaussian_proposal(x, scale=scale, dtype=dtype)
        elif name == "student_t":
            q = student_t_proposal(x, df=df, scale=scale, dtype=dtype)
        elif name == "gmm":
            q = gaussian_mixture_proposal(x, n_components=n_components, seed=seed, scale=scale,
                                          dtype=dtype)
        else:
            if noise_std is None:
                raise ValueError("The 'smoothed' proposal needs noise_std (σ).")
            q = smoothed_empirical_proposal(x, noise_std, seed=seed, dtype=dtype)
        return q
    _event_size(proposal, input_dim)
    return proposal


# ---------------------------------------------------------------------------- estimators
def _make_seed(seed):
    """A stateless seed: an int64 array [2] from an int, a pair, or None (fresh entropy)."""
    if seed is None:
        seed = random_seed()
    if isinstance(seed, numbers.Integral) and not isinstance(seed, bool):
        return np.array([0, int(seed)], dtype=np.int64)
    arr = np.asarray(seed)
    if arr.shape != (2,) or arr.dtype.kind not in "iu":
        raise TypeError(f"seed must be an int, a pair of ints or None, got {seed!r}.")
    return arr.astype(np.int64)


def _log_density(log_density_fn, x):
    out = tf.convert_to_tensor(log_density_fn(x))
    if out.shape.rank == 2 and out.shape[-1] == 1:
        out = out[:, 0]
    if out.shape.rank != 1:
        raise ValueError(f"log_density_fn must map [batch, d] to [batch]; got output shape "
                         f"{out.shape}.")
    return tf.cast(out, tf.float64)


class _DropRetracingWarnings(logging.Filter):
    """Each estimate compiles functions for its own (log_density_fn, proposal): TensorFlow's
    'triggered tf.function retracing' warning is expected then, not a performance bug."""

    def filter(self, record):
        return "triggered tf.function retracing" not in record.getMessage()


@contextlib.contextmanager
def _expected_retracing():
    logger = tf.get_logger()
    filt = _DropRetracingWarnings()
    logger.addFilter(filt)
    try:
        yield
    finally:
        logger.removeFilter(filt)


def _progbar(total, unit):
    import keras
    return keras.utils.Progbar(total, unit_name=unit)


def estimate_log_partition(log_density_fn, proposal, num_samples: int, batch_size: int = 8192,
                           seed=None, method: str = "is", progress: bool = False,
                           nan_policy: str = "raise", min_ess: float = 100.0,
                           on_low_ess: str = "warn", jit_compile: bool = False,
                           **ais_options) -> LogPartitionResult:
    """Estimate log Z = log ∫ exp f(x) dx by importance sampling or AIS.

    log_density_fn: f, a TensorFlow-traceable callable [batch, d] → [batch] (any float dtype;
        it receives x in the proposal's dtype). For AIS it must be differentiable.
    proposal: a `tfd.Distribution` with event shape [d] (see `make_proposal`).
    num_samples: M, the number of samples (IS) or of chains (AIS).
    batch_size: samples (IS) or chains (AIS) processed at once.
    seed: int, pair of ints or None. The result is a deterministic function of (seed,
        batch_size, M, the method's options); each batch uses `stateless_fold_in(seed, b)`.
    method: "is" (streaming importance sampling) or "ais" (see `ais_options`).
    progress: show a progress bar.
    nan_policy: "raise" (default): any NaN log-density raises ValueError naming how many;
        "zero": NaN counts as a zero weight, with a RuntimeWarning giving the count.
    min_ess, on_low_ess: if ESS < min(min_ess, 0.1·M) then "warn" (a
        `LowEffectiveSampleSizeWarning`), "raise" (RuntimeError) or "ignore".
    jit_compile: compile the batch step with XLA.
    ais_options (method="ais"): num_steps=200 (K temperatures), schedule="sigmoid" ("linear",
        "geometric" or an increasing array from 0 to 1; see `ais_schedule`), kernel="hmc"
        (or "mala"), num_leapfrog_steps=5, steps_per_temperature=1, step_size=None (initial,
        in whitened coordinates), target_accept_rate=None (0.85 HMC, 0.8 MALA: higher than
        the rates optimal for plain MCMC, because chains that stall at a temperature inflate
        the variance of the AIS weights), adapt_step_size=True (after every transition
        log h += adaptation_rate·(mean acceptance − target), shared by the chains of a
        batch; adaptation_rate=1.0). Adaptation makes the transitions at a temperature depend
        on the batch's chains at the previous one, an O(1/batch) effect; for exactly
        independent chains pass adapt_step_size=False and a fixed step_size.

    Returns a `LogPartitionResult` (log_z, stderr, ess, num_samples, ...).
    """
    check_positive(num_samples, "num_samples", integer=True)
    check_positive(batch_size, "batch_size", integer=True)
    check_positive(min_ess, "min_ess", allow_zero=True)
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}; expected one of {METHODS}.")
    if nan_policy not in _NAN_POLICIES:
        raise ValueError(f"nan_policy must be one of {_NAN_POLICIES}, got {nan_policy!r}.")
    if on_low_ess not in _LOW_ESS_POLICIES:
        raise ValueError(f"on_low_ess must be one of {_LOW_ESS_POLICIES}, got {on_low_ess!r}.")
    if not callable(log_density_fn):
        raise TypeError("log_density_fn must be callable: [batch, d] → [batch].")
    d = _event_size(proposal)
    seed = _make_seed(seed)
    if method == "is" and ais_options:
        raise TypeError(f"Unexpected options for method='is': {sorted(ais_options)}.")
    with _expected_retracing():
        if method == "is":
            result = _importance_sampling(log_density_fn, proposal, int(num_samples),
                                          int(batch_size), seed, progress, nan_policy,
                                          jit_compile)
        else:
            result = _annealed_importance_sampling(
                log_density_fn, proposal, d, int(num_samples), int(batch_size), seed, progress,
                nan_policy, jit_compile, **ais_options)
    _check_ess(result.ess, result.num_samples, min_ess, on_low_ess)
    return result


# Compiled IS batch steps of recent (log_density_fn, proposal) pairs, so that repeated
# estimates (other seeds or sample sizes) are not traced again. Entries hold their function
# and proposal (so their ids stay unique); at most _STEP_CACHE_SIZE are kept.
_STEP_CACHE: collections.OrderedDict = collections.OrderedDict()
_STEP_CACHE_SIZE = 4


def _is_step(log_density_fn, proposal, jit_compile):
    key = (id(log_density_fn), id(proposal), bool(jit_compile))
    entry = _STEP_CACHE.get(key)
    if entry is not None and entry[0] is log_density_fn and entry[1] is proposal:
        _STEP_CACHE.move_to_end(key)
        return entry[2]

    @tf.function(jit_compile=jit_compile, reduce_retracing=True)
    def step(state, batch_seed, n):
        x = proposal.sample(n, seed=batch_seed)
        log_w = _log_density(log_density_fn, x) - tf.cast(proposal.log_prob(x), tf.float64)
        return _stats_update(state, log_w)

    _STEP_CACHE[key] = (log_density_fn, proposal, step)
    while len(_STEP_CACHE) > _STEP_CACHE_SIZE:
        _STEP_CACHE.popitem(last=False)
    return step


def _importance_sampling(log_density_fn, proposal, m, batch_size, seed, progress, nan_policy,
                         jit_compile):
    step = _is_step(log_density_fn, proposal, jit_compile)
    base = tf.constant(seed, tf.int64)
    num_batches = -(-m // batch_size)
    bar = _progbar(num_batches, "batch") if progress else None
    state = _stats_init()
    for b in range(num_batches):
        n = min(batch_size, m - b * batch_size)
        batch_seed = tf.random.experimental.stateless_fold_in(base, b)
        state = step(state, tf.cast(batch_seed, tf.int32), tf.constant(n, tf.int32))
        if bar is not None:
            bar.update(b + 1)
    log_z, stderr, ess, m, n_nan = _finalize(state, nan_policy)
    return LogPartitionResult(log_z=log_z, stderr=stderr, ess=ess, num_samples=m, method="is",
                              num_nonfinite=n_nan, num_evaluations=m,
                              seed=tuple(int(s) for s in seed),
                              diagnostics={"proposal": proposal.name, "batch_size": batch_size})


def ais_schedule(schedule="sigmoid", num_steps: int = 200, sharpness: float = 4.0,
                 beta_min: float = 1e-4) -> np.ndarray:
    """Inverse temperatures 0 = β_0 < β_1 < … < β_K = 1 (K = num_steps), float64 [K + 1].

    "linear": β_k = k/K. "geometric": β_k geometric from beta_min to 1 for k ≥ 1.
    "sigmoid" (Grosse et al. 2013): β̃_k = σ(sharpness·(2k/K − 1)), rescaled to [0, 1].
    An array is validated (1-D, non-decreasing, from 0 to 1) and returned.
    """
    if not isinstance(schedule, str):
        betas = np.asarray(schedule, dtype=np.float64)
        if betas.ndim != 1 or betas.size < 2:
            raise ValueError(f"A schedule array must be 1-D with at least 2 entries, got "
                             f"shape {betas.shape}.")
        if not np.isfinite(betas).all() or betas[0] != 0.0 or betas[-1] != 1.0 or np.any(
                np.diff(betas) < 0):
            raise ValueError("A schedule array must be non-decreasing from exactly 0 to 1.")
        return betas
    check_positive(num_steps, "num_steps", integer=True)
    k = num_steps
    if schedule == "linear":
        return np.linspace(0.0, 1.0, k + 1)
    if schedule == "geometric":
        if not 0.0 < beta_min < 1.0:
            raise ValueError(f"beta_min must be in (0, 1), got {beta_min}.")
        return np.concatenate([[0.0], np.geomspace(beta_min, 1.0, k)])
    if schedule == "sigmoid":
        check_positive(sharpness, "sharpness")
        s = 1.0 / (1.0 + np.exp(-sharpness * (2.0 * np.arange(k + 1) / k - 1.0)))
        betas = (s - s[0]) / (s[-1] - s[0])
        betas[0], betas[-1] = 0.0, 1.0
        return betas
    raise ValueError(f"Unknown schedule {schedule!r}; expected one of {SCHEDULES} or an "
                     "array of inverse temperatures.")


def _whitening(proposal, d, seed):
    """(mean [d], lower Cholesky factor L [d, d]) of the proposal's covariance (float64),
    from `mean()`/`covariance()` when implemented, else from an independent pilot sample."""
    try:
        mean = np.asarray(proposal.mean(), dtype=np.float64)
        cov = np.asarray(proposal.covariance(), dtype=np.float64)
    except (NotImplementedError, TypeError, ValueError):
        n = max(20 * d, 2000)
        pilot_seed = tf.cast(tf.random.experimental.stateless_fold_in(
            tf.constant(seed, tf.int64), -1), tf.int32)
        x = np.asarray(proposal.sample(n, seed=pilot_seed), dtype=np.float64)
        mean, cov = x.mean(0), np.atleast_2d(np.cov(x, rowvar=False))
    if mean.shape != (d,) or cov.shape != (d, d) or not (np.isfinite(mean).all()
                                                         and np.isfinite(cov).all()):
        raise ValueError("Could not obtain a finite mean and covariance of the proposal.")
    return mean, _scaled_tril(cov, 1.0, "the proposal")


class _AISFunctions:
    """Compiled pieces of AIS for one (log_density_fn, proposal, kernel): `init` (state at
    x₀), `advance` (temperatures k_start ≤ k < k_end < K: weight increment, then moves) and
    `finish` (the last increment). Whitening, schedule, step-size settings and the number of
    leapfrog / inner steps are tensor arguments, so other settings reuse the same trace."""

    def __init__(self, log_density_fn, proposal, kernel, jit_compile):
        f64 = tf.float64
        q_dtype = proposal.dtype
        is_mala = kernel == "mala"

        def pieces(z, mu, tril):
            """f, log q at x = μ + L z and their gradients w.r.t. z (= Lᵀ∇ₓ), float64."""
            x = mu + tf.linalg.matvec(tril, z)
            with tf.GradientTape(persistent=True) as tape:
                tape.watch(x)
                xq = tf.cast(x, q_dtype)
                f = _log_density(log_density_fn, xq)
                lq = tf.cast(proposal.log_prob(xq), f64)
            gf = tape.gradient(f, x)
            glq = tape.gradient(lq, x)
            del tape
            gf = tf.zeros_like(x) if gf is None else tf.cast(gf, f64)
            glq = tf.zeros_like(x) if glq is None else tf.cast(glq, f64)
            return (f, lq, tf.linalg.matvec(tril, gf, transpose_a=True),
                    tf.linalg.matvec(tril, glq, transpose_a=True))

        def tempered(beta, f, lq, gf, glq):
            return (1.0 - beta) * lq + beta * f, (1.0 - beta) * glq + beta * gf

        def transition(beta, chain, h, seed, mu, tril, num_leapfrog):
            """One MALA or HMC step leaving π_β invariant. chain = (z, f, lq, gf, glq).
            Returns the new chain, acceptance probabilities [n] and non-finite proposals."""
            z, f, lq, gf, glq = chain
            s_mom, s_acc = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
            logp, grad = tempered(beta, f, lq, gf, glq)
            xi = tf.random.stateless_normal(tf.shape(z), s_mom, dtype=f64)
            if is_mala:
                z1 = z + 0.5 * tf.square(h) * grad + h * xi
                new = pieces(z1, mu, tril)
                logp1, grad1 = tempered(beta, *new[:2], *new[2:])
                fwd = tf.reduce_sum(tf.square(z1 - z - 0.5 * tf.square(h) * grad), -1)
                bwd = tf.reduce_sum(tf.square(z - z1 - 0.5 * tf.square(h) * grad1), -1)
                log_ratio = logp1 - logp + (fwd - bwd) / (2.0 * tf.square(h))
            else:
                def leap(i, z1, p, new):
                    z1 = z1 + h * p
                    new = pieces(z1, mu, tril)
                    g1 = tempered(beta, *new[:2], *new[2:])[1]
                    p = p + tf.where(i < num_leapfrog - 1, h, 0.5 * h) * g1
                    return i + 1, z1, p, new

                _, z1, p, new = tf.while_loop(
                    lambda i, *_: i < num_leapfrog, leap,
                    (tf.constant(0, tf.int32), z, xi + 0.5 * h * grad, chain[1:]))
                logp1 = tempered(beta, *new[:2], *new[2:])[0]
                log_ratio = (logp1 - 0.5 * tf.reduce_sum(tf.square(p), -1)) - (
                    logp - 0.5 * tf.reduce_sum(tf.square(xi), -1))
            finite = tf.math.is_finite(log_ratio) & tf.reduce_all(tf.math.is_finite(z1), -1)
            log_ratio = tf.where(finite, log_ratio, tf.constant(-np.inf, f64))
            accept_prob = tf.exp(tf.minimum(log_ratio, 0.0))
            u = tf.random.stateless_uniform(tf.shape(log_ratio), s_acc, dtype=f64)
            accept = u < accept_prob
            out = tuple(tf.where(accept[:, None] if a.shape.rank == 2 else accept, b, a)
                        for a, b in zip(chain, (z1, *new)))
            return out, accept_prob, tf.reduce_sum(tf.cast(tf.logical_not(finite), tf.int64))

        @tf.function(jit_compile=jit_compile, reduce_retracing=True)
        def init(x0, mu, tril):
            z0 = tf.transpose(tf.linalg.triangular_solve(
                tril, tf.transpose(tf.cast(x0, f64) - mu), lower=True))
            return (z0, *pieces(z0, mu, tril))

        @tf.function(jit_compile=jit_compile, reduce_retracing=True)
        def advance(state, betas, k_start, k_end, seed, mu, tril, num_leapfrog, num_inner,
                    target, rate):
            def body(k, chain, log_w, log_h, acc_sum, acc_n, n_bad):
                log_w = log_w + (betas[k] - betas[k - 1]) * (chain[1] - chain[2])

                def inner(j, chain, log_h, acc_sum, acc_n, n_bad):
                    s = tf.random.experimental.stateless_fold_in(
                        seed, tf.cast(k * num_inner + j, tf.int64))
                    chain, prob, bad = transition(betas[k], chain, tf.exp(log_h), s, mu, tril,
                                                  num_leapfrog)
                    mean_prob = tf.reduce_mean(prob)
                    # Population-level adaptation: log h moves by rate·(acceptance − target).
                    return (j + 1, chain, log_h + rate * (mean_prob - target),
                            acc_sum + mean_prob, acc_n + 1.0, n_bad + bad)

                _, chain, log_h, acc_sum, acc_n, n_bad = tf.while_loop(
                    lambda j, *_: j < num_inner, inner,
                    (tf.constant(0, tf.int32), chain, log_h, acc_sum, acc_n, n_bad))
                return k + 1, chain, log_w, log_h, acc_sum, acc_n, n_bad

            out = tf.while_loop(lambda k, *_: k < k_end, body, (k_start, *state))
            return out[1:]

        @tf.function(jit_compile=jit_compile, reduce_retracing=True)
        def finish(state, betas):
            chain, log_w = state[0], state[1]
            k = tf.shape(betas)[0] - 1
            return log_w + (betas[k] - betas[k - 1]) * (chain[1] - chain[2])

        self.init, self.advance, self.finish = init, advance, finish


_AIS_CACHE: collections.OrderedDict = collections.OrderedDict()


def _ais_functions(log_density_fn, proposal, kernel, jit_compile):
    key = (id(log_density_fn), id(proposal), kernel, bool(jit_compile))
    entry = _AIS_CACHE.get(key)
    if entry is not None and entry[0] is log_density_fn and entry[1] is proposal:
        _AIS_CACHE.move_to_end(key)
        return entry[2]
    fns = _AISFunctions(log_density_fn, proposal, kernel, jit_compile)
    _AIS_CACHE[key] = (log_density_fn, proposal, fns)
    while len(_AIS_CACHE) > _STEP_CACHE_SIZE:
        _AIS_CACHE.popitem(last=False)
    return fns


def _annealed_importance_sampling(log_density_fn, proposal, d, m, batch_size, seed, progress,
                                  nan_policy, jit_compile, num_steps: int = 200,
                                  schedule="sigmoid", kernel: str = "hmc",
                                  num_leapfrog_steps: int = 5, steps_per_temperature: int = 1,
                                  step_size: float | None = None,
                                  target_accept_rate: float | None = None,
                                  adapt_step_size: bool = True, adaptation_rate: float = 1.0):
    if kernel not in KERNELS:
        raise ValueError(f"Unknown kernel {kernel!r}; expected one of {KERNELS}.")
    betas_np = ais_schedule(schedule, num_steps)
    num_temps = len(betas_np) - 1  # K
    check_positive(num_leapfrog_steps, "num_leapfrog_steps", integer=True)
    check_positive(steps_per_temperature, "steps_per_temperature", integer=True)
    check_positive(adaptation_rate, "adaptation_rate", allow_zero=True)
    if step_size is None:
        step_size = 0.5 * d ** -0.25 if kernel == "hmc" else 1.0 * d ** (-1.0 / 3.0)
    check_positive(step_size, "step_size")
    if target_accept_rate is None:
        target_accept_rate = 0.85 if kernel == "hmc" else 0.8
    if not 0.0 < target_accept_rate < 1.0:
        raise ValueError(f"target_accept_rate must be in (0, 1), got {target_accept_rate}.")
    leapfrog = int(num_leapfrog_steps) if kernel == "hmc" else 1
    n_inner = int(steps_per_temperature)

    f64 = tf.float64
    mean_np, tril_np = _whitening(proposal, d, seed)
    fns = _ais_functions(log_density_fn, proposal, kernel, jit_compile)
    mu, tril, betas = (tf.constant(a, f64) for a in (mean_np, tril_np, betas_np))
    settings = (tf.constant(leapfrog, tf.int32), tf.constant(n_inner, tf.int32),
                tf.constant(target_accept_rate, f64),
                tf.constant(adaptation_rate if adapt_step_size else 0.0, f64))

    num_groups = -(-m // batch_size)
    chunk = max(1, num_temps // 50) if progress else num_temps
    bar = _progbar(num_groups * num_temps, "temperature") if progress else None
    base = tf.constant(seed, tf.int64)
    all_log_w, acc_total, acc_count, bad_total, final_h = [], 0.0, 0.0, 0, []
    for g in range(num_groups):
        n = min(batch_size, m - g * batch_size)
        group_seed = tf.random.experimental.stateless_fold_in(base, g)
        init_seed, chain_seed = tf.unstack(tf.random.experimental.stateless_split(group_seed,
                                                                                  2))
        x0 = proposal.sample(n, seed=tf.cast(init_seed, tf.int32))
        state = (fns.init(x0, mu, tril), tf.zeros([n], f64),
                 tf.constant(math.log(step_size), f64), tf.constant(0.0, f64),
                 tf.constant(0.0, f64), tf.constant(0, tf.int64))
        for k0 in range(1, num_temps, chunk):
            k1 = min(k0 + chunk, num_temps)
            state = fns.advance(state, betas, tf.constant(k0, tf.int32),
                                tf.constant(k1, tf.int32), chain_seed, mu, tril, *settings)
            if bar is not None:
                bar.update(g * num_temps + k1 - 1)
        all_log_w.append(fns.finish(state, betas).numpy())
        if bar is not None:
            bar.update((g + 1) * num_temps)
        final_h.append(float(np.exp(state[2].numpy())))
        acc_total += float(state[3].numpy())
        acc_count += float(state[4].numpy())
        bad_total += int(state[5].numpy())
    log_w = np.concatenate(all_log_w)
    stats = _stats_update(_stats_init(), tf.constant(log_w))
    log_z, stderr, ess, m, n_nan = _finalize(stats, nan_policy)
    evaluations = m * (1 + (num_temps - 1) * n_inner * leapfrog)
    diagnostics = {
        "proposal": proposal.name, "kernel": kernel, "num_steps": num_temps,
        "schedule": schedule if isinstance(schedule, str) else "custom",
        "steps_per_temperature": n_inner, "num_leapfrog_steps": leapfrog,
        "acceptance_rate": acc_total / acc_count if acc_count else float("nan"),
        "final_step_size": float(np.mean(final_h)), "num_nonfinite_proposals": bad_total,
        "batch_size": batch_size,
    }
    return LogPartitionResult(log_z=log_z, stderr=stderr, ess=ess, num_samples=m,
                              method="ais", num_nonfinite=n_nan, num_evaluations=evaluations,
                              seed=tuple(int(s) for s in seed), diagnostics=diagnostics,
                              log_weights=log_w)


# ---------------------------------------------------------------------------- models
def _is_noise_conditional(model):
    from dde.models import NoiseConditionalDDE
    return isinstance(model, NoiseConditionalDDE)


def _check_model(model):
    from dde.models import EnergyModel
    if not isinstance(model, EnergyModel):
        raise TypeError(f"model must be a dde EnergyModel (DenoisingDensityEstimator or "
                        f"NoiseConditionalDDE), got {type(model).__name__}.")


def _model_input_dim(model):
    """The model's feature count d: from the built model, else from its network's input."""
    if model.built:
        return model.input_dim
    inputs = getattr(model.network, "inputs", None)
    try:
        d = inputs[0].shape[-1] if inputs else None
    except (AttributeError, IndexError, TypeError):
        d = None
    return None if d is None else int(d)


def _model_noise_std(model, noise_std):
    """σ of the density the model's f approximates (and, for a NoiseConditionalDDE, the
    noise level at which f(·, σ) is evaluated)."""
    if _is_noise_conditional(model):
        return model.sigma_min if noise_std is None else float(check_positive(noise_std,
                                                                              "noise_std"))
    if noise_std is not None:
        raise ValueError("noise_std selects the noise level of a NoiseConditionalDDE; a "
                         f"{type(model).__name__} has a single σ.")
    return float(model.noise_std.numpy())


def model_log_density_fn(model, noise_std: float | None = None):
    """f of an EnergyModel as a traceable function [batch, d] (any float) → [batch] float64.

    For a NoiseConditionalDDE it is f(·, σ) with σ = noise_std (default sigma_min).
    """
    _check_model(model)
    sigma = _model_noise_std(model, noise_std) if _is_noise_conditional(model) else None

    def log_density(x):
        xc = tf.cast(x, model.compute_dtype)
        col = model._sigma_column(xc, sigma)
        return tf.cast(model._energy(xc, col), tf.float64)

    return log_density


def estimate_model_log_partition(model, x_train=None, method: str = "is",
                                 proposal="gaussian", num_samples: int | None = None,
                                 batch_size: int | None = None, seed=None,
                                 noise_std: float | None = None, n_components: int = 8,
                                 proposal_scale: float = 1.0, proposal_df: float = 5.0,
                                 smoothing_std: float | None = None,
                                 **options) -> LogPartitionResult:
    """log Ẑ of an EnergyModel's `exp f` (the computation behind `model.normalize`).

    x_train [N, d]: the data the proposal is fitted to (not needed for a given Distribution).
    proposal: "gaussian" (full covariance), "student_t" (`proposal_df` degrees of freedom),
        "gmm" (`n_components` components), "smoothed" (σ-smoothed empirical mixture with
        σ = `smoothing_std`, default the model's σ) or a `tfd.Distribution` with event size
        d; `proposal_scale` inflates gaussian/student_t/gmm.
    num_samples / batch_size: default 100,000 / 8192 for IS, 1,000 chains / 4096 for AIS.
    seed: default the model's seed (so normalizing twice gives the same result).
    noise_std: for a NoiseConditionalDDE, the σ of f(·, σ) to normalize (default sigma_min).
    options: passed to `estimate_log_partition` (progress, nan_policy, min_ess, on_low_ess,
        AIS options).
    """
    _check_model(model)
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}; expected one of {METHODS}.")
    d = _model_input_dim(model)
    if x_train is not None:
        x_train = check_data(x_train, name="x_train", n_features=d,
                             owner=type(model).__name__, dtype=np.float64)
        d = x_train.shape[1]
    elif isinstance(proposal, tfd.Distribution):
        d = _event_size(proposal, d)
    else:
        raise ValueError(f"x_train is required to fit the {proposal!r} proposal.")
    model._ensure_built(d)
    sigma = _model_noise_std(model, noise_std)
    seed = model.seed if seed is None else seed
    seed_arr = _make_seed(seed)
    q = make_proposal(proposal, x_train, noise_std=sigma if smoothing_std is None
                      else smoothing_std, n_components=n_components, scale=proposal_scale,
                      df=proposal_df, seed=int(seed_arr[1]) % (2**31 - 1), input_dim=d)
    num_samples = DEFAULT_NUM_SAMPLES[method] if num_samples is None else num_samples
    batch_size = DEFAULT_BATCH_SIZE[method] if batch_size is None else batch_size
    fn = model_log_density_fn(model, noise_std)
    result = estimate_log_partition(fn, q, num_samples, batch_size=batch_size, seed=seed_arr,
                                    method=method, **options)
    diagnostics = dict(result.diagnostics)
    diagnostics.update({"proposal": proposal if isinstance(proposal, str) else q.name,
                        "noise_std": sigma})
    if isinstance(proposal, str) and proposal != "smoothed":
        diagnostics["proposal_scale"] = proposal_scale
    if proposal == "gmm":
        diagnostics["n_components"] = n_components
    if proposal == "student_t":
        diagnostics["df"] = proposal_df
    if proposal == "smoothed":
        diagnostics["smoothing_std"] = sigma if smoothing_std is None else smoothing_std
    return dataclasses.replace(result, diagnostics=diagnostics)


def average_log_likelihood(model, x_test, noise_std: float | None = None,
                           batch_size: int = 8192) -> AverageLogLikelihood:
    """Average log-likelihood of x_test [n, d] under a normalized model:
    mean_j f(x_j) − log Ẑ ± sqrt(Var_j f(x_j)/n + se(log Ẑ)²) (Var with ddof 1; NaN for n=1).

    Raises RuntimeError if the model is not normalized (`model.normalize`), ValueError if its
    log Ẑ belongs to another σ (see `EnergyModel.normalized_noise_std`).
    noise_std: for a NoiseConditionalDDE, the σ to evaluate at; it must be the one log Ẑ was
    estimated at (default: that σ).
    """
    _check_model(model)
    if not model.is_normalized:
        raise RuntimeError(
            f"This {type(model).__name__} is not normalized: call model.normalize(x_train, "
            "...) (or `dde normalize`) before computing a log-likelihood.")
    x = check_data(x_test, name="x_test", n_features=_model_input_dim(model),
                   owner=type(model).__name__, dtype=np.float32)
    _model_noise_std(model, noise_std)  # rejects noise_std for a single-σ model
    from dde.models import EnergyModel

    # f(x) − log Ẑ at the σ log Ẑ was estimated at (EnergyModel.log_prob checks it)
    f = check_finite_results(
        EnergyModel.log_prob(model, x, noise_std=noise_std, batch_size=batch_size),
        "model's log-density")
    log_z = float(model.log_z.numpy())
    se_z = float(model.log_z_stderr.numpy())
    n = len(f)
    test_se = float(np.std(f, ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    se_z_term = se_z if np.isfinite(se_z) else 0.0
    return AverageLogLikelihood(mean=float(f.mean()),
                                stderr=math.sqrt(test_se**2 + se_z_term**2), n=n,
                                test_stderr=test_se, log_z=log_z, log_z_stderr=se_z)
