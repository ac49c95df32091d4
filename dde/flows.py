"""Normalizing flows as Keras 3 models: a masked autoregressive flow (MAF; Papamakarios,
Pavlakou & Murray 2017) and rational-quadratic neural spline flows (RQ-NSF; Durkan, Bekasov,
Murray & Papamakarios 2019), autoregressive or coupling, trained by maximum likelihood.

The math
--------
A flow is an invertible map T: x ∈ R^d → z ∈ R^d, a composition T = T_L ∘ … ∘ T_1 of layers
(after an optional fixed whitening), onto a standard normal base density:

    log p(x) = log N(z; 0, I) + log|det ∂z/∂x|,   z = T(x),
    log|det ∂z/∂x| = Σ_l log|det ∂h_l/∂h_{l−1}|   (h_0 = x, h_L = z).

Every layer moves each of its coordinates by a monotone scalar map τ(·; θ) whose parameters θ
come from a conditioner network fed with *other* coordinates:

- autoregressive (a MADE conditioner, Germain et al. 2015): z_i = τ(x_i; θ_i(x_{<i})). The
  Jacobian is triangular, log|det| = Σ_i log τ'(x_i; θ_i). The density direction x → z is one
  pass (the masked network gives every θ_i from x at once); sampling z → x takes d passes,
  x_i = τ⁻¹(z_i; θ_i(x_{<i})) once x_{<i} is known (a `tf.while_loop`);
- coupling (an MLP conditioner, as in RealNVP): x = (x_a, x_b), x_a the first ⌊d/2⌋
  coordinates, z_a = x_a, z_b = τ(x_b; θ(x_a)); both directions are one pass.

A permutation (the reversal, or fixed random ones) between layers changes which coordinates
condition which. Two scalar maps τ:

- affine (MAF): τ(x) = (x − μ)·exp(−α), with the log-scale soft-clipped, α = c·tanh(a/c)
  (c = `log_scale_clip`), θ = (μ, a), log τ' = −α;
- rational-quadratic spline (RQ-NSF): on [−B, B] (B = `tail_bound`) a monotone piecewise
  rational-quadratic function with K bins (`tfp.bijectors.RationalQuadraticSpline`), the
  identity outside. θ holds K widths, K heights and K − 1 interior knot derivatives, all
  unconstrained: widths = w_min + (2B − K·w_min)·softmax(·) (heights alike), derivatives =
  s_min + softplus(· + c₀) with c₀ = log(e^{1 − s_min} − 1). The boundary derivatives are 1,
  matching the identity tails.

The last layer of every conditioner is zero-initialized; zero parameters give μ = α = 0 and
equal bins with unit slopes, so the untrained flow is the identity and its density N(0, I).

Whitening (`whiten=True`): a fixed affine first layer u = L⁻¹(x − m), with m and Σ = LLᵀ the
training data's mean and covariance (plus a ridge of 1e-6 times its mean variance), set by the
first `fit` (or `adapt`); log|det ∂u/∂x| = −Σ_i log L_ii. The untrained whitened flow is then
N(m, Σ).

Learned tails (`learn_tails=True`): next, a learnable elementwise sinh–arcsinh map
(`tfp.bijectors.SinhArcsinh`, inverted; the identity at initialization) whose tail weight can
compress far-out values polynomially, so that the density's tails can be heavier than the
Gaussian base's — which, through identity spline tails, give a point k standard deviations
from the data a log-density near −k²/2.

Shapes: x, z [batch, d]; log p [batch]; conditioner outputs [batch, d, P], P = 2 (affine) or
3K − 1 (spline) parameters per coordinate.

Training: `compile` / `fit` minimize the mean negative log-likelihood (the built-in loss);
`val_loss` is the validation NLL, so `keras.callbacks.EarlyStopping(monitor="val_loss",
restore_best_weights=True)` is validation early stopping. Gradients are clipped to a global
norm of `max_grad_norm`; a batch whose loss or gradient is not finite is skipped (not applied)
and counted in the logs (`skipped_steps`, per epoch). Trained on one device (the models are
not tested under `tf.distribute`).

Example:
    flow = dde.flows.neural_spline_flow(d)
    flow.compile(optimizer=keras.optimizers.Adam(1e-3))
    flow.fit(x_train, epochs=100, batch_size=256, validation_data=x_val,
             callbacks=[keras.callbacks.EarlyStopping(patience=10,
                                                      restore_best_weights=True)])
    log_p = flow.log_prob(x_test)          # NumPy [n], float64
    x_new = flow.sample(1000, seed=0)      # NumPy [1000, d]
"""
from __future__ import annotations

import math
import numbers

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp
from keras import layers

from dde._cache import compiled_function, weak
from dde._validation import check_data, check_positive, random_seed, sanitize_seed
from dde.training import BuiltinLossModel, mean_and_covariance, weighted_mean

tfb = tfp.bijectors

TRANSFORMS = ("affine", "spline")
STRUCTURES = ("autoregressive", "coupling")
PERMUTATIONS = ("reverse", "random")
_INFERENCE_BATCH = 8192
#: An int seed s of `sample` / `sample_tensor` draws the latent points from the stateless
#: seed (s, SAMPLE_SALT), apart from other streams seeded by the same int.
SAMPLE_SALT = 0x5F10
_WHITENING_RIDGE = 1e-6


