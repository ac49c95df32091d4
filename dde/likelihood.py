"""Log-likelihoods of score models through the probability-flow ODE.

The probability flow `dx/dt = f̃(x, t) = f(x, t) − ½g(t)² s(x, t)` has the marginals p_t of the
diffusion SDE, and along a trajectory `d log p_t(x(t))/dt = −∇ₓ·f̃(x(t), t)`. Integrating the
data point x = x(T_ε) forward to z = x(T) together with Δ(t) = ∫_{T_ε}^{t} ∇·f̃ gives

    log p_{T_ε}(x) = log p_T(z) + ∫_{T_ε}^{T} ∇ₓ·f̃(x(t), t) dt,

with p_T the SDE's prior. `∇ₓ·f̃ = ∇ₓ·f − ½g² ∇ₓ·s`: the trace of the score's Jacobian is
computed exactly (a batched Jacobian, d backward passes: small d) or estimated by
Hutchinson–Skilling, `E[εᵀ ∂ₓs ε]` with Rademacher or Gaussian probes ε drawn once per solve
and held fixed along it (an unbiased estimate of log p; average `num_probes` of them).

The state [x, Δ] is integrated in float64 (by default; the score model runs in its own dtype)
by `tfp.math.ode.DormandPrince` inside one `tf.function` (optionally XLA-compiled): no host
round-trip per function evaluation. XLA drops Assert ops, so the solve is guarded in-graph: the
number of evaluations is bounded (`max_num_steps`) and non-finite derivatives are detected;
after either the remaining derivatives are zeroed so the solver finishes, and the failure is
raised as `ODESolverError` with the time reached. The solver's status and final time are
checked as well.
"""
from __future__ import annotations

import math
import weakref
from typing import NamedTuple

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from dde._validation import check_data, check_positive, random_seed
from dde.sde import SDE, check_time_interval

_DIVERGENCES = ("exact", "hutchinson")
_PROBES = ("rademacher", "gaussian")
_EVALS_PER_STEP = 6  # Dormand–Prince 5(4) with first-same-as-last


def _batch_spec(x):
    """TensorSpec [None, d] of a batch x (any batch size)."""
    return tf.TensorSpec([None, x.shape[-1]], x.dtype)


class ODESolverError(RuntimeError):
    """The ODE solver did not reach its final time. `time_reached` holds where it stopped."""

    def __init__(self, message: str, time_reached: float = float("nan")):
        super().__init__(message)
        self.time_reached = time_reached


class ProbabilityFlowResult(NamedTuple):
    """Result of `probability_flow_log_prob`.

    log_prob: [n] float64, log p_{T_ε}(x) = prior_log_prob + delta_log_prob.
    latent: [n, d] float64, z = x(T), the end of the probability flow.
    prior_log_prob: [n] float64, log p_T(z).
    delta_log_prob: [n] float64, ∫_{T_ε}^{T} ∇·f̃ dt.
    num_function_evaluations: total evaluations of the ODE right-hand side over all batches
        (each evaluates the score, and its divergence, on a whole batch).
    num_batches: number of separate solves (batches of `batch_size` rows).
    """

    log_prob: np.ndarray
    latent: np.ndarray
    prior_log_prob: np.ndarray
    delta_log_prob: np.ndarray
    num_function_evaluations: int
    num_batches: int


