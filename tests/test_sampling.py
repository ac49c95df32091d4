"""Tests of dde.sampling: ULA, MALA and annealed Langevin against analytic targets, the step-size
convention, serialization, trajectories, divergence handling, bad input and `model.sample`."""
import gc
import warnings
import weakref

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp
from scipy import stats

import dde
from dde import sampling
from dde._cache import cached_functions
from dde.sampling import (AnnealedLangevinSampler, LangevinSampler, LogDensity, MALASampler,
                          SamplerResults)


def gaussian_target(cov, dtype="float64"):
    """LogDensity of N(0, cov) with its exact score −cov⁻¹x."""
    prec = tf.constant(np.linalg.inv(cov), dtype)

    def log_prob(x):
        return -0.5 * tf.reduce_sum(x * tf.linalg.matvec(prec, x), -1)

    def score(x):
        return -tf.linalg.matvec(prec, x)
    return LogDensity(log_prob, score_fn=score, input_dim=len(cov), dtype=dtype)


STANDARD_2D = np.eye(2)
CORRELATED_3D = np.array([[2.0, 0.9, 0.3], [0.9, 1.0, -0.3], [0.3, -0.3, 0.5]])


# ------------------------------------------------------------------------ correctness
@pytest.mark.parametrize("cov", [STANDARD_2D, CORRELATED_3D], ids=["standard", "correlated"])
def test_mala_matches_gaussian_target(cov):
    """MALA on N(0, Σ) with the exact gradient: the final states of 3000 independent chains
    (over-dispersed start, 300 adapted burn-in + 200 kept steps, far beyond mixing) are exact
    draws. Per-marginal two-sample KS test against 3000 exact draws (p > 1e-4), every mean
    within 4.5 SE (SE = sqrt(Σ_ii/n)) and every covariance entry within 4.5 SE
    (SE² = (Σ_ii Σ_jj + Σ_ij²)/n). Fixed seeds; for a correct sampler the chance of a failure
    over all checks of both targets is below 0.2 %.
    """
    d, n = len(cov), 3000
    rng = np.random.default_rng(0)
    chol = np.linalg.cholesky(cov)
    x0 = 2.0 * rng.normal(size=(n, d)) @ chol.T
    sampler = MALASampler(step_size=0.05, num_steps=200, num_burnin_steps=300)
    res = sampler(gaussian_target(cov), x0, seed=1)
    assert isinstance(res, SamplerResults)
    x = res.samples
    assert x.shape == (n, d) and x.dtype == np.float64 and res.num_diverged == 0
    # The adapted step size reaches the target acceptance.
    assert abs(res.acceptance_rate - 0.574) < 0.06, res.acceptance_rate
    exact = rng.normal(size=(n, d)) @ chol.T
    for j in range(d):
        assert stats.ks_2samp(x[:, j], exact[:, j]).pvalue > 1e-4, j
    se_mean = np.sqrt(np.diag(cov) / n)
    assert np.all(np.abs(x.mean(0)) < 4.5 * se_mean), (x.mean(0), se_mean)
    se_cov = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / n)
    emp = np.cov(x, rowvar=False)
    assert np.all(np.abs(emp - cov) < 4.5 * se_cov), (emp, cov)


