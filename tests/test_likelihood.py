"""Tests of dde.likelihood: probability-flow log-likelihoods against known answers, the
Hutchinson estimator, the solver guard, the DDE bridge and input validation."""
import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy import linalg, stats

from dde._cache import cached_functions
from dde.datasets import toy
from dde.likelihood import (
    ODESolverError,
    ProbabilityFlow,
    probability_flow_log_prob,
)
from dde.models import NoiseConditionalDDE
from dde.nets import score_mlp
from dde.score import DDEScore, ScoreNetwork
from dde.sde import VESDE, VPSDE

EPS = 1e-5


def gaussian_score(sde, mean, cov):
    """Exact score of data N(mean, cov) under an SDE: −(α²Σ + σ²I)⁻¹(x − α mean)."""
    mean = tf.constant(mean, tf.float64)
    cov = tf.constant(cov, tf.float64)
    d = cov.shape[0]

    def score(x, t):
        alpha, std = sde.marginal_coefficients(tf.cast(t, tf.float64))
        total = tf.square(alpha) * cov + tf.square(std) * tf.eye(d, dtype=tf.float64)
        diff = tf.cast(x, tf.float64) - alpha * mean
        return -tf.transpose(tf.linalg.solve(total, tf.transpose(diff)))
    return score


def gaussian_marginal(sde, mean, cov, t):
    alpha, std = (float(v) for v in sde.marginal_coefficients(tf.constant(t, tf.float64)))
    return stats.multivariate_normal(alpha * np.asarray(mean),
                                     alpha ** 2 * np.asarray(cov) + std ** 2 * np.eye(len(cov)))


COV = np.array([[0.6, 0.25, 0.0], [0.25, 1.3, -0.3], [0.0, -0.3, 0.4]])
# One score function object shared by the tests: compiled solves are cached per score object
# and setting, so tests with equal settings reuse one trace.
SCORE = gaussian_score(VPSDE(), np.zeros(3), COV)


def test_gaussian_exact_score_matches_analytic_log_density():
    """Zero-mean Gaussian data, the default N(0, I) prior (whose mismatch with p_T is
    ~α_T² ≈ 4e-5): log p within 1e-3 nats of the analytic log-density at T_ε."""
    sde = VPSDE()
    x = np.random.default_rng(0).multivariate_normal(np.zeros(3), COV, size=64)
    x = np.concatenate([x, [[2.5, -2.0, 1.5]]])  # and a point in the tail
    result = probability_flow_log_prob(SCORE, sde, x)
    expected = gaussian_marginal(sde, np.zeros(3), COV, EPS).logpdf(x)
    assert result.log_prob.dtype == np.float64 and result.log_prob.shape == (65,)
    assert np.max(np.abs(result.log_prob - expected)) < 1e-3
    np.testing.assert_allclose(result.log_prob, result.prior_log_prob + result.delta_log_prob)
    assert result.latent.shape == (65, 3) and result.num_batches == 1
    assert 20 < result.num_function_evaluations < 2000


@pytest.mark.parametrize("sde", [VPSDE(), VESDE(0.01, 20.0)], ids=["vp", "ve"])
def test_marginal_prior_removes_the_prior_mismatch(sde):
    """Gaussian data far from the origin (mean (6, −4, 3)), its exact score: with the SDE's
    nominal prior (N(0, I) for VP, N(0, σ_max² I) for VE) single points are off by more than
    1e-2 nats; with `sde.marginal_prior` of the data's moments — N(α_T m, α_T² C + σ_T² I),
    exact for Gaussian data — every point is within 1e-3 nats of the analytic log-density
    (what remains is the solver's error at rtol = atol = 1e-5)."""
    mean = np.array([6.0, -4.0, 3.0])
    score = gaussian_score(sde, mean, COV)
    rng = np.random.default_rng(3)
    x = rng.multivariate_normal(mean, COV, size=32)
    expected = gaussian_marginal(sde, mean, COV, EPS).logpdf(x)
    nominal = probability_flow_log_prob(score, sde, x)
    assert np.max(np.abs(nominal.log_prob - expected)) > 1e-2
    x_train = rng.multivariate_normal(mean, COV, size=200_000)
    prior = sde.marginal_prior(x_train)
    matched = probability_flow_log_prob(score, sde, x, prior_log_prob=prior)
    assert np.max(np.abs(matched.log_prob - expected)) < 1e-3
    exact = probability_flow_log_prob(score, sde, x, prior_log_prob=sde.marginal_prior(
        (mean, COV)))
    assert np.max(np.abs(exact.log_prob - expected)) < 1e-3
    with pytest.raises(ValueError, match="finite"):
        sde.marginal_prior(np.array([[np.nan, 0.0, 0.0]] * 3))