# --------------------------------------------------------------------------- solve guard
class SolveGuard:
    """In-graph guard of an adaptive ODE solve: bounds the number of right-hand-side
    evaluations and detects non-finite derivatives, without Assert ops (so it also works under
    XLA). Once tripped, the wrapped right-hand side returns zeros so the solver runs to its
    final time quickly; `check` then raises `ODESolverError` with the time reached.

    status: 0 ok, 1 evaluation budget exceeded, 2 non-finite derivative.
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
                                  tf.where(count > self._budget.read_value(), 1,
                                           tf.where(finite, 0, 2)))
            new_status = tf.cast(new_status, tf.int32)
            first = tf.logical_and(tf.equal(previous, 0), new_status != 0)
            with tf.control_dependencies([self.time.assign(
                    tf.where(first, tf.cast(t, self.dtype), self.time.read_value()))]):
                self.status.assign(new_status)
                ok = tf.equal(new_status, 0)
                return tf.nest.map_structure(
                    lambda v: tf.where(ok, v, tf.zeros_like(v)), dy)
        return guarded

    def check(self, final_time, T, solver_status, what="The probability-flow ODE solve",
              to_time=None):
        """Raise `ODESolverError` if the guarded solve failed (call with NumPy values):
        final_time is the solver's final time and T the time it had to reach (SDE time);
        to_time maps the solver's integration variable to SDE time (identity if None)."""
        status = int(self.status.numpy())
        reached = float(self.time.numpy())
        if to_time is not None:
            reached = float(to_time(reached))
        if status == 1:
            raise ODESolverError(
                f"{what} did not reach t = {T:g}: the step budget was exceeded "
                f"({self.max_evaluations} evaluations, max_num_steps = "
                f"{self.max_evaluations // _EVALS_PER_STEP}) at t = {reached:.6g}. Increase "
                "max_num_steps or loosen rtol/atol.", reached)
        if status == 2:
            raise ODESolverError(
                f"{what} did not reach t = {T:g}: the right-hand side became non-finite at "
                f"t = {reached:.6g} (NaN or overflow in the score model).", reached)
        if int(solver_status) != 0:
            raise ODESolverError(f"{what} failed with solver status {int(solver_status)}.",
                                 float(final_time))
        if not np.isclose(float(final_time), T, rtol=1e-9, atol=1e-9):
            raise ODESolverError(
                f"{what} stopped at t = {float(final_time):.6g} instead of T = {T:g}.",
                float(final_time))


# ----------------------------------------------------------------------- divergences
def _score_and_divergence_fn(score, divergence):
    """(score_fn, score_and_div_fn) for a score model or callable.

    score_and_div(x, t, probes) → (s [b, d], ∇·s [b]) with probes [k, b, d] (Hutchinson) or
    None (exact). A score object's own `score_and_divergence(x, t)` (e.g. `DDEScore`, whose
    divergence is the Laplacian of its energy) is used for the exact divergence.
    """
    from dde.score import as_score_fn  # local: dde.score imports the models module

    score_fn = as_score_fn(score)
    own = getattr(score, "score_and_divergence", None)

    def exact(x, t, probes):
        if callable(own):
            s, div = own(x, t)
            return tf.cast(s, x.dtype), tf.cast(div, x.dtype)
        with tf.GradientTape() as tape:
            tape.watch(x)
            s = tf.cast(score_fn(x, t), x.dtype)
        if x.shape[-1] == 1:
            div = tape.gradient(s, x)[:, 0]  # the Jacobian is 1×1: one backward pass
        else:
            div = tf.linalg.trace(tape.batch_jacobian(s, x))
        return s, div

    def hutchinson(x, t, probes):
        k = probes.shape[0]
        b = tf.shape(x)[0]
        x_rep = tf.tile(x, [k, 1]) if k > 1 else x
        eps_flat = tf.reshape(probes, tf.shape(x_rep))
        with tf.GradientTape() as tape:
            tape.watch(x_rep)
            s_rep = tf.cast(score_fn(x_rep, t), x.dtype)
        vjp = tape.gradient(s_rep, x_rep, output_gradients=eps_flat)  # Jᵀε
        est = tf.reshape(tf.reduce_sum(vjp * eps_flat, axis=-1), [k, b])
        return s_rep[:b], tf.reduce_mean(est, axis=0)

    return score_fn, (exact if divergence == "exact" else hutchinson)


