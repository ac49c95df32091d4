"""Samplers for score models (`ScoreNetwork`, `DDEScore`, or a callable with an SDE), as
serializable Keras layers beside the Langevin samplers of `dde.sampling`.

* `ReverseDiffusionSampler` — the reverse-time SDE `dx = [f − g²s] dt + g dW̄` from T down to
  T_ε by Euler–Maruyama on a uniform grid of `num_steps` steps (Δ = (T − T_ε)/num_steps):

      x ← x − [f(x, t) − g(t)² s(x, t)] Δ + g(t) √Δ ξ,

  optionally preceded at every time by `corrector_steps` Langevin corrector steps at the
  current marginal (predictor–corrector sampling, Song et al. 2021): with ξ ~ N(0, I),

      ε = 2 a (snr ‖ξ‖ / ‖s(x, t)‖)²,   x ← x + ε s(x, t) + √(2ε) ξ,

  with the norms averaged over the batch and a = (α_t/α_{t−Δ})² (≈ 1 − β(t)Δ for the VP-SDE,
  1 for VE). With `denoise=True` the last step adds no noise (its mean is returned).
* `ProbabilityFlowSampler` — the probability-flow ODE `dx/dt = f − ½g²s` integrated from T down
  to T_ε by `tfp.math.ode.DormandPrince` in one `tf.function`, in the variable r = −log t
  (steps shrink with t, and no step can cross t = 0); deterministic: the same prior sample
  always gives the same output; with the same in-graph guard as the likelihood
  (bounded evaluations, non-finite detection → `ODESolverError` with the time reached).

Usage mirrors `dde.sampling`: a sampler holds only its hyper-parameters (`get_config`); the score
model is passed at call time,

    results = ReverseDiffusionSampler(num_steps=500)(score_model, 1000, seed=0)

where the second argument is either the number of samples (drawn from the SDE's prior with
`seed`) or initial states x_T [n, d]. Results (`ScoreSamplerResults`, NumPy): `samples`
[n, d] at T_ε; `trajectory` [k, n, d] and `times` [k] (with `return_trajectory=True`: the
states from T down to T_ε, every `thin` steps / at `num_saved` equally spaced times) or None;
`num_function_evaluations` (score evaluations per sample batch).
"""
from __future__ import annotations

import collections
import numbers

import keras
import numpy as np
import tensorflow as tf

from dde._cache import compiled_function, weak
from dde._tensors import as_column
from dde._validation import check_data, check_positive, sanitize_seed
from dde.ode import GuardedSolver, ODESolverError, ODEStatus
from dde.score import as_score_fn
from dde.sde import SDE, check_time_interval

ScoreSamplerResults = collections.namedtuple(
    "ScoreSamplerResults", ["samples", "trajectory", "times", "num_function_evaluations"])
ScoreSamplerResults.__doc__ = """Output of a score-model sampler (NumPy arrays).

samples: [n, d] states at T_ε.
trajectory: [k, n, d] saved states from T down to T_ε (first row: the initial state), or None.
times: [k] the times of the trajectory rows (None without a trajectory).
num_function_evaluations: number of score evaluations (each on the whole batch).
"""

#: The salt of the score samplers' seed stream (see `dde._validation.sanitize_seed`).
SEED_SALT = 0x5C0E


class _Target:
    """A resolved score model: score_fn(x, t), its SDE, owner object (cache key), dim."""

    def __init__(self, score, sde):
        score_fn = as_score_fn(score)
        # Held weakly: compiled loops capture this target and are cached per owner (a weak
        # key), so a strong reference would keep every model ever sampled from alive.
        self._score_fn = weak(score_fn)
        self._owner = weak(getattr(score_fn, "__self__", score))
        sde = getattr(score, "sde", None) if sde is None else sde
        if sde is None:
            raise ValueError("sde is required when the score model does not carry one.")
        if not isinstance(sde, SDE):
            raise TypeError(f"sde must be a dde.sde.SDE, got {type(sde)!r}.")
        self.sde = sde
        self.input_dim = getattr(score, "input_dim", None)
        self.dtype = tf.as_dtype(getattr(score, "compute_dtype", None) or "float32")
        if isinstance(score, keras.Model) and not score.built:
            raise ValueError("The score model has not been built or trained yet.")

    @property
    def owner(self):
        """The object the compiled loops are cached for (the score model)."""
        return self._owner()

    def score(self, x, t):
        return tf.cast(self._score_fn()(x, t), x.dtype)


