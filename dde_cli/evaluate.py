"""`dde evaluate`: average log-likelihood of data under a normalized model.

    dde normalize --model m.keras --data train.npy      # first: store log Ẑ in the model
    dde evaluate --model m.keras --data test.npy --json test_all.json

Prints the average log-likelihood `mean_j f(x_j) − log Ẑ` as mean ± 2·SE, where SE combines
the spread of f over the data with the standard error of log Ẑ. A model that was never
normalized is an error (exit status 2), and so is a data row whose log-density is not finite
(the message names the rows); nothing is written then.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate", help="average log-likelihood (± 2·SE) of data under a normalized model",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, metavar="FILE",
                   help="a .keras model normalized by `dde normalize`")
    p.add_argument("--data", required=True, metavar="FILE",
                   help="data to evaluate (.npy, .npz or .csv)")
    p.add_argument("--noise-std", type=float, default=None,
                   help="NoiseConditionalDDE only: the noise level to evaluate f(·, σ) at; "
                        "it must be the one its log Ẑ was estimated at (default: that one)")
    p.add_argument("--batch-size", type=int, default=8192,
                   help="points evaluated at once (default: 8192)")
    p.add_argument("--json", default=None, metavar="FILE",
                   help="also write the result as JSON to this file")
    p.set_defaults(run=run)


def run(args) -> int:
    from dde import _io
    from dde._validation import check_positive
    from dde.partition import average_log_likelihood
    from dde_cli._common import check_paths, load_model, read_data

    check_positive(args.batch_size, "--batch-size", integer=True)
    check_paths({"--model": args.model, "--data": args.data}, files={"--json": args.json})
    model = load_model(args.model)
    if not model.is_normalized:
        raise ValueError(f"The model {args.model} is not normalized: run `dde normalize "
                         f"--model {args.model} --data TRAIN` first.")
    x = read_data(args.data, model=model)
    result = average_log_likelihood(model, x, noise_std=args.noise_std,
                                    batch_size=args.batch_size)
    print(f"average log-likelihood: {result} over n = {result.n:,} points "
          f"(log Z = {result.log_z:.4f} ± {2 * result.log_z_stderr:.4f}, "
          f"ESS {result.log_z_ess:,.1f}, Pareto k̂ {result.log_z_pareto_k:.2f})")
    if args.json:
        record = {"model": str(args.model), "data": str(args.data),
                  "noise_std": float(model.log_z_noise_std.numpy()), **result.as_dict()}
        # Strict JSON: undefined values (e.g. the SE of a single point) become null.
        record = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                  for k, v in record.items()}
        _io.write_json(Path(args.json), record)
        print(f"wrote {args.json}")
    return 0
