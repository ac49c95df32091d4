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
by an adaptive Runge–Kutta pair (`dde.ode`: Dormand–Prince by default, Tsit5, or TFP's
DormandPrince) inside one `tf.function` (optionally XLA-compiled): no host round-trip per
function evaluation. XLA drops Assert ops, so the solve is guarded in-graph: the
number of evaluations is bounded (`max_num_steps`) and non-finite derivatives are detected;
after either the remaining derivatives are zeroed so the solver finishes, and the failure is
raised as `ODESolverError` with the time reached. The solver's status and final time are
checked as well.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import tensorflow as tf

from dde._cache import compiled_function, weak
from dde._validation import check_data, check_positive, sanitize_seed
from dde.ode import GuardedSolver, ODESolverError, ODEStatus
from dde.score import as_score_fn
from dde.sde import SDE, check_time_interval

__all__ = ["ODESolverError", "ODEStatus", "ProbabilityFlow", "ProbabilityFlowResult",
           "draw_probes", "probability_flow_log_prob"]

_DIVERGENCES = ("exact", "hutchinson")
_PROBES = ("rademacher", "gaussian")


def _batch_spec(x):
    """TensorSpec [None, d] of a batch x (any batch size)."""
    return tf.TensorSpec([None, x.shape[-1]], x.dtype)


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


