"""The in-graph Runge–Kutta pairs of `dde.ode` against ODEs with known solutions and against
SciPy's RK45 (same pair, same step control)."""
import numpy as np
import pytest
import tensorflow as tf
from scipy.integrate import solve_ivp

from dde.ode import DOPRI5, TSIT5, GuardedSolver, ODESolverError, ODEStatus


def rhs(t, y):
    """y₁' = −2t y₁ (y₁ = e^{−t²}) and a harmonic oscillator (y₂ = (cos t, −sin t))."""
    a, b = y
    return -2.0 * t * a, tf.stack([b[:, 1], -b[:, 0]], axis=1)


Y0 = (tf.ones([3], tf.float64), tf.constant([[1.0, 0.0]] * 2, tf.float64))
TIMES = (1.0, 3.0)


def exact(t):
    return np.exp(-t ** 2), np.array([np.cos(t), -np.sin(t)])


def solve(method, tol, times=TIMES):
    solver = GuardedSolver(tol, tol, 100_000, method=method)
    sol = tf.function(lambda: solver.solve(rhs, tf.constant(0.0, tf.float64), Y0,
                                           tf.constant(times, tf.float64)))()
    solver.check(sol, times[-1], "test solve")
    return sol


def max_error(sol):
    a, b = (v.numpy() for v in sol.states)
    errors = []
    for i, t in enumerate(TIMES):
        ea, eb = exact(t)
        errors += [np.abs(a[i] - ea).max(), np.abs(b[i] - eb).max()]
    return max(errors)


@pytest.mark.parametrize("tableau", [DOPRI5, TSIT5], ids=["dopri5", "tsit5"])
def test_tableaus_are_consistent(tableau):
    """Row sums of a equal c; b and b̂ = b − e each sum to 1; FSAL: b is a's last row."""
    for c, row in zip(tableau.c[1:], tableau.a):
        assert sum(row) == pytest.approx(c, abs=1e-12)
    assert sum(tableau.b) == pytest.approx(1.0, abs=1e-12)
    assert sum(tableau.e) == pytest.approx(0.0, abs=1e-12)
    assert tuple(tableau.b[:-1]) == tuple(tableau.a[-1])
    # Quadrature order conditions Σ b_i c_i^k = 1/(k+1): k ≤ 4 for the fifth-order b, k ≤ 3
    # for the embedded fourth-order b̂; and Σ b_i a_ij c_j = 1/6.
    c, b = np.array(tableau.c), np.array(tableau.b)
    b_hat = b - np.array(tableau.e)
    for k in range(5):
        assert np.dot(b, c ** k) == pytest.approx(1 / (k + 1), abs=1e-10)
    for k in range(4):
        assert np.dot(b_hat, c ** k) == pytest.approx(1 / (k + 1), abs=1e-10)
    a = np.zeros((len(c), len(c)))
    for i, row in enumerate(tableau.a, start=1):
        a[i, :len(row)] = row
    assert b @ a @ c == pytest.approx(1 / 6, abs=1e-10)


@pytest.mark.parametrize("method", ["dopri5", "tsit5"])
def test_solutions_meet_the_tolerance_and_converge(method):
    """The error at the solution times is within 10× the tolerance and falls with it at
    order ≈ 5 (100× tighter tolerance → error ≥ 30× smaller); the solve ends exactly on each
    solution time."""
    coarse, fine = solve(method, 1e-5), solve(method, 1e-7)
    assert max_error(coarse) < 1e-4 and max_error(fine) < 1e-6
    assert max_error(fine) < max_error(coarse) / 30
    assert float(coarse.current_time) == TIMES[-1]
    assert int(fine.num_function_evaluations) > int(coarse.num_function_evaluations)


def test_dopri5_takes_scipys_steps():
    """The same Dormand–Prince pair with SciPy's error norm and step control: over [0, 3] the
    number of evaluations matches `solve_ivp(method="RK45")` within 10 %, while TFP's
    DormandPrince needs more."""
    def f(t, y):
        return np.concatenate([-2 * t * y[:3], [y[4], -y[3], y[6], -y[5]]])

    y0 = np.array([1, 1, 1, 1, 0, 1, 0.0])
    for tol in (1e-5, 1e-7):
        scipy_nfe = solve_ivp(f, (0, 3), y0, rtol=tol, atol=tol).nfev
        ours = int(solve("dopri5", tol, (3.0,)).num_function_evaluations)
        assert abs(ours - scipy_nfe) <= 0.1 * scipy_nfe, (ours, scipy_nfe)
        assert int(solve("tfp", tol, (3.0,)).num_function_evaluations) > ours


def test_the_guard_stops_a_runaway_solve():
    """A right-hand side that becomes NaN: the solve still ends, and `check` raises with the
    time reached; a tiny step budget raises BUDGET_EXCEEDED."""
    def bad(t, y):
        return tf.where(t > 0.5, tf.constant(np.nan, tf.float64), -y)

    solver = GuardedSolver(1e-6, 1e-6, 1000)
    sol = tf.function(lambda: solver.solve(bad, tf.constant(0.0, tf.float64),
                                           tf.ones([2], tf.float64),
                                           tf.constant([1.0], tf.float64)))()
    with pytest.raises(ODESolverError) as info:
        solver.check(sol, 1.0, "bad solve")
    assert info.value.status == ODEStatus.NONFINITE and 0.5 < info.value.time_reached <= 1.0
    small = GuardedSolver(1e-10, 1e-10, 2)
    sol = tf.function(lambda: small.solve(rhs, tf.constant(0.0, tf.float64), Y0,
                                          tf.constant([3.0], tf.float64)))()
    with pytest.raises(ODESolverError) as info:
        small.check(sol, 3.0, "short solve")
    assert info.value.status == ODEStatus.BUDGET_EXCEEDED
    with pytest.raises(ValueError, match="method"):
        GuardedSolver(method="euler")
