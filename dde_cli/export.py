"""`dde export`: a model or detector as a SavedModel for serving without Python or dde.

    dde export --model run/model.keras --out served/density
    dde export --model runs/det/detector.zip --out served/detector
    dde export --model ncdde.keras --noise-std 0.05 --out served/nc

A density model (.keras) gets the signatures `log_density`, `score` and, when normalized at
that σ, `log_prob`; a detector (.zip from `dde fit --detector`) gets `score_samples`,
`decision_function` and `predict` (+1 / −1), with its standardization and threshold inside.
Each signature takes `x`, a float32 [batch, d] tensor, and returns a dict of named outputs;
the first is also `serving_default` (TensorFlow Serving). OUT is a folder written as a
whole (beside it, then swapped in); it must be new, empty or an earlier export. Load it
with `tf.saved_model.load(OUT).signatures["log_density"](x=...)` in any TensorFlow.
"""
from __future__ import annotations

from pathlib import Path


def add_parser(subparsers) -> None:
    from dde_cli._common import add_files, command_parser

    p = command_parser(subparsers, "export", __doc__,
                       help="write a model or detector as a SavedModel with serving signatures")
    add_files(p, model="a saved .keras model or a detector .zip",
              out_dir="the SavedModel folder")
    p.add_argument("--noise-std", type=float, default=None,
                   help="NoiseConditionalDDE only: the noise level σ to export f(·, σ) at "
                        "(default: sigma_min)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def run(args) -> int:
    from dde_cli._common import check_export_folder, check_paths

    model_path, out = Path(args.model), Path(args.out)
    check_paths({"--model": model_path}, files={})
    check_export_folder("--out", out, {"--model": model_path})

    from dde.progress import show_progress

    progress = show_progress(args.quiet)
    if model_path.suffix.lower() == ".zip":
        if args.noise_std is not None:
            raise ValueError("--noise-std applies to a NoiseConditionalDDE, not to a "
                             "detector (its σ is fixed).")
        from dde.anomaly import DDEAnomalyDetector

        detector = DDEAnomalyDetector.load(model_path)
        detector.export(out, progress=progress)
        what = "score_samples, decision_function, predict"
    else:
        from dde.export import export_density
        from dde_cli._common import load_model

        model = load_model(model_path)
        export_density(model, out, noise_std=args.noise_std, progress=progress)
        what = "log_density, score" + (", log_prob" if model.is_normalized else "")
    print(f"dde export: wrote the SavedModel {out}/ (signatures {what})")
    return 0
