"""Atomic file output and data-file reading shared by the CLI, the detector and benchmarks.

Every writer goes to a temporary file in the destination's directory and is moved into place
with `os.replace`, so an interrupted run never leaves a half-written model or result.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np


@contextlib.contextmanager
def atomic_path(path, suffix: str | None = None):
    """Yield a temporary path beside `path`; on success move it to `path`, else delete it.

    The temporary file keeps `path`'s suffix (Keras insists on `.keras`, NumPy on `.npy`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or path.suffix,
                               dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path, text: str) -> None:
    """Write `text` to `path` atomically."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")


def write_json(path, obj) -> None:
    """Write `obj` as indented JSON to `path` atomically."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def save_npy(path, array) -> None:
    """Save a NumPy array to `path` (.npy) atomically."""
    with atomic_path(path) as tmp:
        np.save(tmp, np.asarray(array))


def save_figure(fig, path, **kwargs) -> None:
    """Save a matplotlib figure to `path` atomically (format from the suffix)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", **kwargs)


def save_keras(model, path) -> None:
    """`model.save(path)` through a temporary `.keras` file, moved into place on success."""
    with atomic_path(path, suffix=".keras") as tmp:
        model.save(tmp)


def read_array(path) -> np.ndarray:
    """Read a 2-D numeric array from `.npy`, `.npz` (array `X`, `x`, `data` or the only one)
    or `.csv` / `.txt` (comma-separated, an optional header row of names is skipped).

    Raises ValueError naming the file when it is missing, unreadable or of an unknown type.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"Data file not found: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            return np.load(path, allow_pickle=False)
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                for key in ("X", "x", "data"):
                    if key in archive.files:
                        return archive[key]
                if len(archive.files) == 1:
                    return archive[archive.files[0]]
                raise ValueError(
                    f"{path} holds arrays {archive.files}; expected one named 'X', 'x' or "
                    "'data', or a single array.")
        if suffix in (".csv", ".txt"):
            return _read_csv(path)
    except ValueError as err:
        if str(path) in str(err):
            raise
        raise ValueError(f"Could not read {path}: {err}") from err
    except (OSError, EOFError) as err:
        raise ValueError(f"Could not read {path}: {err}") from err
    raise ValueError(f"Unsupported data file type '{suffix}' for {path}; use .npy, .npz or .csv.")


def _read_csv(path: Path) -> np.ndarray:
    with open(path, encoding="utf-8") as handle:
        first = handle.readline()
        if not first.strip() and not handle.read().strip():
            raise ValueError(f"{path} is empty.")
    cells = [c.strip() for c in first.split(",")]
    skip = 0
    try:
        [float(c) for c in cells if c]
    except ValueError:
        skip = 1  # a header row of column names
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "input contained no data"
        data = np.loadtxt(path, delimiter=",", skiprows=skip, ndmin=2, dtype=np.float64)
    if data.size == 0:
        raise ValueError(f"{path} holds no data rows.")
    return data


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")
