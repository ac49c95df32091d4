"""ADBench-format `.npz` files (arrays `X` [n, d] and `y` [n], 0 = normal, 1 = anomaly) as
density-estimation data: the normal points only.

`load_adbench(name, data_dir)` keeps the rows with `y == 0`, dequantizes quantized columns
(integer-valued columns get `U[0, 1)` noise; columns on another regular grid get noise of the
grid spacing) **before** standardization, splits them 60/20/20 with a fixed seed and
standardizes with the training statistics (see `dde.datasets.tabular`). The arrays are read
with `allow_pickle=False`.

Names: `"adbench:magic.gamma"`, the file stem `"22_magic.gamma"`, or `"adbench:22_magic.gamma"`;
the files are looked for in `data_dir` and `data_dir/adbench` (default data directory: the
environment variable `DDE_DATA_DIR`). ADBench's classical sets (annthyroid, magic.gamma,
mammography, pendigits, satellite, shuttle, …) come from the ADBench repository
(github.com/Minqi824/ADBench, folder adbench/datasets/Classical).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from dde.datasets.tabular import DatasetNotFoundError, Splits, data_root, prepare_splits

PREFIX = "adbench:"
_ARCHIVE = "github.com/Minqi824/ADBench (adbench/datasets/Classical)"


def _stem_key(stem: str) -> str:
    """'22_magic.gamma' → 'magic.gamma' (ADBench prefixes file names with an index)."""
    return re.sub(r"^\d+_", "", stem).lower()


def available(data_dir=None) -> dict:
    """{short name: path} of the ADBench `.npz` files in `data_dir` or `data_dir/adbench`
    (empty when no data directory is configured)."""
    try:
        root = data_root(data_dir)
    except DatasetNotFoundError:
        return {}
    found = {}
    for folder in (root, root / "adbench"):
        if folder.is_dir():
            for path in sorted(folder.glob("*.npz")):
                found.setdefault(_stem_key(path.stem), path)
    return found


def find_file(name: str, data_dir=None) -> Path:
    """The `.npz` file for `name` ("adbench:magic.gamma", "22_magic.gamma", "magic.gamma")."""
    key = name[len(PREFIX):] if name.lower().startswith(PREFIX) else name
    key = key[:-4] if key.lower().endswith(".npz") else key
    root = data_root(data_dir, what=f"ADBench data set {name!r}")
    files = available(root)
    for folder in (root, root / "adbench"):  # an exact file stem first
        path = folder / f"{key}.npz"
        if path.is_file():
            return path
    if _stem_key(key) in files:
        return files[_stem_key(key)]
    raise DatasetNotFoundError(
        f"ADBench data set {name!r} not found: expected {root / (key + '.npz')} or "
        f"{root / 'adbench' / (key + '.npz')} (a file '<index>_{_stem_key(key)}.npz' also "
        f"matches). Available here: {sorted(files) or 'none'}. The files come from {_ARCHIVE}.")


def read_normal_points(path) -> np.ndarray:
    """The rows of `X` with `y == 0` from an ADBench `.npz` file, as float64 [n, d]."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            if "X" not in archive.files or "y" not in archive.files:
                raise ValueError(
                    f"{path} holds arrays {archive.files}; an ADBench file needs 'X' and 'y'.")
            x, y = archive["X"], archive["y"]
    except (OSError, EOFError) as err:
        raise ValueError(f"Could not read {path}: {err}") from err
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"{path}: X must be [n, d] and y [n]; got {x.shape} and {y.shape}.")
    normal = x[np.asarray(y) == 0].astype(np.float64)
    if normal.shape[0] < 5:
        raise ValueError(f"{path} has only {normal.shape[0]} normal points (y == 0).")
    return normal


def load_adbench(name: str, data_dir=None, *, seed: int = 0,
                 fractions=(0.6, 0.2, 0.2)) -> Splits:
    """Normal points of an ADBench file, dequantized, split and standardized (float32)."""
    path = find_file(name, data_dir)
    x = read_normal_points(path)
    return prepare_splits(f"{PREFIX}{_stem_key(path.stem)}", x, seed=seed, fractions=fractions,
                          info={"source": str(path), "n_normal": int(x.shape[0])})
