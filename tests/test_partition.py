"""Tests of dde.partition: weight statistics, proposals, IS and AIS on energies with known
log Z, calibration of the standard error, model normalization and average log-likelihood."""
import math
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp
from scipy import special, stats

import dde
from dde import partition as P
from dde.partition import weights as W

tfd = tfp.distributions


# ----------------------------------------------------------------------------- helpers
def random_gaussian(d, seed):
    """Mean [d] and a random full covariance [d, d] with eigenvalues spread over ~[0.1, 3]."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    eig = np.exp(rng.uniform(np.log(0.1), np.log(3.0), size=d))
    return rng.normal(size=d), (q * eig) @ q.T


def gaussian_energy(mean, cov, constant):
    """f(x) = log N(x; mean, cov) + constant, so log Z = constant exactly."""
    target = tfd.MultivariateNormalTriL(tf.constant(mean), tf.constant(np.linalg.cholesky(cov)))
    return lambda x: target.log_prob(x) + constant


def mixture_energy(weights, means, covs, constant):
    """f(x) = log Σ_c π_c N(x; μ_c, Σ_c) + constant (log Z = constant)."""
    target = tfd.MixtureSameFamily(
        tfd.Categorical(probs=tf.constant(weights)),
        tfd.MultivariateNormalTriL(tf.constant(means),
                                   tf.constant(np.linalg.cholesky(covs))))
    return target, (lambda x: target.log_prob(x) + constant)


# ------------------------------------------------------------------ weight statistics
def test_importance_statistics_match_direct_formulas():
    """log mean exp, ESS and the delta-method SE agree with SciPy / NumPy on weights spread
    over ~100 nats and offset by 1000 (no overflow)."""
    rng = np.random.default_rng(0)
    lw = 1000.0 + 20.0 * rng.normal(size=5000)
    log_z, se, ess = P.importance_statistics(lw)
    m = lw.size
    assert log_z == pytest.approx(special.logsumexp(lw) - math.log(m), abs=1e-10)
    assert ess == pytest.approx(math.exp(2 * special.logsumexp(lw) - special.logsumexp(2 * lw)),
                                rel=1e-10)
    w = np.exp(lw - lw.max())
    assert se == pytest.approx(np.std(w, ddof=1) / math.sqrt(m) / w.mean(), rel=1e-8)


def test_streaming_statistics_do_not_depend_on_batching():
    """Folding log-weights in chunks (rising and falling maxima, −inf entries) gives the same
    sums as folding them at once: the running-max rescaling is exact."""
    rng = np.random.default_rng(1)
    lw = np.concatenate([rng.normal(size=300) * 5, [-np.inf] * 7, rng.normal(size=300) * 5 + 40,
                         rng.normal(size=300) * 5 - 40])
    whole = W.finalize(W.stats_update(W.stats_init(), tf.constant(lw)), "raise")
    for chunk in (13, 100, 451):
        state = W.stats_init()
        for i in range(0, lw.size, chunk):
            state = W.stats_update(state, tf.constant(lw[i:i + chunk]))
        got = W.finalize(state, "raise")
        np.testing.assert_allclose(got[:3], whole[:3], rtol=1e-12)
        assert got[3] == lw.size


def test_log_sum_exp_counts_the_largest_weight_once():
    """Regression: with f = log q + c all weights are equal, so log Ẑ = c exactly, SE = 0 and
    ESS = M, however the samples are batched. A log-sum-exp that adds the largest weight a
    second time (m + log(1 + Σ exp(lw − m))) is off by log(1 + 1/M) = 0.095 for M = 10,
    and this test would catch it (demonstrated on the same weights)."""
    q = tfd.MultivariateNormalTriL(tf.constant([0.5, -1.0], tf.float64),
                                   tf.constant([[1.0, 0.0], [0.3, 0.7]], tf.float64))
    c = 7.25
    for batch_size in (3, 10):
        r = P.estimate_log_partition(lambda x: q.log_prob(x) + c, q, 10,
                                     batch_size=batch_size, seed=0, on_low_ess="ignore")
        assert abs(r.log_z - c) < 1e-12
        assert r.stderr < 1e-7 and r.ess == pytest.approx(10.0)

    def double_counting_log_mean_exp(lw):
        m = lw.max()
        return m + np.log1p(np.exp(lw - m).sum()) - np.log(lw.size)

    lw = np.full(10, c)
    assert abs(double_counting_log_mean_exp(lw) - c) > 0.09
    assert abs(P.importance_statistics(lw)[0] - c) < 1e-12


def test_proposal_log_density_must_sum_over_dimensions():
    """Regression: f = log N(0, I₁₀) has log Z = 0. With q = N(0, 1.2² I) and log q summed over
    dimensions the estimate is within 4 SE of 0; a log q averaged over dimensions (the
    public DDE benchmark's bug) is off by several nats, far outside 4 SE — so this test fails
    for that variant. Fixed seed; the correct branch fails by chance with p < 1e-4."""
    d, m = 10, 20_000
    rng = np.random.default_rng(2)
    x = 1.2 * rng.normal(size=(m, d))
    f = stats.norm.logpdf(x).sum(1)
    per_dim_log_q = stats.norm.logpdf(x, scale=1.2)
    right = P.importance_statistics(f - per_dim_log_q.sum(1))
    wrong = P.importance_statistics(f - per_dim_log_q.mean(1))
    assert abs(right[0]) <= 4 * right[1]
    assert abs(wrong[0]) > 5.0 and abs(wrong[0]) > 40 * wrong[1]
    # And every proposal builder returns the joint (summed) log-density.
    q = P.gaussian_proposal(x)
    mean, cov = x.mean(0), np.cov(x, rowvar=False)
    np.testing.assert_allclose(q.log_prob(x[:50]).numpy(),
                               stats.multivariate_normal(mean, cov).logpdf(x[:50]), rtol=1e-8)


# ---------------------------------------------------------------------------- proposals
def test_gaussian_proposal_matches_scipy_and_inflates():
    mean, cov = random_gaussian(4, 3)
    x = np.random.default_rng(3).multivariate_normal(mean, cov, size=500)
    pts = np.random.default_rng(4).normal(size=(20, 4))
    for scale in (1.0, 1.7):
        q = P.gaussian_proposal(x, scale=scale)
        ref = stats.multivariate_normal(x.mean(0), np.cov(x, rowvar=False) * scale**2)
        np.testing.assert_allclose(q.log_prob(pts).numpy(), ref.logpdf(pts), rtol=1e-9)
    assert q.dtype == tf.float64 and q.event_shape == [4]


def test_student_t_proposal_matches_scipy_and_data_covariance():
    mean, cov = random_gaussian(3, 8)
    x = np.random.default_rng(8).multivariate_normal(mean, cov, size=400)
    q = P.student_t_proposal(x, df=6.0, scale=1.2)
    shape = np.cov(x, rowvar=False) * 1.2**2 * 4.0 / 6.0
    pts = np.random.default_rng(9).normal(size=(20, 3)) * 4
    ref = stats.multivariate_t(loc=x.mean(0), shape=shape, df=6.0)
    np.testing.assert_allclose(q.log_prob(pts).numpy(), ref.logpdf(pts), rtol=1e-9)
    np.testing.assert_allclose(q.covariance().numpy(), np.cov(x, rowvar=False) * 1.44,
                               rtol=1e-9)
    with pytest.raises(ValueError, match="df"):
        P.student_t_proposal(x, df=2.0)


def test_gaussian_mixture_proposal_matches_sklearn():
    from sklearn.mixture import GaussianMixture

    rng = np.random.default_rng(5)
    x = np.concatenate([rng.normal(size=(400, 3)) + 3, rng.normal(size=(400, 3)) * 0.5 - 2])
    q = P.gaussian_mixture_proposal(x, n_components=2, seed=7)
    gm = GaussianMixture(2, random_state=7, reg_covar=1e-6 * float(np.mean(np.var(x, 0))))
    gm.fit(x)
    pts = rng.normal(size=(30, 3)) * 3
    np.testing.assert_allclose(q.log_prob(pts).numpy(), gm.score_samples(pts), rtol=1e-7)
    for cov_type in ("diag", "spherical", "tied"):
        qc = P.gaussian_mixture_proposal(x, n_components=2, seed=7, covariance_type=cov_type)
        gc = GaussianMixture(2, covariance_type=cov_type, random_state=7,
                             reg_covar=1e-6 * float(np.mean(np.var(x, 0)))).fit(x)
        np.testing.assert_allclose(qc.log_prob(pts).numpy(), gc.score_samples(pts), rtol=1e-7)


def test_smoothed_empirical_proposal_matches_tfp_and_scipy():
    """Chunked log_prob (chunk size not dividing N) equals TFP's MixtureSameFamily and a SciPy
    log-sum-exp; samples have the mixture's mean and covariance (5-sigma tolerances)."""
    rng = np.random.default_rng(6)
    pts = rng.normal(size=(37, 3))
    sigma = 0.4
    q = P.SmoothedEmpiricalDistribution(pts, sigma, chunk_size=8)
    ref = tfd.MixtureSameFamily(tfd.Categorical(logits=tf.zeros(37, tf.float64)),
                                tfd.MultivariateNormalDiag(pts, tf.fill([37, 3],
                                                                        tf.constant(sigma,
                                                                                    tf.float64))))
    x = rng.normal(size=(25, 3)) * 2
    got = q.log_prob(x).numpy()
    np.testing.assert_allclose(got, ref.log_prob(x).numpy(), rtol=1e-9)
    comp = stats.norm.logpdf(x[:, None, :], pts[None], sigma).sum(-1)
    np.testing.assert_allclose(got, special.logsumexp(comp, axis=1) - np.log(37), rtol=1e-9)
    # Gradients flow through the chunked computation (needed by AIS).
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        lp = q.log_prob(xt)
    g_ref = tfp.math.value_and_gradient(ref.log_prob, xt)[1]
    np.testing.assert_allclose(tape.gradient(lp, xt).numpy(), g_ref.numpy(), rtol=1e-7)
    s = q.sample(40_000, seed=tf.constant([1, 2])).numpy()
    cov = q.covariance().numpy()
    np.testing.assert_allclose(s.mean(0), pts.mean(0),
                               atol=5 * np.sqrt(np.diag(cov).max() / 40_000))
    np.testing.assert_allclose(np.cov(s, rowvar=False), cov, atol=0.05)
    np.testing.assert_array_equal(s, q.sample(40_000, seed=tf.constant([1, 2])).numpy())
    wrapper = P.smoothed_empirical_proposal(pts, sigma, max_points=10, seed=0)
    assert wrapper.points.shape == (10, 3)


def test_user_distribution_accepted_and_checked():
    q = tfd.MultivariateNormalDiag(tf.zeros(3, tf.float64), tf.ones(3, tf.float64))
    assert P.make_proposal(q, input_dim=3) is q
    with pytest.raises(ValueError, match="event size 3.*expects 2"):
        P.make_proposal(q, input_dim=2)
    with pytest.raises(ValueError, match="batch_shape"):
        P.make_proposal(tfd.MultivariateNormalDiag(tf.zeros([2, 3]), tf.ones([2, 3])))
    with pytest.raises(ValueError, match="vector event"):
        P.make_proposal(tfd.Normal(0.0, 1.0))
    with pytest.raises(TypeError, match="Distribution"):
        P.estimate_log_partition(lambda x: x[:, 0], "not a distribution", 10)
    with pytest.raises(ValueError, match="Unknown proposal"):
        P.make_proposal("uniform", np.zeros((5, 2)))


# ------------------------------------------------------------------- known log Z: IS/AIS
@pytest.mark.parametrize("d", [2, 10, 50])
def test_importance_sampling_recovers_known_log_z_of_gaussians(d):
    """Random full-covariance Gaussian, f = log N + C: log Ẑ within 4 SE of C (chance of a
    failure at a 4-sigma bound: < 1e-4 per case), and the SE is small (< 0.05)."""
    mean, cov = random_gaussian(d, 10 + d)
    c = -17.3 + d
    x = np.random.default_rng(d).multivariate_normal(mean, cov, size=20 * d * d + 1000)
    q = P.gaussian_proposal(x, scale=1.1)
    r = P.estimate_log_partition(gaussian_energy(mean, cov, c), q, 50_000, batch_size=10_000,
                                 seed=d)
    assert abs(r.log_z - c) <= 4 * r.stderr, (r, r.log_z - c)
    assert r.stderr < 0.05 and r.num_samples == 50_000 and r.method == "is"
    assert r.num_nonfinite == 0 and 0 < r.ess <= 50_000


@pytest.mark.parametrize("d", [2, 10, 50])
def test_ais_recovers_known_log_z_of_gaussians(d):
    """AIS (HMC) from a Gaussian fitted to only 10·d points and inflated 1.5× — a proposal
    whose IS weights degenerate in d = 50 — lands within 4 SE of the truth (chance failure
    < 1e-4 per case) with a non-vacuous SE."""
    mean, cov = random_gaussian(d, 20 + d)
    c = 3.0 * d
    x = np.random.default_rng(100 + d).multivariate_normal(mean, cov, size=10 * d)
    q = P.gaussian_proposal(x, scale=1.5)
    r = P.estimate_log_partition(gaussian_energy(mean, cov, c), q, 256, seed=d, method="ais",
                                 num_steps=100, num_leapfrog_steps=3)
    assert abs(r.log_z - c) <= 4 * r.stderr, (r, r.log_z - c, r.diagnostics)
    assert r.stderr < 0.1 and r.method == "ais" and r.log_weights.shape == (256,)
    assert 0.75 < r.diagnostics["acceptance_rate"] < 0.95
    assert r.num_evaluations == 256 * (1 + 99 * 3)


@pytest.mark.parametrize("method", ["is", "ais"])
def test_two_component_mixture_known_log_z(method):
    """A well-separated two-component mixture in d = 3 (log Z = C): IS with a fitted GMM
    proposal and AIS (MALA) from a single broad Gaussian both land within 4 SE."""
    means = np.array([[2.5, 0.0, 1.0], [-2.5, 1.0, -1.0]])
    covs = np.stack([random_gaussian(3, 31)[1], random_gaussian(3, 32)[1] * 0.5])
    weights = np.array([0.3, 0.7])
    target, f = mixture_energy(weights, means, covs, 5.5)
    x = target.sample(5000, seed=tf.constant([3, 4], tf.int32)).numpy()
    if method == "is":
        q = P.gaussian_mixture_proposal(x, n_components=2, seed=0, scale=1.1)
        r = P.estimate_log_partition(f, q, 50_000, seed=1)
    else:
        q = P.gaussian_proposal(x, scale=1.2)
        r = P.estimate_log_partition(f, q, 500, seed=1, method="ais", kernel="mala",
                                     num_steps=200, schedule="linear")
    assert abs(r.log_z - 5.5) <= 4 * r.stderr, (r, r.log_z - 5.5)
    assert r.stderr < 0.05


def test_additive_constant_shifts_log_z_exactly():
    """f + 1000 (weights overflowing float64 without the running max) gives log Ẑ + 1000 with
    identical SE and ESS, for IS and AIS (same seeds)."""
    mean, cov = random_gaussian(3, 40)
    q = tfd.MultivariateNormalDiag(tf.constant(mean), tf.constant(np.full(3, 2.0)))
    for kwargs in ({"num_samples": 5000}, {"num_samples": 64, "method": "ais",
                                           "num_steps": 20}):
        r0 = P.estimate_log_partition(gaussian_energy(mean, cov, 0.0), q, seed=5, **kwargs)
        r1 = P.estimate_log_partition(gaussian_energy(mean, cov, 1000.0), q, seed=5, **kwargs)
        assert r1.log_z - r0.log_z == pytest.approx(1000.0, abs=1e-8)
        assert r1.stderr == pytest.approx(r0.stderr, rel=1e-6)
        assert r1.ess == pytest.approx(r0.ess, rel=1e-6)


def test_float32_proposal_and_density():
    """A float32 proposal and log-density still give a float64 estimate within 4 SE."""
    mean, cov = random_gaussian(2, 41)
    target = tfd.MultivariateNormalTriL(tf.constant(mean, tf.float32),
                                        tf.constant(np.linalg.cholesky(cov), tf.float32))
    q = tfd.MultivariateNormalDiag(tf.constant(mean, tf.float32), tf.constant([2.0, 2.0]))
    r = P.estimate_log_partition(lambda x: target.log_prob(x) + 1.5, q, 20_000, seed=0)
    assert abs(r.log_z - 1.5) <= 4 * r.stderr and isinstance(r.log_z, float)


# ---------------------------------------------------------------------------- calibration
def test_importance_sampling_standard_error_is_calibrated():
    """Over 200 seeded IS runs (M = 2000, mismatched but heavier-tailed proposal) the interval
    log Ẑ ± 2·SE covers the true log Z in 85–99 % of runs. With a well-calibrated SE the
    coverage is ~95 %, so a result outside [85 %, 99 %] has probability < 1e-3."""
    mean, cov = random_gaussian(2, 50)
    f = gaussian_energy(mean, cov, 2.0)
    q = tfd.MultivariateNormalDiag(tf.constant(mean + 0.5), tf.constant(np.full(2, 2.5)))
    hits = []
    for seed in range(200):
        r = P.estimate_log_partition(f, q, 2000, seed=seed)
        hits.append(abs(r.log_z - 2.0) <= 2 * r.stderr)
    coverage = np.mean(hits)
    assert 0.85 <= coverage <= 0.99, coverage


def test_ais_standard_error_is_calibrated():
    """200 independent AIS runs of 32 chains (one call with a fixed step size, so the chains
    are independent and any 32 of them form a run; d = 3, 30 temperatures, proposal 2.5×
    too wide): ±2·SE of each run covers the truth in 85–99 % of runs (probability of a
    failure with a calibrated SE < 1e-3)."""
    mean, cov = random_gaussian(3, 51)
    q = tfd.MultivariateNormalDiag(tf.constant(mean), tf.constant(np.full(3, 2.5)))
    runs, chains = 200, 32
    r = P.estimate_log_partition(gaussian_energy(mean, cov, -1.0), q, runs * chains,
                                 batch_size=runs * chains, seed=3, method="ais", num_steps=30,
                                 num_leapfrog_steps=2, step_size=0.3, adapt_step_size=False)
    hits = []
    for g in range(runs):
        log_z, se, _ = P.importance_statistics(r.log_weights[chains * g:chains * (g + 1)])
        hits.append(abs(log_z + 1.0) <= 2 * se)
    coverage = np.mean(hits)
    assert 0.85 <= coverage <= 0.99, coverage
    assert abs(r.log_z + 1.0) <= 4 * r.stderr


# ------------------------------------------------------------------- behaviour & bad input
def test_deterministic_for_a_seed():
    mean, cov = random_gaussian(2, 60)
    f = gaussian_energy(mean, cov, 0.0)
    q = P.gaussian_proposal(np.random.default_rng(0).multivariate_normal(mean, cov, 200))
    a = P.estimate_log_partition(f, q, 3000, batch_size=700, seed=11)
    b = P.estimate_log_partition(f, q, 3000, batch_size=700, seed=11)
    c = P.estimate_log_partition(f, q, 3000, batch_size=700, seed=12)
    assert a.log_z == b.log_z and a.stderr == b.stderr and a.seed == (0, 11)
    assert c.log_z != a.log_z
    k = dict(method="ais", num_steps=10, num_leapfrog_steps=2)
    assert (P.estimate_log_partition(f, q, 50, seed=[4, 5], **k).log_z
            == P.estimate_log_partition(f, q, 50, seed=[4, 5], **k).log_z)
    assert a.as_dict()["num_samples"] == 3000 and "log_weights" not in a.as_dict()
    assert "log Z = " in str(a) and "ESS" in str(a)


def test_progress_bar(capsys):
    q = tfd.MultivariateNormalDiag(tf.zeros(2, tf.float64), tf.ones(2, tf.float64))
    P.estimate_log_partition(lambda x: q.log_prob(x), q, 100, batch_size=25, seed=0,
                             progress=True, on_low_ess="ignore")
    assert "4/4" in capsys.readouterr().out


def test_nan_log_density_is_counted_and_never_folded_silently():
    """f is NaN for x₀ > 1.5 (≈ 7 % of samples): the default raises naming the count;
    nan_policy="zero" warns with the count and reports it in the result."""
    q = tfd.MultivariateNormalDiag(tf.zeros(2, tf.float64), tf.ones(2, tf.float64))

    def f(x):
        return tf.where(x[:, 0] > 1.5, tf.constant(np.nan, tf.float64), q.log_prob(x))

    with pytest.raises(ValueError, match=r"NaN for \d+ of 4000 samples"):
        P.estimate_log_partition(f, q, 4000, seed=0)
    with pytest.warns(RuntimeWarning, match=r"NaN for \d+ of 4000"):
        r = P.estimate_log_partition(f, q, 4000, seed=0, nan_policy="zero")
    expected = stats.norm.cdf(1.5)
    assert 0.04 < r.num_nonfinite / 4000 < 0.10
    assert abs(r.log_z - math.log(expected)) <= 4 * r.stderr
    with pytest.raises(ValueError, match="no usable weight"):
        P.estimate_log_partition(lambda x: np.nan * x[:, 0], q, 100, seed=0,
                                 nan_policy="zero")
    with pytest.raises(ValueError, match=r"\+inf"):
        P.estimate_log_partition(lambda x: np.inf + x[:, 0], q, 100, seed=0)
    with pytest.raises(ValueError, match="All 100 importance weights are zero"):
        P.estimate_log_partition(lambda x: -np.inf + x[:, 0], q, 100, seed=0)
    with pytest.raises(ValueError, match=r"NaN for \d+ of 64"):
        P.estimate_log_partition(f, q, 64, seed=0, method="ais", num_steps=5)


def test_low_effective_sample_size_warns_or_raises():
    """A far-off, narrow proposal: ESS ≪ min(100, 0.1·M) warns by default, raises on request."""
    q = tfd.MultivariateNormalDiag(tf.constant([3.0, 0.0], tf.float64),
                                   tf.constant([0.3, 0.3], tf.float64))
    target = tfd.MultivariateNormalDiag(tf.zeros(2, tf.float64), tf.ones(2, tf.float64))
    with pytest.warns(P.LowEffectiveSampleSizeWarning, match="effective sample size"):
        r = P.estimate_log_partition(target.log_prob, q, 5000, seed=0)
    assert r.ess < 100
    with pytest.raises(RuntimeError, match="effective sample size"):
        P.estimate_log_partition(target.log_prob, q, 5000, seed=0, on_low_ess="raise")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        P.estimate_log_partition(target.log_prob, q, 5000, seed=0, on_low_ess="ignore")


@pytest.mark.parametrize("kwargs,err", [
    ({"num_samples": 0}, ValueError), ({"num_samples": -5}, ValueError),
    ({"num_samples": 10.5}, TypeError), ({"batch_size": 0}, ValueError),
    ({"method": "mcmc"}, ValueError), ({"nan_policy": "omit"}, ValueError),
    ({"on_low_ess": "maybe"}, ValueError), ({"seed": "abc"}, TypeError),
    ({"num_steps": 5}, TypeError),  # an AIS option with method="is"
    ({"method": "ais", "schedule": "cosine"}, ValueError),
    ({"method": "ais", "schedule": [0.0, 0.7, 0.5, 1.0]}, ValueError),
    ({"method": "ais", "kernel": "nuts"}, ValueError),
    ({"method": "ais", "num_steps": 0}, ValueError),
])
def test_bad_arguments(kwargs, err):
    q = tfd.MultivariateNormalDiag(tf.zeros(2, tf.float64), tf.ones(2, tf.float64))
    args = {"num_samples": 10, **kwargs}
    with pytest.raises(err):
        P.estimate_log_partition(q.log_prob, q, **args)


def test_log_density_fn_must_return_one_value_per_sample():
    q = tfd.MultivariateNormalDiag(tf.zeros(2, tf.float64), tf.ones(2, tf.float64))
    with pytest.raises(ValueError, match="must map"):
        P.estimate_log_partition(lambda x: x, q, 10)


def test_ais_schedules():
    for kind in ("linear", "geometric", "sigmoid"):
        b = P.ais_schedule(kind, 50)
        assert b.shape == (51,) and b[0] == 0.0 and b[-1] == 1.0
        assert np.all(np.diff(b) > 0)
    np.testing.assert_allclose(P.ais_schedule("linear", 4), [0, 0.25, 0.5, 0.75, 1])
    custom = P.ais_schedule([0.0, 0.1, 1.0])
    np.testing.assert_array_equal(custom, [0.0, 0.1, 1.0])
    with pytest.raises(ValueError, match="non-decreasing from exactly 0 to 1"):
        P.ais_schedule([0.1, 1.0])
    with pytest.raises(ValueError, match="non-decreasing from exactly 0 to 1"):
        P.ais_schedule([0.0, 0.9])


# ------------------------------------------------------------------------- models
def two_moons_like(n, seed):
    """A 2-D Gaussian mixture: three blobs of different shapes."""
    rng = np.random.default_rng(seed)
    k = rng.integers(0, 3, size=n)
    centers = np.array([[-2.0, 0.0], [2.0, 0.5], [0.0, 2.5]])
    scales = np.array([[0.5, 0.3], [0.3, 0.6], [0.4, 0.4]])
    return (centers[k] + scales[k] * rng.normal(size=(n, 2))).astype("float32")


@pytest.fixture(scope="module")
def trained_dde():
    keras.utils.set_random_seed(0)
    model = dde.DenoisingDensityEstimator(dde.nets.energy_mlp(2, depth=2, width=32),
                                          noise_std=0.2, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    x = two_moons_like(4000, 0)
    model.fit(x, epochs=8, batch_size=256, verbose=0)
    return model, x


def test_normalized_dde_integrates_to_one_on_a_grid(trained_dde):
    """A briefly trained 2-D DDE, normalized by IS (Gaussian proposal) and by AIS, integrates
    to 1 ± 0.03 on a fine grid (801² points on [−9, 9]², where exp f outside is negligible)."""
    model, x = trained_dde
    g = np.linspace(-9, 9, 801)
    xx, yy = np.meshgrid(g, g)
    pts = np.stack([xx.ravel(), yy.ravel()], 1)
    cell = (g[1] - g[0]) ** 2
    f = model.log_density(pts).astype(np.float64)
    log_z_grid = special.logsumexp(f) + math.log(cell)
    rim = np.concatenate([f.reshape(801, 801)[[0, -1]].ravel(),
                          f.reshape(801, 801)[:, [0, -1]].ravel()])
    assert rim.max() < log_z_grid - 5  # mass beyond the grid is negligible
    for kwargs in ({"method": "is", "proposal_options": {"scale": 1.3}},
                   {"method": "ais", "num_samples": 300, "num_steps": 50}):
        r = model.normalize(x, seed=1, **kwargs)
        assert model.is_normalized and float(model.log_z.numpy()) == r.log_z
        assert float(model.log_z_stderr.numpy()) == r.stderr
        assert float(model.log_z_ess.numpy()) == pytest.approx(r.ess)
        integral = np.exp(model.log_prob(pts)).sum() * cell
        assert abs(integral - 1.0) <= 0.03, (kwargs, integral, r)


def test_normalize_proposals_and_seed_default(trained_dde):
    """Each proposal name works on a model; seed=None uses the model's seed (reproducible);
    the diagnostics name the proposal."""
    model, x = trained_dde
    r_gmm = model.normalize(x, proposal="gmm", proposal_options={"n_components": 3}, num_samples=20_000,
                            on_low_ess="ignore")
    r_s = model.normalize(x[:500], proposal="smoothed", num_samples=20_000,
                          on_low_ess="ignore")
    assert r_gmm.diagnostics["proposal"] == "gmm" and r_gmm.diagnostics["n_components"] == 3
    assert r_s.diagnostics["smoothing_std"] == pytest.approx(0.2)
    again = model.normalize(x, proposal="gmm", proposal_options={"n_components": 3}, num_samples=20_000,
                            on_low_ess="ignore")
    assert again.log_z == r_gmm.log_z and again.seed == (0, model.seed)
    assert abs(r_gmm.log_z - r_s.log_z) < 4 * math.hypot(r_gmm.stderr, r_s.stderr) + 0.05


def test_proposal_options_and_the_deprecated_flat_keywords(trained_dde):
    """proposal_options reach the proposal's builder; the flat keywords of earlier versions
    give the same estimate with a DeprecationWarning (and are ignored by proposals that do not
    take them, as they were); an option the proposal does not take is a TypeError naming it."""
    model, x = trained_dde
    kw = dict(num_samples=5000, seed=2, on_low_ess="ignore")
    new = model.normalize(x, proposal="student_t", proposal_options={"df": 7.0, "scale": 1.1},
                          **kw)
    with pytest.warns(DeprecationWarning, match="proposal_options"):
        old = model.normalize(x, proposal="student_t", proposal_df=7.0, proposal_scale=1.1,
                              n_components=3, **kw)
    assert new.log_z == old.log_z and new.diagnostics["proposal_options"] == {"df": 7.0,
                                                                             "scale": 1.1}
    with pytest.raises(TypeError, match=r"no option \['n_components'\]"):
        model.normalize(x, proposal="gaussian", proposal_options={"n_components": 3}, **kw)
    with pytest.raises(ValueError, match="Unknown proposal 'gausian'.*'gaussian'"):
        model.normalize(x, proposal="gausian", **kw)


def test_keras_round_trip_keeps_log_z(trained_dde, tmp_path):
    model, x = trained_dde
    model.normalize(x, num_samples=20_000)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.is_normalized
    assert float(loaded.log_z.numpy()) == float(model.log_z.numpy())
    assert float(loaded.log_z_stderr.numpy()) == float(model.log_z_stderr.numpy())
    assert float(loaded.log_z_ess.numpy()) == float(model.log_z_ess.numpy())
    assert float(loaded.log_z_noise_std.numpy()) == pytest.approx(0.2)
    np.testing.assert_allclose(loaded.log_prob(x[:100]), model.log_prob(x[:100]), rtol=1e-6)
    a = dde.average_log_likelihood(loaded, x[:500])
    b = dde.average_log_likelihood(model, x[:500])
    assert a.mean == pytest.approx(b.mean, abs=1e-5)


def test_log_prob_before_normalize_raises():
    model = dde.DenoisingDensityEstimator(dde.nets.energy_mlp(2, depth=1, width=8))
    x = np.zeros((3, 2), "float32")
    with pytest.raises(RuntimeError, match="not normalized"):
        model.log_prob(x)
    with pytest.raises(RuntimeError, match="not normalized"):
        dde.average_log_likelihood(model, x)


def test_normalize_bad_input():
    model = dde.DenoisingDensityEstimator(dde.nets.energy_mlp(2, depth=1, width=8))
    x = np.random.default_rng(0).normal(size=(100, 2))
    bad = x.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        model.normalize(bad)
    with pytest.raises(ValueError, match="features"):
        model.normalize(np.zeros((10, 3)))
    q3 = tfd.MultivariateNormalDiag(tf.zeros(3, tf.float64), tf.ones(3, tf.float64))
    with pytest.raises(ValueError, match="event size 3"):
        model.normalize(x, proposal=q3)
    with pytest.raises(ValueError, match="num_samples"):
        model.normalize(x, num_samples=0)
    with pytest.raises(ValueError, match="noise_std"):
        model.normalize(x, noise_std=0.3)  # only for noise-conditional models
    with pytest.raises(ValueError, match="x_train is required"):
        model.normalize(None, proposal="gmm")
    with pytest.raises(TypeError, match="EnergyModel"):
        P.average_log_likelihood("not a model", x)
    assert not model.is_normalized


def test_noise_conditional_dde_normalizes_f_at_sigma_min():
    """normalize on a NoiseConditionalDDE estimates log Z of f(·, sigma_min) by default and of
    f(·, σ) for a given noise_std (compared with the estimator called directly)."""
    keras.utils.set_random_seed(1)
    net = dde.nets.conditional_energy_mlp(2, depth=1, width=16, embedding_dim=8)
    model = dde.NoiseConditionalDDE(net, sigma_min=0.05, sigma_max=1.0, seed=3)
    x = two_moons_like(300, 1)
    model.ensure_built(2)
    q = P.gaussian_proposal(x)
    kw = dict(num_samples=2000, on_low_ess="ignore")
    r = model.normalize(x, **kw)
    direct = P.estimate_log_partition(P.model_log_density_fn(model, 0.05), q, 2000,
                                      seed=model.seed, on_low_ess="ignore")
    assert r.log_z == pytest.approx(direct.log_z, abs=1e-9)
    assert r.diagnostics["noise_std"] == 0.05
    r2 = model.normalize(x, noise_std=0.5, **kw)
    direct2 = P.estimate_log_partition(P.model_log_density_fn(model, 0.5), q, 2000,
                                       seed=model.seed, on_low_ess="ignore")
    assert r2.log_z == pytest.approx(direct2.log_z, abs=1e-9)
    assert r2.log_z != r.log_z
    all_ = dde.average_log_likelihood(model, x, noise_std=0.5)
    f = model.log_density(x, noise_std=0.5).astype(np.float64)
    assert all_.mean == pytest.approx(f.mean() - r2.log_z, abs=1e-6)


def test_log_z_records_its_noise_level():
    """log Ẑ remembers the σ it normalizes: a NoiseConditionalDDE evaluates log_prob and the
    average log-likelihood there by default and refuses another σ; a DDE whose σ changed
    after normalization (further training with a σ schedule) refuses to give log_prob."""
    keras.utils.set_random_seed(4)
    net = dde.nets.conditional_energy_mlp(2, depth=1, width=16, embedding_dim=8)
    model = dde.NoiseConditionalDDE(net, sigma_min=0.05, sigma_max=1.0, seed=3)
    x = two_moons_like(300, 2)
    model.ensure_built(2)
    model.normalize(x, noise_std=0.5, num_samples=2000, on_low_ess="ignore")
    assert float(model.log_z_noise_std.numpy()) == 0.5
    log_z = float(model.log_z.numpy())
    f = model.log_density(x, noise_std=0.5).astype(np.float64)
    np.testing.assert_allclose(model.log_prob(x), f - log_z, rtol=1e-6)
    np.testing.assert_allclose(model.log_prob(x, noise_std=0.5), f - log_z, rtol=1e-6)
    assert dde.average_log_likelihood(model, x).mean == pytest.approx(f.mean() - log_z,
                                                                       abs=1e-6)
    with pytest.raises(ValueError, match="estimated at noise_std = 0.5, not at 0.05"):
        model.log_prob(x, noise_std=0.05)
    with pytest.raises(ValueError, match="normalize again"):
        dde.average_log_likelihood(model, x, noise_std=0.05)
    model.set_log_partition(1.0)  # default σ: sigma_min
    assert float(model.log_z_noise_std.numpy()) == 0.05

    single = dde.DenoisingDensityEstimator(dde.nets.energy_mlp(2, depth=1, width=8),
                                           noise_std=0.3)
    single.ensure_built(2)
    single.set_log_partition(2.0)
    assert float(single.log_z_noise_std.numpy()) == pytest.approx(0.3)
    single.log_prob(x)  # σ unchanged: fine
    single.noise_std.assign(0.1)
    with pytest.raises(ValueError, match="estimated at noise_std = 0.3"):
        single.log_prob(x)
    with pytest.raises(ValueError, match="estimated at noise_std = 0.3"):
        dde.average_log_likelihood(single, x)


def test_average_log_likelihood_formula_and_format():
    keras.utils.set_random_seed(2)
    model = dde.DenoisingDensityEstimator(dde.nets.energy_mlp(2, depth=1, width=8))
    x = np.random.default_rng(3).normal(size=(400, 2)).astype("float32")
    model.set_log_partition(1.25, stderr=0.04, ess=1000.0)
    r = dde.average_log_likelihood(model, x)
    f = model.log_density(x).astype(np.float64)
    assert r.mean == pytest.approx(f.mean() - 1.25, abs=1e-9)
    test_se = f.std(ddof=1) / math.sqrt(400)
    assert r.test_stderr == pytest.approx(test_se, rel=1e-9)
    assert r.stderr == pytest.approx(math.hypot(test_se, 0.04), rel=1e-9)
    assert r.n == 400 and r.log_z == 1.25 and r.log_z_stderr == pytest.approx(0.04)
    assert str(r) == f"{r.mean:.3f} ± {2 * r.stderr:.3f} (2·SE)"
    one = dde.average_log_likelihood(model, x[:1])
    assert one.n == 1 and math.isnan(one.stderr)
    with pytest.raises(ValueError, match="features"):
        dde.average_log_likelihood(model, np.zeros((5, 3)))
    with pytest.raises(ValueError, match="NaN"):
        dde.average_log_likelihood(model, np.full((5, 2), np.nan))


def test_ais_with_a_proposal_without_covariance():
    """A user proposal whose covariance() is not implemented (tfd.Sample of logistics): AIS
    whitens with an independent pilot sample and still lands within 4 SE of log Z = 2."""
    loc = tf.constant(0.0, tf.float64)
    q = tfd.Sample(tfd.Logistic(loc, tf.constant(1.0, tf.float64)), 3)
    with pytest.raises(NotImplementedError):
        q.covariance()
    target = tfd.MultivariateNormalDiag(tf.zeros(3, tf.float64), tf.ones(3, tf.float64))
    r = P.estimate_log_partition(lambda x: target.log_prob(x) + 2.0, q, 128, seed=0,
                                 method="ais", num_steps=20, num_leapfrog_steps=2)
    assert abs(r.log_z - 2.0) <= 4 * r.stderr and r.stderr < 0.1


# ------------------------------------------------------------- reliability diagnostics
def test_pareto_smoothing_matches_arviz():
    """PSIS's k̂ and smoothed tail (`dde.partition.weights`) equal ArviZ's `psislw` on the
    same log-weights, from light to very heavy tails and M = 50 … 10⁵."""
    az = pytest.importorskip("arviz")
    rng = np.random.default_rng(0)
    for m in (50, 1000, 100_000):
        for scale in (0.3, 1.0, 3.0):
            lw = rng.standard_t(4, size=m) * scale
            expected_lw, expected_k = az.psislw(lw.copy(), normalize=False)
            k, raw, smooth = W.pareto_smooth_tail(np.sort(lw)[-(W.pareto_tail_size(m) + 1):],
                                                  m)
            assert k == pytest.approx(float(expected_k), rel=1e-12, abs=1e-12)
            full = lw.copy()
            full[np.argsort(lw)[-len(smooth):]] = smooth
            np.testing.assert_allclose(np.sort(full), np.sort(expected_lw), rtol=1e-12, atol=1e-12)
            assert W.summarize_log_weights(lw).pareto_k == pytest.approx(float(expected_k))


def test_equal_weights_have_no_tail():
    """Importance sampling from the target itself (every log-weight equal) is the ideal case:
    k̂ = −inf, the estimate is exact and reliable, not flagged as an unfittable tail."""
    summary = W.summarize_log_weights(np.full(2000, 0.25))
    assert summary.pareto_k == -np.inf
    assert W.is_reliable(summary)


def test_the_reported_se_covers_the_bidirectional_sandwich():
    """With a reverse (upper-bound) estimate log Z⁺, the reported SE is at least half the
    sandwich width (log Z⁺ − log Ẑ)/2, and equals the weights' own SE when the sandwich is
    narrower (or inverted by noise)."""
    summary = W.summarize_log_weights(np.random.default_rng(0).normal(size=5000) * 0.3)
    own = W.reported_stderr(summary)
    assert W.reported_stderr(summary, log_z_upper=summary.log_z + 1.0) == pytest.approx(0.5)
    assert W.reported_stderr(summary, log_z_upper=summary.log_z - 1.0) == own
    assert W.reported_stderr(summary, log_z_upper=summary.log_z + own) == own


def test_exact_reference_draws_beyond_every_weight_widen_the_se_by_the_missing_mass():
    """A Student-t (5 df) target under a Gaussian proposal: the weights look healthy, but
    exact draws of the target beyond the largest proposal weight measure the mass the sample
    never reached, m ≈ b/n, and the reported SE is at least −log(1 − m) (the downward error
    that mass causes). Without reference draws the SE is the weights' own; a proposal equal to
    the target leaves at most ≈ n/M draws beyond (no widening to speak of). Deterministic
    given the seeds."""
    d = 10
    target = tfd.MultivariateStudentTLinearOperator(
        5.0, tf.zeros(d, tf.float64), tf.linalg.LinearOperatorIdentity(d, dtype=tf.float64))
    q = tfd.MultivariateNormalDiag(tf.zeros(d, tf.float64),
                                   tf.fill([d], tf.constant(math.sqrt(5 / 3), tf.float64)))
    ref = target.sample(2000, seed=tf.constant([7, 8])).numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = P.estimate_log_partition(target.log_prob, q, 20_000, seed=1)
        checked = P.estimate_log_partition(target.log_prob, q, 20_000, seed=1,
                                           reference_samples=ref)
    m = checked.reference_beyond_max / 2000 - 1 / 20_001
    assert checked.reference_beyond_max > 10
    assert checked.stderr >= -math.log1p(-m) - 1e-12 and checked.stderr > plain.stderr
    assert plain.stderr == max(plain.stderr_delta, plain.stderr_psis)  # the weights' own
    same = P.estimate_log_partition(target.log_prob, target, 20_000, seed=2,
                                    reference_samples=ref)
    assert same.reference_beyond_max <= 3 and same.stderr < 1e-6


def test_pareto_k_and_the_coverage_test_flag_a_cauchy_target_under_a_gaussian_proposal():
    """A 10-D Cauchy energy (log Z = 0) sampled from N(0, I): the weights have an infinite
    variance and the estimate misses mass far out, while its ESS (~700 of 20,000) looks
    healthy. k̂ alone flags only part of such runs (median k̂ 0.68 over 40 seeds); with 2,000
    exact draws of the target as reference samples the coverage test flags every one (over 40
    seeds: distance ≥ 0.35 against critical values ≤ 0.30, ≥ 699 draws beyond the largest
    proposal weight), so a chance pass is far beyond 1e-6 here."""
    d = 10
    target = tfd.MultivariateStudentTLinearOperator(
        1.0, tf.zeros(d, tf.float64), tf.linalg.LinearOperatorIdentity(d, dtype=tf.float64))
    q = tfd.MultivariateNormalDiag(tf.zeros(d, tf.float64), tf.ones(d, tf.float64))
    ref = target.sample(2000, seed=tf.constant([3, 4])).numpy()
    for seed in range(3):
        with pytest.warns(P.UnreliableEstimateWarning, match="misses part of the target"):
            r = P.estimate_log_partition(target.log_prob, q, 20_000, seed=seed,
                                         reference_samples=ref)
        assert not r.reliable and r.reference_beyond_max > 100, r
        assert r.coverage_statistic > r.coverage_critical
        assert r.log_z < 0  # the missing mass (log Z = 0)


def test_pareto_k_does_not_flag_a_gaussian_target_under_a_wider_proposal():
    """N(0, I₂) sampled from N(0, 1.5²I₂): the weights are bounded (k ≤ 0 in theory). Over 20
    seeded runs of 20,000 samples k̂ stays far below 0.5 (largest ≈ 0.15 in 40 seeds at
    d = 10), the coverage test with exact reference draws passes (it fails by chance in at
    most 2 % of runs: the DKW bound at 1 % per side) and every run is reliable and within
    3 SE of log Z = 0 (for a calibrated SE the chance of a miss over 20 runs is ≈ 5 %; the
    checks pass with these seeds)."""
    target = tfd.MultivariateNormalDiag(tf.zeros(2, tf.float64), tf.ones(2, tf.float64))
    q = tfd.MultivariateNormalDiag(tf.zeros(2, tf.float64), tf.fill([2], tf.constant(
        1.5, tf.float64)))
    ref = target.sample(2000, seed=tf.constant([5, 6])).numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        results = [P.estimate_log_partition(target.log_prob, q, 20_000, seed=s,
                                            reference_samples=ref) for s in range(20)]
    # the coverage test passes (largest distance over 40 seeds 0.025, critical value 0.036)
    assert all(r.reliable and r.pareto_k < 0.4 for r in results)
    assert all(r.coverage_statistic < r.coverage_critical for r in results)
    assert all(abs(r.log_z) < 3 * r.stderr for r in results)


def test_unreliable_normalization_is_stored_and_flagged_by_the_likelihood(trained_dde):
    """A model normalized with a hopeless proposal stores k̂ and the flag (also through a
    `.keras` round trip), and `average_log_likelihood` warns and says so."""
    model, x = trained_dde
    far = tfd.MultivariateNormalDiag(tf.constant([6.0, 6.0], tf.float64),
                                     tf.constant([0.2, 0.2], tf.float64))
    with pytest.warns(P.UnreliableEstimateWarning):
        r = model.normalize(x, proposal=far, num_samples=5000)
    assert not r.reliable and not model.log_z_is_reliable
    assert float(model.log_z_pareto_k.numpy()) == pytest.approx(r.pareto_k)
    with pytest.warns(P.UnreliableEstimateWarning, match="average log-likelihood"):
        all_ = P.average_log_likelihood(model, x[:100])
    assert not all_.reliable and "UNRELIABLE" in str(all_)
    model.normalize(x, num_samples=20_000, on_low_ess="ignore")
    assert model.log_z_is_reliable
