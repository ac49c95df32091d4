"""Tests of dde.bases: the Gaussian-mixture base against TFP and scikit-learn, its exact
smoothing at any (per-example) noise level, fitting with the component count chosen on
validation data, conversion of other densities, and bad parameters."""
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp
from sklearn.mixture import GaussianMixture

from dde import bases

tfd = tfp.distributions


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(600, 3)) @ np.array([[1.0, 0.5, 0.0], [0.0, 0.8, 0.3], [0, 0, 0.4]])
    b = rng.normal(size=(400, 3)) * 0.5 + np.array([4.0, -2.0, 1.0])
    x = np.concatenate([a, b])
    return x[rng.permutation(len(x))]


def test_mixture_base_matches_tfp_and_smooths_exactly(data):
    """log q_σ equals TFP's mixture with covariances + σ²I, for a scalar σ and for one σ per
    example (no refactorization), in float64 and returning x's dtype."""
    gmm = GaussianMixture(3, random_state=0).fit(data)
    base = bases.as_base(gmm)
    x = tf.constant(np.random.default_rng(1).normal(size=(50, 3)) * 2.0)
    np.testing.assert_allclose(base.log_prob(x).numpy(), gmm.score_samples(x.numpy()),
                               rtol=1e-10)
    for sigma in (0.1, 1.0):
        np.testing.assert_allclose(base.log_prob(x, sigma).numpy(),
                                   base.as_distribution(sigma).log_prob(x).numpy(),
                                   rtol=1e-7)
    sig = np.random.default_rng(2).uniform(0.05, 2.0, size=50)
    one_by_one = [base.as_distribution(s).log_prob(x[i:i + 1]).numpy()[0]
                  for i, s in enumerate(sig)]
    np.testing.assert_allclose(base.log_prob(x, tf.constant(sig)).numpy(), one_by_one,
                               rtol=1e-7)
    assert base.log_prob(tf.cast(x, tf.float32)).dtype == tf.float32


def test_fit_mixture_base_selects_components_on_validation(data):
    """Two well-separated clusters: the validation log-likelihood picks more than one
    component, beats the single Gaussian on held-out rows and records every score."""
    base, scores = bases.fit_mixture_base(data[:700], data[700:])
    assert base.num_components >= 2 and scores[base.num_components] == max(scores.values())
    gauss = bases.fit_gaussian_base(data[:700])
    held = tf.constant(data[700:])
    assert np.mean(base.log_prob(held)) > np.mean(gauss.log_prob(held)) + 0.3
    samples = base.sample(20_000, seed=tf.constant([0, 1])).numpy()
    np.testing.assert_allclose(samples.mean(0), data[:700].mean(0), atol=0.1)


def test_gaussian_base_and_conversions(data):
    """The Gaussian base is N(mean, Cov); TFP Gaussians and mixtures convert to the layer,
    other distributions are wrapped (not smoothable)."""
    g = bases.fit_gaussian_base(data, reg_covar=0.0)
    mvn = tfd.MultivariateNormalTriL(data.mean(0), np.linalg.cholesky(np.cov(data.T)))
    x = tf.constant(data[:20])
    np.testing.assert_allclose(g.log_prob(x).numpy(), mvn.log_prob(x).numpy(), rtol=1e-10)
    converted = bases.as_base(mvn)
    assert isinstance(converted, bases.GaussianMixtureBase) and converted.num_components == 1
    mix = tfd.MixtureSameFamily(tfd.Categorical(probs=np.array([0.3, 0.7])),
                                tfd.MultivariateNormalDiag(np.array([[0.0] * 3, [1.0] * 3]),
                                                           np.array([[1.0] * 3, [0.5] * 3])))
    np.testing.assert_allclose(bases.as_base(mix).log_prob(x).numpy(),
                               mix.log_prob(x).numpy(), rtol=1e-7)
    student = tfd.MultivariateStudentTLinearOperator(
        5.0, tf.zeros(3, tf.float64), tf.linalg.LinearOperatorIdentity(3, dtype=tf.float64))
    wrapped = bases.as_base(student)
    assert isinstance(wrapped, bases.DistributionBase)
    np.testing.assert_allclose(wrapped.log_prob(x).numpy(), student.log_prob(x).numpy())
    with pytest.raises(ValueError, match="cannot be smoothed"):
        wrapped.log_prob(x, 0.1)


