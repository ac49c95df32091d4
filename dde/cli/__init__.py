"""The `dde` command line: `dde SUBCOMMAND --help` for each.

Each sub-command lives in its own module of this package with two functions,
`add_parser(subparsers)` (registers its arguments) and `run(args)` (does the work, returns an
exit status). Bad input raises ValueError/TypeError; `main` prints the message and exits with
status 2. Outputs are written atomically (see `dde._io`).
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

# Sub-command modules, in the order `dde --help` lists them.
COMMANDS = ["fit", "sample", "normalize", "evaluate", "score"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dde",
        description="Denoising Density Estimators: train learned log-densities, sample, "
                    "normalize, evaluate likelihoods and score anomalies.")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        module = importlib.import_module(f"dde.cli.{name}")
        module.add_parser(sub)
    return parser


def main(argv=None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except (ValueError, TypeError, FileNotFoundError, RuntimeError) as err:
        print(f"dde {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dde {args.command}: interrupted; no partial output was written.",
              file=sys.stderr)
        return 130


def _version() -> str:
    from dde import __version__
    return f"dde {__version__}"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
