"""Monte Carlo partition functions of energy models and average log-likelihoods.

An energy model `f: R^d → R` defines the density `exp f(x) / Z` with `Z = ∫ exp f(x) dx`.

**Importance sampling** (`method="is"`, `importance.py`) with a proposal density q:

    log Ẑ = logsumexp_i( f(x_i) − log q(x_i) ) − log M,        x_i ~ q, i = 1..M,

streamed over batches (`weights.py`: running maximum, each weight counted once, the
effective sample size `ESS = (Σw)²/Σw²` and the delta-method standard error
`se = sqrt((M/ESS − 1)/(M − 1))`). `log q` is the full joint log-density (a sum over
dimensions, never a mean).

**Annealed importance sampling** (`method="ais"`, `ais.py`, Neal 2001) runs M chains through
`π_k ∝ q^{1−β_k} exp(β_k f)`, 0 = β_0 < … < β_K = 1, with `dde.mcmc` transitions (HMC or
MALA) in coordinates whitened by the proposal's covariance.

Proposals (`proposals.py`, registry `PROPOSALS`): a full-covariance Gaussian, a Student-t, a
Gaussian mixture fitted to the data, the σ-smoothed empirical mixture, or any
`tfp.distributions.Distribution`. Methods are registered in `METHODS`, temperature
schedules in `SCHEDULES`.

Importance sampling collapses in high dimensions (ESS of a few samples out of 10⁵ on 36-D
data): every result carries its ESS, and a small ESS warns (or raises, `on_low_ess="raise"`).
A small ESS is a symptom, not a proof of failure the other way round: a proposal with lighter
tails than exp f can show a fine ESS while missing mass. MLP energies decay only linearly far
from the data, so their weights under a Gaussian proposal grow without bound in the tails;
the Student-t proposal (polynomial tails) or AIS are safer there.
"""
from dde.partition.ais import SCHEDULES, ais_schedule
from dde.partition.estimate import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_NUM_SAMPLES,
    METHODS,
    average_log_likelihood,
    estimate_log_partition,
    estimate_model_log_partition,
    model_log_density_fn,
    model_proposal_draws,
)
from dde.partition.importance import proposal_draws
from dde.partition.proposals import (
    PROPOSALS,
    SmoothedEmpiricalDistribution,
    gaussian_from_moments,
    gaussian_mixture_proposal,
    gaussian_proposal,
    make_proposal,
    smoothed_empirical_proposal,
    student_t_proposal,
)
from dde.partition.results import (
    AverageLogLikelihood,
    LogPartitionResult,
    LowEffectiveSampleSizeWarning,
    UnreliableEstimateWarning,
)
from dde.partition.weights import importance_statistics

__all__ = [
    "AverageLogLikelihood",
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_NUM_SAMPLES",
    "LogPartitionResult",
    "LowEffectiveSampleSizeWarning",
    "UnreliableEstimateWarning",
    "METHODS",
    "PROPOSALS",
    "SCHEDULES",
    "SmoothedEmpiricalDistribution",
    "ais_schedule",
    "average_log_likelihood",
    "estimate_log_partition",
    "estimate_model_log_partition",
    "gaussian_from_moments",
    "gaussian_mixture_proposal",
    "gaussian_proposal",
    "importance_statistics",
    "make_proposal",
    "model_log_density_fn",
    "model_proposal_draws",
    "proposal_draws",
    "smoothed_empirical_proposal",
    "student_t_proposal",
]
