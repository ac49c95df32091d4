"""Langevin samplers for energy models: unadjusted (ULA), Metropolis-adjusted (MALA) and
annealed Langevin dynamics, as serializable Keras layers.

Step-size convention (all samplers here): one Langevin step with step size `h` is

    x ← x + h ∇f(x) + sqrt(2h) ξ,      ξ ~ N(0, I),

so `h` is half the variance of the injected noise (the lecture-notes convention). TFP's
`tfp.mcmc.MetropolisAdjustedLangevinAlgorithm(step_size=ε)` proposes `x + ½ε∇f + sqrt(ε)ξ`: its
step size is the noise variance, `ε = 2h`. `MALASampler(step_size=h)` therefore makes the same
proposals as TFP's kernel with `step_size=2*h` (the test suite checks this).

* `LangevinSampler` — ULA. Biased: on N(0, 1) its stationary variance is 1/(1 − h/2).
* `MALASampler` — the ULA proposal plus a Metropolis–Hastings accept step,

      log α = f(y) − f(x) + log q(x|y) − log q(y|x),   q(y|x) = N(y; x + h∇f(x), 2h I),

  exact for the target exp f; needs the log-density itself (a DDE has one, a bare score
  network does not). Optional dual-averaging adaptation of h towards a target acceptance
  probability during burn-in (Hoffman & Gelman 2014, TFP's defaults); burn-in is discarded.
* `AnnealedLangevinSampler` — Song & Ermon (2019): noise levels σ₁ > … > σ_L, K ULA steps at
  each level with `h_i = h·σ_i²/σ_L²` on the score of the data smoothed by N(0, σ_i²I).

Usage: a sampler holds only its hyper-parameters (`get_config`); the target is passed at call
time, `results = LangevinSampler(step_size=1e-3, num_steps=500)(model, x0, seed=0)`. Targets:
an energy model (`dde.protocols.EnergyModelLike`, e.g. a DDE: `f` and `∇f` at its σ), a
`LogDensity` wrapper of tensor functions
(`log_prob_fn(x) → [batch]`, optional exact `score_fn(x) → [batch, d]`), or any callable
`log_prob_fn`. The annealed sampler takes a `NoiseConditionalDDE`, a list of DDEs trained at
decreasing σ, or `score_fn(x, sigma)`.

The samplers are drivers over the transition kernels of `dde.mcmc` (ULA and MALA there,
written once, with the one step-size adaptation). The loop runs in one `tf.function`
(`tf.while_loop`), traced once per target, dimension, dtype and output structure (cached by
`dde._cache`): chain count, step size, step counts and seed are tensor arguments, so calling
again with other values does not retrace. Calls are eager (post-processing is NumPy).
Randomness is stateless: the same seed gives the same samples.

`model.sample(method=...)` takes its samplers from the registry `SAMPLERS` (name →
`SamplerRecipe`), which also gives `dde sample --method` its choices: a new sampler is one
class plus one registry line.

Results (`SamplerResults`, NumPy): `samples` [n_ok, d], the final states of the chains that
stayed finite; `trajectory` [num_steps // thin, n_ok, d] (state after steps thin, 2·thin, …;
MALA: after burn-in) or None; `acceptance_rate` (MALA; None otherwise); `num_diverged`, chains
whose state became NaN/inf — they are dropped with a `RuntimeWarning` (or an error with
`on_divergence="raise"`; an error always when every chain diverged); `step_size`, the h used
(MALA: after adaptation; annealed: h at σ_L).
"""
from __future__ import annotations

import collections
import warnings

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

import dde.mcmc as mcmc
import dde.partition as partition
import dde.smc as smc
from dde._cache import cached_functions, compiled_function, weak
from dde._registry import Registry
from dde._validation import check_data, check_positive, sanitize_seed
from dde.progress import progress_bar
from dde.protocols import EnergyModelLike, NoiseConditionalLike, input_dim_of

SamplerResults = collections.namedtuple(
    "SamplerResults", ["samples", "trajectory", "acceptance_rate", "num_diverged",
                       "step_size", "diagnostics"], defaults=(None,))
SamplerResults.__doc__ = """Output of a Langevin sampler (NumPy arrays).

samples: [n_ok, d] final states of the chains that stayed finite.
trajectory: [num_steps // thin, n_ok, d] saved states (after steps thin, 2·thin, …), or None.
acceptance_rate: fraction of accepted MALA proposals after burn-in (None for ULA / annealed).
num_diverged: number of chains dropped because their state became NaN or infinite.
step_size: the step size h (MALA: after adaptation; annealed: at the smallest noise level).
diagnostics: a dict of further details, or None: "init" (how `model.sample` drew the starting
    points: method, and for SMC log Ẑ, temperatures, ESS), with a trajectory of ≥ 4 states
    "ess" / "rhat" [d] and "min_ess" / "max_rhat" (`chain_diagnostics`), for annealed
    sampling with refinement "refine_step_size".
"""

#: The salt of the samplers' seed stream (see `dde._validation.sanitize_seed`).
SEED_SALT = 0x5EED


# ------------------------------------------------------------------------------- targets
class LogDensity:
    """An explicit target density for the samplers: tensor-level functions of x [batch, d].

    log_prob_fn(x) → [batch] (or [batch, 1]): un-normalized log-density (needed by MALA).
    score_fn(x) → [batch, d]: its gradient; if omitted, computed by automatic differentiation.
    input_dim: the dimension d, checked against initial states (None: any).
    dtype: the floating dtype the chains run in.

    Example: the standard normal, `LogDensity(lambda x: -0.5 * tf.reduce_sum(x**2, -1),
    score_fn=lambda x: -x)`.
    """

    def __init__(self, log_prob_fn=None, score_fn=None, input_dim: int | None = None,
                 dtype="float32"):
        if log_prob_fn is None and score_fn is None:
            raise ValueError("LogDensity needs log_prob_fn, score_fn or both.")
        for name, fn in (("log_prob_fn", log_prob_fn), ("score_fn", score_fn)):
            if fn is not None and not callable(fn):
                raise TypeError(f"{name} must be callable, got {type(fn).__name__}.")
        if input_dim is not None:
            check_positive(input_dim, "input_dim", integer=True)
        self.log_prob_fn = log_prob_fn
        self.score_fn = score_fn
        self.input_dim = input_dim
        self.dtype = tf.as_dtype(dtype)
        if not self.dtype.is_floating:
            raise TypeError(f"dtype must be a floating dtype, got {self.dtype.name}.")


