"""The MAF density-estimation suite — POWER, GAS, HEPMASS, MINIBOONE, BSDS300 — with the
preprocessing and splits of Papamakarios, Pavlakou & Murray, "Masked Autoregressive Flow for
Density Estimation" (NeurIPS 2017), so that test log-likelihoods are comparable with the
published ones.

Data root layout (the archive `data.tar.gz` of Zenodo record 1161203,
https://zenodo.org/record/1161203, unpacked; pass the folder holding these directories as
`data_dir` or set `DDE_DATA_DIR`):

    power/data.npy              POWER      d = 6
    gas/ethylene_CO.pickle      GAS        d = 8   (a pandas pickle)
    hepmass/1000_train.csv      HEPMASS    d = 21
    hepmass/1000_test.csv
    miniboone/data.npy          MINIBOONE  d = 43  (or the raw UCI MiniBooNE_PID.txt)
    BSDS300/BSDS300.hdf5        BSDS300    d = 63

Preprocessing (each step as in the MAF code; "split" below means: test = the last
⌊0.1·N⌋ rows, validation = the last ⌊0.1·N'⌋ of the remaining N' rows, train = the rest):

- POWER: `RandomState(42)` shuffles the rows; columns 3 (global intensity) and 1 (global
  reactive power) are deleted; uniform noise is added from the same generator, drawn in the
  order voltage `0.01·U`, global active power `0.001·U`, the three sub-meterings `U` (time gets
  none); split; standardized with train+validation mean and std (ddof = 0).
- GAS: the pandas pickle; columns Meth, Eth, Time dropped; then, while some column has a
  Pearson correlation > 0.98 with another, the first such column is dropped and the
  correlations recomputed; standardized with the mean and std (ddof = 1) of **all** rows, as
  the MAF code does; split without shuffling.
- HEPMASS: the rows with label (first column) 1 of both files; the label column dropped, and
  the test file's extra last column dropped; features whose smallest value occurs more than 5
  times in the training data are removed; standardized with the training file's mean and std
  (ddof = 1); validation = the last 10% of the training file.
- MINIBOONE: `data.npy` is already cleaned; split; standardized with train+validation
  statistics (ddof = 0). From the raw `MiniBooNE_PID.txt` the cleaning is applied first: the
  signal events (the first n_signal rows), rows with feature 0 < −100 removed, features whose
  smallest value occurs more than 5 times removed.
- BSDS300: the `train`, `validation` and `test` arrays of the HDF5 file, unchanged.

The result is cached as three float32 `.npy` files (`<name>-<key>-<split>.npy`, the key
hashes the source files' paths, sizes and modification times) in `cache_dir`, default
`DDE_CACHE_DIR` or `<data root>/<set>/dde_cache`, else `~/.cache/dde/maf` when the data root
is read-only. BSDS300 is not cached (its file already holds the splits).

Security: GAS is a pickle, and unpickling runs code. It is read only from the data root the
caller names (argument or `DDE_DATA_DIR`) — point it only at files you trust. The caches are
read with `allow_pickle=False`.

pandas is needed for GAS and HEPMASS, h5py for BSDS300 (the `benchmarks` extra).
"""
from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import numpy as np

from dde.datasets.tabular import DatasetNotFoundError, Splits, data_root

NAMES = ("power", "gas", "hepmass", "miniboone", "bsds300")
DIMS = {"power": 6, "gas": 8, "hepmass": 21, "miniboone": 43, "bsds300": 63}
ARCHIVE = ("the MAF data archive data.tar.gz on Zenodo (record 1161203, "
           "https://zenodo.org/record/1161203), unpacked into the data root")
FILES = {
    "power": ("power/data.npy",),
    "gas": ("gas/ethylene_CO.pickle",),
    "hepmass": ("hepmass/1000_train.csv", "hepmass/1000_test.csv"),
    "miniboone": ("miniboone/data.npy",),
    "bsds300": ("BSDS300/BSDS300.hdf5",),
}
MINIBOONE_RAW = "miniboone/MiniBooNE_PID.txt"
# Bump when a preprocessing step changes: invalidates every cache.
_CACHE_VERSION = 1


