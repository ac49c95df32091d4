"""`dde normalize`: estimate log Ẑ of a saved model and store it in the model.

    dde normalize --model run/model.keras --data train.npy
    dde normalize --model m.keras --data train.npy --method ais --num-samples 2000 --out m2.keras

The proposal is fitted to the training data (--proposal: a full-covariance Gaussian, a
Student-t, a Gaussian mixture, the σ-smoothed empirical mixture, ...), or AIS (--method ais)
anneals from it to the model. Prints log Ẑ ± 2·SE, the effective sample size and the Pareto
k̂ of the weights, and warns (or, with --refuse-unreliable, fails) when the estimate is
unreliable; writes the normalized model (in place unless --out)
and a JSON file with the estimate (default: beside the model, `<name>.normalize.json`). Both
files are written together at the end, the model last, so that on any error (bad input, an
unwritable output, a non-finite or absurd log Ẑ) nothing is written, the input model is
unchanged and the exit status is 2. A model updated in place keeps its file permissions.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from dde_cli._common import RegistryChoices


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "normalize", help="estimate the partition function log Z of a model and store it",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, metavar="FILE", help="a saved .keras model")
    p.add_argument("--data", required=True, metavar="FILE",
                   help="training data (.npy, .npz or .csv) to fit the proposal to")
    p.add_argument("--method", choices=RegistryChoices("dde.partition", "METHODS"),
                   default="is", metavar="METHOD",
                   help="%(choices)s: importance sampling or annealed importance sampling "
                        "(default: %(default)s)")
    p.add_argument("--proposal", choices=RegistryChoices("dde.partition", "PROPOSALS"),
                   default="gaussian", metavar="NAME",
                   help="proposal fitted to the data, one of %(choices)s: full-covariance "
                        "Gaussian, multivariate Student-t (heavier tails), Gaussian mixture, "
                        "σ-smoothed empirical mixture, ... (default: %(default)s)")
    p.add_argument("--df", type=float, default=5.0,
                   help="degrees of freedom of the student_t proposal (default: 5)")
    p.add_argument("--n-components", type=int, default=8,
                   help="components of the gmm proposal (default: 8)")
    p.add_argument("--proposal-scale", type=float, default=1.0,
                   help="inflate the gaussian/student_t/gmm proposal's standard deviations by "
                        "this factor (default: 1.0)")
    p.add_argument("--smoothing-std", type=float, default=None,
                   help="σ of the smoothed proposal (default: the model's σ)")
    p.add_argument("--noise-std", type=float, default=None,
                   help="NoiseConditionalDDE only: the noise level to normalize f(·, σ) at "
                        "(default: sigma_min)")
    p.add_argument("--num-samples", type=int, default=None,
                   help="IS samples (default: 100000) or AIS chains (default: 1000)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="samples (IS) or chains (AIS) at once (default: 8192 / 4096)")
    p.add_argument("--num-steps", type=int, default=200,
                   help="AIS: number of temperatures (default: 200)")
    p.add_argument("--schedule", choices=RegistryChoices("dde.partition", "SCHEDULES"),
                   default="sigmoid", metavar="NAME",
                   help="AIS temperature schedule: %(choices)s (default: %(default)s)")
    p.add_argument("--kernel", choices=RegistryChoices("dde.partition.ais",
                                                       "KERNEL_DEFAULTS"),
                   default="hmc", metavar="NAME",
                   help="AIS transition kernel: %(choices)s (default: %(default)s)")
    p.add_argument("--num-leapfrog-steps", type=int, default=5,
                   help="AIS with HMC: leapfrog steps per transition (default: 5)")
    p.add_argument("--min-ess", type=float, default=100.0,
                   help="an effective sample size below min(MIN_ESS, 0.1·M) marks the "
                        "estimate unreliable (default: 100)")
    p.add_argument("--refuse-unreliable", "--refuse-low-ess", dest="refuse_low_ess",
                   action="store_true",
                   help="fail (exit 2, nothing written) instead of warning when the estimate "
                        "is unreliable: a small ESS, or heavy-tailed weights (Pareto k̂ above "
                        "0.7)")
    p.add_argument("--seed", type=int, default=None,
                   help="random seed (default: the model's seed)")
    p.add_argument("--out", default=None, metavar="FILE",
                   help="where to write the normalized model (default: overwrite --model)")
    p.add_argument("--json", default=None, metavar="FILE",
                   help="where to write the result as JSON (default: beside the output "
                        "model, <name>.normalize.json)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def run(args) -> int:
    from dde import _io
    from dde._validation import check_positive
    from dde.progress import show_progress
    from dde_cli._common import check_paths, check_seed, load_model, read_data

    for name in ("num_samples", "batch_size"):
        if getattr(args, name) is not None:
            check_positive(getattr(args, name), "--" + name.replace("_", "-"), integer=True)
    check_positive(args.num_steps, "--num-steps", integer=True)
    check_positive(args.n_components, "--n-components", integer=True)
    check_positive(args.num_leapfrog_steps, "--num-leapfrog-steps", integer=True)
    check_positive(args.proposal_scale, "--proposal-scale")
    check_positive(args.min_ess, "--min-ess", allow_zero=True)
    check_positive(args.df, "--df")
    if args.df <= 2:
        raise ValueError(f"--df must be > 2 (a finite covariance), got {args.df}.")
    if args.smoothing_std is not None:
        check_positive(args.smoothing_std, "--smoothing-std")
    check_seed(args.seed)
    out = Path(args.out) if args.out is not None else Path(args.model)
    if out.suffix != ".keras":
        raise ValueError(f"--out must end in .keras, got {out}.")
    json_path = Path(args.json) if args.json else out.with_name(out.stem + ".normalize.json")
    check_paths({"--model": args.model, "--data": args.data},
                files={"--out": out, "--json": json_path}, replaces={"--out": "--model"})

    model = load_model(args.model)
    x = read_data(args.data, model=model)
    options = dict(progress=show_progress(args.quiet), min_ess=args.min_ess,
                   on_low_ess="raise" if args.refuse_low_ess else "warn")
    if args.method == "ais":
        options.update(num_steps=args.num_steps, schedule=args.schedule, kernel=args.kernel,
                       num_leapfrog_steps=args.num_leapfrog_steps)
    if args.noise_std is not None:
        options["noise_std"] = args.noise_std
    # The proposal's options among those given (each proposal takes its own).
    from dde.partition.proposals import proposal_option_names

    given = {"scale": args.proposal_scale, "df": args.df, "n_components": args.n_components,
             "noise_std": args.smoothing_std}
    proposal_options = {k: v for k, v in given.items()
                        if v is not None and k in proposal_option_names(args.proposal)}
    start = time.perf_counter()
    result = model.normalize(x, method=args.method, proposal=args.proposal,
                             num_samples=args.num_samples, batch_size=args.batch_size,
                             seed=args.seed, proposal_options=proposal_options, **options)
    seconds = time.perf_counter() - start

    record = {"model": str(args.model), "output_model": str(out), "data": str(args.data),
              "num_data_points": int(len(x)), "seconds": seconds, **result.as_dict()}
    # Both files or neither; the model last, as it may replace the input model.
    with _io.atomic_files([json_path, out], suffixes=[None, ".keras"]) as (tmp_json, tmp_model):
        _io.write_json(tmp_json, record)
        _io.save_keras(model, tmp_model)
    print(result)
    print(f"ESS / M = {result.ess_fraction:.3g}; {result.num_evaluations:,} density "
          f"evaluations in {seconds:.1f} s")
    print(f"wrote {out} and {json_path}")
    sys.stdout.flush()
    return 0
