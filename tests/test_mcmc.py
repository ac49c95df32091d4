"""Tests of dde.mcmc: the ULA, MALA and HMC kernels and the step-size adaptation against a
correlated Gaussian whose moments are known, the protocol (bootstrap_results / one_step,
namedtuple results, carried `extra`), and rejection of non-finite proposals."""
import numpy as np
import pytest
import tensorflow as tf

from dde import mcmc

COV = np.array([[1.5, 0.6], [0.6, 0.8]])
PREC = np.linalg.inv(COV)


def gaussian_log_prob(x):
    return -0.5 * tf.reduce_sum(x * tf.linalg.matvec(tf.constant(PREC, x.dtype), x), -1)


def run(kernel, x0, steps, seed=0):
    @tf.function(autograph=False)
    def chain(x):
        results = kernel.bootstrap_results(x)

        def body(i, x, results, n_acc):
            s = tf.random.experimental.stateless_fold_in(tf.constant([seed, 1], tf.int64), i)
            x, results = kernel.one_step(x, results, s)
            inner = mcmc.inner_results(results)
            return i + 1, x, results, n_acc + tf.cast(inner.is_accepted, tf.float64)

        _, x, results, n_acc = tf.while_loop(
            lambda i, *_: i < steps, body,
            (tf.constant(0), x, results, tf.zeros(tf.shape(x)[:1], tf.float64)))
        return x, results, tf.reduce_mean(n_acc) / steps
    return chain(tf.constant(x0))


@pytest.mark.parametrize("name,step", [("mala", 0.4), ("hmc", 0.3)])
def test_metropolized_kernels_sample_the_exact_gaussian(name, step):
    """4000 independent chains, 150 steps from an over-dispersed start: the final states are
    exact draws of N(0, Σ). Means within 4.5 SE (SE = sqrt(Σ_ii/n)) and covariance entries
    within 4.5 SE ((Σ_ii Σ_jj + Σ_ij²)/n); for a correct kernel all six checks pass except
    with probability below 1e-4 (fixed seeds)."""
    n = 4000
    x0 = 3.0 * np.random.default_rng(0).normal(size=(n, 2))
    kernel = mcmc.KERNELS.lookup(name)(mcmc.autodiff_target(gaussian_log_prob), step)
    x, results, rate = run(kernel, x0, 150)
    x = x.numpy()
    assert isinstance(results, mcmc.KernelResults) and 0.3 < float(rate) < 1.0
    se = np.sqrt(np.diag(COV) / n)
    assert np.all(np.abs(x.mean(0)) < 4.5 * se), x.mean(0)
    se_cov = np.sqrt((np.outer(np.diag(COV), np.diag(COV)) + COV**2) / n)
    assert np.all(np.abs(np.cov(x, rowvar=False) - COV) < 4.5 * se_cov)


def test_ula_kernel_has_the_known_step_size_bias():
    """ULA on N(0, 1) (1-D) has stationary variance 1/(1 − h/2) = 4/3 at h = 0.5: 20,000
    chains after 100 steps (≫ the relaxation time 1/h); within 4 SE (SE = v·sqrt(2/n)), a
    false failure has probability < 1e-4."""
    n, h = 20_000, 0.5
    kernel = mcmc.LangevinKernel(mcmc.autodiff_target(lambda x: -0.5 * tf.reduce_sum(x**2, -1)),
                                 h)
    x, results, rate = run(kernel, np.zeros((n, 1)), 100)
    v, exact = float(np.var(x.numpy())), 1.0 / (1.0 - h / 2.0)
    assert abs(v - exact) < 4 * exact * np.sqrt(2.0 / n), v
    assert float(rate) == 1.0  # ULA accepts every move


@pytest.mark.parametrize("rule", ["dual_averaging", "robbins_monro"])
def test_step_size_adaptation_reaches_the_target_acceptance(rule):
    """Both rules move a far too large initial step (h = 20) until the mean acceptance
    probability is near the target 0.6: over the last 100 of 400 steps of 1000 chains the
    acceptance rate is within 0.08 of it (its standard error is about 0.005)."""
    target = mcmc.autodiff_target(gaussian_log_prob)
    kernel = mcmc.StepSizeAdaptation(mcmc.LangevinKernel(target, 20.0, metropolize=True), 0.6,
                                     rule=rule, adaptation_rate=0.5)
    x, results, _ = run(kernel, np.random.default_rng(1).normal(size=(1000, 2)), 300)
    h = (mcmc.StepSizeAdaptation.averaged_step_size(results) if rule == "dual_averaging"
         else mcmc.step_size_of(results))
    fixed = mcmc.LangevinKernel(target, h, metropolize=True)
    _, _, rate = run(fixed, x.numpy(), 100, seed=5)
    assert abs(float(rate) - 0.6) < 0.08, (float(h), float(rate))
    assert 0.05 < float(h) < 5.0


def test_extra_is_carried_with_the_accepted_state():
    """A target's `extra` always belongs to the current state (here extra = x itself)."""
    def target(x):
        ev = mcmc.autodiff_target(gaussian_log_prob)(x)
        return mcmc.Evaluation(ev.log_prob, ev.grad, (2.0 * x,))

    for kernel in (mcmc.LangevinKernel(target, 0.5, metropolize=True),
                   mcmc.HMCKernel(target, 0.4, 3)):
        x, results, _ = run(kernel, np.random.default_rng(2).normal(size=(200, 2)), 20)
        np.testing.assert_allclose(results.extra[0].numpy(), 2.0 * x.numpy())


def test_non_finite_proposals_are_rejected():
    """A target that is −inf beyond |x₁| > 1: Metropolis kernels never move there (every
    such proposal has log α = −inf), so all chains stay finite and inside."""
    def log_prob(x):
        inside = tf.abs(x[:, 0]) < 1.0
        return tf.where(inside, -0.5 * tf.reduce_sum(x**2, -1), -np.inf * tf.ones_like(x[:, 0]))

    kernel = mcmc.LangevinKernel(mcmc.autodiff_target(log_prob), 0.5, metropolize=True)
    x, results, _ = run(kernel, np.zeros((500, 2)), 50)
    x = x.numpy()
    assert np.isfinite(x).all() and np.all(np.abs(x[:, 0]) < 1.0)
    assert np.all(np.isfinite(results.target_log_prob.numpy()))


def test_bad_arguments():
    with pytest.raises(ValueError, match="rule"):
        mcmc.StepSizeAdaptation(None, 0.5, rule="newton")
    with pytest.raises(ValueError, match="Unknown MCMC kernel 'nuts'"):
        mcmc.KERNELS.lookup("nuts")
    with pytest.raises(ValueError, match="batch"):
        mcmc.flat_log_prob(tf.zeros([2, 3]))