@pytest.mark.parametrize("solver", ["dopri5", "tsit5", "tfp"])
def test_every_solver_meets_the_tolerance(solver):
    """The three Runge–Kutta solvers of `dde.ode` on the exact Gaussian case: log p within
    1e-3 nats of the analytic value (their evaluation counts: tests/test_ode.py and the
    likelihood benchmark)."""
    sde = VPSDE()
    x = np.random.default_rng(0).multivariate_normal(np.zeros(3), COV, size=64)
    expected = gaussian_marginal(sde, np.zeros(3), COV, EPS).logpdf(x)
    result = probability_flow_log_prob(SCORE, sde, x, solver=solver)
    assert np.max(np.abs(result.log_prob - expected)) < 1e-3


def test_exact_prior_isolates_the_solver_error():
    """Non-zero mean: with p_T itself as the prior the solve is within 1e-3 nats; with the
    SDE's N(0, I) prior the known mismatch log p_T(z) − log N(z; 0, I) remains."""
    sde, mean = VPSDE(), np.array([1.0, -0.5, 2.0])
    x = np.random.default_rng(1).multivariate_normal(mean, COV, size=32)
    score = gaussian_score(sde, mean, COV)
    p_T = gaussian_marginal(sde, mean, COV, 1.0)
    exact_prior = probability_flow_log_prob(
        score, sde, x, prior_log_prob=lambda z: tf.constant(p_T.logpdf(z.numpy())))
    expected = gaussian_marginal(sde, mean, COV, EPS).logpdf(x)
    assert np.max(np.abs(exact_prior.log_prob - expected)) < 1e-3
    default = probability_flow_log_prob(score, sde, x)
    mismatch = p_T.logpdf(default.latent) - stats.norm.logpdf(default.latent).sum(1)
    np.testing.assert_allclose(default.log_prob + mismatch, expected, atol=1e-3)


def test_hutchinson_is_unbiased():
    """Each row holds one Rademacher (or Gaussian) probe, fixed along its solve: 400 copies of
    a point give 400 independent estimates; their mean is within 4 standard errors (plus
    the 1e-3 solver tolerance) of the exact log-density (chance failure ≈ 1e-4 per point)."""
    sde, score = VPSDE(), SCORE
    points = np.array([[0.3, -0.8, 0.2], [1.5, 1.0, -0.6]])
    x = np.repeat(points, 400, axis=0)
    expected = gaussian_marginal(sde, np.zeros(3), COV, EPS).logpdf(points)
    stds = {}
    for probe in ("rademacher", "gaussian"):
        result = probability_flow_log_prob(score, sde, x, divergence="hutchinson", probe=probe,
                                           seed=11)
        est = result.log_prob.reshape(2, 400)
        se = est.std(axis=1, ddof=1) / math.sqrt(400)
        assert np.all(est.std(axis=1) > 1e-3)  # a real estimator, not the exact trace
        assert np.all(np.abs(est.mean(axis=1) - expected) < 4 * se + 1e-3), (est.mean(1),
                                                                            expected, se)
        stds[probe] = est.std(axis=1)
        again = probability_flow_log_prob(score, sde, x, divergence="hutchinson", probe=probe,
                                          seed=11)
        np.testing.assert_array_equal(again.log_prob, result.log_prob)  # seeded
    # Four probes per row average four estimates: about half the standard deviation.
    four = probability_flow_log_prob(score, sde, x, divergence="hutchinson", num_probes=4,
                                     seed=12).log_prob.reshape(2, 400)
    ratio = four.std(axis=1) / stds["rademacher"]
    assert np.all((ratio > 0.35) & (ratio < 0.65)), ratio


