"""Markov chain Monte Carlo transition kernels, written once for the samplers and for AIS.

Protocol (that of `tfp.mcmc.TransitionKernel`): `kernel.bootstrap_results(x)` → results and
`kernel.one_step(x, results, seed)` → (new x, new results), with x [chains, d], a stateless
seed [2] and results as namedtuples. One step moves every chain independently.

Targets. A kernel targets a function x [chains, d] → `Evaluation(log_prob [chains],
grad [chains, d], extra)`: the log-density, its gradient, and `extra`, a tuple of per-chain
tensors the caller wants carried along with the state (AIS keeps f and log q there, so a
change of temperature costs no new evaluation). `autodiff_target(log_prob_fn)` and
`score_target(log_prob_and_score_fn)` build one.

Kernels (step-size convention of `dde.sampling`: a Langevin step with step size h is
x ← x + h∇log π(x) + sqrt(2h)ξ):

* `LangevinKernel(target, h, metropolize=False)` — ULA; with `metropolize=True` MALA, the
  Metropolis–Hastings correction of the same proposal,
      log α = log π(y) − log π(x) − ‖x − y − h∇log π(y)‖²/(4h) + ‖y − x − h∇log π(x)‖²/(4h);
  TFP's `MetropolisAdjustedLangevinAlgorithm(step_size=2h)` proposes the same moves.
* `HMCKernel(target, h, num_leapfrog_steps)` — Hamiltonian Monte Carlo: identity mass,
  leapfrog with step h, Metropolis–Hastings on the Hamiltonian.
* `StepSizeAdaptation(inner, target_accept_prob, rule)` — the one step-size adaptation,
  a wrapper that moves log h after every inner step by the mean acceptance probability
  over the chains (one h shared by all chains): rule "dual_averaging" (Hoffman & Gelman
  2014, Alg. 5, TFP's constants; for the burn-in of a fixed target, then the averaged step
  `averaged_step_size(results)`) or "robbins_monro" (log h += rate·(mean acceptance −
  target): it tracks a target that changes, as AIS's tempered densities do).

Proposals with a non-finite state, log-density or gradient are rejected (log α = −inf).
`KERNELS` registers the kernel constructors by name ("ula", "mala", "hmc") for AIS.
"""
from __future__ import annotations

import collections

import numpy as np
import tensorflow as tf

from dde._registry import Registry

Evaluation = collections.namedtuple("Evaluation", ["log_prob", "grad", "extra"])
Evaluation.__doc__ = """A target evaluated at x [chains, d]: log_prob [chains], grad [chains, d]
and extra, a tuple of per-chain tensors carried with the state."""

KernelResults = collections.namedtuple(
    "KernelResults", ["target_log_prob", "grad", "extra", "log_accept_ratio", "is_accepted",
                      "step_size"])
KernelResults.__doc__ = """State of a Langevin or HMC kernel: the target's log-density, gradient
and extra at the current state, the last step's log acceptance ratio [chains] (0 for ULA),
whether it was accepted [chains], and the step size h (a scalar tensor)."""

AdaptationResults = collections.namedtuple(
    "AdaptationResults", ["inner_results", "step", "error_sum", "log_averaged_step_size",
                          "log_anchor"])
AdaptationResults.__doc__ = """State of `StepSizeAdaptation`: the inner kernel's results,
the number of adapted steps, the dual-averaging error sum, the averaged log step size, and
log(10·h₀), the point dual averaging shrinks towards."""

KERNELS = Registry("MCMC kernel")


