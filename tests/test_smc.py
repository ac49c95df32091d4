"""Tempered SMC (`dde.smc`) and the chains `model.sample` starts from it: mode masses and
moments on exact energies, the resampling and temperature rules, chain diagnostics."""
import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

import dde
from dde import sampling, smc

tfd = tfp.distributions
WEIGHTS = np.array([0.2, 0.3, 0.5])
MODES = np.array([[-6.0, 0.0], [6.0, 0.0], [0.0, 8.0]])
LOG_Z = 3.0  # the mixture below is normalized, times e³


def mixture_log_prob(x):
    """log(e³ · Σ_k w_k N(x; μ_k, I)) for three modes 12 standard deviations apart."""
    d2 = tf.reduce_sum(tf.square(x[:, None, :] - tf.constant(MODES, x.dtype)), -1)
    logits = tf.math.log(tf.constant(WEIGHTS, x.dtype)) - 0.5 * d2 - np.log(2 * np.pi)
    return tf.reduce_logsumexp(logits, -1) + LOG_Z


def broad_proposal():
    return tfd.MultivariateNormalTriL(tf.constant([0.0, 2.6], tf.float64),
                                      tf.constant(np.sqrt(30.0) * np.eye(2), tf.float64))


def mode_shares(x):
    nearest = np.linalg.norm(x[:, None] - MODES[None], axis=-1).argmin(1)
    return np.bincount(nearest, minlength=len(MODES)) / len(x)


def test_smc_population_carries_the_mode_masses_and_log_z():
    """Three well-separated modes with masses 0.2 / 0.3 / 0.5, started from one broad
    Gaussian: the shares of 2,000 particles match the masses within 0.06 and log Ẑ is within
    0.1 of 3. Over 30 seeds the shares' standard deviations were 0.013–0.016 and log Ẑ's
    0.020, so each bound is ≥ 3.7 SD: a correct sampler fails with chance < 1e-3."""
    res = smc.tempered_smc(mixture_log_prob, broad_proposal(), 2000, seed=0)
    assert res.samples.shape == (2000, 2)
    np.testing.assert_allclose(mode_shares(res.samples), WEIGHTS, atol=0.06)
    assert abs(res.log_z - LOG_Z) < 0.1
    assert res.temperatures[0] == 0.0 and res.temperatures[-1] == 1.0
    assert np.all(np.diff(res.temperatures) > 0)
    # Every reweighting but the last keeps the ESS at the target fraction (0.9) of n.
    np.testing.assert_allclose(res.ess[:-1], 0.9 * 2000, rtol=1e-3)
    assert res.ess[-1] >= 0.9 * 2000 * (1 - 1e-3)
    assert 0.3 < res.acceptance_rate < 1.0
    # Within each mode the particles are N(μ_k, I) (moves mixed the resampled copies).
    nearest = np.linalg.norm(res.samples[:, None] - MODES[None], axis=-1).argmin(1)
    within = res.samples - MODES[nearest]
    np.testing.assert_allclose(within.var(0), 1.0, rtol=0.15)
    assert len(np.unique(res.samples[:, 0])) > 0.9 * 2000


def test_smc_is_reproducible_and_validates():
    a = smc.tempered_smc(mixture_log_prob, broad_proposal(), 50, seed=3)
    b = smc.tempered_smc(mixture_log_prob, broad_proposal(), 50, seed=3)
    np.testing.assert_array_equal(a.samples, b.samples)
    with pytest.raises(ValueError, match="at least 2"):
        smc.tempered_smc(mixture_log_prob, broad_proposal(), 1, seed=0)
    with pytest.raises(ValueError, match="target_ess"):
        smc.tempered_smc(mixture_log_prob, broad_proposal(), 10, target_ess=1.0)
    with pytest.raises(RuntimeError, match="max_temperatures"):
        smc.tempered_smc(mixture_log_prob, broad_proposal(), 200, seed=0, max_temperatures=2)


def test_systematic_resampling_copies_each_particle_floor_or_ceil_times():
    rng = np.random.default_rng(0)
    w = rng.dirichlet(np.ones(37))
    for seed in range(5):
        index = smc.systematic_resample(np.log(w), np.random.default_rng(seed))
        counts = np.bincount(index, minlength=37)
        assert counts.sum() == 37
        assert np.all(counts >= np.floor(37 * w) - 1e-9) and np.all(counts <= np.ceil(37 * w))
    # Zero-weight (−inf, NaN) particles are never copied; no usable weight is an error.
    log_w = np.array([0.0, -np.inf, np.nan, 0.0])
    assert set(smc.systematic_resample(log_w, rng)) <= {0, 3}
    for bad in ([-np.inf, np.nan], [0.0, np.inf]):
        with pytest.raises(ValueError, match="no particle"):
            smc.systematic_resample(np.array(bad), rng)
    with pytest.raises(ValueError, match="kernel"):
        smc.tempered_smc(mixture_log_prob, broad_proposal(), 10, kernel="ula")


def test_next_temperature_keeps_the_effective_sample_size():
    delta = np.random.default_rng(1).normal(scale=5.0, size=1000)
    beta = smc.next_temperature(0.2, delta, 500.0)
    assert 0.2 < beta < 1.0
    assert smc.effective_sample_size((beta - 0.2) * delta) == pytest.approx(500.0, rel=1e-6)
    assert smc.next_temperature(0.2, np.zeros(10), 9.0) == 1.0  # flat weights: jump to 1
    assert smc.effective_sample_size(np.log(np.ones(4))) == pytest.approx(4.0)