# --------------------------------------------------------------------------- shared steps
def split_tail(data, fraction: float = 0.1):
    """(head, tail) with tail = the last ⌊fraction·N⌋ rows (MAF's `data[-N_x:]`)."""
    n_tail = int(fraction * data.shape[0])
    if n_tail < 1:
        raise ValueError(
            f"Too few rows ({data.shape[0]}) to split off {fraction:.0%}: need at least "
            f"{int(np.ceil(1 / fraction))}.")
    return data[:-n_tail], data[-n_tail:]


def maf_split(data):
    """(train, validation, test): test = last 10% of the rows, validation = last 10% of
    the rest, no shuffling."""
    rest, test = split_tail(data)
    train, validation = split_tail(rest)
    return train, validation, test


def normalize_train_validation(train, validation, test):
    """Standardize all three with the mean and std (ddof = 0) of train ∪ validation."""
    both = np.vstack((train, validation))
    mu, s = both.mean(axis=0), both.std(axis=0)
    return (train - mu) / s, (validation - mu) / s, (test - mu) / s


def repeated_minimum_columns(data, max_count: int = 5) -> np.ndarray:
    """Indices of the columns whose smallest value occurs more than `max_count` times.

    This is the MAF "too many re-occurring values" rule: it counts the occurrences of the
    smallest value (the first key of the sorted value counts), not of the most frequent one.
    """
    data = np.asarray(data)
    counts = (data == data.min(axis=0)).sum(axis=0)
    return np.flatnonzero(counts > max_count)


# --------------------------------------------------------------------------- the five sets
def preprocess_power(raw, seed: int = 42):
    """POWER from `power/data.npy` (N × 8: global active power, global reactive power,
    voltage, global intensity, sub-meterings 1–3, time) → (train, validation, test), d = 6."""
    data = np.array(raw, dtype=np.float64)  # a copy: the shuffle is in place
    if data.ndim != 2 or data.shape[1] != 8:
        raise ValueError(f"POWER data must have 8 columns, got shape {data.shape}.")
    rng = np.random.RandomState(seed)
    rng.shuffle(data)
    n = data.shape[0]
    data = np.delete(data, 3, axis=1)
    data = np.delete(data, 1, axis=1)
    voltage_noise = 0.01 * rng.rand(n, 1)
    gap_noise = 0.001 * rng.rand(n, 1)
    sm_noise = rng.rand(n, 3)
    time_noise = np.zeros((n, 1))
    data = data + np.hstack((gap_noise, voltage_noise, sm_noise, time_noise))
    return normalize_train_validation(*maf_split(data))


def gas_correlation_counts(frame) -> np.ndarray:
    """Per column, the number of columns (itself included) with Pearson correlation > 0.98."""
    return (frame.corr() > 0.98).to_numpy().sum(axis=1)


def prune_correlated_columns(frame):
    """Drop the first column with a correlation > 0.98 to another one, recompute, repeat."""
    counts = gas_correlation_counts(frame)
    while np.any(counts > 1):
        frame = frame.drop(columns=frame.columns[np.flatnonzero(counts > 1)[0]])
        counts = gas_correlation_counts(frame)
    return frame


def preprocess_gas(frame):
    """GAS from the ethylene_CO DataFrame → (train, validation, test), d = 8 on the real file.
    """
    missing = [c for c in ("Meth", "Eth", "Time") if c not in frame.columns]
    if missing:
        raise ValueError(f"GAS data frame lacks the columns {missing}; expected the MAF "
                         f"ethylene_CO.pickle with columns Time, Meth, Eth and the sensors.")
    frame = frame.drop(columns=["Meth", "Eth", "Time"]).astype("float64")
    frame = prune_correlated_columns(frame)
    frame = (frame - frame.mean()) / frame.std()  # all rows, ddof = 1 (pandas), as in MAF
    return maf_split(frame.to_numpy())


