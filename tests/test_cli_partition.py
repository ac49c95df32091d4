"""Tests of the `dde normalize` and `dde evaluate` commands (run in-process in a tmp dir)."""
import json
import shutil

import keras
import numpy as np
import pytest

import dde
from dde_cli import main


def blobs(n, seed):
    rng = np.random.default_rng(seed)
    k = rng.integers(0, 2, size=n)
    return (np.array([[-1.5, 0.0], [1.5, 0.5]])[k] + 0.4 * rng.normal(size=(n, 2))).astype(
        "float32")


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    """A briefly trained 2-D DDE saved un-normalized, with train/test data files."""
    root = tmp_path_factory.mktemp("cli_partition")
    keras.utils.set_random_seed(0)
    model = dde.DenoisingDensityEstimator(dde.nets.energy_mlp(2, depth=2, width=16),
                                          noise_std=0.2, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    train = blobs(2000, 0)
    model.fit(train, epochs=10, batch_size=128, verbose=0)
    model.save(root / "model.keras")
    np.save(root / "train.npy", train)
    np.save(root / "test.npy", blobs(500, 1))
    return root


@pytest.fixture
def work(saved_model, tmp_path):
    for name in ("model.keras", "train.npy", "test.npy"):
        shutil.copy(saved_model / name, tmp_path / name)
    return tmp_path


def files(path):
    return sorted(p.name for p in path.iterdir())


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "normalize" in out and "evaluate" in out


def test_normalize_in_place_then_evaluate(work, capsys):
    args = ["--model", str(work / "model.keras"), "--quiet"]
    assert main(["normalize", *args, "--data", str(work / "train.npy"),
                 "--num-samples", "20000", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "log Z = " in out and "(2·SE)" in out and "ESS" in out
    record = json.loads((work / "model.normalize.json").read_text())
    for key in ("log_z", "stderr", "ess", "num_samples", "method", "seed", "diagnostics"):
        assert key in record
    assert record["num_samples"] == 20000 and record["method"] == "is"
    assert record["seed"] == [0, 3] and record["diagnostics"]["proposal"] == "gaussian"
    model = keras.saving.load_model(work / "model.keras")
    assert model.is_normalized
    assert float(model.log_z.numpy()) == pytest.approx(record["log_z"], abs=1e-12)
    assert float(model.log_z_stderr.numpy()) == pytest.approx(record["stderr"], abs=1e-12)
    # The same seed reproduces the same estimate through the Python API.
    fresh = keras.saving.load_model(work / "model.keras")
    again = fresh.normalize(np.load(work / "train.npy"), num_samples=20000, seed=3)
    assert again.log_z == pytest.approx(record["log_z"], abs=1e-9)

    json_out = work / "all.json"
    assert main(["evaluate", "--model", str(work / "model.keras"), "--data",
                 str(work / "test.npy"), "--json", str(json_out)]) == 0
    out = capsys.readouterr().out
    result = dde.average_log_likelihood(model, np.load(work / "test.npy"))
    assert str(result) in out and "n = 500" in out
    ev = json.loads(json_out.read_text())
    assert ev["n"] == 500
    assert ev["mean"] == pytest.approx(result.mean, abs=1e-6)
    assert ev["stderr"] == pytest.approx(result.stderr, rel=1e-6)
    assert ev["log_z"] == pytest.approx(record["log_z"], abs=1e-12)


def test_normalize_ais_to_new_file(work, capsys):
    before = (work / "model.keras").read_bytes()
    assert main(["normalize", "--model", str(work / "model.keras"), "--data",
                 str(work / "train.npy"), "--method", "ais", "--num-samples", "64",
                 "--num-steps", "10", "--num-leapfrog-steps", "2", "--proposal", "gmm",
                 "--n-components", "2", "--out", str(work / "m2.keras"), "--json",
                 str(work / "r.json"), "--seed", "1", "--quiet"]) == 0
    assert (work / "model.keras").read_bytes() == before
    record = json.loads((work / "r.json").read_text())
    assert record["method"] == "ais" and record["num_samples"] == 64
    assert record["diagnostics"]["kernel"] == "hmc" and record["diagnostics"]["num_steps"] == 10
    assert record["output_model"] == str(work / "m2.keras")
    assert keras.saving.load_model(work / "m2.keras").is_normalized
    assert not keras.saving.load_model(work / "model.keras").is_normalized
    assert "AIS" in capsys.readouterr().out


def test_evaluate_unnormalized_model_exits_2(work, capsys):
    listing = files(work)
    code = main(["evaluate", "--model", str(work / "model.keras"), "--data",
                 str(work / "test.npy"), "--json", str(work / "x.json")])
    assert code == 2
    assert "not normalized" in capsys.readouterr().err
    assert files(work) == listing


@pytest.mark.parametrize("extra,message", [
    (["--num-samples", "0"], "num-samples"),
    (["--batch-size", "-3"], "batch-size"),
    (["--out", "model.txt"], ".keras"),
    (["--data", "nan.npy"], "NaN"),
    (["--data", "wide.npy"], "features"),
    (["--data", "missing.npy"], "not found"),
    (["--model", "missing.keras"], "not found"),
    (["--noise-std", "0.1"], "noise_std"),
    (["--proposal-scale", "0.1", "--refuse-low-ess"], "effective sample size"),
    (["--proposal", "student_t", "--df", "1.5"], "df"),
])
def test_normalize_bad_input_exits_2_and_writes_nothing(work, capsys, extra, message):
    x = np.load(work / "train.npy")
    bad = x.copy()
    bad[5, 0] = np.nan
    np.save(work / "nan.npy", bad)
    np.save(work / "wide.npy", np.hstack([x, x[:, :1]]))
    listing = files(work)
    before = (work / "model.keras").read_bytes()
    args = {"--model": str(work / "model.keras"), "--data": str(work / "train.npy")}
    rest = []
    it = iter(extra)
    for a in it:
        if a in args:
            args[a] = str(work / next(it))
        elif a == "--out":
            rest += [a, str(work / next(it))]
        else:
            rest.append(a)
    argv = ["normalize", "--quiet", "--num-samples", "2000"]
    for k, v in args.items():
        argv += [k, v]
    code = main(argv + rest)
    assert code == 2
    assert message in capsys.readouterr().err
    assert files(work) == listing
    assert (work / "model.keras").read_bytes() == before


def test_evaluate_bad_data_exits_2(work, capsys):
    model = keras.saving.load_model(work / "model.keras")
    model.set_log_partition(0.5, 0.01, 100.0)
    model.save(work / "norm.keras")
    np.save(work / "wide.npy", np.zeros((4, 3), "float32"))
    listing = files(work)
    code = main(["evaluate", "--model", str(work / "norm.keras"), "--data",
                 str(work / "wide.npy"), "--json", str(work / "e.json")])
    assert code == 2 and "features" in capsys.readouterr().err
    assert files(work) == listing