class _ScoreSamplerBase(keras.layers.Layer):
    """Shared machinery: target resolution, initial states, seeds, compiled-function cache."""

    _kind = "base"

    def __init__(self, eps: float = 1e-3, jit_compile: bool = False, **kwargs):
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        self.built = True  # no weights
        check_positive(eps, "eps")
        self.eps = float(eps)
        if not isinstance(jit_compile, bool):
            raise TypeError(f"jit_compile must be a bool, got {jit_compile!r}.")
        self.jit_compile = jit_compile

    def __call__(self, score_model, initial_state, seed=None, return_trajectory=False,
                 sde=None):
        """Run the sampler (eagerly; the loop itself is compiled): see `call`.

        The score model is a Python object, not a tensor, so the tensor bookkeeping of
        `keras.layers.Layer.__call__` is bypassed.
        """
        return self.call(score_model, initial_state, seed=seed,
                         return_trajectory=return_trajectory, sde=sde)

    def get_config(self):
        return {**super().get_config(), "eps": self.eps, "jit_compile": self.jit_compile}

    @staticmethod
    def _seed(seed):
        return tf.constant(sanitize_seed(seed, SEED_SALT), tf.int64)

    def _initial_state(self, target: _Target, initial_state, seed):
        """x_T [n, d]: given, or `n` prior samples (an int) drawn with the seed's own stream."""
        check_time_interval(self.eps, target.sde.T)
        if isinstance(initial_state, numbers.Integral) and not isinstance(initial_state, bool):
            check_positive(int(initial_state), "num_samples", integer=True)
            if target.input_dim is None:
                raise ValueError("Pass initial states [n, d]: the score model's dimension is "
                                 "unknown.")
            prior_seed = tf.random.experimental.stateless_fold_in(seed, -1)
            x = target.sde.prior_sampling([int(initial_state), target.input_dim], prior_seed,
                                          dtype=target.dtype)
            return x.numpy()
        return check_data(initial_state, name="initial_state", n_features=target.input_dim,
                          owner="the score model", dtype=target.dtype.as_numpy_dtype)

    def _prepare(self, score_model, initial_state, seed, sde):
        """(resolved target, seed [2], validated x_T) of a call."""
        target = _Target(score_model, sde)
        seed = self._seed(seed)
        x0 = self._initial_state(target, initial_state, seed)
        if target.input_dim is None:
            target.input_dim = x0.shape[1]
        return target, seed, x0

    def _settings(self) -> tuple:
        """The hyper-parameters a compiled loop depends on (hashable)."""
        return tuple((k, v) for k, v in self.get_config().items()
                     if isinstance(v, (int, float, bool, str)) and k not in ("name",
                                                                           "trainable"))

    def _compiled(self, target: _Target, key, build):
        """Cached tf.function for (this sampler's settings, target, key)."""
        return compiled_function(target.owner, (self._kind, self._settings(), key), build,
                                 companions=(target.sde,))


