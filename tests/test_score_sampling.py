"""Tests of dde.score_sampling: reverse-SDE (predictor–corrector) and probability-flow ODE
samplers on Gaussian data with exact scores, trajectories, failures, configs, validation."""
import gc
import math
import weakref

import keras
import numpy as np
import pytest
import tensorflow as tf

from dde._cache import cached_functions
from dde.likelihood import ODESolverError, probability_flow_log_prob
from dde.nets import score_mlp
from dde.score import ScoreNetwork
from dde.score_sampling import ProbabilityFlowSampler, ReverseDiffusionSampler
from dde.sde import VESDE, VPSDE

MEAN = np.array([1.0, -2.0])
STD = np.array([0.5, 1.5])


def exact_score(sde):
    """Exact score of N(MEAN, diag(STD²)) data under the SDE (float32)."""
    mean, var = tf.constant(MEAN, tf.float32), tf.constant(STD ** 2, tf.float32)

    def score(x, t):  # computes in float32 whatever the caller's dtype, like a network
        alpha, std = sde.marginal_coefficients(tf.cast(t, tf.float32))
        x = tf.cast(x, tf.float32)
        return -(x - alpha * mean) / (tf.square(alpha) * var + tf.square(std))
    return score


def _check_moments(samples, n_sigma=5.0, bias=0.03):
    """Sample mean and standard deviation against the data's, within n_sigma standard
    errors plus a discretization bias (relative to the standard deviation)."""
    n = len(samples)
    assert np.all(np.abs(samples.mean(0) - MEAN) < n_sigma * STD / math.sqrt(n) + bias * STD)
    assert np.all(np.abs(samples.std(0) - STD) < n_sigma * STD / math.sqrt(2 * n) + bias * STD)


@pytest.mark.parametrize("sde,corrector_steps", [(VPSDE(), 0), (VPSDE(), 1),
                                                 (VESDE(0.01, 20.0), 0)],
                         ids=["vp", "vp-corrector", "ve"])
def test_reverse_sde_recovers_gaussian_data(sde, corrector_steps):
    """4,000 samples with the exact score: mean and standard deviation within 5 SE plus 3%
    (Euler–Maruyama bias at 300 steps). Chance failure < 1e-5 per moment."""
    sampler = ReverseDiffusionSampler(num_steps=300, corrector_steps=corrector_steps, eps=1e-3)
    z = sde.prior_sampling([4000, 2], seed=1).numpy()
    result = sampler(exact_score(sde), z, seed=0, sde=sde)
    assert result.samples.shape == (4000, 2) and result.trajectory is None
    assert result.num_function_evaluations == 300 * (1 + corrector_steps)
    _check_moments(result.samples)


def test_probability_flow_sampler_recovers_data_and_inverts_the_likelihood_flow():
    """The ODE sampler maps prior samples to the data law (moments as above, no Monte Carlo
    noise from the dynamics); integrating its output forward with the likelihood solver
    returns the starting latents."""
    sde = VPSDE()
    score = exact_score(sde)
    z = sde.prior_sampling([1000, 2], seed=2).numpy()
    sampler = ProbabilityFlowSampler(eps=1e-3)
    result = sampler(score, z, sde=sde)
    _check_moments(result.samples, bias=0.01)
    again = sampler(score, z, sde=sde, seed=99)
    np.testing.assert_array_equal(again.samples, result.samples)  # deterministic
    back = probability_flow_log_prob(score, sde, result.samples[:100], eps=1e-3)
    np.testing.assert_allclose(back.latent, z[:100], atol=2e-3)


def test_trajectories_and_prior_draws():
    sde = VPSDE()
    score = exact_score(sde)
    rev = ReverseDiffusionSampler(num_steps=40, thin=10)
    z = sde.prior_sampling([50, 2], seed=5).numpy()
    a = rev(score, z, seed=3, sde=sde, return_trajectory=True)
    b = rev(score, z, seed=3, sde=sde, return_trajectory=True)
    np.testing.assert_array_equal(a.samples, b.samples)  # seeded
    assert a.trajectory.shape == (5, 50, 2)
    np.testing.assert_allclose(a.times, np.linspace(1.0, 1e-3, 5))
    np.testing.assert_array_equal(a.trajectory[0], z)
    np.testing.assert_array_equal(a.trajectory[-1], a.samples)
    c = rev(score, z, seed=4, sde=sde)
    assert not np.allclose(c.samples, a.samples)
    pf = ProbabilityFlowSampler(num_saved=6)(score, a.trajectory[0], sde=sde,
                                              return_trajectory=True)
    assert pf.trajectory.shape == (6, 50, 2)
    np.testing.assert_allclose(pf.times, np.linspace(1.0, 1e-3, 6))
    np.testing.assert_array_equal(pf.trajectory[0], a.trajectory[0])
    np.testing.assert_allclose(pf.trajectory[-1], pf.samples, atol=1e-6)
    assert pf.num_function_evaluations > 10


