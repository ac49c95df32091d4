"""`dde density` and the streamed `dde score`: rows read, evaluated and written in chunks;
the output equals the model's own results, does not depend on the chunk size, and appears
only when every chunk succeeded. Deterministic: no chance element."""
import numpy as np
import pytest

from dde_cli import main

pa = pytest.importorskip("pyarrow")
import pyarrow.parquet as pq  # noqa: E402


def read_table(path):
    with open(path) as handle:
        header = handle.readline().strip().split(",")
    return header, np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)


def test_density_writes_log_density_log_prob_and_score(tiny_artifacts, tmp_path):
    import keras

    model = keras.models.load_model(tiny_artifacts / "normalized.keras")
    x = np.random.default_rng(0).normal(size=(57, 2)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "d.csv"
    assert main(["density", "--model", str(tiny_artifacts / "normalized.keras"), "--data",
                 str(tmp_path / "x.npy"), "--out", str(out), "--chunk-rows", "10",
                 "--quiet"]) == 0
    header, table = read_table(out)
    assert header == ["log_density", "log_prob", "score_0", "score_1"]
    np.testing.assert_allclose(table[:, 0], model.log_density(x), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(table[:, 1], model.log_prob(x), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(table[:, 2:], model.score(x), rtol=1e-6, atol=1e-6)
    whole = tmp_path / "whole.csv"
    assert main(["density", "--model", str(tiny_artifacts / "normalized.keras"), "--data",
                 str(tmp_path / "x.npy"), "--out", str(whole), "--quiet"]) == 0
    assert whole.read_text() == out.read_text()  # the chunk size changes nothing
    # Parquet input, without the score
    pq.write_table(pa.table({"u": x[:, 0], "v": x[:, 1]}), tmp_path / "x.parquet",
                   row_group_size=20)
    assert main(["density", "--model", str(tiny_artifacts / "model.keras"), "--data",
                 str(tmp_path / "x.parquet"), "--out", str(tmp_path / "p.csv"),
                 "--no-score", "--quiet"]) == 0
    header, table = read_table(tmp_path / "p.csv")
    assert header == ["log_density"]
    np.testing.assert_allclose(table[:, 0], model.log_density(x), rtol=1e-6, atol=1e-6)


def test_a_bad_row_in_a_late_chunk_leaves_no_output(tiny_artifacts, tmp_path, capsys):
    x = np.zeros((50, 2))
    x[43, 1] = np.inf
    np.save(tmp_path / "x.npy", x)
    for argv in (["density", "--model", str(tiny_artifacts / "model.keras")],
                 ["score", "--model", str(tiny_artifacts / "detector.zip")]):
        out = tmp_path / "o.csv"
        assert main(argv + ["--data", str(tmp_path / "x.npy"), "--out", str(out),
                            "--chunk-rows", "8"]) == 2
        err = capsys.readouterr().err
        assert "row 43, column 1" in err and len(err.splitlines()) == 1
        assert sorted(p.name for p in tmp_path.iterdir()) == ["x.npy"]


def test_density_refuses_a_sigma_a_single_sigma_model_lacks(tiny_artifacts, tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.zeros((3, 2)))
    assert main(["density", "--model", str(tiny_artifacts / "model.keras"), "--data",
                 str(tmp_path / "x.npy"), "--out", str(tmp_path / "o.csv"), "--noise-std",
                 "0.05"]) == 2
    assert "single noise level" in capsys.readouterr().err
    assert main(["density", "--model", str(tiny_artifacts / "model.keras"), "--data",
                 str(tmp_path / "x.npy"), "--out", str(tmp_path / "o.txt")]) == 2
    assert not list(tmp_path.glob("o.*"))


def test_score_streams_in_chunks_with_the_same_result(tiny_artifacts, tmp_path):
    from dde.anomaly import DDEAnomalyDetector

    det = DDEAnomalyDetector.load(tiny_artifacts / "detector.zip")
    x = np.random.default_rng(1).normal(size=(5000, 2)) * 2
    np.save(tmp_path / "x.npy", x)
    small, big = tmp_path / "small.csv", tmp_path / "big.csv"
    for out, rows in ((small, "333"), (big, "65536")):
        assert main(["score", "--model", str(tiny_artifacts / "detector.zip"), "--data",
                     str(tmp_path / "x.npy"), "--out", str(out), "--chunk-rows", rows,
                     "--quiet"]) == 0
    assert small.read_text() == big.read_text()
    _, table = read_table(small)
    np.testing.assert_allclose(table[:, 0], det.score_samples(x), rtol=0, atol=1e-12)
    np.testing.assert_array_equal(table[:, 2], det.predict(x))
