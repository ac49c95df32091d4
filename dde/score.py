"""A time-conditioned score network `s_θ(x, t) ≈ ∇ₓ log p_t(x)` for a diffusion SDE.

Trained by denoising score matching over t ∈ [T_ε, T]: with x₀ ~ data, z ~ N(0, I),
x_t = α_t x₀ + σ_t z (the SDE's perturbation kernel),

    L(θ) = E_{t~U[T_ε,T]} λ(t) E ‖s_θ(x_t, t) + z/σ_t‖²,

with λ(t) = σ_t² ("sigma2", for sample quality) or λ(t) = g(t)² ("beta": β(t) for the VP-SDE,
the likelihood weighting whose objective bounds the negative log-likelihood). The loss is
per example summed over dimensions and averaged over the batch.

Output parameterization. By default (`scale_by_std=False`) the network outputs the score
itself, s_θ = net([x, t]), fed the time t. Near t = 0 the score of smooth data tends to the data
score, and a network that sees t ≈ 0 as one input shares that function over all small t; its
errors enter the probability flow unamplified. The common alternative, s_θ = net/σ_t
(`scale_by_std=True`: a noise predictor, O(1) outputs at every t), multiplies any error of net
by 1/σ_t — about 10³ at T_ε = 1e-5 for the VP-SDE — which on the 1-D mixture of the
probability-flow notebook gave markedly worse likelihoods for the same training budget. With
`condition="log_noise"` the network sees log(σ_t/α_t) (the log of the effective noise level,
monotone in t for both SDEs) mapped linearly from its range over [T_ε, T] to [0, 1] instead of t.

The likelihood weighting has a 1/σ_t² singularity at t → 0 under uniform time sampling;
`time_sampling="importance"` (the default with "beta") draws t ∝ g²/σ² instead and reweights,
the same objective in expectation with far smaller variance.
"""
from __future__ import annotations

import warnings

import keras
import numpy as np
import tensorflow as tf

import dde.partition as partition
from dde._cache import compiled_function, weak
from dde._tensors import as_column
from dde._validation import check_data, check_positive
from dde.nets import score_mlp
from dde.protocols import NoiseConditionalLike
from dde.sde import VESDE, check_time_interval, check_times, get_sde
from dde.training import DSMModel, weighted_mean

_INFERENCE_BATCH = 8192
_WEIGHTINGS = ("sigma2", "beta")
_TIME_SAMPLING = ("uniform", "importance")
_CONDITIONS = ("log_noise", "time")


def as_score_fn(score):
    """A callable score_fn(x, t) → [n, d] from a score model or a callable.

    Objects with a `score_tensor(x, t)` method (ScoreNetwork, DDEScore) use it; other
    callables are returned unchanged.
    """
    method = getattr(score, "score_tensor", None)
    if callable(method):
        return method
    if callable(score):
        return score
    raise TypeError(f"Expected a score model or a callable score_fn(x, t), got {score!r}.")


