"""Tests of dde.models: DSM training, the NumPy API, schedules, serialization, bad input."""
import functools
import json
import math
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

import dde

# A correlated 2-D Gaussian: data N(mu, A Aᵀ); smoothed by N(0, σ²I) its score is
# −(A Aᵀ + σ²I)⁻¹ (x − mu).
A = np.array([[1.0, 0.0], [0.6, 0.5]])
MU = np.array([0.5, -0.3])


def gaussian_data(n, seed):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, 2)) @ A.T + MU).astype("float32")


def smoothed_gaussian_score(x, sigma):
    cov = A @ A.T + sigma**2 * np.eye(2)
    return -(x - MU) @ np.linalg.inv(cov)


def small_model(d=2, noise_std=0.3, seed=1, **kwargs):
    keras.utils.set_random_seed(seed)
    return dde.DenoisingDensityEstimator(dde.nets.energy_mlp(d, depth=2, width=64, **kwargs),
                                         noise_std=noise_std, seed=seed)


@pytest.fixture(scope="module")
def trained_gaussian_model():
    model = small_model(noise_std=0.3)
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    history = model.fit(gaussian_data(8000, 0), epochs=25, batch_size=256,
                        validation_data=(gaussian_data(1000, 1),), verbose=0)
    return model, history


def test_dsm_recovers_analytic_score_of_smoothed_gaussian(trained_gaussian_model):
    """The trained score matches −(Σ + σ²I)⁻¹(x − μ) on held-out points.

    Fixed seeds make the run deterministic; the tolerance (15 % relative L2 error) is about
    twice the error this budget reaches, so it fails only if DSM training is broken.
    """
    model, _ = trained_gaussian_model
    x = gaussian_data(1000, 2)
    true = smoothed_gaussian_score(x, 0.3)
    s = model.score(x)
    assert s.shape == (1000, 2)
    rel = np.linalg.norm(s - true) / np.linalg.norm(true)
    # A wrong σ in the target fails this: the σ = 0.15 and σ = 0.5 scores are 0.31 and 0.34
    # (relative) away from the σ = 0.3 one.
    assert rel < 0.15, rel


def test_log_density_differences_match_gaussian(trained_gaussian_model):
    """f is the smoothed log-density up to a constant: centred values agree (R² > 0.95)."""
    model, _ = trained_gaussian_model
    x = gaussian_data(500, 3)
    cov = A @ A.T + 0.09 * np.eye(2)
    diff = x - MU
    true = -0.5 * np.einsum("ni,ij,nj->n", diff, np.linalg.inv(cov), diff)
    f = model.log_density(x)
    assert f.shape == (500,)
    resid = (f - f.mean()) - (true - true.mean())
    assert 1 - resid.var() / true.var() > 0.95


def test_history_validation_and_denoiser(trained_gaussian_model):
    model, history = trained_gaussian_model
    assert set(history.history) >= {"loss", "val_loss", "noise_std"}
    assert len(history.history["loss"]) == 25
    # Training reduces the loss below its value at f = 0, E‖n/σ‖² = d = 2.
    assert history.history["loss"][-1] < 1.8
    x = gaussian_data(300, 4)
    d = model.denoise(x)
    np.testing.assert_allclose(d, x + 0.09 * model.score(x), rtol=1e-5, atol=1e-5)


def test_data_statistics_stored_at_fit(trained_gaussian_model):
    model, _ = trained_gaussian_model
    assert model.has_data_stats
    np.testing.assert_allclose(model.data_mean.numpy(), MU, atol=0.05)
    np.testing.assert_allclose(model.data_cov.numpy(), A @ A.T, atol=0.06)


def test_evaluate_is_deterministic(trained_gaussian_model):
    model, _ = trained_gaussian_model
    x = gaussian_data(700, 5)
    first = model.evaluate(x, batch_size=128, verbose=0)
    second = model.evaluate(x, batch_size=128, verbose=0)
    assert first == second
    assert 0.5 < first < 2.5


