"""Tests of dde.datasets: the MAF-suite preprocessing on tiny files written in the original
formats, the scikit-learn and ADBench loaders, and `load_dataset` dispatch and errors.

Everything here is deterministic (fixed seeds), so no test can fail by chance.
"""
import numpy as np
import pytest

from dde.datasets import (
    DatasetNotFoundError,
    Splits,
    list_datasets,
    load_dataset,
    load_splits,
)
from dde.datasets import adbench, maf, tabular, uci

pd = pytest.importorskip("pandas")


def _std_all(x, ddof):
    return (x - x.mean(axis=0)) / x.std(axis=0, ddof=ddof)


# ----------------------------------------------------------------------- shared MAF steps
def test_maf_split_sizes_are_the_maf_ones():
    data = np.arange(25 * 2, dtype=float).reshape(25, 2)
    train, val, test = maf.maf_split(data)
    # test = last int(2.5) = 2 rows; validation = last int(0.1 * 23) = 2 of the rest.
    np.testing.assert_array_equal(test, data[23:])
    np.testing.assert_array_equal(val, data[21:23])
    np.testing.assert_array_equal(train, data[:21])
    with pytest.raises(ValueError, match="Too few rows"):
        maf.maf_split(data[:9])


def test_repeated_minimum_columns_counts_the_smallest_value_only():
    col_min6 = np.array([0.0] * 6 + [1, 2, 3, 4])           # minimum 6 times → removed
    col_min5 = np.array([0.0] * 5 + [1, 2, 3, 4, 5])        # exactly 5 → kept
    col_mode_not_min = np.array([-1.0] + [7.0] * 9)         # frequent value is not the min
    data = np.stack([col_min6, col_min5, col_mode_not_min], axis=1)
    np.testing.assert_array_equal(maf.repeated_minimum_columns(data), [0])


# ----------------------------------------------------------------------------- POWER
def _write_power(root, n=50, seed=0):
    raw = np.random.default_rng(seed).normal(size=(n, 8)) * 10 + 100
    (root / "power").mkdir(parents=True)
    np.save(root / "power" / "data.npy", raw)
    return raw


