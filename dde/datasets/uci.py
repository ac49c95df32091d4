"""The UCI data sets that scikit-learn ships, prepared for density estimation.

`load_uci(name)` returns a `Splits` with a fixed seeded 60/20/20 train/validation/test split,
standardized with the training statistics (see `dde.datasets.tabular`). Only the features are
used (class labels are dropped). Quantized columns are dequantized with uniform noise of the
grid spacing before splitting: all 64 pixel counts of `digits` (integers 0–16, h = 1), the
one-decimal measurements of `iris` (h = 0.1), and the integer / two-decimal columns of `wine`
and `breast_cancer`; the noise is seeded, so each call returns the same arrays.

| name          | n    | d  |
|---------------|------|----|
| breast_cancer | 569  | 30 |
| wine          | 178  | 13 |
| iris          | 150  | 4  |
| digits        | 1797 | 64 |
"""
from __future__ import annotations

from dde.datasets.tabular import Splits, prepare_splits

_LOADERS = {
    "breast_cancer": "load_breast_cancer",
    "wine": "load_wine",
    "iris": "load_iris",
    "digits": "load_digits",
}

NAMES = tuple(_LOADERS)


def raw_features(name: str):
    """The raw feature matrix [n, d] (float64) of a scikit-learn bundled data set."""
    if name not in _LOADERS:
        raise ValueError(f"Unknown scikit-learn data set {name!r}; known: {list(NAMES)}.")
    import sklearn.datasets

    return getattr(sklearn.datasets, _LOADERS[name])().data.astype("float64")


def load_uci(name: str, *, seed: int = 0, fractions=(0.6, 0.2, 0.2)) -> Splits:
    """Dequantized, split and standardized `name` (one of `NAMES`) as float32 `Splits`."""
    return prepare_splits(name, raw_features(name), seed=seed, fractions=fractions,
                          info={"source": f"sklearn.datasets.{_LOADERS.get(name)}"})