@keras.saving.register_keras_serializable(package="dde_tests")
class MixtureNetwork(keras.layers.Layer):
    """f(x) = the log-density of the three-mode mixture above: [batch, 2] → [batch, 1]."""

    def call(self, x):
        return mixture_log_prob(x)[:, None]


@keras.saving.register_keras_serializable(package="dde_tests")
class GaussianNetwork(keras.layers.Layer):
    """f(x) = −½ (x − μ)ᵀ Σ⁻¹ (x − μ) for a fixed correlated Σ: [batch, 2] → [batch, 1]."""

    MEAN = np.array([1.0, -2.0])
    COV = np.array([[2.0, 0.8], [0.8, 0.5]])

    def call(self, x):
        prec = tf.constant(np.linalg.inv(self.COV), x.dtype)
        u = x - tf.constant(self.MEAN, x.dtype)
        return -0.5 * tf.reduce_sum(u * tf.linalg.matvec(prec, u), -1, keepdims=True)


def exact_dde(network, mean, cov):
    model = dde.DenoisingDensityEstimator(network, noise_std=0.5)
    model(tf.zeros([1, 2]))
    model.data_mean.assign(mean)
    model.data_cov.assign(cov)
    return model


def test_mala_from_the_smc_start_has_the_mode_masses():
    """`model.sample(method="mala")` on a DDE whose energy is the exact three-mode mixture,
    with a proposal (the model's data Gaussian) centred off towards the small mode: chains
    started by default from the SMC population end with shares within 0.06 of 0.2 / 0.3 /
    0.5 (2,000 chains: ≥ 3.7 SD of the SMC shares, see above; MALA keeps them, its chains
    do not cross between modes). Started from the proposal itself they keep the basins'
    shares, which here give the small mode about twice its mass."""
    model = exact_dde(MixtureNetwork(), np.array([-4.0, 1.0]), 30.0 * np.eye(2))
    res = model.sample(2000, method="mala", num_steps=200, step_size=0.5, seed=0,
                       return_results=True)
    assert res.diagnostics["init"]["method"] == "smc"
    assert abs(res.diagnostics["init"]["log_z"] - LOG_Z) < 0.1
    np.testing.assert_allclose(mode_shares(res.samples), WEIGHTS, atol=0.06)
    plain = model.sample(2000, method="mala", num_steps=200, step_size=0.5, seed=0,
                         init="proposal")
    assert mode_shares(plain)[0] > WEIGHTS[0] + 0.1


def test_mala_moments_on_an_exact_gaussian_energy():
    """MALA (defaults; SMC start from a proposal 4× too wide and shifted) on an exact
    correlated Gaussian energy: each coordinate's sample mean and variance are within 3
    Monte Carlo standard errors (SE = sd/√n and var·√(2/n): the 4,000 chains are
    independent). Four two-sided 3-SE checks: a correct sampler fails with chance ≈ 1 %."""
    net = GaussianNetwork()
    model = exact_dde(net, net.MEAN + 1.0, 4.0 * net.COV)
    n = 4000
    x = model.sample(n, method="mala", num_steps=300, seed=1).astype(np.float64)
    sd = np.sqrt(np.diag(net.COV))
    assert np.all(np.abs(x.mean(0) - net.MEAN) < 3 * sd / np.sqrt(n)), x.mean(0)
    var = np.diag(net.COV)
    assert np.all(np.abs(x.var(0) - var) < 3 * var * np.sqrt(2.0 / n)), x.var(0)


def test_init_options_and_their_errors():
    net = GaussianNetwork()
    model = exact_dde(net, net.MEAN, net.COV)
    # One proposal object per statistics, so SMC's compiled moves are reused across calls.
    assert model.default_proposal() is model.default_proposal()
    res = model.sample(500, method="mala", num_steps=20, seed=0, init="resample",
                       return_results=True)
    assert res.diagnostics["init"]["method"] == "resample"
    assert res.diagnostics["init"]["ess"] > 0.9 * 20 * 500  # proposal = target here
    res = model.sample(5, method="ula", num_steps=5, seed=0, init="proposal",
                       return_results=True)
    assert res.diagnostics["init"] == {"method": "proposal"}
    with pytest.raises(ValueError, match="init must be"):
        model.sample(5, init="nearest")


def test_chain_diagnostics_separate_mixed_from_stuck_chains():
    """Independent N(0, 1) draws: R̂ within 0.01 of 1 and ESS near T·chains; chains stuck at
    different offsets: R̂ well above 1.1."""
    rng = np.random.default_rng(0)
    mixed = rng.normal(size=(200, 50, 2))
    diag = sampling.chain_diagnostics(mixed)
    assert diag["rhat"].shape == (2,) and abs(diag["max_rhat"] - 1.0) < 0.01
    assert diag["min_ess"] > 0.7 * 200 * 50
    stuck = mixed + 3.0 * rng.normal(size=(1, 50, 2))
    assert sampling.chain_diagnostics(stuck)["max_rhat"] > 1.1
    model = exact_dde(GaussianNetwork(), GaussianNetwork.MEAN, GaussianNetwork.COV)
    # The correlated Gaussian mixes slowly along its long axis (variances 2.35 and 0.15):
    # 100 steps are too few and R̂ says so; 3,000 steps mix.
    short = model.sample(100, method="mala", num_steps=100, seed=0, return_results=True,
                         return_trajectory=True, thin=10)
    long = model.sample(100, method="mala", num_steps=3000, seed=0, return_results=True,
                        return_trajectory=True, thin=100)
    assert short.diagnostics["rhat"].shape == (2,) and short.diagnostics["max_rhat"] > 1.1
    assert long.diagnostics["max_rhat"] < 1.05 < short.diagnostics["max_rhat"]
    assert long.diagnostics["min_ess"] > short.diagnostics["min_ess"]
