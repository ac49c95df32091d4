"""Out-of-core data (`dde.streaming`, `dde fit --data` on files): row sources for .npy
(memory-mapped), CSV and Parquet read in chunks, one-pass statistics equal to the in-memory
ones, the stable hash split, the shuffled tf.data pipeline, and chunk validation that names
the rows of the whole file. Deterministic: no test here has a chance element."""
import json

import keras
import numpy as np
import pytest

from dde import streaming
from dde.streaming import row_uniform
from dde_cli import main

pa = pytest.importorskip("pyarrow")
import pyarrow.parquet as pq  # noqa: E402


def write_all(folder, x, names=("a", "b", "c")):
    """x as .npy, .csv (with a header) and .parquet files in folder; returns their paths."""
    paths = {"npy": folder / "x.npy", "csv": folder / "x.csv", "parquet": folder / "x.parquet"}
    np.save(paths["npy"], x)
    np.savetxt(paths["csv"], x, delimiter=",", header=",".join(names), comments="",
               fmt="%.9g")
    pq.write_table(pa.table({n: x[:, j] for j, n in enumerate(names)}), paths["parquet"],
                   row_group_size=777)
    return paths


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(5003, 3)) * [1.0, 3.0, 0.1] + [5.0, -2.0, 0.0]).astype(np.float32)
    return x, write_all(tmp_path_factory.mktemp("stream"), x)


