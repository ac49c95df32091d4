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
"""
from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf

from dde._validation import check_data, check_positive
from dde.training import DSMModel, mean_and_covariance, weighted_mean

_INFERENCE_BATCH = 8192


class EnergyModel(DSMModel):
    """Base class of energy models `f(x)` trained by denoising score matching.

    Subclasses implement `_energy(x, sigma, training)` → [batch] (sigma: [batch, 1] noise level
    of each example) and `_training_noise_std(batch_size, seed)` → [batch, 1].

    NumPy-level methods (`log_density`, `score`, `denoise`, `log_prob`) validate their input,
    run in batches through compiled functions and return NumPy arrays. Tensor-level methods
    (`call`, `score_tensor`, `log_density_and_score`) are for use inside `tf.function`.
    """

    def __init__(self, network, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(network, keras.layers.Layer):
            raise TypeError(f"network must be a Keras layer or model, got {type(network)!r}.")
        self.network = network
        self._init_training(seed)
        # The normalization (log Ẑ, its standard error and effective sample size) set by
        # `normalize`; NaN until then. Saved with the model.
        self.log_z = self.add_weight(shape=(), dtype="float64", trainable=False, name="log_z",
                                     initializer=keras.initializers.Constant(float("nan")))
        self.log_z_stderr = self.add_weight(
            shape=(), dtype="float64", trainable=False, name="log_z_stderr",
            initializer=keras.initializers.Constant(float("nan")))
        self.log_z_ess = self.add_weight(
            shape=(), dtype="float64", trainable=False, name="log_z_ess",
            initializer=keras.initializers.Constant(float("nan")))
        # The noise level σ of the density log Ẑ normalizes (for a NoiseConditionalDDE, the σ
        # of f(·, σ); for a DenoisingDensityEstimator, its σ when normalized).
        self.log_z_noise_std = self.add_weight(
            shape=(), dtype="float64", trainable=False, name="log_z_noise_std",
            initializer=keras.initializers.Constant(float("nan")))

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
        self.built = True

    def _build_network(self, input_shape):
        if not self.network.built:
            self.network.build(input_shape)

    def _ensure_built(self, input_dim: int):
        if not self.built:
            self(tf.zeros([1, input_dim], self.compute_dtype))

    @property
    def has_data_stats(self) -> bool:
        """Whether `data_mean` / `data_cov` hold training-data statistics."""
        return self.built and bool(np.isfinite(self.data_mean.numpy()).all())

    # ------------------------------------------------------------------------- tensor level
    def _energy(self, x, sigma, training=False):
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
        return tf.reshape(sigma, [-1, 1])

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
        batch. Differentiable w.r.t. the weights (the inner gradient is recorded).
        """
        seeds = tf.random.experimental.stateless_split(seed, 2)
        sigma = tf.cast(self._training_noise_std(tf.shape(x)[0], seeds[0]), x.dtype)
        noise = sigma * tf.random.stateless_normal(tf.shape(x), seeds[1], dtype=x.dtype)
        x_noisy = x + noise
        with tf.GradientTape() as tape:
            tape.watch(x_noisy)
            f = self._energy(x_noisy, sigma, training=training)
        grad = tape.gradient(f, x_noisy)
        per_example = tf.reduce_sum(tf.square(sigma * grad + noise / sigma), axis=-1)
        return weighted_mean(per_example, sample_weight)

    # ------------------------------------------------------------------------ Keras hooks
    def predict_step(self, data):
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        return self(tf.cast(x, self.compute_dtype), training=False)

    # ---------------------------------------------------------------------------- fitting
    def _on_fit_data(self, x):
        """`fit` stores the training data's mean and covariance (`data_mean`, `data_cov`)."""
        self._store_data_stats(x)

    def _store_data_stats(self, x):
        stats = mean_and_covariance(x)
        if stats is not None:
            self.data_mean.assign(stats[0])
            self.data_cov.assign(stats[1])

    # -------------------------------------------------------------------------- NumPy level
    def _check_query(self, x, name="x"):
        arr = check_data(x, name=name, n_features=self.input_dim if self.built else None,
                         owner=type(self).__name__, dtype=self.compute_dtype)
        self._ensure_built(arr.shape[1])
        return arr

    def _compiled_fn(self, key, fn):
        if key not in self._compiled:
            spec = [tf.TensorSpec([None, self.input_dim], self.compute_dtype),
                    tf.TensorSpec([], self.compute_dtype)]
            self._compiled[key] = tf.function(fn, input_signature=spec, reduce_retracing=True)
        return self._compiled[key]

    def _run_batched(self, key, fn, x, noise_std, batch_size):
        x = self._check_query(x)
        sigma = self._resolve_noise_std(noise_std)
        compiled = self._compiled_fn(key, fn)
        batch_size = check_positive(batch_size, "batch_size", integer=True)
        sigma_t = tf.constant(sigma, self.compute_dtype)
        outs = [compiled(tf.constant(x[i:i + batch_size]), sigma_t).numpy()
                for i in range(0, len(x), batch_size)]
        return np.concatenate(outs, axis=0)

    def _resolve_noise_std(self, noise_std):
        raise NotImplementedError

    def log_density(self, x, noise_std=None, batch_size: int = _INFERENCE_BATCH) -> np.ndarray:
        """Un-normalized log-density f(x): [n, d] → [n] (NumPy, validated, batched)."""
        return self._run_batched(
            "log_density", lambda x, s: self._energy(x, self._sigma_column(x, s)), x,
            noise_std, batch_size)

    def score(self, x, noise_std=None, batch_size: int = _INFERENCE_BATCH) -> np.ndarray:
        """Score ∇ₓf(x): [n, d] → [n, d] (NumPy, validated, batched)."""
        return self._run_batched("score", lambda x, s: self.score_tensor(x, s), x, noise_std,
                                 batch_size)

    def denoise(self, x, noise_std=None, batch_size: int = _INFERENCE_BATCH) -> np.ndarray:
        """Tweedie denoiser D(x) = x + σ²∇ₓf(x): [n, d] → [n, d] (NumPy, validated, batched)."""
        def fn(x, s):
            return x + tf.square(s) * self.score_tensor(x, s)
        return self._run_batched("denoise", fn, x, noise_std, batch_size)

    # ----------------------------------------------------------------------- normalization
    @property
    def is_normalized(self) -> bool:
        """Whether `normalize` has set log Ẑ."""
        return bool(np.isfinite(self.log_z.numpy()))

    def set_log_partition(self, log_z: float, stderr: float = 0.0, ess: float = float("nan"),
                          noise_std: float | None = None):
        """Store a log-partition estimate log Ẑ (with its standard error and ESS) of the
        density at noise level `noise_std` (default: sigma_min of a NoiseConditionalDDE, the
        model's σ for a DenoisingDensityEstimator)."""
        if not np.isfinite(log_z):
            raise ValueError(f"log_z must be finite, got {log_z}.")
        sigma = self._resolve_noise_std(noise_std)
        self.log_z.assign(float(log_z))
        self.log_z_stderr.assign(float(stderr))
        self.log_z_ess.assign(float(ess))
        self.log_z_noise_std.assign(float(sigma))

    def normalized_noise_std(self, noise_std=None) -> float:
        """The σ at which the stored log Ẑ applies, checked against `noise_std` (a requested
        σ of a NoiseConditionalDDE; None: the stored one). Raises ValueError when log Ẑ was
        estimated at another σ (for a DenoisingDensityEstimator: when its σ changed since)."""
        stored = float(self.log_z_noise_std.numpy())
        sigma = self._resolve_noise_std(noise_std)
        if np.isfinite(stored) and not math.isclose(sigma, stored, rel_tol=1e-5):
            raise ValueError(
                f"log Ẑ of this {type(self).__name__} was estimated at noise_std = "
                f"{stored:.6g}, not at {sigma:.6g}: call normalize again at that σ.")
        return sigma

    def normalize(self, x_train, method: str = "is", proposal="gaussian",
                  num_samples: int | None = None, batch_size: int | None = None, seed=None,
                  **options):
        """Estimate log Ẑ = log ∫ exp f(x) dx by Monte Carlo and store it in the model.

        x_train [N, d]: data the proposal is fitted to. method: "is" (importance sampling)
        or "ais" (annealed importance sampling). proposal: "gaussian", "student_t", "gmm",
        "smoothed" or a `tfp.distributions.Distribution` with event size d (AIS anneals from
        it). The estimate comes with its standard error and effective sample size (ESS); a
        small ESS warns (see `dde.partition`). num_samples: samples (IS,
        default 100,000) or chains (AIS, default 1,000). seed: default the model's seed.
        For a NoiseConditionalDDE, f(·, σ) is normalized at σ = `noise_std` (an option;
        default sigma_min). Other options: see `dde.partition.estimate_model_log_partition`.
        Afterwards `log_prob(x) = f(x) − log Ẑ`; log Ẑ, its standard error and the ESS are
        saved with the model. Returns the `dde.partition.LogPartitionResult`.
        """
        from dde.partition import estimate_model_log_partition

        result = estimate_model_log_partition(
            self, x_train, method=method, proposal=proposal, num_samples=num_samples,
            batch_size=batch_size, seed=seed, **options)
        self.set_log_partition(result.log_z, result.stderr, result.ess,
                               noise_std=options.get("noise_std"))
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
        f = EnergyModel.log_density(self, x, noise_std=sigma, batch_size=batch_size)
        return f.astype(np.float64) - float(self.log_z.numpy())

    # ---------------------------------------------------------------------- serialization
    def get_config(self):
        config = self.base_config()
        config["network"] = keras.saving.serialize_keras_object(self.network)
        config["seed"] = self.seed
        return config

    @classmethod
    def from_config(cls, config):
        config = cls._deserialize_dtype(config)
        config["network"] = keras.saving.deserialize_keras_object(config["network"])
        return cls(**config)

    # ---------------------------------------------------------------------------- sampling
    def sample(self, n: int, method: str = "ula", init=None, num_steps: int | None = None,
               step_size: float | None = None, seed=None, progress: bool = False,
               return_trajectory: bool = False, return_results: bool = False,
               **sampler_options):
        """Draw n samples from exp f by Langevin dynamics (n independent chains).

        method: "ula" (unadjusted), "mala" (Metropolis-adjusted, step size adapted during
        burn-in) or "annealed" (NoiseConditionalDDE only; over `noise_levels(num_levels)`).
        init: starting points [n, d] (or [1, d]); default draws from N(data_mean, data_cov)
        stored by `fit` (annealed: covariance + σ₁²I), a standard normal (with a warning) if
        the model was not fit. num_steps: Langevin steps per chain (default 1000; MALA adds
        num_burnin_steps = num_steps // 2; annealed: steps_per_level = num_steps //
        num_levels). step_size h (x ← x + h∇f + sqrt(2h)ξ): default
        `dde.sampling.default_step_size` — 0.1σ² (ULA), σ² adapted (MALA), 0.05σ_L²
        (annealed). seed: an int for reproducible samples. progress: show a progress bar.
        sampler_options: further arguments of the sampler layer (`dde.sampling`).

        Returns the samples [n_ok, d] (chains whose state became NaN/inf are dropped with a
        RuntimeWarning, so n_ok ≤ n); with return_trajectory, (samples, trajectory
        [num_steps // thin, n_ok, d]); with return_results, the `SamplerResults` namedtuple
        (samples, trajectory, acceptance_rate, num_diverged, step_size).
        """
        from dde.sampling import sample_model

        return sample_model(self, n, method=method, init=init, num_steps=num_steps,
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
        f = self.network(x, training=training)
        if len(f.shape) == 2:
            if f.shape[-1] != 1:
                raise ValueError(f"The network must output [batch, 1] or [batch]; got shape "
                                 f"{f.shape}.")
            f = f[:, 0]
        return f

    def _energy(self, x, sigma, training=False):
        return self(x, training=training)

    def _training_noise_std(self, batch_size, seed):
        return tf.fill([batch_size, 1], tf.cast(self.noise_std, self.compute_dtype))

    def _default_sigma(self, x):
        return tf.fill([tf.shape(x)[0], 1], tf.cast(self.noise_std, x.dtype))

    def _resolve_noise_std(self, noise_std):
        if noise_std is None:
            return float(self.noise_std.numpy())
        return check_positive(noise_std, "noise_std")

    def log_density(self, x, batch_size: int = _INFERENCE_BATCH) -> np.ndarray:
        """Un-normalized log-density f(x): [n, d] → [n] (NumPy, validated, batched)."""
        return super().log_density(x, batch_size=batch_size)

    def score(self, x, batch_size: int = _INFERENCE_BATCH) -> np.ndarray:
        """Score ∇ₓf(x): [n, d] → [n, d] (NumPy, validated, batched)."""
        return super().score(x, batch_size=batch_size)

    def denoise(self, x, batch_size: int = _INFERENCE_BATCH) -> np.ndarray:
        """Tweedie denoiser D(x) = x + σ²∇ₓf(x) with the σ in force: [n, d] → [n, d]."""
        return super().denoise(x, batch_size=batch_size)

    def log_prob(self, x, batch_size: int = _INFERENCE_BATCH) -> np.ndarray:
        """Normalized log-density `f(x) − log Ẑ`: [n, d] → [n] float64. Needs `normalize`."""
        return super().log_prob(x, batch_size=batch_size)

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
    """

    def __init__(self, network, sigma_min: float = 0.01, sigma_max: float = 1.0,
                 seed: int | None = None, **kwargs):
        super().__init__(network, seed=seed, **kwargs)
        check_positive(sigma_min, "sigma_min")
        check_positive(sigma_max, "sigma_max")
        if sigma_min >= sigma_max:
            raise ValueError(f"sigma_min ({sigma_min}) must be smaller than sigma_max "
                             f"({sigma_max}).")
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)

    def _build_network(self, input_shape):
        if not self.network.built:
            self.network.build([input_shape, (input_shape[0], 1)])

    def call(self, x, noise_std=None, training=False):
        """f(x, σ): x [batch, d], noise_std a scalar or [batch] (default sigma_min) → [batch]."""
        return self._energy(x, self._sigma_column(x, noise_std), training=training)

    def _energy(self, x, sigma, training=False):
        f = self.network([x, tf.math.log(tf.cast(sigma, x.dtype))], training=training)
        if len(f.shape) == 2:
            f = f[:, 0]
        return f

    def _training_noise_std(self, batch_size, seed):
        u = tf.random.stateless_uniform([batch_size, 1], seed, dtype=self.compute_dtype)
        lo, hi = math.log(self.sigma_min), math.log(self.sigma_max)
        return tf.exp(lo + (hi - lo) * u)

    def _default_sigma(self, x):
        return tf.fill([tf.shape(x)[0], 1], tf.constant(self.sigma_min, x.dtype))

    def _resolve_noise_std(self, noise_std):
        if noise_std is None:
            return self.sigma_min
        return check_positive(noise_std, "noise_std")

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
        return np.geomspace(self.sigma_max, self.sigma_min, num_levels)

    def get_config(self):
        return {**super().get_config(), "sigma_min": self.sigma_min,
                "sigma_max": self.sigma_max}


class NoiseStdSchedule(keras.callbacks.Callback):
    """Geometric decay of a DDE's noise level during training:

        σ_k = max(σ₀ · factor^⌊k / every_n_batches⌋, min_noise_std),

    k counting the batches of this `fit` call, σ₀ the model's σ when training starts. The
    defaults (×0.9091 every 10,000 batches) are those used for DDEs on standardized UCI data;
    the final σ defines the density learned, and it is saved with the model.
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

    def on_train_begin(self, logs=None):
        if not isinstance(self.model, DenoisingDensityEstimator):
            raise TypeError("NoiseStdSchedule needs a DenoisingDensityEstimator.")
        self._sigma0 = float(self.model.noise_std.numpy())
        self._current = self._sigma0
        self._batches = 0

    def noise_std_at(self, batches: int) -> float:
        """σ after `batches` training batches."""
        return max(self._sigma0 * self.factor ** (batches // self.every_n_batches),
                   min(self.min_noise_std, self._sigma0))

    def on_train_batch_begin(self, batch, logs=None):
        target = self.noise_std_at(self._batches)
        if target != self._current:
            self.model.noise_std.assign(target)
            self._current = target
        self._batches += 1