def _derive_seed(seed, *keys) -> int | None:
    """A non-negative int32 seed derived from (seed, *keys); None stays None."""
    if seed is None:
        return None
    return int(np.random.SeedSequence([int(seed), *keys]).generate_state(1)[0] % (2**31 - 1))


def _check_choice(value, name: str, choices) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}.")
    return value


def _check_hidden_units(hidden_units) -> list[int]:
    if isinstance(hidden_units, (str, bytes)) or not hasattr(hidden_units, "__iter__"):
        raise TypeError(f"hidden_units must be a sequence of positive integers (one per hidden "
                        f"layer), got {hidden_units!r}.")
    return [int(check_positive(u, "hidden_units entry", integer=True)) for u in hidden_units]


def _serialize_activation(activation):
    return keras.activations.serialize(keras.activations.get(activation))


def standard_normal_log_prob(z):
    """log N(z; 0, I) summed over the last axis: [batch, d] → [batch]."""
    d = z.shape[-1]
    return -0.5 * tf.reduce_sum(tf.square(z), axis=-1) - 0.5 * d * math.log(2 * math.pi)


# ------------------------------------------------------------------------ conditioners
@keras.saving.register_keras_serializable(package="dde")
class MaskedDense(layers.Layer):
    """A dense layer whose kernel is multiplied by a fixed 0/1 mask made from degrees (MADE):
    output unit k sees input j iff out_degree[k] ≥ in_degree[j], or out_degree[k] >
    in_degree[j] when `strict` (the output layer of a MADE).

    [batch, len(input_degrees)] → [batch, len(output_degrees)].
    """

    def __init__(self, input_degrees, output_degrees, strict: bool = False, activation=None,
                 kernel_initializer="glorot_uniform", bias_initializer="zeros", **kwargs):
        super().__init__(**kwargs)
        self.input_degrees = [int(v) for v in input_degrees]
        self.output_degrees = [int(v) for v in output_degrees]
        self.strict = bool(strict)
        self.activation = keras.activations.get(activation)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        inp = np.asarray(self.input_degrees)[:, None]
        out = np.asarray(self.output_degrees)[None, :]
        self._degree_mask = ((out > inp) if self.strict else (out >= inp)).astype(np.float32)

    def build(self, input_shape):
        if input_shape[-1] != len(self.input_degrees):
            raise ValueError(f"MaskedDense expects {len(self.input_degrees)} input features, "
                             f"got input shape {input_shape}.")
        shape = self._degree_mask.shape
        self.kernel = self.add_weight(shape=shape, initializer=self.kernel_initializer,
                                      name="kernel")
        self.bias = self.add_weight(shape=(shape[1],), initializer=self.bias_initializer,
                                    name="bias")

    def masked_kernel(self):
        """The kernel times its degree mask: [inputs, outputs]."""
        return self.kernel * tf.cast(self._degree_mask, self.kernel.dtype)

    def call(self, x):
        return self.activation(tf.matmul(x, self.masked_kernel()) + self.bias)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], len(self.output_degrees))

    def get_config(self):
        return {**super().get_config(), "input_degrees": self.input_degrees,
                "output_degrees": self.output_degrees, "strict": self.strict,
                "activation": _serialize_activation(self.activation),
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer)}


class _Conditioner(layers.Layer):
    """A stack of hidden layers and a zero-initialized output layer (set by subclasses),
    reshaped to [batch, out_dim, params_per_dim]."""

    def __init__(self, out_dim: int, params_per_dim: int, hidden_units, activation, seed,
                 **kwargs):
        super().__init__(**kwargs)
        self.out_dim = int(check_positive(out_dim, "out_dim", integer=True))
        self.params_per_dim = int(check_positive(params_per_dim, "params_per_dim",
                                                 integer=True))
        self.hidden_units = _check_hidden_units(hidden_units)
        self.activation = keras.activations.get(activation)
        self.seed = seed
        self.hidden, self.output_layer = [], None

    def _hidden_initializer(self, k: int):
        return keras.initializers.GlorotUniform(_derive_seed(self.seed, k))

    def _build_stack(self, in_features: int):
        shape = (None, in_features)
        for layer in [*self.hidden, self.output_layer]:
            layer.build(shape)
            shape = layer.compute_output_shape(shape)

    def _stack(self, x):
        for layer in [*self.hidden, self.output_layer]:
            x = layer(x)
        return tf.reshape(x, [-1, self.out_dim, self.params_per_dim])

    def get_config(self):
        return {**super().get_config(), "params_per_dim": self.params_per_dim,
                "hidden_units": self.hidden_units,
                "activation": _serialize_activation(self.activation), "seed": self.seed}