@pytest.mark.parametrize("sde", [VESDE(0.1, 3.0), VPSDE()], ids=["ve", "vp"])
def test_linear_ode_gives_its_log_determinant(sde):
    """A linear score s = Mx (M not symmetric) makes the flow linear: x(T) = Φ x₀ with
    Φ = expm(∫ (a(t)I − ½g²M) dt) and Δ = log det Φ = ∫ (a d − ½g² tr M) dt, the same for
    every point. Rademacher Hutchinson is exact on a diagonal M."""
    d = 3
    M = np.array([[-1.0, 0.4, 0.0], [-0.2, -0.5, 0.3], [0.1, 0.0, -2.0]])
    Mt = tf.constant(M, tf.float64)

    def score(x, t):
        return tf.matmul(x, Mt, transpose_b=True)

    # ∫ g² dt = Δσ²-type integrals: VE: σ(T)² − σ(ε)²; VP: B(T) − B(ε) (and ∫a = −½ΔB).
    if isinstance(sde, VESDE):
        s = [float(sde.sigma(tf.constant(v, tf.float64))) for v in (EPS, 1.0)]
        int_g2, int_a = s[1] ** 2 - s[0] ** 2, 0.0
    else:
        b = [float(sde.integrated_beta(tf.constant(v, tf.float64))) for v in (EPS, 1.0)]
        int_g2, int_a = b[1] - b[0], -0.5 * (b[1] - b[0])
    phi = linalg.expm(int_a * np.eye(d) - 0.5 * int_g2 * M)
    log_det = np.linalg.slogdet(phi)[1]
    x = np.random.default_rng(3).normal(size=(10, d))
    # Tight tolerances: the exact log-determinant to 2e-6 relative.
    result = probability_flow_log_prob(score, sde, x, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(result.delta_log_prob, log_det, rtol=2e-6)
    np.testing.assert_allclose(result.latent, x @ phi.T, rtol=2e-6, atol=1e-7)
    diag = np.diag(np.diag(M))
    diag_t = tf.constant(diag, tf.float64)
    hutch = probability_flow_log_prob(lambda x, t: tf.matmul(x, diag_t), sde, x,
                                      divergence="hutchinson", seed=0, rtol=1e-11,
                                      atol=1e-9, jit_compile=False)
    expected = int_a * d - 0.5 * int_g2 * np.trace(diag)
    np.testing.assert_allclose(hutch.delta_log_prob, expected, rtol=1e-6)


def test_batches_and_compiled_flow_reuse():
    sde = VPSDE()
    x = np.random.default_rng(4).multivariate_normal(np.zeros(3), COV, size=50)
    flow = ProbabilityFlow(SCORE, sde)
    whole = flow.log_prob(x, batch_size=50)
    split = flow.log_prob(x, batch_size=20)
    assert split.num_batches == 3 and whole.num_batches == 1
    np.testing.assert_allclose(split.log_prob, whole.log_prob, atol=1e-4)
    assert split.num_function_evaluations > whole.num_function_evaluations
    assert cached_functions(flow)[("solve", 3)].experimental_get_tracing_count() == 1  # any batch size, one trace
    # Solver failures surface with the time reached; the budget is a variable (no retrace).
    flow.max_num_steps = 3
    with pytest.raises(ODESolverError, match="step budget was exceeded") as info:
        flow.log_prob(x)
    assert EPS < info.value.time_reached < 0.5
    assert f"t = {info.value.time_reached:.6g}" in str(info.value)
    flow.max_num_steps = 10_000
    np.testing.assert_array_equal(flow.log_prob(x, batch_size=50).log_prob, whole.log_prob)
    assert cached_functions(flow)[("solve", 3)].experimental_get_tracing_count() == 1


def test_xla_compiled_solve_matches_graph_and_guards():
    """Under XLA (where Assert ops are dropped) the in-graph guard still reports failures."""
    sde = VPSDE()
    x = np.random.default_rng(5).multivariate_normal(np.zeros(3), COV, size=8)
    graph = probability_flow_log_prob(SCORE, sde, x)
    flow = ProbabilityFlow(SCORE, sde, jit_compile=True, max_num_steps=3)
    with pytest.raises(ODESolverError, match="step budget") as info:
        flow.log_prob(x)
    assert EPS < info.value.time_reached < 1.0
    flow.max_num_steps = 10_000  # the same compiled solve with a larger budget
    np.testing.assert_allclose(flow.log_prob(x).log_prob, graph.log_prob, atol=1e-9)


def test_non_finite_score_raises_with_the_time_reached():
    def breaks_at_half(x, t):
        return tf.where(t > 0.5, tf.constant(np.nan, tf.float64), 1.0) * SCORE(x, t)

    with pytest.raises(ODESolverError, match="non-finite") as info:
        probability_flow_log_prob(breaks_at_half, VPSDE(), np.zeros((4, 3)))
    assert 0.5 < info.value.time_reached <= 1.0


def test_bad_inputs():
    sde, score = VPSDE(), SCORE
    x = np.zeros((4, 3))
    cases = [
        (dict(x=np.array([[0.0, np.nan, 1.0]])), ValueError, "NaN"),
        (dict(x=np.zeros(3)), ValueError, "Reshape your data"),
        (dict(x=np.zeros((0, 3))), ValueError, "0 sample"),
        (dict(divergence="trace"), ValueError, "divergence"),
        (dict(probe="uniform"), ValueError, "probe"),
        (dict(eps=0.0), ValueError, "eps"),
        (dict(eps=-1e-3), ValueError, "eps"),
        (dict(eps=1.0), ValueError, "smaller than"),
        (dict(rtol=0.0), ValueError, "rtol"),
        (dict(num_probes=0), ValueError, "num_probes"),
        (dict(max_num_steps=0), ValueError, "max_num_steps"),
        (dict(batch_size=0), ValueError, "batch_size"),
        (dict(seed="a"), TypeError, "seed"),
        (dict(dtype="int32"), TypeError, "floating"),
        (dict(prior_log_prob=3), TypeError, "prior_log_prob"),
    ]
    for overrides, error, match in cases:
        kwargs = dict(x=x)
        kwargs.update(overrides)
        with pytest.raises(error, match=match):
            probability_flow_log_prob(score, sde, **kwargs)
    with pytest.raises(TypeError, match="sde must"):
        probability_flow_log_prob(score, "vp", x)
    with pytest.raises(ValueError, match="sde is required"):
        probability_flow_log_prob(score, None, x)
    with pytest.raises(TypeError, match="score"):
        probability_flow_log_prob(42, sde, x)
    net = ScoreNetwork(score_mlp(2, depth=1, width=8), sde=sde)
    net(([tf.zeros([1, 2]), tf.ones([1, 1])]))
    with pytest.raises(ValueError, match="2 features"):
        probability_flow_log_prob(net, None, x)


def test_dde_bridge_with_an_exact_energy():
    """A noise-conditional energy that is exact for N(0, v·I) data: through `DDEScore` (its
    Laplacian as the divergence) the probability flow recovers log N(x; 0, (v + σ(T_ε)²)I),
    the normalized f(·, σ(T_ε)), under the VE-SDE with the moment-matched prior."""
    var, d = 0.5, 2

    class GaussianEnergy(keras.Model):
        def call(self, inputs):
            x, log_sigma = inputs
            return -0.5 * tf.reduce_sum(tf.square(x), -1, keepdims=True) / (
                var + tf.exp(2.0 * log_sigma))

    model = NoiseConditionalDDE(GaussianEnergy(), sigma_min=0.01, sigma_max=20.0)
    model(tf.zeros([1, d]))
    model.data_mean.assign(np.zeros(d))
    model.data_cov.assign(var * np.eye(d))
    bridge = DDEScore(model)
    x = np.random.default_rng(7).normal(size=(20, d)) * math.sqrt(var)
    result = probability_flow_log_prob(bridge, None, x, prior_log_prob=bridge.prior_log_prob)
    sigma = float(bridge.noise_std(tf.constant(EPS, tf.float64)))
    expected = stats.norm(0, math.sqrt(var + sigma ** 2)).logpdf(x).sum(axis=1)
    assert np.max(np.abs(result.log_prob - expected)) < 1e-3


@pytest.fixture(scope="module")
def mixture_score_model():
    """A small score network trained briefly (1,200 steps, cosine-decayed learning rate) on
    the tutorial's 1-D three-Gaussian mixture."""
    keras.utils.set_random_seed(0)
    x = toy.sample("gaussian_mixture_1d", 20_000, seed=0)
    model = ScoreNetwork(score_mlp(1, depth=2, width=64), sde=VPSDE(), weighting="beta",
                         seed=0)
    schedule = keras.optimizers.schedules.CosineDecay(2e-2, 30 * 40, alpha=0.02)
    model.compile(optimizer=keras.optimizers.Adam(schedule))
    model.fit(x, epochs=30, batch_size=512, verbose=0)
    return model


def test_trained_mixture_likelihood_integrates_to_one_and_tracks_the_density(
        mixture_score_model):
    """Over a grid of (−4, 4) the probability-flow density integrates to 1 ± 0.05. Where the
    data are (true p > 0.05) its log tracks the true log-density — correlation > 0.75, mean
    absolute error < 0.4 nats (the best single Gaussian: 0.47), a valley between the first two
    modes — and its held-out average log-likelihood is within 0.2 nats of the true one (the
    best Gaussian: 0.33 nats below)."""
    grid = np.linspace(-4, 4, 1_000)[:, None]
    flow = ProbabilityFlow(mixture_score_model)
    log_p = flow.log_prob(grid, batch_size=1000).log_prob
    integral = np.sum(np.exp(log_p)) * (grid[1, 0] - grid[0, 0])
    assert abs(integral - 1.0) < 0.05, integral
    true = toy.log_density("gaussian_mixture_1d", grid)
    where = true > math.log(0.05)
    assert np.corrcoef(log_p[where], true[where])[0, 1] > 0.75
    assert np.mean(np.abs(log_p[where] - true[where])) < 0.4
    at = {v: log_p[np.argmin(np.abs(grid[:, 0] - v))] for v in (-0.5, 0.25, 1.0)}
    assert at[0.25] < min(at[-0.5], at[1.0]) - 0.5, at
    test = toy.sample("gaussian_mixture_1d", 1000, seed=1)
    held_out = flow.log_prob(test, batch_size=1000).log_prob
    good = held_out > -50  # rare points in the far tail, off the learned score
    assert good.mean() > 0.99
    true_all = toy.log_density("gaussian_mixture_1d", test[good]).mean()
    assert abs(held_out[good].mean() - true_all) < 0.2


class Exact8Gaussians(keras.layers.Layer):
    """f([x, log σ]) = log p_σ(x) + c(σ) for 8gaussians (eight N(c_k, s²I), s = 1/(2√2), on
    the circle of radius 2√2) smoothed by N(0, σ²I), with an arbitrary c(σ) = 3 log σ + 1.7:
    an exact noise-conditional energy, [b, 2], [b, 1] → [b, 1]."""

    def call(self, inputs):
        x, log_sigma = inputs
        angles = np.arange(8) * np.pi / 4
        centres = tf.constant(2 * math.sqrt(2) * np.stack([np.cos(angles), np.sin(angles)], 1),
                              x.dtype)
        var = 1.0 / 8.0 + tf.exp(2.0 * log_sigma)
        d2 = tf.reduce_sum(tf.square(x[:, None, :] - centres[None]), -1)
        log_p = (tf.reduce_logsumexp(-d2 / (2.0 * var), -1, keepdims=True)
                 - tf.math.log(8.0 * 2.0 * np.pi * var))
        return log_p + 3.0 * log_sigma + 1.7


def test_exact_energy_bridge_on_8gaussians_with_the_defaults():
    """An exact-energy NoiseConditionalDDE on 8gaussians with every default (sigma_max from
    the data's diameter, DDEScore's VE-SDE and its own prior f(·, σ_max) normalized by IS,
    probability_flow_log_prob's solver settings): the probability-flow log-likelihood of 60
    points is within 1e-3 nats of the true log p at σ(T_ε). Deterministic up to the IS
    estimate of the prior's log Z (SE ≈ 1e-5 here); the bound is about 4× the error seen."""
    model = NoiseConditionalDDE(Exact8Gaussians(), sigma_min=0.01, dtype="float64")
    model(tf.zeros([1, 2], tf.float64))
    model.set_data_statistics(toy.sample("8gaussians", 5000, seed=0))
    assert 6.0 < model.sigma_max < 9.0  # the diameter of the data
    bridge = DDEScore(model)
    x = toy.sample("8gaussians", 60, seed=1)
    result = probability_flow_log_prob(bridge, None, x)
    sigma = float(bridge.noise_std(tf.constant(1e-5, tf.float64)))
    truth = toy.log_density("8gaussians", x, noise_std=sigma)
    assert np.max(np.abs(result.log_prob - truth)) < 1e-3
    assert bridge.prior_normalization().reliable


def test_importance_sampling_and_probability_flow_agree_on_a_trained_2d_model():
    """One small 2-D base-density NoiseConditionalDDE (Gaussian base fitted to correlated
    Gaussian data, 2×32 residual, 300 DSM steps) normalized two independent ways: f(·, σ) −
    log Ẑ with log Ẑ by importance sampling under its base at σ = σ̃(T_ε), and the
    probability-flow ODE of its own score through DDEScore. Over 100 test points the mean
    log-likelihoods agree within 3 combined standard errors (log Ẑ's SE and the SE of the
    mean per-point difference; a chance failure ≈ 0.3 % if the errors were Gaussian; the
    model is near-conservative in σ after brief training, so the two must agree; measured:
    a difference of 0.0061 nats against a combined SE of 0.0056)."""
    from dde import bases, nets
    from dde.score import DDEScore

    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 2)) @ np.array([[1.0, 0.0], [0.8, 0.5]])
    base = bases.fit_gaussian_base(x[:2000])
    keras.utils.set_random_seed(0)
    model = NoiseConditionalDDE(nets.conditional_residual_energy_mlp(2, 2, 32), sigma_min=0.05,
                                base=base, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    model.fit(x[:2000].astype(np.float32), epochs=10, batch_size=64, verbose=0)
    bridge = DDEScore(model)
    test = x[2000:2100]
    pf = probability_flow_log_prob(bridge, None, test)
    sigma = float(bridge.noise_std(tf.constant(bridge.eps, tf.float64)))
    z = model.normalize(num_samples=50_000, noise_std=sigma, seed=1)
    is_ll = model.log_density(test, noise_std=sigma).astype(np.float64) - z.log_z
    diff = is_ll - pf.log_prob
    combined = math.hypot(z.stderr, diff.std(ddof=1) / math.sqrt(len(diff)))
    assert z.reliable
    assert abs(diff.mean()) <= 3 * combined + 1e-4, (diff.mean(), combined)
    residual = model.log_density(test, noise_std=sigma) - base.log_prob(
        tf.constant(test, tf.float32), sigma).numpy()
    assert np.max(np.abs(residual)) > 1e-3  # the network was trained, not the bare base