class _Target:
    """Normalized view of a target. Holds the user's objects weakly (compiled loops are cached
    per target object, and the cache must not keep models alive)."""

    def __init__(self, objects, input_dim, dtype, name, has_log_prob, log_prob_and_score=None,
                 score_at_level=None, noise_levels=None, log_prob_at_level=None):
        self.objects = objects
        self.input_dim = input_dim
        self.dtype = tf.as_dtype(dtype)
        self.name = name
        self.has_log_prob = has_log_prob
        self.log_prob_and_score = log_prob_and_score  # x → (f [b], ∇f [b, d])
        self.score_at_level = score_at_level  # (x, level index, sigma) → [b, d]
        self.noise_levels = noise_levels  # default noise levels (annealed), or None
        # (x, level index, sigma) → (f [b], ∇f [b, d]) of an annealed target with a density
        self.log_prob_at_level = log_prob_at_level

    def ensure_built(self, d):
        for obj in self.objects:
            if isinstance(obj, EnergyModelLike):
                obj.ensure_built(d)


def _model_dim(model):
    return input_dim_of(model) if getattr(model, "built", False) else None


def _check_score_shape(g, x):
    g = tf.convert_to_tensor(g)
    if g.shape.rank != 2 or (g.shape[-1] is not None and g.shape[-1] != x.shape[-1]):
        raise ValueError(f"The score must have shape [batch, d] = {x.shape}; got {g.shape}.")
    return tf.cast(g, x.dtype)


def _autodiff(log_prob_fn):
    def log_prob_and_score(x):
        ev = mcmc.autodiff_target(log_prob_fn)(x)
        return ev.log_prob, ev.grad
    return log_prob_and_score


def _as_target(obj) -> _Target:
    """Target of ULA / MALA: an energy model, a LogDensity or a callable log_prob_fn."""
    get = weak(obj)
    if isinstance(obj, EnergyModelLike):
        return _Target([obj], _model_dim(obj), obj.compute_dtype, type(obj).__name__, True,
                       log_prob_and_score=lambda x: get().log_density_and_score(x))
    if isinstance(obj, LogDensity):
        def lps(x):
            t = get()
            if t.log_prob_fn is None:
                return tf.zeros(tf.shape(x)[:1], x.dtype), _check_score_shape(t.score_fn(x), x)
            if t.score_fn is None:
                return _autodiff(t.log_prob_fn)(x)
            return (tf.cast(mcmc.flat_log_prob(t.log_prob_fn(x)), x.dtype),
                    _check_score_shape(t.score_fn(x), x))
        return _Target([obj], obj.input_dim, obj.dtype, "the target density",
                       obj.log_prob_fn is not None, log_prob_and_score=lps)
    if isinstance(obj, (list, tuple)):
        raise TypeError("A list of models is a target for AnnealedLangevinSampler only; ULA and "
                        "MALA sample one energy model.")
    if callable(obj):
        dim = _model_dim(obj) if isinstance(obj, keras.Model) else None
        dtype = obj.compute_dtype if isinstance(obj, keras.layers.Layer) else "float32"
        return _Target([obj], dim, dtype, "the target density", True,
                       log_prob_and_score=lambda x: _autodiff(get())(x))
    raise TypeError(
        f"The target must be an energy model (e.g. a DenoisingDensityEstimator), a LogDensity "
        f"or a callable log_prob_fn(x); got {type(obj).__name__}.")


def _as_noise_target(obj) -> _Target:
    """Target of annealed Langevin: a NoiseConditionalDDE, a list of DDEs (decreasing σ) or a
    callable score_fn(x, sigma)."""
    if isinstance(obj, NoiseConditionalLike):
        get = weak(obj)

        def log_prob_and_score(x, level, sigma):
            return get().log_density_and_score(x, noise_std=sigma)

        def score(x, level, sigma):
            return log_prob_and_score(x, level, sigma)[1]
        return _Target([obj], _model_dim(obj), obj.compute_dtype, "NoiseConditionalDDE", False,
                       score_at_level=score, log_prob_at_level=log_prob_and_score)
    if isinstance(obj, (list, tuple)):
        models = list(obj)
        if not models:
            raise ValueError("The list of models is empty.")
        for m in models:
            if not isinstance(m, EnergyModelLike) or isinstance(m, NoiseConditionalLike):
                raise TypeError("A list target must hold DenoisingDensityEstimators (one per "
                                f"noise level); got {type(m).__name__}.")
        sigmas = np.array([m.resolve_noise_std(None) for m in models])
        if len(models) > 1 and not np.all(np.diff(sigmas) < 0):
            raise ValueError(f"The models must be ordered by strictly decreasing noise_std "
                             f"(σ₁ > … > σ_L); got {sigmas.tolist()}.")
        dims = {_model_dim(m) for m in models} - {None}
        if len(dims) > 1:
            raise ValueError(f"The models have different input dimensions {sorted(dims)}.")
        dtypes = {m.compute_dtype for m in models}
        if len(dtypes) > 1:
            raise TypeError(f"The models have different dtypes {sorted(dtypes)}.")
        getters = [weak(m) for m in models]

        def log_prob_and_score(x, level, sigma):
            branches = [(lambda g=g: g().log_density_and_score(x)) for g in getters]
            return tf.switch_case(level, branches)

        def score(x, level, sigma):
            return log_prob_and_score(x, level, sigma)[1]
        return _Target(models, dims.pop() if dims else None, models[0].compute_dtype,
                       "the models", False, score_at_level=score, noise_levels=sigmas,
                       log_prob_at_level=log_prob_and_score)
    if isinstance(obj, EnergyModelLike):
        raise TypeError(
            f"Annealed Langevin needs the score at every noise level: pass a "
            f"NoiseConditionalDDE, a list of DDEs ordered by decreasing noise_std, or "
            f"score_fn(x, sigma); got a single {type(obj).__name__}.")
    if callable(obj):
        get = weak(obj)

        def score(x, level, sigma):
            return _check_score_shape(get()(x, sigma), x)
        dtype = obj.compute_dtype if isinstance(obj, keras.layers.Layer) else "float32"
        return _Target([obj], None, dtype, "score_fn", False, score_at_level=score)
    raise TypeError(f"The target must be a NoiseConditionalDDE, a list of DDEs or a callable "
                    f"score_fn(x, sigma); got {type(obj).__name__}.")


