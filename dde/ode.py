"""One guarded adaptive ODE solve, used by the probability-flow likelihood
(`dde.likelihood`) and the probability-flow sampler (`dde.score_sampling`).

`GuardedSolver` integrates `dy/dt = ode_fn(t, y)` (any nest of tensors) with TFP's
Dormand–Prince 5(4) inside the caller's `tf.function` (optionally XLA-compiled): no host
round-trip per evaluation. XLA drops Assert ops, so the solve is guarded in-graph by a
`SolveGuard`: the number of right-hand-side evaluations is bounded and non-finite
derivatives are detected; after either, the remaining derivatives are zeroed so that the
solver finishes quickly, and `check` raises `ODESolverError` with the time reached and an
`ODEStatus` saying why. Every solve reports its number of function evaluations (NFE).

The probability flow of an SDE, `dx/dt = f(x, t) − ½g(t)² s(x, t)`, is
`sde.probability_flow_drift(x, t, s)`; both users build their right-hand side from it.
"""
from __future__ import annotations

import enum
import math
from typing import NamedTuple

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

#: Right-hand-side evaluations per Dormand–Prince step (first-same-as-last).
EVALS_PER_STEP = 6


class ODEStatus(enum.IntEnum):
    """Why a guarded solve ended."""

    SUCCESS = 0
    BUDGET_EXCEEDED = 1
    NONFINITE = 2
    SOLVER_FAILED = 3
    STOPPED_EARLY = 4

    @property
    def message(self) -> str:
        return {
            ODEStatus.SUCCESS: "reached its final time",
            ODEStatus.BUDGET_EXCEEDED: "exceeded its step budget",
            ODEStatus.NONFINITE: "met a non-finite right-hand side (NaN or overflow in the "
                                 "score model)",
            ODEStatus.SOLVER_FAILED: "failed inside the solver",
            ODEStatus.STOPPED_EARLY: "stopped before its final time",
        }[self]


class ODESolverError(RuntimeError):
    """The ODE solver did not reach its final time. `time_reached` holds where it stopped and
    `status` the `ODEStatus`."""

    def __init__(self, message: str, time_reached: float = float("nan"),
                 status: ODEStatus = ODEStatus.SOLVER_FAILED):
        super().__init__(message)
        self.time_reached = time_reached
        self.status = status


class ODESolution(NamedTuple):
    """What `GuardedSolver.solve` returns (tensors, inside the graph): the states at the
    solution times (a nest like y0, each [num_times, ...]), the number of function
    evaluations, TFP's solver status, the last solution time and the solver's current time."""

    states: object
    num_function_evaluations: tf.Tensor
    solver_status: tf.Tensor
    final_time: tf.Tensor
    current_time: tf.Tensor


class SolveGuard:
    """In-graph guard of an adaptive ODE solve: bounds the number of right-hand-side
    evaluations and detects non-finite derivatives, without Assert ops (so it also works under
    XLA). Once tripped, the wrapped right-hand side returns zeros so the solver runs to its
    final time quickly. `status` holds an `ODEStatus` code (0 ok, 1 budget, 2 non-finite).
    """

    def __init__(self, max_evaluations: int, dtype=tf.float64):
        self.dtype = tf.as_dtype(dtype)
        # A variable, so the budget can change without retracing the solve.
        self._budget = tf.Variable(int(max_evaluations), dtype=tf.int64, trainable=False,
                                   name="ode_budget")
        self.count = tf.Variable(0, dtype=tf.int64, trainable=False, name="ode_evaluations")
        self.status = tf.Variable(0, dtype=tf.int32, trainable=False, name="ode_status")
        self.time = tf.Variable(float("nan"), dtype=self.dtype, trainable=False,
                                name="ode_time_reached")
        # Finite but huge derivatives could overflow the state; treat them as failures.
        self._limit = math.sqrt(self.dtype.max)

    @property
    def max_evaluations(self) -> int:
        """The evaluation budget of one solve."""
        return int(self._budget.numpy())

    @max_evaluations.setter
    def max_evaluations(self, value: int):
        self._budget.assign(int(value))

    def reset(self):
        """Graph-safe reset, to call at the start of each solve."""
        self.count.assign(0)
        self.status.assign(0)
        self.time.assign(tf.constant(float("nan"), self.dtype))

    def wrap(self, ode_fn):
        """Guarded ode_fn(t, y) → dy/dt (any nest of tensors)."""
        def guarded(t, y):
            count = self.count.assign_add(1)
            dy = ode_fn(t, y)
            flat = tf.nest.flatten(dy)
            finite = tf.reduce_all([
                tf.reduce_all(tf.math.is_finite(v)) & tf.reduce_all(tf.abs(v) < self._limit)
                for v in flat])
            previous = self.status.read_value()
            new_status = tf.where(previous != 0, previous,
                                  tf.where(count > self._budget.read_value(),
                                           int(ODEStatus.BUDGET_EXCEEDED),
                                           tf.where(finite, int(ODEStatus.SUCCESS),
                                                    int(ODEStatus.NONFINITE))))
            new_status = tf.cast(new_status, tf.int32)
            first = tf.logical_and(tf.equal(previous, 0), new_status != 0)
            with tf.control_dependencies([self.time.assign(
                    tf.where(first, tf.cast(t, self.dtype), self.time.read_value()))]):
                self.status.assign(new_status)
                ok = tf.equal(new_status, 0)
                return tf.nest.map_structure(
                    lambda v: tf.where(ok, v, tf.zeros_like(v)), dy)
        return guarded


