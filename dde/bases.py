"""Base densities of base-density energies `f(x) = log q(x) + g(x)`.

A base q is a normalized, tractable density fitted to the training data before the residual
g is trained. It gives an energy model a controlled mass: the untrained model *is* q, IS
with q itself as the proposal has weights exp g (bounded when g is), and the residual only
has to learn what q misses.

`GaussianMixtureBase` — q = Σ_k π_k N(μ_k, Σ_k) (one component: a full-covariance Gaussian),
as a Keras layer whose parameters are non-trainable weights (saved with the model). It is
smoothed exactly at any noise level: q * N(0, σ²I) = Σ_k π_k N(μ_k, Σ_k + σ²I). Covariances are
kept as eigendecompositions Σ_k = U_k diag(λ_k) U_kᵀ, so that a σ per example costs no new
factorization:

    log N(x; μ, Σ + σ²I) = −½ Σ_j [ (U_kᵀ(x − μ))_j² / (λ_j + σ²) + log(2π(λ_j + σ²)) ].

`fit_gaussian_base(x)` and `fit_mixture_base(x, x_validation)` fit one (the mixture's
component count chosen on validation data). `FlowBase` makes a fitted normalizing flow of
`dde.flows` a base (saved with the model; not smoothable). `DistributionBase` wraps any
`tfp.distributions.Distribution` for use in memory: it is not smoothed and cannot be saved.
`as_base(obj)` converts Gaussian and Gaussian-mixture distributions (TFP or scikit-learn) to
the serializable layer, a flow to a `FlowBase`, and wraps the rest. `smoothable` says whether
a base can be smoothed at a noise level. Every base has
`log_prob(x, noise_std=None)` (tensor level, [batch, d] → [batch]), `sample(n, seed,
noise_std=None)` and `as_distribution(noise_std=None)` (a float64 `tfd.Distribution`, the
proposal of normalization).
"""
from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from dde._validation import check_data, check_positive
from dde.flows import NormalizingFlow

tfd = tfp.distributions

__all__ = ["DistributionBase", "FlowBase", "GaussianMixtureBase", "as_base",
           "fit_gaussian_base", "fit_mixture_base"]


def _noise_column(x, noise_std):
    """σ as a [batch, 1] column of x's dtype (0 when None)."""
    if noise_std is None:
        return tf.zeros([tf.shape(x)[0], 1], x.dtype)
    sigma = tf.cast(noise_std, x.dtype)
    if sigma.shape.rank == 0:
        return tf.fill([tf.shape(x)[0], 1], sigma)
    return tf.reshape(sigma, [-1, 1])


