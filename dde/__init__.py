"""dde: Denoising Density Estimators in TensorFlow / Keras.

Learned un-normalized log-densities trained by denoising score matching, Langevin samplers,
Monte Carlo partition functions, a score-network branch with probability-flow likelihoods,
and anomaly scoring.
"""
from dde import nets
from dde.models import (
    DenoisingDensityEstimator,
    EnergyModel,
    NoiseConditionalDDE,
    NoiseStdSchedule,
)

__version__ = "0.1.0"

__all__ = [
    "DenoisingDensityEstimator",
    "EnergyModel",
    "NoiseConditionalDDE",
    "NoiseStdSchedule",
    "nets",
]
