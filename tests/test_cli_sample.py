"""Tests of `dde sample`: outputs, methods, exit status 2 on bad input with nothing written."""
import keras
import numpy as np
import pytest
import tensorflow as tf

import dde
from dde import _io
from dde_cli import main

MU = np.array([1.0, -1.0])


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Saved models: a DDE trained briefly on N(MU, 0.5²I) (σ = 0.3), a fitted
    NoiseConditionalDDE, and an (untrained) 3-D DDE."""
    root = tmp_path_factory.mktemp("models")
    keras.utils.set_random_seed(0)
    x = (MU + 0.5 * np.random.default_rng(0).normal(size=(3000, 2))).astype("float32")
    dde_model = dde.DenoisingDensityEstimator(dde.nets.energy_mlp(2, depth=2, width=32),
                                              noise_std=0.3, seed=0)
    dde_model.compile(optimizer=keras.optimizers.Adam(5e-3))
    dde_model.fit(x, epochs=10, batch_size=128, verbose=0)
    nc = dde.NoiseConditionalDDE(dde.nets.conditional_energy_mlp(2, depth=1, width=16),
                                 sigma_min=0.1, sigma_max=2.0, seed=0)
    nc.compile(optimizer=keras.optimizers.Adam(5e-3))
    nc.fit(x, epochs=1, batch_size=256, verbose=0)
    three = dde.DenoisingDensityEstimator(dde.nets.energy_mlp(3, depth=1, width=8), seed=0)
    three(tf.zeros([1, 3]))
    paths = {"dde": root / "dde.keras", "nc": root / "nc.keras", "3d": root / "three.keras"}
    for key, model in (("dde", dde_model), ("nc", nc), ("3d", three)):
        _io.save_keras(model, paths[key])
    return paths


def test_sample_mala_writes_samples_and_plot(models, tmp_path, capsys):
    """MALA samples of the trained model follow its smoothed Gaussian: mean within 0.2 of MU
    (SE of the mean of 400 chains ≈ 0.03; the margin covers the short training)."""
    out, plot = tmp_path / "s.npy", tmp_path / "s.png"
    code = main(["sample", "--model", str(models["dde"]), "-n", "400", "--method", "mala",
                 "--steps", "200", "--out", str(out), "--plot", str(plot), "--seed", "1",
                 "--quiet"])
    assert code == 0
    x = np.load(out)
    assert x.shape == (400, 2) and x.dtype == np.float32 and np.isfinite(x).all()
    assert np.allclose(x.mean(0), MU, atol=0.2), x.mean(0)
    assert plot.stat().st_size > 1000 and plot.read_bytes()[:4] == b"\x89PNG"
    stdout = capsys.readouterr().out
    assert "400 samples" in stdout and "acceptance rate" in stdout
    # The same seed gives the same samples.
    again = tmp_path / "again.npy"
    assert main(["sample", "--model", str(models["dde"]), "-n", "400", "--method", "mala",
                 "--steps", "200", "--out", str(again), "--seed", "1", "--quiet"]) == 0
    np.testing.assert_array_equal(np.load(again), x)


def test_sample_ula_from_init_file_and_annealed(models, tmp_path):
    init = tmp_path / "init.npy"
    np.save(init, np.array([[4.0, 4.0]]))
    out = tmp_path / "ula.npy"
    assert main(["sample", "--model", str(models["dde"]), "-n", "50", "--steps", "5",
                 "--step-size", "1e-4", "--init", str(init), "--out", str(out),
                 "--quiet"]) == 0
    x = np.load(out)
    assert x.shape == (50, 2) and np.all(np.abs(x - 4.0) < 0.2)  # 5 tiny steps from (4, 4)
    # --start proposal: 5 tiny ULA steps keep the proposal's spread (data Gaussian ≈ N(MU, ·)).
    out = tmp_path / "start.npy"
    assert main(["sample", "--model", str(models["dde"]), "-n", "400", "--steps", "5",
                 "--start", "proposal", "--out", str(out), "--quiet"]) == 0
    assert np.allclose(np.load(out).mean(0), MU, atol=0.3)
    assert main(["sample", "--model", str(models["dde"]), "-n", "5", "--start", "smc",
                 "--init", str(init), "--out", str(out), "--quiet"]) == 2
    out = tmp_path / "annealed.npy"
    assert main(["sample", "--model", str(models["nc"]), "-n", "30", "--method", "annealed",
                 "--steps", "40", "--levels", "4", "--out", str(out), "--quiet"]) == 0
    assert np.load(out).shape == (30, 2)


@pytest.mark.parametrize("extra, message", [
    (["-n", "0"], "-n must be"),
    (["--steps", "0"], "--steps must be"),
    (["--step-size", "-1"], "--step-size must be"),
    (["--burnin", "-3", "--method", "mala"], "--burnin must be"),
    (["--target-accept", "1.5"], "--target-accept"),
    (["--method", "annealed"], "NoiseConditionalDDE"),
    (["--out-suffix", "txt"], ".npy"),
    (["--plot-suffix", "gif"], "--plot must end"),
    (["--model-key", "3d"], "this model has 3 dimensions"),
    (["--model-key", "missing"], "not found"),
    (["--init-rows", "3col"], "3 features"),
    (["--init-rows", "nan"], "NaN"),
    (["--init-rows", "wrong-count"], "init has 3 rows"),
])
def test_bad_input_exits_2_and_writes_nothing(models, tmp_path, capsys, extra, message):
    out, plot = tmp_path / "out" / "s.npy", tmp_path / "out" / "s.png"
    model = str(models["dde"])
    args = []
    it = iter(extra)
    for flag in it:
        value = next(it)
        if flag == "--out-suffix":
            out = out.with_suffix("." + value)
        elif flag == "--plot-suffix":
            plot = plot.with_suffix("." + value)
        elif flag == "--model-key":
            model = str(models[value]) if value in models else str(tmp_path / "nope.keras")
        elif flag == "--init-rows":
            init = tmp_path / "init.npy"
            np.save(init, {"3col": np.zeros((5, 3)), "nan": np.array([[np.nan, 0.0]]),
                           "wrong-count": np.zeros((3, 2))}[value])
            args += ["--init", str(init)]
        else:
            args += [flag, value]
    code = main(["sample", "--model", model, "-n", "5", "--steps", "3", "--out", str(out),
                 "--plot", str(plot), "--quiet", *args])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not out.exists() and not plot.exists()
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
