"""Denoising Density Estimators as Keras models.

A DDE is a network `f_θ: R^d → R`, the un-normalized log-density; its input gradient `∇ₓf_θ` is
the score. With x ~ data, n ~ N(0, σ²I), x̃ = x + n it is trained by denoising score matching on
the input gradient,

    L(θ) = E ‖x̃ + σ²∇ₓf_θ(x̃) − x‖² / σ²  =  E ‖σ∇ₓf_θ(x̃) + n/σ‖²,

whose optimum is `f = log p_σ + const`, the log of the data density smoothed by N(0, σ²I)
(Tweedie: the denoiser `D(x̃) = x̃ + σ²∇ₓf(x̃)` is E[x | x̃]). The loss is per example summed
over dimensions and averaged over the batch; dividing by σ² makes it comparable across σ.

`NoiseConditionalDDE` learns `f(x, σ)` for a geometric range of σ at once (weight λ(σ) = σ²,
which gives the same per-example form), a conservative score at every noise level.

**Base-density energies** (`base=`): f(x) = log q(x) + g(x) with q a normalized density
fitted to the data beforehand (`dde.bases`) and g the network, a residual bounded above
(`dde.nets.residual_energy_mlp`: the untrained model is q, and ∫ exp f ≤ e^{sup g}). With
`smooth_base=True` (default) the base is smoothed at the model's noise level, q_σ = q * N(0,
σ²I) (exact for Gaussian mixtures), as denoising score matching at σ requires — f then
approximates log p_σ = log(p * N(0, σ²I)). Normalization uses q_σ itself as the proposal:
log Z = log E_q[exp g], with weights exp g. `objective="likelihood"` trains g by maximum
likelihood under the base instead (a DenoisingDensityEstimator only),

    L(θ) = −mean_b g(x_b) + log mean_j exp g(y_j),     x_b ~ data, y_j ~ q (fresh each step),

the negative log-likelihood of the batch up to the O(1/M) bias of the in-batch log Ẑ, plus
`dsm_weight` times the DSM loss when it is positive (the score stays that of the data).
`ess_penalty` μ > 0 adds μ·log(M/ESS) of the base batch's weights w_j = exp g(y_j),

    log(M/ESS) = log mean_j w_j² − 2 log mean_j w_j  ≥ 0   (= log(1 + χ²(p_f ‖ q)) in expectation),

which keeps the model close enough to its base for importance sampling under q to stay
efficient (0 for g constant, e.g. the untrained model). `base_pool_size` P: the y_j come from a
pool of P base draws made at the start of every `fit` (`refresh_base_pool`) instead of fresh
draws — for a base that is expensive to sample, such as an autoregressive flow (d passes per
draw); normalization still draws the base itself.

**Whitening** (`whiten=True`): the model works in whitened coordinates u = W(x − m), W = L⁻¹
with LLᵀ the training data's covariance (fixed at the first `fit` or `set_data_statistics`):
f(x) = f_u(W(x − m)) + log|det W|, an exact change of variables, so `log_density` and
`log_prob` stay densities in data space. Denoising score matching adds its noise in u, i.e.
noise N(0, σ²Σ) in data space (σ is in whitened units): directions of small spread are no
longer smoothed by a σ far above their scale. A Gaussian-mixture base is moved to u with the
data (means W(μ − m), covariances WΣ_kWᵀ) and smoothed there.
"""
from __future__ import annotations

import math
import warnings

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

import dde.partition as partition
import dde.sampling as sampling
import dde.bases as bases
from dde._cache import compiled_function, weak
from dde._tensors import as_column
from dde._validation import check_data, check_positive, sanitize_seed
from dde.export import export_density
from dde.training import DSMModel, first_component, mean_and_covariance, weighted_mean

_INFERENCE_BATCH = 8192
#: The salt of the seed stream of the base pool (see `dde._validation.sanitize_seed`).
BASE_POOL_SALT = 7
#: The largest |log Ẑ| stored. Beyond it float32 energies resolve log-densities f − log Ẑ
#: only to 2⁻²⁴·|log Ẑ| > 0.06 nats, and such a value only arises from energies far off scale.
MAX_ABS_LOG_Z = 1e6


class _BasePool:
    """The pool of base draws of `EnergyModel.refresh_base_pool`: a plain holder, so that
    the pool is neither a Keras weight (saved) nor tracked by TensorFlow (exported)."""

    __slots__ = ("samples", "draws")

    def __init__(self):
        self.samples = None  # tf.Variable [P, d] once drawn
        self.draws = 0


