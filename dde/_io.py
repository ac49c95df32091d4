"""Atomic file output and data-file reading shared by the CLI, the detector and benchmarks.

Every writer goes to a temporary file in the destination's directory and is moved into place
with `os.replace`, so an interrupted run never leaves a half-written model or result:

- `atomic_path` / `atomic_files`: one or several files, all moved into place together once the
  block that writes them succeeds (none on failure);
- `replaced_folder`: a whole output folder, built beside the target and swapped in, so that it
  always holds the files of one run.

Outputs get the permissions a normal write would give (an existing file keeps its mode, a new
one gets 0o666 minus the umask; `mkstemp` alone would leave 0600). Temporaries are named
`.dde-tmp-<pid>-…`; those of processes that no longer run (a killed save) are deleted on the
next write into the same folder. An OSError without a file name gets the target's.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import warnings
import zipfile
from pathlib import Path

import numpy as np

#: Name prefix of every temporary file or folder written here.
TEMP_PREFIX = ".dde-tmp-"


def remove_orphans(folder) -> None:
    """Delete temporaries (`TEMP_PREFIX`) in `folder` left by processes that no longer run."""
    with contextlib.suppress(OSError), os.scandir(folder) as entries:
        for entry in entries:
            pid = entry.name[len(TEMP_PREFIX):].split("-", 1)[0]
            if not (entry.name.startswith(TEMP_PREFIX) and pid.isdigit()) \
                    or _process_alive(int(pid)):
                continue
            with contextlib.suppress(OSError):
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def normal_mode(path, directory: bool = False) -> int:
    """The permission bits a normal write of `path` gives: its own if it exists, else
    0o666 (folders 0o777) without the bits of the process umask."""
    with contextlib.suppress(OSError):
        return os.stat(path).st_mode & 0o7777
    return (0o777 if directory else 0o666) & ~_umask()


def _umask() -> int:
    """The process umask: from /proc (Linux), else by setting and restoring it."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status") as status:
        for line in status:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def _name_error(err: OSError, path) -> OSError:
    if err.filename is None:
        err.filename = os.fspath(path)
    return err


def _make_folder(folder: Path) -> list[Path]:
    """Create `folder` and its missing parents; returns those created, outermost first."""
    missing = []
    while not os.path.lexists(folder):
        missing.insert(0, folder)
        folder = folder.parent
    for k, item in enumerate(missing):
        try:
            item.mkdir()
        except OSError as err:
            _remove_folders(missing[:k])
            raise _name_error(err, item)
    return missing


def _remove_folders(created) -> None:
    """Remove the folders `_make_folder` created (outermost first), where still empty."""
    for folder in reversed(list(created)):
        with contextlib.suppress(OSError):
            folder.rmdir()


@contextlib.contextmanager
def atomic_files(paths, suffixes=None):
    """Yield one temporary path (str) per target in `paths`, beside it; when the block
    succeeds, move them all into place in the given order (a target that replaces one of the
    inputs goes last), else delete them, so that the targets are all replaced or none.

    Targets are resolved through symbolic links (the link's file is replaced, as by a normal
    write); missing folders are created (and removed again on failure). A temporary keeps its
    target's suffix unless `suffixes` says otherwise (Keras insists on `.keras`, NumPy on
    `.npy`).
    """
    targets = [Path(os.path.realpath(p)) for p in paths]
    suffixes = list(suffixes or [None] * len(targets))
    created, temps = [], []
    try:
        for target, suffix in zip(targets, suffixes):
            created += _make_folder(target.parent)
            remove_orphans(target.parent)
            try:
                fd, tmp = tempfile.mkstemp(
                    prefix=f"{TEMP_PREFIX}{os.getpid()}-{target.name}-",
                    suffix=suffix or target.suffix, dir=target.parent)
            except OSError as err:
                raise _name_error(err, target)
            os.close(fd)
            temps.append(tmp)
        yield list(temps)
        for target, tmp in zip(targets, temps):
            try:
                os.chmod(tmp, normal_mode(target))
                os.replace(tmp, target)
            except OSError as err:
                raise _name_error(err, target)
    except BaseException as err:
        for tmp in temps:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        _remove_folders(created)
        if isinstance(err, OSError) and err.filename in temps:  # name the target instead
            err.filename = os.fspath(targets[temps.index(err.filename)])
        raise


@contextlib.contextmanager
def atomic_path(path, suffix: str | None = None):
    """Yield a temporary path beside `path`; on success move it to `path`, else delete it
    (`atomic_files` for one file)."""
    with atomic_files([path], [suffix]) as (tmp,):
        yield tmp


@contextlib.contextmanager
def replaced_folder(path):
    """Yield a new empty folder (Path) beside `path`; when the block succeeds it replaces
    `path` as a whole — a folder already there, from an earlier run, is removed — else it is
    deleted. So `path` never mixes the files of two runs, and holds a complete set of outputs
    but for the instant between two renames. The new folder gets the mode of the one it
    replaces (new: 0o777 minus the umask)."""
    target = Path(os.path.realpath(path))
    created = _make_folder(target.parent)
    remove_orphans(target.parent)
    try:
        try:
            tmp = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-{target.name}-",
                                        dir=target.parent))
        except OSError as err:
            raise _name_error(err, target)
    except BaseException:
        _remove_folders(created)
        raise
    try:
        yield tmp
        os.chmod(tmp, normal_mode(target, directory=True))
        _swap_in(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_folders(created)
        raise


def _swap_in(new: Path, target: Path) -> None:
    """Rename `new` to `target`, moving a folder at `target` aside first and deleting it."""
    old = None
    try:
        if os.path.lexists(target):
            old = new.with_name(new.name + "-old")
            os.rename(target, old)
        os.rename(new, target)
    except OSError as err:
        if old is not None and old.exists() and not os.path.lexists(target):
            os.rename(old, target)  # put the earlier run back
        raise _name_error(err, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)  # what is left is an orphan, deleted next time


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


def check_keras_archive(path, what=None) -> None:
    """Raise ValueError naming `path` (or `what`) unless it is a zip archive, as every
    `.keras` file is: Keras itself reports a truncated file as "File not found"."""
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{what or path} is not a valid .keras model file (a .keras file is "
                         "a zip archive; this one is truncated or corrupted).")


def existing_data_file(path) -> Path:
    """`path` as a Path; ValueError naming it when it is a folder or does not exist."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder, not a data file.")
    if not path.is_file():
        raise ValueError(f"Data file not found: {path}")
    return path


def read_array(path) -> np.ndarray:
    """Read a 2-D numeric array from `.npy`, `.npz` (array `X`, `x`, `data` or the only one)
    or `.csv` / `.txt` (comma-separated, an optional header row of names is skipped).

    Raises ValueError naming the file when it is missing, unreadable or of an unknown type.
    """
    path = existing_data_file(path)
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
    except (OSError, EOFError, zipfile.BadZipFile) as err:  # truncated or not an archive
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