# ----------------------------------------------------------------------- divergences
def _score_and_divergence_fn(get_score, divergence):
    """(score_fn, score_and_div_fn) for the score model or callable `get_score()` returns.

    score_and_div(x, t, probes) → (s [b, d], ∇·s [b]) with probes [k, b, d] (Hutchinson) or
    None (exact). A score object's own `score_and_divergence(x, t)` (e.g. `DDEScore`, whose
    divergence is the Laplacian of its energy) is used for the exact divergence.
    """
    def score_fn(x, t):
        return as_score_fn(get_score())(x, t)

    def exact(x, t, probes):
        own = getattr(get_score(), "score_and_divergence", None)
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
                 dtype="float64", jit_compile: bool = False, prior_log_prob=None,
                 solver: str = "dopri5", weak_reference: bool = False):
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
        # weak_reference: hold the score model weakly (the cache of
        # `probability_flow_log_prob` does, so that it never keeps a model alive).
        self._get_score = weak(score) if weak_reference else (lambda: score)
        self.sde = sde
        self.eps = check_time_interval(eps, sde.T)
        self.divergence = divergence
        self.rtol, self.atol = float(rtol), float(atol)
        self.num_probes = int(num_probes)
        self.probe = probe
        self.jit_compile = bool(jit_compile)
        # The score model's own prior (e.g. `DDEScore.prior_log_prob`, moment-matched to its
        # data) is closer to the true p_T than the SDE's nominal one: use it when there is one.
        if prior_log_prob is None and callable(getattr(score, "prior_log_prob", None)):
            def prior_log_prob(z):
                return self.score.prior_log_prob(z)
        self.prior_log_prob = prior_log_prob or sde.prior_logp
        self.input_dim = getattr(score, "input_dim", None)
        self._score_fn, self._score_and_div = _score_and_divergence_fn(self._get_score,
                                                                       divergence)
        self.solver = solver
        self._solver = GuardedSolver(self.rtol, self.atol, max_num_steps, self.dtype,
                                     method=solver)

    @property
    def score(self):
        """The score model (or callable) this flow integrates."""
        return self._get_score()

    @property
    def max_num_steps(self) -> int:
        """Step budget of one solve (changing it does not retrace)."""
        return self._solver.max_num_steps

    @max_num_steps.setter
    def max_num_steps(self, value: int):
        check_positive(value, "max_num_steps", integer=True)
        self._solver.max_num_steps = value

    def _solve(self, x0, probes):
        """The compiled solve for x0's dimension: one trace for every batch size (XLA still
        compiles once per batch shape)."""
        d = int(x0.shape[1])
        k = self.num_probes if self.divergence == "hutchinson" else 0
        spec = [tf.TensorSpec([None, d], self.dtype), tf.TensorSpec([k, None, d], self.dtype)]
        flow = weak(self)
        solve = compiled_function(self, ("solve", d), lambda: tf.function(
            lambda x0, probes: flow()._solve_graph(x0, probes), input_signature=spec,
            jit_compile=self.jit_compile, autograph=False))
        return solve(x0, probes)

    def _solve_graph(self, x0, probes):
        """In-graph solve of [x, Δ] from T_ε to T for one batch x0 [b, d] (probes [k, b, d]
        or a [0, b, d] placeholder for the exact divergence)."""
        sde, dtype = self.sde, self.dtype
        hutchinson = self.divergence == "hutchinson"

        def rhs(t, x, probes):
            # With solver="tfp" the last step may end beyond T (its output at T is
            # interpolated); the right-hand side is evaluated there as it is (clamping t
            # would put a kink into the step and spoil the interpolant).
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
        solution = self._solver.solve(ode_fn, tf.constant(self.eps, dtype), state0,
                                      tf.constant([sde.T], dtype))
        z, delta = (v[-1] for v in solution.states)
        return z, delta, solution._replace(states=())

    def _batch(self, xb, seed, index):
        x0 = tf.constant(xb, self.dtype)
        if self.divergence == "hutchinson":
            shape = [self.num_probes, xb.shape[0], xb.shape[1]]
            batch_seed = tf.random.experimental.stateless_fold_in(
                tf.constant(seed, tf.int64), index)
            probes = draw_probes(shape, batch_seed, self.probe, self.dtype)
        else:
            probes = tf.zeros([0, xb.shape[0], xb.shape[1]], self.dtype)
        z, delta, solution = self._solve(x0, probes)
        T = self.sde.T
        self._solver.check(solution, T, "The probability-flow ODE solve")
        reached = float(solution.current_time)
        if reached < T * (1 - 1e-9):
            raise ODESolverError(
                f"The probability-flow ODE solve stopped at t = {reached:.6g} before "
                f"T = {T:g}.", reached, ODEStatus.STOPPED_EARLY)
        z = z.numpy()
        if not (np.isfinite(z).all() and np.isfinite(delta.numpy()).all()):
            raise ODESolverError("The probability-flow ODE solve returned non-finite values.",
                                 self.sde.T, ODEStatus.NONFINITE)
        return z, delta.numpy(), int(solution.num_function_evaluations.numpy())

    def log_prob(self, x, seed=None, batch_size: int = 4096) -> ProbabilityFlowResult:
        """log p_{T_ε}(x) for x [n, d]: see `probability_flow_log_prob`."""
        x = check_data(x, name="x", n_features=self.input_dim, owner="the score model",
                       dtype=np.float64)
        check_positive(batch_size, "batch_size", integer=True)
        seed = sanitize_seed(seed, SEED_SALT)
        zs, deltas, nfe = [], [], 0
        for index, start in enumerate(range(0, len(x), batch_size)):
            z, delta, n = self._batch(x[start:start + batch_size], seed, index)
            zs.append(z)
            deltas.append(delta)
            nfe += n
        z = np.concatenate(zs).astype(np.float64)
        delta = np.concatenate(deltas).astype(np.float64)
        prior = np.asarray(self.prior_log_prob(tf.constant(z, self.dtype)), np.float64)
        prior = prior.reshape(len(x))
        return ProbabilityFlowResult(prior + delta, z, prior, delta, nfe,
                                     -(-len(x) // batch_size))


#: The salt of the Hutchinson probes' seed stream (see `dde._validation.sanitize_seed`).
SEED_SALT = 0x0DE


def _cached_flow(score, sde, settings):
    """The `ProbabilityFlow` for (score, sde, settings), cached per score model (weakly)."""
    return compiled_function(score, ("probability_flow", sde, settings),
                             lambda: ProbabilityFlow(score, sde, weak_reference=True,
                                                     **dict(settings)))


def probability_flow_log_prob(score_fn, sde: SDE | None, x, *, divergence: str = "exact",
                              rtol: float = 1e-5, atol: float = 1e-5, num_probes: int = 1,
                              probe: str = "rademacher", eps: float = 1e-5, seed=None,
                              batch_size: int = 4096, max_num_steps: int = 10_000,
                              dtype="float64", jit_compile: bool = False,
                              prior_log_prob=None, solver: str = "dopri5"
                              ) -> ProbabilityFlowResult:
    """log p_{T_ε}(x) of a score model by the probability-flow ODE.

    Args:
        score_fn: a score model (`ScoreNetwork`, `DDEScore`: anything with
            `score_tensor(x, t)`) or a callable score_fn(x, t) → [n, d], x [n, d], t a scalar
            tensor; it must be traceable by `tf.function` (and by XLA with `jit_compile`).
        sde: the `SDE` (None: the score model's `sde`).
        x: data [n, d].
        divergence: "exact" (batched Jacobian trace, cost ∝ d) or "hutchinson".
        rtol, atol: the solver's tolerances on the joint state [x, Δ].
        solver: "dopri5" (Dormand–Prince 5(4), in-graph, SciPy's step control: the same
            evaluations as SciPy's RK45 at equal tolerance), "tsit5" (Tsitouras 5(4)) or
            "tfp" (TFP's DormandPrince; see `dde.ode.METHODS`).
        num_probes, probe: Hutchinson probes per point ("rademacher" or "gaussian"), drawn
            once per solve from `seed` and held fixed along it.
        eps: T_ε, the start time (the data end of the flow), 0 < T_ε < T.
        seed: seed of the probes: an int, a pair of ints, or None (random).
        batch_size: rows per solve (each batch has its own adaptive steps; results agree to
            the solver tolerance).
        max_num_steps: step budget per solve; exceeding it raises `ODESolverError`.
        dtype: integration dtype ("float64": the score model runs in its own dtype).
        jit_compile: XLA-compile the solve (compilation takes seconds to tens of seconds per
            batch shape; it pays off only for repeated evaluations).
        prior_log_prob: log p_T(z), [n, d] → [n] (default: the score model's own
            `prior_log_prob` when it has one, as `DDEScore` does, else `sde.prior_logp`).

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
                ("jit_compile", bool(jit_compile)), ("prior_log_prob", prior_log_prob),
                ("solver", solver))
    if sde is None:
        sde = getattr(score_fn, "sde", None)
    try:
        hash(settings)
    except TypeError:
        flow = ProbabilityFlow(score_fn, sde, **dict(settings))
    else:
        flow = _cached_flow(score_fn, sde, settings)
    return flow.log_prob(x, seed=seed, batch_size=batch_size)
