"""`dde sample`: draw samples from a saved energy model by Langevin dynamics.

    dde sample --model run/model.keras -n 10000 --out samples.npy
    dde sample --model m.keras -n 10000 --method mala --steps 2000 --plot samples.png
    dde sample --model ncdde.keras -n 5000 --method annealed --levels 10 --out s.npy

Methods: ula (unadjusted Langevin), mala (Metropolis-adjusted; step size adapted during a
burn-in of --burnin steps) and annealed (NoiseConditionalDDE only: --levels noise levels from
sigma_max to sigma_min, --steps split evenly over them). The step size h is that of
x ← x + h∇f(x) + sqrt(2h)ξ; by default 0.1σ² (ula), σ² before adaptation (mala), 0.05σ_L²
(annealed). Chains start (--start) from a population carried to the model by tempered
sequential Monte Carlo ("smc", default for ula and mala: the chains then hold the model's
mode masses), from importance-resampled draws ("resample") or from the model's proposal, a
Gaussian matched to the training data or the base ("proposal", default for annealed), or
from the rows of --init. Writes the samples [n, d] as .npy and, for 2-D models, an optional scatter plot.
Chains that diverge (NaN/inf) are dropped with a warning and counted in the summary (all
diverged: an error). The outputs are written together at the end, both or neither; bad input
or an unwritable output path stops the run before sampling (exit status 2).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from dde_cli._common import RegistryChoices

PLOT_SUFFIXES = (".png", ".pdf", ".svg", ".jpg", ".jpeg")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "sample", help="draw samples from a saved model by Langevin dynamics",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, metavar="FILE", help="a saved .keras model")
    p.add_argument("-n", "--num-samples", dest="n", type=int, default=10_000,
                   help="number of samples = independent chains (default: 10000)")
    p.add_argument("--method", choices=RegistryChoices("dde.sampling", "SAMPLERS"),
                   default="ula", metavar="METHOD",
                   help="sampler: %(choices)s (default: %(default)s)")
    p.add_argument("--out", required=True, metavar="FILE", help="output .npy file")
    p.add_argument("--steps", type=int, default=1000,
                   help="Langevin steps per chain (annealed: in total over all levels; "
                        "default: 1000)")
    p.add_argument("--step-size", type=float, default=None,
                   help="step size h (default: from the model's noise level σ)")
    p.add_argument("--burnin", type=int, default=None,
                   help="mala: burn-in steps with step-size adaptation, discarded (default: "
                        "steps / 2)")
    p.add_argument("--target-accept", type=float, default=0.574,
                   help="mala: target acceptance probability of the adaptation "
                        "(default: 0.574)")
    p.add_argument("--no-adapt", action="store_true",
                   help="mala: keep the step size fixed during burn-in")
    p.add_argument("--levels", type=int, default=10,
                   help="annealed: number of noise levels (default: 10)")
    p.add_argument("--denoise", action="store_true",
                   help="annealed: finish with the Tweedie denoising step x + σ_L²∇f")
    p.add_argument("--init", default=None, metavar="FILE",
                   help="starting points (.npy, .npz or .csv): n rows or a single row")
    p.add_argument("--start", choices=("smc", "resample", "proposal"), default=None,
                   help="how the chains start without --init (default: smc for ula and "
                        "mala, proposal for annealed)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--plot", default=None, metavar="FILE",
                   help="scatter plot of the samples (2-D models only; .png, .pdf, .svg)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def _check_args(args):
    from dde._validation import check_positive
    from dde_cli._common import check_paths, check_seed

    check_positive(args.n, "-n", integer=True)
    check_positive(args.steps, "--steps", integer=True)
    check_positive(args.levels, "--levels", integer=True)
    if args.step_size is not None:
        check_positive(args.step_size, "--step-size")
    if args.burnin is not None:
        check_positive(args.burnin, "--burnin", integer=True, allow_zero=True)
    if not 0 < args.target_accept < 1:
        raise ValueError(f"--target-accept must be in (0, 1), got {args.target_accept}.")
    check_seed(args.seed)
    if args.init is not None and args.start is not None:
        raise ValueError("Give --init (starting points) or --start (how to draw them), not "
                         "both.")
    out = Path(args.out)
    if out.suffix != ".npy":
        raise ValueError(f"--out must be a .npy file, got {out}.")
    if args.plot is not None and Path(args.plot).suffix.lower() not in PLOT_SUFFIXES:
        raise ValueError(f"--plot must end in one of {', '.join(PLOT_SUFFIXES)}, got "
                         f"{args.plot}.")
    check_paths({"--model": args.model, "--init": args.init},
                files={"--out": args.out, "--plot": args.plot})


def _sampler_options(args):
    options = {}
    if args.method == "mala":
        if args.burnin is not None:
            options["num_burnin_steps"] = args.burnin
        options["target_accept_prob"] = args.target_accept
        options["adapt_step_size"] = not args.no_adapt
    elif args.method == "annealed":
        options["num_levels"] = args.levels
        options["denoise"] = args.denoise
    return options


def run(args) -> int:
    _check_args(args)
    import numpy as np

    from dde import _io
    from dde.models import NoiseConditionalDDE
    from dde.progress import show_progress
    from dde_cli._common import load_model, read_data

    model = load_model(args.model)
    if args.method == "annealed" and not isinstance(model, NoiseConditionalDDE):
        raise ValueError(f"--method annealed needs a NoiseConditionalDDE; {args.model} holds "
                         f"a {type(model).__name__}. Use --method ula or mala.")
    d = model.input_dim if model.built else None
    if args.plot is not None and d != 2:
        raise ValueError(f"--plot draws 2-D samples; this model has {d} dimensions.")
    init = read_data(args.init, "init", model) if args.init is not None else args.start

    start = time.perf_counter()
    results = model.sample(args.n, method=args.method, init=init, num_steps=args.steps,
                           step_size=args.step_size, seed=args.seed,
                           progress=show_progress(args.quiet),
                           return_results=True, **_sampler_options(args))
    seconds = time.perf_counter() - start
    samples = np.asarray(results.samples, dtype=np.float32)

    outputs = [args.out] + ([args.plot] if args.plot is not None else [])
    with _io.atomic_files(outputs) as temps:  # both files or neither
        _io.save_npy(temps[0], samples)
        if args.plot is not None:
            from dde.plotting import plot_samples

            fig = plot_samples(samples, title=f"{args.method}: {len(samples)} samples")
            _io.save_figure(fig, temps[1], dpi=120)

    summary = (f"dde sample: {len(samples)} samples ({args.method}, {args.steps} steps, "
               f"h = {results.step_size:.3g}) in {seconds:.1f} s → {args.out}")
    if results.acceptance_rate is not None:
        summary += f"; acceptance rate {results.acceptance_rate:.3f}"
    if results.num_diverged:
        summary += f"; {results.num_diverged} diverged chains dropped"
    print(summary)
    if args.plot is not None:
        print(f"dde sample: plot → {args.plot}")
    sys.stdout.flush()
    return 0