@keras.saving.register_keras_serializable(package="dde")
class MADE(_Conditioner):
    """Masked autoencoder for distribution estimation (Germain et al. 2015) as an
    autoregressive conditioner: [batch, d] → [batch, d, params_per_dim], where out[:, i]
    depends only on x[:, :i] (out[:, 0] is a learned constant).

    Inputs have degrees 1..d, hidden unit k of every layer degree 1 + (k mod max(d − 1, 1)),
    the P outputs of coordinate i degree i + 1 with a strict mask. The output layer starts at
    zero.
    """

    def __init__(self, input_dim: int, params_per_dim: int, hidden_units=(128, 128),
                 activation="relu", seed: int | None = None, **kwargs):
        super().__init__(input_dim, params_per_dim, hidden_units, activation, seed, **kwargs)
        self.input_dim = d = self.out_dim
        degrees = np.arange(1, d + 1)
        for k, units in enumerate(self.hidden_units):
            hidden_degrees = np.arange(units) % max(d - 1, 1) + 1
            self.hidden.append(MaskedDense(
                degrees, hidden_degrees, activation=self.activation,
                kernel_initializer=self._hidden_initializer(k), dtype=self.dtype_policy,
                name=f"masked_dense_{k}"))
            degrees = hidden_degrees
        self.output_layer = MaskedDense(
            degrees, np.repeat(np.arange(1, d + 1), self.params_per_dim), strict=True,
            kernel_initializer="zeros", dtype=self.dtype_policy, name="masked_output")

    def build(self, input_shape):
        self._build_stack(self.input_dim)

    def call(self, x):
        return self._stack(x)

    def coordinate_params(self, x, i):
        """θ_i(x_{<i}) = out[:, i] [batch, params_per_dim] for a scalar index i (a tensor
        allowed), the output layer evaluated at coordinate i's P units only: a d-fold
        cheaper last layer than `call` for the passes of an inverse."""
        for layer in self.hidden:
            x = layer(x)
        p = self.params_per_dim
        columns = tf.range(i * p, (i + 1) * p)
        kernel = tf.gather(self.output_layer.masked_kernel(), columns, axis=1)
        return tf.matmul(x, kernel) + tf.gather(self.output_layer.bias, columns)

    def get_config(self):
        return {**super().get_config(), "input_dim": self.input_dim}


@keras.saving.register_keras_serializable(package="dde")
class MLPConditioner(_Conditioner):
    """The conditioner of a coupling layer: [batch, in_features] → [batch, out_dim,
    params_per_dim], Dense hidden layers and a zero-initialized linear output. With
    in_features = 0 (a coupling layer of a 1-D flow) the output is a learned constant."""

    def __init__(self, in_features: int, out_dim: int, params_per_dim: int,
                 hidden_units=(128, 128), activation="relu", seed: int | None = None,
                 **kwargs):
        super().__init__(out_dim, params_per_dim, hidden_units, activation, seed, **kwargs)
        self.in_features = int(check_positive(in_features, "in_features", integer=True,
                                              allow_zero=True))
        if self.in_features:
            self.hidden = [layers.Dense(units, activation=self.activation,
                                        kernel_initializer=self._hidden_initializer(k),
                                        dtype=self.dtype_policy, name=f"dense_{k}")
                           for k, units in enumerate(self.hidden_units)]
            self.output_layer = layers.Dense(self.out_dim * self.params_per_dim,
                                             kernel_initializer="zeros",
                                             dtype=self.dtype_policy, name="output")

    def build(self, input_shape):
        if not self.in_features:  # nothing to condition on: one learned parameter vector
            self.constant = self.add_weight(shape=(self.out_dim * self.params_per_dim,),
                                            initializer="zeros", name="constant")
            return
        self._build_stack(self.in_features)

    def call(self, x):
        if not self.in_features:
            return tf.reshape(tf.tile(self.constant[None, :], [tf.shape(x)[0], 1]),
                              [-1, self.out_dim, self.params_per_dim])
        return self._stack(x)

    def get_config(self):
        return {**super().get_config(), "in_features": self.in_features,
                "out_dim": self.out_dim}


# ------------------------------------------------------------------- scalar transforms
class AffineTransform:
    """τ(x; μ, a) = (x − μ)·exp(−α), α = c·tanh(a/c): params [..., 2] = (μ, a)."""

    params_per_dim = 2

    def __init__(self, log_scale_clip: float = 5.0):
        self.log_scale_clip = float(log_scale_clip)

    def _shift_and_log_scale(self, params):
        c = self.log_scale_clip
        return params[..., 0], c * tf.tanh(params[..., 1] / c)

    def forward(self, x, params):
        """(τ(x), log τ'(x)), elementwise: x [batch, m], params [batch, m, 2]."""
        shift, log_scale = self._shift_and_log_scale(params)
        return (x - shift) * tf.exp(-log_scale), -log_scale

    def inverse(self, z, params):
        shift, log_scale = self._shift_and_log_scale(params)
        return z * tf.exp(log_scale) + shift


class SplineTransform:
    """A monotone rational-quadratic spline with K bins on [−B, B], identity tails
    (`tfp.bijectors.RationalQuadraticSpline`): params [..., 3K − 1] = (K widths, K heights,
    K − 1 interior derivatives), unconstrained; all zero is the identity."""

    def __init__(self, num_bins: int = 8, tail_bound: float = 5.0,
                 min_bin_width: float = 1e-3, min_bin_height: float = 1e-3,
                 min_slope: float = 1e-3):
        self.num_bins = int(num_bins)
        self.tail_bound = float(tail_bound)
        self.min_bin_width = float(min_bin_width)
        self.min_bin_height = float(min_bin_height)
        self.min_slope = float(min_slope)
        self._slope_offset = math.log(math.expm1(1.0 - self.min_slope))

    @property
    def params_per_dim(self) -> int:
        return 3 * self.num_bins - 1

    def _bins(self, raw, minimum):
        span = 2 * self.tail_bound - self.num_bins * minimum
        return minimum + span * tf.nn.softmax(raw, axis=-1)

    def bijector(self, params) -> tfb.RationalQuadraticSpline:
        """The spline of every coordinate: params [batch, m, 3K − 1]."""
        k = self.num_bins
        widths = self._bins(params[..., :k], self.min_bin_width)
        heights = self._bins(params[..., k:2 * k], self.min_bin_height)
        slopes = self.min_slope + tf.nn.softplus(params[..., 2 * k:] + self._slope_offset)
        return tfb.RationalQuadraticSpline(widths, heights, slopes, range_min=-self.tail_bound)

    def forward(self, x, params):
        """(τ(x), log τ'(x)), elementwise: x [batch, m], params [batch, m, 3K − 1]."""
        spline = self.bijector(params)
        # The bijector's outputs lose the static shape; restore it.
        return (tf.ensure_shape(spline.forward(x), x.shape),
                tf.ensure_shape(spline.forward_log_det_jacobian(x, event_ndims=0), x.shape))

    def inverse(self, z, params):
        return tf.ensure_shape(self.bijector(params).inverse(z), z.shape)


