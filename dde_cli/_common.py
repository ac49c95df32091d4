"""What the sub-commands share: checks of seeds and output paths before any work, and the
loading of models and data files.

The checks need only the standard library, so they run before the library (and TensorFlow)
is imported; `load_model` and `read_data` import it when called. Every problem is a
ValueError whose message names the option and the path.
"""
from __future__ import annotations

import os
from pathlib import Path

#: Seeds are int32-sized non-negative integers, as everywhere in the library.
MAX_SEED = 2**31 - 1
#: The files of a folder `dde fit` wrote (density model or detector), besides its plots.
RUN_MARKERS = ("metrics.json",)
RUN_MODELS = ("model.keras", "detector.zip")
#: `dde._io.TEMP_PREFIX` (not imported: that would import TensorFlow; a test keeps them equal).
TEMP_PREFIX = ".dde-tmp-"


class RegistryChoices:
    """The names of one of the library's registries as argparse `choices`, read only when
    argparse needs them (parsing that option, or formatting its sub-command's help): building
    the parser stays free of TensorFlow, and a newly registered entry is a valid choice.

    `RegistryChoices("dde.sampling", "SAMPLERS")`; a `keys` callable may filter the names.
    """

    def __init__(self, module: str, attribute: str, keys=None):
        self.module, self.attribute, self.keys = module, attribute, keys

    def names(self) -> tuple:
        import importlib

        registry = getattr(importlib.import_module(self.module), self.attribute)
        names = tuple(registry)
        return tuple(n for n in names if self.keys(n)) if self.keys else names

    def __contains__(self, value) -> bool:
        return value in self.names()

    def __iter__(self):
        return iter(self.names())


