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
an `EnergyModel` (a DDE: `f` and `∇f` at its σ), a `LogDensity` wrapper of tensor functions
(`log_prob_fn(x) → [batch]`, optional exact `score_fn(x) → [batch, d]`), or any callable
`log_prob_fn`. The annealed sampler takes a `NoiseConditionalDDE`, a list of DDEs trained at
decreasing σ, or `score_fn(x, sigma)`.

The loop runs in one `tf.function` (`tf.while_loop`), traced once per target, dimension, dtype
and output structure: chain count, step size, step counts and seed are tensor arguments, so
calling again with other values does not retrace. Calls are eager (post-processing is NumPy).
Randomness is stateless: the same seed gives the same samples.

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
import weakref

import keras
import numpy as np
import tensorflow as tf

from dde._validation import check_data, check_positive, stateless_seed_pair

SamplerResults = collections.namedtuple(
    "SamplerResults", ["samples", "trajectory", "acceptance_rate", "num_diverged",
                       "step_size"])
SamplerResults.__doc__ = """Output of a Langevin sampler (NumPy arrays).

samples: [n_ok, d] final states of the chains that stayed finite.
trajectory: [num_steps // thin, n_ok, d] saved states (after steps thin, 2·thin, …), or None.
acceptance_rate: fraction of accepted MALA proposals after burn-in (None for ULA / annealed).
num_diverged: number of chains dropped because their state became NaN or infinite.
step_size: the step size h (MALA: after adaptation; annealed: at the smallest noise level).
"""

METHODS = ("ula", "mala", "annealed")


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
                 score_at_level=None, noise_levels=None):
        self.objects = objects
        self.input_dim = input_dim
        self.dtype = tf.as_dtype(dtype)
        self.name = name
        self.has_log_prob = has_log_prob
        self.log_prob_and_score = log_prob_and_score  # x → (f [b], ∇f [b, d])
        self.score_at_level = score_at_level  # (x, level index, sigma) → [b, d]
        self.noise_levels = noise_levels  # default noise levels (annealed), or None

    def ensure_built(self, d):
        for obj in self.objects:
            if isinstance(obj, keras.Model) and hasattr(obj, "_ensure_built"):
                obj._ensure_built(d)


def _weak(obj):
    """A zero-argument callable returning obj (weakly held when possible)."""
    try:
        ref = weakref.ref(obj)
    except TypeError:
        return lambda: obj
    return ref


def _energy_model_class():
    from dde.models import EnergyModel, NoiseConditionalDDE
    return EnergyModel, NoiseConditionalDDE


def _model_dim(model):
    return getattr(model, "input_dim", None) if model.built else None


def _flat_log_prob(f):
    f = tf.convert_to_tensor(f)
    if f.shape.rank == 2 and f.shape[-1] == 1:
        return f[:, 0]
    if f.shape.rank != 1:
        raise ValueError(f"log_prob_fn must return shape [batch] or [batch, 1]; got {f.shape}.")
    return f


def _check_score_shape(g, x):
    g = tf.convert_to_tensor(g)
    if g.shape.rank != 2 or (g.shape[-1] is not None and g.shape[-1] != x.shape[-1]):
        raise ValueError(f"The score must have shape [batch, d] = {x.shape}; got {g.shape}.")
    return tf.cast(g, x.dtype)


