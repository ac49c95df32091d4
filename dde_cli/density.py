"""`dde density`: the log-density and score of every row of a file under a saved model.

    dde density --model run/model.keras --data rows.parquet --out density.csv
    dde density --model ncdde.keras --data rows.npy --noise-std 0.2 --out d.csv --no-score

Writes a CSV with one row per input row: `log_density` (the un-normalized f(x)), `log_prob`
(f(x) − log Ẑ, when the model is normalized at that σ) and `score_0` … `score_{d-1}` (∇ₓf,
unless --no-score). Data: .npy (memory-mapped), .csv, .parquet or .npz, read, evaluated and
written in chunks of --chunk-rows rows, so files larger than memory work in bounded memory;
the output appears only once every row is done. A NoiseConditionalDDE is evaluated at
--noise-std (default sigma_min). Bad input — also a row whose result is not finite — stops
the run with exit status 2, and nothing is written.
"""
from __future__ import annotations

import time
from pathlib import Path

#: Rows evaluated at once (the last block of a chunk is zero-padded to this size).
BLOCK = 2048


def add_parser(subparsers) -> None:
    from dde_cli._common import add_files, add_streaming_options, command_parser

    p = command_parser(subparsers, "density", __doc__,
                       help="log-density (and score) of every row of a file under a model")
    add_files(p, model="a saved .keras model",
              data="rows: .npy, .csv, .parquet or .npz (array X)", out="output .csv file")
    p.add_argument("--no-score", action="store_true", help="only the log-densities")
    add_streaming_options(p, "evaluated")
    p.set_defaults(run=run)


def run(args) -> int:
    from dde_cli._common import check_paths, check_positive_option

    check_positive_option(args.chunk_rows, "--chunk-rows")
    out = Path(args.out)
    if out.suffix.lower() != ".csv":
        raise ValueError(f"--out must be a .csv file, got {out}.")
    check_paths({"--model": args.model, "--data": args.data}, files={"--out": out})

    import numpy as np
    import tensorflow as tf

    from dde._validation import check_finite_results
    from dde.export import density_functions
    from dde_cli._common import load_model, stream_rows, write_csv_stream

    model = load_model(args.model)
    if not model.built:
        raise ValueError(f"The model {args.model} was never built (trained).")
    d = model.input_dim
    functions = density_functions(model, args.noise_std)  # σ checked here
    names = ["log_density"] + (["log_prob"] if "log_prob" in functions else [])
    spec = [tf.TensorSpec([None, d], tf.float32)]
    f = tf.function(functions["log_density"], input_signature=spec)
    lp = tf.function(functions["log_prob"], input_signature=spec) if "log_prob" in names \
        else None
    score = None if args.no_score else tf.function(functions["score"], input_signature=spec)
    header = names + ([] if score is None else [f"score_{j}" for j in range(d)])
    source, chunks = stream_rows(args.data, n_features=d, dtype="float32",
                                 chunk_rows=args.chunk_rows, quiet=args.quiet)
    total = [source.num_rows]

    def evaluate(x):
        xt = tf.constant(x)
        cols = [f(xt)["log_density"].numpy().astype(np.float64)[:, None]]
        if lp is not None:
            cols.append(lp(xt)["log_prob"].numpy()[:, None])
        if score is not None:
            cols.append(score(xt)["score"].numpy().astype(np.float64))
        return np.concatenate(cols, axis=1)

    fmt = ["%.9g"] + (["%.17g"] if lp is not None else []) + \
        (["%.9g"] * d if score is not None else [])

    def rows(start, x):
        # In zero-padded blocks of one shape, so that a row's result does not depend on the
        # rows evaluated with it (float32 products round differently per batch shape).
        blocks = []
        for i in range(0, len(x), BLOCK):
            part = x[i:i + BLOCK]
            padded = np.concatenate([part, np.zeros((BLOCK - len(part), d), part.dtype)])
            blocks.append(evaluate(padded)[:len(part)])
        table = check_finite_results(np.concatenate(blocks),
                                     "log-density or score", row_offset=start,
                                     total=total[0])
        line = ",".join(fmt) + "\n"
        return "".join(line % tuple(r) for r in table)

    begin = time.perf_counter()
    n = write_csv_stream(out, ",".join(header), chunks, rows)
    seconds = time.perf_counter() - begin
    print(f"dde density: {n} rows ({', '.join(header[:2 + (lp is not None)])}"
          f"{', …' if len(header) > 2 + (lp is not None) else ''}), "
          f"{n / max(seconds, 1e-9):,.0f} rows/s; wrote {out}")
    return 0
