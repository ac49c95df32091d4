"""Input validation shared by every entry point (models, samplers, estimators, CLI).

Messages follow scikit-learn's so that users who know `check_array` recognise them:
NaN/inf, 1-D input ("Reshape your data"), empty input, wrong feature count, non-numeric dtype.
"""
from __future__ import annotations

import numbers

import numpy as np


def check_data(x, *, name: str = "X", n_features: int | None = None, owner: str = "the model",
               dtype=np.float32, allow_1d_as_column: bool = False,
               row_offset: int = 0) -> np.ndarray:
    """Validate a data matrix and return it as a C-contiguous NumPy array of `dtype`.

    x: array-like of shape [n, d] with n ≥ 1, d ≥ 1, finite numeric entries.
    n_features: the feature count the caller expects (None: any).
    row_offset: the index of x's first row in a larger whole (a chunk of a file read in
    pieces), so that messages name the rows of the whole.
    Raises TypeError for non-numeric data, ValueError for everything else, naming the problem.
    """
    if hasattr(x, "numpy") and callable(x.numpy):  # eager tf.Tensor / keras tensor
        x = x.numpy()
    try:
        arr = np.asarray(x)
    except Exception as err:  # ragged nested lists and the like
        raise ValueError(f"{name} could not be converted to an array: {err}") from err
    if arr.dtype == object:
        try:
            arr = arr.astype(np.float64)
        except (TypeError, ValueError) as err:
            raise TypeError(
                f"{name} has a non-numeric dtype (object); expected real numbers.") from err
    if arr.dtype.kind not in "biuf":
        raise TypeError(
            f"{name} has a non-numeric dtype ({arr.dtype}); expected real numbers "
            "(integers or floats).")
    if arr.ndim == 1 and allow_1d_as_column:
        arr = arr[:, None]
    if arr.ndim == 0:
        raise ValueError(f"Expected 2D array for {name}, got a scalar instead.")
    if arr.ndim == 1:
        raise ValueError(
            f"Expected 2D array for {name}, got 1D array instead:\narray={_preview(arr)}.\n"
            "Reshape your data either using array.reshape(-1, 1) if your data has a single "
            "feature or array.reshape(1, -1) if it contains a single sample.")
    if arr.ndim != 2:
        raise ValueError(
            f"Found array with dim {arr.ndim} for {name} (shape={arr.shape}); expected a 2D "
            "array of shape [n_samples, n_features].")
    if arr.shape[0] == 0:
        raise ValueError(
            f"Found array with 0 sample(s) (shape={arr.shape}) in {name} while a minimum of 1 "
            "is required.")
    if arr.shape[1] == 0:
        raise ValueError(
            f"Found array with 0 feature(s) (shape={arr.shape}) in {name} while a minimum of 1 "
            "is required.")
    with np.errstate(over="ignore"):
        cast = np.ascontiguousarray(arr, dtype=dtype)
    if cast.dtype.kind == "f" and not np.isfinite(cast).all():
        nan = np.isnan(cast)
        bad = nan if nan.any() else ~np.isfinite(cast)
        i, j = np.argwhere(bad)[0]
        what = "NaN" if nan.any() else (
            f"infinity or a value too large for {np.dtype(dtype)} ({float(arr[i, j]):g})")
        raise ValueError(f"Input {name} contains {what} at {_rows(bad.any(1), offset=row_offset)}, "
                         f"column {j}.")
    arr = cast
    if n_features is not None and arr.shape[1] != n_features:
        raise ValueError(
            f"{name} has {arr.shape[1]} features, but {owner} is expecting {n_features} "
            "features as input.")
    return arr


def check_positive(value, name: str, *, integer: bool = False, allow_zero: bool = False):
    """Return `value` if it is a finite positive (or non-negative) number, else raise."""
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind):
        raise TypeError(
            f"{name} must be {'an integer' if integer else 'a real number'}, got {value!r}.")
    if not np.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = "≥ 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be finite and {bound}, got {value!r}.")
    return value


def _rows(mask, limit: int = 5, offset: int = 0) -> str:
    """'row 3' or 'rows 3, 8, … (12 rows)' for a boolean mask over rows [n] (numbered from
    `offset`)."""
    idx = np.flatnonzero(mask) + offset
    if len(idx) == 1:
        return f"row {idx[0]}"
    shown = ", ".join(map(str, idx[:limit]))
    return f"rows {shown}, … ({len(idx)} rows)" if len(idx) > limit else f"rows {shown}"


def check_finite_results(values, what: str, row_offset: int = 0,
                         total: int | None = None) -> np.ndarray:
    """Return `values` (one result per row: [n] or [n, k]) if all are finite, else raise a
    ValueError naming the rows whose `what` is not finite: such results are never stored.
    row_offset / total: for a chunk of a larger whole, the index of its first row and the
    size of the whole (named in the message)."""
    values = np.asarray(values)
    bad = ~np.isfinite(values.reshape(len(values), -1)).all(1)
    if bad.any():
        of = len(values) if total is None else total
        raise ValueError(f"The {what} is not finite at {_rows(bad, offset=row_offset)} of "
                         f"{of} (values far outside the training data's range?).")
    return values


def _preview(arr: np.ndarray) -> str:
    text = np.array2string(arr[:6], threshold=6)
    return text if arr.size <= 6 else text[:-1] + " ...]"


def random_seed() -> int:
    """A fresh non-negative int32 seed from OS entropy."""
    return int(np.random.SeedSequence().entropy % (2**31 - 1))


def sanitize_seed(seed, salt: int = 0) -> np.ndarray:
    """The one way into stateless randomness for the whole package: a seed [2] (int64).

    seed: an int s, giving [salt, s] (the salt keeps the streams of different consumers —
    samplers, estimators — apart when they are given the same int), a pair of ints (array
    or tensor; used as it is), or None (fresh OS entropy). Raises TypeError for a
    non-integer seed and ValueError for integers of another shape than [2].
    Like `tfp.random.sanitize_seed`, but deterministic for an int and NumPy-valued.
    """
    if seed is None:
        seed = random_seed()
    if isinstance(seed, bool):
        raise TypeError(f"seed must be an integer or a pair of integers, got {seed!r}.")
    if isinstance(seed, numbers.Integral):
        return np.array([int(salt), int(seed)], dtype=np.int64)
    arr = np.asarray(seed.numpy() if hasattr(seed, "numpy") else seed)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"seed must be an integer or a pair of integers, got {seed!r}.")
    if arr.shape != (2,):
        raise ValueError(f"seed must be an integer or a pair of integers, got shape "
                         f"{arr.shape}.")
    return arr.astype(np.int64)