# ------------------------------------------------------------------------- flow layers
@keras.saving.register_keras_serializable(package="dde")
class FlowLayer(layers.Layer):
    """An invertible layer of a flow: `call(x)` → (z [batch, d], log|det ∂z/∂x| [batch]),
    `inverse(z)` → x."""

    def inverse(self, z):
        raise NotImplementedError


@keras.saving.register_keras_serializable(package="dde")
class Permutation(FlowLayer):
    """z = x[:, permutation] (log-determinant 0)."""

    def __init__(self, permutation, **kwargs):
        super().__init__(**kwargs)
        perm = [int(i) for i in permutation]
        if sorted(perm) != list(range(len(perm))):
            raise ValueError(f"permutation must hold each of 0..{len(perm) - 1} once, got "
                             f"{perm}.")
        self.permutation = perm
        self._inverse = np.argsort(perm).tolist()

    def call(self, x):
        return tf.gather(x, self.permutation, axis=-1), tf.zeros(tf.shape(x)[:1], x.dtype)

    def inverse(self, z):
        return tf.gather(z, self._inverse, axis=-1)

    def get_config(self):
        return {**super().get_config(), "permutation": self.permutation}


@keras.saving.register_keras_serializable(package="dde")
class Whitening(FlowLayer):
    """u = L⁻¹(x − m) (`tfb.Shift(m)(tfb.ScaleMatvecTriL(L))` inverted), m and Σ = LLᵀ
    from `adapt(x)`; the identity until then. log|det ∂u/∂x| = −Σ log L_ii."""

    def __init__(self, input_dim: int, **kwargs):
        super().__init__(**kwargs)
        self.input_dim = int(check_positive(input_dim, "input_dim", integer=True))

    def build(self, input_shape):
        d = self.input_dim
        self.loc = self.add_weight(shape=(d,), initializer="zeros", trainable=False,
                                   name="loc")
        self.scale_tril = self.add_weight(shape=(d, d), initializer="identity",
                                          trainable=False, name="scale_tril")
        self.adapted = self.add_weight(shape=(), initializer="zeros", trainable=False,
                                       name="adapted")

    @property
    def is_adapted(self) -> bool:
        return bool(self.adapted.numpy())

    def adapt(self, x):
        """Set m and L from data: an [n, d] array (n ≥ 2) or a finite batched dataset."""
        stats = mean_and_covariance(x)
        if stats is None:
            raise ValueError("Whitening needs the training data's covariance, and the dataset "
                             "has an infinite or unknown number of batches: call adapt(x) "
                             "with an array (or a finite dataset) first.")
        mean, cov = stats
        if not np.isfinite(cov).all() or np.allclose(cov, 0.0):
            raise ValueError("Whitening needs data with a non-zero, finite covariance (at "
                             "least two distinct rows).")
        ridge = _WHITENING_RIDGE * max(float(np.mean(np.diag(cov))), 1e-12)
        self.loc.assign(mean)
        self.scale_tril.assign(np.linalg.cholesky(cov + ridge * np.eye(len(cov))))
        self.adapted.assign(1.0)

    def _bijector(self):
        return tfb.Shift(self.loc)(tfb.ScaleMatvecTriL(self.scale_tril))

    def call(self, x):
        bijector = self._bijector()
        log_det = bijector.inverse_log_det_jacobian(x, event_ndims=1)
        return bijector.inverse(x), tf.broadcast_to(log_det, tf.shape(x)[:1])

    def inverse(self, z):
        return self._bijector().forward(z)

    def get_config(self):
        return {**super().get_config(), "input_dim": self.input_dim}