@keras.saving.register_keras_serializable(package="dde")
class GaussianMixtureBase(keras.layers.Layer):
    """q(x) = Σ_k π_k N(x; μ_k, Σ_k), exactly smoothable (see the module docstring).

    Constructed with its shapes (`num_components`, `input_dim`); the parameters are set by
    `set_parameters(weights [K], means [K, d], covariances [K, d, d])` or come with a loaded
    model. `log_prob(x, noise_std)` is differentiable in x; it computes in float64 whatever
    x's dtype and returns x's dtype.
    """

    smoothable = True

    def __init__(self, num_components: int, input_dim: int, **kwargs):
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        self.num_components = int(check_positive(num_components, "num_components",
                                                 integer=True))
        self.input_dim = int(check_positive(input_dim, "input_dim", integer=True))
        k, d = self.num_components, self.input_dim
        nan = keras.initializers.Constant(float("nan"))
        self.log_weights = self.add_weight(shape=(k,), dtype="float64", trainable=False,
                                           name="log_weights", initializer=nan)
        self.means = self.add_weight(shape=(k, d), dtype="float64", trainable=False,
                                     name="means", initializer=nan)
        self.eigenvalues = self.add_weight(shape=(k, d), dtype="float64", trainable=False,
                                           name="eigenvalues", initializer=nan)
        self.eigenvectors = self.add_weight(shape=(k, d, d), dtype="float64", trainable=False,
                                            name="eigenvectors", initializer=nan)
        self.built = True

    # ------------------------------------------------------------------------- parameters
    def set_parameters(self, weights, means, covariances) -> "GaussianMixtureBase":
        """Set π [K] (positive, normalized here), μ [K, d] and Σ [K, d, d] (symmetric
        positive definite). Raises ValueError for shapes, non-finite values or a covariance
        that is not positive definite (a collapsed component)."""
        k, d = self.num_components, self.input_dim
        w = np.asarray(weights, np.float64).reshape(-1)
        mu = np.asarray(means, np.float64).reshape(k, d) if np.size(means) == k * d else None
        cov = np.asarray(covariances, np.float64)
        if w.shape != (k,) or mu is None or cov.shape != (k, d, d):
            raise ValueError(f"Expected weights [{k}], means [{k}, {d}] and covariances "
                             f"[{k}, {d}, {d}]; got {w.shape}, {np.shape(means)} and "
                             f"{cov.shape}.")
        if not (np.isfinite(w).all() and np.isfinite(mu).all() and np.isfinite(cov).all()):
            raise ValueError("The mixture parameters must be finite.")
        if np.any(w <= 0):
            raise ValueError(f"The mixture weights must be positive, got {w.tolist()}.")
        lam, vec = np.linalg.eigh(0.5 * (cov + np.swapaxes(cov, 1, 2)))
        if np.any(lam <= 0):
            bad = sorted(set(np.nonzero(lam <= 0)[0].tolist()))
            raise ValueError(f"The covariance of component(s) {bad} is not positive definite "
                             "(a collapsed component or degenerate data); fit with more "
                             "regularization (reg_covar) or fewer components.")
        self.log_weights.assign(np.log(w / w.sum()))
        self.means.assign(mu)
        self.eigenvalues.assign(lam)
        self.eigenvectors.assign(vec)
        return self

    @property
    def is_set(self) -> bool:
        """Whether the parameters have been set."""
        return bool(np.isfinite(self.log_weights.numpy()).all())

    def covariances(self) -> np.ndarray:
        """Σ_k [K, d, d] (NumPy)."""
        vec, lam = self.eigenvectors.numpy(), self.eigenvalues.numpy()
        return np.einsum("kij,kj,klj->kil", vec, lam, vec)

    # --------------------------------------------------------------------- density
    def log_prob(self, x, noise_std=None):
        """log q_σ(x) = log Σ_k π_k N(x; μ_k, Σ_k + σ²I): x [batch, d], noise_std None (σ = 0),
        a scalar or [batch] → [batch] in x's dtype."""
        x64 = tf.cast(x, tf.float64)
        var_noise = tf.square(_noise_column(x64, noise_std))[:, None, :]  # [b, 1, 1]
        diff = x64[:, None, :] - self.means[None]  # [b, K, d]
        proj = tf.einsum("bkd,kde->bke", diff, self.eigenvectors)  # U_kᵀ(x − μ_k)
        var = self.eigenvalues[None] + var_noise  # [b, K, d]
        log_comp = -0.5 * tf.reduce_sum(tf.square(proj) / var + tf.math.log(2 * math.pi * var),
                                        axis=-1)
        return tf.cast(tf.reduce_logsumexp(self.log_weights[None] + log_comp, axis=-1), x.dtype)

    def call(self, x, noise_std=None):
        return self.log_prob(x, noise_std)

    def as_distribution(self, noise_std=None) -> tfd.Distribution:
        """q_σ as a float64 `tfd.Distribution` (a MultivariateNormalTriL for one component,
        a MixtureSameFamily otherwise): the proposal of normalization."""
        sigma2 = 0.0 if noise_std is None else float(noise_std) ** 2
        cov = self.covariances() + sigma2 * np.eye(self.input_dim)
        trils = np.linalg.cholesky(cov)
        if self.num_components == 1:
            return tfd.MultivariateNormalTriL(tf.constant(self.means.numpy()[0]),
                                              tf.constant(trils[0]), name="GaussianBase")
        return tfd.MixtureSameFamily(
            tfd.Categorical(logits=tf.constant(self.log_weights.numpy())),
            tfd.MultivariateNormalTriL(tf.constant(self.means.numpy()), tf.constant(trils)),
            name="GaussianMixtureBase")

    def sample(self, n, seed, noise_std=None):
        """n draws of q_σ [n, d] (float64 tensor, traceable): a component k by its weight,
        then μ_k + U_k (sqrt(λ_k + σ²) ⊙ ε); seed: a stateless seed [2]."""
        s_comp, s_noise = tf.unstack(tf.random.experimental.stateless_split(
            tf.cast(seed, tf.int64), 2))
        k = tf.random.stateless_categorical(self.log_weights[None], n, s_comp)[0]
        eps = tf.random.stateless_normal([n, self.input_dim], s_noise, dtype=tf.float64)
        var = tf.gather(self.eigenvalues, k)
        if noise_std is not None:
            var = var + tf.square(tf.cast(noise_std, tf.float64))
        return tf.gather(self.means, k) + tf.einsum("nij,nj->ni", tf.gather(self.eigenvectors, k),
                                                    tf.sqrt(var) * eps)

    def get_config(self):
        return {**super().get_config(), "num_components": self.num_components,
                "input_dim": self.input_dim}