def test_mala_step_size_convention_matches_tfp():
    """MALASampler(step_size=h) makes TFP's MetropolisAdjustedLangevinAlgorithm(step_size=2h)
    proposals: on N(0, I₂) with h = 1 (no adaptation, start at stationarity) both accept
    ≈ 67 % of proposals, while TFP with step_size = h accepts ≈ 88 %. 2000 chains × 50 steps:
    the SE of each rate is < 0.003, so the 0.015 tolerance fails by chance with probability
    < 1e-4 (fixed seeds)."""
    n, steps, h = 2000, 50, 1.0
    x0 = np.random.default_rng(0).normal(size=(n, 2))
    target = gaussian_target(STANDARD_2D)
    ours = MALASampler(step_size=h, num_steps=steps, num_burnin_steps=0,
                       adapt_step_size=False)(target, x0, seed=3)
    assert ours.step_size == h

    @tf.function(autograph=False)
    def tfp_rate(eps):
        kernel = tfp.mcmc.MetropolisAdjustedLangevinAlgorithm(target.log_prob_fn, step_size=eps)
        _, accepted = tfp.mcmc.sample_chain(steps, tf.constant(x0), kernel=kernel,
                                            trace_fn=lambda _, kr: kr.is_accepted, seed=[4, 5])
        return tf.reduce_mean(tf.cast(accepted, tf.float64))

    same = float(tfp_rate(tf.constant(2 * h, tf.float64)))
    other = float(tfp_rate(tf.constant(h, tf.float64)))
    assert abs(ours.acceptance_rate - same) < 0.015, (ours.acceptance_rate, same)
    assert abs(ours.acceptance_rate - other) > 0.1, (ours.acceptance_rate, other)


def test_ula_bias_matches_theory_and_shrinks_with_step_size():
    """ULA on N(0, I₄) has stationary variance 1/(1 − h/2): 4/3 at h = 0.5, 1.026 at h = 0.05.
    5000 chains × 4 dims = 20,000 independent draws per step size (started at 0, run ≥ 60
    relaxation times); each variance estimate is within 4 SE (SE = v·sqrt(2/20000)) of the
    exact biased value, and the smaller step's bias is much smaller. Fixed seeds; chance of a
    false failure < 1e-4."""
    n, d = 5000, 4
    target = gaussian_target(np.eye(d))
    variances = {}
    for h, steps in ((0.5, 150), (0.05, 1200)):
        res = LangevinSampler(step_size=h, num_steps=steps)(target, np.zeros((n, d)), seed=7)
        assert res.acceptance_rate is None and res.num_diverged == 0
        v = res.samples.var()
        exact = 1.0 / (1.0 - h / 2.0)
        assert abs(v - exact) < 4 * exact * np.sqrt(2.0 / (n * d)), (h, v, exact)
        variances[h] = v
    assert abs(variances[0.05] - 1.0) < abs(variances[0.5] - 1.0) / 4


WEIGHTS = np.array([0.2, 0.8])
MODES = np.array([[-5.0, -5.0], [5.0, 5.0]])


def mixture_score(x, sigma):
    """Exact score of (0.2·N((−5,−5), I) + 0.8·N((5,5), I)) * N(0, σ²I): a mixture with
    component variance 1 + σ²."""
    var = 1.0 + tf.square(tf.cast(sigma, x.dtype))
    mu = tf.constant(MODES, x.dtype)
    diff = mu[None] - x[:, None, :]
    logits = tf.math.log(tf.constant(WEIGHTS, x.dtype)) - tf.reduce_sum(diff**2, -1) / (2 * var)
    resp = tf.nn.softmax(logits, axis=-1)
    return tf.einsum("bk,bkd->bd", resp, diff) / var


def test_annealed_langevin_recovers_mode_weights_where_ula_fails():
    """The two-mode example of Song & Ermon (2019): annealed Langevin over 10 levels from σ = 20
    to 1 (100 steps each, h = 0.05σ_L²) from a uniform start on [−8, 8]² puts 0.2 ± 0.05 of
    2000 chains in the small mode (SE 0.009: a correct sampler fails with chance < 1e-6);
    plain ULA on the same final density started in the large mode never leaves it, and
    started uniformly splits ≈ ½/½ (both off by more than 0.05)."""
    n = 2000
    rng = np.random.default_rng(0)
    uniform = rng.uniform(-8, 8, size=(n, 2))
    annealed = AnnealedLangevinSampler(steps_per_level=100,
                                       noise_levels=np.geomspace(20, 1, 10).tolist())
    res = annealed(mixture_score, uniform, seed=1)
    assert res.step_size == pytest.approx(0.05)
    small_mode = np.mean(res.samples.sum(1) < 0)
    assert abs(small_mode - 0.2) < 0.05, small_mode
    # Within a mode the samples follow N(μ_k, (1 + σ_L²) I) = N(μ_k, 2I) roughly.
    big = res.samples[res.samples.sum(1) > 0]
    assert np.allclose(big.mean(0), [5, 5], atol=0.2) and np.allclose(big.var(0), 2, rtol=0.2)

    ula_target = LogDensity(score_fn=lambda x: mixture_score(x, 1.0), input_dim=2)
    ula = LangevinSampler(step_size=0.05, num_steps=1000)
    one_mode = ula(ula_target, rng.normal(size=(n, 2)) + 5.0, seed=2)
    assert np.mean(one_mode.samples.sum(1) < 0) == 0.0
    spread = ula(ula_target, uniform, seed=2)
    assert abs(np.mean(spread.samples.sum(1) < 0) - 0.2) > 0.15