# --------------------------------------------------------------------- compiled-loop cache
def _cached_function(target: _Target, key, build):
    """The compiled loop for `target` and `key` (cached per target object: `dde._cache`),
    built by `build()` → (fn, holder) if absent."""
    return compiled_function(target.objects[0], key, build, companions=target.objects[1:])


def _tracing_count(sampler, target, d, record=False, progress=False) -> int:
    """Number of traces of the compiled loop of `sampler` for `target` (for tests)."""
    t = sampler._resolve(target)
    key = sampler._structure_key(t, d, record, progress)
    entry = cached_functions(t.objects[0]).get(key)
    return 0 if entry is None else entry[0].experimental_get_tracing_count()


# ---------------------------------------------------------------------- chain diagnostics
def chain_diagnostics(trajectory) -> dict:
    """Convergence diagnostics of a trajectory [T, chains, d] (chains independent), from
    `tfp.mcmc`: "ess" [d], the effective sample size of each coordinate over all chains
    (`effective_sample_size` with cross-chain R̂ correction), and "rhat" [d], the split
    potential scale reduction (`potential_scale_reduction(split_chains=True)`; values above
    about 1.01 mean the chains have not mixed); "max_rhat" and "min_ess" summarize them."""
    traj = tf.constant(np.asarray(trajectory, np.float64))
    ess = tfp.mcmc.effective_sample_size(traj, cross_chain_dims=1).numpy()
    rhat = tfp.mcmc.potential_scale_reduction(traj, independent_chain_ndims=1,
                                              split_chains=True).numpy()
    return {"ess": ess, "rhat": rhat, "min_ess": float(np.min(ess)),
            "max_rhat": float(np.max(rhat))}


# ---------------------------------------------------------------------------- the loops
def _step_seed(seed, step):
    return tf.random.experimental.stateless_fold_in(seed, tf.cast(step, tf.int64))


_all_finite = mcmc.all_finite


def _run_loop(step_fn, state, start, num_steps, *, record, thin, num_saved, progress):
    """`state = step_fn(i, state)` for i in [start, start + num_steps) in a tf.while_loop.

    state[0] is x [chains, d]; with `record`, x after every thin-th step goes to a
    TensorArray [num_saved, chains, d]. `progress(i)` (or None) is called every step.
    Returns (final state, stacked trajectory or None).
    """
    x = state[0]
    ta = tf.TensorArray(x.dtype, size=num_saved if record else 0, element_shape=x.shape)

    def body(j, state, ta):
        state = step_fn(start + j, state)
        if record:
            k = (j + 1) // thin - 1
            ta = tf.cond(tf.equal((j + 1) % thin, 0), lambda: ta.write(k, state[0]),
                         lambda: ta)
        if progress is not None:
            progress(start + j)
        return j + 1, state, ta

    _, state, ta = tf.while_loop(lambda j, *_: j < num_steps, body,
                                 (tf.constant(0, tf.int32), state, ta),
                                 maximum_iterations=num_steps)
    return state, (ta.stack() if record else None)


def _compile(run, spec, jit_compile):
    """tf.function of a sampler loop with a fixed input signature (no retracing per call)."""
    fn = tf.function(run, input_signature=spec, jit_compile=jit_compile, autograph=False)
    # One loop is traced per target object (by design); TensorFlow would count the traces of
    # the same code for different models as "frequent retracing" and warn. Private flag; if
    # it disappears, only that warning returns.
    fn._omit_frequent_tracing_warning = True
    return fn


def _make_progress(holder, total_steps, every):
    """In-graph callback: every `every` steps (and at step total_steps − 1) update the keras
    Progbar stored in holder['bar'] (a Python object, set before each call)."""
    def update(i):
        bar = holder.get("bar")
        if bar is not None:
            bar.update(int(i) + 1)
        return np.int32(0)

    def hook(i):
        due = tf.logical_or(tf.equal((i + 1) % every, 0), tf.equal(i + 1, total_steps))
        return tf.cond(due, lambda: tf.py_function(update, [i], tf.int32),
                       lambda: tf.constant(0, tf.int32))
    return hook


