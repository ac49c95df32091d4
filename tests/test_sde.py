"""Tests of dde.sde: marginals, priors, reverse-time processes, time sampling, validation."""
import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy import integrate, stats

from dde.sde import (
    SDE,
    VESDE,
    VPSDE,
    ReverseSDE,
    check_time_interval,
    check_times,
    get_sde,
)


def _np(v):
    return np.asarray(v.numpy() if hasattr(v, "numpy") else v, dtype=np.float64)


def test_vp_marginal_coefficients_closed_form():
    sde = VPSDE(beta_min=0.1, beta_max=20.0)
    t = np.array([1e-5, 1e-3, 0.1, 0.5, 1.0])
    alpha, std = (_np(v) for v in sde.marginal_coefficients(tf.constant(t, tf.float64)))
    # B(t) = ∫₀ᵗ β by quadrature.
    b = np.array([integrate.quad(lambda s: 0.1 + s * 19.9, 0, ti)[0] for ti in t])
    np.testing.assert_allclose(alpha, np.exp(-0.5 * b), rtol=1e-12)
    np.testing.assert_allclose(std, np.sqrt(1 - np.exp(-b)), rtol=1e-9)
    np.testing.assert_allclose(alpha ** 2 + std ** 2, 1.0, rtol=1e-12)  # variance preserving


def test_ve_marginal_coefficients_closed_form():
    sde = VESDE(sigma_min=0.01, sigma_max=50.0)
    t = np.array([0.0, 0.3, 1.0])
    alpha, std = (_np(v) for v in sde.marginal_coefficients(tf.constant(t, tf.float64)))
    np.testing.assert_allclose(alpha, 1.0)
    np.testing.assert_allclose(std, 0.01 * 5000.0 ** t, rtol=1e-12)
    # g² = dσ²/dt: the marginal variance grows by ∫g².
    g2 = _np(sde.diffusion_squared(tf.constant(t, tf.float64)))
    np.testing.assert_allclose(g2, 2 * np.log(5000.0) * std ** 2, rtol=1e-12)


@pytest.mark.parametrize("sde", [VPSDE(), VESDE(0.05, 3.0)], ids=["vp", "ve"])
def test_marginal_matches_euler_maruyama_simulation(sde):
    """Forward Euler–Maruyama from x₀ = 1.5 (2,000 steps, 20,000 paths) with the SDE's own
    drift and diffusion reaches the closed-form marginal at t = 0.6: mean and standard
    deviation within 4 standard errors plus the O(Δt) discretization bias (≤ 1% here).
    Chance failure ≈ 1e-4 per moment."""
    rng = np.random.default_rng(0)
    n, steps, t_end = 20_000, 2_000, 0.6
    dt = t_end / steps
    times = tf.constant(np.arange(steps) * dt, tf.float64)
    # Both drifts are linear, f = a(t)x: read a(t) and g(t) off the SDE on the whole grid.
    a, g = (_np(v) for v in sde.sde(tf.ones([steps, 1], tf.float64), times))
    a = a[:, 0]
    x = np.full(n, 1.5)
    for i in range(steps):
        x = x + a[i] * x * dt + g[i] * math.sqrt(dt) * rng.standard_normal(n)
    mean, std = sde.marginal_prob(tf.constant([[1.5]], tf.float64), tf.constant(t_end,
                                                                                tf.float64))
    mean, std = float(_np(mean)[0, 0]), float(_np(std))
    assert abs(x.mean() - mean) < 4 * std / math.sqrt(n) + 0.01 * std
    assert abs(x.std() - std) < 4 * std / math.sqrt(2 * n) + 0.01 * std


@pytest.mark.parametrize("sde,scale", [(VPSDE(), 1.0), (VESDE(0.01, 7.0), 7.0)],
                         ids=["vp", "ve"])
def test_prior_logp_and_sampling(sde, scale):
    z = np.random.default_rng(1).normal(size=(5, 3))
    expected = stats.norm(0, scale).logpdf(z).sum(axis=1)  # a sum over dimensions
    np.testing.assert_allclose(_np(sde.prior_logp(tf.constant(z))), expected, rtol=1e-12)
    s = _np(sde.prior_sampling([20_000, 2], seed=3))
    assert s.shape == (20_000, 2)
    # Standard deviation within 5 SE (chance failure < 1e-6).
    assert abs(s.std() / scale - 1) < 5 / math.sqrt(2 * 40_000)
    np.testing.assert_array_equal(s, _np(sde.prior_sampling([20_000, 2], seed=3)))