def test_model_call_and_float64_input(trained_gaussian_model):
    model, _ = trained_gaussian_model
    x = gaussian_data(10, 6)
    out = model(tf.constant(x))
    assert out.shape == (10,)
    np.testing.assert_allclose(model.log_density(x.astype("float64")), out.numpy(),
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(model.predict(x, verbose=0), out.numpy(), rtol=1e-6, atol=1e-6)


def test_keras_round_trip(trained_gaussian_model, tmp_path):
    model, _ = trained_gaussian_model
    model.noise_std.assign(0.25)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)  # safe_mode=True by default
    assert isinstance(loaded, dde.DenoisingDensityEstimator)
    x = gaussian_data(50, 7)
    np.testing.assert_array_equal(loaded.log_density(x), model.log_density(x))
    np.testing.assert_array_equal(loaded.score(x), model.score(x))
    assert float(loaded.noise_std.numpy()) == pytest.approx(0.25)
    np.testing.assert_array_equal(loaded.data_mean.numpy(), model.data_mean.numpy())
    assert loaded.seed == model.seed
    # The loaded model is compiled with its optimizer and can keep training.
    loaded.fit(x, epochs=1, verbose=0)
    model.noise_std.assign(0.3)


def test_tf_data_dataset_input():
    model = small_model()
    model.compile(optimizer="adam")
    x = gaussian_data(512, 8)
    ds = tf.data.Dataset.from_tensor_slices(x).batch(128)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = model.fit(ds, epochs=2, validation_data=ds, verbose=0)
    assert len(history.history["loss"]) == 2
    assert not [w for w in caught if "keras" in str(w.filename)], [str(w.message)
                                                                  for w in caught]
    np.testing.assert_allclose(model.data_mean.numpy(), x.mean(0), atol=1e-5)
    np.testing.assert_allclose(model.data_cov.numpy(), np.cov(x, rowvar=False), atol=1e-4)
    with pytest.raises(ValueError, match="shape"):
        model.fit(tf.data.Dataset.from_tensor_slices(x), verbose=0)
    with pytest.raises(ValueError, match="3 features"):
        model.fit(tf.data.Dataset.from_tensor_slices(np.zeros((8, 3), "float32")).batch(4),
                  verbose=0)


def test_fit_prints_no_gradient_warnings():
    """The energy network has no last-layer bias, so every weight gets a gradient."""
    model = small_model()
    model.compile(optimizer="adam")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(gaussian_data(256, 9), epochs=1, batch_size=64, verbose=0)
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "radient" in m], messages