@keras.saving.register_keras_serializable(package="dde")
class SinhArcsinhTails(FlowLayer):
    """A learnable elementwise sinh–arcsinh map u_i = sinh(asinh(x_i / m_i)/τ_i − s_i), the
    inverse of `tfp.bijectors.SinhArcsinh(skewness=s, tailweight=τ)` (m_i its output
    multiplier), with τ_i = exp(2·tanh(max(t_i, 0)/2)) ∈ [1, e²]. τ > 1 compresses large |x|
    polynomially (|u| ~ |x|^{1/τ}), so a Gaussian-tailed flow behind it has heavy (power-law)
    tails in x. τ < 1 is excluded: it would stretch large |x| exponentially (|u| ~
    |x|^{1/τ}/…, sinh of a multiple of asinh x), and a trained MAF that used it gave single
    held-out points log-densities of −143 on magic.gamma's validation split. s and t start at
    0, the identity (the gradient in t at 0 is that of the τ > 1 side)."""

    def __init__(self, input_dim: int, **kwargs):
        super().__init__(**kwargs)
        self.input_dim = int(check_positive(input_dim, "input_dim", integer=True))

    def build(self, input_shape):
        self.skewness = self.add_weight(shape=(self.input_dim,), initializer="zeros",
                                        name="skewness")
        self.log_tailweight = self.add_weight(shape=(self.input_dim,), initializer="zeros",
                                              name="log_tailweight")

    def _bijector(self):
        # tf.maximum passes the gradient to its first argument at a tie (t = 0).
        tailweight = tf.exp(2.0 * tf.tanh(tf.maximum(self.log_tailweight, 0.0) / 2.0))
        return tfb.SinhArcsinh(skewness=self.skewness, tailweight=tailweight)

    def call(self, x):
        bijector = self._bijector()
        log_det = bijector.inverse_log_det_jacobian(x, event_ndims=0)
        return bijector.inverse(x), tf.reduce_sum(log_det, axis=-1)

    def inverse(self, z):
        return self._bijector().forward(z)

    def get_config(self):
        return {**super().get_config(), "input_dim": self.input_dim}


def _make_transform(transform, num_bins, tail_bound, min_bin_width, min_bin_height,
                    min_slope, log_scale_clip):
    if transform == "affine":
        return AffineTransform(log_scale_clip)
    return SplineTransform(num_bins, tail_bound, min_bin_width, min_bin_height, min_slope)