@pytest.mark.parametrize("sde", [VPSDE(), VESDE()], ids=["vp", "ve"])
def test_drift_divergence_matches_autodiff(sde):
    x = tf.constant(np.random.default_rng(2).normal(size=(4, 3)))
    t = tf.constant(0.37, tf.float64)
    closed = _np(sde.drift_divergence(x, t))
    autodiff = _np(SDE.drift_divergence(sde, x, t))  # the base-class Jacobian trace
    np.testing.assert_allclose(closed, autodiff, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("sde", [VPSDE(), VPSDE(1.0, 1.0), VESDE(0.02, 20.0)],
                         ids=["vp", "vp-constant-beta", "ve"])
def test_log_noise_inverse(sde):
    t = tf.constant([1e-5, 0.01, 0.4, 1.0], tf.float64)
    lam = sde.log_noise(t)
    alpha, std = sde.marginal_coefficients(t)
    np.testing.assert_allclose(_np(lam), np.log(_np(std) / _np(alpha)), rtol=1e-9)
    np.testing.assert_allclose(_np(sde.time_from_log_noise(lam)), _np(t), rtol=1e-8)


def _weight_np(sde, s):
    """g(t)²/σ_t² in NumPy from the closed forms (independent of the TF code)."""
    if isinstance(sde, VPSDE):
        b = sde.beta_min * s + 0.5 * (sde.beta_max - sde.beta_min) * s ** 2
        return (sde.beta_min + s * (sde.beta_max - sde.beta_min)) / -np.expm1(-b)
    return 2 * np.log(sde.sigma_max / sde.sigma_min) * np.ones_like(s)


@pytest.mark.parametrize("sde", [VPSDE(), VESDE(0.01, 10.0)], ids=["vp", "ve"])
def test_importance_time_sampling_density_and_normalizer(sde):
    """Times from uniforms have density ∝ g²/σ² on [eps, T] (Kolmogorov–Smirnov against the
    quadrature CDF, 20,000 draws; chance failure 1e-3) and Z = ∫ g²/σ² dt."""
    eps = 1e-4
    u = tf.random.stateless_uniform([20_000], [4, 5], dtype=tf.float64)
    t, z = sde.importance_time_sampling(u, eps)
    t = np.sort(_np(t))
    assert t[0] >= eps and t[-1] <= sde.T
    edges = np.concatenate([[eps], np.geomspace(eps, 1.0, 400)[1:]])
    pieces = [integrate.quad(lambda s: _weight_np(sde, s), a, b)[0]
              for a, b in zip(edges[:-1], edges[1:])]
    cum = np.concatenate([[0.0], np.cumsum(pieces)])
    np.testing.assert_allclose(float(_np(z)), cum[-1], rtol=1e-6)
    cdf = np.interp(t, edges, cum / cum[-1])
    empirical = np.arange(1, len(t) + 1) / len(t)
    assert np.max(np.abs(cdf - empirical)) < 1.95 / math.sqrt(len(t)) + 2e-3


def test_reverse_and_probability_flow_drifts():
    sde = VPSDE()
    x = tf.constant([[0.3, -1.0], [2.0, 0.5]], tf.float64)
    t = tf.constant(0.4, tf.float64)

    def score(x, t):
        return -2.0 * x

    drift, g = sde.sde(x, t)
    rev = sde.reverse(score)
    assert isinstance(rev, ReverseSDE) and rev.T == sde.T
    r_drift, r_g = rev.sde(x, t)
    np.testing.assert_allclose(_np(r_drift), _np(drift) - _np(g) ** 2 * _np(score(x, t)))
    np.testing.assert_allclose(_np(r_g), _np(g))
    pf_drift, pf_g = sde.reverse(score, probability_flow=True).sde(x, t)
    np.testing.assert_allclose(_np(pf_drift), _np(drift) - 0.5 * _np(g) ** 2 * _np(score(x, t)))
    assert float(_np(pf_g)) == 0.0
    np.testing.assert_allclose(_np(sde.probability_flow_drift(x, t, score(x, t))),
                               _np(pf_drift))


@pytest.mark.parametrize("sde", [VPSDE(0.2, 10.0, T=2.0), VESDE(0.1, 9.0)], ids=["vp", "ve"])
def test_serialization(sde):
    config = keras.saving.serialize_keras_object(sde)
    assert config["registered_name"].startswith("dde>")
    restored = keras.saving.deserialize_keras_object(config)
    assert restored == sde and hash(restored) == hash(sde)
    assert type(sde).from_config(sde.get_config()) == sde
    assert get_sde(config) == sde
    assert get_sde("vp") == VPSDE() and get_sde("VE") == VESDE()


def test_bad_parameters():
    with pytest.raises(ValueError, match="beta_max"):
        VPSDE(beta_min=1.0, beta_max=0.5)
    with pytest.raises(ValueError, match="beta_min"):
        VPSDE(beta_min=0.0)
    with pytest.raises(ValueError, match="sigma_max"):
        VESDE(sigma_min=1.0, sigma_max=1.0)
    with pytest.raises(ValueError, match="T must"):
        VPSDE(T=0.0)
    with pytest.raises(TypeError, match="T must"):
        VESDE(T="1")
    with pytest.raises(ValueError, match="Unknown SDE"):
        get_sde("subvp")
    with pytest.raises(TypeError, match="sde must"):
        get_sde(3)
    with pytest.raises(TypeError, match="score_fn"):
        VPSDE().reverse(None)
    with pytest.raises(ValueError, match="seed"):
        VPSDE().prior_sampling([2, 2], seed=[1, 2, 3])


def test_time_validation():
    assert check_time_interval(1e-5, 1.0) == 1e-5
    with pytest.raises(ValueError, match="eps"):
        check_time_interval(0.0, 1.0)
    with pytest.raises(ValueError, match="eps"):
        check_time_interval(-1e-3, 1.0)
    with pytest.raises(ValueError, match="smaller than"):
        check_time_interval(1.0, 1.0)
    np.testing.assert_allclose(check_times([0.1, 1.0], 1e-3, 1.0, n=2), [0.1, 1.0])
    with pytest.raises(ValueError, match=r"outside \[T_ε, T\]"):
        check_times(1.5, 1e-3, 1.0)
    with pytest.raises(ValueError, match=r"outside \[T_ε, T\]"):
        check_times([0.5, 1e-4], 1e-3, 1.0)
    with pytest.raises(ValueError, match="NaN"):
        check_times([0.5, np.nan], 1e-3, 1.0)
    with pytest.raises(ValueError, match="entries"):
        check_times([0.5, 0.6, 0.7], 1e-3, 1.0, n=2)
    with pytest.raises(ValueError, match="scalar or a vector"):
        check_times(np.ones((2, 2)), 1e-3, 1.0)
    with pytest.raises(TypeError, match="real numbers"):
        check_times(["a"], 1e-3, 1.0)
