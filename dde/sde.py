"""Diffusion SDEs `dx = f(x, t) dt + g(t) dW` on t ∈ [0, T] for score-based models.

Both SDEs here have an affine drift, so the marginal given a data point x₀ is Gaussian,

    x_t | x₀ ~ N(α_t x₀, σ_t² I),

and the score of the perturbation kernel is `−(x_t − α_t x₀)/σ_t²`. The probability-flow ODE
shares the marginals of the SDE:

    dx/dt = f̃(x, t) = f(x, t) − ½ g(t)² ∇ₓ log p_t(x).

- `VPSDE` (variance preserving): f = −½β(t)x, g = √β(t), β(t) = β_min + t(β_max − β_min);
  with B(t) = ∫₀ᵗβ = β_min t + ½t²(β_max − β_min): α_t = exp(−½B), σ_t² = 1 − exp(−B).
  Prior N(0, I).
- `VESDE` (variance exploding): f = 0, g = σ(t)√(2 log(σ_max/σ_min)), σ(t) = σ_min
  (σ_max/σ_min)^t, α_t = 1, σ_t = σ(t): the marginal at t is the data smoothed by
  N(0, σ(t)²I) (t = 0 is the data smoothed at σ_min). Prior N(0, σ_max² I).

Tensor-level methods take `x` [n, d] and `t` a scalar or [n] (broadcast over the batch) and
work in the dtype of `x`. SDEs are registered Keras-serializable objects (`get_config` /
`from_config`), so models holding one save to `.keras`.
"""
from __future__ import annotations

import abc
import math

import keras
import numpy as np
import tensorflow as tf

from dde._registry import Registry
from dde._tensors import as_column
from dde._validation import check_positive, sanitize_seed


def _as_seed(seed):
    """A stateless-RNG seed [2] (int64): a tensor as it is (in-graph callers), else through
    the package's one seed helper. None is refused (prior samples must be reproducible)."""
    if seed is None:
        raise ValueError("A seed is required (an int or a pair of ints).")
    if tf.is_tensor(seed):
        seed = tf.cast(seed, tf.int64)
        if seed.shape.rank != 1 or seed.shape[0] != 2:
            raise ValueError(f"seed must be an int or a pair of ints, got shape {seed.shape}.")
        return seed
    return tf.constant(sanitize_seed(seed), tf.int64)


def check_time_interval(eps, T, name: str = "eps") -> float:
    """Validate a start time `eps` = T_ε ∈ (0, T); returns it as a float."""
    check_positive(eps, name)
    if eps >= T:
        raise ValueError(f"{name} (T_ε = {eps}) must be smaller than the SDE's end time "
                         f"T = {T}.")
    return float(eps)


def check_times(t, eps: float, T: float, n: int | None = None, name: str = "t") -> np.ndarray:
    """Validate NumPy-level times: a scalar or a vector [n] of finite values in [eps, T].

    Returns a float64 array (0-d or [n]). Raises ValueError naming the offending value.
    """
    arr = np.asarray(t.numpy() if hasattr(t, "numpy") else t)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be real numbers, got dtype {arr.dtype}.")
    arr = arr.astype(np.float64)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim > 1:
        raise ValueError(f"{name} must be a scalar or a vector [n], got shape {arr.shape}.")
    if arr.ndim == 1 and n is not None and arr.shape[0] != n:
        raise ValueError(f"{name} has {arr.shape[0]} entries but x has {n} rows.")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinity.")
    lo, hi = float(np.min(arr)), float(np.max(arr))
    # Relative slack for round-off of times computed in float32.
    slack = 1e-6 * max(T, 1.0)
    if lo < eps - slack or hi > T + slack:
        bad = lo if lo < eps - slack else hi
        raise ValueError(f"{name} = {bad:g} is outside [T_ε, T] = [{eps:g}, {T:g}].")
    return np.clip(arr, eps, T)