class _TransformLayer(FlowLayer):
    """Shared arguments of the autoregressive and coupling layers (see `NormalizingFlow`)."""

    def __init__(self, input_dim: int, transform: str = "spline", hidden_units=(128, 128),
                 activation="relu", num_bins: int = 8, tail_bound: float = 5.0,
                 min_bin_width: float = 1e-3, min_bin_height: float = 1e-3,
                 min_slope: float = 1e-3, log_scale_clip: float = 5.0,
                 seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.input_dim = int(check_positive(input_dim, "input_dim", integer=True))
        self.transform = _check_choice(transform, "transform", TRANSFORMS)
        self.hidden_units = _check_hidden_units(hidden_units)
        self.activation = activation
        self.num_bins, self.tail_bound = int(num_bins), float(tail_bound)
        self.min_bin_width, self.min_bin_height = float(min_bin_width), float(min_bin_height)
        self.min_slope, self.log_scale_clip = float(min_slope), float(log_scale_clip)
        self.seed = seed
        self.scalar_transform = _make_transform(transform, num_bins, tail_bound,
                                                min_bin_width, min_bin_height, min_slope,
                                                log_scale_clip)

    def get_config(self):
        return {**super().get_config(), "input_dim": self.input_dim,
                "transform": self.transform, "hidden_units": self.hidden_units,
                "activation": _serialize_activation(self.activation),
                "num_bins": self.num_bins,
                "tail_bound": self.tail_bound, "min_bin_width": self.min_bin_width,
                "min_bin_height": self.min_bin_height, "min_slope": self.min_slope,
                "log_scale_clip": self.log_scale_clip, "seed": self.seed}


@keras.saving.register_keras_serializable(package="dde")
class AutoregressiveLayer(_TransformLayer):
    """z_i = τ(x_i; θ_i(x_{<i})) with θ from a `MADE`: x → z in one pass, z → x in d."""

    def __init__(self, input_dim: int, **kwargs):
        super().__init__(input_dim, **kwargs)
        self.made = MADE(self.input_dim, self.scalar_transform.params_per_dim,
                         self.hidden_units, self.activation, seed=self.seed,
                         dtype=self.dtype_policy, name="made")

    def build(self, input_shape):
        self.made.build((None, self.input_dim))

    def call(self, x):
        z, log_det = self.scalar_transform.forward(x, self.made(x))
        return z, tf.reduce_sum(log_det, axis=-1)

    def inverse(self, z):
        """x from z by d passes: pass i computes θ_i(x_{<i}) alone (`MADE.coordinate_params`)
        and inverts τ at coordinate i only, so after it x_{≤i} is exact; a pass costs the
        hidden layers plus H·P multiply-adds and one spline inversion per row (H the last
        hidden width), not the whole MADE and d spline inversions."""
        d = self.input_dim
        positions = tf.range(d)[None, :]

        def body(i, x):
            theta = self.made.coordinate_params(x, i)[:, None, :]
            x_i = self.scalar_transform.inverse(tf.gather(z, [i], axis=1), theta)
            return i + 1, tf.where(tf.equal(positions, i), x_i, x)

        _, x = tf.while_loop(lambda i, _: i < d, body, (tf.constant(0), tf.zeros_like(z)))
        return x


@keras.saving.register_keras_serializable(package="dde")
class CouplingLayer(_TransformLayer):
    """z = (x_a, τ(x_b; θ(x_a))), x_a the first ⌊d/2⌋ coordinates, θ from an
    `MLPConditioner`: both directions in one pass."""

    def __init__(self, input_dim: int, **kwargs):
        super().__init__(input_dim, **kwargs)
        self.num_identity = self.input_dim // 2
        self.conditioner = MLPConditioner(
            self.num_identity, self.input_dim - self.num_identity,
            self.scalar_transform.params_per_dim, self.hidden_units, self.activation,
            seed=self.seed, dtype=self.dtype_policy, name="conditioner")

    def build(self, input_shape):
        self.conditioner.build((None, self.num_identity))

    def call(self, x):
        x_a, x_b = x[:, :self.num_identity], x[:, self.num_identity:]
        z_b, log_det = self.scalar_transform.forward(x_b, self.conditioner(x_a))
        return tf.concat([x_a, z_b], axis=-1), tf.reduce_sum(log_det, axis=-1)

    def inverse(self, z):
        z_a, z_b = z[:, :self.num_identity], z[:, self.num_identity:]
        x_b = self.scalar_transform.inverse(z_b, self.conditioner(z_a))
        return tf.concat([z_a, x_b], axis=-1)


# -------------------------------------------------------------------------------- model
@keras.saving.register_keras_serializable(package="dde")
class NormalizingFlow(BuiltinLossModel):
    """A normalizing flow on R^d with a standard normal base, trained by maximum likelihood
    (see the module docstring for the math).

    Args:
        input_dim: d.
        transform: "spline" (rational-quadratic, RQ-NSF) or "affine" (MAF).
        structure: "autoregressive" (MADE conditioners) or "coupling" (MLP conditioners on
            the first ⌊d/2⌋ coordinates).
        num_layers: number of transform layers, a permutation between consecutive ones.
        hidden_units: hidden layer sizes of each conditioner.
        num_bins, tail_bound: spline bins K on [−B, B] (identity outside).
        activation: of the conditioners' hidden layers.
        permutation: "reverse" (the order reversed between layers) or "random" (fixed
            random permutations drawn from the seed).
        whiten: start with a fixed whitening u = L⁻¹(x − m) set by the first `fit`.
        learn_tails: then a learnable elementwise sinh–arcsinh layer (`SinhArcsinhTails`,
            the identity at initialization) that can give the density heavier (power-law)
            tails than the Gaussian base: the spline's identity tails otherwise
            give a point k standard deviations out a log-density near −k²/2.
        log_scale_clip: bound c of the affine log-scale, c·tanh(a/c).
        min_bin_width, min_bin_height, min_slope: lower bounds of the spline's bins and
            interior knot derivatives.
        max_grad_norm: global gradient-norm clip of a training step (None: no clipping).
        seed: of the weight initialization and the random permutations (None: fresh).

    Tensor level (for use inside `tf.function`, differentiable in x): `model(x)` and
    `log_prob_tensor(x)` → log p(x) [batch]; `to_latent(x)` → (z, log|det ∂z/∂x|);
    `from_latent(z)` → x; `sample_tensor(n, seed)`. NumPy level (validated, batched,
    compiled): `log_prob(x)` → float64 [n], `sample(n, seed)` → [n, d].
    """

    loss_description = "maximum-likelihood (negative log-likelihood)"

    def __init__(self, input_dim: int, transform: str = "spline",
                 structure: str = "autoregressive", num_layers: int = 5,
                 hidden_units=(128, 128), num_bins: int = 8, tail_bound: float = 5.0,
                 activation="relu", permutation: str = "reverse", whiten: bool = False,
                 learn_tails: bool = False, log_scale_clip: float = 5.0, min_bin_width: float = 1e-3,
                 min_bin_height: float = 1e-3, min_slope: float = 1e-3,
                 max_grad_norm: float | None = 10.0, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.input_dim = int(check_positive(input_dim, "input_dim", integer=True))
        self.transform = _check_choice(transform, "transform", TRANSFORMS)
        self.structure = _check_choice(structure, "structure", STRUCTURES)
        self.num_layers = int(check_positive(num_layers, "num_layers", integer=True))
        self.hidden_units = _check_hidden_units(hidden_units)
        self.num_bins = int(check_positive(num_bins, "num_bins", integer=True))
        if self.num_bins < 2:
            raise ValueError(f"num_bins must be at least 2, got {num_bins}.")
        self.tail_bound = float(check_positive(tail_bound, "tail_bound"))
        keras.activations.get(activation)  # raises for unknown names
        self.activation = activation
        self.permutation = _check_choice(permutation, "permutation", PERMUTATIONS)
        self.whiten = bool(whiten)
        self.learn_tails = bool(learn_tails)
        self.log_scale_clip = float(check_positive(log_scale_clip, "log_scale_clip"))
        for name, value in (("min_bin_width", min_bin_width),
                            ("min_bin_height", min_bin_height)):
            check_positive(value, name)
            if value * self.num_bins >= 2 * self.tail_bound:
                raise ValueError(f"{name} × num_bins ({value * self.num_bins:g}) must be "
                                 f"smaller than the spline's interval 2·tail_bound "
                                 f"({2 * self.tail_bound:g}).")
        self.min_bin_width, self.min_bin_height = float(min_bin_width), float(min_bin_height)
        self.min_slope = float(check_positive(min_slope, "min_slope"))
        if self.min_slope >= 1:
            raise ValueError(f"min_slope must be in (0, 1), got {min_slope}.")
        self.max_grad_norm = (None if max_grad_norm is None
                              else float(check_positive(max_grad_norm, "max_grad_norm")))
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed,
                                                                          numbers.Integral)):
            raise TypeError(f"seed must be an integer or None, got {seed!r}.")
        self.seed = random_seed() if seed is None else int(seed)

        self.flow_layers = []
        self.whitening = None
        if self.whiten:
            self.whitening = Whitening(self.input_dim, dtype=self.dtype_policy,
                                       name="whitening")
            self.flow_layers.append(self.whitening)
        if self.learn_tails:
            self.flow_layers.append(SinhArcsinhTails(self.input_dim, dtype=self.dtype_policy,
                                                     name="tails"))
        layer_cls = AutoregressiveLayer if structure == "autoregressive" else CouplingLayer
        perms = self._permutations()
        for i in range(self.num_layers):
            if i > 0 and self.input_dim > 1:
                self.flow_layers.append(Permutation(perms[i - 1], dtype=self.dtype_policy,
                                                    name=f"permutation_{i}"))
            self.flow_layers.append(layer_cls(
                self.input_dim, transform=self.transform, hidden_units=self.hidden_units,
                activation=self.activation, num_bins=self.num_bins,
                tail_bound=self.tail_bound, min_bin_width=self.min_bin_width,
                min_bin_height=self.min_bin_height, min_slope=self.min_slope,
                log_scale_clip=self.log_scale_clip, seed=_derive_seed(self.seed, i),
                dtype=self.dtype_policy, name=f"{self.structure}_{i}"))
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.skipped_tracker = keras.metrics.Sum(name="skipped_steps")
        self.build((None, self.input_dim))

    def _permutations(self) -> list[list[int]]:
        """The permutations between consecutive layers."""
        d, count = self.input_dim, max(self.num_layers - 1, 0)
        if self.permutation == "reverse":
            return [list(range(d))[::-1]] * count
        rng = np.random.default_rng(_derive_seed(self.seed, 0x9E37))
        return [rng.permutation(d).tolist() for _ in range(count)]

    def build(self, input_shape):
        if input_shape[-1] != self.input_dim:
            raise ValueError(f"{type(self).__name__} expects {self.input_dim} features, got "
                             f"input shape {input_shape}.")
        for layer in self.flow_layers:
            layer.build((None, self.input_dim))

    def ensure_built(self, input_dim: int):
        """Built at construction (the feature count is checked by `fit` / `evaluate`)."""

    # ------------------------------------------------------------------------ tensor level
    def to_latent(self, x):
        """Tensor level: (z = T(x) [batch, d], log|det ∂z/∂x| [batch]), computed in the
        model's dtype (one pass through every layer)."""
        h = tf.cast(x, self.compute_dtype)
        log_det = tf.zeros(tf.shape(h)[:1], h.dtype)
        for layer in self.flow_layers:
            h, layer_log_det = layer(h)
            log_det = log_det + layer_log_det
        return h, log_det

    def from_latent(self, z):
        """Tensor level: x = T⁻¹(z), [batch, d] → [batch, d] in the model's dtype (d passes
        per autoregressive layer)."""
        h = tf.cast(z, self.compute_dtype)
        for layer in reversed(self.flow_layers):
            h = layer.inverse(h)
        return h

    def call(self, x, training=False):
        """log p(x): [batch, d] → [batch] in the model's dtype."""
        z, log_det = self.to_latent(x)
        return standard_normal_log_prob(z) + log_det

    def log_prob_tensor(self, x):
        """Tensor level: log p(x), [batch, d] → [batch] in x's dtype (float32 or float64;
        computed in the model's dtype), differentiable in x."""
        x = tf.convert_to_tensor(x)
        return tf.cast(self(tf.cast(x, self.compute_dtype)), x.dtype)

    def sample_tensor(self, n, seed):
        """Tensor level: n samples [n, d] = T⁻¹(z), z = `tf.random.stateless_normal([n, d],
        seed)`; seed a stateless seed (an integer tensor [2]) or an int s, which stands for
        `sanitize_seed(s, SAMPLE_SALT)` as in `sample`."""
        if not tf.is_tensor(seed):
            seed = sanitize_seed(seed, SAMPLE_SALT)
        z = tf.random.stateless_normal([n, self.input_dim], seed, dtype=self.compute_dtype)
        return self.from_latent(z)

    # ------------------------------------------------------------------------ Keras hooks
    @property
    def metrics(self):
        return [self.loss_tracker, self.skipped_tracker]

    def train_step(self, data):
        """One maximum-likelihood step: clipped gradients, skipped if not finite."""
        x, _, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        x = tf.cast(x, self.compute_dtype)
        with tf.GradientTape() as tape:
            loss = weighted_mean(-self(x, training=True), sample_weight)
        weights = self.trainable_weights
        grads = tape.gradient(loss, weights)
        norm = tf.linalg.global_norm(grads)
        ok = tf.math.is_finite(loss) & tf.math.is_finite(norm)
        if self.max_grad_norm is not None:
            grads, _ = tf.clip_by_global_norm(grads, self.max_grad_norm, use_norm=norm)

        def apply():
            self.optimizer.apply(grads, weights)
            return tf.constant(0.0)

        skipped = tf.cond(ok, apply, lambda: tf.constant(1.0))
        count = tf.cast(tf.shape(x)[0], loss.dtype)
        self.loss_tracker.update_state(tf.where(ok, loss, tf.zeros_like(loss)),
                                       sample_weight=tf.where(ok, count, tf.zeros_like(count)))
        self.skipped_tracker.update_state(skipped)
        return {"loss": self.loss_tracker.result(),
                "skipped_steps": self.skipped_tracker.result()}

    def test_step(self, data):
        x, _, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        x = tf.cast(x, self.compute_dtype)
        loss = weighted_mean(-self(x, training=False), sample_weight)
        self.loss_tracker.update_state(loss, sample_weight=tf.shape(x)[0])
        return {"loss": self.loss_tracker.result()}

    def predict_step(self, data):
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        return self(tf.cast(x, self.compute_dtype), training=False)

    def _on_fit_data(self, x):
        """A whitening flow sets its whitening from the first `fit`'s training data."""
        if self.whitening is not None and not self.whitening.is_adapted:
            self.whitening.adapt(x)

    def fit(self, x=None, y=None, *args, **kwargs):
        """`keras.Model.fit` by maximum likelihood on x ([n, d] array or a batched
        `tf.data.Dataset`; `y` is ignored). `val_loss` is the validation NLL. A whitening
        flow sets its whitening from x on its first fit (see `adapt`)."""
        if self.compiled and not self.optimizer.built:
            self.optimizer.build(self.trainable_variables)  # before the conditional update
        return super().fit(x, y, *args, **kwargs)

    def adapt(self, x):
        """Set the whitening (`whiten=True` only) from data x [n, d] (NumPy array or finite
        batched dataset); `fit` does it on its first call unless this was called before."""
        if self.whitening is None:
            raise ValueError("This flow was built with whiten=False: it has no whitening.")
        if not isinstance(x, tf.data.Dataset):
            x = check_data(x, name="x", n_features=self.input_dim, owner=type(self).__name__,
                           dtype=np.float64)
        self.whitening.adapt(x)

    # -------------------------------------------------------------------------- NumPy level
    def _compiled_fn(self, key, fn):
        """fn(flow, x [b, d]) compiled once per flow (weakly cached, `dde._cache`)."""
        flow = weak(self)
        spec = [tf.TensorSpec([None, self.input_dim], self.compute_dtype)]
        return compiled_function(self, (key, self.input_dim, self.compute_dtype), lambda: (
            tf.function(lambda v: fn(flow(), v), input_signature=spec, reduce_retracing=True)))

    def _run_batched(self, key, fn, x, batch_size):
        check_positive(batch_size, "batch_size", integer=True)
        compiled = self._compiled_fn(key, fn)
        return np.concatenate([compiled(x[i:i + batch_size]).numpy()
                               for i in range(0, len(x), batch_size)], axis=0)

    def log_prob(self, x, batch_size: int = _INFERENCE_BATCH) -> np.ndarray:
        """log p(x): [n, d] → [n] float64 (NumPy, validated, batched, compiled)."""
        x = check_data(x, name="x", n_features=self.input_dim, owner=type(self).__name__,
                       dtype=self.compute_dtype)
        return self._run_batched("log_prob", lambda f, v: f(v), tf.constant(x),
                                 batch_size).astype(np.float64)

    def sample(self, n: int, seed=None, batch_size: int = _INFERENCE_BATCH) -> np.ndarray:
        """n samples [n, d] (NumPy, the model's dtype). seed: an int (reproducible), a pair
        of ints, or None (fresh). The same as `sample_tensor(n, seed)` (to rounding) whatever
        the batch size: the latent draws are made at once and inverted in batches."""
        n = int(check_positive(n, "n", integer=True))
        pair = sanitize_seed(seed, SAMPLE_SALT)
        z = tf.random.stateless_normal([n, self.input_dim], pair, dtype=self.compute_dtype)
        return self._run_batched("from_latent", lambda f, v: f.from_latent(v), z, batch_size)

    # ---------------------------------------------------------------------- serialization
    def get_config(self):
        return {**self.base_config(), "input_dim": self.input_dim,
                "transform": self.transform, "structure": self.structure,
                "num_layers": self.num_layers, "hidden_units": self.hidden_units,
                "num_bins": self.num_bins, "tail_bound": self.tail_bound,
                "activation": _serialize_activation(self.activation),
                "permutation": self.permutation,
                "whiten": self.whiten, "learn_tails": self.learn_tails,
                "log_scale_clip": self.log_scale_clip,
                "min_bin_width": self.min_bin_width, "min_bin_height": self.min_bin_height,
                "min_slope": self.min_slope, "max_grad_norm": self.max_grad_norm,
                "seed": self.seed}

    @classmethod
    def from_config(cls, config):
        return cls(**cls._deserialize_dtype(config))


def masked_autoregressive_flow(input_dim: int, num_layers: int = 5, hidden_units=(128, 128),
                               **kwargs) -> NormalizingFlow:
    """A MAF: `num_layers` affine autoregressive layers (MADE conditioners), the order
    reversed between layers. Other arguments: see `NormalizingFlow`."""
    return NormalizingFlow(input_dim, transform="affine", structure="autoregressive",
                           num_layers=num_layers, hidden_units=hidden_units, **kwargs)


def neural_spline_flow(input_dim: int, structure: str = "autoregressive", num_layers: int = 5,
                       hidden_units=(128, 128), num_bins: int = 8, tail_bound: float = 5.0,
                       **kwargs) -> NormalizingFlow:
    """An RQ-NSF: `num_layers` rational-quadratic spline layers with `num_bins` bins on
    [−tail_bound, tail_bound], autoregressive (RQ-NSF (AR)) or coupling (RQ-NSF (C)).
    Other arguments: see `NormalizingFlow`."""
    return NormalizingFlow(input_dim, transform="spline", structure=structure,
                           num_layers=num_layers, hidden_units=hidden_units,
                           num_bins=num_bins, tail_bound=tail_bound, **kwargs)