class EnergyModel(DSMModel):
    """Base class of energy models `f(x)` trained by denoising score matching.

    Subclasses implement `_energy_u(u, sigma, training)` → [batch] (the energy in the
    model's coordinates, u = x without whitening; sigma: [batch, 1] noise level of each
    example), `_training_noise_std(batch_size, seed)` → [batch, 1] and
    `resolve_noise_std(noise_std)` (the one σ rule of the model).

    NumPy-level methods (`log_density`, `score`, `denoise`, `log_prob`) validate their input,
    run in batches through compiled functions and return NumPy arrays. Tensor-level methods
    (`call`, `score_tensor`, `log_density_and_score`, `log_density_fn`) are for use inside
    `tf.function`. The public members of `dde.protocols.EnergyModelLike` are what the
    estimators and samplers use.
    """

    OBJECTIVES = ("dsm", "likelihood")

    def __init__(self, network, seed: int | None = None, base=None, smooth_base: bool = True,
                 objective: str = "dsm", dsm_weight: float = 0.0,
                 num_base_samples: int | None = None, ess_penalty: float = 0.0,
                 whiten: bool = False, base_pool_size: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(network, keras.layers.Layer):
            raise TypeError(f"network must be a Keras layer or model, got {type(network)!r}.")
        self.network = network
        self.base = None if base is None else bases.as_base(base)
        if not isinstance(smooth_base, bool):
            raise TypeError(f"smooth_base must be a bool, got {smooth_base!r}.")
        if smooth_base and self.base is not None and not self.base.smoothable:
            raise ValueError(f"A {type(self.base).__name__} cannot be smoothed at the model's "
                             "noise level: pass smooth_base=False (e.g. with "
                             "objective='likelihood').")
        self.smooth_base = smooth_base
        if objective not in self.OBJECTIVES:
            raise ValueError(f"objective must be one of {self.OBJECTIVES}, got {objective!r}.")
        if objective == "likelihood" and self.base is None:
            raise ValueError("objective='likelihood' trains the residual of a base density: "
                             "pass base= (see dde.bases).")
        self.objective = objective
        self.dsm_weight = float(check_positive(dsm_weight, "dsm_weight", allow_zero=True))
        if num_base_samples is not None:
            check_positive(num_base_samples, "num_base_samples", integer=True)
        self.num_base_samples = num_base_samples
        if base_pool_size is not None:
            check_positive(base_pool_size, "base_pool_size", integer=True)
            if self.base is None:
                raise ValueError("base_pool_size keeps draws of a base density: pass base= "
                                 "(see dde.bases).")
            if smooth_base:
                raise ValueError("base_pool_size draws the base once per fit, at no noise "
                                 "level: pass smooth_base=False.")
            if objective != "likelihood" and not ess_penalty:
                raise ValueError("base_pool_size feeds the base batches of "
                                 "objective='likelihood' or ess_penalty > 0; this model "
                                 "draws none.")
        self._base_pool_size = base_pool_size
        self._base_pool = _BasePool()
        self.ess_penalty = float(check_positive(ess_penalty, "ess_penalty", allow_zero=True))
        if self.ess_penalty > 0 and self.base is None:
            raise ValueError("ess_penalty penalizes the importance weights under a base "
                             "density: pass base= (see dde.bases).")
        if not isinstance(whiten, bool):
            raise TypeError(f"whiten must be a bool, got {whiten!r}.")
        if whiten and self.base is not None and not isinstance(self.base,
                                                               bases.GaussianMixtureBase):
            raise ValueError(f"whiten=True moves the base to whitened coordinates, which only "
                             f"a GaussianMixtureBase supports, not a {type(self.base).__name__}"
                             " (a dde.flows flow has its own whiten= option).")
        self.whiten = whiten
        self._init_training(seed)
        # The normalization set by `normalize`, NaN until then, saved with the model: log Ẑ,
        # its standard error and effective sample size, the noise level σ of the density it
        # normalizes (a NoiseConditionalDDE: the σ of f(·, σ); a DenoisingDensityEstimator:
        # its σ when normalized), the Pareto k̂ of the weights and whether the estimate was
        # reliable (1/0; NaN when stored without them, e.g. by set_log_partition or dde
        # 0.1.0). Created in this order (the order of the saved variables).
        for name in ("log_z", "log_z_stderr", "log_z_ess", "log_z_noise_std", "log_z_pareto_k",
                     "log_z_reliable"):
            setattr(self, name, self.add_weight(
                shape=(), dtype="float64", trainable=False, name=name,
                initializer=keras.initializers.Constant(float("nan"))))

    #: Variables added after dde 0.1.0, absent from the `.keras` files it wrote.
    _VARIABLES_ADDED_AFTER_0_1_0 = ("log_z_pareto_k", "log_z_reliable")

    def load_own_variables(self, store):
        """Keras's loading of the model's own variables, also for files written by dde 0.1.0
        (which lack the variables named in `_VARIABLES_ADDED_AFTER_0_1_0`; those keep
        their defaults)."""
        own = self._trainable_variables + self._non_trainable_variables
        old = [v for v in own if v.name not in self._VARIABLES_ADDED_AFTER_0_1_0]
        if len(store.keys()) == len(old) < len(own):
            for i, v in enumerate(old):
                v.assign(store[f"{i}"])
            return
        super().load_own_variables(store)

    # ----------------------------------------------------------------------------- building
    def build(self, input_shape):
        if self.built:
            return
        d = input_shape[-1]
        if d is None:
            raise ValueError("The feature dimension of the input must be known.")
        self.input_dim = int(d)
        self._build_network(input_shape)
        # Mean and covariance of the training data (set by `fit`; NaN until then): the
        # default initialization of the samplers and a Gaussian proposal for normalization.
        self.data_mean = self.add_weight(shape=(self.input_dim,), trainable=False,
                                         name="data_mean", dtype="float64",
                                         initializer=keras.initializers.Constant(float("nan")))
        self.data_cov = self.add_weight(shape=(self.input_dim, self.input_dim),
                                        trainable=False, name="data_cov", dtype="float64",
                                        initializer=keras.initializers.Constant(float("nan")))
        if self.whiten:  # u = W(x − m) and log|det W| (set with the data statistics)
            nan = keras.initializers.Constant(float("nan"))
            self.whiten_shift = self.add_weight(shape=(self.input_dim,), trainable=False,
                                                name="whiten_shift", dtype="float64",
                                                initializer=nan)
            self.whiten_matrix = self.add_weight(shape=(self.input_dim, self.input_dim),
                                                 trainable=False, name="whiten_matrix",
                                                 dtype="float64", initializer=nan)
            self.whiten_log_det = self.add_weight(shape=(), trainable=False,
                                                  name="whiten_log_det", dtype="float64",
                                                  initializer=nan)
        self.built = True

    def _build_network(self, input_shape):
        if not self.network.built:
            self.network.build(input_shape)

    def ensure_built(self, input_dim: int):
        """Build the model for inputs of `input_dim` features if it is not built yet."""
        if not self.built:
            self(tf.zeros([1, int(input_dim)], self.compute_dtype))

    @property
    def has_data_stats(self) -> bool:
        """Whether `data_mean` / `data_cov` hold training-data statistics."""
        return self.built and bool(np.isfinite(self.data_mean.numpy()).all())

    def default_proposal(self, noise_std=None):
        """A normalized density close to exp f at noise level `noise_std`: the base (smoothed
        at that σ when `smooth_base`) of a base-density model, else N(data_mean, data_cov) of
        the training data (a float64 `tfd.Distribution`), or None without training
        statistics. The default proposal of normalization and the start of sampling chains.
        The same σ, statistics and base parameters give the same object, so compiled
        estimators and samplers that take it are reused across calls."""
        if not self.built:
            return self._make_default_proposal(noise_std)
        key = (self._base_noise_std(noise_std) if self.base is not None else None,
               self._base_fingerprint(),
               self.data_mean.numpy().tobytes(), self.data_cov.numpy().tobytes(),
               self.whiten_matrix.numpy().tobytes() if self.whiten else b"")
        cache = self.__dict__.setdefault("_proposals", {})
        if key not in cache:
            if len(cache) > 8:  # statistics changed repeatedly: keep the cache small
                cache.clear()
            cache[key] = self._make_default_proposal(noise_std)
        return cache[key]

    def _base_fingerprint(self):
        """The base's parameters as bytes (its identity for a base without weights): a
        default proposal is reused only while they are unchanged."""
        if self.base is None:
            return b""
        weights = getattr(self.base, "weights", None)
        if weights is None:
            return id(self.base)
        return b"".join(np.asarray(v.numpy()).tobytes() for v in weights)

    def _make_default_proposal(self, noise_std=None):
        if self.base is not None:
            q = self.base.as_distribution(self._base_noise_std(noise_std))
            if not self.whiten:
                return q
            self._require_whitening()
            scale = np.linalg.inv(self.whiten_matrix.numpy())  # L (lower triangular)
            bij = tfp.bijectors.Chain([tfp.bijectors.Shift(self.whiten_shift.numpy()),
                                       tfp.bijectors.ScaleMatvecTriL(np.tril(scale))])
            return tfp.distributions.TransformedDistribution(q, bij, name="WhitenedBase")
        if not self.has_data_stats:
            return None
        return partition.gaussian_from_moments(self.data_mean.numpy(), self.data_cov.numpy(),
                                               name="DataGaussian")

    def _base_noise_std(self, noise_std=None):
        """The σ the base is smoothed at (None: not smoothed)."""
        return self.resolve_noise_std(noise_std) if self.smooth_base else None

    def _base_log_prob(self, x, sigma):
        """log q_σ(x) [batch] for sigma [batch, 1] (0 without a base), in x's dtype."""
        if self.base is None:
            return tf.zeros(tf.shape(x)[:1], x.dtype)
        return tf.cast(self.base.log_prob(x, sigma[:, 0] if self.smooth_base else None),
                       x.dtype)

    # ------------------------------------------------------------------------- tensor level
    @property
    def is_whitened(self) -> bool:
        """Whether the whitening u = W(x − m) is set (always False without whiten=True)."""
        return self.whiten and self.built and bool(
            np.isfinite(self.whiten_log_det.numpy()))

    def _require_whitening(self):
        if self.whiten and not self.is_whitened:
            raise ValueError(f"This {type(self).__name__} has whiten=True: its whitening is "
                             "set from the training data by fit (or set_data_statistics); "
                             "call one of them first.")

    def to_whitened(self, x):
        """u = W(x − m) [batch, d] in x's dtype (x itself without whitening; tensor level)."""
        if not self.whiten:
            return x
        shift = tf.cast(self.whiten_shift, x.dtype)
        return tf.linalg.matvec(tf.cast(self.whiten_matrix, x.dtype), x - shift)

    def _energy(self, x, sigma, training=False):
        """f(x) at noise levels sigma [batch, 1]: `_energy_u` of the whitened x plus
        log|det W| (the energy itself without whitening)."""
        f = self._energy_u(self.to_whitened(x), sigma, training=training)
        if self.whiten:
            f = f + tf.cast(self.whiten_log_det, f.dtype)
        return f

    def _energy_u(self, u, sigma, training=False):
        """The energy in the model's own (whitened) coordinates, [batch]."""
        raise NotImplementedError

    def _training_noise_std(self, batch_size, seed):
        raise NotImplementedError

    def _default_sigma(self, x):
        """[batch, 1] noise level used by the tensor-level methods when none is given."""
        raise NotImplementedError

    def _sigma_column(self, x, noise_std):
        if noise_std is None:
            return self._default_sigma(x)
        sigma = tf.cast(noise_std, x.dtype)
        if sigma.shape.rank == 0:
            return tf.fill([tf.shape(x)[0], 1], sigma)
        return as_column(sigma)

    def resolve_noise_std(self, noise_std=None) -> float:
        """The noise level σ that `noise_std` selects (None: the model's default)."""
        raise NotImplementedError

    def log_density_fn(self, noise_std=None):
        """f at noise level σ (`resolve_noise_std(noise_std)`) as a traceable function
        x [batch, d] (any float dtype) → f(x) [batch] in x's dtype. The same σ gives the same
        function object, so estimators can cache what they compile for it."""
        sigma = None if noise_std is None else self.resolve_noise_std(noise_std)
        key = ("log_density_fn", sigma)
        fns = self.__dict__.setdefault("_log_density_fns", {})
        if key not in fns:
            model = weak(self)

            def log_density(x):
                m = model()
                xc = tf.cast(x, m.compute_dtype)
                return tf.cast(m._energy(xc, m._sigma_column(xc, sigma)), x.dtype)

            fns[key] = log_density
        return fns[key]

    def log_density_and_score(self, x, noise_std=None, training=False):
        """Tensor level: `(f(x), ∇ₓf(x))` with shapes [batch] and [batch, d]."""
        sigma = self._sigma_column(x, noise_std)
        with tf.GradientTape() as tape:
            tape.watch(x)
            f = self._energy(x, sigma, training=training)
        return f, tape.gradient(f, x)

    def score_tensor(self, x, noise_std=None):
        """Tensor level: the score `∇ₓf(x)`, [batch, d] → [batch, d]."""
        return self.log_density_and_score(x, noise_std)[1]

    def dsm_loss(self, x, seed, sample_weight=None, training=False):
        """Denoising score-matching loss of a batch x [batch, d] with noise from `seed` ([2]).

        Per example `‖σ∇ₓf(x̃) + n/σ‖²` (= ‖x̃ + σ²∇ₓf(x̃) − x‖²/σ²); weighted mean over the
        batch (with whitening, in whitened coordinates u and with f_u). Differentiable w.r.t.
        the weights (the inner gradient is recorded).
        """
        seeds = tf.random.experimental.stateless_split(seed, 2)
        u = self.to_whitened(x)  # (with whitening, the noise is added in whitened space)
        sigma = tf.cast(self._training_noise_std(tf.shape(u)[0], seeds[0]), u.dtype)
        noise = sigma * tf.random.stateless_normal(tf.shape(u), seeds[1], dtype=u.dtype)
        u_noisy = u + noise
        with tf.GradientTape() as tape:
            tape.watch(u_noisy)
            f = self._energy_u(u_noisy, sigma, training=training)
        grad = tape.gradient(f, u_noisy)
        per_example = tf.reduce_sum(tf.square(sigma * grad + noise / sigma), axis=-1)
        return weighted_mean(per_example, sample_weight)

    def _residual(self, x, sigma, training=False):
        """g(x) = f(x) − log q_σ(x) [batch] (the network's output)."""
        raise NotImplementedError

    def base_batch_residuals(self, m, seed, dtype=tf.float32, training=False):
        """g(y_j) [m] at m draws y_j ~ q_σ (the base, smoothed at the model's σ when
        `smooth_base`; in whitened coordinates with whitening) from `seed` (tensor level):
        log-weights of importance sampling under the base. With `base_pool_size`, the y_j
        are m rows (uniform, with replacement) of the pool of base draws `fit` made."""
        sigma = tf.cast(self.resolve_noise_std_tensor(), dtype)
        pool = self._base_pool.samples
        if pool is not None:
            rows = tf.random.stateless_uniform(tf.reshape(m, [1]), seed, 0, tf.shape(pool)[0],
                                               dtype=tf.int32)
            y = tf.cast(tf.gather(pool, rows), dtype)
        else:
            y = tf.cast(self.base.sample(m, seed, sigma if self.smooth_base else None), dtype)
        return self._residual(y, tf.fill([tf.shape(y)[0], 1], sigma), training=training)

    def likelihood_loss(self, x, seed, sample_weight=None, training=False, g_y=None):
        """−mean_b g(x_b) + log mean_j exp g(y_j) with y_j ~ q_σ, `num_base_samples` of them
        (default: the batch size) drawn from `seed` (or the given residuals g_y): the negative
        log-likelihood of the batch under the normalized f, up to the O(1/M) bias of the
        in-batch log Ẑ."""
        if g_y is None:
            g_y = self.base_batch_residuals(self.num_base_samples or tf.shape(x)[0], seed,
                                            x.dtype, training)
        sigma = tf.fill([tf.shape(x)[0], 1], tf.cast(self.resolve_noise_std_tensor(), x.dtype))
        g_x = self._residual(self.to_whitened(x), sigma, training=training)
        m = tf.cast(tf.shape(g_y)[0], g_y.dtype)
        log_z = tf.reduce_logsumexp(g_y) - tf.math.log(m)
        return -weighted_mean(g_x, sample_weight) + log_z

    @staticmethod
    def log_inverse_ess_fraction(log_weights):
        """log(M/ESS) = log mean w² − 2 log mean w of log-weights [M] (≥ 0; 0 iff equal)."""
        log_m = tf.math.log(tf.cast(tf.shape(log_weights)[0], log_weights.dtype))
        return (tf.reduce_logsumexp(2.0 * log_weights) - log_m
                - 2.0 * (tf.reduce_logsumexp(log_weights) - log_m))

    def resolve_noise_std_tensor(self):
        """The model's own σ as a tensor (tensor level)."""
        raise NotImplementedError

    def training_loss(self, x, seed, sample_weight=None, training=False):
        """The objective's loss: DSM, or the likelihood loss plus `dsm_weight` × DSM; plus
        `ess_penalty` × log(M/ESS) of a base batch (the same batch as the likelihood loss's)."""
        if self.objective == "dsm" and self.ess_penalty == 0:
            return self.dsm_loss(x, seed, sample_weight, training)
        s_base, s_dsm = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        g_y = None
        if self.objective == "likelihood" or self.ess_penalty > 0:
            g_y = self.base_batch_residuals(self.num_base_samples or tf.shape(x)[0], s_base,
                                            x.dtype, training)
        if self.objective == "likelihood":
            loss = self.likelihood_loss(x, s_base, sample_weight, training, g_y=g_y)
            if self.dsm_weight > 0:
                loss = loss + self.dsm_weight * self.dsm_loss(x, s_dsm, sample_weight,
                                                              training)
        else:
            loss = self.dsm_loss(x, s_dsm, sample_weight, training)
        if self.ess_penalty > 0:
            loss = loss + self.ess_penalty * self.log_inverse_ess_fraction(g_y)
        return loss

    # ------------------------------------------------------------------------ Keras hooks
    def predict_step(self, data):
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        return self(tf.cast(x, self.compute_dtype), training=False)

    # ---------------------------------------------------------------------------- fitting
    def set_data_statistics(self, x):
        """Store the mean and covariance of x ([n, d] array, or a finite batched
        `tf.data.Dataset`) as `data_mean` / `data_cov` (what `fit` does with its data)."""
        if not isinstance(x, tf.data.Dataset):
            x = check_data(x, name="x", n_features=self.input_dim if self.built else None,
                           owner=type(self).__name__, dtype=np.float64)
            self.ensure_built(x.shape[1])
        stats = mean_and_covariance(x)
        if stats is None:  # a dataset of infinite or unknown size: not iterated
            return
        mean, cov = stats
        self.data_mean.assign(mean)
        self.data_cov.assign(cov)
        if self.whiten and not self.is_whitened:
            self._set_whitening(mean, cov)

    def _set_whitening(self, mean, cov):
        """W = L⁻¹ (LLᵀ = cov + 10⁻⁶·mean variance·I) and m = mean; a mixture base moves to
        whitened coordinates with them."""
        d = len(mean)
        jitter = 1e-6 * max(float(np.trace(cov)) / d, 1e-12)
        chol = np.linalg.cholesky(cov + jitter * np.eye(d))
        w = np.linalg.inv(chol)
        self.whiten_shift.assign(mean)
        self.whiten_matrix.assign(np.tril(w))
        self.whiten_log_det.assign(-float(np.sum(np.log(np.diag(chol)))))
        if self.base is not None:
            covs = self.base.covariances()
            self.base.set_parameters(np.exp(self.base.log_weights.numpy()),
                                     (self.base.means.numpy() - mean) @ w.T,
                                     np.einsum("ij,kjl,ml->kim", w, covs, w))

    def _on_fit_data(self, x):
        """`fit` stores the training data's mean and covariance (`data_mean`, `data_cov`)
        and, with whiten=True, sets the whitening from them; with `base_pool_size` it
        draws the pool of base samples (`refresh_base_pool`)."""
        self.set_data_statistics(x)
        self._require_whitening()
        self.refresh_base_pool()

    @property
    def base_pool_size(self) -> int | None:
        """P, the number of base draws in the training pool (None: fresh draws per step)."""
        return self._base_pool_size

    @property
    def base_pool(self):
        """The pool of base draws [P, d] of the last `fit` (a tf.Variable), or None (no
        `base_pool_size`, or not fitted since construction or loading)."""
        return self._base_pool.samples

    def refresh_base_pool(self, batch_size: int = 8192):
        """Draw `base_pool_size` samples of the base [P, d] (in the model's coordinates)
        that the training loss's base batches are taken from, instead of drawing the base at
        every step — for bases that are expensive to sample (an autoregressive flow takes d
        passes per draw). A new pool at every call (`fit` calls it), from the model's seed
        and a count of the pools drawn in this session (a loaded model counts from 0
        again). The pool is no weight: it is not saved. Each base
        batch is an independent uniform draw from the pool, so the in-batch log Ẑ estimates
        E_pool[exp g], which tends to E_q[exp g] as P grows; normalization
        (`normalize`, `dde.ValidationLogLikelihood`) draws the base itself, independently of
        the pool, so a residual fitted to the pool's points shows on validation data."""
        if self.base_pool_size is None:
            return
        pool = self._base_pool
        seed = sanitize_seed(self.seed, BASE_POOL_SALT)
        seed = tf.random.experimental.stateless_fold_in(tf.constant(seed, tf.int64),
                                                        pool.draws)
        pool.draws += 1

        def build():
            return tf.function(lambda n, s: self.base.sample(n, s, None),
                               reduce_retracing=True)

        draw = compiled_function(self, "base_pool_draw", build, companions=(self.base,))
        n = self.base_pool_size
        parts = [draw(tf.constant(min(batch_size, n - i), tf.int32),
                      tf.random.experimental.stateless_fold_in(seed, i // batch_size))
                 for i in range(0, n, batch_size)]
        samples = tf.cast(tf.concat(parts, 0), self.compute_dtype)
        if not bool(tf.reduce_all(tf.math.is_finite(samples))):
            raise ValueError("The base produced non-finite samples for the pool.")
        if pool.samples is None or pool.samples.shape != samples.shape:
            with self.distribute_strategy.scope():
                pool.samples = tf.Variable(samples, trainable=False, name="base_pool")
            # compiled steps read the pool when traced: trace them again with this one
            self.train_function = self.test_function = self.predict_function = None
        else:
            pool.samples.assign(samples)

    # -------------------------------------------------------------------------- NumPy level
    def _check_query(self, x, name="x"):
        arr = check_data(x, name=name, n_features=self.input_dim if self.built else None,
                         owner=type(self).__name__, dtype=self.compute_dtype)
        self._build_for(arr.shape[1], name)
        self._require_whitening()
        return arr

    def _compiled_fn(self, key, fn):
        """fn(model, x [b, d], σ scalar) compiled once per model (weakly cached)."""
        model = weak(self)
        spec = [tf.TensorSpec([None, self.input_dim], self.compute_dtype),
                tf.TensorSpec([], self.compute_dtype)]
        return compiled_function(self, (key, self.input_dim, self.compute_dtype), lambda: (
            tf.function(lambda x, s: fn(model(), x, s), input_signature=spec,
                        reduce_retracing=True)))

    def _run_batched(self, key, fn, x, noise_std, batch_size):
        x = self._check_query(x)
        sigma = self.resolve_noise_std(noise_std)
        compiled = self._compiled_fn(key, fn)
        batch_size = check_positive(batch_size, "batch_size", integer=True)
        sigma_t = tf.constant(sigma, self.compute_dtype)
        outs = [compiled(tf.constant(x[i:i + batch_size]), sigma_t).numpy()
                for i in range(0, len(x), batch_size)]
        return np.concatenate(outs, axis=0)

    def log_density(self, x, noise_std=None, batch_size: int = _INFERENCE_BATCH) -> np.ndarray:
        """Un-normalized log-density f(x): [n, d] → [n] (NumPy, validated, batched)."""
        return self._run_batched(
            "log_density", lambda m, x, s: m._energy(x, m._sigma_column(x, s)), x,
            noise_std, batch_size)

    def score(self, x, noise_std=None, batch_size: int = _INFERENCE_BATCH) -> np.ndarray:
        """Score ∇ₓf(x): [n, d] → [n, d] (NumPy, validated, batched)."""
        return self._run_batched("score", lambda m, x, s: m.score_tensor(x, s), x, noise_std,
                                 batch_size)

    def denoise(self, x, noise_std=None, batch_size: int = _INFERENCE_BATCH) -> np.ndarray:
        """Tweedie denoiser D(x) = x + σ²∇ₓf(x): [n, d] → [n, d] (NumPy, validated, batched);
        with whitening the noise covariance is σ²Σ (Σ = LLᵀ), so D(x) = x + σ²Σ∇ₓf(x)."""
        def fn(m, x, s):
            step = tf.square(s) * m.score_tensor(x, s)
            if m.whiten:  # Σ g = L Lᵀ g = W⁻¹ W⁻ᵀ g
                w = tf.cast(m.whiten_matrix, x.dtype)
                step = tf.transpose(tf.linalg.triangular_solve(
                    w, tf.linalg.triangular_solve(w, tf.transpose(step), adjoint=True)))
            return x + step
        return self._run_batched("denoise", fn, x, noise_std, batch_size)

    # ----------------------------------------------------------------------- normalization
    @property
    def is_normalized(self) -> bool:
        """Whether `normalize` has set log Ẑ."""
        return bool(np.isfinite(self.log_z.numpy()))

    def set_log_partition(self, log_z: float, stderr: float = 0.0, ess: float = float("nan"),
                          noise_std: float | None = None, pareto_k: float = float("nan"),
                          reliable: bool | None = None):
        """Store a log-partition estimate log Ẑ (with its standard error, ESS, Pareto k̂ and
        reliability flag) of the density at noise level `noise_std` (default: sigma_min of a
        NoiseConditionalDDE, the model's σ for a DenoisingDensityEstimator)."""
        if not np.isfinite(log_z):
            raise ValueError(f"log_z must be finite, got {log_z}.")
        if abs(log_z) > MAX_ABS_LOG_Z:
            raise ValueError(
                f"log Ẑ = {log_z:.4g} is absurd (|log Ẑ| > {MAX_ABS_LOG_Z:g}): the energies "
                "are far too large, e.g. for data far from unit scale, and in float32 they "
                "would lose the precision of log-densities. Standardize the data and "
                "retrain; the estimate is not stored.")
        sigma = self.resolve_noise_std(noise_std)
        self.log_z.assign(float(log_z))
        self.log_z_stderr.assign(float(stderr))
        self.log_z_ess.assign(float(ess))
        self.log_z_noise_std.assign(float(sigma))
        self.log_z_pareto_k.assign(float(pareto_k))
        self.log_z_reliable.assign(float("nan") if reliable is None else float(bool(reliable)))

    @property
    def log_z_is_reliable(self) -> bool:
        """Whether the stored log Ẑ was marked reliable (an estimate stored without the flag
        counts as reliable unless its ESS is below 100)."""
        flag = float(self.log_z_reliable.numpy())
        if np.isfinite(flag):
            return bool(flag)
        ess = float(self.log_z_ess.numpy())
        return not (np.isfinite(ess) and ess < 100.0)

    def normalized_noise_std(self, noise_std=None) -> float:
        """The σ at which the stored log Ẑ applies, checked against `noise_std` (a requested
        σ of a NoiseConditionalDDE; None: the stored one). Raises ValueError when log Ẑ was
        estimated at another σ (for a DenoisingDensityEstimator: when its σ changed since)."""
        stored = float(self.log_z_noise_std.numpy())
        sigma = self.resolve_noise_std(noise_std)
        if np.isfinite(stored) and not math.isclose(sigma, stored, rel_tol=1e-5):
            raise ValueError(
                f"log Ẑ of this {type(self).__name__} was estimated at noise_std = "
                f"{stored:.6g}, not at {sigma:.6g}: call normalize again at that σ.")
        return sigma

    def normalize(self, x_train=None, method: str = "is", proposal="default",
                  num_samples: int | None = None, batch_size: int | None = None, seed=None,
                  **options):
        """Estimate log Ẑ = log ∫ exp f(x) dx by Monte Carlo and store it in the model.

        x_train [N, d]: data the proposal is fitted to. method: "is" (importance sampling)
        or "ais" (annealed importance sampling). proposal: "default" (the base density of a
        base-density model, else "gaussian"), "gaussian", "student_t", "gmm", "smoothed" or
        a `tfp.distributions.Distribution` with event size d (AIS anneals from it). The estimate comes with its standard error, effective sample size (ESS) and the
        Pareto k̂ of its weights; an unreliable estimate (small ESS or large k̂) warns (see
        `dde.partition`). num_samples: samples (IS, default 100,000) or chains (AIS, default
        1,000). seed: default the model's seed. proposal_options: options of a named
        proposal (e.g. {"n_components": 8} for "gmm"). For a NoiseConditionalDDE, f(·, σ) is
        normalized at σ = `noise_std` (an option; default sigma_min). Other options: see
        `dde.partition.estimate_model_log_partition`. Afterwards `log_prob(x) = f(x) −
        log Ẑ`; log Ẑ, its standard error, ESS, k̂ and reliability are saved with the model.
        Returns the `dde.partition.LogPartitionResult`.
        """
        result = partition.estimate_model_log_partition(
            self, x_train, method=method, proposal=proposal, num_samples=num_samples,
            batch_size=batch_size, seed=seed, **options)
        self.set_log_partition(result.log_z, result.stderr, result.ess,
                               noise_std=options.get("noise_std"), pareto_k=result.pareto_k,
                               reliable=result.reliable)
        return result

    def log_prob(self, x, noise_std=None, batch_size: int = _INFERENCE_BATCH) -> np.ndarray:
        """Normalized log-density `f(x) − log Ẑ`: [n, d] → [n] float64. Needs `normalize`.

        For a NoiseConditionalDDE, f(·, σ) at the σ log Ẑ was estimated at (`noise_std`, if
        given, must be that σ)."""
        if not self.is_normalized:
            raise RuntimeError(
                f"This {type(self).__name__} is not normalized: call "
                "model.normalize(x_train, ...) (or set_log_partition) before log_prob.")
        sigma = self.normalized_noise_std(noise_std)
        f = self.log_density(x, noise_std=sigma, batch_size=batch_size)
        return f.astype(np.float64) - float(self.log_z.numpy())

    # ---------------------------------------------------------------------- serialization
    def export(self, filepath, format="tf_saved_model", verbose=None, noise_std=None,
               **kwargs):
        """Write a SavedModel for serving without Python or dde into the folder `filepath`:
        signatures `log_density`, `score` and, when normalized, `log_prob`, each taking
        x [batch, d] float32, at noise level `noise_std` (a NoiseConditionalDDE: default
        sigma_min); see `dde.export`. Other formats: `keras.Model.export`."""
        if format != "tf_saved_model" or kwargs:
            return super().export(filepath, format=format, verbose=verbose, **kwargs)
        return export_density(self, filepath, noise_std=noise_std, progress=bool(verbose))

    def get_config(self):
        config = self.base_config()
        config["network"] = keras.saving.serialize_keras_object(self.network)
        config["seed"] = self.seed
        if self.base is not None:
            if not isinstance(self.base, (bases.GaussianMixtureBase, bases.FlowBase)):
                raise ValueError(
                    f"This model's base ({type(self.base).__name__}) cannot be saved: only a "
                    "GaussianMixtureBase or a FlowBase is (dde.bases.as_base converts "
                    "Gaussians, Gaussian mixtures and dde.flows models).")
            config["base"] = keras.saving.serialize_keras_object(self.base)
        config.update(smooth_base=self.smooth_base, objective=self.objective,
                      dsm_weight=self.dsm_weight, num_base_samples=self.num_base_samples,
                      base_pool_size=self.base_pool_size,
                      ess_penalty=self.ess_penalty, whiten=self.whiten)
        return config

    @classmethod
    def from_config(cls, config):
        config = cls._deserialize_dtype(config)
        config["network"] = keras.saving.deserialize_keras_object(config["network"])
        if isinstance(config.get("base"), dict):
            config["base"] = keras.saving.deserialize_keras_object(config["base"])
        if isinstance(config.get("dtype"), dict):
            config["dtype"] = keras.saving.deserialize_keras_object(config["dtype"])
        return cls(**config)

    # ---------------------------------------------------------------------------- sampling
    def sample(self, n: int, method: str = "ula", init=None, num_steps: int | None = None,
               step_size: float | None = None, seed=None, progress: bool = False,
               return_trajectory: bool = False, return_results: bool = False,
               **sampler_options):
        """Draw n samples from exp f by Langevin dynamics (n independent chains).

        method: "ula" (unadjusted), "mala" (Metropolis-adjusted, step size adapted during
        burn-in) or "annealed" (NoiseConditionalDDE only; over `noise_levels(num_levels)`,
        then `refine_steps=200` MALA steps at σ_min) — the names of `dde.sampling.SAMPLERS`.
        init: starting points [n, d] (or [1, d]), or how to draw them from q =
        `default_proposal()` (the base, or N(data_mean, data_cov) of the data `fit` saw):
        "smc" (default for ULA and MALA) — a population carried from q to exp f by tempered
        sequential Monte Carlo (`dde.smc`), so that the chains start with the model's mode
        masses (a chain stays in the basin it starts in); "resample" — 20·n draws of q
        importance-resampled by exp(f − log q); "proposal" (default for annealed, convolved
        with N(0, σ₁²I)) — draws of q. A standard normal (with a warning) if the model was
        not fit. How the start was drawn is in `results.diagnostics["init"]` (SMC: log Ẑ,
        temperatures, ESS). num_steps: Langevin steps per chain (default 1000; MALA adds
        num_burnin_steps = num_steps // 2; annealed: steps_per_level = num_steps //
        num_levels). step_size h (x ← x + h∇f + sqrt(2h)ξ): default
        `dde.sampling.default_step_size` — 0.1σ² (ULA), σ² adapted (MALA), 0.05σ_L²
        (annealed). seed: an int for reproducible samples. progress: show a progress bar.
        sampler_options: further arguments of the sampler layer (`dde.sampling`).

        Returns the samples [n_ok, d] (chains whose state became NaN/inf are dropped with a
        RuntimeWarning, so n_ok ≤ n); with return_trajectory, (samples, trajectory
        [num_steps // thin, n_ok, d]); with return_results, the `SamplerResults` namedtuple
        (samples, trajectory, acceptance_rate, num_diverged, step_size, diagnostics; with a
        trajectory, diagnostics hold `tfp.mcmc`'s ESS and split R̂ per coordinate).
        """
        return sampling.sample_model(self, n, method=method, init=init, num_steps=num_steps,
                            step_size=step_size, seed=seed, progress=progress,
                            return_trajectory=return_trajectory,
                            return_results=return_results, **sampler_options)


@keras.saving.register_keras_serializable(package="dde")
class DenoisingDensityEstimator(EnergyModel):
    """A Keras network `f: [batch, d] → [batch, 1]` (or [batch]) as an un-normalized
    log-density, trained by denoising score matching at noise level `noise_std` (σ).

    `model(x)` / `log_density(x)` → f(x) [batch]; `score(x)` → ∇ₓf [batch, d];
    `denoise(x)` → x + σ²∇ₓf(x). The σ in force is a (non-trainable) variable of the model,
    changed by `NoiseStdSchedule` during training and saved with the model; the learned f
    approximates log p_σ, the data density smoothed by N(0, σ²I), up to a constant.

    Example:
        model = DenoisingDensityEstimator(energy_mlp(2), noise_std=0.1)
        model.compile(optimizer=keras.optimizers.Adam(1e-3))
        model.fit(x_train, epochs=50, batch_size=256)
    """

    def __init__(self, network, noise_std: float = 0.1, seed: int | None = None, **kwargs):
        super().__init__(network, seed=seed, **kwargs)
        check_positive(noise_std, "noise_std")
        self.noise_std = self.add_weight(shape=(), trainable=False, name="noise_std",
                                         initializer=keras.initializers.Constant(noise_std))

    def call(self, x, training=False):
        """f(x) [batch]: the network's output (plus log q_σ(x) with a base; with whitening,
        of u = W(x − m), plus log|det W|)."""
        return self._energy(x, self._default_sigma(x), training=training)

    def _energy_u(self, u, sigma, training=False):
        g = self._residual(u, sigma, training=training)
        return g if self.base is None else g + self._base_log_prob(u, sigma)

    def _residual(self, x, sigma, training=False):
        f = self.network(x, training=training)
        if len(f.shape) == 2:
            if f.shape[-1] != 1:
                raise ValueError(f"The network must output [batch, 1] or [batch]; got shape "
                                 f"{f.shape}.")
            f = f[:, 0]
        return f

    def resolve_noise_std_tensor(self):
        return self.noise_std.value

    def _training_noise_std(self, batch_size, seed):
        return tf.fill([batch_size, 1], tf.cast(self.noise_std, self.compute_dtype))

    def _default_sigma(self, x):
        return tf.fill([tf.shape(x)[0], 1], tf.cast(self.noise_std, x.dtype))

    def resolve_noise_std(self, noise_std=None) -> float:
        """The model's σ (the one in force). A DDE has a single noise level: a `noise_std`
        other than it is a ValueError (a NoiseConditionalDDE models a range of σ)."""
        sigma = float(self.noise_std.numpy())
        if noise_std is None:
            return sigma
        check_positive(noise_std, "noise_std")
        if not math.isclose(float(noise_std), sigma, rel_tol=1e-5):
            raise ValueError(
                f"This DenoisingDensityEstimator has a single noise level σ = {sigma:.6g}; "
                f"noise_std = {float(noise_std):.6g} selects another. Pass noise_std=None, "
                "or use a NoiseConditionalDDE for a range of noise levels.")
        return sigma

    def _logs(self):
        return {"loss": self.loss_tracker.result(), "noise_std": self.noise_std.value}

    def get_config(self):
        return {**super().get_config(), "noise_std": float(self.noise_std.numpy())}


@keras.saving.register_keras_serializable(package="dde")
class NoiseConditionalDDE(EnergyModel):
    """Noise-conditional energy `f(x, σ)` over σ ∈ [sigma_min, sigma_max].

    `network` maps `[x, log σ]` ([batch, d], [batch, 1]) → [batch, 1] (see
    `dde.nets.conditional_energy_mlp`). Training draws log σ uniformly per example and uses the
    DSM loss with weight λ(σ) = σ²; then `∇ₓf(·, σ)` approximates the score of the data
    smoothed by N(0, σ²I) at every σ in the range. Without `noise_std`, methods use sigma_min.

    sigma_max: None (default) sets it from the training data when `fit` (or
    `set_data_statistics`) first sees them: the largest distance between two training points
    (Song & Ermon 2020, technique 1), so that p_{σ_max} is nearly the prior of the diffusion
    bridge (`dde.DDEScore`) and annealed sampling starts from a level where the modes mix.
    A given sigma_max smaller than that distance warns, naming both.
    """

    def __init__(self, network, sigma_min: float = 0.01, sigma_max: float | None = None,
                 seed: int | None = None, **kwargs):
        super().__init__(network, seed=seed, **kwargs)
        if self.objective != "dsm" or self.ess_penalty > 0:
            raise ValueError("A NoiseConditionalDDE trains by denoising score matching "
                             "(objective='dsm', ess_penalty=0).")
        check_positive(sigma_min, "sigma_min")
        self.sigma_min = float(sigma_min)
        self.sigma_max = None
        if sigma_max is not None:
            self._set_sigma_max(sigma_max)

    def _set_sigma_max(self, sigma_max):
        check_positive(sigma_max, "sigma_max")
        if self.sigma_min >= sigma_max:
            raise ValueError(f"sigma_min ({self.sigma_min}) must be smaller than sigma_max "
                             f"({sigma_max}).")
        self.sigma_max = float(sigma_max)

    def _require_sigma_max(self):
        if self.sigma_max is None:
            raise ValueError("sigma_max of this NoiseConditionalDDE is set from the training "
                             "data: fit it first (or call set_data_statistics), or pass "
                             "sigma_max=.")
        return self.sigma_max

    def set_data_statistics(self, x):
        """As `EnergyModel.set_data_statistics`; also sets sigma_max (when it was None) to
        the largest distance between two rows of x, and warns when a given sigma_max is
        smaller than that."""
        super().set_data_statistics(x)
        if isinstance(x, tf.data.Dataset):
            x = np.concatenate([np.asarray(first_component(b)) for b in x.take(8)])
        if self.is_whitened:  # σ lives in whitened coordinates
            x = (np.asarray(x, np.float64) - self.whiten_shift.numpy()) @ \
                self.whiten_matrix.numpy().T
        spread = data_diameter(x, seed=self.seed)
        if self.sigma_max is None:
            self._set_sigma_max(max(spread, self.sigma_min * 10.0))
        elif self.sigma_max < spread:
            warnings.warn(
                f"sigma_max = {self.sigma_max:.4g} is smaller than the largest distance "
                f"between training points ({spread:.4g}): p_σ at sigma_max is far from the "
                "Gaussian prior of the diffusion bridge, and annealed sampling cannot mix "
                "distant modes. Use sigma_max=None (the data's diameter).", UserWarning,
                stacklevel=3)

    def _build_network(self, input_shape):
        if not self.network.built:
            self.network.build([input_shape, (input_shape[0], 1)])

    def call(self, x, noise_std=None, training=False):
        """f(x, σ): x [batch, d], noise_std a scalar or [batch] (default sigma_min) → [batch]."""
        return self._energy(x, self._sigma_column(x, noise_std), training=training)

    def _residual(self, x, sigma, training=False):
        f = self.network([x, tf.math.log(tf.cast(sigma, x.dtype))], training=training)
        if len(f.shape) == 2:
            f = f[:, 0]
        return f

    def _energy_u(self, u, sigma, training=False):
        """f(u, σ) = g([u, log σ]) (+ log q_σ(u) with a base) for sigma [batch, 1]."""
        g = self._residual(u, sigma, training=training)
        return g if self.base is None else g + self._base_log_prob(u, sigma)

    def _training_noise_std(self, batch_size, seed):
        u = tf.random.stateless_uniform([batch_size, 1], seed, dtype=self.compute_dtype)
        lo, hi = math.log(self.sigma_min), math.log(self._require_sigma_max())
        return tf.exp(lo + (hi - lo) * u)

    def _default_sigma(self, x):
        return tf.fill([tf.shape(x)[0], 1], tf.constant(self.sigma_min, x.dtype))

    def resolve_noise_std(self, noise_std=None) -> float:
        """`noise_std` (any σ > 0; the trained range is [sigma_min, sigma_max]), or
        sigma_min when None."""
        if noise_std is None:
            return self.sigma_min
        return float(check_positive(noise_std, "noise_std"))

    def normalized_noise_std(self, noise_std=None) -> float:
        """As `EnergyModel.normalized_noise_std`; without `noise_std`, the σ log Ẑ was
        estimated at (sigma_min if the model is not normalized)."""
        if noise_std is None:
            stored = float(self.log_z_noise_std.numpy())
            noise_std = stored if np.isfinite(stored) else None
        return super().normalized_noise_std(noise_std)

    def noise_levels(self, num_levels: int) -> np.ndarray:
        """Geometric noise levels σ₁ = sigma_max > … > σ_L = sigma_min, shape [num_levels]."""
        check_positive(num_levels, "num_levels", integer=True)
        return np.geomspace(self._require_sigma_max(), self.sigma_min, num_levels)

    def get_config(self):
        return {**super().get_config(), "sigma_min": self.sigma_min,
                "sigma_max": self.sigma_max}


def data_diameter(x, max_points: int = 2000, seed: int = 0) -> float:
    """The largest Euclidean distance between two rows of x [n, d] (on a random subset of
    `max_points` rows when n is larger: a slight underestimate)."""
    x = np.asarray(x, dtype=np.float64)
    if len(x) > max_points:
        x = x[np.random.default_rng(seed).choice(len(x), max_points, replace=False)]
    sq = np.sum(x * x, axis=1)
    d2 = sq[:, None] + sq[None, :] - 2.0 * x @ x.T
    return float(math.sqrt(max(float(d2.max()), 0.0)))


class NoiseStdSchedule(keras.callbacks.Callback):
    """Geometric decay of a DDE's noise level during training:

        σ_k = max(σ₀ · factor^⌊k / every_n_batches⌋, min_noise_std),

    k counting the batches of this `fit` call, σ₀ the model's σ when training starts. The
    defaults (×0.9091 every 10,000 batches) are those used for DDEs on standardized UCI data;
    the final σ defines the density learned, and it is saved with the model.
    `NoiseStdSchedule.annealing` builds a schedule that reaches a final σ within a step budget.
    """

    def __init__(self, factor: float = 0.9091, every_n_batches: int = 10_000,
                 min_noise_std: float = 0.05):
        super().__init__()
        check_positive(factor, "factor")
        if factor > 1:
            raise ValueError(f"factor must be in (0, 1], got {factor}.")
        self.factor = float(factor)
        self.every_n_batches = check_positive(every_n_batches, "every_n_batches", integer=True)
        self.min_noise_std = check_positive(min_noise_std, "min_noise_std")
        #: Batches after which σ is min_noise_std exactly (set by `annealing`; None: never
        #: forced, σ follows the formula).
        self.final_batch = None
        #: The batch budget the schedule was planned for (`annealing`).
        self.anneal_steps = None

    @classmethod
    def annealing(cls, initial_noise_std: float, final_noise_std: float, total_steps: int,
                  fraction: float = 0.6, factor: float = 0.8,
                  every_n_batches: int | None = None) -> "NoiseStdSchedule":
        """The geometric annealing recipe from σ₀ = `initial_noise_std` down to
        `final_noise_std` over the first `fraction` of `total_steps` batches, for a model whose
        σ is σ₀ when `fit` starts; σ is the final one from batch `final_batch` on, which is
        guaranteed to lie within the budget (before its last batch).

        σ decays by `factor` every ⌊fraction·total_steps / n⌋ batches, n = ⌈log(σ_final/σ₀) /
        log factor⌉ decays. When the window has fewer batches than n, σ decays every batch by
        the stronger factor (σ_final/σ₀)^(1/window) instead. `every_n_batches` fixes the
        interval (and `fraction` is unused): a ValueError says so if σ_final would then not be
        reached within `total_steps`. Raises ValueError for a budget of one batch (nothing to
        anneal over) or σ_final > σ₀.
        """
        initial = check_positive(initial_noise_std, "initial_noise_std")
        final = check_positive(final_noise_std, "final_noise_std")
        total = check_positive(total_steps, "total_steps", integer=True)
        check_positive(fraction, "fraction")
        check_positive(factor, "factor")
        if fraction > 1 or factor >= 1:
            raise ValueError(f"fraction must be in (0, 1] and factor in (0, 1), got "
                             f"{fraction} and {factor}.")
        if final > initial:
            raise ValueError(f"The final σ ({final}) must not exceed the initial σ "
                             f"({initial}).")
        ratio = final / initial
        decays = math.ceil(math.log(ratio) / math.log(factor)) if ratio < 1 else 0
        window = min(max(int(fraction * total), 1), total - 1)
        if every_n_batches is not None:
            every = check_positive(every_n_batches, "every_n_batches", integer=True)
            if decays * every > total - 1:
                raise ValueError(
                    f"σ decaying by {factor} every {every} batches reaches {final} after "
                    f"{decays * every} batches, but training has only {total}; decay at most "
                    f"every {max((total - 1) // max(decays, 1), 1)} batches (or train "
                    "longer).")
        elif decays == 0:
            every = 1
        elif window < 1:
            raise ValueError(f"Cannot anneal σ from {initial} to {final} in {total} training "
                             "step: train for more steps, or start at the final σ.")
        elif decays <= window:
            every = window // decays
        else:  # too short a window for this factor: one (stronger) decay per batch
            every, decays = 1, window
            factor = math.exp(math.log(ratio) / window)
        schedule = cls(factor=min(factor, 1.0), every_n_batches=every, min_noise_std=final)
        schedule.final_batch = decays * every
        schedule.anneal_steps = window
        return schedule

    def resume(self, batches: int, initial_noise_std: float) -> None:
        """Continue, in the next `fit`, a schedule interrupted after `batches` batches of a
        run that started at σ₀ = `initial_noise_std` (training resumed from a checkpoint,
        whose model holds the σ reached, not σ₀)."""
        self._resume = (int(batches), float(check_positive(initial_noise_std,
                                                           "initial_noise_std")))

    def on_train_begin(self, logs=None):
        if not isinstance(self.model, DenoisingDensityEstimator):
            raise TypeError("NoiseStdSchedule needs a DenoisingDensityEstimator.")
        resumed = self.__dict__.pop("_resume", None)
        self._batches, self._sigma0 = resumed or (0, float(self.model.noise_std.numpy()))
        self._current = float(self.model.noise_std.numpy())

    def noise_std_at(self, batches: int) -> float:
        """σ after `batches` training batches."""
        if self.final_batch is not None and batches >= self.final_batch:
            return self.min_noise_std
        return max(self._sigma0 * self.factor ** (batches // self.every_n_batches),
                   min(self.min_noise_std, self._sigma0))

    def on_train_batch_begin(self, batch, logs=None):
        target = self.noise_std_at(self._batches)
        if target != self._current:
            self.model.noise_std.assign(target)
            self._current = target
        self._batches += 1