@keras.saving.register_keras_serializable(package="dde")
class ScoreNetwork(DSMModel):
    """Score model s(x, t) for an SDE, trained with `fit` by denoising score matching.

    Args:
        network: a Keras model `[x, c] → [batch, d]` (x: [batch, d], c: [batch, 1]); None
            builds `dde.nets.score_mlp(d)` when the data dimension is first seen.
        sde: an `SDE` (`VPSDE()`, `VESDE(...)`) or a name ("vp", "ve").
        eps: T_ε > 0, the smallest training time (t ~ [T_ε, T]).
        weighting: "sigma2" (λ = σ_t²) or "beta" (λ = g(t)², the likelihood weighting).
        time_sampling: "uniform" or "importance" (t ∝ g²/σ², reweighted); default
            "importance" for "beta", "uniform" for "sigma2".
        scale_by_std: parameterize s = net/σ_t instead of s = net (see module docstring).
        condition: "time" (feed t) or "log_noise" (feed log(σ_t/α_t) mapped to [0, 1]).
        seed: seed of the training noise (stateless per step).

    `model([x, t])` → s [batch, d]; `score_tensor(x, t)` (tensor level, t scalar or [n]);
    `score(x, t)` (validated NumPy).

    Example:
        model = ScoreNetwork(sde=VPSDE(), weighting="beta")
        model.compile(optimizer=keras.optimizers.Adam(1e-3))
        model.fit(x_train, epochs=100, batch_size=256)
        result = dde.likelihood.probability_flow_log_prob(model, model.sde, x_test)
    """

    def __init__(self, network=None, sde="vp", eps: float = 1e-5, weighting: str = "sigma2",
                 time_sampling: str | None = None, scale_by_std: bool = False,
                 condition: str = "time", seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if network is not None and not isinstance(network, keras.layers.Layer):
            raise TypeError(f"network must be a Keras layer or model (or None), got "
                            f"{type(network)!r}.")
        self.network = network
        self.sde = get_sde(sde)
        self.eps = check_time_interval(eps, self.sde.T)
        if weighting not in _WEIGHTINGS:
            raise ValueError(f"weighting must be one of {_WEIGHTINGS}, got {weighting!r}.")
        self.weighting = weighting
        if time_sampling is None:
            time_sampling = "importance" if weighting == "beta" else "uniform"
        if time_sampling not in _TIME_SAMPLING:
            raise ValueError(f"time_sampling must be one of {_TIME_SAMPLING}, got "
                             f"{time_sampling!r}.")
        self.time_sampling = time_sampling
        if time_sampling == "importance":  # fail early if the SDE has no sampler
            self.sde.importance_time_sampling(tf.constant([0.5], tf.float32), self.eps)
        if condition not in _CONDITIONS:
            raise ValueError(f"condition must be one of {_CONDITIONS}, got {condition!r}.")
        self.condition = condition
        # log(σ_t/α_t) at T_ε and T: the network input is this quantity mapped to [0, 1].
        self._log_noise_range = tuple(
            float(self.sde.log_noise(tf.constant(v, tf.float64))) for v in (self.eps, self.sde.T))
        self.scale_by_std = bool(scale_by_std)
        self._init_training(seed)

    # ----------------------------------------------------------------------------- building
    def build(self, input_shape):
        if self.built:
            return
        x_shape = input_shape[0] if isinstance(input_shape[0], (list, tuple)) else input_shape
        d = x_shape[-1]
        if d is None:
            raise ValueError("The feature dimension of the input must be known.")
        self.input_dim = int(d)
        if self.network is None:
            self.network = score_mlp(self.input_dim)
        if not self.network.built:
            self.network.build([(None, self.input_dim), (None, 1)])
        self.built = True

    def ensure_built(self, input_dim: int):
        """Build the model for inputs of `input_dim` features if it is not built yet."""
        if not self.built:
            self.build([(None, input_dim), (None, 1)])

    # ------------------------------------------------------------------------- tensor level
    def _condition(self, t):
        """The network's time input c_t: [n] → [n, 1]."""
        if self.condition == "time":
            return as_column(t)
        c = self.sde.log_noise(t)
        lo, hi = self._log_noise_range
        return as_column((c - tf.cast(lo, c.dtype)) / tf.cast(hi - lo, c.dtype))

    def _raw(self, x, t, training=False):
        """(net([x, c_t]) [n, d], σ_t [n]) with t [n] in x's dtype."""
        out = self.network([x, self._condition(t)], training=training)
        _, std = self.sde.marginal_coefficients(t)
        return tf.cast(out, x.dtype), std

    def call(self, inputs, training=False):
        """s([x, t]): x [batch, d], t [batch] or [batch, 1] → [batch, d]."""
        x, t = inputs
        x = tf.cast(x, self.compute_dtype)
        t = tf.reshape(tf.cast(t, x.dtype), [-1])
        t = tf.broadcast_to(t, tf.shape(x)[:1])
        out, std = self._raw(x, t, training=training)
        if self.scale_by_std:
            out = out / std[:, None]
        return out

    def score_tensor(self, x, t):
        """Tensor level: s(x, t) with t a scalar or [n]; computed in the model's dtype and
        returned in x's dtype. [n, d] → [n, d]."""
        x_in = tf.cast(x, self.compute_dtype)
        t = tf.broadcast_to(tf.reshape(tf.cast(t, self.compute_dtype), [-1]),
                            tf.shape(x_in)[:1])
        return tf.cast(self([x_in, t], training=False), x.dtype)

    def dsm_loss(self, x, seed, sample_weight=None, training=False):
        """Denoising score-matching loss of a batch x [batch, d] with times and noise drawn
        from `seed` ([2]); per example λ(t)‖s(x_t, t) + z/σ_t‖² (reweighted when times are
        importance-sampled), weighted mean over the batch."""
        seeds = tf.random.experimental.stateless_split(seed, 2)
        n = tf.shape(x)[0]
        u = tf.random.stateless_uniform([n], seeds[0], dtype=x.dtype)
        T, eps = self.sde.T, self.eps
        if self.time_sampling == "importance":
            t, norm = self.sde.importance_time_sampling(u, eps)
            t = tf.cast(t, x.dtype)
            g2 = tf.cast(self.sde.diffusion_squared(t), x.dtype)
        else:
            t = eps + u * (T - eps)
        z = tf.random.stateless_normal(tf.shape(x), seeds[1], dtype=x.dtype)
        alpha, std = self.sde.marginal_coefficients(t)
        x_t = alpha[:, None] * x + std[:, None] * z
        out, std = self._raw(x_t, t, training=training)
        scaled = out if self.scale_by_std else std[:, None] * out  # σ_t s
        residual = tf.reduce_sum(tf.square(scaled + z), axis=-1)  # σ² ‖s + z/σ‖²
        # Per-example weight w(t) with λ(t)‖s + z/σ‖² = w(t) · residual.
        if self.time_sampling == "uniform":
            if self.weighting == "sigma2":
                weight = tf.ones_like(t)
            else:
                weight = tf.cast(self.sde.diffusion_squared(t), x.dtype) / tf.square(std)
        else:
            factor = tf.cast(norm, x.dtype) / (T - eps)
            if self.weighting == "beta":
                weight = tf.fill(tf.shape(t), factor)
            else:
                weight = factor * tf.square(std) / g2
        per_example = weight * residual
        return weighted_mean(per_example, sample_weight)

    # -------------------------------------------------------------------------- NumPy level
    def score(self, x, t, batch_size: int = _INFERENCE_BATCH) -> np.ndarray:
        """s(x, t) for x [n, d] and t a scalar or [n] in [T_ε, T] (validated NumPy, batched)."""
        if not self.built and self.network is None:
            raise RuntimeError("This ScoreNetwork has not been built or fitted yet.")
        x = check_data(x, name="x", n_features=self.input_dim if self.built else None,
                       owner="ScoreNetwork", dtype=self.compute_dtype)
        self.ensure_built(x.shape[1])
        t = check_times(t, self.eps, self.sde.T, n=len(x))
        t = np.broadcast_to(t, (len(x),)).astype(self.compute_dtype)
        check_positive(batch_size, "batch_size", integer=True)
        spec = [tf.TensorSpec([None, self.input_dim], self.compute_dtype),
                tf.TensorSpec([None], self.compute_dtype)]
        model = weak(self)
        fn = compiled_function(self, ("score", self.input_dim, self.compute_dtype), lambda: (
            tf.function(lambda x, t: model().score_tensor(x, t), input_signature=spec)))
        outs = [fn(tf.constant(x[i:i + batch_size]), tf.constant(t[i:i + batch_size])).numpy()
                for i in range(0, len(x), batch_size)]
        return np.concatenate(outs, axis=0)

    # ---------------------------------------------------------------------- serialization
    def get_config(self):
        return {**self.base_config(),
                "network": (None if self.network is None
                            else keras.saving.serialize_keras_object(self.network)),
                "sde": keras.saving.serialize_keras_object(self.sde),
                "eps": self.eps, "weighting": self.weighting,
                "time_sampling": self.time_sampling, "scale_by_std": self.scale_by_std,
                "condition": self.condition, "seed": self.seed}

    @classmethod
    def from_config(cls, config):
        config = cls._deserialize_dtype(config)
        if config.get("network") is not None:
            config["network"] = keras.saving.deserialize_keras_object(config["network"])
        if isinstance(config.get("sde"), dict):
            config["sde"] = keras.saving.deserialize_keras_object(config["sde"])
        return cls(**config)

    def build_from_config(self, config):
        shape = config.get("input_shape")
        if shape is not None:
            self.build(shape)


@keras.saving.register_keras_serializable(package="dde")
class DDEScore:
    """The score of a noise-conditional energy model f(x, σ) as a time-conditioned score for
    an SDE — the bridge between the DDE and the score-model branches.

    `NoiseConditionalDDE` learns f(x, σ) ≈ log p_σ(x) + c(σ), p_σ = p₀ ∗ N(0, σ²I). For an SDE
    with x_t = α_t x₀ + σ_t z the marginal is p_t(x) = α_t^{−d} p_{σ̃}(x/α_t) with the effective
    noise level σ̃_t = σ_t/α_t, so

        s(x, t) = ∇ₓ log p_t(x) = (1/α_t) ∇f(x/α_t, σ̃_t),    ∇ₓ·s = (1/α_t²) Δf(x/α_t, σ̃_t),

    a conservative score whose divergence is the Laplacian of f (`score_and_divergence`, used by
    the probability-flow likelihood). For `VESDE(sigma_min, sigma_max)` (the default, with the
    model's range) α_t = 1 and σ̃_t = σ(t). One energy model is then normalized two ways:
    log p_{T_ε} by the probability flow, and f(·, σ̃_{T_ε}) − log Ẑ by importance sampling.

    The prior p_T of the probability flow (`prior_log_prob`) is, by default, the model's own:
    p_T(x) = α_T^{−d} p_{σ̃_T}(x/α_T) with p_{σ̃_T} = exp f(·, σ̃_T) / Z_T, log Z_T estimated
    once by importance sampling from the Gaussian with the data's moments widened by σ̃_T²
    (nearly exact: at σ̃_T of the data's diameter the smoothed density is close to that
    Gaussian) — the SDE's nominal N(0, σ_max²I) is off by nats per point when σ_max is not
    far above the data's spread.

    Args:
        model: a `NoiseConditionalDDE` (fitted, or with `sigma_max` given).
        sde: an `SDE` (default `VESDE(model.sigma_min, model.sigma_max)`); σ̃_t must stay in
            the model's trained range [sigma_min, sigma_max] for t ∈ [eps, T].
        eps: T_ε, the smallest time used.
        prior: "model" (default; falls back to "gaussian" without training statistics or
            when its normalization is unreliable), "gaussian" (N(α_T μ, α_T²Σ + σ_T²I) with
            the data's mean μ and covariance Σ) or "sde" (the SDE's `prior_logp`).
    """

    PRIORS = ("model", "gaussian", "sde")

    def __init__(self, model, sde=None, eps: float = 1e-5, prior: str = "model"):
        if not isinstance(model, NoiseConditionalLike):
            raise TypeError(f"model must be a NoiseConditionalDDE, got {type(model).__name__}.")
        if model.sigma_max is None:
            raise ValueError("The NoiseConditionalDDE has no sigma_max yet (it is set from "
                             "the training data): fit it first, or pass sigma_max=.")
        if prior not in self.PRIORS:
            raise ValueError(f"prior must be one of {self.PRIORS}, got {prior!r}.")
        self.prior = prior
        self._prior_normalization = None
        self.model = model
        self.sde = VESDE(model.sigma_min, model.sigma_max) if sde is None else get_sde(sde)
        self.eps = check_time_interval(eps, self.sde.T)
        lo, hi = (float(self.noise_std(tf.constant(v, tf.float64)).numpy())
                  for v in (self.eps, self.sde.T))
        if lo < model.sigma_min * (1 - 1e-6) or hi > model.sigma_max * (1 + 1e-6):
            raise ValueError(
                f"The SDE's effective noise level σ_t/α_t spans [{lo:.4g}, {hi:.4g}] over "
                f"[eps, T] = [{self.eps:g}, {self.sde.T:g}], outside the model's trained range "
                f"[{model.sigma_min:g}, {model.sigma_max:g}]; use "
                "VESDE(model.sigma_min, model.sigma_max) or train the model on a wider range.")

    @property
    def input_dim(self):
        return self.model.input_dim if self.model.built else None

    def noise_std(self, t):
        """Effective noise level σ̃_t = σ_t/α_t (shape of t)."""
        alpha, std = self.sde.marginal_coefficients(t)
        return std / alpha

    def _scaled(self, x, t):
        dtype = self.model.compute_dtype
        t = tf.cast(t, tf.float64)
        alpha, std = self.sde.marginal_coefficients(t)
        alpha_c = tf.cast(alpha, dtype)
        sigma = tf.cast(std / alpha, dtype)
        u = tf.cast(x, dtype) / alpha_c
        return u, sigma, alpha_c

    def score_tensor(self, x, t):
        """s(x, t) = (1/α_t)∇f(x/α_t, σ̃_t): x [n, d], t a scalar or [n] → [n, d] (x's dtype)."""
        u, sigma, alpha = self._scaled(x, t)
        _, grad = self.model.log_density_and_score(u, noise_std=sigma)
        return tf.cast(grad / as_column(alpha), x.dtype)

    def __call__(self, x, t):
        return self.score_tensor(x, t)

    def score_and_divergence(self, x, t):
        """(s(x, t) [n, d], ∇ₓ·s = Δf(x/α_t, σ̃_t)/α_t² [n]), in x's dtype."""
        u, sigma, alpha = self._scaled(x, t)
        with tf.GradientTape() as tape:
            tape.watch(u)
            _, grad = self.model.log_density_and_score(u, noise_std=sigma)
        if u.shape[-1] == 1:
            laplacian = tape.gradient(grad, u)[:, 0]
        else:
            laplacian = tf.linalg.trace(tape.batch_jacobian(grad, u))
        alpha = as_column(alpha)
        return (tf.cast(grad / alpha, x.dtype),
                tf.cast(laplacian / tf.square(alpha[:, 0]), x.dtype))

    def _terminal(self):
        """(α_T, σ̃_T = σ_T/α_T) as float64 scalars."""
        alpha, std = self.sde.marginal_coefficients(tf.constant(self.sde.T, tf.float64))
        return alpha, std / alpha

    def gaussian_prior(self):
        """N(μ, Σ + σ̃_T²I) of u = x/α_T from the data's moments (a float64 tfd), or None."""
        if not self.model.has_data_stats:
            return None
        _, sigma = self._terminal()
        d = int(self.model.input_dim)
        return partition.gaussian_from_moments(
            self.model.data_mean.numpy(),
            self.model.data_cov.numpy() + float(sigma) ** 2 * np.eye(d), name="GaussianPrior")

    def prior_normalization(self, num_samples: int = 100_000):
        """The `LogPartitionResult` of f(·, σ̃_T) by importance sampling from
        `gaussian_prior()` (estimated once and kept), or None without training statistics."""
        if self._prior_normalization is None:
            q = self.gaussian_prior()
            if q is None:
                return None
            _, sigma = self._terminal()
            self._prior_normalization = partition.estimate_log_partition(
                self.model.log_density_fn(float(sigma)), q, num_samples, seed=self.model.seed,
                on_low_ess="ignore")
        return self._prior_normalization

    def prior_log_prob(self, z):
        """log p_T(z) of the prior named by `prior` (see the class docstring): [n, d] → [n]."""
        z = tf.cast(z, tf.float64)
        alpha, sigma = self._terminal()
        d = int(z.shape[-1])
        gaussian = None if self.prior == "sde" else self.gaussian_prior()
        if gaussian is None:
            return self.sde.prior_logp(z)
        u = z / alpha
        log_jacobian = -d * tf.math.log(alpha)
        if self.prior == "model":
            norm = self.prior_normalization()
            if norm.reliable:
                f = self.model.log_density_fn(float(sigma))(u)
                return f - norm.log_z + log_jacobian
            warnings.warn(f"The normalization of f(·, σ_T = {float(sigma):.4g}) is unreliable "
                          f"({norm}); the probability-flow prior falls back to the "
                          "moment-matched Gaussian.", UserWarning, stacklevel=2)
        return gaussian.log_prob(u) + log_jacobian

    def get_config(self):
        return {"model": keras.saving.serialize_keras_object(self.model),
                "sde": keras.saving.serialize_keras_object(self.sde), "eps": self.eps,
                "prior": self.prior}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["model"] = keras.saving.deserialize_keras_object(config["model"])
        config["sde"] = keras.saving.deserialize_keras_object(config["sde"])
        return cls(**config)
