"""Network builders: energy MLPs `f: R^d → R`, noise/time-conditioned energies `f(x, c)` and
score MLPs `s(x, t) ∈ R^d`.

An energy network is differentiated twice during training (the loss involves `∇ₓf`, and its
parameter gradient `∂θ ∇ₓf`), so its activation needs a non-zero second derivative: softplus,
tanh, swish/SiLU, GELU, ELU, sigmoid... ReLU-like activations are rejected.
The last layer of an energy network has no bias: a constant shift of `f` does not change `∇ₓf`,
so that bias would never receive a gradient.
"""
from __future__ import annotations

import math

import keras
from keras import layers, ops

from dde._validation import check_positive

# Activations whose second derivative vanishes almost everywhere (piecewise linear) or that
# are linear: with them `∇ₓf` is piecewise constant and denoising score matching cannot learn.
PIECEWISE_LINEAR_ACTIVATIONS = frozenset({
    "relu", "relu6", "leaky_relu", "hard_sigmoid", "hard_silu", "hard_swish", "linear",
    "hard_tanh", "soft_shrink", "hard_shrink", "sparse_sigmoid", "threshold",
})


def check_activation(activation):
    """Return `activation` if it is twice differentiable with a non-trivial second derivative.

    Accepts a Keras activation name or a callable; raises ValueError for ReLU-like ones.
    """
    if activation is None:
        raise ValueError("An energy network needs a non-linear activation, got None.")
    name = activation if isinstance(activation, str) else getattr(activation, "__name__", "")
    if name.lower() in PIECEWISE_LINEAR_ACTIVATIONS:
        raise ValueError(
            f"Activation '{name}' is piecewise linear: its second derivative is zero almost "
            "everywhere, so the score ∇ₓf cannot be trained by denoising score matching. Use a "
            "smooth activation such as 'softplus', 'swish' (SiLU), 'gelu' or 'tanh'.")
    keras.activations.get(activation)  # raises for unknown names
    return activation


def _check_sizes(input_dim, depth, width):
    check_positive(input_dim, "input_dim", integer=True)
    check_positive(depth, "depth", integer=True)
    check_positive(width, "width", integer=True)


def energy_mlp(input_dim: int, depth: int = 3, width: int = 128, activation="softplus",
               name: str = "energy_mlp") -> keras.Model:
    """MLP energy network `f: [batch, input_dim] → [batch, 1]`.

    `depth` hidden Dense layers of `width` units with `activation`, then a bias-free Dense(1).
    """
    x, h = _mlp_trunk(input_dim, depth, width, activation)
    out = layers.Dense(1, use_bias=False, name="energy")(h)
    return keras.Model(x, out, name=name)


def _mlp_trunk(input_dim, depth, width, activation):
    """(input x, last hidden h) of `depth` Dense layers `hidden_i` of `width` units."""
    _check_sizes(input_dim, depth, width)
    check_activation(activation)
    x = keras.Input(shape=(input_dim,), name="x")
    h = x
    for i in range(depth):
        h = layers.Dense(width, activation=activation, name=f"hidden_{i}")(h)
    return x, h


