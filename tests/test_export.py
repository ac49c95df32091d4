"""Serving export (`dde.export`, `model.export`, `detector.export`, `dde export`): the
SavedModel is loaded in a fresh interpreter where `dde` cannot be imported (an import hook
refuses it, and `-I` ignores the environment and the working directory), with TensorFlow
alone, and its signatures must reproduce the model's outputs to float32 tolerance.
Deterministic: no chance element."""
import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import dde
from dde_cli import main

# Runs in `python -I`: TensorFlow only. Prints {signature: outputs} of the exports on x.
LOADER = textwrap.dedent("""
    import importlib.abc, json, os, sys
    class NoDDE(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("dde", "dde_cli"):
                raise ModuleNotFoundError(f"no module named {name!r} here")
            return None
    sys.meta_path.insert(0, NoDDE())
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    try:
        import dde
        raise SystemExit("dde is importable")
    except ModuleNotFoundError:
        pass
    import numpy as np, tensorflow as tf
    x = tf.constant(np.load(sys.argv[1]))
    out = {}
    for folder in sys.argv[2:]:
        loaded = tf.saved_model.load(folder)
        out[folder] = {name: {k: v.numpy().tolist() for k, v in fn(x=x).items()}
                       for name, fn in loaded.signatures.items()}
    assert not any(m.split(".")[0] == "dde" for m in sys.modules)
    print(json.dumps(out))
""")


def load_elsewhere(tmp_path, x, folders):
    """{folder: {signature: {output: array}}} computed by a fresh TensorFlow-only process."""
    np.save(tmp_path / "query.npy", np.asarray(x, np.float32))
    result = subprocess.run([sys.executable, "-I", "-c", LOADER, str(tmp_path / "query.npy"),
                             *map(str, folders)], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert result.returncode == 0, result.stderr[-3000:]
    raw = json.loads(result.stdout.strip().splitlines()[-1])
    return {f: {s: {k: np.asarray(v) for k, v in outs.items()} for s, outs in sigs.items()}
            for f, sigs in raw.items()}


@pytest.fixture(scope="module")
def models():
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).normal(size=(400, 3)).astype("float32")
    dde_model = dde.DenoisingDensityEstimator(dde.nets.energy_mlp(3, depth=2, width=16),
                                              noise_std=0.3, seed=0)
    dde_model.fit(x, epochs=1, batch_size=64, verbose=0)
    dde_model.set_log_partition(2.5, 0.01, 900.0)
    nc = dde.NoiseConditionalDDE(dde.nets.conditional_energy_mlp(3, depth=1, width=16),
                                 sigma_min=0.1, seed=0)
    nc.fit(x, epochs=1, batch_size=64, verbose=0)
    det = dde.DDEAnomalyDetector(hidden_layers=1, width=8, max_steps=30,
                                 validation_interval=10, batch_size=64,
                                 activation="softplus", noise_std=0.5, contamination=0.1,
                                 random_state=0).fit(x * [1.0, 10.0, 0.1] + 3.0)
    return x, dde_model, nc, det


