"""End-to-end tests of `dde fit` (the main job) in a temporary directory."""
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from dde.anomaly import DDEAnomalyDetector
from dde_cli import main


def test_fit_default_dataset_writes_model_metrics_and_plots(tmp_path, capsys):
    out = tmp_path / "demo"
    status = main(["fit", "--out", str(out), "--epochs", "2", "--num-samples", "2000",
                   "--width", "32", "--quiet"])
    assert status == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["density.png", "metrics.json", "model.keras", "score_field.png",
                     "training_curves.png"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["data"] == "8gaussians"
    assert metrics["dimension"] == 2 and metrics["n_train"] == 1800
    assert np.isfinite(metrics["final_loss"]) and np.isfinite(metrics["final_val_loss"])
    assert metrics["noise_std"] == pytest.approx(0.1)  # the schedule reached its floor
    assert metrics["initial_noise_std"] == pytest.approx(0.5)
    assert max(metrics["history"]["noise_std"]) > 0.1
    assert metrics["training_seconds"] > 0
    model = keras.models.load_model(out / "model.keras")
    assert model.input_dim == 2
    assert "final loss" in capsys.readouterr().out


def test_fit_user_csv_with_schedule(tmp_path):
    rng = np.random.default_rng(0)
    data = tmp_path / "data.csv"
    np.savetxt(data, rng.normal(size=(300, 3)), delimiter=",", header="a,b,c", comments="")
    out = tmp_path / "run"
    status = main(["fit", "--data", str(data), "--out", str(out), "--epochs", "3",
                   "--batch-size", "32", "--initial-noise-std", "0.4", "--noise-std", "0.1",
                   "--decay-factor", "0.5", "--decay-every", "9", "--quiet", "--width", "16",
                   "--lr-schedule", "constant"])
    assert status == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dimension"] == 3
    # 270 training points at batch 32 → 9 batches per epoch: σ halves after each epoch.
    np.testing.assert_allclose(metrics["history"]["noise_std"], [0.4, 0.2, 0.1], rtol=1e-6)
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "model.keras",
                                                     "training_curves.png"]


@pytest.mark.parametrize("content,message", [
    ("1,2\n3,nan\n", "NaN"),
    ("1,2\n3,x\n", "Could not read"),
    ("", "is empty"),
    ("a,b\n", "no data rows"),
])
def test_fit_bad_data_file_exits_2_and_writes_nothing(tmp_path, capsys, content, message):
    data = tmp_path / "bad.csv"
    data.write_text(content)
    out = tmp_path / "out"
    assert main(["fit", "--data", str(data), "--out", str(out), "--quiet"]) == 2
    assert not out.exists()
    assert message in capsys.readouterr().err


def test_fit_bad_arguments_exit_2(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["fit", "--out", str(out), "--epochs", "0"]) == 2
    assert "--epochs" in capsys.readouterr().err
    assert main(["fit", "--dataset", "no_such_set", "--out", str(out)]) == 2
    assert "no_such_set" in capsys.readouterr().err
    assert main(["fit", "--data", str(tmp_path / "missing.npy"), "--out", str(out)]) == 2
    assert not out.exists()


def test_console_script_help():
    result = subprocess.run([sys.executable, "-m", "dde_cli", "fit", "--help"],
                            capture_output=True, text=True, timeout=120,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0
    for flag in ("--dataset", "--data", "--out", "--epochs", "--noise-std", "--seed"):
        assert flag in result.stdout


def test_fit_detector_then_score(tmp_path):
    """`dde fit --detector` writes a detector that `dde score` uses on new rows."""
    rng = np.random.default_rng(1)
    train = tmp_path / "train.csv"
    np.savetxt(train, rng.normal(size=(400, 3)), delimiter=",")
    new = tmp_path / "new.csv"
    np.savetxt(new, np.vstack([rng.normal(size=(5, 3)), np.full((1, 3), 8.0)]), delimiter=",")
    out = tmp_path / "det"
    assert main(["fit", "--detector", "--data", str(train), "--out", str(out),
                 "--max-steps", "30", "--quiet", "--contamination", "0.1"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["detector.zip", "metrics.json"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_train"] == 400 and metrics["dimension"] == 3
    scores = tmp_path / "scores.csv"
    assert main(["score", "--model", str(out / "detector.zip"), "--data", str(new),
                 "--out", str(scores)]) == 0
    rows = scores.read_text().strip().splitlines()
    assert len(rows) == 7  # header + 6 rows
    assert rows[-1].split(",")[-1].strip() == "-1"  # the far point is flagged


def test_fit_detector_passes_options_given_even_at_density_defaults(tmp_path):
    """An option given on the command line reaches the detector even when its value equals
    the density model's default; options not given leave the detector's own defaults."""
    train = tmp_path / "train.csv"
    np.savetxt(train, np.random.default_rng(2).normal(size=(200, 2)), delimiter=",")
    out = tmp_path / "det"
    assert main(["fit", "--detector", "--data", str(train), "--out", str(out), "--quiet",
                 "--max-steps", "20", "--activation", "softplus",
                 "--learning-rate", "0.003"]) == 0
    params = json.loads((out / "metrics.json").read_text())["params"]
    assert params["activation"] == "softplus" and params["learning_rate"] == 0.003
    defaults = DDEAnomalyDetector().get_params()                  # the detector's defaults
    assert params["width"] == defaults["width"] == 256
    assert params["batch_size"] == defaults["batch_size"] == 256