def test_power_steps_match_hand_computation(tmp_path):
    raw = _write_power(tmp_path)
    s = load_splits("POWER", tmp_path, cache_dir=tmp_path / "cache")
    assert isinstance(s, Splits) and s.name == "power"
    assert s.sizes() == {"train": 41, "validation": 4, "test": 5} and s.dim == 6
    # By hand: shuffle with RandomState(42); keep columns 0, 2, 4, 5, 6, 7; noise drawn in the
    # order voltage (0.01 U), active power (0.001 U), sub-meterings (U); none on time.
    rng = np.random.RandomState(42)
    perm = rng.permutation(50)  # same draws as rng.shuffle on the rows
    x = raw[perm][:, [0, 2, 4, 5, 6, 7]]
    volt, gap, sm = 0.01 * rng.rand(50, 1), 0.001 * rng.rand(50, 1), rng.rand(50, 3)
    x = x + np.hstack([gap, volt, sm, np.zeros((50, 1))])
    mu, sd = x[:45].mean(axis=0), x[:45].std(axis=0)
    expected = (x - mu) / sd
    np.testing.assert_allclose(s.train, expected[:41], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(s.validation, expected[41:45], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(s.test, expected[45:], rtol=1e-5, atol=1e-5)
    # The time column carries no noise: it is the shuffled raw column, standardized.
    np.testing.assert_allclose(s.test[:, 5], (raw[perm][45:, 7] - mu[5]) / sd[5], rtol=1e-5)
    assert s.train.dtype == np.float32


def test_maf_cache_is_reused_and_invalidated(tmp_path):
    _write_power(tmp_path)
    cache = tmp_path / "cache"
    first = maf.load_maf("power", tmp_path, cache_dir=cache)
    assert not first.info["from_cache"] and len(list(cache.glob("power-*.npy"))) == 3
    second = maf.load_maf("power", tmp_path, cache_dir=cache)
    assert second.info["from_cache"]
    np.testing.assert_array_equal(first.test, second.test)
    _write_power_again = np.random.default_rng(1).normal(size=(60, 8))
    np.save(tmp_path / "power" / "data.npy", _write_power_again)  # new source file
    third = maf.load_maf("power", tmp_path, cache_dir=cache)
    assert not third.info["from_cache"] and third.sizes()["test"] == 6
    assert len(list(cache.glob("power-*.npy"))) == 3  # the stale cache was removed


def test_maf_default_cache_sits_in_the_data_root(tmp_path, monkeypatch):
    monkeypatch.delenv("DDE_CACHE_DIR", raising=False)
    monkeypatch.setenv("DDE_DATA_DIR", str(tmp_path))
    _write_power(tmp_path)
    load_dataset("power", "train")
    assert len(list((tmp_path / "power" / "dde_cache").glob("power-*-train.npy"))) == 1


# ------------------------------------------------------------------------------- GAS
def test_gas_steps_match_hand_computation(tmp_path):
    rng = np.random.default_rng(3)
    n = 40
    a, b, c = rng.normal(size=(3, n))
    frame = pd.DataFrame({
        "Time": np.arange(n, dtype=float), "Meth": rng.normal(size=n),
        "Eth": rng.normal(size=n),
        "s1": a, "s2": 2 * a + 0.01 * rng.normal(size=n),    # corr(s1, s2) > 0.98
        "s3": b, "s4": -b + 0.01 * rng.normal(size=n) + 5,   # corr(s3, s4) < -0.98: kept
        "s5": c, "s6": 3 * c + 1 + 0.01 * rng.normal(size=n),  # corr(s5, s6) > 0.98
    })
    (tmp_path / "gas").mkdir()
    frame.to_pickle(tmp_path / "gas" / "ethylene_CO.pickle")
    s = load_splits("gas", tmp_path, cache_dir=tmp_path / "cache")
    # By hand: counts of corr > 0.98 per column are s1:2 s2:2 s3:1 s4:1 s5:2 s6:2 → drop s1;
    # then s5:2 s6:2 → drop s5; left s2, s3, s4, s6, standardized over all rows (ddof = 1).
    kept = frame[["s2", "s3", "s4", "s6"]].to_numpy()
    expected = _std_all(kept, ddof=1)
    assert s.sizes() == {"train": 33, "validation": 3, "test": 4}  # int(4.0), int(3.6)
    np.testing.assert_allclose(np.vstack([s.train, s.validation, s.test]), expected,
                               rtol=1e-5, atol=1e-6)


def test_gas_pruning_is_iterative():
    rng = np.random.default_rng(4)
    a = rng.normal(size=30)
    frame = pd.DataFrame({"x": a, "y": a + 1e-3 * rng.normal(size=30),
                          "z": a + 2e-3 * rng.normal(size=30), "w": rng.normal(size=30)})
    # x, y, z mutually correlated: drop x, then y; z and w remain.
    assert list(maf.prune_correlated_columns(frame).columns) == ["z", "w"]


def test_gas_without_expected_columns_is_rejected(tmp_path):
    (tmp_path / "gas").mkdir()
    pd.DataFrame({"a": np.arange(20.0)}).to_pickle(tmp_path / "gas" / "ethylene_CO.pickle")
    with pytest.raises(ValueError, match="Meth"):
        load_dataset("gas", "train", tmp_path, use_cache=False)


# --------------------------------------------------------------------------- HEPMASS
def _write_hepmass(root):
    rng = np.random.default_rng(5)
    n_sig = 30
    f0, f1 = rng.normal(size=(2, n_sig))
    f2 = np.concatenate([np.full(6, -1.5), rng.normal(size=n_sig - 6)])  # min ×6 → removed
    f3 = np.concatenate([np.full(5, -2.5), rng.normal(size=n_sig - 5)])  # min ×5 → kept
    mass = np.full(n_sig, 1000.0)                                         # constant → removed
    sig = np.column_stack([np.ones(n_sig), f0, f1, f2, f3, mass])
    bkg = np.column_stack([np.zeros(7), 100 + rng.normal(size=(7, 5))])
    train = np.vstack([sig[:10], bkg, sig[10:]])  # background rows in between
    cols = ["# label", "f0", "f1", "f2", "f3", "mass"]
    (root / "hepmass").mkdir()
    pd.DataFrame(train, columns=cols).to_csv(root / "hepmass" / "1000_train.csv", index=False)
    n_t = 8
    test = np.column_stack([np.r_[np.ones(n_t), 0, 0], rng.normal(size=(n_t + 2, 4)),
                            np.full(n_t + 2, 1000.0), rng.normal(size=n_t + 2)])
    pd.DataFrame(test, columns=cols + ["extra"]).to_csv(root / "hepmass" / "1000_test.csv",
                                                        index=False)
    return sig, test


def test_hepmass_steps_match_hand_computation(tmp_path):
    sig, test = _write_hepmass(tmp_path)
    s = load_splits("hepmass", tmp_path, cache_dir=tmp_path / "cache")
    # By hand: label-1 rows; standardize with their mean and std (ddof = 1); drop f2 (its
    # minimum occurs 6 times) and mass (constant); validation = last int(3.0) = 3 rows.
    keep = [0, 1, 3]
    x = sig[:, 1:][:, keep]
    mu, sd = x.mean(axis=0), x.std(axis=0, ddof=1)
    expected_train = (x - mu) / sd
    assert s.dim == 3 and s.sizes() == {"train": 27, "validation": 3, "test": 8}
    np.testing.assert_allclose(s.train, expected_train[:27], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(s.validation, expected_train[27:], rtol=1e-5, atol=1e-6)
    t = test[:8, 1:5]  # label-1 rows; the extra last column is dropped
    np.testing.assert_allclose(s.test, (t[:, keep] - mu) / sd, rtol=1e-5, atol=1e-6)
    assert np.isfinite(s.train).all()


# ------------------------------------------------------------------------- MINIBOONE
def test_miniboone_split_and_train_validation_normalization(tmp_path):
    data = np.random.default_rng(6).gamma(2.0, size=(30, 4))
    (tmp_path / "miniboone").mkdir()
    np.save(tmp_path / "miniboone" / "data.npy", data)
    s = load_splits("miniboone", tmp_path, use_cache=False)
    # test = last 3, validation = last int(2.7) = 2 of the rest, stats over the first 27 rows.
    mu, sd = data[:27].mean(axis=0), data[:27].std(axis=0)
    assert s.sizes() == {"train": 25, "validation": 2, "test": 3}
    np.testing.assert_allclose(s.test, (data[27:] - mu) / sd, rtol=1e-5)
    np.testing.assert_allclose(s.validation, (data[25:27] - mu) / sd, rtol=1e-5)
    assert not list(tmp_path.rglob("*dde_cache*"))  # use_cache=False writes nothing


def test_miniboone_raw_cleaning(tmp_path):
    rng = np.random.default_rng(7)
    sig = rng.normal(size=(14, 3))
    sig[:7, 1] = -4.0             # minimum repeated 7 times → feature removed
    sig[3, 0] = -999.0            # outlier row → removed
    bkg = rng.normal(size=(4, 3)) - 50
    (tmp_path / "miniboone").mkdir()
    with open(tmp_path / "miniboone" / "MiniBooNE_PID.txt", "w") as handle:
        handle.write("14 4\n")
        for row in np.vstack([sig, bkg]):
            handle.write("  " + "  ".join(f"{v:.8E}" for v in row) + "\n")
    cleaned = maf.read_miniboone_raw(tmp_path / "miniboone" / "MiniBooNE_PID.txt")
    expected = np.delete(sig, 3, axis=0)[:, [0, 2]]
    np.testing.assert_allclose(cleaned, expected, rtol=1e-7)
    # Without data.npy the loader falls back to the raw file.
    s = load_splits("miniboone", tmp_path, use_cache=False)
    assert s.dim == 2 and sum(s.sizes().values()) == 13


# --------------------------------------------------------------------------- BSDS300
def test_bsds300_reads_the_hdf5_splits(tmp_path):
    h5py = pytest.importorskip("h5py")
    rng = np.random.default_rng(8)
    parts = {k: rng.normal(size=(m, 63)).astype(np.float32)
             for k, m in (("train", 20), ("validation", 5), ("test", 7))}
    (tmp_path / "BSDS300").mkdir()
    with h5py.File(tmp_path / "BSDS300" / "BSDS300.hdf5", "w") as handle:
        for key, value in parts.items():
            handle.create_dataset(key, data=value)
    for split, value in parts.items():
        np.testing.assert_array_equal(load_dataset("bsds300", split, tmp_path), value)
    assert not list(tmp_path.rglob("*.npy"))  # not cached


# ---------------------------------------------------------------------- missing files
@pytest.mark.parametrize("name, relative", [
    ("power", "power/data.npy"), ("gas", "gas/ethylene_CO.pickle"),
    ("hepmass", "hepmass/1000_train.csv"), ("miniboone", "miniboone/data.npy"),
    ("bsds300", "BSDS300/BSDS300.hdf5")])
def test_missing_maf_file_names_path_and_archive(tmp_path, name, relative):
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset(name, "test", tmp_path)
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, ValueError)
    assert str(tmp_path / relative) in str(info.value)
    assert "zenodo.org/record/1161203" in str(info.value)


def test_missing_data_root_mentions_the_environment_variable(monkeypatch, tmp_path):
    monkeypatch.delenv("DDE_DATA_DIR", raising=False)
    with pytest.raises(DatasetNotFoundError, match="DDE_DATA_DIR"):
        load_dataset("power", "train")
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        load_dataset("power", "train", tmp_path / "nowhere")


# ------------------------------------------------------------------------ tabular steps
def test_grid_spacing_detects_quantized_columns():
    rng = np.random.default_rng(9)
    assert tabular.grid_spacing(rng.integers(0, 17, 100)) == 1.0
    assert tabular.grid_spacing(np.round(rng.normal(size=200) * 3, 1)) == pytest.approx(0.1)
    assert tabular.grid_spacing(0.25 * rng.integers(0, 9, 50) - 3) == pytest.approx(0.25)
    assert tabular.grid_spacing(rng.normal(size=100)) == 0.0              # continuous
    assert tabular.grid_spacing(np.r_[rng.normal(size=50), 0, 0, 0]) == 0.0  # atom, no grid


def test_split_indices_partition_and_are_seeded():
    tr, va, te = tabular.split_indices(101, seed=3)
    assert (len(tr), len(va), len(te)) == (61, 20, 20)
    np.testing.assert_array_equal(np.sort(np.concatenate([tr, va, te])), np.arange(101))
    np.testing.assert_array_equal(tabular.split_indices(101, seed=3)[2], te)
    assert not np.array_equal(tabular.split_indices(101, seed=4)[2], te)


def test_standardize_uses_train_statistics_and_drops_constant_columns():
    train = np.array([[1.0, 5.0, 2.0], [3.0, 5.0, 4.0]])
    other = np.array([[2.0, 7.0, 6.0]])
    tr, (ot,), info = tabular.standardize(train, other)
    np.testing.assert_array_equal(info["kept_columns"], [0, 2])
    np.testing.assert_allclose(tr, [[-1, -1], [1, 1]])
    np.testing.assert_allclose(ot, [[0.0, 3.0]])  # (2−2)/1, (6−3)/1


# --------------------------------------------------------------------- scikit-learn sets
@pytest.mark.parametrize("name, d", [("breast_cancer", 30), ("wine", 13), ("iris", 4),
                                     ("digits", 64)])
def test_uci_sets_are_standardized_on_train(name, d):
    s = load_splits(name)
    assert s.dim == d and s.train.dtype == np.float32
    n = sum(s.sizes().values())
    assert n == uci.raw_features(name).shape[0]
    assert s.sizes()["test"] == round(0.2 * n) and s.sizes()["validation"] == round(0.2 * n)
    np.testing.assert_allclose(s.train.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(s.train.std(axis=0), 1, atol=1e-4)
    np.testing.assert_array_equal(load_dataset(name, "test"), s.test)  # deterministic


def test_digits_are_dequantized_within_their_integer_cells():
    s = load_splits("digits")
    raw = uci.raw_features("digits")
    _, _, test_idx = tabular.split_indices(raw.shape[0], seed=0)
    mean, std = np.array(s.info["mean"]), np.array(s.info["std"])
    recovered = s.test.astype(np.float64) * std + mean  # back on the pixel-count scale
    offset = recovered - raw[test_idx]
    assert np.all(offset > -1e-4) and np.all(offset < 1 + 1e-4)
    assert offset.std() > 0.2  # spread over the cell (uniform: 0.29), not a constant shift
    assert s.info["dequantized"] == [1.0] * 64


# --------------------------------------------------------------------------- ADBench
def _write_adbench(folder, stem="7_toyset"):
    rng = np.random.default_rng(10)
    n = 60
    x = np.column_stack([rng.integers(0, 5, n), rng.normal(size=n), rng.normal(size=n) * 3])
    y = np.r_[np.zeros(50, int), np.ones(10, int)]
    x[50:] += 1000.0  # anomalies far away: must not enter any split
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / f"{stem}.npz", X=x, y=y)
    return x, y


def test_adbench_normal_points_dequantized_split_and_standardized(tmp_path):
    x, _ = _write_adbench(tmp_path / "adbench")
    s = load_splits("adbench:toyset", tmp_path)
    assert s.name == "adbench:toyset" and s.sizes() == {"train": 30, "validation": 10,
                                                         "test": 10}
    assert s.info["dequantized"] == [1.0, 0.0, 0.0]
    tr, va, te = tabular.split_indices(50, seed=0)
    normal = x[:50].copy()
    normal[:, 0] += np.random.default_rng([0, 1]).random((50, 3))[:, 0]  # U[0,1) on col 0
    mu, sd = normal[tr].mean(axis=0), normal[tr].std(axis=0)
    np.testing.assert_allclose(s.test, (normal[te] - mu) / sd, rtol=1e-5, atol=1e-5)
    assert np.abs(s.validation).max() < 10  # no anomaly at +1000
    # The same file by its stem, with or without prefix or index.
    for alias in ("7_toyset", "adbench:7_toyset", "toyset"):
        np.testing.assert_array_equal(load_dataset(alias, "test", tmp_path), s.test)
    assert "adbench:toyset" in list_datasets(tmp_path)


def test_adbench_env_default_and_missing_file(tmp_path, monkeypatch):
    _write_adbench(tmp_path)
    monkeypatch.setenv("DDE_DATA_DIR", str(tmp_path))
    assert load_dataset("adbench:toyset", "train").shape == (30, 3)
    with pytest.raises(DatasetNotFoundError, match="toyset") as info:
        adbench.load_adbench("adbench:shuttle")
    assert "shuttle.npz" in str(info.value) and "ADBench" in str(info.value)
    np.savez(tmp_path / "bad.npz", A=np.zeros((10, 2)))
    with pytest.raises(ValueError, match="'X' and 'y'"):
        load_dataset("adbench:bad", "train")


# ---------------------------------------------------------------------- load_dataset API
def test_load_dataset_errors(monkeypatch):
    monkeypatch.delenv("DDE_DATA_DIR", raising=False)
    with pytest.raises(ValueError, match="Unknown data set 'no_such_set'.*iris.*power"):
        load_dataset("no_such_set", "train")
    with pytest.raises(ValueError, match="Unknown split"):
        load_dataset("iris", "testing")
    with pytest.raises(TypeError, match="name must be"):
        load_dataset(3, "train")
    with pytest.raises(TypeError, match="split must be"):
        load_dataset("iris", None)
    assert load_dataset("iris", "val").shape == (30, 4)
    assert {"breast_cancer", "wine", "iris", "digits", "power", "gas", "hepmass", "miniboone",
            "bsds300"} <= set(list_datasets())


def test_toy_sets_dispatch_with_fixed_seeds():
    toy = pytest.importorskip("dde.datasets.toy")
    name = toy.NAMES[0]
    train = load_dataset(name, "train")
    assert train.dtype == np.float32 and train.ndim == 2 and train.shape[0] == 10_000
    np.testing.assert_array_equal(train, load_dataset(name, "train"))
    assert not np.array_equal(load_dataset(name, "validation")[:100], train[:100])
    assert name in list_datasets()