def _check_unsmoothed(noise_std, owner):
    if noise_std is not None and not (isinstance(noise_std, (int, float)) and
                                      noise_std == 0):
        raise ValueError(f"A {owner} cannot be smoothed at a noise level; use a "
                         "GaussianMixtureBase (exactly smoothable) or noise_std=None.")


class _FlowDistribution(tfd.Distribution):
    """A `dde.flows.NormalizingFlow` as a float64 `tfd.Distribution` (for proposals)."""

    def __init__(self, flow, name="FlowBase"):
        parameters = dict(locals())
        self._flow = flow
        super().__init__(dtype=tf.float64, reparameterization_type=tfd.NOT_REPARAMETERIZED,
                         validate_args=False, allow_nan_stats=True, parameters=parameters,
                         name=name)

    @classmethod
    def _parameter_properties(cls, dtype, num_classes=None):
        return {}

    def _batch_shape(self):
        return tf.TensorShape([])

    def _batch_shape_tensor(self):
        return tf.constant([], tf.int32)

    def _event_shape(self):
        return tf.TensorShape([self._flow.input_dim])

    def _event_shape_tensor(self):
        return tf.constant([self._flow.input_dim], tf.int32)

    def _log_prob(self, x):
        return tf.cast(self._flow.log_prob_tensor(tf.cast(x, self._flow.compute_dtype)),
                       tf.float64)

    def _sample_n(self, n, seed=None):
        seed = tf.cast(tfp.random.sanitize_seed(seed), tf.int64)
        return tf.cast(self._flow.sample_tensor(n, seed), tf.float64)


@keras.saving.register_keras_serializable(package="dde")
class FlowBase(keras.layers.Layer):
    """A fitted normalizing flow (`dde.flows.NormalizingFlow`) as a base density: exact
    log-density and sampling, saved with the model, not smoothable (a base-density model
    with a flow base needs `smooth_base=False`, e.g. the likelihood objective). The flow is
    frozen (`trainable = False`), as every base is: training the model trains g only, and
    no gradient flows through the flow's samples."""

    smoothable = False

    def __init__(self, flow, **kwargs):
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        if isinstance(flow, dict):
            flow = keras.saving.deserialize_keras_object(flow)
        if not isinstance(flow, NormalizingFlow):
            raise TypeError(f"flow must be a dde.flows.NormalizingFlow, got "
                            f"{type(flow).__name__}.")
        flow.trainable = False
        self.flow = flow
        self.input_dim = flow.input_dim
        self.built = True

    def log_prob(self, x, noise_std=None):
        _check_unsmoothed(noise_std, "FlowBase")
        return tf.cast(self.flow.log_prob_tensor(tf.cast(x, self.flow.compute_dtype)), x.dtype)

    def call(self, x, noise_std=None):
        return self.log_prob(x, noise_std)

    def as_distribution(self, noise_std=None):
        _check_unsmoothed(noise_std, "FlowBase")
        return _FlowDistribution(self.flow)

    def sample(self, n, seed, noise_std=None):
        _check_unsmoothed(noise_std, "FlowBase")
        return tf.stop_gradient(
            tf.cast(self.flow.sample_tensor(n, tf.cast(seed, tf.int64)), tf.float64))

    def get_config(self):
        return {**super().get_config(), "flow": keras.saving.serialize_keras_object(self.flow)}