@keras.saving.register_keras_serializable(package="dde")
class ReverseDiffusionSampler(_ScoreSamplerBase):
    """Reverse-time SDE sampler (Euler–Maruyama predictor, optional Langevin corrector).

    num_steps: predictor steps from T to eps. corrector_steps: Langevin corrector steps per
    time (0: none). snr: the corrector's signal-to-noise ratio. eps: T_ε, the final time.
    denoise: the last step adds no noise. thin: keep every thin-th state in the trajectory.
    jit_compile: compile the loop with XLA.

    `sampler(score_model, n or x_T [n, d], seed=None, return_trajectory=False, sde=None)` →
    `ScoreSamplerResults`.
    """

    _kind = "reverse_sde"

    def __init__(self, num_steps: int = 1000, corrector_steps: int = 0, snr: float = 0.16,
                 eps: float = 1e-3, denoise: bool = True, thin: int = 1,
                 jit_compile: bool = False, **kwargs):
        super().__init__(eps=eps, jit_compile=jit_compile, **kwargs)
        self.num_steps = int(check_positive(num_steps, "num_steps", integer=True))
        self.corrector_steps = int(check_positive(corrector_steps, "corrector_steps",
                                                  integer=True, allow_zero=True))
        self.snr = float(check_positive(snr, "snr"))
        self.denoise = bool(denoise)
        self.thin = int(check_positive(thin, "thin", integer=True))
        if self.thin > self.num_steps:
            raise ValueError(f"thin ({self.thin}) is larger than num_steps ({self.num_steps}).")

    def get_config(self):
        return {**super().get_config(), "num_steps": self.num_steps,
                "corrector_steps": self.corrector_steps, "snr": self.snr,
                "denoise": self.denoise, "thin": self.thin}

    def _build(self, target: _Target, record: bool):
        sde, n_steps, n_corr = target.sde, self.num_steps, self.corrector_steps
        T, eps = sde.T, self.eps
        dt = (T - eps) / n_steps
        num_saved = n_steps // self.thin + 1
        snr, thin, denoise = self.snr, self.thin, self.denoise

        def corrector(x, t, seed):
            alpha_now, _ = sde.marginal_coefficients(t)
            alpha_prev, _ = sde.marginal_coefficients(tf.maximum(t - dt, 0.0))
            a = tf.square(alpha_now / alpha_prev)
            for k in range(n_corr):
                s = target.score(x, t)
                noise = tf.random.stateless_normal(
                    tf.shape(x), tf.random.experimental.stateless_fold_in(seed, k),
                    dtype=x.dtype)
                # Norms averaged over the batch (per-sample norms are too noisy in low d).
                grad_norm = tf.reduce_mean(tf.norm(s, axis=-1))
                noise_norm = tf.reduce_mean(tf.norm(noise, axis=-1))
                step = 2.0 * a * tf.square(snr * noise_norm / tf.maximum(grad_norm, 1e-12))
                x = x + step * s + tf.sqrt(2.0 * step) * noise
            return x

        def run(x0, seed):
            x = x0
            ta = tf.TensorArray(x0.dtype, size=num_saved if record else 0,
                                element_shape=x0.shape)
            if record:
                ta = ta.write(0, x0)

            def body(i, x, ta):
                t = tf.cast(T - tf.cast(i, tf.float64) * dt, x.dtype)
                step_seed = tf.random.experimental.stateless_fold_in(seed, tf.cast(i, tf.int64))
                corr_seed, pred_seed = tf.unstack(
                    tf.random.experimental.stateless_split(step_seed, 2))
                if n_corr:
                    x = corrector(x, t, corr_seed)
                drift, g = sde.sde(x, t)
                s = target.score(x, t)
                g = tf.cast(g, x.dtype)
                x_mean = x - (drift - as_column(tf.square(g)) * s) * dt
                noise = tf.random.stateless_normal(tf.shape(x), pred_seed, dtype=x.dtype)
                x_new = x_mean + as_column(g) * tf.cast(np.sqrt(dt), x.dtype) * noise
                if denoise:
                    x_new = tf.where(tf.equal(i, n_steps - 1), x_mean, x_new)
                if record:
                    ta = tf.cond(tf.equal((i + 1) % thin, 0),
                                 lambda: ta.write((i + 1) // thin, x_new), lambda: ta)
                return i + 1, x_new, ta

            _, x, ta = tf.while_loop(lambda i, *_: i < n_steps, body,
                                     (tf.constant(0, tf.int32), x, ta),
                                     maximum_iterations=n_steps)
            return x, (ta.stack() if record else tf.zeros([0], x0.dtype))

        spec = [tf.TensorSpec([None, target.input_dim], target.dtype),
                tf.TensorSpec([2], tf.int64)]
        return tf.function(run, input_signature=spec, jit_compile=self.jit_compile,
                           autograph=False)

    def call(self, score_model, initial_state, seed=None, return_trajectory=False, sde=None):
        """Sample: see the class docstring."""
        target, seed, x0 = self._prepare(score_model, initial_state, seed, sde)
        fn = self._compiled(target, (x0.shape[1], bool(return_trajectory)),
                            lambda: self._build(target, bool(return_trajectory)))
        x, traj = fn(tf.constant(x0), seed)
        times = None
        traj = traj.numpy() if return_trajectory else None
        if return_trajectory:
            dt = (target.sde.T - self.eps) / self.num_steps
            times = target.sde.T - dt * self.thin * np.arange(traj.shape[0])
        nfe = self.num_steps * (1 + self.corrector_steps)
        return ScoreSamplerResults(x.numpy(), traj, times, nfe)


@keras.saving.register_keras_serializable(package="dde")
class ProbabilityFlowSampler(_ScoreSamplerBase):
    """Probability-flow ODE sampler: integrate dx/dt = f − ½g²s from T down to eps with
    Dormand–Prince (rtol, atol) in one tf.function.

    num_saved: trajectory length with `return_trajectory=True` (equally spaced times from T to
    eps, both included). max_num_steps: step budget (exceeding it raises `ODESolverError`).
    jit_compile: compile the solve with XLA.
    """

    _kind = "probability_flow"

    def __init__(self, rtol: float = 1e-5, atol: float = 1e-5, eps: float = 1e-3,
                 num_saved: int = 101, max_num_steps: int = 10_000, jit_compile: bool = False,
                 **kwargs):
        super().__init__(eps=eps, jit_compile=jit_compile, **kwargs)
        self.rtol = float(check_positive(rtol, "rtol"))
        self.atol = float(check_positive(atol, "atol"))
        self.num_saved = int(check_positive(num_saved, "num_saved", integer=True))
        if self.num_saved < 2:
            raise ValueError(f"num_saved must be ≥ 2 (T and eps), got {self.num_saved}.")
        self.max_num_steps = int(check_positive(max_num_steps, "max_num_steps", integer=True))

    def get_config(self):
        return {**super().get_config(), "rtol": self.rtol, "atol": self.atol,
                "num_saved": self.num_saved, "max_num_steps": self.max_num_steps}

    def _build(self, target: _Target, record: bool):
        sde = target.sde
        T, eps = sde.T, self.eps
        # Recording many times: TFP's dense output gives them without stepping onto each.
        solver = GuardedSolver(self.rtol, self.atol, self.max_num_steps, tf.float64,
                               method="tfp" if record else "dopri5")
        # Integrate in r = −log t (increasing) from −log T to −log eps: dx/dr = −t f̃(x, t).
        # With TFP's solver the last step may end past its final time (the output is
        # interpolated); in r every such point is still a valid time t = e^{−r} > 0.
        if record:
            r_times = -np.log(np.linspace(T, eps, self.num_saved))
        else:
            r_times = np.array([-np.log(eps)])

        def ode_fn(r, x):
            t = tf.exp(-r)
            xf = tf.cast(x, target.dtype)
            tc = tf.cast(t, target.dtype)
            s = target.score(xf, tc)
            return -t * tf.cast(sde.probability_flow_drift(xf, tc, s), tf.float64)

        def run(x0):
            return solver.solve(ode_fn, tf.constant(-np.log(T), tf.float64),
                                tf.cast(x0, tf.float64), tf.constant(r_times, tf.float64))

        spec = [tf.TensorSpec([None, target.input_dim], target.dtype)]
        fn = tf.function(run, input_signature=spec, jit_compile=self.jit_compile)
        return fn, solver

    def call(self, score_model, initial_state, seed=None, return_trajectory=False, sde=None):
        """Sample: see the class docstring (the seed only draws the prior samples)."""
        target, seed, x0 = self._prepare(score_model, initial_state, seed, sde)
        fn, solver = self._compiled(target, (x0.shape[1], bool(return_trajectory)),
                                    lambda: self._build(target, bool(return_trajectory)))
        solution = fn(tf.constant(x0))
        solver.check(solution, self.eps, "The probability-flow sampling ODE solve",
                     to_time=lambda r: float(np.exp(-r)))
        states, nfe = solution.states.numpy(), solution.num_function_evaluations
        if not np.isfinite(states).all():
            raise ODESolverError("The probability-flow sampler returned non-finite values.",
                                 self.eps, ODEStatus.NONFINITE)
        states = states.astype(target.dtype.as_numpy_dtype)
        traj = times = None
        if return_trajectory:
            traj = np.concatenate([x0[None], states[1:]], axis=0)
            times = np.linspace(target.sde.T, self.eps, self.num_saved)
        return ScoreSamplerResults(states[-1], traj, times, int(nfe.numpy()))
