"""Tests of benchmarks/anomaly.py and benchmarks/anomaly_dev.py: the split protocol, a
`--quick` run on small generated ADBench-format files (structure of the JSON and markdown,
every method present, AUROC sensible on easy data), bad arguments exiting with status 2, and
the development sets.

Deterministic (fixed seeds). The only statistical check: on the generated data (anomalies
≥ 6 standard deviations away from the inliers) every method's AUROC exceeds 0.9; each
method separates such points essentially perfectly, so this fails only on a real defect.
"""
import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name):
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))  # anomaly_dev imports anomaly
    spec = importlib.util.spec_from_file_location(f"{name}_benchmark", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _write_set(path, n_normal, n_anomalies, d, seed):
    """An ADBench-format file: Gaussian inliers, anomalies shifted by 6 in every feature."""
    rng = np.random.default_rng(seed)
    x = np.vstack([rng.normal(size=(n_normal, d)),
                   rng.normal(size=(n_anomalies, d)) + 6.0 * rng.choice([-1, 1], size=d)])
    y = np.r_[np.zeros(n_normal, int), np.ones(n_anomalies, int)]
    np.savez(path, X=x, y=y)


def test_split_protocol():
    bench = _load("anomaly")
    rng = np.random.default_rng(0)
    x = rng.normal(loc=3.0, scale=2.0, size=(100, 3))
    y = np.r_[np.zeros(80, int), np.ones(20, int)]
    x_train, x_test, y_test = bench.split(x, y, seed=0)
    assert len(x_train) == 48 and len(x_test) == 52           # 60 % of the 80 normal rows
    assert y_test.sum() == 20 and (y_test == 0).sum() == 32   # every anomaly is tested
    np.testing.assert_allclose(x_train.mean(0), 0.0, atol=1e-12)  # standardized on train
    np.testing.assert_allclose(x_train.std(0), 1.0, atol=1e-12)
    again = bench.split(x, y, seed=0)
    np.testing.assert_array_equal(again[0], x_train)           # seeded


def test_quick_run_writes_results(tmp_path, capsys):
    bench = _load("anomaly")
    data = tmp_path / "data"
    data.mkdir()
    _write_set(data / "1_easy.npz", 300, 30, 3, 0)
    _write_set(data / "2_other.npz", 200, 20, 4, 1)
    out = tmp_path / "anomaly.json"
    assert bench.main(["--data-dir", str(data), "--quick", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["quick"] is True and report["methods"] == list(bench.METHODS)
    assert set(report["table"]) == {"1_easy", "2_other"}
    assert report["info"]["datasets"]["1_easy"] == {"n": 330, "d": 3, "anomalies": 30}
    for ds in report["table"]:
        for m in bench.METHODS:
            auroc = report["table"][ds][m]["auroc"]["mean"]
            assert auroc > 0.9, (ds, m, auroc)
    for m in bench.METHODS:
        overall = report["overall"][m]
        assert 1.0 <= overall["mean_rank_auroc"] <= len(bench.METHODS)
        assert overall["total_fit_seconds"] > 0
    dde_run = report["runs"]["1_easy"]["DDE"][0]
    assert dde_run["n_steps"] >= 300 and math.isfinite(dde_run["best_val_loss"])
    assert report["note"].startswith("DDE mean AUROC")
    text = out.with_suffix(".md").read_text()
    assert "| 1_easy | 330 | 3 | 30 |" in text and "mean rank" in text
    assert "| 1_easy | 330 | 3 | 30 |" in capsys.readouterr().out


def test_empty_data_dir_exits_2(tmp_path):
    bench = _load("anomaly")
    with pytest.raises(SystemExit) as info:
        bench.main(["--data-dir", str(tmp_path), "--out", str(tmp_path / "r.json")])
    assert info.value.code == 2
    assert not (tmp_path / "r.json").exists()


def test_bad_npz_is_named(tmp_path):
    bench = _load("anomaly")
    np.savez(tmp_path / "bad.npz", features=np.zeros((3, 2)))
    with pytest.raises(ValueError, match="expected arrays 'X' and 'y'"):
        bench.load_npz(tmp_path / "bad.npz")


def test_development_sets():
    dev = _load("anomaly_dev")
    sets = {name: (x, y) for name, x, y in dev.development_sets()}
    assert set(sets) == {"breast_cancer", "wine0", "wine1", "wine2",
                         "digits0", "digits3", "digits8"}
    x, y = sets["breast_cancer"]
    assert x.shape == (569, 30) and y.sum() == 212               # malignant = anomaly
    x, y = sets["digits3"]
    assert x.shape[1] == 64 and (y == 0).sum() == 183 and y.sum() == 183 // 5


def test_dev_bad_variants_exit_2(tmp_path, capsys):
    dev = _load("anomaly_dev")
    assert dev.main(["--variants", "[1, 2]", "--out", str(tmp_path / "r.json")]) == 2
    assert "--variants" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()


def test_restored_val_loss_is_the_early_stopping_best():
    """The reported held-out loss is the validation loss at the restored step: the minimum
    over the evaluations after the σ annealing (the first half of the steps)."""
    from dde.anomaly import DDEAnomalyDetector

    bench = _load("anomaly")
    x = np.random.default_rng(5).normal(size=(400, 3))
    det = DDEAnomalyDetector(hidden_layers=1, width=16, max_steps=200, validation_interval=20,
                             batch_size=64, random_state=0).fit(x)
    val = det.history_["val_loss"]
    assert len(val) == 10
    assert bench.restored_val_loss(det) == pytest.approx(min(val[5:]))
    no_val = DDEAnomalyDetector(hidden_layers=1, width=8, max_steps=20, validation_interval=10,
                                validation_fraction=0.0, random_state=0).fit(x)
    assert math.isnan(bench.restored_val_loss(no_val))


def test_dde_params_reach_the_detector_and_are_checked(tmp_path):
    bench = _load("anomaly")
    data = tmp_path / "data"
    data.mkdir()
    _write_set(data / "1_easy.npz", 200, 20, 3, 0)
    out = tmp_path / "r.json"
    assert bench.main(["--data-dir", str(data), "--quick", "--methods", "DDE", "--out", str(out),
                       "--dde-params", '{"activation": "tanh", "max_steps": 100}']) == 0
    report = json.loads(out.read_text())
    assert report["dde_params"] == {"max_steps": 100, "activation": "tanh"}
    run = report["runs"]["1_easy"]["DDE"][0]
    assert run["activation"] == "tanh" and run["n_steps"] == 100
    for bad in ("{not json", "[1]"):
        with pytest.raises(SystemExit) as info:
            bench.main(["--data-dir", str(data), "--dde-params", bad])
        assert info.value.code == 2
