"""Result types of the partition-function estimators: `LogPartitionResult` (an estimate of
log Z with its standard error and diagnostics) and `AverageLogLikelihood`."""
from __future__ import annotations

import dataclasses

import numpy as np


class LowEffectiveSampleSizeWarning(UserWarning):
    """The effective sample size of a partition-function estimate is too small to trust it."""


class UnreliableEstimateWarning(LowEffectiveSampleSizeWarning):
    """A partition-function estimate (or a likelihood built on it) is unreliable: its Pareto
    k̂ is too large or its ESS too small; its error can be many standard errors."""


@dataclasses.dataclass(frozen=True)
class LogPartitionResult:
    """A Monte Carlo estimate of log Z.

    log_z: the estimate log Ẑ = log mean weight; stderr: its standard error (see
    `dde.partition.weights.reported_stderr`); ess: the effective sample size (Σw)²/Σw² of the
    (final) importance weights; num_samples: M, the number of samples (IS) or chains (AIS);
    method: "is" or "ais"; num_nonfinite: samples whose log-weight was NaN (only possible with
    nan_policy="zero", where they count as zero weights); num_evaluations: evaluations of the
    log-density (AIS: each with its gradient); seed: the stateless seed [2] used;
    diagnostics: method-specific details (proposal, AIS schedule, acceptance rate, ...);
    log_weights: the final log-weights of the AIS chains [M] (None for streaming IS, which
    keeps only running sums and the largest weights).
    pareto_k: PSIS's k̂ of the weights' right tail (Vehtari et al. 2024): below 0.5 the
    weights have a finite variance; above `pareto_k_threshold(M)` (0.7 for M ≥ 2·10⁴) the
    estimate cannot be trusted, whatever its ESS. reliable: whether k̂ is below that
    threshold and the ESS is not small (see `dde.partition.weights.is_reliable`).
    stderr_delta: the delta-method standard error of the raw weights; log_z_psis,
    stderr_psis: the estimate and its delta-method SE from the Pareto-smoothed weights;
    num_replicates: the number of independent replicates behind `stderr` (M for IS and for
    AIS chains treated as independent; the number of independent chain groups when the SE
    comes from their spread).
    num_reference, reference_beyond_max, coverage_statistic, coverage_critical: with
    reference draws of the target (IS), how many were used, how many had a larger weight than
    every proposal sample, and the test of `dde.partition.weights.CoverageCheck` (0, 0,
    NaN, NaN without them). log_z_upper,
    stderr_upper: with reference draws (AIS), the reverse estimate — a stochastic upper bound
    of log Z — and its standard error (NaN without them).
    """

    log_z: float
    stderr: float
    ess: float
    num_samples: int
    method: str = "is"
    num_nonfinite: int = 0
    num_evaluations: int = 0
    seed: tuple = ()
    diagnostics: dict = dataclasses.field(default_factory=dict)
    log_weights: np.ndarray | None = dataclasses.field(default=None, repr=False,
                                                       compare=False)
    pareto_k: float = float("nan")
    reliable: bool = True
    stderr_delta: float = float("nan")
    log_z_psis: float = float("nan")
    stderr_psis: float = float("nan")
    num_replicates: int = 0
    num_reference: int = 0
    reference_beyond_max: int = 0
    coverage_statistic: float = float("nan")
    coverage_critical: float = float("nan")
    log_z_upper: float = float("nan")
    stderr_upper: float = float("nan")

    @property
    def ess_fraction(self) -> float:
        """ESS / M."""
        return self.ess / self.num_samples

    def as_dict(self) -> dict:
        """A JSON-ready dict of every field but `log_weights` (plus `ess_fraction`)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name != "log_weights"}
        out["diagnostics"] = dict(self.diagnostics)
        out["seed"] = list(self.seed)
        out["ess_fraction"] = self.ess_fraction
        return out

    def __str__(self) -> str:
        unit = "chains" if self.method == "ais" else "samples"
        flag = "" if self.reliable else " — UNRELIABLE"
        return (f"log Z = {self.log_z:.4f} ± {2 * self.stderr:.4f} (2·SE), "
                f"ESS = {self.ess:,.1f} of {self.num_samples:,} {unit}, "
                f"k̂ = {self.pareto_k:.2f} ({self.method.upper()}){flag}")


@dataclasses.dataclass(frozen=True)
class AverageLogLikelihood:
    """Average log-likelihood `mean_j f(x_j) − log Ẑ` of n test points.

    stderr = sqrt(Var(f)/n + se(log Ẑ)²) combines the test-set spread (`test_stderr`) with
    the uncertainty of the normalization (`log_z_stderr`). Printed as `mean ± 2·SE`.
    """

    mean: float
    stderr: float
    n: int
    test_stderr: float
    log_z: float
    log_z_stderr: float
    log_z_ess: float = float("nan")
    log_z_pareto_k: float = float("nan")
    reliable: bool = True

    def as_dict(self) -> dict:
        """A JSON-ready dict of every field."""
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        flag = "" if self.reliable else " — UNRELIABLE normalization"
        return f"{self.mean:.3f} ± {2 * self.stderr:.3f} (2·SE){flag}"