def test_score_network_target_and_failures():
    sde = VPSDE()
    model = ScoreNetwork(score_mlp(2, depth=1, width=8), sde=sde)
    model.build([(None, 2), (None, 1)])
    rev = ReverseDiffusionSampler(num_steps=5)
    out = rev(model, 4000, seed=0, return_trajectory=True)  # dimension from the model
    assert out.samples.shape == (4000, 2) and np.isfinite(out.samples).all()
    start = out.trajectory[0]  # prior draws at T from the seed
    assert abs(start.std() - 1.0) < 0.05 and abs(start.mean()) < 0.05
    np.testing.assert_array_equal(rev(model, 4000, seed=0).samples, out.samples)
    with pytest.raises(ODESolverError, match="step budget") as info:
        ProbabilityFlowSampler(max_num_steps=2)(exact_score(sde), np.zeros((4, 2)), sde=sde)
    assert 1e-3 < info.value.time_reached < 1.0


def test_compiled_loops_do_not_keep_score_models_alive():
    """The compiled-loop cache holds score models weakly: a deleted model is freed."""
    from dde import score_sampling

    def sample_from_a_new_model():
        # In a frame of its own: TensorFlow's tracing can snapshot the caller's locals,
        # which would hold the model for as long as that frame lives.
        model = ScoreNetwork(score_mlp(2, depth=1, width=8), sde=VPSDE())
        model.build([(None, 2), (None, 1)])
        ReverseDiffusionSampler(num_steps=2)(model, 3, seed=0)
        ProbabilityFlowSampler()(model, 3, seed=0)
        return weakref.ref(model), bool(cached_functions(model))

    ref, cached = sample_from_a_new_model()
    gc.collect()
    assert cached and ref() is None


def test_config_round_trip():
    for sampler in (ReverseDiffusionSampler(num_steps=20, corrector_steps=2, snr=0.1,
                                            eps=1e-4, denoise=False, thin=5),
                    ProbabilityFlowSampler(rtol=1e-4, atol=1e-6, num_saved=11)):
        config = keras.saving.serialize_keras_object(sampler)
        restored = keras.saving.deserialize_keras_object(config)
        assert type(restored) is type(sampler)
        assert {k: v for k, v in restored.get_config().items() if k != "name"} == {
            k: v for k, v in sampler.get_config().items() if k != "name"}


def test_bad_inputs():
    sde = VPSDE()
    score = exact_score(sde)
    with pytest.raises(ValueError, match="num_steps"):
        ReverseDiffusionSampler(num_steps=0)
    with pytest.raises(ValueError, match="thin"):
        ReverseDiffusionSampler(num_steps=5, thin=6)
    with pytest.raises(ValueError, match="snr"):
        ReverseDiffusionSampler(snr=0.0)
    with pytest.raises(ValueError, match="corrector_steps"):
        ReverseDiffusionSampler(corrector_steps=-1)
    with pytest.raises(ValueError, match="num_saved"):
        ProbabilityFlowSampler(num_saved=1)
    with pytest.raises(ValueError, match="eps"):
        ProbabilityFlowSampler(eps=0.0)
    with pytest.raises(TypeError, match="jit_compile"):
        ProbabilityFlowSampler(jit_compile="yes")
    rev = ReverseDiffusionSampler(num_steps=5)
    with pytest.raises(ValueError, match="smaller than"):
        ReverseDiffusionSampler(eps=2.0)(score, np.zeros((2, 2)), sde=sde)
    with pytest.raises(ValueError, match="sde is required"):
        rev(score, np.zeros((2, 2)))
    with pytest.raises(ValueError, match="dimension is unknown"):
        rev(score, 10, sde=sde)
    with pytest.raises(ValueError, match="NaN"):
        rev(score, np.array([[0.0, np.nan]]), sde=sde)
    with pytest.raises(ValueError, match="Reshape"):
        rev(score, np.zeros(2), sde=sde)
    with pytest.raises(TypeError, match="seed"):
        rev(score, np.zeros((2, 2)), sde=sde, seed=1.5)
    with pytest.raises(TypeError, match="score model"):
        rev(None, np.zeros((2, 2)), sde=sde)
    with pytest.raises(ValueError, match="not been built"):
        rev(ScoreNetwork(), 3)
