"""Annealed importance sampling (Neal 2001) of log Z = log ∫ exp f(x) dx.

M chains run through the densities `π_k ∝ q^{1−β_k} exp(β_k f)`, 0 = β_0 < β_1 < … < β_K = 1:
x_0 ~ q, and for k = 1..K the log-weight gains `(β_k − β_{k−1}) (f(x_{k−1}) − log q(x_{k−1}))`
before x moves by an MCMC transition leaving π_k invariant. log Ẑ, its standard error and the
ESS follow from the final log-weights as for importance sampling.

The transitions are kernels of `dde.mcmc` (registered names "hmc", "mala", or any callable
`make_kernel(target_fn, step_size)` returning a kernel of that protocol)
run in coordinates whitened by the proposal's covariance, z = L⁻¹(x − μ); the target
evaluation carries f and log q (and their gradients) as `extra`, so a new temperature costs
no new evaluation. The step size is shared by the chains of a batch and adapted after every
transition by `dde.mcmc.StepSizeAdaptation`'s Robbins–Monro rule. Temperature schedules are
registered in `SCHEDULES`.

With reference draws of the target, the same chains also run backwards, from those draws
through the reversed schedule (bidirectional Monte Carlo, Grosse et al. 2015): their weights
estimate 1/Z, giving a stochastic upper bound of log Z beside the forward lower one. When
the two do not agree within their errors the estimate is marked unreliable.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

import dde.mcmc as mcmc
from dde._cache import compiled_function, weak
from dde._registry import Registry
from dde._validation import check_positive
from dde.partition.importance import as_log_density, result_from_summary
from dde.partition.proposals import cholesky_factor
from dde.partition.results import LogPartitionResult
from dde.partition.weights import group_stderr, reported_stderr, summarize_log_weights
from dde.progress import progress_bar

SCHEDULES = Registry("AIS schedule")

#: Default initial step size (whitened coordinates) and target acceptance rate per kernel.
#: The rates are higher than those optimal for plain MCMC: chains that stall at a
#: temperature inflate the variance of the AIS weights.
KERNEL_DEFAULTS = {"hmc": (lambda d: 0.5 * d ** -0.25, 0.85),
                   "mala": (lambda d: 0.5 * d ** (-2.0 / 3.0), 0.8)}


@SCHEDULES.register("linear")
def linear_schedule(num_steps: int) -> np.ndarray:
    """β_k = k/K."""
    return np.linspace(0.0, 1.0, num_steps + 1)


@SCHEDULES.register("geometric")
def geometric_schedule(num_steps: int, beta_min: float = 1e-4) -> np.ndarray:
    """β_k geometric from beta_min to 1 for k ≥ 1 (β_0 = 0)."""
    if not 0.0 < beta_min < 1.0:
        raise ValueError(f"beta_min must be in (0, 1), got {beta_min}.")
    return np.concatenate([[0.0], np.geomspace(beta_min, 1.0, num_steps)])


@SCHEDULES.register("sigmoid")
def sigmoid_schedule(num_steps: int, sharpness: float = 4.0) -> np.ndarray:
    """Grosse et al. 2013: β̃_k = σ(sharpness·(2k/K − 1)), rescaled to [0, 1]."""
    check_positive(sharpness, "sharpness")
    k = num_steps
    s = 1.0 / (1.0 + np.exp(-sharpness * (2.0 * np.arange(k + 1) / k - 1.0)))
    betas = (s - s[0]) / (s[-1] - s[0])
    betas[0], betas[-1] = 0.0, 1.0
    return betas


def ais_schedule(schedule="sigmoid", num_steps: int = 200, sharpness: float = 4.0,
                 beta_min: float = 1e-4) -> np.ndarray:
    """Inverse temperatures 0 = β_0 < β_1 < … < β_K = 1 (K = num_steps), float64 [K + 1].

    schedule: a name in `SCHEDULES` ("linear", "geometric", "sigmoid") or an array, which is
    validated (1-D, non-decreasing, from 0 to 1) and returned.
    """
    if not isinstance(schedule, str):
        betas = np.asarray(schedule, dtype=np.float64)
        if betas.ndim != 1 or betas.size < 2:
            raise ValueError(f"A schedule array must be 1-D with at least 2 entries, got "
                             f"shape {betas.shape}.")
        if not np.isfinite(betas).all() or betas[0] != 0.0 or betas[-1] != 1.0 or np.any(
                np.diff(betas) < 0):
            raise ValueError("A schedule array must be non-decreasing from exactly 0 to 1.")
        return betas
    check_positive(num_steps, "num_steps", integer=True)
    if schedule not in SCHEDULES:
        raise ValueError(f"Unknown schedule {schedule!r}; expected one of "
                         f"{SCHEDULES.names()} or an array of inverse temperatures.")
    if schedule == "geometric":
        return geometric_schedule(num_steps, beta_min)
    if schedule == "sigmoid":
        return sigmoid_schedule(num_steps, sharpness)
    return SCHEDULES.lookup(schedule)(num_steps)


def whitening(proposal, d, seed):
    """(mean [d], lower Cholesky factor L [d, d]) of the proposal's covariance (float64),
    from `mean()`/`covariance()` when implemented, else from an independent pilot sample."""
    try:
        mean = np.asarray(proposal.mean(), dtype=np.float64)
        cov = np.asarray(proposal.covariance(), dtype=np.float64)
    except (NotImplementedError, TypeError, ValueError):
        n = max(20 * d, 2000)
        pilot_seed = tf.cast(tf.random.experimental.stateless_fold_in(
            tf.constant(seed, tf.int64), -1), tf.int32)
        x = np.asarray(proposal.sample(n, seed=pilot_seed), dtype=np.float64)
        mean, cov = x.mean(0), np.atleast_2d(np.cov(x, rowvar=False))
    if mean.shape != (d,) or cov.shape != (d, d) or not (np.isfinite(mean).all()
                                                         and np.isfinite(cov).all()):
        raise ValueError("Could not obtain a finite mean and covariance of the proposal.")
    return mean, cholesky_factor(cov, 1.0, "the proposal")


def tempering_functions(log_density_fn, proposal, make_kernel, jit_compile):
    """Compiled pieces of AIS for one (log_density_fn, proposal, kernel): `init` (kernel
    state at x₀), `advance` (temperatures k_start ≤ k < k_end < K: weight increment, then
    transitions) and `finish` (the last increment). Whitening, schedule, step-size settings
    and the number of leapfrog / inner steps are tensor arguments, so other settings reuse
    the same trace."""
    get_f, get_q = weak(log_density_fn), weak(proposal)
    f64 = tf.float64

    def pieces(z, mu, tril):
        """f, log q at x = μ + L z and their gradients w.r.t. z (= Lᵀ∇ₓ), float64."""
        q = get_q()
        x = mu + tf.linalg.matvec(tril, z)
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(x)
            xq = tf.cast(x, q.dtype)
            f = as_log_density(get_f(), xq)
            lq = tf.cast(q.log_prob(xq), f64)
        gf, glq = tape.gradient(f, x), tape.gradient(lq, x)
        del tape
        gf = tf.zeros_like(x) if gf is None else tf.cast(gf, f64)
        glq = tf.zeros_like(x) if glq is None else tf.cast(glq, f64)
        return (f, lq, tf.linalg.matvec(tril, gf, transpose_a=True),
                tf.linalg.matvec(tril, glq, transpose_a=True))

    def tempered(beta, f, lq, gf, glq):
        return (1.0 - beta) * lq + beta * f, (1.0 - beta) * glq + beta * gf

    def target_at(beta, mu, tril):
        def target(z):
            f, lq, gf, glq = pieces(z, mu, tril)
            return mcmc.Evaluation(*tempered(beta, f, lq, gf, glq), (f, lq, gf, glq))
        return target

    def kernel_at(beta, mu, tril, num_leapfrog, target_accept, rate, step_size=1.0):
        inner = make_kernel(target_at(beta, mu, tril), step_size, num_leapfrog)
        return mcmc.StepSizeAdaptation(inner, target_accept, rule="robbins_monro",
                                       adaptation_rate=rate)

    def build():
        @tf.function(jit_compile=jit_compile, reduce_retracing=True)
        def init(x0, mu, tril, step_size):
            z0 = tf.transpose(tf.linalg.triangular_solve(
                tril, tf.transpose(tf.cast(x0, f64) - mu), lower=True))
            kernel = kernel_at(tf.constant(0.0, f64), mu, tril, 1, 0.5, 0.0, step_size)
            return z0, kernel.bootstrap_results(z0)

        @tf.function(jit_compile=jit_compile, reduce_retracing=True)
        def advance(state, betas, k_start, k_end, seed, mu, tril, num_leapfrog, num_inner,
                    target_accept, rate):
            def body(k, z, results, log_w, acc_sum, acc_n, n_bad):
                inner = results.inner_results
                f, lq, gf, glq = inner.extra
                log_w = log_w + (betas[k] - betas[k - 1]) * (f - lq)
                tlp, grad = tempered(betas[k], f, lq, gf, glq)
                results = results._replace(
                    inner_results=inner._replace(target_log_prob=tlp, grad=grad))
                kernel = kernel_at(betas[k], mu, tril, num_leapfrog, target_accept, rate)

                def inner_step(j, z, results, acc_sum, acc_n, n_bad):
                    s = tf.random.experimental.stateless_fold_in(
                        seed, tf.cast(k * num_inner + j, tf.int64))
                    z, results = kernel.one_step(z, results, s)
                    ratio = results.inner_results.log_accept_ratio
                    prob = tf.reduce_mean(tf.exp(tf.minimum(ratio, 0.0)))
                    bad = tf.reduce_sum(tf.cast(~tf.math.is_finite(ratio), tf.int64))
                    return j + 1, z, results, acc_sum + prob, acc_n + 1.0, n_bad + bad

                _, z, results, acc_sum, acc_n, n_bad = tf.while_loop(
                    lambda j, *_: j < num_inner, inner_step,
                    (tf.constant(0, tf.int32), z, results, acc_sum, acc_n, n_bad))
                return k + 1, z, results, log_w, acc_sum, acc_n, n_bad

            out = tf.while_loop(lambda k, *_: k < k_end, body, (k_start, *state))
            return out[1:]

        @tf.function(jit_compile=jit_compile, reduce_retracing=True)
        def finish(state, betas):
            f, lq = state[1].inner_results.extra[:2]
            k = tf.shape(betas)[0] - 1
            return state[2] + (betas[k] - betas[k - 1]) * (f - lq)

        return init, advance, finish

    return build


def resolve_kernel(kernel, d, step_size, target_accept_rate):
    """(make_kernel callable, initial step size, target acceptance, name)."""
    if isinstance(kernel, str):
        if kernel not in ("hmc", "mala"):
            raise ValueError(f"Unknown AIS kernel {kernel!r}; expected 'hmc', 'mala' or a "
                             "callable make_kernel(target_fn, step_size) (AIS "
                             "needs transitions that leave each tempered density invariant).")
        default_h, default_rate = KERNEL_DEFAULTS[kernel]
        registered = mcmc.KERNELS.lookup(kernel)
        name = kernel

        def make(target, h, num_leapfrog):
            return registered(target, h, num_leapfrog_steps=num_leapfrog)
    elif callable(kernel):
        if step_size is None:
            raise ValueError("step_size is required with a custom AIS kernel.")
        default_h, default_rate = None, 0.8
        name = getattr(kernel, "__name__", "custom")
        get_kernel = weak(kernel)  # held weakly: it is a companion of the cached functions

        def make(target, h, num_leapfrog):
            return get_kernel()(target, h)
    else:
        raise TypeError(f"kernel must be 'hmc', 'mala' or a callable, got {kernel!r}.")
    step_size = default_h(d) if step_size is None else step_size
    check_positive(step_size, "step_size")
    target = default_rate if target_accept_rate is None else target_accept_rate
    if not 0.0 < target < 1.0:
        raise ValueError(f"target_accept_rate must be in (0, 1), got {target}.")
    return make, float(step_size), float(target), name


def annealed_importance_sampling(log_density_fn, proposal, d, m, batch_size, seed, progress,
                                 nan_policy, jit_compile, num_steps: int = 200,
                                 schedule="sigmoid", kernel="hmc",
                                 num_leapfrog_steps: int = 5, steps_per_temperature: int = 1,
                                 step_size: float | None = None,
                                 target_accept_rate: float | None = None,
                                 adapt_step_size: bool = True,
                                 adaptation_rate: float = 1.0,
                                 min_ess: float = 100.0,
                                 reference_samples=None) -> LogPartitionResult:
    """AIS estimate of log Z with M = m chains (seed: int64 [2]); see
    `dde.partition.estimate_log_partition` for the arguments."""
    betas_np = ais_schedule(schedule, num_steps)
    num_temps = len(betas_np) - 1  # K
    check_positive(num_leapfrog_steps, "num_leapfrog_steps", integer=True)
    check_positive(steps_per_temperature, "steps_per_temperature", integer=True)
    check_positive(adaptation_rate, "adaptation_rate", allow_zero=True)
    make_kernel, h0, target_accept, kernel_name = resolve_kernel(kernel, d, step_size,
                                                                  target_accept_rate)
    # One compiled set per (f, proposal, kernel): a custom kernel is a companion by identity.
    companions = (proposal,) if isinstance(kernel, str) else (proposal, kernel)
    key = ("ais", kernel if isinstance(kernel, str) else "custom", bool(jit_compile))
    leapfrog = int(num_leapfrog_steps) if kernel_name == "hmc" else 1
    n_inner = int(steps_per_temperature)

    f64 = tf.float64
    mean_np, tril_np = whitening(proposal, d, seed)
    build = tempering_functions(log_density_fn, proposal, make_kernel, jit_compile)
    init, advance, finish = compiled_function(log_density_fn, key, build,
                                              companions=companions)
    mu, tril, betas = (tf.constant(a, f64) for a in (mean_np, tril_np, betas_np))
    settings = (tf.constant(leapfrog, tf.int32), tf.constant(n_inner, tf.int32),
                tf.constant(target_accept, f64),
                tf.constant(adaptation_rate if adapt_step_size else 0.0, f64))

    def run(betas, num_chains, initial_states, seed_base, bar_offset):
        """The chains of AIS over `betas` in groups of `batch_size`, each group started
        from `initial_states(group, n, seed)`; returns (log-weights per group, stats)."""
        num_groups = -(-num_chains // batch_size)
        groups, stats = [], {"accepted": 0.0, "transitions": 0.0, "bad": 0, "h": []}
        for g in range(num_groups):
            n = min(batch_size, num_chains - g * batch_size)
            group_seed = tf.random.experimental.stateless_fold_in(seed_base, g)
            init_seed, chain_seed = tf.unstack(
                tf.random.experimental.stateless_split(group_seed, 2))
            z0, results = init(initial_states(g, n, init_seed), mu, tril, tf.constant(h0, f64))
            state = (z0, results, tf.zeros([n], f64), tf.constant(0.0, f64),
                     tf.constant(0.0, f64), tf.constant(0, tf.int64))
            for k0 in range(1, num_temps, chunk):
                k1 = min(k0 + chunk, num_temps)
                state = advance(state, betas, tf.constant(k0, tf.int32),
                                tf.constant(k1, tf.int32), chain_seed, mu, tril, *settings)
                if bar is not None:
                    bar.update(bar_offset + g * num_temps + k1 - 1)
            groups.append(finish(state, betas).numpy())
            if bar is not None:
                bar.update(bar_offset + (g + 1) * num_temps)
            stats["h"].append(float(mcmc.step_size_of(state[1]).numpy()))
            stats["accepted"] += float(state[3].numpy())
            stats["transitions"] += float(state[4].numpy())
            stats["bad"] += int(state[5].numpy())
        return groups, stats

    base = tf.constant(seed, tf.int64)
    num_reverse = 0 if reference_samples is None else min(len(reference_samples), m)
    total = (-(-m // batch_size) + -(-num_reverse // batch_size)) * num_temps
    bar = progress_bar(total, "temperature", progress)
    chunk = max(1, num_temps // 50) if bar is not None else num_temps
    all_log_w, stats = run(
        betas, m, lambda g, n, s: proposal.sample(n, seed=tf.cast(s, tf.int32)), base, 0)
    acc_total, acc_count = stats["accepted"], stats["transitions"]
    bad_total, final_h = stats["bad"], stats["h"]
    upper = None
    if num_reverse:
        # Reverse AIS (bidirectional Monte Carlo, Grosse et al. 2015): from draws of the
        # target through the reversed schedule, mean exp(log w') estimates 1/Z, so
        # −log mean w' is a stochastic upper bound of log Z (the forward estimate is a lower
        # one). With draws of the target, the two bracket log Z.
        refs = tf.constant(np.asarray(reference_samples, np.float64)[:num_reverse],
                           proposal.dtype)
        reverse_w, _ = run(tf.reverse(betas, [0]), num_reverse,
                           lambda g, n, s: refs[g * batch_size:g * batch_size + n],
                           tf.random.experimental.stateless_fold_in(base, -7),
                           -(-m // batch_size) * num_temps)
        rev = summarize_log_weights(np.concatenate(reverse_w), "zero")
        upper = (-rev.log_z, reported_stderr(rev))
    log_w = np.concatenate(all_log_w)
    summary = summarize_log_weights(log_w, nan_policy)
    # The groups (batches of chains) are independent; the chains of a group share their
    # step-size adaptation, so the spread of the group estimates is an SE free of that.
    sizes = [len(w) for w in all_log_w]
    replicate_se = group_stderr(np.where(np.isnan(log_w), -np.inf, log_w), sizes)
    m = summary.num_samples
    evaluations = m * (1 + (num_temps - 1) * n_inner * leapfrog)
    diagnostics = {
        "proposal": proposal.name, "kernel": kernel_name, "num_steps": num_temps,
        "schedule": schedule if isinstance(schedule, str) else "custom",
        "steps_per_temperature": n_inner, "num_leapfrog_steps": leapfrog,
        "acceptance_rate": acc_total / acc_count if acc_count else float("nan"),
        "final_step_size": float(np.mean(final_h)), "num_nonfinite_proposals": bad_total,
        "batch_size": batch_size,
    }
    diagnostics["num_groups"] = len(sizes)
    return result_from_summary(summary, "ais", seed, min_ess, replicate_stderr=replicate_se,
                               num_replicates=len(sizes) if len(sizes) > 1 else m,
                               upper=upper, num_evaluations=evaluations,
                               diagnostics=diagnostics, log_weights=log_w)