def draw_probes(shape, seed, probe: str = "rademacher", dtype=tf.float64):
    """Hutchinson probes of `shape` with E[εεᵀ] = I: Rademacher (±1) or standard Gaussian."""
    seed = tf.cast(tf.convert_to_tensor(seed), tf.int64)
    if probe == "rademacher":
        bits = tf.random.stateless_uniform(shape, seed, minval=0, maxval=2, dtype=tf.int32)
        return tf.cast(2 * bits - 1, dtype)
    return tf.random.stateless_normal(shape, seed, dtype=dtype)


# ------------------------------------------------------------------------ the solver
class ProbabilityFlow:
    """A compiled probability-flow likelihood for one score model, SDE and solver setting.

    Reuse one object for repeated evaluations (the graph is traced and compiled once per
    batch shape). `log_prob(x, seed=None)` → `ProbabilityFlowResult`. Arguments as in
    `probability_flow_log_prob`.
    """

    def __init__(self, score, sde: SDE | None = None, *, divergence: str = "exact",
                 rtol: float = 1e-5, atol: float = 1e-5, num_probes: int = 1,
                 probe: str = "rademacher", eps: float = 1e-5, max_num_steps: int = 10_000,
                 dtype="float64", jit_compile: bool = False, prior_log_prob=None):
        if sde is None:
            sde = getattr(score, "sde", None)
            if sde is None:
                raise ValueError("sde is required when the score model does not carry one.")
        if not isinstance(sde, SDE):
            raise TypeError(f"sde must be a dde.sde.SDE, got {type(sde)!r}.")
        if not (callable(score) or callable(getattr(score, "score_tensor", None))):
            raise TypeError(f"score must be a score model or a callable score_fn(x, t), got "
                            f"{score!r}.")
        if divergence not in _DIVERGENCES:
            raise ValueError(f"divergence must be one of {_DIVERGENCES}, got {divergence!r}.")
        if probe not in _PROBES:
            raise ValueError(f"probe must be one of {_PROBES}, got {probe!r}.")
        check_positive(rtol, "rtol")
        check_positive(atol, "atol")
        check_positive(num_probes, "num_probes", integer=True)
        check_positive(max_num_steps, "max_num_steps", integer=True)
        if prior_log_prob is not None and not callable(prior_log_prob):
            raise TypeError("prior_log_prob must be callable as prior_log_prob(z) → [n].")
        self.dtype = tf.as_dtype(dtype)
        if not self.dtype.is_floating:
            raise TypeError(f"dtype must be a floating dtype, got {dtype!r}.")
        self.score = score
        self.sde = sde
        self.eps = check_time_interval(eps, sde.T)
        self.divergence = divergence
        self.rtol, self.atol = float(rtol), float(atol)
        self.num_probes = int(num_probes)
        self.probe = probe
        self.jit_compile = bool(jit_compile)
        self.prior_log_prob = prior_log_prob or sde.prior_logp
        self.input_dim = getattr(score, "input_dim", None)
        self._score_fn, self._score_and_div = _score_and_divergence_fn(score, divergence)
        self._guard = SolveGuard(_EVALS_PER_STEP * int(max_num_steps) + 2, self.dtype)
        self._solver = tfp.math.ode.DormandPrince(rtol=self.rtol, atol=self.atol)
        self._solves = {}  # feature dimension d → compiled solve

    @property
    def max_num_steps(self) -> int:
        """Step budget of one solve (changing it does not retrace)."""
        return (self._guard.max_evaluations - 2) // _EVALS_PER_STEP

    @max_num_steps.setter
    def max_num_steps(self, value: int):
        check_positive(value, "max_num_steps", integer=True)
        self._guard.max_evaluations = _EVALS_PER_STEP * int(value) + 2

    def _solve(self, x0, probes):
        """The compiled solve for x0's dimension: one trace for every batch size (XLA still
        compiles once per batch shape)."""
        d = int(x0.shape[1])
        if d not in self._solves:
            k = self.num_probes if self.divergence == "hutchinson" else 0
            spec = [tf.TensorSpec([None, d], self.dtype),
                    tf.TensorSpec([k, None, d], self.dtype)]
            self._solves[d] = tf.function(
                lambda x0, probes: self._solve_graph(x0, probes), input_signature=spec,
                jit_compile=self.jit_compile, autograph=False)
        return self._solves[d](x0, probes)

    def _solve_graph(self, x0, probes):
        """In-graph solve of [x, Δ] from T_ε to T for one batch x0 [b, d] (probes [k, b, d]
        or a [0, b, d] placeholder for the exact divergence)."""
        self._guard.reset()
        sde, dtype = self.sde, self.dtype
        hutchinson = self.divergence == "hutchinson"

        def rhs(t, x, probes):
            # The solver's last step may end beyond T (its output at T is interpolated); the
            # right-hand side is evaluated there as it is (clamping t would put a kink into
            # the step and spoil the interpolant).
            s, div_s = self._score_and_div(x, t, probes if hutchinson else None)
            g2 = tf.cast(sde.diffusion_squared(t), dtype)
            dx = sde.probability_flow_drift(x, t, s)
            ddelta = sde.drift_divergence(x, t) - 0.5 * g2 * div_s
            return dx, ddelta

        # The solver calls its right-hand side at every Runge–Kutta stage; as a nested
        # function it is traced (and its Jacobian vectorized) once instead of once per stage.
        rhs = tf.function(rhs, input_signature=[tf.TensorSpec([], dtype), _batch_spec(x0),
                                                tf.TensorSpec(probes.shape, dtype)],
                          autograph=False)

        def ode_fn(t, state):
            return rhs(t, state[0], probes)

        state0 = (x0, tf.zeros(tf.shape(x0)[:1], dtype))
        results = self._solver.solve(
            self._guard.wrap(ode_fn), tf.constant(self.eps, dtype), state0,
            solution_times=tf.constant([sde.T], dtype))
        z = results.states[0][-1]
        delta = results.states[1][-1]
        return (z, delta, results.diagnostics.num_ode_fn_evaluations,
                results.diagnostics.status, results.times[-1],
                results.solver_internal_state.current_time)

    def _batch(self, xb, seed, index):
        x0 = tf.constant(xb, self.dtype)
        if self.divergence == "hutchinson":
            shape = [self.num_probes, xb.shape[0], xb.shape[1]]
            batch_seed = tf.stack([tf.constant(seed, tf.int64), tf.constant(index, tf.int64)])
            probes = draw_probes(shape, batch_seed, self.probe, self.dtype)
        else:
            probes = tf.zeros([0, xb.shape[0], xb.shape[1]], self.dtype)
        z, delta, nfe, status, final_time, current = self._solve(x0, probes)
        T = self.sde.T
        self._guard.check(float(final_time), T, status.numpy())
        reached = float(current)
        if reached < T * (1 - 1e-9):
            raise ODESolverError(
                f"The probability-flow ODE solve stopped at t = {reached:.6g} before "
                f"T = {T:g}.", reached)
        z = z.numpy()
        if not (np.isfinite(z).all() and np.isfinite(delta.numpy()).all()):
            raise ODESolverError("The probability-flow ODE solve returned non-finite values.",
                                 self.sde.T)
        return z, delta.numpy(), int(nfe.numpy())

    def log_prob(self, x, seed=None, batch_size: int = 4096) -> ProbabilityFlowResult:
        """log p_{T_ε}(x) for x [n, d]: see `probability_flow_log_prob`."""
        x = check_data(x, name="x", n_features=self.input_dim, owner="the score model",
                       dtype=np.float64)
        check_positive(batch_size, "batch_size", integer=True)
        if seed is None:
            seed = random_seed()
        elif isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise TypeError(f"seed must be an int or None, got {seed!r}.")
        zs, deltas, nfe = [], [], 0
        for index, start in enumerate(range(0, len(x), batch_size)):
            z, delta, n = self._batch(x[start:start + batch_size], int(seed), index)
            zs.append(z)
            deltas.append(delta)
            nfe += n
        z = np.concatenate(zs).astype(np.float64)
        delta = np.concatenate(deltas).astype(np.float64)
        prior = np.asarray(self.prior_log_prob(tf.constant(z, self.dtype)), np.float64)
        prior = prior.reshape(len(x))
        return ProbabilityFlowResult(prior + delta, z, prior, delta, nfe,
                                     -(-len(x) // batch_size))


_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _cached_flow(score, sde, settings):
    owner = getattr(score, "__self__", score)  # bound methods: key on their object
    key = (getattr(score, "__func__", None), sde, settings)
    try:
        per_owner = _CACHE.setdefault(owner, {})
    except TypeError:  # not weak-referenceable
        return ProbabilityFlow(score, sde, **dict(settings))
    if key not in per_owner:
        per_owner[key] = ProbabilityFlow(score, sde, **dict(settings))
    return per_owner[key]


def probability_flow_log_prob(score_fn, sde: SDE | None, x, *, divergence: str = "exact",
                              rtol: float = 1e-5, atol: float = 1e-5, num_probes: int = 1,
                              probe: str = "rademacher", eps: float = 1e-5, seed=None,
                              batch_size: int = 4096, max_num_steps: int = 10_000,
                              dtype="float64", jit_compile: bool = False,
                              prior_log_prob=None) -> ProbabilityFlowResult:
    """log p_{T_ε}(x) of a score model by the probability-flow ODE.

    Args:
        score_fn: a score model (`ScoreNetwork`, `DDEScore`: anything with
            `score_tensor(x, t)`) or a callable score_fn(x, t) → [n, d], x [n, d], t a scalar
            tensor; it must be traceable by `tf.function` (and by XLA with `jit_compile`).
        sde: the `SDE` (None: the score model's `sde`).
        x: data [n, d].
        divergence: "exact" (batched Jacobian trace, cost ∝ d) or "hutchinson".
        rtol, atol: Dormand–Prince tolerances on the joint state [x, Δ].
        num_probes, probe: Hutchinson probes per point ("rademacher" or "gaussian"), drawn
            once per solve from `seed` and held fixed along it.
        eps: T_ε, the start time (the data end of the flow), 0 < T_ε < T.
        seed: int seed of the probes (None: random).
        batch_size: rows per solve (each batch has its own adaptive steps; results agree to
            the solver tolerance).
        max_num_steps: step budget per solve; exceeding it raises `ODESolverError`.
        dtype: integration dtype ("float64": the score model runs in its own dtype).
        jit_compile: XLA-compile the solve (compilation takes seconds to tens of seconds per
            batch shape; it pays off only for repeated evaluations).
        prior_log_prob: log p_T(z) (default `sde.prior_logp`), [n, d] → [n].

    Returns:
        `ProbabilityFlowResult` (log_prob [n] float64, latent z [n, d], prior_log_prob,
        delta_log_prob, num_function_evaluations, num_batches).

    Raises:
        ValueError/TypeError for bad arguments or data; `ODESolverError` if the solver did not
        reach T (step budget, non-finite right-hand side), with the time reached.
    """
    settings = (("divergence", divergence), ("rtol", rtol), ("atol", atol),
                ("num_probes", num_probes), ("probe", probe), ("eps", eps),
                ("max_num_steps", max_num_steps), ("dtype", str(tf.as_dtype(dtype).name)),
                ("jit_compile", bool(jit_compile)), ("prior_log_prob", prior_log_prob))
    if sde is None:
        sde = getattr(score_fn, "sde", None)
    try:
        hash(settings)
    except TypeError:
        flow = ProbabilityFlow(score_fn, sde, **dict(settings))
    else:
        flow = _cached_flow(score_fn, sde, settings)
    return flow.log_prob(x, seed=seed, batch_size=batch_size)
