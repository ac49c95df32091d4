"""The model protocol: what the estimators, samplers, detector and plots need of a model.

Normalizing (`dde.partition`), sampling (`dde.sampling`), the score bridge (`dde.score`) and
anomaly scoring (`dde.anomaly`) work on any object with these public members — the energy
models of `dde.models` satisfy them — and never import the models module, so the imports of
the package run one way (models → partition, sampling; never back).

`EnergyModelLike` — an un-normalized log-density f(x) (at a noise level σ):

- `ensure_built(input_dim)`: build for inputs of `input_dim` features if not built yet;
- `resolve_noise_std(noise_std=None) -> float`: the σ that `noise_std` selects (None: the
  model's own; a single-σ model rejects any other value with a ValueError);
- `log_density_fn(noise_std=None)`: a traceable function x [batch, d] → f(x) [batch] in x's
  dtype, at that σ;
- `log_density_and_score(x, noise_std=None)`: tensor level, (f [batch], ∇ₓf [batch, d]);
- `default_proposal()`: a normalized `tfd.Distribution` close to exp f (its base density, or
  a Gaussian fitted to the training data), or None when the model has no training
  statistics — the default proposal of normalization and the start of sampling chains.

`NoiseConditionalLike` adds `sigma_min`, `sigma_max` and `noise_levels(num_levels)`: a
model of f(x, σ) over a range of noise levels (annealed sampling, the diffusion bridge).
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class EnergyModelLike(Protocol):
    """An un-normalized log-density f(x) at a noise level σ (see the module docstring)."""

    def ensure_built(self, input_dim: int) -> None: ...

    def resolve_noise_std(self, noise_std=None) -> float: ...

    def log_density_fn(self, noise_std=None): ...

    def log_density_and_score(self, x, noise_std=None, training=False): ...

    def default_proposal(self, noise_std=None): ...


@runtime_checkable
class NoiseConditionalLike(EnergyModelLike, Protocol):
    """An energy model f(x, σ) over σ ∈ [sigma_min, sigma_max]."""

    sigma_min: float
    sigma_max: float

    def noise_levels(self, num_levels: int): ...


def input_dim_of(model) -> int | None:
    """The feature count d of a model: `input_dim` once built, else the input size of its
    `network` when that is known, else None."""
    if getattr(model, "built", False) and getattr(model, "input_dim", None) is not None:
        return int(model.input_dim)
    inputs = getattr(getattr(model, "network", None), "inputs", None)
    try:
        d = inputs[0].shape[-1] if inputs else None
    except (AttributeError, IndexError, TypeError):
        d = None
    return None if d is None else int(d)