def preprocess_hepmass(train_frame, test_frame):
    """HEPMASS from the `1000_train.csv` / `1000_test.csv` DataFrames → (train, validation,
    test), d = 21 on the real files."""
    train = train_frame[train_frame[train_frame.columns[0]] == 1]
    train = train.drop(columns=train.columns[0])
    test = test_frame[test_frame[test_frame.columns[0]] == 1]
    test = test.drop(columns=test.columns[0])
    test = test.drop(columns=test.columns[-1])  # the test file has one column too many
    if test.shape[1] != train.shape[1]:
        raise ValueError(
            f"HEPMASS: after dropping the label and the test file's last column, train has "
            f"{train.shape[1]} columns and test {test.shape[1]}; expected the same.")
    if list(test.columns) != list(train.columns):
        if set(test.columns) == set(train.columns):
            test = test[list(train.columns)]  # align by name, as pandas arithmetic does
        else:
            warnings.warn("HEPMASS: the test file's column names differ from the training "
                          "file's; aligning the columns by position.", stacklevel=2)
            test = test.set_axis(train.columns, axis=1)
    # The repeated-minimum rule is applied to the raw training values: standardization is a
    # per-column increasing affine map, so it selects the same columns as MAF's rule on the
    # standardized values, and a constant column (std 0, NaN once standardized) is removed.
    keep = np.setdiff1d(np.arange(train.shape[1]), repeated_minimum_columns(train.to_numpy()))
    train, test = train.iloc[:, keep], test.iloc[:, keep]
    mu, s = train.mean(), train.std()  # ddof = 1
    train = ((train - mu) / s).to_numpy(dtype=np.float64)
    test = ((test - mu) / s).to_numpy(dtype=np.float64)
    train, validation = split_tail(train)
    return train, validation, test


def clean_miniboone_raw(data, n_signal: int | None = None):
    """The MAF cleaning of the raw MiniBooNE table (N × 50) into `data.npy` form: the first
    `n_signal` rows (signal events; all rows if None), rows with feature 0 < −100 removed,
    then columns whose smallest value occurs more than 5 times removed."""
    data = np.asarray(data, dtype=np.float64)
    if n_signal is not None:
        data = data[:n_signal]
    data = data[~(data[:, 0] < -100)]
    keep = np.setdiff1d(np.arange(data.shape[1]), repeated_minimum_columns(data))
    return data[:, keep]


def read_miniboone_raw(path) -> np.ndarray:
    """UCI's MiniBooNE_PID.txt (first line: n_signal n_background; then N × 50) → the cleaned
    signal events (see `clean_miniboone_raw`)."""
    with open(path, encoding="utf-8") as handle:
        header = handle.readline().split()
    if len(header) != 2:
        raise ValueError(f"{path}: expected a first line 'n_signal n_background'.")
    raw = np.loadtxt(path, skiprows=1, ndmin=2)
    return clean_miniboone_raw(raw, int(header[0]))


def preprocess_miniboone(data):
    """MINIBOONE from `miniboone/data.npy` (cleaned, N × 43) → (train, validation, test)."""
    data = np.asarray(data, dtype=np.float64)
    if data.ndim != 2:
        raise ValueError(f"MINIBOONE data must be 2-D, got shape {data.shape}.")
    return normalize_train_validation(*maf_split(data))


# --------------------------------------------------------------------------- file access
def _require(root: Path, relative: str, name: str) -> Path:
    path = root / relative
    if not path.is_file():
        raise DatasetNotFoundError(
            f"{name.upper()} file not found: expected {path}. It comes from {ARCHIVE}.")
    return path


def _source_paths(name: str, root: Path) -> list[Path]:
    if name == "miniboone" and not (root / FILES[name][0]).is_file() \
            and (root / MINIBOONE_RAW).is_file():
        return [root / MINIBOONE_RAW]
    return [_require(root, rel, name) for rel in FILES[name]]