@keras.saving.register_keras_serializable(package="dde")
class SinusoidalEmbedding(layers.Layer):
    """Embed a scalar condition `c` ([batch, 1]) as `[c, sin(ω_k c), cos(ω_k c)]`, k < dim/2.

    Frequencies ω_k are geometric from `min_frequency` to `max_frequency`; output shape
    [batch, 1 + 2·(dim // 2)].
    """

    def __init__(self, dim: int = 32, min_frequency: float = 1.0, max_frequency: float = 64.0,
                 **kwargs):
        super().__init__(**kwargs)
        check_positive(dim, "dim", integer=True)
        self.dim = int(dim)
        self.min_frequency = float(min_frequency)
        self.max_frequency = float(max_frequency)

    def call(self, c):
        half = max(self.dim // 2, 1)
        log_freq = ops.linspace(math.log(self.min_frequency), math.log(self.max_frequency), half)
        freqs = ops.cast(ops.exp(log_freq), c.dtype)
        angles = c * freqs[None, :]
        return ops.concatenate([c, ops.sin(angles), ops.cos(angles)], axis=-1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 1 + 2 * max(self.dim // 2, 1))

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "min_frequency": self.min_frequency,
                "max_frequency": self.max_frequency}


def _conditioned_trunk(input_dim, depth, width, activation, embedding_dim, max_frequency):
    x = keras.Input(shape=(input_dim,), name="x")
    c = keras.Input(shape=(1,), name="condition")
    emb = SinusoidalEmbedding(embedding_dim, max_frequency=max_frequency, name="embedding")(c)
    h = layers.Concatenate(name="concat")([x, emb])
    for i in range(depth):
        h = layers.Dense(width, activation=activation, name=f"hidden_{i}")(h)
    return x, c, h


def conditional_energy_mlp(input_dim: int, depth: int = 3, width: int = 128,
                           activation="softplus", embedding_dim: int = 32,
                           max_frequency: float = 16.0,
                           name: str = "conditional_energy_mlp") -> keras.Model:
    """Noise- or time-conditioned energy `f([x, c]) → [batch, 1]`, x: [batch, d], c: [batch, 1].

    `c` is a scalar condition per example (log σ for a noise-conditional DDE, t for a
    time-conditioned one), embedded by `SinusoidalEmbedding` and concatenated to x.
    """
    _check_sizes(input_dim, depth, width)
    check_activation(activation)
    x, c, h = _conditioned_trunk(input_dim, depth, width, activation, embedding_dim,
                                 max_frequency)
    out = layers.Dense(1, use_bias=False, name="energy")(h)
    return keras.Model([x, c], out, name=name)


def score_mlp(input_dim: int, depth: int = 3, width: int = 128, activation="swish",
              embedding_dim: int = 32, max_frequency: float = 16.0,
              name: str = "score_mlp") -> keras.Model:
    """Time-conditioned score network `s([x, t]) → [batch, d]`, x: [batch, d], t: [batch, 1].

    Only first derivatives of a score network are ever taken (its divergence), so any
    activation is allowed.
    """
    _check_sizes(input_dim, depth, width)
    keras.activations.get(activation)
    x, t, h = _conditioned_trunk(input_dim, depth, width, activation, embedding_dim,
                                 max_frequency)
    out = layers.Dense(input_dim, name="score")(h)
    return keras.Model([x, t], out, name=name)


@keras.saving.register_keras_serializable(package="dde")
class UpperBound(layers.Layer):
    """An output bounded above by c, the identity near 0: "cap" g = softplus(c) −
    softplus(c − h) (g ≤ softplus(c) ≈ c, unbounded below, g ≈ h for h ≪ c, g(0) = 0) or
    "tanh" g = c·tanh(h/c) (|g| < c). [batch, 1] → [batch, 1]."""

    KINDS = ("cap", "tanh")

    def __init__(self, bound: float = 5.0, kind: str = "cap", **kwargs):
        super().__init__(**kwargs)
        self.bound = float(check_positive(bound, "bound"))
        if kind not in self.KINDS:
            raise ValueError(f"kind must be one of {self.KINDS}, got {kind!r}.")
        self.kind = kind

    def call(self, h):
        c = ops.cast(self.bound, h.dtype)
        if self.kind == "tanh":
            return c * ops.tanh(h / c)
        return ops.softplus(c) - ops.softplus(c - h)

    def get_config(self):
        return {**super().get_config(), "bound": self.bound, "kind": self.kind}


def residual_energy_mlp(input_dim: int, depth: int = 3, width: int = 128,
                        activation="softplus", bound: float = 5.0, bound_kind: str = "cap",
                        name: str = "residual_energy_mlp") -> keras.Model:
    """The residual g of a base-density energy f = log q + g: an MLP `[batch, input_dim] →
    [batch, 1]` whose last layer starts at zero (the untrained model is its base exactly) and
    whose output is bounded above (`UpperBound`: g ≤ softplus(bound) for "cap", |g| < bound
    for "tanh"). With sup g ≤ B, ∫ q e^g ≤ e^B < ∞ for every weight setting, and the weights
    e^g of importance sampling from q are bounded by e^B."""
    x, h = _mlp_trunk(input_dim, depth, width, activation)
    h = layers.Dense(1, use_bias=False, kernel_initializer="zeros", name="residual")(h)
    out = UpperBound(bound, bound_kind, name="upper_bound")(h)
    return keras.Model(x, out, name=name)


def conditional_residual_energy_mlp(input_dim: int, depth: int = 3, width: int = 128,
                                    activation="softplus", embedding_dim: int = 32,
                                    max_frequency: float = 16.0, bound: float = 5.0,
                                    bound_kind: str = "cap",
                                    name: str = "conditional_residual_energy_mlp"
                                    ) -> keras.Model:
    """The noise-conditioned residual g([x, log σ]) of a base-density NoiseConditionalDDE:
    as `residual_energy_mlp`, on `conditional_energy_mlp`'s trunk."""
    _check_sizes(input_dim, depth, width)
    check_activation(activation)
    x, c, h = _conditioned_trunk(input_dim, depth, width, activation, embedding_dim,
                                 max_frequency)
    h = layers.Dense(1, use_bias=False, kernel_initializer="zeros", name="residual")(h)
    out = UpperBound(bound, bound_kind, name="upper_bound")(h)
    return keras.Model([x, c], out, name=name)
