"""Result types of the partition-function estimators: `LogPartitionResult` (an estimate of
log Z with its standard error and diagnostics) and `AverageLogLikelihood`."""
from __future__ import annotations

import dataclasses

import numpy as np


class LowEffectiveSampleSizeWarning(UserWarning):
    """The effective sample size of a partition-function estimate is too small to trust it."""


@dataclasses.dataclass(frozen=True)
class LogPartitionResult:
    """A Monte Carlo estimate of log Z.

    log_z: the estimate log Ẑ; stderr: its standard error (delta method); ess: the effective
    sample size (Σw)²/Σw² of the (final) importance weights; num_samples: M, the number of
    samples (IS) or chains (AIS); method: "is" or "ais"; num_nonfinite: samples whose
    log-weight was NaN (only possible with nan_policy="zero", where they count as zero
    weights); num_evaluations: evaluations of the log-density (AIS: each with its gradient);
    seed: the stateless seed [2] used; diagnostics: method-specific details (proposal, AIS
    schedule, acceptance rate, step size, ...); log_weights: the final log-weights of the
    AIS chains [M] (None for streaming IS, which keeps only running sums).
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
        return (f"log Z = {self.log_z:.4f} ± {2 * self.stderr:.4f} (2·SE), "
                f"ESS = {self.ess:,.1f} of {self.num_samples:,} {unit} "
                f"({self.method.upper()})")


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

    def as_dict(self) -> dict:
        """A JSON-ready dict of every field."""
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        return f"{self.mean:.3f} ± {2 * self.stderr:.3f} (2·SE)"