class DistributionBase:
    """Any `tfp.distributions.Distribution` with a vector event [d] as a base, in memory: it
    is not smoothed (a `noise_std` other than None or 0 is a ValueError) and a model holding
    it cannot be saved to `.keras` (use `GaussianMixtureBase` or `FlowBase` for that)."""

    smoothable = False

    def __init__(self, distribution):
        if not isinstance(distribution, tfd.Distribution):
            raise TypeError(f"Expected a tfp.distributions.Distribution, got "
                            f"{type(distribution).__name__}.")
        event = distribution.event_shape
        if event.rank != 1 or event[0] is None or distribution.batch_shape.rank != 0:
            raise ValueError(f"The base must be one distribution with a vector event [d], got "
                             f"batch_shape {distribution.batch_shape}, event_shape {event}.")
        self.distribution = distribution
        self.input_dim = int(event[0])

    @staticmethod
    def _check_noise(noise_std):
        _check_unsmoothed(noise_std, "DistributionBase")

    def log_prob(self, x, noise_std=None):
        self._check_noise(noise_std)
        return tf.cast(self.distribution.log_prob(tf.cast(x, self.distribution.dtype)),
                       x.dtype)

    __call__ = log_prob

    def as_distribution(self, noise_std=None):
        self._check_noise(noise_std)
        return self.distribution

    def sample(self, n, seed, noise_std=None):
        self._check_noise(noise_std)
        return self.distribution.sample(n, seed=seed)


# ------------------------------------------------------------------------------ fitting
def _gaussian_mixture_from_sklearn(gmm) -> GaussianMixtureBase:
    k, d = gmm.means_.shape
    cov = gmm.covariances_
    if gmm.covariance_type == "tied":
        cov = np.broadcast_to(cov, (k, d, d))
    elif gmm.covariance_type == "diag":
        cov = np.stack([np.diag(c) for c in cov])
    elif gmm.covariance_type == "spherical":
        cov = np.stack([c * np.eye(d) for c in cov])
    return GaussianMixtureBase(k, d).set_parameters(gmm.weights_, gmm.means_, cov)


def fit_gaussian_base(x, reg_covar: float = 1e-6) -> GaussianMixtureBase:
    """The full-covariance Gaussian N(mean, Cov + reg·I) of x [N, d] (N ≥ 2), reg relative to
    the mean variance, as a one-component `GaussianMixtureBase`."""
    x = check_data(x, name="x", dtype=np.float64)
    if len(x) < 2:
        raise ValueError("A Gaussian base needs at least 2 training points.")
    cov = np.atleast_2d(np.cov(x, rowvar=False))
    cov = cov + reg_covar * max(float(np.mean(np.diag(cov))), 1e-300) * np.eye(x.shape[1])
    return GaussianMixtureBase(1, x.shape[1]).set_parameters([1.0], x.mean(0)[None], cov[None])