def test_annealed_accepts_a_list_of_dde_models():
    """A list of DDEs ordered by decreasing noise_std gives one level each; the Tweedie
    denoising step at the end is applied (changes the samples)."""
    models = []
    for sigma in (1.0, 0.5, 0.25):
        m = dde.DenoisingDensityEstimator(dde.nets.energy_mlp(2, depth=1, width=8),
                                          noise_std=sigma, seed=0)
        m(tf.zeros([1, 2]))
        models.append(m)
    x0 = np.random.default_rng(0).normal(size=(50, 2))
    plain = AnnealedLangevinSampler(steps_per_level=5)
    res = plain(models, x0, seed=0, return_trajectory=True)
    assert res.samples.shape == (50, 2) and res.trajectory.shape == (15, 50, 2)
    np.testing.assert_allclose(plain.levels_for(models), [1.0, 0.5, 0.25], rtol=1e-6)
    assert res.step_size == pytest.approx(0.05 * 0.25**2)
    denoised = AnnealedLangevinSampler(steps_per_level=5, denoise=True)(models, x0, seed=0)
    expected = res.samples + 0.25**2 * models[-1].score(res.samples)
    np.testing.assert_allclose(denoised.samples, expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="decreasing noise_std"):
        plain(models[::-1], x0)


# ------------------------------------------------------------------- layer mechanics
SAMPLERS = [
    LangevinSampler(step_size=0.1, num_steps=12, thin=3),
    MALASampler(step_size=0.2, num_steps=12, num_burnin_steps=5, thin=3,
                target_accept_prob=0.6),
    AnnealedLangevinSampler(step_size=0.01, steps_per_level=4, noise_levels=[1.0, 0.5, 0.2],
                            thin=3, denoise=True),
]


def target_for(sampler):
    if isinstance(sampler, AnnealedLangevinSampler):
        return lambda x, sigma: -x / (1.0 + sigma**2)
    return gaussian_target(np.eye(2), dtype="float32")


@pytest.mark.parametrize("sampler", SAMPLERS, ids=lambda s: type(s).__name__)
def test_round_trip_config_and_trajectory_shape(sampler):
    """get_config → from_config (and Keras (de)serialization) reproduces the sampler: the
    same seed gives identical samples. The trajectory is [total_steps // thin, chains, d]
    and its last entry is the final state (12 steps, thin 3: 4 saved states)."""
    config = sampler.get_config()
    clone = type(sampler).from_config(config)
    assert clone.get_config() == config
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(sampler))
    assert type(restored) is type(sampler) and restored.get_config() == config
    x0 = np.random.default_rng(0).normal(size=(7, 2))
    target = target_for(sampler)
    a = sampler(target, x0, seed=11, return_trajectory=True)
    b = restored(target, x0, seed=11, return_trajectory=True)
    np.testing.assert_array_equal(a.samples, b.samples)
    assert a.samples.shape == (7, 2) and a.samples.dtype == np.float32
    assert a.trajectory.shape == (4, 7, 2)
    if not getattr(sampler, "denoise", False):
        np.testing.assert_array_equal(a.trajectory[-1], a.samples)
    c = sampler(target, x0, seed=12)
    assert c.trajectory is None and not np.array_equal(c.samples, a.samples)


