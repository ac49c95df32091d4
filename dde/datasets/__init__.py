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

import collections

import numpy as np

from dde._registry import Registry
from dde.datasets import adbench, maf, toy, uci
from dde.datasets.tabular import SPLITS, DatasetNotFoundError, Splits, check_split

TOY_SIZES = {"train": 10_000, "validation": 2_000, "test": 2_000}
TOY_SEEDS = {"train": 0, "validation": 1, "test": 2}

__all__ = [
    "FAMILIES",
    "DatasetFamily",
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


def _toy_sample(name: str, split: str) -> np.ndarray:
    return toy.sample(name, TOY_SIZES[split], TOY_SEEDS[split])


def _load_toy(name, data_dir=None, **options) -> Splits:
    if options:
        raise TypeError(f"Toy data set {name!r} takes no options, got {sorted(options)}.")
    return Splits(name, *(_toy_sample(name, s) for s in SPLITS),
                  info={"source": "dde.datasets.toy", "sizes": dict(TOY_SIZES),
                        "seeds": dict(TOY_SEEDS)})


def _adbench_owns(name, data_dir=None) -> bool:
    if name.lower().startswith(adbench.PREFIX):
        return True
    try:  # a file stem such as "22_magic.gamma"
        adbench.find_file(name, data_dir)
    except DatasetNotFoundError:
        return False
    return True


DatasetFamily = collections.namedtuple("DatasetFamily", ["names", "owns", "load"])
DatasetFamily.__doc__ = """A family of data sets: names(data_dir) → the names it offers
there; owns(name, data_dir) → whether `name` is one of its sets; load(name, data_dir,
**options) → `Splits`."""

#: Data-set families, asked in this order which one owns a name.
FAMILIES = Registry("data-set family")
FAMILIES.register("uci", DatasetFamily(lambda data_dir: uci.NAMES,
                                       lambda name, data_dir: name.lower() in uci.NAMES,
                                       lambda name, data_dir, **o: uci.load_uci(name.lower(),
                                                                                **o)))
FAMILIES.register("maf", DatasetFamily(lambda data_dir: maf.NAMES,
                                       lambda name, data_dir: name.lower() in maf.NAMES,
                                       lambda name, data_dir, **o: maf.load_maf(
                                           name.lower(), data_dir, **o)))
FAMILIES.register("toy", DatasetFamily(lambda data_dir: toy.NAMES,
                                       lambda name, data_dir: name in toy.NAMES, _load_toy))
FAMILIES.register("adbench", DatasetFamily(
    lambda data_dir: tuple(f"{adbench.PREFIX}{k}" for k in sorted(adbench.available(data_dir))),
    _adbench_owns, adbench.load_adbench))


def list_datasets(data_dir=None) -> list:
    """Every name `load_dataset` accepts here: the names of each family in `FAMILIES` (the
    scikit-learn and MAF sets, the toy sets, and `adbench:<name>` for each ADBench file in
    `data_dir`, default `DDE_DATA_DIR`)."""
    return [n for family in FAMILIES.values() for n in family.names(data_dir)]


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
    for family in FAMILIES.values():
        if family.owns(key, data_dir):
            return family.load(key, data_dir, **options)
    known = ", ".join(list_datasets(data_dir))
    raise ValueError(f"Unknown data set {name!r}. Known names: {known} (ADBench files: "
                     "'adbench:<name>' or the file stem, found in data_dir or DDE_DATA_DIR).")


def load_dataset(name: str, split: str, data_dir=None, **options) -> np.ndarray:
    """One split ("train", "validation" or "test") of data set `name`: float32 [n, d].

    See `load_splits` for the names, `data_dir` and the options.
    """
    split = check_split(split)
    return load_splits(name, data_dir, **options)[split]