def _compute(name: str, paths: list[Path]):
    if name == "power":
        return preprocess_power(np.load(paths[0], allow_pickle=False))
    if name == "gas":
        import pandas as pd

        # Unpickling runs code: this path lies in the data root the caller chose.
        try:
            frame = pd.read_pickle(paths[0])
        except Exception as err:  # pandas raises many types for unreadable pickles
            raise ValueError(f"Could not read the GAS pickle {paths[0]}: {err}") from err
        return preprocess_gas(frame)
    if name == "hepmass":
        import pandas as pd

        return preprocess_hepmass(pd.read_csv(paths[0], index_col=False),
                                  pd.read_csv(paths[1], index_col=False))
    if name == "miniboone":
        if paths[0].name == Path(MINIBOONE_RAW).name:
            return preprocess_miniboone(read_miniboone_raw(paths[0]))
        return preprocess_miniboone(np.load(paths[0], allow_pickle=False))
    if name == "bsds300":
        import h5py

        with h5py.File(paths[0], "r") as handle:
            missing = [k for k in ("train", "validation", "test") if k not in handle]
            if missing:
                raise ValueError(f"{paths[0]} lacks the datasets {missing}.")
            return tuple(np.asarray(handle[k][:]) for k in ("train", "validation", "test"))
    raise ValueError(f"Unknown MAF data set {name!r}; known: {list(NAMES)}.")


def _cache_key(name: str, paths: list[Path]) -> str:
    digest = hashlib.sha256(f"{name}|v{_CACHE_VERSION}".encode())
    for path in paths:
        st = path.stat()
        digest.update(f"|{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def _cache_dirs(name: str, root: Path, cache_dir) -> list[Path]:
    if cache_dir is not None:
        return [Path(cache_dir).expanduser()]
    if os.environ.get("DDE_CACHE_DIR"):
        return [Path(os.environ["DDE_CACHE_DIR"]).expanduser()]
    sub = FILES[name][0].split("/")[0]
    return [root / sub / "dde_cache", Path.home() / ".cache" / "dde" / "maf"]


def _read_cache(folder: Path, stem: str):
    files = [folder / f"{stem}-{s}.npy" for s in ("train", "validation", "test")]
    if not all(f.is_file() for f in files):
        return None
    try:
        arrays = tuple(np.load(f, allow_pickle=False) for f in files)
    except (OSError, ValueError):
        return None
    if len({a.shape[1:] for a in arrays}) != 1 or arrays[0].ndim != 2:
        return None
    return arrays


def _write_cache(folder: Path, stem: str, arrays) -> bool:
    from dde._io import save_npy

    try:
        for split, array in zip(("train", "validation", "test"), arrays):
            save_npy(folder / f"{stem}-{split}.npy", array)
    except OSError:
        return False
    name = stem.split("-")[0]
    for old in folder.glob(f"{name}-*.npy"):  # caches of older source files
        if not old.name.startswith(stem + "-"):
            old.unlink(missing_ok=True)
    return True


def load_maf(name: str, data_dir=None, *, cache_dir=None, use_cache: bool = True) -> Splits:
    """One MAF data set (name in `NAMES`, case-insensitive) as float32 `Splits`.

    data_dir: the data root (default `DDE_DATA_DIR`). cache_dir: where the preprocessed
    `.npy` files go (see the module docstring); use_cache=False recomputes and writes nothing.
    Raises DatasetNotFoundError (a FileNotFoundError and ValueError) naming the expected file
    and the archive when a file is missing.
    """
    key = name.lower()
    if key not in NAMES:
        raise ValueError(f"Unknown MAF data set {name!r}; known: {list(NAMES)}.")
    root = data_root(data_dir, what=f"the MAF data set {key.upper()} (from {ARCHIVE})")
    paths = _source_paths(key, root)
    arrays = None
    stem = f"{key}-{_cache_key(key, paths)}"
    folders = _cache_dirs(key, root, cache_dir) if use_cache and key != "bsds300" else []
    for folder in folders:
        arrays = _read_cache(folder, stem)
        if arrays is not None:
            break
    cached = arrays is not None
    if arrays is None:
        arrays = tuple(np.asarray(a, dtype=np.float32) for a in _compute(key, paths))
        written = any(_write_cache(folder, stem, arrays) for folder in folders)
        if folders and not written:
            warnings.warn(f"Could not write the {key.upper()} cache to any of "
                          f"{[str(f) for f in folders]}; it will be recomputed next time.",
                          stacklevel=2)
    train, validation, test = (np.ascontiguousarray(a, dtype=np.float32) for a in arrays)
    return Splits(key, train, validation, test,
                  {"source": [str(p) for p in paths], "preprocessing": "MAF (Papamakarios "
                   "et al. 2017)", "from_cache": cached})