def test_compiled_once_per_configuration():
    """Other chain counts, step sizes, step counts and seeds reuse the compiled loop; a
    trajectory request compiles a second variant once."""
    target = gaussian_target(np.eye(3))
    rng = np.random.default_rng(0)
    for i, (h, steps, n) in enumerate([(0.1, 5, 4), (0.2, 9, 17), (0.05, 3, 1)]):
        LangevinSampler(step_size=h, num_steps=steps)(target, rng.normal(size=(n, 3)), seed=i)
        MALASampler(step_size=h, num_steps=steps, num_burnin_steps=steps)(
            target, rng.normal(size=(n, 3)), seed=i)
    assert sampling._tracing_count(LangevinSampler(), target, 3) == 1
    assert sampling._tracing_count(MALASampler(), target, 3) == 1
    for steps in (4, 6):
        LangevinSampler(num_steps=steps, thin=2)(target, rng.normal(size=(3, 3)),
                                                 return_trajectory=True)
    assert sampling._tracing_count(LangevinSampler(), target, 3, record=True) == 1


def test_compiled_loops_do_not_keep_models_alive():
    """The compiled-loop cache holds its targets weakly: a deleted model is freed."""
    model = small_dde()
    LangevinSampler(num_steps=2)(model, np.zeros((3, 2)), seed=0)
    MALASampler(num_steps=2, num_burnin_steps=1)(model, np.zeros((3, 2)), seed=0)
    assert cached_functions(model)  # the loops are cached for it
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None


def test_progress_bar_and_unseeded_calls(capsys):
    """progress=True prints a Keras progress bar reaching the last step; seed=None draws
    fresh randomness."""
    target = gaussian_target(np.eye(2), dtype="float32")
    sampler = LangevinSampler(step_size=0.1, num_steps=50)
    x0 = np.zeros((5, 2))
    sampler(target, x0, seed=0, progress=True)
    assert "50/50" in capsys.readouterr().out
    assert not np.array_equal(sampler(target, x0).samples, sampler(target, x0).samples)


# ----------------------------------------------------------------------- divergence
def quartic():
    """log p = −x⁴/4 per coordinate: ULA with h = 0.1 is stable near 0 and explodes from
    |x| = 10 (the step −h x³ overshoots)."""
    return LogDensity(lambda x: -0.25 * tf.reduce_sum(x**4, -1), score_fn=lambda x: -x**3,
                      input_dim=1, dtype="float32")


def test_diverging_chains_are_counted_dropped_and_reported():
    x0 = np.concatenate([np.zeros((6, 1)), np.full((4, 1), 10.0)])
    ula = LangevinSampler(step_size=0.1, num_steps=50)
    with pytest.warns(RuntimeWarning, match="4 of 10 chains diverged"):
        res = ula(quartic(), x0, seed=0, return_trajectory=True)
    assert res.num_diverged == 4
    assert res.samples.shape == (6, 1) and np.isfinite(res.samples).all()
    assert res.trajectory.shape == (50, 6, 1) and np.isfinite(res.trajectory).all()
    with pytest.raises(RuntimeError, match="4 of 10 chains diverged"):
        LangevinSampler(step_size=0.1, num_steps=50, on_divergence="raise")(quartic(), x0)
    with pytest.raises(RuntimeError, match="All chains diverged"):
        ula(quartic(), np.full((3, 1), 10.0))
    # MALA rejects the exploding proposals instead: no chain diverges (those at 10 stay put).
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mala = MALASampler(step_size=0.1, num_steps=50, num_burnin_steps=0,
                           adapt_step_size=False)(quartic(), x0, seed=0)
    assert mala.num_diverged == 0 and mala.samples.shape == (10, 1)
    assert np.all(np.abs(mala.samples[:6]) < 3.0) and np.all(mala.samples[6:] == 10.0)