def test_steps_per_execution_default_trains_every_batch_and_matches_one_step(tmp_path):
    """compile() without steps_per_execution runs 16 steps per execution, training every
    batch (1,351 rows at batch 64: 22 steps per epoch, the last execution short) with the
    same noise and updates as one step per execution (equal weights); a per-batch callback
    (NoiseStdSchedule) gets one step per execution; a saved model keeps the choice."""
    from dde.training import DEFAULT_STEPS_PER_EXECUTION

    x = np.random.default_rng(0).normal(size=(1351, 2)).astype("float32")

    def trained(**compile_options):
        keras.utils.set_random_seed(0)
        model = dde.DenoisingDensityEstimator(dde.nets.energy_mlp(2, depth=2, width=16),
                                              noise_std=0.3, seed=0)
        model.compile(optimizer=keras.optimizers.Adam(1e-2), **compile_options)
        model.fit(x, batch_size=64, epochs=2, verbose=0, shuffle=False)
        return model

    auto, single = trained(), trained(steps_per_execution=1)
    assert auto.steps_per_execution == DEFAULT_STEPS_PER_EXECUTION == 16
    assert single.steps_per_execution == 1
    assert int(auto.optimizer.iterations) == int(single.optimizer.iterations) == 2 * 22
    for a, b in zip(auto.get_weights(), single.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    auto.save(tmp_path / "m.keras")
    assert keras.saving.load_model(tmp_path / "m.keras").get_compile_config()[
        "steps_per_execution"] is None
    scheduled = dde.DenoisingDensityEstimator(dde.nets.energy_mlp(2, depth=2, width=16),
                                              noise_std=0.3, seed=0)
    scheduled.fit(x, batch_size=64, epochs=1, verbose=0, callbacks=[
        dde.NoiseStdSchedule(factor=0.5, every_n_batches=4, min_noise_std=0.001)])
    assert scheduled.steps_per_execution == 1
    assert float(scheduled.noise_std.numpy()) == pytest.approx(0.3 * 0.5 ** 5, rel=1e-6)
    # A LambdaCallback's per-batch hook (set on the instance) sees every batch.
    seen = []
    hooked = dde.DenoisingDensityEstimator(dde.nets.energy_mlp(2, depth=2, width=16), seed=0)
    hooked.fit(x, batch_size=64, epochs=1, verbose=0, callbacks=keras.callbacks.CallbackList(
        [keras.callbacks.LambdaCallback(on_train_batch_end=lambda b, logs: seen.append(b))],
        add_history=True, model=hooked))
    assert seen == list(range(22)) and hooked.steps_per_execution == 1
    # Given step counts are never overshot: 10 steps per epoch train 10 steps, 3 evaluate 3.
    counted = dde.DenoisingDensityEstimator(dde.nets.energy_mlp(2, depth=2, width=16), seed=0)
    data = tf.data.Dataset.from_tensor_slices(x).batch(64).repeat()
    counted.fit(data, steps_per_epoch=10, epochs=3, verbose=0)
    assert int(counted.optimizer.iterations) == 30 and counted.steps_per_execution == 2
    counted.evaluate(data, steps=3, verbose=0)
    assert int(counted._eval_step.numpy()) == 3


def test_noise_schedule_decays_to_floor_and_is_saved(tmp_path):
    model = small_model(noise_std=0.4)
    model.compile(optimizer="adam")
    schedule = dde.NoiseStdSchedule(factor=0.5, every_n_batches=4, min_noise_std=0.1)
    history = model.fit(gaussian_data(256, 10), epochs=4, batch_size=64, verbose=0,
                        callbacks=[schedule])  # 4 batches per epoch
    # σ during epoch e (batches 4e..4e+3) is max(0.4·0.5^e, 0.1); logged at epoch end.
    np.testing.assert_allclose(history.history["noise_std"], [0.4, 0.2, 0.1, 0.1], rtol=1e-6)
    assert schedule.noise_std_at(100) == pytest.approx(0.1)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert float(loaded.noise_std.numpy()) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="factor"):
        dde.NoiseStdSchedule(factor=1.5)


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(initial=st.floats(0.01, 10.0), ratio=st.floats(1e-3, 1.0), total=st.integers(2, 5000),
       fraction=st.floats(0.05, 1.0), factor=st.floats(0.3, 0.99))
def test_annealing_recipe_reaches_the_final_sigma_within_the_budget(initial, ratio, total,
                                                                     fraction, factor):
    """Issue 14 (4): σ is the final one, exactly, from a batch before the budget's last one
    on; it never rises and starts at σ₀. When the window holds all the decays of `factor`,
    the recipe is the one the command line and the detector used before."""
    final = initial * ratio
    schedule = dde.NoiseStdSchedule.annealing(initial, final, total, fraction=fraction,
                                              factor=factor)
    model = _schedule_host()
    model.noise_std.assign(initial)
    schedule.set_model(model)
    schedule.on_train_begin()
    assert schedule.final_batch <= total - 1
    sigmas = [schedule.noise_std_at(k) for k in range(min(total, schedule.final_batch + 3))]
    assert sigmas[0] == pytest.approx(initial, rel=1e-6) or schedule.final_batch == 0
    assert all(a >= b * (1 - 1e-6) for a, b in zip(sigmas, sigmas[1:]))  # (σ₀ is float32)
    assert schedule.noise_std_at(schedule.final_batch) == final
    assert schedule.noise_std_at(total - 1) == final
    window = min(max(int(fraction * total), 1), total - 1)  # the last batch is at σ_final
    decays = math.ceil(math.log(ratio) / math.log(factor)) if ratio < 1 else 0
    if 0 < decays <= window:
        assert schedule.factor == factor and schedule.every_n_batches == window // decays