class SDE(abc.ABC):
    """Abstract diffusion SDE `dx = f(x, t) dt + g(t) dW`, t ∈ [0, T].

    Subclasses implement `sde`, `marginal_coefficients`, `prior_sampling`, `prior_logp` and
    `get_config`; `drift_divergence` defaults to an autodiff trace and may be overridden.
    """

    def __init__(self, T: float = 1.0):
        check_positive(T, "T")
        self.T = float(T)

    # ----------------------------------------------------------------------- definition
    @abc.abstractmethod
    def sde(self, x, t):
        """Drift f(x, t) [n, d] and diffusion g(t) (shape of t) of the forward SDE."""

    @abc.abstractmethod
    def marginal_coefficients(self, t):
        """(α_t, σ_t) with x_t | x₀ ~ N(α_t x₀, σ_t² I); both of the shape and dtype of t."""

    def marginal_prob(self, x, t):
        """Mean α_t x₀ [n, d] and standard deviation σ_t (shape of t) of x_t given x₀ = x."""
        alpha, std = self.marginal_coefficients(tf.cast(t, x.dtype))
        return as_column(alpha, x) * x, std

    @abc.abstractmethod
    def prior_sampling(self, shape, seed, dtype=tf.float32):
        """Samples of the prior p_T (the SDE's marginal at T for any data), `shape` [n, d]."""

    @abc.abstractmethod
    def prior_logp(self, z):
        """log p_T(z) of the prior, summed over dimensions: [n, d] → [n]."""

    def marginal_prior(self, x_train):
        """log p_T for data with the moments of x_train [n, d] (an array; or a pair (mean [d],
        covariance [d, d])): z [m, d] → [m] (float64), the density of the Gaussian
        N(α_T m, α_T² C + σ_T² I) that x(T) follows when the data are N(m, C).

        The nominal `prior_logp` ignores the data (N(0, I) for VP, N(0, σ_max² I) for VE);
        at a point its error is of order α_T²‖m‖²/σ_T² and α_T²‖C‖/σ_T² (2–7·10⁻² nats on
        bounded data sets for the default SDEs). This prior is exact for Gaussian data and
        otherwise leaves only the non-Gaussian part of the data, whose effect on log p_T
        shrinks like the fourth power of α_T·(data scale)/σ_T (third and fourth cumulants
        of the data enter p_T at that order). Pass it as `prior_log_prob=` of
        `dde.probability_flow_log_prob` / `dde.ProbabilityFlow`."""
        if isinstance(x_train, tuple) and len(x_train) == 2:
            mean, cov = (np.asarray(v, np.float64) for v in x_train)
        else:
            x = np.asarray(x_train, np.float64)
            if x.ndim != 2 or len(x) < 2 or not np.isfinite(x).all():
                raise ValueError(f"x_train must be a finite [n ≥ 2, d] array, got shape "
                                 f"{x.shape}.")
            mean, cov = x.mean(0), np.atleast_2d(np.cov(x, rowvar=False))
        d = mean.shape[0]
        if cov.shape != (d, d):
            raise ValueError(f"The covariance must be [{d}, {d}], got {cov.shape}.")
        alpha, std = (float(v) for v in self.marginal_coefficients(
            tf.constant(self.T, tf.float64)))
        total = alpha ** 2 * cov + std ** 2 * np.eye(d)
        chol = tf.constant(np.linalg.cholesky(total), tf.float64)
        loc = tf.constant(alpha * mean, tf.float64)
        log_norm = -0.5 * d * math.log(2 * math.pi) - float(
            np.sum(np.log(np.diag(chol.numpy()))))

        def log_prob(z):
            diff = tf.cast(z, tf.float64) - loc
            u = tf.linalg.triangular_solve(chol, tf.transpose(diff), lower=True)
            return log_norm - 0.5 * tf.reduce_sum(tf.square(u), axis=0)
        return log_prob

    def diffusion_squared(self, t):
        """g(t)², the likelihood weighting λ(t) of denoising score matching (β(t) for VP)."""
        _, g = self.sde(tf.zeros([1, 1], tf.convert_to_tensor(t).dtype), t)
        return tf.square(g)

    def drift_divergence(self, x, t):
        """∇ₓ·f(x, t): [n, d] → [n] (autodiff trace; closed form in the subclasses)."""
        with tf.GradientTape() as tape:
            tape.watch(x)
            drift, _ = self.sde(x, t)
        jac = tape.batch_jacobian(drift, x)
        return tf.linalg.trace(jac)

    # ------------------------------------------------------------------------ reverse time
    def reverse(self, score_fn, probability_flow: bool = False) -> "ReverseSDE":
        """The reverse-time SDE (or the probability-flow ODE) given a score function.

        score_fn(x, t) → ∇ₓ log p_t(x) [n, d]. See `ReverseSDE`.
        """
        return ReverseSDE(self, score_fn, probability_flow=probability_flow)

    def probability_flow_drift(self, x, t, score):
        """f̃(x, t) = f(x, t) − ½ g(t)² s for a given score s [n, d]."""
        drift, g = self.sde(x, t)
        return drift - 0.5 * as_column(tf.square(g), x) * score

    # ---------------------------------------------------------- log-noise time variable
    def log_noise(self, t):
        """λ(t) = log(σ_t/α_t), the log of the effective noise level (monotone in t).

        For an affine drift f = a(t)x, dλ/dt = g(t)²/(2σ_t²): adaptive ODE solvers take far
        fewer steps in λ than in t (the probability flow changes on the scale of σ).
        """
        alpha, std = self.marginal_coefficients(t)
        return tf.math.log(std) - tf.math.log(alpha)

    def time_from_log_noise(self, lam):
        """The inverse of `log_noise`: t(λ)."""
        raise NotImplementedError(f"{type(self).__name__} does not invert log_noise.")

    # ----------------------------------------------------- likelihood-weighted time sampling
    def importance_time_sampling(self, u, eps):
        """Map uniforms u ∈ [0, 1) to times t ∈ [eps, T] with density q(t) ∝ g(t)²/σ_t².

        Returns (t, Z) with Z = ∫_eps^T g²/σ² dt, so that for any ℓ(t)

            E_{t~U[eps,T]}[g(t)² ℓ(t)] = Z/(T − eps) · E_{t~q}[σ_t² ℓ(t)].

        Sampling t this way removes the 1/σ_t² blow-up of the likelihood weighting λ = g²
        near t = 0 (importance sampling of the DSM objective).
        """
        raise NotImplementedError(
            f"{type(self).__name__} has no importance sampler for the likelihood weighting.")

    # --------------------------------------------------------------------- serialization
    @abc.abstractmethod
    def get_config(self) -> dict:
        """Every constructor argument."""

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __hash__(self):
        return hash((type(self).__name__, tuple(sorted(self.get_config().items()))))


