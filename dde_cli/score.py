"""`dde score` (anomaly scores of new rows with a saved `DDEAnomalyDetector`), and the
detector training behind `dde fit --detector` (`add_detector_arguments`, `fit_detector`).
"""
from __future__ import annotations

import argparse
import math
import time
import warnings
from pathlib import Path

DETECTOR_FILE = "detector.zip"

DESCRIPTION = """\
Anomaly scores of new rows with a saved anomaly detector.

    dde fit --detector --data train.csv --out runs/det     # writes runs/det/detector.zip
    dde score --model runs/det/detector.zip --data new.csv --out scores.csv

Writes a CSV with one row per input row and the columns `score` (log-density in the original
units, higher = more normal), `decision` (score − the detector's threshold) and `label`
(+1 inlier, −1 outlier); with --explain also one column `explain_<feature>` per feature,
its contribution to the row's outlier score (they sum to the score of the detector's most
normal training row minus the row's score; see DDEAnomalyDetector.explain). Data: .csv (an
optional header row of names), .npy (memory-mapped), .parquet or .npz (array X), read, scored
and written in chunks, so files larger than memory work; the output appears only once every
row is scored.
A file whose number of columns (or header names) differs from the training data's is refused,
and so is a row the detector cannot score (e.g. a value too large for its float32 model). On
any error the exit status is 2 and nothing is written.
"""


def add_parser(subparsers) -> None:
    from dde_cli._common import add_streaming_options

    p = subparsers.add_parser(
        "score", help="anomaly scores and ±1 labels of new rows with a saved detector",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, metavar="FILE",
                   help=f"a saved detector (the {DETECTOR_FILE} written by `dde fit "
                        "--detector` or DDEAnomalyDetector.save)")
    p.add_argument("--data", required=True, metavar="FILE",
                   help="rows to score: .csv, .npy or .npz (array X)")
    p.add_argument("--out", required=True, metavar="FILE",
                   help="output CSV (columns score, decision, label)")
    p.add_argument("--explain", action="store_true",
                   help="also write each feature's contribution to the outlier score "
                        "(columns explain_<feature>; integrated gradients from the most "
                        "normal training row)")
    add_streaming_options(p, "scored", noise_std=False)
    p.set_defaults(run=run)


def run(args) -> int:
    from dde_cli._common import check_paths, check_positive_option

    model_path, data_path, out = Path(args.model), Path(args.data), Path(args.out)
    check_positive_option(args.chunk_rows, "--chunk-rows")
    check_paths({"--model": model_path, "--data": data_path}, files={"--out": out})

    import numpy as np

    from dde.anomaly import DDEAnomalyDetector
    from dde_cli._common import stream_rows, write_csv_stream

    detector = DDEAnomalyDetector.load(model_path)
    # float64, as the detector standardizes before its float32 model (which it checks)
    source, chunks = stream_rows(data_path, dtype="float64", allow_1d_as_column=False,
                                 chunk_rows=args.chunk_rows, quiet=args.quiet)
    header = source.feature_names
    names = getattr(detector, "feature_names_in_", None)
    if header is not None and names is not None and len(header) == len(names) \
            and list(header) != [str(n) for n in names]:
        raise ValueError(f"{data_path}: the column names {header} differ from the detector's "
                         f"training features {list(map(str, names))}.")
    flagged = 0
    columns = "score,decision,label"
    if args.explain:
        if not hasattr(detector, "baseline_"):
            raise ValueError(f"{model_path} was saved by dde 0.1 without a baseline row: "
                             "refit it to use --explain.")
        names = names if names is not None else header if header is not None else [
            f"x{j}" for j in range(detector.n_features_in_)]
        columns += "".join(f",explain_{_csv_name(str(n))}" for n in names)

    def check_width(d):
        if d is not None and d != detector.n_features_in_:
            raise ValueError(f"{data_path} has {d} columns, but the detector was trained on "
                             f"{detector.n_features_in_} features.")

    check_width(source.num_features)

    def rows(start, x):
        nonlocal flagged
        check_width(x.shape[1])
        try:
            with warnings.catch_warnings():  # plain arrays carry no feature names
                warnings.filterwarnings("ignore", message=".*does not have valid feature names")
                scores = detector.score_samples(x)
        except ValueError as err:
            raise ValueError(f"{data_path} (rows {start}–{start + len(x) - 1}): {err}") \
                from err
        decision = scores - detector.offset_
        labels = np.where(decision < 0, -1, 1)
        flagged += int((labels == -1).sum())
        parts = detector.explain(x) if args.explain else np.empty((len(x), 0))
        return "".join(f"{s:.17g},{d:.17g},{lab:d}" + "".join(f",{c:.9g}" for c in row)
                       + "\n" for s, d, lab, row in zip(scores, decision, labels, parts))

    start = time.perf_counter()
    n = write_csv_stream(out, columns, chunks, rows)
    seconds = time.perf_counter() - start
    print(f"dde score: {n} rows, {flagged} flagged as outliers (threshold "
          f"{detector.offset_:.6g}), {n / max(seconds, 1e-9):,.0f} rows/s; wrote {out}")
    return 0