@functools.lru_cache(maxsize=1)
def _schedule_host():
    """One tiny DDE whose σ the schedule property test sets per example."""
    return dde.DenoisingDensityEstimator(dde.nets.energy_mlp(1, depth=1, width=2))


def test_annealing_recipe_errors():
    with pytest.raises(ValueError, match="1 training step"):
        dde.NoiseStdSchedule.annealing(0.5, 0.1, 1)
    with pytest.raises(ValueError, match="only 8"):
        dde.NoiseStdSchedule.annealing(0.5, 0.1, 8, every_n_batches=5)
    with pytest.raises(ValueError, match="must not exceed"):
        dde.NoiseStdSchedule.annealing(0.1, 0.5, 100)
    with pytest.raises(ValueError, match="every_n_batches"):
        dde.NoiseStdSchedule.annealing(0.5, 0.1, 100, every_n_batches=0)


def test_short_fit_with_the_annealing_recipe_ends_at_the_final_sigma():
    """8 batches: the old recipe (×0.8 every batch) stopped at σ ≈ 0.105 instead of 0.1."""
    model = small_model(noise_std=0.5)
    model.compile(optimizer="adam")
    schedule = dde.NoiseStdSchedule.annealing(0.5, 0.1, 8, fraction=0.6, factor=0.8)
    model.fit(gaussian_data(512, 3), epochs=1, batch_size=64, verbose=0, callbacks=[schedule])
    assert float(model.noise_std.numpy()) == pytest.approx(0.1, rel=1e-6)


@pytest.mark.parametrize("kwargs, message", [
    (dict(epochs=-1), "epochs must be"), (dict(epochs=0), "epochs must be"),
    (dict(batch_size=0), "batch_size must be"), (dict(batch_size=-5), "batch_size must be"),
    (dict(epochs=1.5), "epochs must be an integer"),
])
def test_fit_rejects_nonsense_epochs_and_batch_size(kwargs, message):
    """Issue 14 (5): epochs=-1 trained nothing and batch_size=0 trained, silently."""
    model = small_model()
    before = [w.numpy().copy() for w in model.network.weights]
    with pytest.raises((ValueError, TypeError), match=message):
        model.fit(gaussian_data(64, 4), verbose=0, **kwargs)
    for w, b in zip(model.network.weights, before):
        np.testing.assert_array_equal(w.numpy(), b)


@pytest.mark.parametrize("entry", ["fit", "log_density", "evaluate"])
def test_wrong_feature_count_on_an_unbuilt_model_has_a_plain_message(entry):
    """Issue 14 (8): Keras's shape error leaked terminal colour codes."""
    model = small_model(d=2)
    assert not model.built
    with pytest.raises(ValueError, match="x has 3 features, but DenoisingDensityEstimator is "
                                         "expecting 2") as info:
        method = getattr(model, entry)
        method(np.zeros((4, 3), "float32"), **({} if entry == "log_density" else {"verbose": 0}))
    assert "\x1b[" not in str(info.value)


def test_absurd_log_partition_is_not_stored():
    model = small_model()
    model.log_density(np.zeros((1, 2), "float32"))
    with pytest.raises(ValueError, match="absurd"):
        model.set_log_partition(1.9e28)
    assert not model.is_normalized
    model.set_log_partition(-2.5e5)  # large but resolvable
    assert model.is_normalized


