"""Progress of long work — training, normalization, AIS, sampling, scoring, export — in one
place, on Keras' own progress bar (`keras.utils.Progbar`: units done, time per unit, ETA).

- `progress_bar(total, unit, enabled)`: a Progbar over `total` units, or None when disabled;
  callers do `if bar is not None: bar.update(done)`.
- `show_progress(quiet)`: the rule of the command line — a bar only on an interactive
  terminal and without `--quiet`; log files and pipes get none.
- `keras_verbose(quiet)`: the same rule for `Model.fit(verbose=...)`: 1 (bar) on a terminal,
  2 (one line per epoch) elsewhere, 0 with `--quiet`.
- `chunks_with_progress(chunks, total, unit, enabled)`: iterate over array chunks,
  advancing a bar by the rows of each.

A library call given `progress=True` shows the bar wherever its output goes (the caller
asked for it); `progress="auto"` shows it on a terminal only.
"""
from __future__ import annotations

import sys


def interactive(stream=None) -> bool:
    """Whether `stream` (default: standard output) is an interactive terminal."""
    stream = sys.stdout if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except (ValueError, OSError):  # a closed stream
        return False


def show_progress(quiet: bool = False) -> bool:
    """The command line's rule: a progress bar on a terminal, none with --quiet or when the
    output is a file or a pipe."""
    return not quiet and interactive()


def keras_verbose(quiet: bool = False) -> int:
    """`verbose` for `Model.fit`: 0 with --quiet, 1 (progress bar with ETA) on a terminal,
    2 (one line per epoch) elsewhere."""
    if quiet:
        return 0
    return 1 if interactive() else 2


def _enabled(enabled) -> bool:
    if enabled == "auto":
        return interactive()
    return bool(enabled)


def progress_bar(total, unit: str = "step", enabled=True):
    """A `keras.utils.Progbar` over `total` units (None: unknown), or None when `enabled`
    is false ("auto": only on an interactive terminal)."""
    if not _enabled(enabled):
        return None
    import keras

    return keras.utils.Progbar(total, unit_name=unit)


def chunks_with_progress(chunks, total, unit: str = "row", enabled=True):
    """Yield the items of `chunks` (each (start, array [k, ...]) or an array), advancing a
    progress bar over `total` rows by the rows of each."""
    bar = progress_bar(total, unit, enabled)
    done = 0
    for item in chunks:
        yield item
        rows = item[-1] if isinstance(item, tuple) else item
        done += len(rows)
        if bar is not None:
            bar.update(done)