def test_bad_parameters_are_clear_errors():
    base = bases.GaussianMixtureBase(2, 2)
    assert not base.is_set
    with pytest.raises(ValueError, match="not positive definite"):
        base.set_parameters([0.5, 0.5], np.zeros((2, 2)), np.stack([np.eye(2),
                                                                     np.zeros((2, 2))]))
    with pytest.raises(ValueError, match="positive"):
        base.set_parameters([0.5, -0.5], np.zeros((2, 2)), np.stack([np.eye(2)] * 2))
    with pytest.raises(ValueError, match="Expected weights"):
        base.set_parameters([1.0], np.zeros((1, 2)), np.eye(2)[None])
    with pytest.raises(ValueError, match="finite"):
        base.set_parameters([0.5, 0.5], np.full((2, 2), np.nan), np.stack([np.eye(2)] * 2))
    with pytest.raises(ValueError, match="NaN"):
        bases.fit_gaussian_base(np.array([[0.0, np.nan], [1.0, 2.0]]))
    with pytest.raises(TypeError, match="base density"):
        bases.as_base("gaussian")


def test_flow_base_in_a_base_density_model_round_trips(tmp_path):
    """A (randomly initialized) flow as the base of a likelihood-objective DDE: the untrained
    model equals the flow's log-density, the flow is frozen (only g trains), normalization
    under it gives log Z = 0 exactly (the weights are e^0 = 1), a smoothed flow base is
    refused, and `.keras` keeps every output."""
    import keras

    import dde
    from dde import flows, nets

    flow = flows.neural_spline_flow(2, num_layers=2, hidden_units=(16,), seed=0)
    flow.ensure_built(2)
    for v in flow.trainable_weights:
        v.assign(0.1 * np.random.default_rng(1).normal(size=v.shape))
    model = dde.DenoisingDensityEstimator(nets.residual_energy_mlp(2, 1, 8), base=flow,
                                          smooth_base=False, objective="likelihood", seed=0)
    x = np.random.default_rng(2).normal(size=(50, 2)).astype("float32")
    np.testing.assert_allclose(model.log_density(x), flow.log_prob(x), rtol=1e-5, atol=1e-5)
    model.ensure_built(2)
    assert not any(w is v for w in model.trainable_weights for v in flow.weights)  # frozen
    r = model.normalize(num_samples=2000)
    assert abs(r.log_z) < 1e-9 and r.reliable
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_array_equal(loaded.log_density(x), model.log_density(x))
    with pytest.raises(ValueError, match="smooth_base=False"):
        dde.DenoisingDensityEstimator(nets.residual_energy_mlp(2, 1, 8), base=flow)


def test_a_flow_base_trains_from_its_pool_with_the_flow_frozen():
    """A likelihood-objective DDE on a flow base with `base_pool_size`: `fit` draws the pool
    from the flow (its log-density is finite there), trains g only (the flow's weights
    are unchanged) and the loss is finite."""
    import keras

    import dde
    from dde import flows, nets

    flow = flows.neural_spline_flow(2, num_layers=2, hidden_units=(16,), seed=0)
    flow.ensure_built(2)
    before = [v.numpy().copy() for v in flow.weights]
    model = dde.DenoisingDensityEstimator(nets.residual_energy_mlp(2, 1, 8), base=flow,
                                          smooth_base=False, objective="likelihood",
                                          num_base_samples=64, base_pool_size=512, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    x = np.random.default_rng(2).normal(size=(256, 2)).astype("float32")
    history = model.fit(x, epochs=2, batch_size=64, verbose=0)
    pool = model.base_pool.numpy()
    assert pool.shape == (512, 2)
    assert np.isfinite(flow.log_prob(pool)).all()
    assert np.isfinite(history.history["loss"]).all()
    for b, v in zip(before, flow.weights):
        np.testing.assert_array_equal(v.numpy(), b)