# ------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("make, error, message", [
    (lambda: LangevinSampler(step_size=0.0), ValueError, "step_size"),
    (lambda: LangevinSampler(step_size=-1e-3), ValueError, "step_size"),
    (lambda: LangevinSampler(step_size=float("nan")), ValueError, "step_size"),
    (lambda: LangevinSampler(num_steps=0), ValueError, "num_steps"),
    (lambda: LangevinSampler(num_steps=2.5), TypeError, "num_steps"),
    (lambda: LangevinSampler(thin=0), ValueError, "thin"),
    (lambda: LangevinSampler(on_divergence="ignore"), ValueError, "on_divergence"),
    (lambda: MALASampler(num_burnin_steps=-1), ValueError, "num_burnin_steps"),
    (lambda: MALASampler(target_accept_prob=1.2), ValueError, "target_accept_prob"),
    (lambda: AnnealedLangevinSampler(steps_per_level=0), ValueError, "steps_per_level"),
    (lambda: AnnealedLangevinSampler(noise_levels=[0.1, 1.0]), ValueError, "decreasing"),
    (lambda: AnnealedLangevinSampler(noise_levels=[1.0, -0.1]), ValueError, "> 0"),
])
def test_bad_constructor_arguments(make, error, message):
    with pytest.raises(error, match=message):
        make()


def small_dde(d=2, sigma=0.5):
    model = dde.DenoisingDensityEstimator(dde.nets.energy_mlp(d, depth=1, width=8),
                                          noise_std=sigma, seed=0)
    model(tf.zeros([1, d]))
    return model


@pytest.mark.parametrize("x0, error, message", [
    (np.zeros(2), ValueError, "Reshape your data"),
    (np.zeros((4, 3)), ValueError, "3 features, but DenoisingDensityEstimator is expecting 2"),
    (np.array([[0.0, np.nan]]), ValueError, "NaN"),
    (np.array([[0.0, np.inf]]), ValueError, "infinity"),
    (np.zeros((0, 2)), ValueError, "0 sample"),
    (np.array([["a", "b"]]), TypeError, "non-numeric"),
])
def test_bad_initial_states(x0, error, message):
    with pytest.raises(error, match=message):
        LangevinSampler(num_steps=2)(small_dde(), x0)


def test_bad_targets_and_call_arguments():
    x0 = np.zeros((3, 2))
    with pytest.raises(TypeError, match="log-density itself"):
        MALASampler(num_steps=2)(LogDensity(score_fn=lambda x: -x), x0)
    with pytest.raises(TypeError, match="NoiseConditionalDDE"):
        AnnealedLangevinSampler()(small_dde(), x0)
    with pytest.raises(ValueError, match="noise_levels are required"):
        AnnealedLangevinSampler()(lambda x, s: -x, x0)
    with pytest.raises(ValueError, match="different input dimensions"):
        AnnealedLangevinSampler()([small_dde(2, 1.0), small_dde(3, 0.5)], x0)
    with pytest.raises(TypeError, match="target must be"):
        LangevinSampler()("not a model", x0)
    with pytest.raises(TypeError, match="AnnealedLangevinSampler only"):
        LangevinSampler()([small_dde()], x0)
    with pytest.raises(ValueError, match="thin"):
        LangevinSampler(num_steps=3, thin=5)(small_dde(), x0, return_trajectory=True)
    with pytest.raises(TypeError, match="seed"):
        LangevinSampler(num_steps=3)(small_dde(), x0, seed=1.5)
    with pytest.raises(ValueError, match="shape"):
        LangevinSampler(num_steps=2)(LogDensity(score_fn=lambda x: -x[:, :1]), x0)
    with pytest.raises(ValueError, match="LogDensity needs"):
        LogDensity()


# ------------------------------------------------------------------- model.sample
A = np.array([[1.0, 0.0], [0.6, 0.5]])
MU = np.array([0.5, -0.3])
SIGMA = 0.3


