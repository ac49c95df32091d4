"""Tests of `dde score` and of the detector training behind `dde fit --detector`
(dde_cli.score.fit_detector), in temporary directories."""
import argparse

import numpy as np
import pytest

from dde.anomaly import DDEAnomalyDetector
from dde_cli import main
from dde_cli import score as score_cli

TINY = dict(hidden_layers=1, width=16, max_steps=20, validation_interval=10, batch_size=64)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A small detector fitted on 4-D standard Gaussian data and saved; returns
    (detector, path)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 4))
    det = DDEAnomalyDetector(contamination=0.1, random_state=0, hidden_layers=2, width=32,
                             max_steps=300).fit(x)
    path = tmp_path_factory.mktemp("model") / "detector.zip"
    det.save(path)
    return det, path


def _write_csv(path, x, header=None):
    lines = [",".join(header)] if header else []
    lines += [",".join(repr(float(v)) for v in row) for row in x]
    path.write_text("\n".join(lines) + "\n")


def test_score_writes_scores_and_labels(saved, tmp_path):
    det, model = saved
    rng = np.random.default_rng(1)
    x = np.vstack([rng.normal(size=(20, 4)), rng.normal(size=(5, 4)) + 4.0])
    data, out = tmp_path / "new.csv", tmp_path / "scores.csv"
    _write_csv(data, x, header=["a", "b", "c", "d"])
    assert main(["score", "--model", str(model), "--data", str(data), "--out", str(out)]) == 0
    lines = out.read_text().splitlines()
    assert lines[0] == "score,decision,label" and len(lines) == 1 + len(x)
    table = np.loadtxt(out, delimiter=",", skiprows=1)
    np.testing.assert_allclose(table[:, 0], det.score_samples(x), rtol=0, atol=1e-12)
    np.testing.assert_allclose(table[:, 1], det.decision_function(x), rtol=0, atol=1e-12)
    np.testing.assert_array_equal(table[:, 2].astype(int), det.predict(x))
    assert (table[-5:, 2] == -1).all()  # the shifted rows lie 8 standard deviations away


def test_score_reads_npy(saved, tmp_path):
    det, model = saved
    x = np.random.default_rng(2).normal(size=(7, 4))
    np.save(tmp_path / "new.npy", x)
    out = tmp_path / "s.csv"
    assert main(["score", "--model", str(model), "--data", str(tmp_path / "new.npy"),
                 "--out", str(out)]) == 0
    np.testing.assert_array_equal(np.loadtxt(out, delimiter=",", skiprows=1)[:, 2],
                                  det.predict(x))


@pytest.mark.parametrize("case, message", [
    ("columns", "has 3 columns, but the detector was trained on 4"),
    ("nan", "NaN"),
    ("missing_data", "not found"),
    ("missing_model", "not found"),
    ("bad_model", "not a saved DDEAnomalyDetector"),
    ("out_is_input", "would overwrite"),
])
def test_score_errors_exit_2_and_write_nothing(saved, tmp_path, capsys, case, message):
    _, model = saved
    data, out = tmp_path / "new.csv", tmp_path / "scores.csv"
    x = np.random.default_rng(3).normal(size=(5, 4))
    if case == "columns":
        x = x[:, :3]
    if case == "nan":
        x[2, 1] = np.nan
    _write_csv(data, x)
    if case == "missing_data":
        data = tmp_path / "absent.csv"
    if case == "missing_model":
        model = tmp_path / "absent.zip"
    if case == "bad_model":
        model = tmp_path / "bad.zip"
        model.write_text("garbage")
    if case == "out_is_input":
        out = data
    before = sorted(p.name for p in tmp_path.iterdir())
    status = main(["score", "--model", str(model), "--data", str(data), "--out", str(out)])
    assert status == 2
    assert message in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def _fit_args(out, **overrides):
    args = dict(out=str(out), depth=1, width=16, activation="softplus", batch_size=64,
                learning_rate=1e-3, seed=0, validation_split=0.1, quiet=True,
                contamination=0.05, max_steps=20, detector_noise_std="auto")
    args.update(overrides)
    return argparse.Namespace(**args)


def test_fit_detector_then_score(tmp_path):
    """`fit_detector` trains from parsed options, saves <out>/detector.zip atomically and
    returns metrics; the file scores with `dde score`."""
    x = np.random.default_rng(4).normal(size=(200, 3))
    metrics = score_cli.fit_detector(_fit_args(tmp_path / "run"), x)
    path = tmp_path / "run" / score_cli.DETECTOR_FILE
    assert metrics["detector"] == str(path) and path.is_file()
    assert metrics["n_train"] == 200 and metrics["dimension"] == 3
    assert metrics["params"]["hidden_layers"] == 1 and metrics["params"]["contamination"] == 0.05
    assert abs(metrics["training_fraction_flagged"] - 0.05) <= 1 / 200
    assert metrics["steps"] == 20 and metrics["noise_std"] > 0
    det = DDEAnomalyDetector.load(path)
    assert det.offset_ == metrics["offset"]
    _write_csv(tmp_path / "x.csv", x[:10])
    assert main(["score", "--model", str(path), "--data", str(tmp_path / "x.csv"),
                 "--out", str(tmp_path / "s.csv")]) == 0


def test_fit_detector_bad_option_writes_nothing(tmp_path):
    x = np.random.default_rng(5).normal(size=(50, 3))
    with pytest.raises(ValueError, match="contamination"):
        score_cli.fit_detector(_fit_args(tmp_path / "run", contamination=0.9), x)
    assert not (tmp_path / "run").exists()


def test_detector_arguments_parse():
    parser = argparse.ArgumentParser()
    score_cli.add_detector_arguments(parser)
    args = parser.parse_args(["--contamination", "0.02", "--max-steps", "50",
                              "--detector-noise-std", "0.3"])
    assert (args.contamination, args.max_steps, args.detector_noise_std) == (0.02, 50, 0.3)
    args = parser.parse_args([])
    assert args.contamination == "auto" and args.detector_noise_std == "auto"
    with pytest.raises(SystemExit):
        parser.parse_args(["--contamination", "lots"])
