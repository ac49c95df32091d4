"""Shared preprocessing for tabular density benchmarks: seeded splits, dequantization of
quantized columns, standardization on the training split, and the `Splits` container.

Pipeline used by the scikit-learn and ADBench loaders (`prepare_splits`):

1. **Dequantize.** A column whose distinct values lie on a regular grid (integer-valued
   columns: spacing h = 1; other columns: the smallest gap h between distinct values when every
   gap is a whole multiple of it) and that has repeated values gets uniform noise
   `x ← x + u·h, u ~ U[0, 1)`. A density of a quantized variable is otherwise undefined (point
   masses), and continuous models could reach arbitrarily high likelihood on the atoms.
   Columns that are continuous but have a few atoms (for instance values clipped at a bound)
   are left alone; `Splits.info["dequantized"]` lists the spacing used per column (0 = none).
2. **Split** with a fixed seeded permutation into train / validation / test (default 60/20/20).
3. **Standardize** with the training split's mean and standard deviation (ddof = 0); columns
   constant on the training split are dropped (their density is degenerate).

The noise and the permutation come from `numpy.random.default_rng` seeded by `seed`, so a
data set always yields the same three arrays.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SPLITS = ("train", "validation", "test")


class DatasetNotFoundError(FileNotFoundError, ValueError):
    """A data file (or the data directory) is missing; the message names the expected path
    and where the data can be downloaded. Both a FileNotFoundError and a ValueError."""


def data_root(data_dir=None, *, what: str = "this data set") -> Path:
    """`data_dir`, else the environment variable DDE_DATA_DIR, as a Path (must exist)."""
    if data_dir is None:
        data_dir = os.environ.get("DDE_DATA_DIR")
        if not data_dir:
            raise DatasetNotFoundError(
                f"No data directory for {what}: pass data_dir=... (CLI: --data-dir) or set "
                "the environment variable DDE_DATA_DIR.")
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise DatasetNotFoundError(f"Data directory {root} does not exist (needed for {what}).")
    return root


@dataclass(frozen=True, eq=False)
class Splits:
    """The three splits of a data set, float32 arrays of shape [n_split, d].

    `info` records the preprocessing (source, kept columns, dequantization widths,
    standardization statistics) so that a run can be reproduced and reported.
    """

    name: str
    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray
    info: dict = field(default_factory=dict)

    @property
    def dim(self) -> int:
        """Number of features d."""
        return int(self.train.shape[1])

    def __getitem__(self, split: str) -> np.ndarray:
        return getattr(self, check_split(split))

    def sizes(self) -> dict:
        """{"train": n_train, "validation": n_validation, "test": n_test}."""
        return {s: int(getattr(self, s).shape[0]) for s in SPLITS}


def check_split(split) -> str:
    """Return `split` if it is one of "train", "validation", "test" (also "val", "valid")."""
    if not isinstance(split, str):
        raise TypeError(f"split must be a string, one of {list(SPLITS)}; got {split!r}.")
    key = split.strip().lower()
    key = {"val": "validation", "valid": "validation", "validate": "validation"}.get(key, key)
    if key not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; expected one of {list(SPLITS)}.")
    return key


def split_indices(n: int, fractions=(0.6, 0.2, 0.2), seed: int = 0):
    """Seeded random partition of range(n) into (train, validation, test) index arrays.

    fractions: (train, validation, test) proportions summing to 1; validation and test sizes
    are `round(fraction · n)`, at least 1 each, and train takes the rest.
    """
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) != 3 or min(fractions) <= 0 or abs(sum(fractions) - 1) > 1e-9:
        raise ValueError(
            f"fractions must be three positive numbers summing to 1, got {fractions}.")
    n_val = max(1, int(round(fractions[1] * n)))
    n_test = max(1, int(round(fractions[2] * n)))
    if n - n_val - n_test < 2:
        raise ValueError(f"Too few samples ({n}) for a train/validation/test split.")
    perm = np.random.default_rng([seed, 0]).permutation(n)
    return perm[: n - n_val - n_test], perm[n - n_val - n_test: n - n_test], perm[n - n_test:]


def grid_spacing(column, *, rtol: float = 1e-3, max_cells: float = 1e6) -> float:
    """The spacing h of the regular grid a column's values lie on, or 0.0 if none.

    Integer-valued columns (constant ones included) give h = 1. Otherwise h is the smallest
    gap between sorted distinct values, accepted when every gap is a whole multiple of h
    (within `rtol`·h) and the range spans at most `max_cells` grid cells. Non-integer columns
    without repeated values give 0 (nothing to dequantize), as do constant non-integer ones.
    """
    col = np.asarray(column, dtype=np.float64)
    values = np.unique(col)
    if np.all(values == np.round(values)):
        return 1.0
    if values.size == col.size or values.size < 2:
        return 0.0
    gaps = np.diff(values)
    h = float(gaps.min())
    if h <= 0 or (values[-1] - values[0]) / h > max_cells:
        return 0.0
    ratios = gaps / h
    if np.all(np.abs(ratios - np.round(ratios)) <= rtol):
        return h
    return 0.0


def dequantize(x, seed: int = 0, *, widths=None):
    """Add uniform noise `u·h_j, u ~ U[0, 1)` to every column j with grid spacing h_j > 0.

    x: [n, d] array. widths: per-column spacings (default `grid_spacing` of each column).
    Returns (x_dequantized float64 [n, d], widths float64 [d]).
    """
    x = np.array(x, dtype=np.float64)
    if widths is None:
        widths = np.array([grid_spacing(c) for c in x.T], dtype=np.float64)
    widths = np.asarray(widths, dtype=np.float64)
    if widths.shape != (x.shape[1],):
        raise ValueError(f"widths must have shape ({x.shape[1]},), got {widths.shape}.")
    if np.any(widths > 0):
        noise = np.random.default_rng([seed, 1]).random(x.shape)
        x = x + noise * widths
    return x, widths


def standardize(train, *others):
    """Standardize with the training split's statistics, dropping train-constant columns.

    Returns (train_std, [others_std...], info) with info = {"mean", "std", "kept_columns"}
    (mean/std over the kept columns, ddof = 0). `(x − mean) / std` for every array.
    """
    train = np.asarray(train, dtype=np.float64)
    mean = train.mean(axis=0)
    std = train.std(axis=0)
    keep = np.flatnonzero(std > 1e-12 * np.maximum(1.0, np.abs(mean)))
    if keep.size == 0:
        raise ValueError("Every column is constant on the training split.")
    mean, std = mean[keep], std[keep]
    out = [(np.asarray(a, dtype=np.float64)[:, keep] - mean) / std for a in (train,) + others]
    return out[0], out[1:], {"mean": mean, "std": std, "kept_columns": keep}


def prepare_splits(name: str, x, *, seed: int = 0, fractions=(0.6, 0.2, 0.2),
                   dequantize_columns: bool = True, info: dict | None = None) -> Splits:
    """Dequantize (optional), split and standardize `x` [n, d] into a `Splits` (float32).

    The steps and their order are described in the module docstring.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"Data set {name!r}: expected a non-empty 2-D array, got {x.shape}.")
    if not np.isfinite(x).all():
        raise ValueError(f"Data set {name!r} contains NaN or infinite values.")
    widths = np.zeros(x.shape[1])
    if dequantize_columns:
        x, widths = dequantize(x, seed)
    i_tr, i_va, i_te = split_indices(x.shape[0], fractions, seed)
    train, (val, test), stats = standardize(x[i_tr], x[i_va], x[i_te])
    meta = dict(info or {})
    meta.update(seed=seed, fractions=list(fractions), dequantized=widths.tolist(),
                kept_columns=stats["kept_columns"].tolist(), mean=stats["mean"].tolist(),
                std=stats["std"].tolist())
    return Splits(name, train.astype(np.float32), val.astype(np.float32),
                  test.astype(np.float32), meta)