def test_exports_reproduce_the_models_without_dde(models, tmp_path):
    x, model, nc, det = models
    q = np.vstack([x[:40], x[:5] * 4.0])
    model.export(tmp_path / "dde")
    dde.export.export_density(nc, tmp_path / "nc", noise_std=0.4)
    nc.export(tmp_path / "nc_min")  # at sigma_min
    det.export(tmp_path / "det")
    q_det = q * [1.0, 10.0, 0.1] + 3.0
    got = load_elsewhere(tmp_path, q, [tmp_path / "dde", tmp_path / "nc", tmp_path / "nc_min"])
    d = got[str(tmp_path / "dde")]
    assert set(d) == {"log_density", "score", "log_prob", "serving_default"}
    np.testing.assert_allclose(d["log_density"]["log_density"], model.log_density(q),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(d["score"]["score"], model.score(q), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(d["log_prob"]["log_prob"], model.log_prob(q), rtol=1e-6,
                               atol=1e-5)
    n = got[str(tmp_path / "nc")]
    assert "log_prob" not in n  # not normalized
    np.testing.assert_allclose(n["log_density"]["log_density"],
                               nc.log_density(q, noise_std=0.4), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(n["score"]["score"], nc.score(q, noise_std=0.4), rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_allclose(got[str(tmp_path / "nc_min")]["log_density"]["log_density"],
                               nc.log_density(q), rtol=1e-5, atol=1e-5)
    g = load_elsewhere(tmp_path, q_det, [tmp_path / "det"])[str(tmp_path / "det")]
    assert set(g) == {"score_samples", "decision_function", "predict", "serving_default"}
    np.testing.assert_allclose(g["score_samples"]["score_samples"], det.score_samples(q_det),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(g["decision_function"]["decision_function"],
                               det.decision_function(q_det), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(g["predict"]["predict"], det.predict(q_det))
    assert (det.predict(q_det) == -1).any() and (det.predict(q_det) == 1).any()
    manifest = json.loads((tmp_path / "det" / "dde_export.json").read_text())
    assert manifest["kind"] == "detector" and manifest["offset"] == pytest.approx(det.offset_)


def test_dde_export_command(models, tmp_path, capsys):
    x, model, nc, det = models
    model.save(tmp_path / "m.keras")
    det.save(tmp_path / "detector.zip")
    assert main(["export", "--model", str(tmp_path / "m.keras"), "--out",
                 str(tmp_path / "served"), "--quiet"]) == 0
    assert main(["export", "--model", str(tmp_path / "detector.zip"), "--out",
                 str(tmp_path / "served_det"), "--quiet"]) == 0
    assert "log_prob" in capsys.readouterr().out
    # an earlier export is replaced as a whole; a folder of other files is refused
    assert main(["export", "--model", str(tmp_path / "m.keras"), "--out",
                 str(tmp_path / "served"), "--quiet"]) == 0
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    assert main(["export", "--model", str(tmp_path / "m.keras"), "--out",
                 str(tmp_path / "mine")]) == 2
    assert "other files than a SavedModel" in capsys.readouterr().err
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
    assert main(["export", "--model", str(tmp_path / "detector.zip"), "--noise-std", "0.1",
                 "--out", str(tmp_path / "x")]) == 2
    got = load_elsewhere(tmp_path, x[:10], [tmp_path / "served"])[str(tmp_path / "served")]
    np.testing.assert_allclose(got["serving_default"]["log_density"], model.log_density(x[:10]),
                               rtol=1e-5, atol=1e-5)


def test_a_single_sigma_model_refuses_another_sigma(models, tmp_path):
    _, model, _, _ = models
    with pytest.raises(ValueError, match="single noise level"):
        model.export(tmp_path / "bad", noise_std=0.05)
    assert not (tmp_path / "bad").exists()


@pytest.mark.filterwarnings("ignore:.*tf.lite.Interpreter is deprecated")
def test_tflite_conversion_gives_the_same_log_density(models, tmp_path):
    """Optional: the density signature converts to TFLite and runs in its interpreter with
    the same outputs (the score needs the gradient, which TFLite's builtin ops lack)."""
    import tensorflow as tf

    x, model, _, _ = models
    model.export(tmp_path / "dde")
    converter = tf.lite.TFLiteConverter.from_saved_model(str(tmp_path / "dde"),
                                                         signature_keys=["log_density"])
    try:
        flat = converter.convert()
    except Exception as err:  # pragma: no cover (a TensorFlow build without the converter)
        pytest.skip(f"TFLite conversion unavailable: {err}")
    interpreter = tf.lite.Interpreter(model_content=flat)
    runner = interpreter.get_signature_runner("log_density")
    out = runner(x=x[:16])["log_density"]
    np.testing.assert_allclose(out, model.log_density(x[:16]), rtol=1e-5, atol=1e-5)
