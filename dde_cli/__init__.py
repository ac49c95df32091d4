"""The `dde` command line: `dde SUBCOMMAND --help` for each.

Each sub-command lives in its own module of this package with two functions,
`add_parser(subparsers)` (registers its arguments) and `run(args)` (does the work, returns an
exit status). This package is separate from the `dde` library, and its parser modules import
neither TensorFlow nor `dde`, so that `dde --help` and `dde --version` answer at once; each
`run` imports the library when it runs. Bad input raises ValueError/TypeError (file-system
errors OSError); `main` prints a one-line message naming the problem and returns status 2.
Outputs are checked before any work (`dde_cli._common`) and written together at the end,
atomically (`dde._io`).
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import importlib.util
import os
import re
import sys
import warnings

# Sub-command modules, in the order `dde --help` lists them.
COMMANDS = ["fit", "sample", "normalize", "evaluate", "score", "density", "export"]

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line (with a pointer to --help) and
    exit with status 2, like every other error of the command."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="dde",
        description="Denoising Density Estimators: train learned log-densities, sample, "
                    "normalize, evaluate likelihoods and score anomalies.")
    parser.add_argument("--version", action="version", version=f"dde {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        module = importlib.import_module(f"dde_cli.{name}")
        module.add_parser(sub)
    return parser


def main(argv=None) -> int:
    """Run `dde ARGV` (default: sys.argv[1:]); returns the exit status."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv  # the command as given (`dde fit --workers` starts it again per worker)
    prefix = f"dde {args.command}"
    try:
        with _one_line_warnings(prefix):
            return int(args.run(args) or 0)
    except OSError as err:
        print(f"{prefix}: error: {describe_os_error(err)}", file=sys.stderr)
        return 2
    except (ValueError, TypeError, RuntimeError) as err:
        print(f"{prefix}: error: {one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prefix}: interrupted; no partial output was written.", file=sys.stderr)
        return 130


def one_line(message) -> str:
    """`message` as a single line without terminal colour codes."""
    return " ".join(_ANSI.sub("", str(message)).split())


def describe_os_error(err: OSError) -> str:
    """An OSError as 'reason: path' (both paths for a rename), on one line."""
    paths = [p for p in (err.filename, err.filename2) if p is not None]
    if err.strerror and paths:
        return one_line(f"{err.strerror}: " + " → ".join(map(os.fsdecode, paths)))
    return one_line(err)


@contextlib.contextmanager
def _one_line_warnings(prefix: str):
    """Show Python warnings as 'dde CMD: warning: ...' lines (no source-code excerpt)."""
    def show(message, category, filename, lineno, file=None, line=None):
        print(f"{prefix}: warning: {one_line(message)}", file=file or sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield


def _version() -> str:
    """The library's `__version__`, read from dde/__init__.py without importing it (that
    would import TensorFlow)."""
    spec = importlib.util.find_spec("dde")
    if spec is None or spec.origin is None:
        return "unknown"
    with open(spec.origin, encoding="utf-8") as handle:
        for node in ast.parse(handle.read()).body:
            if (isinstance(node, ast.Assign) and len(node.targets) == 1
                    and getattr(node.targets[0], "id", None) == "__version__"):
                return str(ast.literal_eval(node.value))
    return "unknown"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
