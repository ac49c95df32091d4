"""Tests of dde.nets: shapes, smooth activations, serialization of the embedding layer."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from dde import nets


@pytest.mark.parametrize("activation", ["relu", "relu6", "leaky_relu", "linear", "hard_silu"])
def test_piecewise_linear_activations_are_rejected(activation):
    with pytest.raises(ValueError, match="second derivative"):
        nets.energy_mlp(2, activation=activation)
    with pytest.raises(ValueError, match="second derivative"):
        nets.conditional_energy_mlp(2, activation=activation)


def test_unknown_activation_and_bad_sizes():
    with pytest.raises(ValueError):
        nets.energy_mlp(2, activation="no_such_activation")
    with pytest.raises(ValueError, match="depth"):
        nets.energy_mlp(2, depth=0)
    with pytest.raises(TypeError, match="width"):
        nets.energy_mlp(2, width=12.5)


@pytest.mark.parametrize("activation", ["softplus", "swish", "gelu", "tanh", "elu"])
def test_energy_mlp_has_nonzero_hessian(activation):
    """∂²f/∂x² is non-zero for smooth activations (what DSM on ∇ₓf needs)."""
    keras.utils.set_random_seed(0)
    net = nets.energy_mlp(3, depth=2, width=16, activation=activation)
    x = tf.constant(np.random.default_rng(0).normal(size=(4, 3)), tf.float32)
    with tf.GradientTape() as outer:
        outer.watch(x)
        with tf.GradientTape() as inner:
            inner.watch(x)
            f = net(x)
        g = inner.gradient(f, x)
    h = outer.batch_jacobian(g, x)
    assert f.shape == (4, 1)
    assert float(tf.reduce_max(tf.abs(h))) > 1e-4
    # The last layer has no bias (it would get no gradient through ∇ₓf).
    assert len(net.get_layer("energy").weights) == 1


def test_conditional_and_score_networks_shapes_and_round_trip(tmp_path):
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(1).normal(size=(5, 4)).astype("float32")
    c = np.linspace(0.1, 1.0, 5, dtype="float32")[:, None]
    energy = nets.conditional_energy_mlp(4, depth=2, width=16)
    score = nets.score_mlp(4, depth=2, width=16, activation="relu")
    assert energy([x, c]).shape == (5, 1)
    assert score([x, c]).shape == (5, 4)
    for net in (energy, score):
        path = tmp_path / f"{net.name}.keras"
        net.save(path)
        loaded = keras.models.load_model(path)
        np.testing.assert_array_equal(loaded([x, c]).numpy(), net([x, c]).numpy())


def test_sinusoidal_embedding_values():
    layer = nets.SinusoidalEmbedding(dim=4, min_frequency=1.0, max_frequency=2.0)
    c = np.array([[0.5]], "float32")
    out = layer(c).numpy()
    np.testing.assert_allclose(out, [[0.5, np.sin(0.5), np.sin(1.0), np.cos(0.5), np.cos(1.0)]],
                               rtol=1e-6)
    assert nets.SinusoidalEmbedding.from_config(layer.get_config()).get_config() == \
        layer.get_config()