@keras.saving.register_keras_serializable(package="dde")
class VPSDE(SDE):
    """Variance-preserving SDE: dx = −½β(t)x dt + √β(t) dW, β(t) = β_min + t(β_max − β_min).

    α_t = exp(−½B(t)), σ_t² = 1 − exp(−B(t)), B(t) = β_min t + ½t²(β_max − β_min); prior
    N(0, I).
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, T: float = 1.0):
        super().__init__(T)
        check_positive(beta_min, "beta_min")
        check_positive(beta_max, "beta_max")
        if beta_max < beta_min:
            raise ValueError(f"beta_max ({beta_max}) must be ≥ beta_min ({beta_min}).")
        self.beta_min = float(beta_min)
        self.beta_max = float(beta_max)

    def beta(self, t):
        """β(t) = β_min + t(β_max − β_min)."""
        t = tf.convert_to_tensor(t)
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def integrated_beta(self, t):
        """B(t) = ∫₀ᵗ β(s) ds = β_min t + ½t²(β_max − β_min)."""
        t = tf.convert_to_tensor(t)
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * tf.square(t)

    def sde(self, x, t):
        beta = self.beta(tf.cast(t, x.dtype))
        return -0.5 * as_column(beta, x) * x, tf.sqrt(beta)

    def marginal_coefficients(self, t):
        b = self.integrated_beta(t)
        return tf.exp(-0.5 * b), tf.sqrt(-tf.math.expm1(-b))

    def diffusion_squared(self, t):
        return self.beta(t)

    def drift_divergence(self, x, t):
        d = tf.cast(tf.shape(x)[-1], x.dtype)
        beta = self.beta(tf.cast(t, x.dtype))
        return tf.broadcast_to(-0.5 * d * beta, tf.shape(x)[:1])

    def prior_sampling(self, shape, seed, dtype=tf.float32):
        return tf.random.stateless_normal(shape, _as_seed(seed), dtype=dtype)

    def prior_logp(self, z):
        d = tf.cast(tf.shape(z)[-1], z.dtype)
        return -0.5 * d * math.log(2 * math.pi) - 0.5 * tf.reduce_sum(tf.square(z), axis=-1)

    def _time_from_integrated_beta(self, b):
        """t with B(t) = b (the positive root of ½Δβ t² + β_min t − b = 0)."""
        delta = self.beta_max - self.beta_min
        if delta > 0:
            return 2.0 * b / (self.beta_min + tf.sqrt(self.beta_min ** 2 + 2.0 * delta * b))
        return b / self.beta_min

    def log_noise(self, t):
        # σ/α = sqrt(e^B − 1)
        return 0.5 * tf.math.log(tf.math.expm1(self.integrated_beta(t)))

    def time_from_log_noise(self, lam):
        lam = tf.convert_to_tensor(lam)
        return self._time_from_integrated_beta(tf.math.softplus(2.0 * lam))

    def importance_time_sampling(self, u, eps):
        # ∫ β/(1 − e^{−B}) dt = log(e^B − 1) =: F(t); invert F at F(eps) + u (F(T) − F(eps)),
        # then solve ½Δβ t² + β_min t = B for t.
        u = tf.convert_to_tensor(u)
        dtype = u.dtype
        b_lo = self.integrated_beta(tf.constant(eps, dtype))
        b_hi = self.integrated_beta(tf.constant(self.T, dtype))
        f_lo = tf.math.log(tf.math.expm1(b_lo))
        f_hi = tf.math.log(tf.math.expm1(b_hi))
        t = self._time_from_integrated_beta(tf.math.softplus(f_lo + u * (f_hi - f_lo)))
        return tf.clip_by_value(t, eps, self.T), f_hi - f_lo

    def get_config(self):
        return {"beta_min": self.beta_min, "beta_max": self.beta_max, "T": self.T}


@keras.saving.register_keras_serializable(package="dde")
class VESDE(SDE):
    """Variance-exploding SDE: dx = σ(t)√(2 log(σ_max/σ_min)) dW, σ(t) = σ_min(σ_max/σ_min)^t.

    α_t = 1, σ_t = σ(t) (t = 0 is the data smoothed by N(0, σ_min² I)); prior
    N(0, σ_max² I) — choose σ_max well above the data's spread.
    """

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, T: float = 1.0):
        super().__init__(T)
        check_positive(sigma_min, "sigma_min")
        check_positive(sigma_max, "sigma_max")
        if sigma_max <= sigma_min:
            raise ValueError(f"sigma_max ({sigma_max}) must be larger than sigma_min "
                             f"({sigma_min}).")
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)
        self._log_ratio = math.log(self.sigma_max / self.sigma_min)

    def sigma(self, t):
        """σ(t) = σ_min (σ_max/σ_min)^(t/T)."""
        t = tf.convert_to_tensor(t)
        return self.sigma_min * tf.exp(self._log_ratio * t / self.T)

    def sde(self, x, t):
        sigma = self.sigma(tf.cast(t, x.dtype))
        return tf.zeros_like(x), sigma * math.sqrt(2.0 * self._log_ratio / self.T)

    def marginal_coefficients(self, t):
        sigma = self.sigma(t)
        return tf.ones_like(sigma), sigma

    def diffusion_squared(self, t):
        return tf.square(self.sigma(t)) * (2.0 * self._log_ratio / self.T)

    def drift_divergence(self, x, t):
        return tf.zeros(tf.shape(x)[:1], x.dtype)

    def prior_sampling(self, shape, seed, dtype=tf.float32):
        return self.sigma_max * tf.random.stateless_normal(shape, _as_seed(seed), dtype=dtype)

    def prior_logp(self, z):
        d = tf.cast(tf.shape(z)[-1], z.dtype)
        return (-0.5 * d * math.log(2 * math.pi * self.sigma_max ** 2)
                - 0.5 * tf.reduce_sum(tf.square(z), axis=-1) / self.sigma_max ** 2)

    def log_noise(self, t):
        t = tf.convert_to_tensor(t)
        return math.log(self.sigma_min) + self._log_ratio * t / self.T

    def time_from_log_noise(self, lam):
        lam = tf.convert_to_tensor(lam)
        return (lam - math.log(self.sigma_min)) * self.T / self._log_ratio

    def importance_time_sampling(self, u, eps):
        # g²/σ² = 2 log(σ_max/σ_min)/T is constant: uniform times.
        u = tf.convert_to_tensor(u)
        t = eps + u * (self.T - eps)
        return t, tf.constant(2.0 * self._log_ratio / self.T * (self.T - eps), u.dtype)

    def get_config(self):
        return {"sigma_min": self.sigma_min, "sigma_max": self.sigma_max, "T": self.T}


class ReverseSDE:
    """The reverse-time process of an `SDE` given a score function s(x, t) ≈ ∇ₓ log p_t(x).

    Run from t = T down to 0 with dt < 0:

        dx = [f(x, t) − g(t)² s(x, t)] dt + g(t) dW̄        (reverse SDE)
        dx = [f(x, t) − ½ g(t)² s(x, t)] dt                (probability flow, diffusion 0)

    `sde(x, t)` returns that drift and diffusion (0 for the probability flow).
    """

    def __init__(self, forward: SDE, score_fn, probability_flow: bool = False):
        if not isinstance(forward, SDE):
            raise TypeError(f"forward must be an SDE, got {type(forward)!r}.")
        if not callable(score_fn):
            raise TypeError("score_fn must be callable as score_fn(x, t).")
        self.forward = forward
        self.score_fn = score_fn
        self.probability_flow = bool(probability_flow)
        self.T = forward.T

    def sde(self, x, t):
        drift, g = self.forward.sde(x, t)
        score = tf.cast(self.score_fn(x, t), x.dtype)
        scale = 0.5 if self.probability_flow else 1.0
        drift = drift - scale * as_column(tf.square(g), x) * score
        diffusion = tf.zeros_like(g) if self.probability_flow else g
        return drift, diffusion


#: SDE classes by name; `get_sde("name")` builds one with its defaults.
SDES = Registry("SDE")
SDES.register("vp", VPSDE)
SDES.register("ve", VESDE)


def get_sde(sde) -> SDE:
    """An `SDE` from an instance, a registered name ("vp", "ve"; "vpsde", "VP-SDE", ... too)
    or a serialized config dict."""
    if isinstance(sde, SDE):
        return sde
    if isinstance(sde, str):
        key = sde.lower().replace("-", "").replace("_", "")
        key = key[:-3] if key.endswith("sde") and key[:-3] in SDES else key
        if key not in SDES:
            raise ValueError(f"Unknown SDE name {sde!r}; expected one of {SDES.names()} or an "
                             "SDE object.")
        return SDES.lookup(key)()
    if isinstance(sde, dict):
        obj = keras.saving.deserialize_keras_object(sde)
        if isinstance(obj, SDE):
            return obj
    raise TypeError(f"sde must be an SDE instance or a name ('vp', 've'), got {sde!r}.")