def test_network_with_flat_output_is_accepted():
    inputs = keras.Input((3,))
    h = keras.layers.Dense(16, activation="tanh")(inputs)
    out = keras.layers.Reshape(())(keras.layers.Dense(1, use_bias=False)(h))
    model = dde.DenoisingDensityEstimator(keras.Model(inputs, out), noise_std=0.5, seed=0)
    x = np.random.default_rng(0).normal(size=(5, 3)).astype("float32")
    assert model.log_density(x).shape == (5,)
    assert model.score(x).shape == (5, 3)


BAD_INPUTS = [
    ("nan", np.array([[0.0, np.nan]]), ValueError, "NaN"),
    ("inf", np.array([[0.0, np.inf]]), ValueError, "infinity"),
    ("1-D", np.array([0.0, 1.0]), ValueError, "Reshape your data"),
    ("3-D", np.zeros((2, 2, 2)), ValueError, "dim 3"),
    ("empty", np.zeros((0, 2)), ValueError, "0 sample"),
    ("features", np.zeros((4, 3)), ValueError, "3 features"),
    ("strings", np.array([["a", "b"]]), TypeError, "non-numeric"),
]


@pytest.mark.parametrize("entry", ["fit", "log_density", "score", "denoise", "evaluate"])
@pytest.mark.parametrize("case,x,error,message", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_matrix(trained_gaussian_model, entry, case, x, error, message):
    model, _ = trained_gaussian_model
    before = [w.numpy().copy() for w in model.weights]
    with pytest.raises(error, match=message):
        if entry in ("fit", "evaluate"):
            getattr(model, entry)(x, verbose=0)
        else:
            getattr(model, entry)(x)
    for w, b in zip(model.weights, before):
        np.testing.assert_array_equal(w.numpy(), b)


def test_bad_validation_data_is_rejected(trained_gaussian_model):
    model, _ = trained_gaussian_model
    with pytest.raises(ValueError, match="validation_data"):
        model.fit(gaussian_data(64, 0), validation_data=(np.full((4, 2), np.nan),), verbose=0)


def test_constructor_and_compile_errors():
    with pytest.raises(ValueError, match="noise_std"):
        dde.DenoisingDensityEstimator(dde.nets.energy_mlp(2), noise_std=0.0)
    with pytest.raises(TypeError, match="Keras"):
        dde.DenoisingDensityEstimator(lambda x: x, noise_std=0.1)
    model = small_model()
    with pytest.raises(ValueError, match="loss"):
        model.compile(optimizer="adam", loss="mse")


def test_noise_conditional_dde_learns_scores_at_all_levels(tmp_path):
    """f(x, σ) trained over σ ∈ [0.1, 1] matches the smoothed-Gaussian score at σ = 0.3 and
    σ = 1 (relative L2 error < 0.2; deterministic under the fixed seeds, the bound is about
    1.5–3× the error reached).

    With the weight λ(σ) = σ², a score error δ at level σ costs σ²δ²: on data with a smooth
    density (whose score does not grow like 1/σ) the lowest levels are learned last, so this
    short budget is checked away from the bottom of the range."""
    keras.utils.set_random_seed(3)
    net = dde.nets.conditional_energy_mlp(2, depth=2, width=64, max_frequency=4.0)
    model = dde.NoiseConditionalDDE(net, sigma_min=0.1, sigma_max=1.0, seed=3)
    model.compile(optimizer=keras.optimizers.Adam(
        keras.optimizers.schedules.CosineDecay(3e-3, 25 * 32)))
    model.fit(gaussian_data(8000, 11), epochs=25, batch_size=256, verbose=0)
    x = gaussian_data(800, 12)
    for sigma in (0.3, 1.0):
        true = smoothed_gaussian_score(x, sigma)
        rel = np.linalg.norm(model.score(x, noise_std=sigma) - true) / np.linalg.norm(true)
        assert rel < 0.2, (sigma, rel)
    np.testing.assert_allclose(model.noise_levels(3), [1.0, np.sqrt(0.1), 0.1])
    model.save(tmp_path / "nc.keras")
    loaded = keras.models.load_model(tmp_path / "nc.keras")
    np.testing.assert_array_equal(loaded.log_density(x, noise_std=0.5),
                                  model.log_density(x, noise_std=0.5))
    assert (loaded.sigma_min, loaded.sigma_max) == (0.1, 1.0)
    with pytest.raises(ValueError, match="sigma_min"):
        dde.NoiseConditionalDDE(net, sigma_min=1.0, sigma_max=0.5)


MIRRORED_SCRIPT = textwrap.dedent("""
    import json, os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    import numpy as np, tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras, dde
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2048, 3)).astype("float32")

    def first_epoch_loss(strategy):
        with strategy.scope():
            keras.utils.set_random_seed(0)
            model = dde.DenoisingDensityEstimator(
                dde.nets.energy_mlp(3, depth=2, width=32), noise_std=0.5, seed=0)
            model.compile(optimizer=keras.optimizers.SGD(0.05))
        s0 = model.score(x[:256])
        h = model.fit(x, epochs=2, batch_size=256, shuffle=False, verbose=0)
        moved = float(np.linalg.norm(model.score(x[:256]) - s0))
        return h.history["loss"], strategy.num_replicas_in_sync, moved

    one = first_epoch_loss(tf.distribute.OneDeviceStrategy("/cpu:0"))
    two = first_epoch_loss(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
    print(json.dumps({"one": one, "two": two}))
""")


def test_mirrored_strategy_matches_single_device():
    """Under MirroredStrategy on two logical CPUs the per-replica loss is scaled by
    1/replicas, so training follows the single-device run from the same initial weights:
    the epoch losses agree within noise (the replicas draw other noise than the single
    device, so equality is statistical: 5 % on a loss averaged over 2048 points is ~3× its
    standard error), and the trained score has moved as far from its initial value (ratio
    within [0.8, 1.25]). Unscaled per-replica losses would double every SGD step: ratio ≈ 2."""
    result = subprocess.run([sys.executable, "-c", MIRRORED_SCRIPT], capture_output=True,
                            text=True, timeout=300, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    (loss1, n1, moved1), (loss2, n2, moved2) = out["one"], out["two"]
    assert (n1, n2) == (1, 2)
    np.testing.assert_allclose(loss2[0], loss1[0], rtol=0.05)
    assert 0.8 < moved2 / moved1 < 1.25, (moved1, moved2)


def test_8gaussians_density_correlates_with_truth():
    """On 8gaussians the learned f ranks a 50×50 grid over [−4, 4]² like the true smoothed
    log-density: Spearman ≥ 0.9. With this budget (tanh MLP, σ = 0.5, cosine learning rate)
    twelve seeds gave 0.986–0.998, so a failure means training is broken, not bad luck."""
    from scipy.stats import spearmanr

    from dde.datasets import toy

    x = toy.sample("8gaussians", 4096, seed=0)
    keras.utils.set_random_seed(0)
    model = dde.DenoisingDensityEstimator(
        dde.nets.energy_mlp(2, depth=3, width=32, activation="tanh"), noise_std=0.5, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(
        keras.optimizers.schedules.CosineDecay(1e-2, 20 * 16)))
    model.fit(x, epochs=20, batch_size=256, verbose=0)
    g = np.linspace(-4, 4, 50)
    grid = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
    true = toy.log_density("8gaussians", grid, noise_std=0.5)
    rho = spearmanr(model.log_density(grid), true)[0]
    assert rho >= 0.9, rho


def test_models_saved_by_version_0_1_0_load_and_give_the_same_outputs():
    """Small `.keras` files written by dde 0.1.0 (before the model protocol, the mcmc kernels
    and the partition package) load and reproduce their recorded outputs: the saved format
    is unchanged. The stored σ and normalization are compared exactly; the network outputs
    to float32 rounding: they are bitwise equal on the CPU that recorded them, but a float32
    matmul sums in an order set by the CPU's vector width (oneDNN's AVX2 and AVX-512 kernels
    differ), so on another CPU they differ by a few ulps (2 ulps, 1.2e-7, seen on an AVX2
    machine). The bound, 1e-6 (about 16 ulps at these magnitudes), is far below what a
    changed format — a lost, reordered or re-initialized weight — does to them."""
    data = Path(__file__).parent / "data"
    ref = json.loads((data / "saved_v0_1_0.json").read_text())
    q = np.asarray(ref["query"], dtype=np.float32)

    def close(actual, expected):
        np.testing.assert_allclose(actual, np.float32(expected), rtol=1e-6, atol=1e-6)

    m = keras.models.load_model(data / "dde_v0_1_0.keras")
    assert float(m.noise_std.numpy()) == ref["dde_noise_std"] and m.is_normalized
    close(m.log_density(q), ref["dde_log_density"])
    close(m.score(q), ref["dde_score"])
    log_z = m.log_density(q).astype(np.float64) - m.log_prob(q)
    np.testing.assert_allclose(log_z, np.float64(ref["dde_log_density"]) -
                               np.float64(ref["dde_log_prob"]), rtol=0, atol=1e-12)
    close(m.log_prob(q), ref["dde_log_prob"])
    nc = keras.models.load_model(data / "ncdde_v0_1_0.keras")
    close(nc.log_density(q), ref["ncdde_log_density_0.1"])
    close(nc.log_density(q, noise_std=0.5), ref["ncdde_log_density_0.5"])
    close(nc.score(q, noise_std=0.5), ref["ncdde_score_0.5"])


def test_a_single_noise_level_model_keeps_the_parent_signatures():
    """DenoisingDensityEstimator takes the parent's `noise_std` arguments: its own σ is
    accepted (same values as without), any other σ is a clear ValueError."""
    model = small_model(noise_std=0.3)
    x = np.random.default_rng(0).normal(size=(5, 2)).astype("float32")
    np.testing.assert_array_equal(model.log_density(x, noise_std=0.3), model.log_density(x))
    np.testing.assert_array_equal(model.score(x, noise_std=0.3), model.score(x))
    assert model.resolve_noise_std(None) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="single noise level σ = 0.3; noise_std = 0.5"):
        model.denoise(x, noise_std=0.5)
    fn = model.log_density_fn()
    assert fn is model.log_density_fn()  # one function per σ: estimators cache by it
    np.testing.assert_allclose(fn(tf.constant(x, tf.float64)).numpy(), model.log_density(x),
                               rtol=1e-6)


def test_noise_conditional_sigma_max_follows_the_data():
    """sigma_max=None becomes the largest distance between training points at fit; a given
    sigma_max below it warns naming both numbers; before fit the levels need it."""
    x = np.random.default_rng(0).normal(size=(500, 2)).astype("float32") * 2.0
    net = dde.nets.conditional_energy_mlp(2, depth=1, width=8, embedding_dim=4)
    model = dde.NoiseConditionalDDE(net, sigma_min=0.05, seed=0)
    with pytest.raises(ValueError, match="sigma_max"):
        model.noise_levels(3)
    model.fit(x, epochs=1, batch_size=250, verbose=0)
    d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1)).max()
    assert model.sigma_max == pytest.approx(d, rel=1e-6)
    assert model.get_config()["sigma_max"] == pytest.approx(d, rel=1e-6)
    small = dde.NoiseConditionalDDE(dde.nets.conditional_energy_mlp(2, depth=1, width=8),
                                    sigma_min=0.05, sigma_max=1.0, seed=0)
    with pytest.warns(UserWarning, match=r"sigma_max = 1 is smaller than the largest distance"):
        small.fit(x, epochs=1, batch_size=250, verbose=0)