def check_positive_option(value, flag: str) -> None:
    """Refuse an integer option that is not positive (None: not given)."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                              or value < 1):
        raise ValueError(f"{flag} must be a positive integer, got {value}.")


def command_parser(subparsers, name: str, doc: str, help: str):
    """The parser of sub-command `name`, its module docstring `doc` as its description."""
    import argparse

    return subparsers.add_parser(name, help=help, description=doc,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)


def add_files(parser, **helps) -> None:
    """Required path options, one per keyword: add_files(p, model="...", out="...") adds
    --model FILE and --out FILE (an option named `out_dir` becomes --out DIR)."""
    for name, text in helps.items():
        flag, _, kind = name.partition("_")
        parser.add_argument(f"--{flag}", required=True, metavar=(kind or "file").upper(),
                            help=text)


def add_streaming_options(parser, verb: str, noise_std: bool = True) -> None:
    """--noise-std (NoiseConditionalDDE's σ), --chunk-rows and --quiet of the commands that
    stream rows through a model (`verb`: what they do to a chunk)."""
    if noise_std:
        parser.add_argument("--noise-std", type=float, default=None,
                            help="NoiseConditionalDDE only: the noise level σ of f(·, σ) "
                                 "(default: sigma_min)")
    parser.add_argument("--chunk-rows", type=int, default=1 << 16, metavar="N",
                        help=f"rows read, {verb} and written at a time (default: 65536): "
                             "memory stays bounded whatever the file's size")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def check_seed(seed, flag: str = "--seed") -> None:
    """Refuse a seed outside [0, 2³¹ − 1] (None: a fresh one is drawn)."""
    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise ValueError(f"{flag} must be an integer in [0, {MAX_SEED}], got {seed}.")


def check_paths(inputs: dict, files: dict | None = None, folders: dict | None = None,
                replaces: dict | None = None) -> None:
    """Refuse, before any work, output paths that cannot be written or would destroy data.

    inputs, files, folders: {option: path or None} of the files a command reads, the files it
    writes and the folders it writes as a whole (replaced by `dde._io.replaced_folder`).
    replaces: {output option: input option} that may name the same file, updated in place
    (`dde normalize` without --out). Paths are compared after resolving symbolic links and
    `.`/`..` (and as the same inode, for hard links). Refused: an output that is an input or
    another output, a folder where a file is expected (or a file where a folder is), a path
    under a file, a place the process may not write, and a folder that is not empty, not from
    an earlier run, or holds an input or the current directory.
    """
    replaces = replaces or {}
    given_inputs = {flag: Path(p) for flag, p in inputs.items() if p is not None}
    outputs = {flag: Path(p) for flag, p in {**(files or {}), **(folders or {})}.items()
               if p is not None}
    for flag, path in outputs.items():
        for in_flag, source in given_inputs.items():
            if replaces.get(flag) != in_flag and _same(path, source):
                raise ValueError(f"{flag} {path} would overwrite the input file {in_flag} "
                                 f"{source}; choose another output path.")
    names = list(outputs)
    for i, flag in enumerate(names):
        for other in names[i + 1:]:
            if _same(outputs[flag], outputs[other]):
                raise ValueError(f"{flag} {outputs[flag]} and {other} {outputs[other]} are "
                                 "the same file; give each output its own path.")
    for flag, path in (files or {}).items():
        if path is not None:
            _check_output_file(flag, Path(path))
    for flag, path in (folders or {}).items():
        if path is not None:
            _check_output_folder(flag, Path(path), given_inputs)


def check_work_folder(flag: str, path, others: dict) -> None:
    """A folder a command keeps working state in across runs (checkpoints): it may exist
    and hold files, but must not be a file, one of the `others` ({option: path}) or hold
    one, and must be writable (or creatable)."""
    if path is None:
        return
    path = Path(path)
    real = Path(os.path.realpath(path))
    if real.exists() and not real.is_dir():
        raise ValueError(f"{flag} {path} exists and is not a folder.")
    for other_flag, other in others.items():
        if other is None:
            continue
        other_real = Path(os.path.realpath(other))
        if _inside(other_real, real) or _inside(real, other_real):
            raise ValueError(f"{flag} {path} and {other_flag} {other} overlap; give the "
                             "checkpoints a folder of their own.")
    _check_writable_folder(flag, path, real if real.is_dir() else real.parent)


#: The file that marks a folder `dde export` wrote (a SavedModel).
EXPORT_MARKER = "saved_model.pb"


def check_export_folder(flag: str, path, inputs: dict) -> None:
    """A SavedModel folder written as a whole: refused where `check_paths` refuses an output
    folder, except that the earlier contents it may replace are those of an export."""
    given = {k: Path(v) for k, v in inputs.items() if v is not None}
    _check_output_folder(flag, Path(path), given, owned=is_export_folder,
                         owner="a SavedModel")


def is_export_folder(folder) -> bool:
    """Whether `folder` is empty or holds a SavedModel (an earlier `dde export`)."""
    names = [e.name for e in os.scandir(folder) if not e.name.startswith(TEMP_PREFIX)]
    return not names or EXPORT_MARKER in names


def _same(a: Path, b: Path) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _check_output_file(flag: str, path: Path) -> None:
    real = Path(os.path.realpath(path))
    if real.is_dir():
        raise ValueError(f"{flag} {path} is a folder; give a file name.")
    if real.exists():
        if not real.is_file():
            raise ValueError(f"{flag} {path} exists and is not a regular file.")
        if not os.access(real, os.W_OK):
            raise ValueError(f"{flag} {path} is read-only.")
    _check_writable_folder(flag, path, real.parent)


def _check_output_folder(flag: str, path: Path, inputs: dict, owned=None,
                         owner: str = "those of a dde run") -> None:
    real = Path(os.path.realpath(path))
    if real.exists() and not real.is_dir():
        raise ValueError(f"{flag} {path} exists and is not a folder.")
    # The folder is built beside the target and renamed: its parent must be writable.
    _check_writable_folder(flag, path, real.parent)
    for in_flag, source in inputs.items():
        if _inside(Path(os.path.realpath(source)), real):
            raise ValueError(f"{flag} {path} holds the input {in_flag} {source}, and is "
                             "replaced as a whole; choose another output folder.")
    if _inside(Path(os.path.realpath(os.getcwd())), real):
        raise ValueError(f"{flag} {path} holds the current directory, and is replaced as a "
                         "whole; choose another output folder.")
    if real.is_dir() and not os.access(real, os.W_OK | os.X_OK):  # (a folder's rename too)
        raise ValueError(f"{flag} {path}: cannot replace this folder (permission denied or "
                         "read-only file system).")
    if real.is_dir() and not (owned or is_run_folder)(real):
        raise ValueError(f"{flag} {path} is a folder that holds other files than {owner}, "
                         "and is replaced as a whole; choose a new or empty folder.")


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _check_writable_folder(flag: str, path: Path, folder: Path) -> None:
    """`folder` (to hold `path`) must be a folder the process may write, or creatable."""
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{flag} {path} lies under {existing}, which is a file, not a "
                         "folder.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path}: cannot write in {existing} (permission denied or "
                         "read-only file system).")


def is_run_folder(folder) -> bool:
    """Whether `folder` is empty or holds the outputs of an earlier `dde fit` (its metrics
    and model or detector, no sub-folders): such a folder may be replaced by a new run."""
    entries = [e for e in os.scandir(folder) if not e.name.startswith(TEMP_PREFIX)]
    if not entries:
        return True
    names = {e.name for e in entries}
    return (not any(e.is_dir(follow_symlinks=False) for e in entries)
            and all(n in names for n in RUN_MARKERS) and any(n in names for n in RUN_MODELS))


# ----------------------------------------------------------------- loading (imports dde)
def load_model(path, flag: str = "--model"):
    """Load a saved dde EnergyModel from a .keras file; ValueError naming the file if it is
    missing, truncated, corrupted or holds something else."""
    import keras

    import dde  # noqa: F401  (registers the dde classes)
    from dde._io import check_keras_archive
    from dde.models import EnergyModel
    from dde_cli import one_line

    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{flag} {path} is a folder, not a .keras model file.")
    if not path.is_file():
        raise ValueError(f"Model file not found: {path}")
    if path.suffix != ".keras":
        raise ValueError(f"Expected a .keras model file, got {path}.")
    check_keras_archive(path)
    try:
        model = keras.saving.load_model(path)
    except Exception as err:  # corrupt archives, unknown classes, ...
        raise ValueError(f"Could not load the model {path}: {one_line(err)}") from err
    if not isinstance(model, EnergyModel):
        raise ValueError(f"{path} holds a {type(model).__name__}, not a dde energy model.")
    return model


def read_data(path, what: str = "data", model=None, dtype="float32",
              allow_1d_as_column: bool = True):
    """The data file as a validated array [n, d] of `dtype` (by default a 1-D file is one
    column), with the model's feature count when a built model is given."""
    from dde._io import read_array
    from dde._validation import check_data

    n_features = model.input_dim if model is not None and model.built else None
    return check_data(read_array(path), name=f"{what} file {path}", n_features=n_features,
                      owner="the model", dtype=dtype, allow_1d_as_column=allow_1d_as_column)


# --------------------------------------------------------------- streamed rows (imports dde)
#: Rows read, scored and written at a time by `dde score` and `dde density`.
CHUNK_ROWS = 1 << 16


def stream_rows(path, what: str = "data", n_features=None, dtype="float32",
                allow_1d_as_column: bool = True, chunk_rows: int = CHUNK_ROWS,
                quiet: bool = False):
    """(source, iterator of validated chunks (start, rows)) of a data file read in chunks
    (`dde.streaming.open_rows`), with a progress bar on a terminal unless quiet."""
    from dde.progress import chunks_with_progress, show_progress
    from dde.streaming import open_rows

    source = open_rows(path, allow_1d_as_column=allow_1d_as_column)
    source.name = f"{what} file {path}"
    chunks = source.chunks(chunk_rows, dtype=dtype, n_features=n_features)
    return source, chunks_with_progress(chunks, source.num_rows, "row", show_progress(quiet))


def write_csv_stream(out, header: str, chunks, format_rows) -> int:
    """Write `header` and, for each chunk (start, rows), the text `format_rows(start, rows)`
    to `out` through one temporary, moved into place only when every chunk succeeded (so an
    error in the last chunk leaves no output); returns the rows written."""
    from dde._io import atomic_path

    n = 0
    with atomic_path(out) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        handle.write(header + "\n")
        for start, rows in chunks:
            handle.write(format_rows(start, rows))
            n += len(rows)
    return n