def _csv_name(name: str) -> str:
    """A feature name as a CSV header cell: commas, quotes and line breaks replaced by _."""
    return "".join("_" if ch in ',"\r\n' else ch for ch in name)


# ------------------------------------------------------------------ `dde fit --detector`
def _contamination(text: str):
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be 'auto' or a number in (0, 0.5], got {text!r}") from None


def _noise_std(text: str):
    if text in ("auto", "scott"):
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be 'auto', 'scott' or a positive number, got {text!r}") from None


def add_detector_arguments(parser) -> None:
    """Options of `dde fit --detector` (the shared --depth, --width, --activation,
    --batch-size, --learning-rate, --validation-split, --seed and --quiet are read too)."""
    g = parser.add_argument_group("anomaly detector (with --detector)")
    g.add_argument("--contamination", type=_contamination, default="auto",
                   help="expected outlier fraction of the training rows in (0, 0.5] setting "
                        "the ±1 threshold, or 'auto' (default: clean training rows; the "
                        "threshold flags --false-alarm-rate of held-out training rows)")
    g.add_argument("--false-alarm-rate", type=float, default=None,
                   help="with --contamination auto: the fraction of normal rows flagged, in "
                        "(0, 0.5] (default 0.01)")
    g.add_argument("--max-steps", type=int, default=None,
                   help="optimizer steps budget of the detector (default: the detector's)")
    g.add_argument("--detector-noise-std", type=_noise_std, default="auto",
                   help="σ in standardized units, 'auto' (the bandwidth of the best "
                        "held-out Gaussian KDE; default) or 'scott' (Scott's rule)")


def detector_from_args(args):
    """A `DDEAnomalyDetector` configured from parsed `dde fit` arguments."""
    from dde.anomaly import DDEAnomalyDetector
    from dde.progress import keras_verbose

    params = {}
    for arg, param in (("depth", "hidden_layers"), ("width", "width"),
                       ("activation", "activation"), ("batch_size", "batch_size"),
                       ("learning_rate", "learning_rate"), ("seed", "random_state"),
                       ("validation_split", "validation_fraction"),
                       ("contamination", "contamination"), ("max_steps", "max_steps"),
                       ("false_alarm_rate", "false_alarm_rate"),
                       ("detector_noise_std", "noise_std")):
        value = getattr(args, arg, None)
        if value is not None:
            params[param] = value
    params["verbose"] = keras_verbose(getattr(args, "quiet", False))
    return DDEAnomalyDetector(**params)


def fit_detector(args, x, folder=None) -> dict:
    """Train a detector on the rows x ([n, d], all training rows: the detector holds out its
    own validation fraction) with the options in `args`, save it atomically to
    `<folder>/detector.zip` (default folder: args.out; `dde fit` passes the folder it builds
    to replace args.out) and return a dict of metrics (JSON-serializable)."""
    import numpy as np

    detector = detector_from_args(args)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a directory.")
    start = time.perf_counter()
    detector.fit(x)
    seconds = time.perf_counter() - start
    path = out / DETECTOR_FILE
    detector.save((out if folder is None else Path(folder)) / DETECTOR_FILE)
    flagged = float(np.mean(detector.predict(x) == -1))
    val_losses = {k: (v if math.isfinite(v) else None)
                  for k, v in detector.activation_val_losses_.items()}
    return {
        "detector": str(path),
        "n_train": int(len(x)),
        "dimension": int(detector.n_features_in_),
        "params": {k: v for k, v in detector.get_params(deep=False).items()
                   if k != "estimator"},
        "noise_std": detector.noise_std_,
        "offset": detector.offset_,
        "threshold_source": detector.threshold_source_,
        "training_fraction_flagged": flagged,
        "steps": detector.n_steps_,
        "best_step": detector.best_step_,
        "final_loss": detector.history_["loss"][-1] if detector.history_["loss"] else None,
        "activation": detector.activation_,
        # held-out denoising loss at the restored step, per activation trained
        "val_loss_by_activation": val_losses,
        "best_val_loss": val_losses.get(detector.activation_),
        "history": detector.history_,
        "training_seconds": seconds,
    }