@pytest.fixture(scope="module")
def trained_dde():
    """A tiny DDE trained on N(MU, A Aᵀ) at σ = 0.3: it learns p_σ = N(MU, A Aᵀ + σ²I)."""
    keras.utils.set_random_seed(0)
    x = (np.random.default_rng(0).normal(size=(4000, 2)) @ A.T + MU).astype("float32")
    model = dde.DenoisingDensityEstimator(dde.nets.energy_mlp(2, depth=2, width=32),
                                          noise_std=SIGMA, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(5e-3))
    model.fit(x, epochs=15, batch_size=128, verbose=0)
    return model


@pytest.mark.parametrize("method", ["ula", "mala"])
def test_model_sample_matches_smoothed_data_density(trained_dde, method):
    """model.sample with its defaults (start N(data_mean, data_cov), h = 0.1σ² for ULA,
    adapted for MALA) draws from the learned p_σ ≈ N(MU, A Aᵀ + σ²I). 1000 chains: mean SE
    ≈ 0.04; the tolerances (0.2 on the mean, 25 % on the variances) cover the model's
    approximation error and fail for a broken sampler (e.g. no drift or a wrong sign)."""
    res = trained_dde.sample(1000, method=method, num_steps=400, seed=0, return_results=True)
    x = res.samples
    assert x.shape == (1000, 2) and x.dtype == np.float32 and res.num_diverged == 0
    target_cov = A @ A.T + SIGMA**2 * np.eye(2)
    assert np.allclose(x.mean(0), MU, atol=0.2), x.mean(0)
    assert np.allclose(np.diag(np.cov(x, rowvar=False)), np.diag(target_cov), rtol=0.25)
    if method == "mala":
        assert 0.45 < res.acceptance_rate < 0.7
    else:
        assert res.step_size == pytest.approx(0.1 * SIGMA**2, rel=1e-5)


def test_model_sample_init_trajectory_and_errors(trained_dde):
    """Given starting points are used (one row: every chain starts there); trajectories and
    seeds behave as documented; bad arguments raise clear errors."""
    samples, traj = trained_dde.sample(20, init=[[3.0, 3.0]], num_steps=10, seed=1,
                                       return_trajectory=True, thin=5)
    assert samples.shape == (20, 2) and traj.shape == (2, 20, 2)
    np.testing.assert_array_equal(traj[-1], samples)
    # 10 steps of h = 0.1σ² move the chains only part of the way towards the data.
    centre = samples.mean(0)
    assert np.linalg.norm(centre - 3.0) < np.linalg.norm(centre - MU), centre
    np.testing.assert_array_equal(trained_dde.sample(5, num_steps=5, seed=3),
                                  trained_dde.sample(5, num_steps=5, seed=3))
    with pytest.raises(ValueError, match="method"):
        trained_dde.sample(5, method="hmc")
    with pytest.raises(ValueError, match="n must be"):
        trained_dde.sample(0)
    with pytest.raises(ValueError, match="step_size"):
        trained_dde.sample(5, step_size=-1.0)
    with pytest.raises(ValueError, match="init has 3 rows"):
        trained_dde.sample(5, init=np.zeros((3, 2)))
    with pytest.raises(ValueError, match="3 features"):
        trained_dde.sample(5, init=np.zeros((5, 3)))
    with pytest.raises(ValueError, match="NaN"):
        trained_dde.sample(1, init=[[np.nan, 0.0]])
    with pytest.raises(TypeError, match="NoiseConditionalDDE"):
        trained_dde.sample(5, method="annealed")


def test_model_sample_without_training_statistics_warns():
    model = small_dde()
    with pytest.warns(UserWarning, match="standard normal"):
        x = model.sample(10, num_steps=3, seed=0)
    assert x.shape == (10, 2)
    unbuilt = dde.DenoisingDensityEstimator(dde.nets.energy_mlp(2, depth=1, width=8))
    with pytest.raises(ValueError, match="pass init"):
        unbuilt.sample(3)


