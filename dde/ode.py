"""One guarded adaptive ODE solve, used by the probability-flow likelihood
(`dde.likelihood`) and the probability-flow sampler (`dde.score_sampling`).

`GuardedSolver` integrates `dy/dt = ode_fn(t, y)` (any nest of tensors) with an embedded
Runge–Kutta 5(4) pair — Dormand–Prince (default) or Tsit5 with SciPy's step control
(`embedded_rk_solve`), or TFP's DormandPrince — inside the caller's `tf.function`
(optionally XLA-compiled): no host round-trip per evaluation. XLA drops Assert ops, so the solve is guarded in-graph by a
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


class Tableau(NamedTuple):
    """An explicit embedded Runge–Kutta pair with the first-same-as-last property: nodes c
    [s], stage matrix a (rows 1..s−1), weights b [s] of the propagated solution (equal to the
    last row of a), error weights e = b − b̂ [s] and the order of the error estimate's lower
    method (the step-size exponent is −1/(order + 1))."""

    c: tuple
    a: tuple
    b: tuple
    e: tuple
    order: int


#: Dormand & Prince (1980), RK5(4)7FM: the pair of SciPy's RK45 and of TFP's DormandPrince.
DOPRI5 = Tableau(
    c=(0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0),
    a=((1 / 5,), (3 / 40, 9 / 40), (44 / 45, -56 / 15, 32 / 9),
       (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
       (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
       (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84)),
    b=(35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0),
    e=(35 / 384 - 5179 / 57600, 0.0, 500 / 1113 - 7571 / 16695, 125 / 192 - 393 / 640,
       -2187 / 6784 + 92097 / 339200, 11 / 84 - 187 / 2100, -1 / 40),
    order=4)

#: Tsitouras (2011), the 5(4) pair of OrdinaryDiffEq.jl's Tsit5: smaller error constants
#: than Dormand–Prince for the same 6 evaluations per step.
TSIT5 = Tableau(
    c=(0.0, 0.161, 0.327, 0.9, 0.9800255409045097, 1.0, 1.0),
    a=((0.161,), (-0.008480655492356989, 0.335480655492357),
       (2.897153057105493, -6.359448489975075, 4.3622954328695815),
       (5.325864828439257, -11.748883564062828, 7.4955393428898365, -0.09249506636175525),
       (5.86145544294642, -12.92096931784711, 8.159367898576159, -0.071584973281401,
        -0.028269050394068383),
       (0.09646076681806523, 0.01, 0.4798896504144996, 1.379008574103742,
        -3.290069515436081, 2.324710524099774)),
    b=(0.09646076681806523, 0.01, 0.4798896504144996, 1.379008574103742,
       -3.290069515436081, 2.324710524099774, 0.0),
    e=(-0.00178001105222577714, -0.0008164344596567469, 0.007880878010261995,
       -0.1447110071732629, 0.5823571654525552, -0.45808210592918697, 1 / 66),
    order=4)

#: The solvers of `GuardedSolver(method=...)`: the in-graph embedded pairs above, and TFP's
#: DormandPrince ("tfp"; its error ratio is the RMS of the squared scaled errors, which
#: takes 1.2–1.8× more evaluations than SciPy's RMS norm at equal tolerance).
METHODS = {"dopri5": DOPRI5, "tsit5": TSIT5, "tfp": None}

_SAFETY, _MIN_FACTOR, _MAX_FACTOR = 0.9, 0.2, 10.0


def _nest_rms(nest):
    """RMS over every entry of a nest of tensors (a scalar)."""
    flat = tf.nest.flatten(nest)
    total = tf.add_n([tf.reduce_sum(tf.square(v)) for v in flat])
    count = tf.add_n([tf.cast(tf.size(v), total.dtype) for v in flat])
    return tf.sqrt(total / count)


def _axpy(y, h, coefficients, ks):
    """y + h Σ_j c_j k_j over nests (zero coefficients skipped)."""
    terms = [(c, k) for c, k in zip(coefficients, ks) if c != 0.0]

    def combine(y_leaf, *k_leaves):
        return y_leaf + h * tf.add_n([c * k for (c, _), k in zip(terms, k_leaves)])
    return tf.nest.map_structure(combine, y, *[k for _, k in terms])


def embedded_rk_solve(ode_fn, t0, y0, solution_times, tableau: Tableau, rtol, atol):
    """Adaptive explicit Runge–Kutta solve of dy/dt = ode_fn(t, y) in the graph, stepping
    exactly onto each of the increasing `solution_times` (a 1-D tensor of static length).

    Step control as SciPy's `solve_ivp`: the error of a step is the RMS over every state
    entry of e/(atol + rtol·max(|y|, |y_new|)); a step is accepted when it is ≤ 1; the next
    step is h·min(10, max(0.2, 0.9·err^{−1/(order+1)})) (no growth right after a
    rejection); the first step follows Hairer, Nørsett & Wanner (II.4), at the cost of one
    evaluation. Returns (states at the solution times, each [num_times, ...], number of
    evaluations, final time)."""
    dtype = tf.nest.flatten(y0)[0].dtype
    rtol, atol = tf.cast(rtol, dtype), tf.cast(atol, dtype)
    exponent = -1.0 / (tableau.order + 1)
    stages = len(tableau.c)

    def scale(y, y_new):
        return tf.nest.map_structure(
            lambda a, b: atol + rtol * tf.maximum(tf.abs(a), tf.abs(b)), y, y_new)

    def ratio(num, den):
        return tf.nest.map_structure(tf.math.divide, num, den)

    t0 = tf.cast(t0, dtype)
    f0 = ode_fn(t0, y0)
    # Initial step (Hairer et al.): h0 from ‖y0‖/‖f0‖, refined by one trial evaluation.
    sc0 = scale(y0, y0)
    d0, d1 = _nest_rms(ratio(y0, sc0)), _nest_rms(ratio(f0, sc0))
    h0 = tf.where((d0 < 1e-5) | (d1 < 1e-5), tf.constant(1e-6, dtype), 0.01 * d0 / d1)
    t_end_all = tf.cast(solution_times, dtype)
    h0 = tf.minimum(h0, t_end_all[-1] - t0)
    f1 = ode_fn(t0 + h0, _axpy(y0, h0, (1.0,), (f0,)))
    d2 = _nest_rms(ratio(tf.nest.map_structure(tf.subtract, f1, f0), sc0)) / h0
    dmax = tf.maximum(d1, d2)
    h1 = tf.where(dmax <= 1e-15, tf.maximum(tf.constant(1e-6, dtype), h0 * 1e-3),
                  (0.01 / tf.maximum(dmax, 1e-300)) ** (1.0 / (tableau.order + 1)))
    h = tf.minimum(100.0 * h0, h1)
    evaluations = tf.constant(2, tf.int64)

    t, y, f = t0, y0, f0
    saved = []
    for i in range(int(solution_times.shape[0])):
        t_end = t_end_all[i]

        def cond(t, y, f, h, n, rejected, t_end=t_end):
            # A step size that is not positive and finite (NaN errors, underflow) ends the
            # loop short of t_end, which `GuardedSolver.check` reports.
            return (t < t_end) & (h > 0) & tf.math.is_finite(h)

        def body(t, y, f, h, n, rejected, t_end=t_end):
            last = t + h >= t_end - 1e-12 * tf.abs(t_end)
            step = tf.where(last, t_end - t, h)
            ks = [f]
            for j in range(1, stages):
                y_j = _axpy(y, step, tableau.a[j - 1], ks)
                ks.append(ode_fn(t + tableau.c[j] * step, y_j))
            # FSAL: the last stage is evaluated at y_new = y + step Σ b_j k_j.
            y_new = _axpy(y, step, tableau.a[-1], ks[:-1])
            err = _nest_rms(ratio(_axpy(tf.nest.map_structure(tf.zeros_like, y), step,
                                        tableau.e, ks), scale(y, y_new)))
            accept = err <= 1.0
            factor = _SAFETY * tf.maximum(err, 1e-10) ** exponent
            factor = tf.clip_by_value(factor, tf.constant(_MIN_FACTOR, dtype),
                                      tf.where(rejected, tf.constant(1.0, dtype),
                                               tf.constant(_MAX_FACTOR, dtype)))
            t_next = tf.where(accept, tf.where(last, t_end, t + step), t)
            y_next = tf.nest.map_structure(lambda a, b: tf.where(accept, a, b), y_new, y)
            f_next = tf.nest.map_structure(lambda a, b: tf.where(accept, a, b), ks[-1], f)
            h_next = tf.where(accept & last, h, step * factor)
            return (t_next, y_next, f_next, h_next, n + stages - 1, ~accept)

        t, y, f, h, evaluations, _ = tf.while_loop(
            cond, body, (t, y, f, h, evaluations, tf.constant(False)))
        saved.append(y)
    states = tf.nest.map_structure(lambda *v: tf.stack(v), *saved)
    return states, evaluations, t


class GuardedSolver:
    """An adaptive Runge–Kutta solve (`method`: "dopri5" — default —, "tsit5" or TFP's
    "tfp" DormandPrince) with tolerances (rtol, atol), a step budget `max_num_steps` and a
    `SolveGuard`; `solve` runs inside a `tf.function`, `check` after it (NumPy values)."""

    def __init__(self, rtol: float = 1e-5, atol: float = 1e-5, max_num_steps: int = 10_000,
                 dtype=tf.float64, method: str = "dopri5"):
        if method not in METHODS:
            raise ValueError(f"method must be one of {sorted(METHODS)}, got {method!r}.")
        self.rtol, self.atol = float(rtol), float(atol)
        self.dtype = tf.as_dtype(dtype)
        self.method = method
        self.guard = SolveGuard(EVALS_PER_STEP * int(max_num_steps) + 2, self.dtype)
        self._solver = (tfp.math.ode.DormandPrince(rtol=self.rtol, atol=self.atol)
                        if method == "tfp" else None)

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
        if self._solver is None:
            states, evaluations, t = embedded_rk_solve(
                self.guard.wrap(ode_fn), t0, y0, solution_times, METHODS[self.method],
                self.rtol, self.atol)
            return ODESolution(states, evaluations, tf.constant(0, tf.int32), t, t)
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