# ------------------------------------------------------------------------------ targets
def autodiff_target(log_prob_fn):
    """A target from log_prob_fn(x) → [chains] (or [chains, 1]); gradient by autodiff."""
    def target(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            lp = flat_log_prob(log_prob_fn(x))
        grad = tape.gradient(lp, x)
        if grad is None:
            raise ValueError("The log-density does not depend on x: its gradient is None.")
        return Evaluation(tf.cast(lp, x.dtype), tf.cast(grad, x.dtype), ())
    return target


def score_target(log_prob_and_score_fn):
    """A target from fn(x) → (log_prob [chains], score [chains, d])."""
    def target(x):
        lp, grad = log_prob_and_score_fn(x)
        return Evaluation(tf.cast(flat_log_prob(lp), x.dtype), tf.cast(grad, x.dtype), ())
    return target


def flat_log_prob(f):
    """A log-density output [chains] or [chains, 1] as [chains]; ValueError otherwise."""
    f = tf.convert_to_tensor(f)
    if f.shape.rank == 2 and f.shape[-1] == 1:
        return f[:, 0]
    if f.shape.rank != 1:
        raise ValueError(f"log_prob_fn must return shape [batch] or [batch, 1]; got {f.shape}.")
    return f


def all_finite(x):
    """[chains] whether every entry of each row of x [chains, d] is finite."""
    return tf.reduce_all(tf.math.is_finite(x), axis=-1)


def _select(accept, new, old):
    """Per-chain choice between two nests of [chains, ...] tensors."""
    def pick(a, b):
        mask = tf.reshape(accept, [-1] + [1] * (a.shape.rank - 1))
        return tf.where(mask, a, b)
    return tf.nest.map_structure(pick, new, old)


def _metropolis(seed, log_accept_ratio, proposed, current):
    """Accept `proposed` (x, Evaluation) per chain with probability min(1, exp(log α))."""
    u = tf.random.stateless_uniform(tf.shape(log_accept_ratio), seed,
                                    dtype=log_accept_ratio.dtype)
    accept = tf.math.log(u) < log_accept_ratio
    return accept, _select(accept, proposed, current)


def _sanitized(log_accept_ratio, y, ev):
    ok = (all_finite(y) & all_finite(ev.grad) & tf.math.is_finite(ev.log_prob)
          & ~tf.math.is_nan(log_accept_ratio))
    return tf.where(ok, log_accept_ratio, tf.constant(-np.inf, log_accept_ratio.dtype))


# ------------------------------------------------------------------------------ kernels
class LangevinKernel:
    """ULA (`metropolize=False`) or MALA (`metropolize=True`) with step size h: see module."""

    def __init__(self, target_fn, step_size, metropolize: bool = False):
        self.target_fn = target_fn
        self.step_size = step_size
        self.metropolize = bool(metropolize)

    def bootstrap_results(self, x) -> KernelResults:
        ev = self.target_fn(x)
        n = tf.shape(x)[:1]
        return KernelResults(ev.log_prob, ev.grad, ev.extra, tf.zeros(n, x.dtype),
                             tf.ones(n, tf.bool), tf.cast(self.step_size, x.dtype))

    def one_step(self, x, results: KernelResults, seed):
        h = results.step_size
        s_noise, s_u = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        xi = tf.random.stateless_normal(tf.shape(x), s_noise, dtype=x.dtype)
        y = x + h * results.grad + tf.sqrt(2.0 * h) * xi
        ev = self.target_fn(y)
        if not self.metropolize:
            n = tf.shape(x)[:1]
            return y, KernelResults(ev.log_prob, ev.grad, ev.extra, tf.zeros(n, x.dtype),
                                    tf.ones(n, tf.bool), h)
        forward = 0.5 * tf.reduce_sum(tf.square(xi), -1)  # ‖y − x − h∇log π(x)‖²/(4h)
        backward = tf.reduce_sum(tf.square(x - y - h * ev.grad), -1) / (4.0 * h)
        log_ratio = _sanitized(ev.log_prob - results.target_log_prob - backward + forward,
                               y, ev)
        current = Evaluation(results.target_log_prob, results.grad, results.extra)
        accept, (x, ev) = _metropolis(s_u, log_ratio, (y, ev), (x, current))
        return x, KernelResults(ev.log_prob, ev.grad, ev.extra, log_ratio, accept, h)


class HMCKernel:
    """Hamiltonian Monte Carlo with identity mass matrix and `num_leapfrog_steps` leapfrog
    steps of size h (a Python int or a scalar int32 tensor, so that it can change without
    retracing)."""

    def __init__(self, target_fn, step_size, num_leapfrog_steps=5):
        self.target_fn = target_fn
        self.step_size = step_size
        self.num_leapfrog_steps = num_leapfrog_steps

    bootstrap_results = LangevinKernel.bootstrap_results

    def one_step(self, x, results: KernelResults, seed):
        h = results.step_size
        s_mom, s_u = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        p0 = tf.random.stateless_normal(tf.shape(x), s_mom, dtype=x.dtype)
        num = tf.cast(self.num_leapfrog_steps, tf.int32)
        current = Evaluation(results.target_log_prob, results.grad, results.extra)

        def leap(i, y, p, ev):
            y = y + h * p
            ev = Evaluation(*self.target_fn(y))
            p = p + tf.where(i < num - 1, h, 0.5 * h) * ev.grad
            return i + 1, y, p, ev

        _, y, p, ev = tf.while_loop(lambda i, *_: i < num, leap,
                                    (tf.constant(0, tf.int32), x, p0 + 0.5 * h * results.grad,
                                     current))
        log_ratio = ((ev.log_prob - 0.5 * tf.reduce_sum(tf.square(p), -1))
                     - (results.target_log_prob - 0.5 * tf.reduce_sum(tf.square(p0), -1)))
        log_ratio = _sanitized(log_ratio, y, ev)
        accept, (x, ev) = _metropolis(s_u, log_ratio, (y, ev), (x, current))
        return x, KernelResults(ev.log_prob, ev.grad, ev.extra, log_ratio, accept, h)


class StepSizeAdaptation:
    """Adapt the step size of an inner kernel (whose results are `KernelResults`) after every
    step towards a mean acceptance probability `target_accept_prob` (see the module).

    num_adaptation_steps: adapt during the first this many steps only (None: always).
    adaptation_rate: the Robbins–Monro rate. gamma, t0, kappa: dual-averaging constants.
    """

    RULES = ("dual_averaging", "robbins_monro")

    def __init__(self, inner, target_accept_prob, rule: str = "dual_averaging",
                 num_adaptation_steps=None, adaptation_rate: float = 1.0,
                 gamma: float = 0.05, t0: float = 10.0, kappa: float = 0.75):
        if rule not in self.RULES:
            raise ValueError(f"rule must be one of {self.RULES}, got {rule!r}.")
        self.inner = inner
        self.target_accept_prob = target_accept_prob
        self.rule = rule
        self.num_adaptation_steps = num_adaptation_steps
        self.adaptation_rate = adaptation_rate
        self.gamma, self.t0, self.kappa = gamma, t0, kappa

    def bootstrap_results(self, x) -> AdaptationResults:
        inner = self.inner.bootstrap_results(x)
        log_h = tf.math.log(inner.step_size)
        zero = tf.zeros([], x.dtype)
        return AdaptationResults(inner, tf.constant(0, tf.int32), zero, log_h,
                                 tf.math.log(10.0 * inner.step_size))

    def one_step(self, x, results: AdaptationResults, seed):
        x, inner = self.inner.one_step(x, results.inner_results, seed)
        dtype = inner.step_size.dtype
        prob = tf.reduce_mean(tf.exp(tf.minimum(inner.log_accept_ratio, 0.0)))
        target = tf.cast(self.target_accept_prob, dtype)
        step = results.step + 1
        if self.rule == "dual_averaging":
            t = tf.cast(step, dtype)
            w = 1.0 / (t + self.t0)
            error_sum = (1.0 - w) * results.error_sum + w * (target - prob)
            log_h = results.log_anchor - tf.sqrt(t) / self.gamma * error_sum
            eta = t ** (-self.kappa)
            log_avg = eta * log_h + (1.0 - eta) * results.log_averaged_step_size
        else:
            error_sum = results.error_sum
            log_h = tf.math.log(inner.step_size) + tf.cast(self.adaptation_rate, dtype) * (
                prob - target)
            log_avg = log_h
        if self.num_adaptation_steps is not None:
            active = results.step < tf.cast(self.num_adaptation_steps, tf.int32)
            log_h = tf.where(active, log_h, tf.math.log(inner.step_size))
            log_avg = tf.where(active, log_avg, results.log_averaged_step_size)
            error_sum = tf.where(active, error_sum, results.error_sum)
        inner = inner._replace(step_size=tf.exp(log_h))
        return x, AdaptationResults(inner, step, error_sum, log_avg, results.log_anchor)

    @staticmethod
    def averaged_step_size(results: AdaptationResults):
        """The step size to use after adaptation (dual averaging: the averaged one)."""
        return tf.exp(results.log_averaged_step_size)


def step_size_of(results):
    """The step size in force in the results of a kernel or of its adaptation wrapper."""
    if isinstance(results, AdaptationResults):
        return results.inner_results.step_size
    return results.step_size


def inner_results(results) -> KernelResults:
    """The `KernelResults` inside (possibly adaptation-wrapped) results."""
    return results.inner_results if isinstance(results, AdaptationResults) else results


KERNELS.register("ula", lambda target, step_size, **_: LangevinKernel(target, step_size))
KERNELS.register("mala", lambda target, step_size, **_: LangevinKernel(target, step_size,
                                                                        metropolize=True))
KERNELS.register("hmc", lambda target, step_size, num_leapfrog_steps=5, **_: HMCKernel(
    target, step_size, num_leapfrog_steps))