def _autodiff(log_prob_fn):
    def log_prob_and_score(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            f = _flat_log_prob(log_prob_fn(x))
        g = tape.gradient(f, x)
        if g is None:
            raise ValueError("log_prob_fn does not depend on x: its gradient is None.")
        return tf.cast(f, x.dtype), g
    return log_prob_and_score


def _as_target(obj) -> _Target:
    """Target of ULA / MALA: an EnergyModel, a LogDensity or a callable log_prob_fn."""
    EnergyModel, _ = _energy_model_class()
    get = _weak(obj)
    if isinstance(obj, EnergyModel):
        return _Target([obj], _model_dim(obj), obj.compute_dtype, type(obj).__name__, True,
                       log_prob_and_score=lambda x: get().log_density_and_score(x))
    if isinstance(obj, LogDensity):
        def lps(x):
            t = get()
            if t.log_prob_fn is None:
                return tf.zeros(tf.shape(x)[:1], x.dtype), _check_score_shape(t.score_fn(x), x)
            if t.score_fn is None:
                return _autodiff(t.log_prob_fn)(x)
            return (tf.cast(_flat_log_prob(t.log_prob_fn(x)), x.dtype),
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
        f"The target must be an EnergyModel (e.g. a DenoisingDensityEstimator), a LogDensity or "
        f"a callable log_prob_fn(x); got {type(obj).__name__}.")


def _as_noise_target(obj) -> _Target:
    """Target of annealed Langevin: a NoiseConditionalDDE, a list of DDEs (decreasing σ) or a
    callable score_fn(x, sigma)."""
    EnergyModel, NoiseConditionalDDE = _energy_model_class()
    if isinstance(obj, NoiseConditionalDDE):
        get = _weak(obj)

        def score(x, level, sigma):
            return get().log_density_and_score(x, noise_std=sigma)[1]
        return _Target([obj], _model_dim(obj), obj.compute_dtype, "NoiseConditionalDDE", False,
                       score_at_level=score)
    if isinstance(obj, (list, tuple)):
        models = list(obj)
        if not models:
            raise ValueError("The list of models is empty.")
        for m in models:
            if not isinstance(m, EnergyModel) or not hasattr(m, "noise_std") or isinstance(
                    m, NoiseConditionalDDE):
                raise TypeError("A list target must hold DenoisingDensityEstimators (one per "
                                f"noise level); got {type(m).__name__}.")
        sigmas = np.array([float(m.noise_std.numpy()) for m in models])
        if len(models) > 1 and not np.all(np.diff(sigmas) < 0):
            raise ValueError(f"The models must be ordered by strictly decreasing noise_std "
                             f"(σ₁ > … > σ_L); got {sigmas.tolist()}.")
        dims = {_model_dim(m) for m in models} - {None}
        if len(dims) > 1:
            raise ValueError(f"The models have different input dimensions {sorted(dims)}.")
        dtypes = {m.compute_dtype for m in models}
        if len(dtypes) > 1:
            raise TypeError(f"The models have different dtypes {sorted(dtypes)}.")
        getters = [_weak(m) for m in models]

        def score(x, level, sigma):
            branches = [(lambda g=g: g().score_tensor(x)) for g in getters]
            return tf.switch_case(level, branches)
        return _Target(models, dims.pop() if dims else None, models[0].compute_dtype,
                       "the models", False, score_at_level=score, noise_levels=sigmas)
    if isinstance(obj, EnergyModel):
        raise TypeError(
            f"Annealed Langevin needs the score at every noise level: pass a "
            f"NoiseConditionalDDE, a list of DDEs ordered by decreasing noise_std, or "
            f"score_fn(x, sigma); got a single {type(obj).__name__}.")
    if callable(obj):
        get = _weak(obj)

        def score(x, level, sigma):
            return _check_score_shape(get()(x, sigma), x)
        dtype = obj.compute_dtype if isinstance(obj, keras.layers.Layer) else "float32"
        return _Target([obj], None, dtype, "score_fn", False, score_at_level=score)
    raise TypeError(f"The target must be a NoiseConditionalDDE, a list of DDEs or a callable "
                    f"score_fn(x, sigma); got {type(obj).__name__}.")


# --------------------------------------------------------------------- compiled-loop cache
# Per target object (weak key): {structural key: (weak refs of the other objects, fn, holder)}.
_COMPILED = weakref.WeakKeyDictionary()


def _cached_function(target: _Target, key, build):
    """The compiled loop for `target` and `key`, built by `build()` → (fn, holder) if absent.

    Objects that cannot be weakly referenced (or die at once, like bound methods) are not
    cached: their loop is traced on every call.
    """
    first, others = target.objects[0], target.objects[1:]
    key = (key, tuple(id(o) for o in others))
    try:
        per_object = _COMPILED.setdefault(first, {})
    except TypeError:
        return build()
    entry = per_object.get(key)
    if entry is not None and all(r() is o for r, o in zip(entry[0], others)):
        return entry[1], entry[2]
    fn, holder = build()
    try:
        refs = tuple(weakref.ref(o) for o in others)
    except TypeError:
        return fn, holder
    per_object[key] = (refs, fn, holder)
    return fn, holder


def _tracing_count(sampler, target, d, record=False, progress=False) -> int:
    """Number of traces of the compiled loop of `sampler` for `target` (for tests)."""
    t = sampler._resolve(target)
    per_object = _COMPILED.get(t.objects[0], {})
    key = (sampler._structure_key(t, d, record, progress),
           tuple(id(o) for o in t.objects[1:]))
    entry = per_object.get(key)
    return 0 if entry is None else entry[1].experimental_get_tracing_count()


# ---------------------------------------------------------------------------- the loops
def _step_seeds(seed, step, n):
    s = tf.random.experimental.stateless_fold_in(seed, tf.cast(step, tf.int64))
    return tf.unstack(tf.random.experimental.stateless_split(s, n))


def _all_finite(x):
    return tf.reduce_all(tf.math.is_finite(x), axis=-1)


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
        return tf.constant(stateless_seed_pair(seed, salt=0x5EED), tf.int64)

    def _compiled(self, target, d, record, progress, build_body):
        """(tf.function, progress holder) for this structure, from the cache or built by
        build_body(target, d, record, holder or None)."""
        key = self._structure_key(target, d, record, progress)

        def build():
            holder = {}
            fn = build_body(target, d, record, holder if progress else None)
            return fn, holder
        return _cached_function(target, key, build)

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
            holder["bar"] = keras.utils.Progbar(total, unit_name="step")
        try:
            return fn(*args)
        finally:
            holder.pop("bar", None)

    def _finish(self, x, diverged, trajectory, acceptance_rate, step_size):
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
        return SamplerResults(samples=x, trajectory=trajectory, acceptance_rate=acceptance_rate,
                              num_diverged=n_bad, step_size=float(step_size))

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
            noise_scale = tf.sqrt(2.0 * h)

            def step(i, state):
                x, diverged = state
                (s,) = _step_seeds(seed, i, 1)
                g = log_prob_and_score(x)[1]
                x = x + h * g + noise_scale * tf.random.stateless_normal(tf.shape(x), s,
                                                                         dtype=x.dtype)
                return x, diverged | ~_all_finite(x)

            init = (x0, tf.zeros(tf.shape(x0)[:1], tf.bool))
            (x, diverged), traj = _run_loop(step, init, 0, num_steps, record=record, thin=thin,
                                            num_saved=num_steps // thin, progress=hook)
            return x, diverged, traj
        return _compile(run, spec, self.jit_compile and holder is None)

    def call(self, target, initial_state, seed=None, return_trajectory=False, progress=False):
        t = self._resolve(target)
        x0 = self._initial_state(t, initial_state)
        self._num_saved(self.num_steps, return_trajectory)
        fn, holder = self._compiled(t, x0.shape[1], return_trajectory, progress, self._build)
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

        def mala_step(i, x, f, g, h, seed):
            """One MALA transition; returns (x, f, g, accepted [chains], accept prob)."""
            s_noise, s_u = _step_seeds(seed, i, 2)
            xi = tf.random.stateless_normal(tf.shape(x), s_noise, dtype=x.dtype)
            y = x + h * g + tf.sqrt(2.0 * h) * xi
            fy, gy = log_prob_and_score(y)
            forward = 0.5 * tf.reduce_sum(tf.square(xi), -1)  # ‖y − x − h∇f(x)‖²/(4h)
            backward = tf.reduce_sum(tf.square(x - y - h * gy), -1) / (4.0 * h)
            log_alpha = fy - f - backward + forward
            ok = _all_finite(y) & _all_finite(gy) & tf.math.is_finite(fy) & ~tf.math.is_nan(
                log_alpha)
            log_alpha = tf.where(ok, log_alpha, tf.constant(-np.inf, x.dtype))
            log_u = tf.math.log(tf.random.stateless_uniform(tf.shape(f), s_u, dtype=x.dtype))
            accept = log_u < log_alpha
            x = tf.where(accept[:, None], y, x)
            f = tf.where(accept, fy, f)
            g = tf.where(accept[:, None], gy, g)
            prob = tf.exp(tf.minimum(log_alpha, 0.0))
            return x, f, g, accept, prob

        def run(x0, seed, h0, num_burnin, num_steps, thin, target_accept):
            total = num_burnin + num_steps
            hook = None if holder is None else _make_progress(holder, total,
                                                              tf.maximum(total // 100, 1))
            f0, g0 = log_prob_and_score(x0)
            diverged0 = ~(_all_finite(x0) & tf.math.is_finite(f0) & _all_finite(g0))
            log_h0 = tf.math.log(h0)

            # Burn-in with dual averaging (Hoffman & Gelman 2014, Alg. 5; TFP's defaults).
            gamma, t0, kappa = 0.05, 10.0, 0.75
            mu = tf.math.log(10.0 * h0)

            def burn_step(i, state):
                x, f, g, diverged, log_h, log_h_bar, h_bar = state
                x, f, g, _, prob = mala_step(i, x, f, g, tf.exp(log_h), seed)
                diverged = diverged | ~_all_finite(x)
                if adapt:
                    t = tf.cast(i + 1, x.dtype)
                    mean_prob = tf.reduce_mean(tf.where(diverged, tf.zeros_like(prob), prob))
                    w = 1.0 / (t + t0)
                    h_bar = (1.0 - w) * h_bar + w * (target_accept - mean_prob)
                    log_h = mu - tf.sqrt(t) / gamma * h_bar
                    eta = t ** (-kappa)
                    log_h_bar = eta * log_h + (1.0 - eta) * log_h_bar
                return x, f, g, diverged, log_h, log_h_bar, h_bar

            zero = tf.zeros([], x0.dtype)
            state = (x0, f0, g0, diverged0, log_h0, log_h0, zero)
            state, _ = _run_loop(burn_step, state, 0, num_burnin, record=False, thin=thin,
                                 num_saved=0, progress=hook)
            x, f, g, diverged, log_h, log_h_bar, _ = state
            h = tf.exp(log_h_bar) if adapt else h0
            h = tf.where(num_burnin > 0, h, h0)

            def main_step(i, state):
                x, f, g, diverged, n_acc = state
                x, f, g, accept, _ = mala_step(i, x, f, g, h, seed)
                return x, f, g, diverged | ~_all_finite(x), n_acc + tf.cast(accept, tf.int32)

            state = (x, f, g, diverged, tf.zeros(tf.shape(x0)[:1], tf.int32))
            (x, f, g, diverged, n_acc), traj = _run_loop(
                main_step, state, num_burnin, num_steps, record=record, thin=thin,
                num_saved=num_steps // thin, progress=hook)
            return x, diverged, n_acc, h, traj
        return _compile(run, spec, self.jit_compile and holder is None)

    def call(self, target, initial_state, seed=None, return_trajectory=False, progress=False):
        t = self._resolve(target)
        x0 = self._initial_state(t, initial_state)
        self._num_saved(self.num_steps, return_trajectory)
        fn, holder = self._compiled(t, x0.shape[1], return_trajectory, progress, self._build)
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
    thin, on_divergence, jit_compile: as for `LangevinSampler`; the trajectory has
    L·K // thin entries.

    `sampler(target, initial_state [chains, d], seed=None, return_trajectory=False,
    progress=False)` → `SamplerResults`; target: a NoiseConditionalDDE, a list of DDEs or a
    tensor function score_fn(x [b, d], sigma scalar) → [b, d].
    """

    _kind = "annealed"

    def __init__(self, step_size: float | None = None, steps_per_level: int = 100,
                 num_levels: int = 10, noise_levels=None, denoise: bool = False, thin: int = 1,
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

    def get_config(self):
        return {**super().get_config(), "steps_per_level": self.steps_per_level,
                "num_levels": self.num_levels,
                "noise_levels": None if self.noise_levels is None else list(self.noise_levels),
                "denoise": self.denoise}

    def _resolve(self, target):
        return _as_noise_target(target)

    def _structure_key(self, target, d, record, progress):
        return super()._structure_key(target, d, record, progress) + (self.denoise,)

    def levels_for(self, target) -> np.ndarray:
        """The noise levels σ₁ > … > σ_L used for `target` (float64 array)."""
        t = target if isinstance(target, _Target) else self._resolve(target)
        _, NoiseConditionalDDE = _energy_model_class()
        if t.noise_levels is not None:  # a list of DDEs
            if self.noise_levels is not None and not np.allclose(self.noise_levels,
                                                                 t.noise_levels, rtol=1e-6):
                raise ValueError(f"noise_levels {self.noise_levels} do not match the models' "
                                 f"noise_std {t.noise_levels.tolist()}.")
            return np.asarray(t.noise_levels, np.float64)
        if self.noise_levels is not None:
            return np.asarray(self.noise_levels, np.float64)
        if isinstance(t.objects[0], NoiseConditionalDDE):
            return t.objects[0].noise_levels(self.num_levels)
        raise ValueError("noise_levels are required for a score_fn target.")

    def resolved_step_size(self, levels) -> float:
        """h at σ_L: step_size, or 0.05·σ_L² when step_size is None."""
        return self.step_size if self.step_size is not None else 0.05 * float(levels[-1]) ** 2

    def _build(self, target, d, record, holder):
        denoise = self.denoise
        score_at_level = target.score_at_level  # weakly bound (see LangevinSampler)
        spec = [tf.TensorSpec([None, d], target.dtype), tf.TensorSpec([2], tf.int64),
                tf.TensorSpec([], target.dtype), tf.TensorSpec([None], target.dtype),
                tf.TensorSpec([], tf.int32), tf.TensorSpec([], tf.int32)]

        def run(x0, seed, h, levels, steps_per_level, thin):
            num_levels = tf.shape(levels)[0]
            total = num_levels * steps_per_level
            hook = None if holder is None else _make_progress(holder, total,
                                                              tf.maximum(total // 100, 1))
            sigma_last = levels[-1]

            def step(i, state):
                x, diverged = state
                level = i // steps_per_level
                sigma = levels[level]
                h_i = h * tf.square(sigma / sigma_last)
                (s,) = _step_seeds(seed, i, 1)
                g = score_at_level(x, level, sigma)
                x = x + h_i * g + tf.sqrt(2.0 * h_i) * tf.random.stateless_normal(
                    tf.shape(x), s, dtype=x.dtype)
                return x, diverged | ~_all_finite(x)

            init = (x0, tf.zeros(tf.shape(x0)[:1], tf.bool))
            (x, diverged), traj = _run_loop(step, init, 0, total, record=record, thin=thin,
                                            num_saved=total // thin, progress=hook)
            if denoise:
                x = x + tf.square(sigma_last) * score_at_level(x, num_levels - 1,
                                                                      sigma_last)
                diverged = diverged | ~_all_finite(x)
            return x, diverged, traj
        return _compile(run, spec, self.jit_compile and holder is None)

    def call(self, target, initial_state, seed=None, return_trajectory=False, progress=False):
        t = self._resolve(target)
        levels = self.levels_for(t)
        x0 = self._initial_state(t, initial_state)
        total = len(levels) * self.steps_per_level
        self._num_saved(total, return_trajectory)
        h = self.resolved_step_size(levels)
        fn, holder = self._compiled(t, x0.shape[1], return_trajectory, progress, self._build)
        x, diverged, traj = self._run_with_progress(
            fn, holder, total, progress, tf.constant(x0), self._seed(seed),
            self._dtype_scalar(h, t), tf.constant(levels, t.dtype),
            tf.constant(self.steps_per_level, tf.int32), tf.constant(self.thin, tf.int32))
        return self._finish(x, diverged, traj, None, h)


# ------------------------------------------------------------------------ model.sample
def default_step_size(model, method: str) -> float:
    """The default h of `model.sample` for a DDE of noise level σ (NoiseConditionalDDE: σ_min).

    ULA: 0.1·σ². The learned log p_σ has curvature at most 1/σ² (∇²log p_σ ⪰ −I/σ²), so this
    keeps ULA stable and its variance bias below ~5 % (1/(1 − h/(2s²)) with s ≥ σ).
    MALA: σ², the starting point of the step-size adaptation. Annealed: 0.05·σ_L².
    """
    sigma = _model_sigma(model)
    return {"ula": 0.1 * sigma**2, "mala": sigma**2, "annealed": 0.05 * sigma**2}[method]


def _model_sigma(model) -> float:
    _, NoiseConditionalDDE = _energy_model_class()
    if isinstance(model, NoiseConditionalDDE):
        return float(model.sigma_min)
    if hasattr(model, "noise_std"):
        return float(model.noise_std.numpy())
    raise TypeError(f"Cannot determine the noise level of {type(model).__name__}.")


def sample_model(model, n, method="ula", init=None, num_steps=None, step_size=None, seed=None,
                 progress=False, return_trajectory=False, return_results=False,
                 **sampler_kwargs):
    """Implementation of `EnergyModel.sample` (see there)."""
    EnergyModel, NoiseConditionalDDE = _energy_model_class()
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
    check_positive(n, "n", integer=True)
    if num_steps is not None:
        check_positive(num_steps, "num_steps", integer=True)
    if step_size is not None:
        check_positive(step_size, "step_size")
    if method == "annealed" and not isinstance(model, NoiseConditionalDDE):
        raise TypeError(
            f"method='annealed' needs a NoiseConditionalDDE (a score at every noise level); "
            f"this is a {type(model).__name__}. Use method='ula' or 'mala'.")
    rng = np.random.default_rng(seed)
    if method == "annealed":
        num_levels = sampler_kwargs.pop("num_levels", 10)
        levels = sampler_kwargs.pop("noise_levels", None)
        levels = model.noise_levels(num_levels) if levels is None else np.asarray(levels)
        total = 1000 if num_steps is None else num_steps
        steps_per_level = sampler_kwargs.pop("steps_per_level", max(total // len(levels), 1))
        sampler = AnnealedLangevinSampler(step_size=step_size, steps_per_level=steps_per_level,
                                          num_levels=len(levels), noise_levels=list(levels),
                                          **sampler_kwargs)
        init_inflation = float(levels[0]) ** 2
    else:
        h = default_step_size(model, method) if step_size is None else step_size
        steps = 1000 if num_steps is None else num_steps
        if method == "ula":
            sampler = LangevinSampler(step_size=h, num_steps=steps, **sampler_kwargs)
        else:
            sampler_kwargs.setdefault("num_burnin_steps", steps // 2)
            sampler = MALASampler(step_size=h, num_steps=steps, **sampler_kwargs)
        init_inflation = 0.0
    x0 = _initial_points(model, n, init, rng, init_inflation)
    results = sampler(model, x0, seed=int(rng.integers(2**31 - 1)),
                      return_trajectory=return_trajectory, progress=progress)
    if return_results:
        return results
    if return_trajectory:
        return results.samples, results.trajectory
    return results.samples


def _initial_points(model, n, init, rng, inflation):
    """[n, d] starting points: `init` (n rows, or one row repeated), else draws from
    N(data_mean, data_cov + inflation·I), else N(0, (1 + inflation) I) with a warning."""
    dtype = model.compute_dtype
    if init is not None:
        x0 = check_data(init, name="init", n_features=model.input_dim if model.built else None,
                        owner=type(model).__name__, dtype=dtype)
        if x0.shape[0] == 1:
            x0 = np.repeat(x0, n, axis=0)
        if x0.shape[0] != n:
            raise ValueError(f"init has {x0.shape[0]} rows; expected n = {n} (or 1 row to start "
                             "every chain there).")
        return x0
    if not model.built:
        raise ValueError(f"This {type(model).__name__} has not been fit or built, so its "
                         "input dimension is unknown: fit it first or pass init=.")
    d = model.input_dim
    if model.has_data_stats:
        mean = model.data_mean.numpy()
        cov = model.data_cov.numpy() + inflation * np.eye(d)
    else:
        warnings.warn(f"This {type(model).__name__} holds no training-data statistics (it was "
                      "not trained with fit): chains start from a standard normal.",
                      UserWarning, stacklevel=3)
        mean, cov = np.zeros(d), (1.0 + inflation) * np.eye(d)
    return rng.multivariate_normal(mean, cov, size=n, method="eigh").astype(dtype)