@pytest.mark.parametrize("kind", ["npy", "csv", "parquet"])
def test_statistics_in_one_pass_equal_the_in_memory_ones(data, kind):
    """Count, mean and covariance from chunks of 613 rows (a size that divides nothing)
    equal NumPy's on the whole array; so do those of the training split."""
    x, paths = data
    x64 = x.astype(np.float64)
    source = streaming.open_rows(paths[kind])
    stats = streaming.streaming_statistics(source, chunk_rows=613)
    assert stats.count == len(x)
    np.testing.assert_allclose(stats.mean, x64.mean(0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(stats.cov, np.cov(x64, rowvar=False), rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(stats.minimum, x64.min(0))
    held = row_uniform(np.arange(len(x)), seed=3) < 0.2
    train = streaming.streaming_statistics(source.split(0.2, seed=3), chunk_rows=1000)
    assert train.count == int((~held).sum())
    np.testing.assert_allclose(train.cov, np.cov(x64[~held], rowvar=False), rtol=1e-12,
                               atol=1e-12)


def test_the_split_and_the_sample_do_not_depend_on_the_chunking(data):
    x, paths = data
    source = streaming.open_rows(paths["npy"])
    parts = []
    for chunk_rows in (100, 4096):
        val = source.split(0.25, seed=7, part="validation")
        parts.append(np.concatenate([c for _, c in val.chunks(chunk_rows)]))
    np.testing.assert_array_equal(parts[0], parts[1])
    held = row_uniform(np.arange(len(x)), seed=7) < 0.25
    np.testing.assert_array_equal(parts[0], x[held])
    # two shards of the training rows partition them
    shards = [np.concatenate([c for _, c in source.split(0.25, 7, "train", s, 2).chunks(999)])
              for s in (0, 1)]
    assert len(shards[0]) + len(shards[1]) == int((~held).sum())
    a = streaming.streaming_statistics(source, chunk_rows=100, sample_size=50, seed=1)
    b = streaming.streaming_statistics(source, chunk_rows=3000, sample_size=50, seed=1)
    np.testing.assert_array_equal(a.sample, b.sample)
    assert a.sample.shape == (50, 3)


def test_row_uniform_is_a_stable_hash():
    """Fixed values (the split must hold across versions and machines) and a uniform spread:
    the held-out fraction of 10⁶ rows is 0.1 ± 0.0015 (5 standard deviations; a fixed
    function, so this either always holds or never)."""
    np.testing.assert_array_equal(row_uniform([0, 1, 2], seed=0),
                                  row_uniform(np.array([0, 1, 2], np.int64), seed=0))
    u = row_uniform(np.arange(10**6), seed=0)
    assert abs(float((u < 0.1).mean()) - 0.1) < 0.0015
    assert not np.array_equal(u[:100], row_uniform(np.arange(100), seed=1))


def test_training_dataset_gives_every_row_once_per_epoch_in_a_new_order(data):
    x, paths = data
    source = streaming.open_rows(paths["npy"])
    ds = streaming.training_dataset(source, batch_size=256, seed=0, chunk_rows=500,
                                    shuffle_buffer=1000)
    steps = streaming.steps_per_epoch(len(x), 256)
    epochs = []
    it = iter(ds)
    for _ in range(2):
        epochs.append(np.concatenate([next(it).numpy() for _ in range(steps)]))
    for rows in epochs:
        np.testing.assert_array_equal(np.sort(rows, axis=0), np.sort(x, axis=0))
    assert not np.array_equal(epochs[0], epochs[1])
    assert not np.array_equal(epochs[0], x)
    # an epoch number fixes its order: a resumed run reads what an uninterrupted one would
    again = streaming.training_dataset(source, batch_size=256, seed=0, chunk_rows=500,
                                       shuffle_buffer=1000, first_epoch=1)
    np.testing.assert_array_equal(np.concatenate([b.numpy() for b in again.take(steps)]),
                                  epochs[1])


@pytest.mark.parametrize("kind", ["npy", "csv", "parquet"])
def test_a_bad_value_deep_in_a_file_is_named_by_its_row(tmp_path, kind):
    x = np.ones((3000, 3), np.float32)
    x[2345, 1] = np.nan
    paths = write_all(tmp_path, x)
    source = streaming.open_rows(paths[kind])
    with pytest.raises(ValueError, match=r"NaN at row 2345, column 1"):
        streaming.streaming_statistics(source, chunk_rows=1000)


def test_csv_errors_name_the_line(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n" + "1,2\n" * 50 + "3\n")
    with pytest.raises(ValueError, match=r"line 52 (has|have) 1 columns"):
        streaming.streaming_statistics(streaming.open_rows(bad), chunk_rows=10)
    bad.write_text("1,2\n" * 5 + "1,x\n")
    with pytest.raises(ValueError, match="Could not read .*line 6"):
        streaming.streaming_statistics(streaming.open_rows(bad), chunk_rows=4)
    text = tmp_path / "t.parquet"
    pq.write_table(pa.table({"a": [1.0, 2.0], "s": ["u", "v"]}), text)
    with pytest.raises(TypeError, match="column 's' has a non-numeric type"):
        streaming.open_rows(text)
    (tmp_path / "junk.parquet").write_bytes(b"1,2\n3,4\n")
    with pytest.raises(ValueError, match="Could not read"):
        streaming.open_rows(tmp_path / "junk.parquet")


@pytest.mark.parametrize("kind", ["npy", "csv", "parquet"])
def test_dde_fit_streams_a_file_and_stores_the_in_memory_statistics(data, kind, tmp_path):
    """`dde fit --data FILE` trains through the streaming path; the model's data_mean and
    data_cov are those of the training rows (the hash split) computed in memory."""
    x, paths = data
    out = tmp_path / "run"
    assert main(["fit", "--data", str(paths[kind]), "--out", str(out), "--epochs", "1",
                 "--width", "8", "--depth", "1", "--batch-size", "512", "--seed", "4",
                 "--validation-split", "0.2", "--quiet"]) == 0
    held = row_uniform(np.arange(len(x)), seed=4) < 0.2
    train = x[~held].astype(np.float64)
    model = keras.models.load_model(out / "model.keras")
    np.testing.assert_allclose(model.data_mean.numpy(), train.mean(0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(model.data_cov.numpy(), np.cov(train, rowvar=False),
                               rtol=1e-12, atol=1e-12)
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["n_train"], metrics["n_validation"]) == (len(train), int(held.sum()))
    assert metrics["history"]["loss"] and np.isfinite(metrics["final_val_loss"])
