"""dde: Denoising Density Estimators in TensorFlow / Keras.

Learned un-normalized log-densities trained by denoising score matching, Langevin samplers,
Monte Carlo partition functions, a score-network branch with probability-flow likelihoods,
normalizing flows (MAF, rational-quadratic neural spline flows) and anomaly scoring.
"""
from dde import (bases, callbacks, datasets, distributed, export, flows, likelihood, mcmc,
                 nets, ode, partition, plotting, progress, protocols, sampling, score_sampling, sde,
                 smc, streaming)
from dde.anomaly import DDEAnomalyDetector
from dde.callbacks import EpochTimer, ValidationLogLikelihood
from dde.flows import NormalizingFlow
from dde.likelihood import ProbabilityFlow, ProbabilityFlowResult, probability_flow_log_prob
from dde.ode import ODESolverError, ODEStatus
from dde.models import (
    DenoisingDensityEstimator,
    EnergyModel,
    NoiseConditionalDDE,
    NoiseStdSchedule,
)
from dde.partition import (
    AverageLogLikelihood,
    LogPartitionResult,
    average_log_likelihood,
    estimate_log_partition,
    gaussian_mixture_proposal,
    gaussian_proposal,
    smoothed_empirical_proposal,
    student_t_proposal,
)
from dde.protocols import EnergyModelLike, NoiseConditionalLike
from dde.sampling import (
    SAMPLERS,
    AnnealedLangevinSampler,
    LangevinSampler,
    LogDensity,
    MALASampler,
    SamplerResults,
)
from dde.score import DDEScore, ScoreNetwork
from dde.score_sampling import (
    ProbabilityFlowSampler,
    ReverseDiffusionSampler,
    ScoreSamplerResults,
)
from dde.sde import SDE, VESDE, VPSDE
from dde.smc import SMCResults, tempered_smc

__version__ = "0.1.0"

__all__ = [
    # models and networks
    "DenoisingDensityEstimator",
    "EnergyModel",
    "NoiseConditionalDDE",
    "NoiseStdSchedule",
    "EpochTimer",
    "ValidationLogLikelihood",
    "EnergyModelLike",
    "NoiseConditionalLike",
    "nets",
    "protocols",
    # base densities and normalizing flows
    "bases",
    "callbacks",
    "NormalizingFlow",
    "flows",
    # normalization
    "AverageLogLikelihood",
    "LogPartitionResult",
    "average_log_likelihood",
    "estimate_log_partition",
    "gaussian_mixture_proposal",
    "gaussian_proposal",
    "smoothed_empirical_proposal",
    "student_t_proposal",
    "partition",
    # Langevin sampling
    "AnnealedLangevinSampler",
    "LangevinSampler",
    "LogDensity",
    "MALASampler",
    "SamplerResults",
    "SAMPLERS",
    "mcmc",
    "sampling",
    "smc",
    "SMCResults",
    "tempered_smc",
    # score-network branch
    "SDE",
    "VESDE",
    "VPSDE",
    "DDEScore",
    "ScoreNetwork",
    "ODESolverError",
    "ODEStatus",
    "ode",
    "ProbabilityFlow",
    "ProbabilityFlowResult",
    "probability_flow_log_prob",
    "ProbabilityFlowSampler",
    "ReverseDiffusionSampler",
    "ScoreSamplerResults",
    "likelihood",
    "score_sampling",
    "sde",
    # anomaly scoring, data, plots
    "DDEAnomalyDetector",
    "datasets",
    "plotting",
    # beyond one process: streamed data, workers and checkpoints, serving export, progress
    "streaming",
    "distributed",
    "export",
    "progress",
]