def _mala_chain(log_prob_and_score, x0, seed, h0, num_burnin, num_steps, *, adapt,
                target_accept, record, thin, hook, start=0):
    """MALA from x0: `num_burnin` steps (h adapted by dual averaging towards
    `target_accept` when `adapt`), then `num_steps` kept steps at the final h. Step seeds
    count from `start` (so that phases of one run draw distinct noise); the trajectory holds
    every thin-th kept state. Returns (x, kernel results, diverged, accepted counts [chains],
    h, trajectory or None)."""
    kernel = mcmc.LangevinKernel(mcmc.score_target(log_prob_and_score), h0, metropolize=True)
    results = kernel.bootstrap_results(x0)
    diverged0 = ~(_all_finite(x0) & tf.math.is_finite(results.target_log_prob)
                  & _all_finite(results.grad))
    burnin = (mcmc.StepSizeAdaptation(kernel, target_accept, rule="dual_averaging")
              if adapt else kernel)

    def burn_step(i, state):
        x, results, diverged = state
        x, results = burnin.one_step(x, results, _step_seed(seed, i))
        return x, results, diverged | ~_all_finite(x)

    state = (x0, burnin.bootstrap_results(x0) if adapt else results, diverged0)
    (x, results, diverged), _ = _run_loop(burn_step, state, start, num_burnin, record=False,
                                          thin=thin, num_saved=0, progress=hook)
    h = burnin.averaged_step_size(results) if adapt else h0
    h = tf.where(num_burnin > 0, h, h0)
    results = mcmc.inner_results(results)._replace(step_size=h)

    def main_step(i, state):
        x, results, diverged, n_acc = state
        x, results = kernel.one_step(x, results, _step_seed(seed, i))
        return (x, results, diverged | ~_all_finite(x),
                n_acc + tf.cast(results.is_accepted, tf.int32))

    state = (x, results, diverged, tf.zeros(tf.shape(x0)[:1], tf.int32))
    (x, results, diverged, n_acc), traj = _run_loop(
        main_step, state, start + num_burnin, num_steps, record=record, thin=thin,
        num_saved=num_steps // thin, progress=hook)
    return x, results, diverged, n_acc, h, traj


# ------------------------------------------------------------------------------ layers
class _LangevinBase(keras.layers.Layer):
    """Shared machinery: validation, seeds, compiled-loop cache, divergence handling."""

    _kind = "base"

    def __init__(self, step_size, thin: int = 1, on_divergence: str = "warn",
                 jit_compile: bool = False, **kwargs):
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        self.built = True  # no weights
        if step_size is not None:
            check_positive(step_size, "step_size")
        self.step_size = None if step_size is None else float(step_size)
        self.thin = int(check_positive(thin, "thin", integer=True))
        if on_divergence not in ("warn", "raise"):
            raise ValueError(f"on_divergence must be 'warn' or 'raise', got {on_divergence!r}.")
        self.on_divergence = on_divergence
        if not isinstance(jit_compile, bool):
            raise TypeError(f"jit_compile must be a bool, got {jit_compile!r}.")
        self.jit_compile = jit_compile

    def __call__(self, target, initial_state, seed=None, return_trajectory=False,
                 progress=False):
        """Run the chains (eagerly; the loop itself is compiled): see `call`.

        The target is a Python object, not a tensor, and the call is never symbolic, so the
        tensor bookkeeping of `keras.layers.Layer.__call__` is bypassed.
        """
        return self.call(target, initial_state, seed=seed,
                         return_trajectory=return_trajectory, progress=progress)

    def get_config(self):
        return {**super().get_config(), "step_size": self.step_size, "thin": self.thin,
                "on_divergence": self.on_divergence, "jit_compile": self.jit_compile}

    # hooks
    def _resolve(self, target) -> _Target:
        return _as_target(target)

    def _structure_key(self, target, d, record, progress):
        return (self._kind, int(d), target.dtype.name, bool(record), bool(progress),
                self.jit_compile and not progress)

    # helpers
    def _initial_state(self, target: _Target, initial_state):
        x = check_data(initial_state, name="initial_state", n_features=target.input_dim,
                       owner=target.name, dtype=target.dtype.as_numpy_dtype)
        target.ensure_built(x.shape[1])
        return x

    @staticmethod
    def _seed(seed):
        return tf.constant(sanitize_seed(seed, SEED_SALT), tf.int64)

    def _compiled(self, target, d, record, progress, build_body):
        """(tf.function, progress holder) for this structure, from the cache or built by
        build_body(target, d, record, holder or None)."""
        key = self._structure_key(target, d, record, progress)

        def build():
            holder = {}
            fn = build_body(target, d, record, holder if progress else None)
            return fn, holder
        return _cached_function(target, key, build)

    def _prepare(self, target, initial_state, num_steps, record, progress):
        """(resolved target, validated x0, compiled loop, progress holder) of a call."""
        t = self._resolve(target)
        x0 = self._initial_state(t, initial_state)
        self._num_saved(num_steps, record)
        fn, holder = self._compiled(t, x0.shape[1], record, progress, self._build)
        return t, x0, fn, holder

    def _num_saved(self, num_steps, record):
        if not record:
            return 0
        saved = num_steps // self.thin
        if saved < 1:
            raise ValueError(f"thin ({self.thin}) is larger than the number of steps "
                             f"({num_steps}): no state would be saved.")
        return saved

    @staticmethod
    def _run_with_progress(fn, holder, total, progress, *args):
        if progress:
            holder["bar"] = progress_bar(total, "step", progress)
        try:
            return fn(*args)
        finally:
            holder.pop("bar", None)

    def _finish(self, x, diverged, trajectory, acceptance_rate, step_size, diagnostics=None):
        x = x.numpy()
        diverged = diverged.numpy() | ~np.isfinite(x).all(axis=1)
        n_bad = int(diverged.sum())
        if trajectory is not None:
            trajectory = trajectory.numpy()
        if n_bad:
            message = (f"{n_bad} of {len(x)} chains diverged (their state became NaN or "
                       f"infinite); reduce the step size (h = {step_size:.3g}).")
            if n_bad == len(x):
                raise RuntimeError("All chains diverged: " + message)
            if self.on_divergence == "raise":
                raise RuntimeError(message)
            warnings.warn(message + " They were dropped from the results.", RuntimeWarning,
                          stacklevel=4)
            x = x[~diverged]
            if trajectory is not None:
                trajectory = trajectory[:, ~diverged]
        if trajectory is not None and trajectory.shape[0] >= 4 and trajectory.shape[1] >= 2:
            diagnostics = {**(diagnostics or {}), **chain_diagnostics(trajectory)}
        return SamplerResults(samples=x, trajectory=trajectory, acceptance_rate=acceptance_rate,
                              num_diverged=n_bad, step_size=float(step_size),
                              diagnostics=diagnostics)

    def _dtype_scalar(self, value, target):
        return tf.constant(value, target.dtype)


@keras.saving.register_keras_serializable(package="dde")
class LangevinSampler(_LangevinBase):
    """Unadjusted Langevin algorithm (ULA): `x ← x + h∇f(x) + sqrt(2h)ξ`, num_steps steps.

    step_size: h > 0. num_steps: steps per call. thin: keep every thin-th state in the
    trajectory. on_divergence: 'warn' (drop NaN/inf chains with a warning) or 'raise'.
    jit_compile: compile the loop with XLA.

    `sampler(target, initial_state [chains, d], seed=None, return_trajectory=False,
    progress=False)` → `SamplerResults` (samples [chains, d]; trajectory
    [num_steps // thin, chains, d]). ULA is biased: its stationary law on N(μ, s²) has
    variance s²/(1 − h/(2s²)); the bias vanishes as h → 0.
    """

    _kind = "ula"

    def __init__(self, step_size: float = 1e-3, num_steps: int = 1000, thin: int = 1,
                 on_divergence: str = "warn", jit_compile: bool = False, **kwargs):
        super().__init__(step_size, thin=thin, on_divergence=on_divergence,
                         jit_compile=jit_compile, **kwargs)
        if step_size is None:
            raise ValueError("step_size must be finite and > 0, got None.")
        self.num_steps = int(check_positive(num_steps, "num_steps", integer=True))

    def get_config(self):
        return {**super().get_config(), "num_steps": self.num_steps}

    def _build(self, target, d, record, holder):
        # The loop must not reference `target` (it holds the models strongly): only the
        # weakly bound functions.
        log_prob_and_score = target.log_prob_and_score
        spec = [tf.TensorSpec([None, d], target.dtype), tf.TensorSpec([2], tf.int64),
                tf.TensorSpec([], target.dtype), tf.TensorSpec([], tf.int32),
                tf.TensorSpec([], tf.int32)]

        def run(x0, seed, h, num_steps, thin):
            hook = None if holder is None else _make_progress(holder, num_steps,
                                                              tf.maximum(num_steps // 100, 1))
            kernel = mcmc.LangevinKernel(mcmc.score_target(log_prob_and_score), h)

            def step(i, state):
                x, results, diverged = state
                x, results = kernel.one_step(x, results, _step_seed(seed, i))
                return x, results, diverged | ~_all_finite(x)

            init = (x0, kernel.bootstrap_results(x0), tf.zeros(tf.shape(x0)[:1], tf.bool))
            (x, _, diverged), traj = _run_loop(step, init, 0, num_steps, record=record,
                                               thin=thin, num_saved=num_steps // thin,
                                               progress=hook)
            return x, diverged, traj
        return _compile(run, spec, self.jit_compile and holder is None)

    def call(self, target, initial_state, seed=None, return_trajectory=False, progress=False):
        t, x0, fn, holder = self._prepare(target, initial_state, self.num_steps,
                                          return_trajectory, progress)
        x, diverged, traj = self._run_with_progress(
            fn, holder, self.num_steps, progress, tf.constant(x0), self._seed(seed),
            self._dtype_scalar(self.step_size, t), tf.constant(self.num_steps, tf.int32),
            tf.constant(self.thin, tf.int32))
        return self._finish(x, diverged, traj, None, self.step_size)


@keras.saving.register_keras_serializable(package="dde")
class MALASampler(_LangevinBase):
    """Metropolis-adjusted Langevin algorithm: ULA proposals `y = x + h∇f(x) + sqrt(2h)ξ`
    accepted with probability min(1, α),

        log α = f(y) − f(x) − ‖x − y − h∇f(y)‖²/(4h) + ‖y − x − h∇f(x)‖²/(4h),

    so exp f is the exact stationary law. Proposals with a non-finite f, ∇f or y are rejected.
    This is TFP's `MetropolisAdjustedLangevinAlgorithm(step_size=2h)`.

    step_size: h > 0 (the initial value if adapted). num_steps: kept steps per chain after
    burn-in. num_burnin_steps: discarded steps before them; with adapt_step_size, h is tuned
    during burn-in by dual averaging of log h towards a mean acceptance probability of
    target_accept_prob (0.574, optimal for MALA in high dimension), one h shared by all chains.
    thin, on_divergence, jit_compile: as for `LangevinSampler`.

    `sampler(target, initial_state [chains, d], seed=None, return_trajectory=False,
    progress=False)` → `SamplerResults` with the acceptance rate (fraction of accepted
    proposals over kept steps and chains) and the final h; trajectory
    [num_steps // thin, chains, d] after burn-in.
    """

    _kind = "mala"

    def __init__(self, step_size: float = 1e-3, num_steps: int = 1000,
                 num_burnin_steps: int = 500, adapt_step_size: bool = True,
                 target_accept_prob: float = 0.574, thin: int = 1, on_divergence: str = "warn",
                 jit_compile: bool = False, **kwargs):
        super().__init__(step_size, thin=thin, on_divergence=on_divergence,
                         jit_compile=jit_compile, **kwargs)
        if step_size is None:
            raise ValueError("step_size must be finite and > 0, got None.")
        self.num_steps = int(check_positive(num_steps, "num_steps", integer=True))
        self.num_burnin_steps = int(check_positive(num_burnin_steps, "num_burnin_steps",
                                                   integer=True, allow_zero=True))
        if not isinstance(adapt_step_size, bool):
            raise TypeError(f"adapt_step_size must be a bool, got {adapt_step_size!r}.")
        self.adapt_step_size = adapt_step_size
        check_positive(target_accept_prob, "target_accept_prob")
        if not 0 < target_accept_prob < 1:
            raise ValueError(f"target_accept_prob must be in (0, 1), got {target_accept_prob}.")
        self.target_accept_prob = float(target_accept_prob)

    def get_config(self):
        return {**super().get_config(), "num_steps": self.num_steps,
                "num_burnin_steps": self.num_burnin_steps,
                "adapt_step_size": self.adapt_step_size,
                "target_accept_prob": self.target_accept_prob}

    def _resolve(self, target):
        t = _as_target(target)
        if not t.has_log_prob:
            raise TypeError("MALA needs the log-density itself for its accept step; this "
                            "target only has a score. Use LangevinSampler, or give "
                            "LogDensity a log_prob_fn.")
        return t

    def _structure_key(self, target, d, record, progress):
        return super()._structure_key(target, d, record, progress) + (self.adapt_step_size,)

    def _build(self, target, d, record, holder):
        adapt = self.adapt_step_size
        log_prob_and_score = target.log_prob_and_score  # weakly bound (see LangevinSampler)
        spec = [tf.TensorSpec([None, d], target.dtype), tf.TensorSpec([2], tf.int64),
                tf.TensorSpec([], target.dtype), tf.TensorSpec([], tf.int32),
                tf.TensorSpec([], tf.int32), tf.TensorSpec([], tf.int32),
                tf.TensorSpec([], target.dtype)]

        def run(x0, seed, h0, num_burnin, num_steps, thin, target_accept):
            total = num_burnin + num_steps
            hook = None if holder is None else _make_progress(holder, total,
                                                              tf.maximum(total // 100, 1))
            x, _, diverged, n_acc, h, traj = _mala_chain(
                log_prob_and_score, x0, seed, h0, num_burnin, num_steps, adapt=adapt,
                target_accept=target_accept, record=record, thin=thin, hook=hook)
            return x, diverged, n_acc, h, traj
        return _compile(run, spec, self.jit_compile and holder is None)

    def call(self, target, initial_state, seed=None, return_trajectory=False, progress=False):
        t, x0, fn, holder = self._prepare(target, initial_state, self.num_steps,
                                          return_trajectory, progress)
        x, diverged, n_acc, h, traj = self._run_with_progress(
            fn, holder, self.num_burnin_steps + self.num_steps, progress, tf.constant(x0),
            self._seed(seed), self._dtype_scalar(self.step_size, t),
            tf.constant(self.num_burnin_steps, tf.int32), tf.constant(self.num_steps, tf.int32),
            tf.constant(self.thin, tf.int32), self._dtype_scalar(self.target_accept_prob, t))
        bad = diverged.numpy() | ~np.isfinite(x.numpy()).all(axis=1)
        n_ok = int((~bad).sum())
        rate = float(n_acc.numpy()[~bad].sum() / (n_ok * self.num_steps)) if n_ok else 0.0
        return self._finish(x, diverged, traj, rate, float(h.numpy()))


@keras.saving.register_keras_serializable(package="dde")
class AnnealedLangevinSampler(_LangevinBase):
    """Annealed Langevin dynamics (Song & Ermon 2019) over noise levels σ₁ > … > σ_L:

        for i = 1..L:  h_i = h·σ_i²/σ_L²;  K times:  x ← x + h_i s(x, σ_i) + sqrt(2h_i) ξ,

    s(·, σ) the score of the data smoothed by N(0, σ²I). Large σ first lets chains cross
    between modes, so the chains end with the right mode weights; the result follows p_{σ_L}.

    step_size: h at the smallest level σ_L; None → 0.05·σ_L² (h_i/σ_i² = 0.05 at every level).
    steps_per_level: K. num_levels: L when the levels come from a NoiseConditionalDDE
    (`model.noise_levels(L)`, geometric from sigma_max to sigma_min). noise_levels: explicit
    decreasing levels (required for a score_fn target; must match a list of DDEs, whose levels
    are their noise_std otherwise). denoise: finish with the Tweedie step x + σ_L² s(x, σ_L).
    refine_steps: after the last level, this many MALA steps on f(·, σ_L) (half burn-in with
    dual-averaged step size towards `refine_target_accept`, half kept), for targets with a
    log-density (a NoiseConditionalDDE or a list of DDEs). ULA with h_i ∝ σ_i² hardly moves
    at the smallest levels (relaxation time ~ s²/h_i for modes of width s ≫ σ_L), so the
    chains keep the spread of an earlier level; annealing sets the mode weights, the
    Metropolis-adjusted refinement then relaxes each mode exactly. 0: none.
    thin, on_divergence, jit_compile: as for `LangevinSampler`; the trajectory has
    (L·K + refine_steps // 2) // thin entries.

    `sampler(target, initial_state [chains, d], seed=None, return_trajectory=False,
    progress=False)` → `SamplerResults`; target: a NoiseConditionalDDE, a list of DDEs or a
    tensor function score_fn(x [b, d], sigma scalar) → [b, d].
    """

    _kind = "annealed"

    def __init__(self, step_size: float | None = None, steps_per_level: int = 100,
                 num_levels: int = 10, noise_levels=None, denoise: bool = False,
                 refine_steps: int = 0, refine_target_accept: float = 0.574, thin: int = 1,
                 on_divergence: str = "warn", jit_compile: bool = False, **kwargs):
        super().__init__(step_size, thin=thin, on_divergence=on_divergence,
                         jit_compile=jit_compile, **kwargs)
        self.steps_per_level = int(check_positive(steps_per_level, "steps_per_level",
                                                  integer=True))
        self.num_levels = int(check_positive(num_levels, "num_levels", integer=True))
        if noise_levels is not None:
            levels = np.asarray(noise_levels, dtype=np.float64).reshape(-1)
            if levels.size == 0 or not np.all(np.isfinite(levels)) or np.any(levels <= 0):
                raise ValueError(f"noise_levels must be finite and > 0, got {noise_levels!r}.")
            if levels.size > 1 and not np.all(np.diff(levels) < 0):
                raise ValueError(f"noise_levels must be strictly decreasing (σ₁ > … > σ_L), "
                                 f"got {levels.tolist()}.")
            noise_levels = [float(v) for v in levels]
        self.noise_levels = noise_levels
        if not isinstance(denoise, bool):
            raise TypeError(f"denoise must be a bool, got {denoise!r}.")
        self.denoise = denoise
        self.refine_steps = int(check_positive(refine_steps, "refine_steps", integer=True,
                                               allow_zero=True))
        if not 0 < refine_target_accept < 1:
            raise ValueError(f"refine_target_accept must be in (0, 1), got "
                             f"{refine_target_accept}.")
        self.refine_target_accept = float(refine_target_accept)

    def get_config(self):
        return {**super().get_config(), "steps_per_level": self.steps_per_level,
                "num_levels": self.num_levels,
                "noise_levels": None if self.noise_levels is None else list(self.noise_levels),
                "denoise": self.denoise, "refine_steps": self.refine_steps,
                "refine_target_accept": self.refine_target_accept}

    def _resolve(self, target):
        t = _as_noise_target(target)
        if self.refine_steps and t.log_prob_at_level is None:
            raise TypeError("refine_steps needs the log-density at the last level (a "
                            "NoiseConditionalDDE or a list of DDEs); this target only has a "
                            "score. Pass refine_steps=0.")
        return t

    def _structure_key(self, target, d, record, progress):
        return super()._structure_key(target, d, record, progress) + (
            self.denoise, self.refine_steps > 0)

    def levels_for(self, target) -> np.ndarray:
        """The noise levels σ₁ > … > σ_L used for `target` (float64 array)."""
        t = target if isinstance(target, _Target) else self._resolve(target)
        if t.noise_levels is not None:  # a list of DDEs
            if self.noise_levels is not None and not np.allclose(self.noise_levels,
                                                                 t.noise_levels, rtol=1e-6):
                raise ValueError(f"noise_levels {self.noise_levels} do not match the models' "
                                 f"noise_std {t.noise_levels.tolist()}.")
            return np.asarray(t.noise_levels, np.float64)
        if self.noise_levels is not None:
            return np.asarray(self.noise_levels, np.float64)
        if isinstance(t.objects[0], NoiseConditionalLike):
            return t.objects[0].noise_levels(self.num_levels)
        raise ValueError("noise_levels are required for a score_fn target.")

    def resolved_step_size(self, levels) -> float:
        """h at σ_L: step_size, or 0.05·σ_L² when step_size is None."""
        return self.step_size if self.step_size is not None else 0.05 * float(levels[-1]) ** 2

    def _build(self, target, d, record, holder):
        denoise, refine = self.denoise, self.refine_steps > 0
        score_at_level = target.score_at_level  # weakly bound (see LangevinSampler)
        log_prob_at_level = target.log_prob_at_level
        spec = [tf.TensorSpec([None, d], target.dtype), tf.TensorSpec([2], tf.int64),
                tf.TensorSpec([], target.dtype), tf.TensorSpec([None], target.dtype),
                tf.TensorSpec([], tf.int32), tf.TensorSpec([], tf.int32),
                tf.TensorSpec([], tf.int32), tf.TensorSpec([], target.dtype)]

        def run(x0, seed, h, levels, steps_per_level, thin, refine_steps, target_accept):
            num_levels = tf.shape(levels)[0]
            anneal_total = num_levels * steps_per_level
            total = anneal_total + refine_steps
            hook = None if holder is None else _make_progress(holder, total,
                                                              tf.maximum(total // 100, 1))
            sigma_last = levels[-1]

            def kernel_at(level):
                sigma = levels[level]

                def score(x):
                    return mcmc.Evaluation(tf.zeros(tf.shape(x)[:1], x.dtype),
                                           score_at_level(x, level, sigma), ())
                return mcmc.LangevinKernel(score, h * tf.square(sigma / sigma_last))

            def step(i, state):
                x, results, diverged = state
                level = i // steps_per_level
                kernel = kernel_at(level)
                # A new level: the score (and step size) at the current state, at that level.
                results = tf.cond(tf.equal(i % steps_per_level, 0) & (i > 0),
                                  lambda: kernel.bootstrap_results(x), lambda: results)
                x, results = kernel.one_step(x, results, _step_seed(seed, i))
                return x, results, diverged | ~_all_finite(x)

            init = (x0, kernel_at(tf.constant(0)).bootstrap_results(x0),
                    tf.zeros(tf.shape(x0)[:1], tf.bool))
            (x, results, diverged), traj = _run_loop(step, init, 0, anneal_total,
                                                     record=record, thin=thin,
                                                     num_saved=anneal_total // thin,
                                                     progress=hook)
            n_acc = tf.zeros(tf.shape(x0)[:1], tf.int32)
            h_refine = tf.constant(np.nan, x0.dtype)
            if refine:
                def last_level(x):
                    return log_prob_at_level(x, num_levels - 1, sigma_last)
                num_burnin = refine_steps // 2
                x, results, div, n_acc, h_refine, traj2 = _mala_chain(
                    last_level, x, seed, tf.square(sigma_last), num_burnin,
                    refine_steps - num_burnin, adapt=True, target_accept=target_accept,
                    record=record, thin=thin, hook=hook, start=anneal_total)
                diverged = diverged | div
                if record:
                    traj = tf.concat([traj, traj2], axis=0)
            if denoise:  # Tweedie: x + σ_L² s(x, σ_L), the score at the final state
                x = x + tf.square(sigma_last) * results.grad
                diverged = diverged | ~_all_finite(x)
            return x, diverged, traj, n_acc, h_refine
        return _compile(run, spec, self.jit_compile and holder is None)

    def call(self, target, initial_state, seed=None, return_trajectory=False, progress=False):
        levels = self.levels_for(self._resolve(target))
        total = len(levels) * self.steps_per_level
        t, x0, fn, holder = self._prepare(target, initial_state, total, return_trajectory,
                                          progress)
        h = self.resolved_step_size(levels)
        x, diverged, traj, n_acc, h_refine = self._run_with_progress(
            fn, holder, total + self.refine_steps, progress, tf.constant(x0), self._seed(seed),
            self._dtype_scalar(h, t), tf.constant(levels, t.dtype),
            tf.constant(self.steps_per_level, tf.int32), tf.constant(self.thin, tf.int32),
            tf.constant(self.refine_steps, tf.int32),
            self._dtype_scalar(self.refine_target_accept, t))
        if not self.refine_steps:
            return self._finish(x, diverged, traj, None, h)
        kept = self.refine_steps - self.refine_steps // 2
        bad = diverged.numpy() | ~np.isfinite(x.numpy()).all(axis=1)
        n_ok = int((~bad).sum())
        rate = float(n_acc.numpy()[~bad].sum() / (n_ok * kept)) if n_ok and kept else 0.0
        return self._finish(x, diverged, traj, rate, h,
                            diagnostics={"refine_step_size": float(h_refine.numpy())})


# ------------------------------------------------------------------------ model.sample
SamplerRecipe = collections.namedtuple("SamplerRecipe", ["build", "default_step_size"])
SamplerRecipe.__doc__ = """How `model.sample(method=...)` makes a sampler for a model.

build(model, num_steps, step_size, **options) → (sampler, start_variance): the sampler layer
(called as `sampler(model, x0, seed=..., return_trajectory=..., progress=...)` → a
`SamplerResults`) and the variance added to the Gaussian start of the chains.
default_step_size(σ) → the step size h for a model of noise level σ.
"""

#: Samplers of `model.sample` and `dde sample --method`, by name.
SAMPLERS = Registry("sampling method")


def _build_ula(model, num_steps, step_size, **options):
    return LangevinSampler(step_size=step_size, num_steps=num_steps, **options), 0.0


def _build_mala(model, num_steps, step_size, **options):
    options.setdefault("num_burnin_steps", num_steps // 2)
    return MALASampler(step_size=step_size, num_steps=num_steps, **options), 0.0


def _build_annealed(model, num_steps, step_size, **options):
    if not isinstance(model, NoiseConditionalLike):
        raise TypeError(
            f"method='annealed' needs a NoiseConditionalDDE (a score at every noise level); "
            f"this is a {type(model).__name__}. Use method='ula' or 'mala'.")
    num_levels = options.pop("num_levels", 10)
    levels = options.pop("noise_levels", None)
    levels = model.noise_levels(num_levels) if levels is None else np.asarray(levels)
    steps_per_level = options.pop("steps_per_level", max(num_steps // len(levels), 1))
    options.setdefault("refine_steps", 200)  # the model has a log-density: refine with MALA
    sampler = AnnealedLangevinSampler(step_size=step_size, steps_per_level=steps_per_level,
                                      num_levels=len(levels), noise_levels=list(levels),
                                      **options)
    return sampler, float(levels[0]) ** 2


# ULA: 0.1·σ². The learned log p_σ has curvature at most 1/σ² (∇²log p_σ ⪰ −I/σ²), so this
# keeps ULA stable and its variance bias below ~5 % (1/(1 − h/(2s²)) with s ≥ σ).
# MALA: σ², the starting point of the step-size adaptation. Annealed: 0.05·σ_L², at σ_L.
SAMPLERS.register("ula", SamplerRecipe(_build_ula, lambda sigma: 0.1 * sigma ** 2))
SAMPLERS.register("mala", SamplerRecipe(_build_mala, lambda sigma: sigma ** 2))
SAMPLERS.register("annealed", SamplerRecipe(_build_annealed, lambda sigma: None))


def default_step_size(model, method: str) -> float | None:
    """The default h of `model.sample` for a model of noise level σ (its
    `resolve_noise_std(None)`; NoiseConditionalDDE: σ_min): 0.1·σ² (ULA), σ² (MALA, before
    adaptation); annealed: None (the sampler's own 0.05·σ_L²)."""
    return SAMPLERS.lookup(method).default_step_size(float(model.resolve_noise_std(None)))


#: Ways `model.sample` starts its chains (`init=`): see `_initial_points`.
INITS = ("smc", "resample", "proposal")


def sample_model(model, n, method="ula", init=None, num_steps=None, step_size=None, seed=None,
                 progress=False, return_trajectory=False, return_results=False,
                 **sampler_kwargs):
    """Implementation of `EnergyModel.sample` (see there): the sampler registered in
    `SAMPLERS` under `method`, n chains from `init` (see `_initial_points`)."""
    if not isinstance(model, EnergyModelLike):
        raise TypeError(f"model must be an energy model, got {type(model).__name__}.")
    if method not in SAMPLERS:
        raise ValueError(f"method must be one of {SAMPLERS.names()}, got {method!r}.")
    recipe = SAMPLERS.lookup(method)
    check_positive(n, "n", integer=True)
    if num_steps is not None:
        check_positive(num_steps, "num_steps", integer=True)
    if step_size is not None:
        check_positive(step_size, "step_size")
    if isinstance(init, str) and init not in INITS:
        raise ValueError(f"init must be an array of starting points or one of {INITS}, got "
                         f"{init!r}.")
    rng = np.random.default_rng(seed)
    h = default_step_size(model, method) if step_size is None else step_size
    sampler, start_variance = recipe.build(model, 1000 if num_steps is None else num_steps, h,
                                           **sampler_kwargs)
    if init is None:  # annealing starts broad (σ₁): its own schedule sets the mode weights
        init = "proposal" if start_variance > 0 else "smc"
    x0, start = _initial_points(model, n, init, rng, start_variance, progress)
    results = sampler(model, x0, seed=int(rng.integers(2**31 - 1)),
                      return_trajectory=return_trajectory, progress=progress)
    if start is not None:
        results = results._replace(diagnostics={**(results.diagnostics or {}), "init": start})
    if return_results:
        return results
    if return_trajectory:
        return results.samples, results.trajectory
    return results.samples


def _initial_points(model, n, init, rng, inflation, progress=False):
    """([n, d] starting points, a dict describing how they were drawn or None).

    init: an array (n rows, or one row repeated); "proposal": draws from the model's
    `default_proposal()` q convolved with N(0, inflation·I); "resample": importance
    resampling — 20·n draws from q, systematically resampled by exp(f − log q); "smc":
    a population carried from q to exp f by tempered SMC (`dde.smc.tempered_smc`), so the
    chains start with the right mode masses. "smc" and "resample" need n ≥ 2 (one chain
    starts from q) and fall back to q with a RuntimeWarning when they fail. Without training
    statistics (no q): N(0, (1 + inflation) I) with a warning."""
    dtype = model.compute_dtype
    d = _model_dim(model)
    if init is not None and not isinstance(init, str):
        x0 = check_data(init, name="init", n_features=d, owner=type(model).__name__,
                        dtype=dtype)
        if x0.shape[0] == 1:
            x0 = np.repeat(x0, n, axis=0)
        if x0.shape[0] != n:
            raise ValueError(f"init has {x0.shape[0]} rows; expected n = {n} (or 1 row to start "
                             "every chain there).")
        return x0, None
    if d is None:
        raise ValueError(f"This {type(model).__name__} has not been fit or built, so its "
                         "input dimension is unknown: fit it first or pass init=.")
    proposal = model.default_proposal()
    if proposal is None:
        warnings.warn(f"This {type(model).__name__} holds no training-data statistics (it was "
                      "not trained with fit): chains start from a standard normal.",
                      UserWarning, stacklevel=3)
        x0 = rng.standard_normal((n, d)) * np.sqrt(1.0 + inflation)
        return x0.astype(dtype), None
    seed = rng.integers(2**31 - 1, size=2)
    try:
        if init == "smc" and n >= 2:
            res = smc.tempered_smc(partition.model_log_density_fn(model), proposal, n,
                                   seed=seed, progress=progress)
            start = {"method": "smc", "log_z": res.log_z, "num_temperatures":
                     len(res.temperatures) - 1, "min_ess": float(np.min(res.ess)),
                     "acceptance_rate": res.acceptance_rate}
            return res.samples.astype(dtype), start
        if init == "resample" and n >= 2:
            draws = np.asarray(proposal.sample(20 * n, seed=tf.constant(seed, tf.int32)))
            log_w = (np.asarray(model.log_density(draws.astype(dtype)),
                                np.float64).reshape(-1)
                     - np.asarray(proposal.log_prob(draws), np.float64))
            index = smc.systematic_resample(log_w, rng)
            return draws[index].astype(dtype), {"method": "resample",
                                                "ess": smc.effective_sample_size(log_w)}
    except (RuntimeError, ValueError) as err:  # the model is far from its proposal
        warnings.warn(f"init={init!r} failed ({err}); the chains start from the proposal "
                      "instead, and their mode weights may then be wrong.", RuntimeWarning,
                      stacklevel=3)
    x0 = np.asarray(proposal.sample(n, seed=tf.constant(seed, tf.int32)), dtype=np.float64)
    x0 = x0 + np.sqrt(inflation) * rng.standard_normal((n, d))
    return x0.astype(dtype), {"method": "proposal"}