@keras.saving.register_keras_serializable(package="dde_tests")
class ExactMixtureEnergy(keras.layers.Layer):
    """f([x, log σ]) = log of the 2-D mixture 0.2·N((−5,−5), I) + 0.8·N((5,5), I) smoothed by
    N(0, σ²I): an exact noise-conditional energy network, [batch, 2], [batch, 1] → [batch, 1]."""

    def call(self, inputs):
        x, log_sigma = inputs
        var = 1.0 + tf.exp(2.0 * log_sigma)  # [batch, 1]
        mu = tf.constant(MODES, x.dtype)
        d2 = tf.reduce_sum(tf.square(x[:, None, :] - mu[None]), -1)  # [batch, 2]
        logits = (tf.math.log(tf.constant(WEIGHTS, x.dtype)) - d2 / (2.0 * var)
                  - tf.math.log(2.0 * np.pi * var))
        return tf.reduce_logsumexp(logits, axis=-1, keepdims=True)


def test_model_sample_annealed_on_noise_conditional_dde():
    """model.sample(method="annealed") with its defaults (10 levels of noise_levels(10) from
    σ = 20 to 0.1, 100 steps each, h = 0.05σ_L², start N(data_mean, data_cov + σ₁²I)) on a
    NoiseConditionalDDE whose network is the exact smoothed two-mode energy: the small mode
    gets 0.2 ± 0.05 of 2000 chains (SE 0.009; a correct sampler fails with chance < 1e-6), and
    the samples are concentrated around the modes."""
    model = dde.NoiseConditionalDDE(ExactMixtureEnergy(), sigma_min=0.1, sigma_max=20.0)
    model(tf.zeros([1, 2]))
    model.data_mean.assign(WEIGHTS @ MODES)
    diff = MODES[1] - MODES[0]
    model.data_cov.assign(np.eye(2) + WEIGHTS[0] * WEIGHTS[1] * np.outer(diff, diff))
    res = model.sample(2000, method="annealed", seed=0, return_results=True)
    assert res.samples.shape == (2000, 2) and res.num_diverged == 0
    assert res.step_size == pytest.approx(0.05 * 0.1**2)
    small = res.samples.sum(1) < 0
    assert abs(small.mean() - 0.2) < 0.05, small.mean()
    centred = res.samples - np.where(small[:, None], MODES[0], MODES[1])
    assert np.all(np.abs(centred.mean(0)) < 0.15) and np.allclose(centred.var(0), 1.01, rtol=0.15)


class ExactGaussianSampler(keras.layers.Layer):
    """A toy sampler for the registry test: exact draws from N(data_mean, data_cov), ignoring
    the chains' starting points (a model fitted to Gaussian data)."""

    def __call__(self, target, initial_state, seed=None, return_trajectory=False,
                 progress=False):
        rng = np.random.default_rng(seed)
        x = rng.multivariate_normal(target.data_mean.numpy(), target.data_cov.numpy(),
                                    size=len(initial_state))
        return SamplerResults(x, None, None, 0, 0.0)


def test_a_new_sampler_is_one_class_and_one_registry_line(trained_dde, tmp_path):
    """Registering a sampler recipe makes `model.sample(method=name)` and `dde sample
    --method name` use it (the command line's choices come from the same registry)."""
    from dde_cli import main

    sampling.SAMPLERS.register("exact_gaussian", sampling.SamplerRecipe(
        lambda model, num_steps, step_size, **options: (ExactGaussianSampler(), 0.0),
        lambda sigma: None))
    try:
        x = trained_dde.sample(500, method="exact_gaussian", seed=0)
        assert x.shape == (500, 2)
        np.testing.assert_allclose(np.cov(x, rowvar=False), trained_dde.data_cov.numpy(),
                                   atol=0.5)
        assert "exact_gaussian" in sampling.SAMPLERS.names()
        trained_dde.save(tmp_path / "m.keras")
        assert main(["sample", "--model", str(tmp_path / "m.keras"), "-n", "50", "--method",
                     "exact_gaussian", "--out", str(tmp_path / "s.npy"), "--quiet"]) == 0
        assert np.load(tmp_path / "s.npy").shape == (50, 2)
    finally:
        sampling.SAMPLERS.unregister("exact_gaussian")
    with pytest.raises(ValueError, match="method must be one of"):
        trained_dde.sample(5, method="exact_gaussian")