class GuardedSolver:
    """Dormand–Prince with tolerances (rtol, atol), a step budget `max_num_steps` and a
    `SolveGuard`; `solve` runs inside a `tf.function`, `check` after it (NumPy values)."""

    def __init__(self, rtol: float = 1e-5, atol: float = 1e-5, max_num_steps: int = 10_000,
                 dtype=tf.float64):
        self.rtol, self.atol = float(rtol), float(atol)
        self.dtype = tf.as_dtype(dtype)
        self.guard = SolveGuard(EVALS_PER_STEP * int(max_num_steps) + 2, self.dtype)
        self._solver = tfp.math.ode.DormandPrince(rtol=self.rtol, atol=self.atol)

    @property
    def max_num_steps(self) -> int:
        """Step budget of one solve (changing it does not retrace)."""
        return (self.guard.max_evaluations - 2) // EVALS_PER_STEP

    @max_num_steps.setter
    def max_num_steps(self, value: int):
        self.guard.max_evaluations = EVALS_PER_STEP * int(value) + 2

    def solve(self, ode_fn, t0, y0, solution_times) -> ODESolution:
        """In-graph guarded solve of dy/dt = ode_fn(t, y) from t0 (y0) to the increasing
        `solution_times` (a 1-D tensor)."""
        self.guard.reset()
        results = self._solver.solve(self.guard.wrap(ode_fn), t0, y0,
                                     solution_times=solution_times)
        return ODESolution(results.states, results.diagnostics.num_ode_fn_evaluations,
                           results.diagnostics.status, results.times[-1],
                           results.solver_internal_state.current_time)

    def check(self, solution: ODESolution, T: float, what: str, to_time=None) -> None:
        """Raise `ODESolverError` if the last guarded solve did not reach `T` (in the time of
        the caller: `to_time` maps the solver's integration variable to it, identity if
        None). `solution` holds the values returned by `solve`."""
        status = ODEStatus(int(self.guard.status.numpy()))
        def convert(v):
            return float(v) if to_time is None else float(to_time(float(v)))
        reached = convert(self.guard.time.numpy())
        if status == ODEStatus.BUDGET_EXCEEDED:
            raise ODESolverError(
                f"{what} did not reach t = {T:g}: the step budget was exceeded "
                f"({self.guard.max_evaluations} evaluations, max_num_steps = "
                f"{self.max_num_steps}) at t = {reached:.6g}. Increase max_num_steps or "
                "loosen rtol/atol.", reached, status)
        if status == ODEStatus.NONFINITE:
            raise ODESolverError(
                f"{what} did not reach t = {T:g}: the right-hand side became non-finite at "
                f"t = {reached:.6g} (NaN or overflow in the score model).", reached, status)
        if int(np.asarray(solution.solver_status)) != 0:
            raise ODESolverError(f"{what} {ODEStatus.SOLVER_FAILED.message} (solver status "
                                 f"{int(np.asarray(solution.solver_status))}).",
                                 convert(solution.final_time), ODEStatus.SOLVER_FAILED)
        final = convert(solution.final_time)
        if not np.isclose(final, T, rtol=1e-9, atol=1e-9):
            raise ODESolverError(f"{what} stopped at t = {final:.6g} instead of T = {T:g}.",
                                 final, ODEStatus.STOPPED_EARLY)
