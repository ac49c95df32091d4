"""Proposal densities for importance sampling and AIS, and their registry.

Each proposal is a `tfp.distributions.Distribution` with event shape [d] whose `log_prob`
is the full joint log-density (a sum over dimensions, never a mean). The named ones are
fitted to training data x_train [N, d] and registered in `PROPOSALS` (name → builder
`builder(x_train, *, seed, dtype, **options)`); `make_proposal(name, x_train,
**proposal_options)` builds one, and any `tfd.Distribution` can be given instead.

- "gaussian": full-covariance N(mean, scale²·Cov) (`gaussian_proposal`);
- "student_t": multivariate Student-t with the data's mean and covariance
  (`student_t_proposal`; polynomial tails bound the weights of energies that decay only
  linearly far from the data, as MLP energies do);
- "gmm": a Gaussian mixture fitted by scikit-learn's EM (`gaussian_mixture_proposal`);
- "smoothed": the σ-smoothed empirical mixture (1/N) Σ N(x_j, σ²I) — the very density a DDE
  of noise level σ approximates (`smoothed_empirical_proposal`).
"""
from __future__ import annotations

import inspect

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from dde._registry import Registry
from dde._validation import check_data, check_positive

tfd = tfp.distributions

PROPOSALS = Registry("proposal")


def _check_train(x_train, name="x_train", n_features=None):
    return check_data(x_train, name=name, n_features=n_features, owner="the model",
                      dtype=np.float64)


def cholesky_factor(cov, scale: float = 1.0, name: str = "the covariance") -> np.ndarray:
    """Lower Cholesky factor of scale²·cov (symmetrized; a growing jitter on the diagonal for
    semi-definite input); ValueError naming `name` when it is not positive definite."""
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


def gaussian_from_moments(mean, cov, scale: float = 1.0, dtype=tf.float64,
                          name: str = "GaussianProposal") -> tfd.Distribution:
    """N(mean, scale²·cov) as a `tfd.MultivariateNormalTriL` (mean [d], cov [d, d])."""
    mean = np.asarray(mean, dtype=np.float64).reshape(-1)
    cov = np.atleast_2d(np.asarray(cov, dtype=np.float64))
    if cov.shape != (len(mean), len(mean)):
        raise ValueError(f"cov must have shape [d, d] = {(len(mean),) * 2}, got {cov.shape}.")
    tril = cholesky_factor(cov, scale, "the covariance")
    return tfd.MultivariateNormalTriL(loc=tf.constant(mean, dtype),
                                      scale_tril=tf.constant(tril, dtype), name=name)


@PROPOSALS.register("gaussian")
def gaussian_proposal(x_train, scale: float = 1.0, dtype=tf.float64,
                      seed=None) -> tfd.Distribution:
    """Full-covariance Gaussian N(mean, scale²·Cov) fitted to x_train [N, d] (N ≥ 2).

    `scale` > 1 inflates the proposal (heavier coverage of the tails keeps IS weights bounded).
    """
    x = _check_train(x_train)
    check_positive(scale, "scale")
    if len(x) < 2:
        raise ValueError("gaussian_proposal needs at least 2 training points.")
    cov = np.atleast_2d(np.cov(x, rowvar=False))
    tril = cholesky_factor(cov, scale, "x_train")
    return tfd.MultivariateNormalTriL(loc=tf.constant(x.mean(0), dtype),
                                      scale_tril=tf.constant(tril, dtype),
                                      name="GaussianProposal")


@PROPOSALS.register("student_t")
def student_t_proposal(x_train, df: float = 5.0, scale: float = 1.0,
                       dtype=tf.float64, seed=None) -> tfd.Distribution:
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
    tril = cholesky_factor(cov, scale, "x_train")
    return tfd.MultivariateStudentTLinearOperator(
        df=tf.constant(df, dtype), loc=tf.constant(x.mean(0), dtype),
        scale=tf.linalg.LinearOperatorLowerTriangular(tf.constant(tril, dtype)),
        name="StudentTProposal")


@PROPOSALS.register("gmm")
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
    trils = np.stack([cholesky_factor(c, scale, f"mixture component {i}")
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


@PROPOSALS.register("smoothed")
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


def event_size(proposal, input_dim=None) -> int:
    """The event size d of a single-distribution proposal with a vector event (checked
    against `input_dim`); TypeError/ValueError naming the problem otherwise."""
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


def proposal_option_names(name: str) -> tuple:
    """The options (keyword arguments) the registered proposal `name` takes."""
    params = inspect.signature(PROPOSALS.lookup(name)).parameters
    return tuple(p for p in list(params)[1:] if p not in ("seed", "dtype"))


def make_proposal(proposal, x_train=None, *, seed: int | None = 0,
                  input_dim: int | None = None, dtype=tf.float64,
                  **proposal_options) -> tfd.Distribution:
    """A proposal from its registered name (see `PROPOSALS`) fitted to x_train [N, d], or a
    given `tfd.Distribution` checked for a vector event of size `input_dim`.

    proposal_options: the named builder's own keyword arguments (gaussian: scale;
    student_t: df, scale; gmm: n_components, scale, covariance_type, max_fit_points;
    smoothed: noise_std, max_points, chunk_size). An option the builder does not take is a
    TypeError naming it.
    """
    if isinstance(proposal, str):
        name = proposal.lower()
        if name not in PROPOSALS:
            raise ValueError(f"Unknown proposal {proposal!r}; expected one of "
                             f"{PROPOSALS.names()} or a tfp.distributions.Distribution.")
        if x_train is None:
            raise ValueError(f"The {name!r} proposal is fitted to training data: pass x_train.")
        x = _check_train(x_train, n_features=input_dim)
        builder = PROPOSALS.lookup(name)
        params = inspect.signature(builder).parameters
        options = proposal_option_names(name)
        unknown = sorted(set(proposal_options) - set(options))
        if unknown:
            raise TypeError(f"The {name!r} proposal has no option {unknown}; its options are "
                            f"{options}.")
        missing = [p for p in options if params[p].default is inspect.Parameter.empty
                   and p not in proposal_options]
        if missing:
            raise ValueError(f"The {name!r} proposal needs {missing}.")
        return builder(x, seed=seed, dtype=dtype, **proposal_options)
    event_size(proposal, input_dim)
    return proposal
