"""Data sets: toy 2-D and 1-D sets with exact smoothed densities (`dde.datasets.toy`),
the UCI sets scikit-learn ships, the MAF density suite and ADBench-format files.

`load_dataset(name, split)` returns one split as a float32 array [n, d];
`load_splits(name)` returns all three at once (a `Splits`). Names:

- scikit-learn's UCI sets `breast_cancer`, `wine`, `iris`, `digits` (`dde.datasets.uci`):
  dequantized, seeded 60/20/20 split, standardized on train;
- the MAF suite `power`, `gas`, `hepmass`, `miniboone`, `bsds300` (`dde.datasets.maf`): the
  MAF paper's preprocessing and splits, read from a data root (`data_dir` or `DDE_DATA_DIR`);
- ADBench `.npz` files, `adbench:<name>` or the file stem such as `22_magic.gamma`
  (`dde.datasets.adbench`): the normal points, dequantized, split 60/20/20, standardized;
- the toy sets of `dde.datasets.toy` (on their own scale, not standardized): each split is a
  fresh sample with a fixed seed (train 0, validation 1, test 2) and the sizes `TOY_SIZES`.

Quantized columns (integer-valued or on another regular grid) of the UCI and ADBench sets get
uniform noise of the grid width before standardization, so that densities exist.
"""
from __future__ import annotations


import numpy as np

from dde.datasets import adbench, maf, toy, uci
from dde.datasets.tabular import SPLITS, DatasetNotFoundError, Splits, check_split

TOY_SIZES = {"train": 10_000, "validation": 2_000, "test": 2_000}
TOY_SEEDS = {"train": 0, "validation": 1, "test": 2}

__all__ = [
    "DatasetNotFoundError",
    "SPLITS",
    "Splits",
    "TOY_SIZES",
    "adbench",
    "maf",
    "toy",
    "uci",
    "list_datasets",
    "load_dataset",
    "load_splits",
]


def _toy_names() -> tuple:
    return toy.NAMES


def list_datasets(data_dir=None) -> list:
    """Every name `load_dataset` accepts here: the scikit-learn and MAF sets, the toy sets,
    and `adbench:<name>` for each ADBench file in `data_dir` (default `DDE_DATA_DIR`)."""
    names = list(uci.NAMES) + list(maf.NAMES) + list(_toy_names())
    names += [f"{adbench.PREFIX}{key}" for key in sorted(adbench.available(data_dir))]
    return names


def _toy_sample(name: str, split: str) -> np.ndarray:
    return toy.sample(name, TOY_SIZES[split], TOY_SEEDS[split])


def load_splits(name: str, data_dir=None, **options) -> Splits:
    """All three splits of data set `name` as a `Splits` (float32 arrays [n, d]).

    data_dir: folder of the MAF data root / ADBench files (default `DDE_DATA_DIR`).
    options: passed to the family's loader (`seed`, `fractions` for the UCI and ADBench sets;
    `cache_dir`, `use_cache` for the MAF suite).
    Raises ValueError listing the known names for an unknown `name`, and
    DatasetNotFoundError (also a ValueError) when a needed file is missing.
    """
    if not isinstance(name, str) or not name.strip():
        raise TypeError(f"name must be a non-empty string, got {name!r}.")
    key = name.strip()
    low = key.lower()
    if low.startswith(adbench.PREFIX):
        return adbench.load_adbench(key, data_dir, **options)
    if low in uci.NAMES:
        return uci.load_uci(low, **options)
    if low in maf.NAMES:
        return maf.load_maf(low, data_dir, **options)
    if key in _toy_names():
        if options:
            raise TypeError(f"Toy data set {key!r} takes no options, got {sorted(options)}.")
        return Splits(key, *(_toy_sample(key, s) for s in SPLITS),
                      info={"source": "dde.datasets.toy", "sizes": dict(TOY_SIZES),
                            "seeds": dict(TOY_SEEDS)})
    try:
        return adbench.load_adbench(key, data_dir, **options)
    except DatasetNotFoundError:
        pass
    known = ", ".join(list_datasets(data_dir))
    raise ValueError(f"Unknown data set {name!r}. Known names: {known} (ADBench files: "
                     "'adbench:<name>' or the file stem, found in data_dir or DDE_DATA_DIR).")


def load_dataset(name: str, split: str, data_dir=None, **options) -> np.ndarray:
    """One split ("train", "validation" or "test") of data set `name`: float32 [n, d].

    See `load_splits` for the names, `data_dir` and the options.
    """
    split = check_split(split)
    return load_splits(name, data_dir, **options)[split]