def fit_mixture_base(x, x_validation=None, n_components=(1, 2, 4, 8, 16, 32),
                     covariance_type: str = "full", max_iter: int = 200, patience: int = 2,
                     seed: int = 0, max_fit_points: int | None = 100_000):
    """A Gaussian mixture base fitted by scikit-learn's EM on x [N, d].

    n_components: an int, or candidate counts tried in increasing order; with x_validation
    [n, d] the count with the best validation log-likelihood is kept (stopping after
    `patience` counts without improvement, and before a mixture would have more parameters
    than training values); without it, the largest candidate. A fit that meets a collapsed
    component is repeated with a larger `reg_covar` (1e-6, 1e-4, 1e-2 relative to the mean
    variance) before giving up with a ValueError. Returns (GaussianMixtureBase, {count:
    validation log-likelihood}).
    """
    from sklearn.mixture import GaussianMixture

    x = check_data(x, name="x", dtype=np.float64)
    n, d = x.shape
    if x_validation is not None:
        x_validation = check_data(x_validation, name="x_validation", n_features=d,
                                  dtype=np.float64)
    counts = [int(n_components)] if np.isscalar(n_components) else [int(k) for k in
                                                                     n_components]
    rng = np.random.default_rng(seed)
    fit_x = x if max_fit_points is None or n <= max_fit_points else x[
        rng.choice(n, max_fit_points, replace=False)]
    scale = float(np.mean(np.var(fit_x, axis=0))) or 1.0
    per_component = d + d * (d + 1) / 2 + 1
    scores, models, bad = {}, {}, 0
    for k in counts:
        if k > len(fit_x) or (k > 1 and k * per_component > n * d):
            break
        gmm = None
        for reg in (1e-6, 1e-4, 1e-2):
            try:
                gmm = GaussianMixture(k, covariance_type=covariance_type, max_iter=max_iter,
                                      reg_covar=reg * scale, random_state=seed).fit(fit_x)
                base = _gaussian_mixture_from_sklearn(gmm)
                break
            except ValueError:
                gmm = None
        if gmm is None:
            raise ValueError(f"The {k}-component mixture collapsed even with reg_covar = "
                             "1e-2 of the mean variance: the data may be degenerate.")
        models[k] = base
        if x_validation is None:
            continue
        scores[k] = float(np.mean(gmm.score_samples(x_validation)))
        bad = 0 if scores[k] >= max(scores.values()) else bad + 1
        if bad >= patience:
            break
    if not models:
        raise ValueError(f"Too few training points ({n}) for a mixture of {counts[0]}.")
    best = max(scores, key=scores.get) if scores else max(models)
    return models[best], scores


def as_base(obj):
    """A base from a base layer (returned as it is), a `dde.flows.NormalizingFlow` (a
    `FlowBase`), a fitted scikit-learn GaussianMixture,
    a TFP Gaussian (MultivariateNormalTriL / FullCovariance / Diag / LinearOperator) or a
    MixtureSameFamily of them (converted to a serializable `GaussianMixtureBase`), or any
    other `tfd.Distribution` (wrapped in a `DistributionBase`)."""
    if isinstance(obj, (GaussianMixtureBase, FlowBase, DistributionBase)):
        return obj
    if isinstance(obj, NormalizingFlow):
        return FlowBase(obj)
    if hasattr(obj, "means_") and hasattr(obj, "covariances_") and hasattr(obj, "weights_"):
        return _gaussian_mixture_from_sklearn(obj)
    if isinstance(obj, tfd.Distribution):
        gaussian = (tfd.MultivariateNormalTriL, tfd.MultivariateNormalFullCovariance,
                    tfd.MultivariateNormalDiag, tfd.MultivariateNormalLinearOperator)
        if isinstance(obj, gaussian) and obj.batch_shape.rank == 0:
            d = int(obj.event_shape[0])
            return GaussianMixtureBase(1, d).set_parameters(
                [1.0], np.asarray(obj.mean())[None], np.asarray(obj.covariance())[None])
        if (isinstance(obj, tfd.MixtureSameFamily) and obj.batch_shape.rank == 0
                and isinstance(obj.components_distribution, gaussian)):
            comps = obj.components_distribution
            probs = np.asarray(obj.mixture_distribution.probs_parameter())
            k, d = np.asarray(comps.mean()).shape
            return GaussianMixtureBase(k, d).set_parameters(probs, np.asarray(comps.mean()),
                                                            np.asarray(comps.covariance()))
        return DistributionBase(obj)
    raise TypeError(f"Cannot use {type(obj).__name__} as a base density: pass a "
                    "GaussianMixtureBase, a scikit-learn GaussianMixture or a "
                    "tfp.distributions.Distribution.")
