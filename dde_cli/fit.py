"""`dde fit`: train a DenoisingDensityEstimator and write the model, metrics and plots.

    dde fit --out runs/demo                      # the embedded default data set (8gaussians)
    dde fit --dataset breast_cancer --out runs/bc
    dde fit --data mydata.csv --epochs 200 --noise-std 0.2 --out runs/mine
    dde fit --data big.npy --workers 2 --checkpoint-dir ckpt --out runs/big

--data files (.npy memory-mapped, .csv, .parquet; .npz is read whole) are streamed: the mean
and covariance in one pass, training from a shuffled tf.data pipeline, the validation rows
chosen by a stable hash of the row index, so memory stays bounded for files larger than it.

σ starts at --initial-noise-std and decays geometrically to --noise-std, the level whose
smoothed density the model learns, within the first 60 % of the batches (faster when the run
is short); the learning rate follows a cosine decay.

Writes the folder OUT: `model.keras`, `metrics.json` (final losses, σ reached, training time,
data set, ...), `training_curves.png`, and for 2-D data `density.png` and `score_field.png`
(1-D: `density.png`). OUT is written as a whole at the end and replaces a folder left there
by an earlier run, so it always holds the files of one run; a folder holding other files is
refused. Bad input or an unwritable OUT stops the run before training (exit status 2).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

DEFAULT_DATASET = "8gaussians"


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "fit", help="train a DDE on a data set and save model, metrics and plots",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--dataset", default=None, metavar="NAME",
                     help=f"a toy set (8gaussians, 2spirals, checkerboard, rings, moons, "
                          f"pinwheel, swissroll, circles, gaussian_mixture_1d) or a bundled "
                          f"UCI set (breast_cancer, wine, digits, iris); default "
                          f"{DEFAULT_DATASET}")
    src.add_argument("--data", default=None, metavar="FILE",
                     help="your own data: .npy, .npz (array X) or .csv (rows = samples)")
    p.add_argument("--out", default="runs/demo", metavar="DIR",
                   help="output folder, replaced as a whole by this run's files "
                        "(default: runs/demo)")
    p.add_argument("--num-samples", type=int, default=20_000,
                   help="training points drawn from a toy set (default: 20000)")
    p.add_argument("--validation-split", type=float, default=None,
                   help="fraction of --data (or toy samples) held out for validation "
                        "(default: 0.1); bundled UCI sets use their fixed validation split")
    p.add_argument("--epochs", type=int, default=40, help="training epochs (default: 40)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="batch size (default: 256; with --detector: the detector's)")
    p.add_argument("--learning-rate", type=float, default=None,
                   help="initial Adam learning rate (default: 3e-3; with --detector: the "
                        "detector's)")
    p.add_argument("--lr-schedule", choices=("cosine", "constant"), default="cosine",
                   help="learning-rate schedule: cosine decay to 0 over the run, or constant "
                        "(default: cosine)")
    p.add_argument("--noise-std", type=float, default=0.1,
                   help="final noise level σ of denoising score matching (default: 0.1): the "
                        "model learns the data density smoothed by N(0, σ²I)")
    p.add_argument("--initial-noise-std", type=float, default=0.5,
                   help="σ at the start of training (default: 0.5); σ decays geometrically "
                        "down to --noise-std, which it reaches within the first 60%% of the "
                        "batches. Equal to --noise-std: a fixed σ")
    p.add_argument("--decay-factor", type=float, default=0.8,
                   help="factor of each σ decay step (default: 0.8; a run too short for "
                        "it decays every batch by a stronger factor)")
    p.add_argument("--decay-every", type=int, default=None,
                   help="batches between σ decay steps (default: chosen so that σ reaches "
                        "--noise-std within the first 60%% of the batches); refused when σ "
                        "would not reach --noise-std before the run ends")
    p.add_argument("--depth", type=int, default=None, help="hidden layers (default: 3)")
    p.add_argument("--width", type=int, default=None,
                   help="hidden units (default: 128; with --detector: 256)")
    p.add_argument("--activation", default=None,
                   help="smooth activation: softplus, swish, gelu, tanh, ... (default: "
                        "softplus; with --detector: 'auto', the lower held-out loss of "
                        "softplus and swish)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    dist = p.add_argument_group("beyond one process (density models)")
    dist.add_argument("--workers", type=int, default=None, metavar="N",
                      help="train with N worker processes on this machine (127.0.0.1), "
                           "synchronously (MultiWorkerMirroredStrategy); on a cluster, start "
                           "`dde fit` on every machine with its TF_CONFIG instead")
    dist.add_argument("--checkpoint-dir", default=None, metavar="DIR",
                      help="save the training state there after every epoch and resume from "
                           "it: a killed run started again with the same options continues "
                           "after its last completed epoch (shared storage for a cluster)")
    dist.add_argument("--worker-report", default=None, metavar="FILE",
                      help="also write this worker's metrics (loss history, a SHA-256 of its "
                           "final weights) as JSON; every worker may write one")
    p.add_argument("--detector", action="store_true",
                   help="train a DDEAnomalyDetector (standardization, σ choice and threshold "
                        "inside) on all training rows instead, and write OUT/detector.zip and "
                        "metrics.json; score new rows with `dde score`")
    from dde_cli.score import add_detector_arguments

    add_detector_arguments(p)
    p.set_defaults(run=run)


# Defaults of the options a density model shares with `--detector` (which has its own).
_DENSITY_DEFAULTS = {"depth": 3, "width": 128, "activation": "softplus", "batch_size": 256,
                     "learning_rate": 3e-3, "validation_split": 0.1}


def load_training_data(args):
    """(x_train, x_val, name) for the data source the arguments name. Raises ValueError."""
    from dde_cli._common import read_data

    fraction = (_DENSITY_DEFAULTS["validation_split"] if args.validation_split is None
                else args.validation_split)
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"--validation-split must be in [0, 1), got {fraction}.")
    if args.data is not None:
        x = read_data(args.data)
        return (*_split(x, fraction, args.seed), str(args.data))
    name = args.dataset or DEFAULT_DATASET
    from dde import datasets
    from dde.datasets import toy

    if name in toy.NAMES:
        x = toy.sample(name, args.num_samples, seed=args.seed)
        return (*_split(x, fraction, args.seed), name)
    splits = datasets.load_splits(name)
    return splits.train, splits.validation, name


def _split(x, fraction, seed):
    import numpy as np

    n_val = int(round(len(x) * fraction))
    if n_val == 0:
        return x, None
    if len(x) - n_val < 1:
        raise ValueError(f"Too few samples ({len(x)}) for a validation split of {fraction}.")
    perm = np.random.default_rng(seed).permutation(len(x))
    return x[perm[n_val:]], x[perm[:n_val]]


def _check_args(args) -> None:
    """Refuse nonsensical options (before any data is read)."""
    from dde._validation import check_positive
    from dde_cli._common import check_seed

    for flag in ("epochs", "batch_size", "depth", "width", "decay_every", "num_samples",
                 "workers"):
        if getattr(args, flag) is not None:
            check_positive(getattr(args, flag), "--" + flag.replace("_", "-"), integer=True)
    for flag in ("learning_rate", "noise_std", "initial_noise_std", "decay_factor"):
        if getattr(args, flag) is not None:
            check_positive(getattr(args, flag), "--" + flag.replace("_", "-"))
    check_seed(args.seed)
    if args.initial_noise_std < args.noise_std:
        raise ValueError(f"--initial-noise-std ({args.initial_noise_std}) must be at least "
                         f"--noise-std ({args.noise_std}).")
    if args.decay_factor >= 1 and args.initial_noise_std > args.noise_std:
        raise ValueError(f"--decay-factor must be < 1 to decay σ, got {args.decay_factor}.")


def noise_schedule(args, total_steps: int):
    """The σ annealing of a run of `total_steps` batches (None for a fixed σ): the library's
    recipe (`NoiseStdSchedule.annealing`), which reaches --noise-std within the run."""
    from dde.models import NoiseStdSchedule

    if args.initial_noise_std == args.noise_std:
        return None
    try:
        return NoiseStdSchedule.annealing(args.initial_noise_std, args.noise_std, total_steps,
                                          fraction=0.6, factor=args.decay_factor,
                                          every_n_batches=args.decay_every)
    except ValueError as err:
        raise ValueError(f"σ schedule (--initial-noise-std, --noise-std, --decay-factor, "
                         f"--decay-every, --epochs): {err}") from None


def run(args) -> int:
    from dde_cli._common import check_paths, check_work_folder

    if not args.detector:  # a detector has its own defaults: it gets only the options given
        args = argparse.Namespace(**{**vars(args), **{
            k: v for k, v in _DENSITY_DEFAULTS.items() if getattr(args, k) is None}})
    _check_args(args)
    check_paths({"--data": args.data}, folders={"--out": args.out},
                files={"--worker-report": args.worker_report})
    check_work_folder("--checkpoint-dir", args.checkpoint_dir,
                      {"--data": args.data, "--out": args.out,
                       "--worker-report": args.worker_report})
    if args.detector:
        if args.workers is not None or args.checkpoint_dir is not None:
            raise ValueError("--workers and --checkpoint-dir train a density model; they do "
                             "not apply with --detector.")
        x_train, x_val, data_name = load_training_data(args)
        return _run_detector(args, x_train, x_val, data_name, Path(args.out))
    if args.workers is not None:
        from dde_cli.workers import launch_local_workers

        return launch_local_workers(args)
    return _run_density(args)


def _training_sources(args, info):
    """(name, source of the training rows of this worker, of the validation rows (or None),
    one-pass statistics of all training rows, n_validation) — streamed from --data, or the
    arrays of a toy or bundled set."""
    from dde import streaming

    fraction = args.validation_split
    shard = dict(shard=info.index, num_shards=info.num_workers)
    if args.data is not None:
        source = streaming.open_rows(args.data)
        train_all = source.split(fraction, args.seed, "train")
        try:
            stats = streaming.streaming_statistics(train_all, seed=args.seed,
                                                   progress=_progress(args))
        except ValueError as err:
            if not str(err).endswith("holds no rows in its train split."):
                raise
            raise ValueError(f"Too few samples ({train_all.rows_read}) in {args.data} for a "
                             f"validation split of {fraction}: every row was held out.") \
                from None
        n_val = train_all.rows_read - stats.count  # may be 0 for a small file
        val = source.split(fraction, args.seed, "validation", **shard) if n_val else None
        return (str(args.data), source.split(fraction, args.seed, "train", **shard), val,
                stats, n_val)
    x_train, x_val, name = load_training_data(args)
    train = streaming.ArraySource(x_train, name=name)
    stats = streaming.streaming_statistics(train, seed=args.seed)
    val = None
    if x_val is not None:
        val = streaming.ArraySource(x_val, name=name).split(0.0, args.seed, **shard)
    return (name, train.split(0.0, args.seed, **shard), val, stats,
            0 if x_val is None else len(x_val))


def source_of(split):
    """The same split of the same rows for all workers (shard 0 of 1)."""
    return split.source.split(split.fraction, split.seed, split.part)


def validation_loss(model, dataset) -> float:
    """The denoising loss on `dataset` with noise fixed by the model's seed, computed in
    this process alone (outside any strategy), batch-weighted."""
    import tensorflow as tf

    loss = tf.function(lambda x, seed: model.dsm_loss(x, seed), reduce_retracing=True)
    total, n = 0.0, 0
    for k, batch in enumerate(dataset):
        seed = tf.constant([model.seed, -(k + 1)], tf.int64)
        total += float(loss(tf.cast(batch, model.compute_dtype), seed)) * int(batch.shape[0])
        n += int(batch.shape[0])
    return total / max(n, 1)


def _barrier(strategy) -> None:
    """Under a multi-worker strategy, wait until every worker got here (one all-reduce),
    so that no worker leaves while the chief still writes."""
    import tensorflow as tf

    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        strategy.reduce("SUM", strategy.run(lambda: tf.constant(1.0)), axis=None)


def _progress(args):
    from dde.progress import show_progress

    return show_progress(args.quiet)


def _run_density(args) -> int:
    """Train a DenoisingDensityEstimator from a streamed file or an in-memory set, on this
    process or as one worker of a `TF_CONFIG` cluster."""
    from dde.distributed import strategy_for, task_info

    info = task_info()
    strategy = strategy_for(info)  # first: collective ops are configured at start-up

    import keras
    import numpy as np

    import dde
    from dde import _io, streaming
    from dde.distributed import TrainingCheckpoint, weights_digest
    from dde.progress import keras_verbose

    keras.utils.set_random_seed(args.seed)
    data_name, train, val, stats, n_val = _training_sources(args, info)
    d = stats.mean.shape[0]
    steps = streaming.steps_per_epoch(stats.count, args.batch_size)
    total_steps = args.epochs * steps
    schedule = noise_schedule(args, total_steps)
    with strategy.scope():
        network = dde.nets.energy_mlp(d, depth=args.depth, width=args.width,
                                      activation=args.activation)
        model = dde.DenoisingDensityEstimator(network, noise_std=args.initial_noise_std,
                                              seed=args.seed)
        learning_rate = args.learning_rate
        if args.lr_schedule == "cosine":
            learning_rate = keras.optimizers.schedules.CosineDecay(args.learning_rate,
                                                                   total_steps)
        model.compile(optimizer=keras.optimizers.Adam(learning_rate))
        model.ensure_built(d)
        model.data_mean.assign(stats.mean)
        model.data_cov.assign(stats.cov)
        callbacks = [schedule] if schedule is not None else []
        initial_epoch = 0
        if args.checkpoint_dir is not None:
            checkpoint = TrainingCheckpoint(model, args.checkpoint_dir, info=info)
            initial_epoch = min(checkpoint.restore(), args.epochs)
            if schedule is not None and initial_epoch:
                schedule.resume(initial_epoch * steps, args.initial_noise_std)
            callbacks.append(checkpoint)
    dataset = streaming.training_dataset(train, args.batch_size, seed=args.seed,
                                         first_epoch=initial_epoch)
    # One process validates every epoch; workers of a cluster would each need the same
    # number of validation batches, so there the chief validates once, at the end.
    per_epoch_validation = val is not None and info.num_workers == 1
    val_data = (streaming.evaluation_dataset(val, args.batch_size, num_rows=n_val)
                if per_epoch_validation else None)
    where = (f" (worker {info.index} of {info.num_workers}, "
             f"{strategy.num_replicas_in_sync} replicas)" if info.num_workers > 1 else "")
    print(f"dde fit: {data_name}: {stats.count} training points, d = {d}"
          + (f", {n_val} validation points" if n_val else "") + where
          + (f"; resumed after epoch {initial_epoch}" if initial_epoch else ""))
    start = time.perf_counter()
    history = model.fit(dataset, epochs=args.epochs, steps_per_epoch=steps,
                        initial_epoch=initial_epoch, validation_data=val_data,
                        callbacks=callbacks, verbose=keras_verbose(args.quiet))
    seconds = time.perf_counter() - start
    _check_training(history, model, stats.sample, stats)
    final_val_loss = (float(history.history["val_loss"][-1])
                      if history.history.get("val_loss") else None)
    if val is not None and not per_epoch_validation and info.is_chief:
        final_val_loss = validation_loss(model, streaming.evaluation_dataset(
            source_of(val), args.batch_size))

    final_sigma = float(model.noise_std.numpy())
    losses = history.history.get("loss", [])
    metrics = {
        "data": data_name,
        "n_train": int(stats.count),
        "n_validation": int(n_val),
        "dimension": int(d),
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "network": {"depth": args.depth, "width": args.width, "activation": args.activation},
        "initial_noise_std": args.initial_noise_std,
        "learning_rate_schedule": args.lr_schedule,
        # σ of the saved model, the σ asked for and whether the schedule reached it
        "noise_std": final_sigma,
        "requested_noise_std": args.noise_std,
        "noise_std_reached": bool(np.isclose(final_sigma, args.noise_std, rtol=1e-6)),
        "noise_schedule": None if schedule is None else {
            "factor": schedule.factor, "every_n_batches": schedule.every_n_batches,
            "final_from_batch": schedule.final_batch, "total_batches": total_steps},
        "final_loss": float(losses[-1]) if losses else None,
        "final_val_loss": final_val_loss,
        "history": {k: [float(v) for v in vals] for k, vals in history.history.items()},
        "training_seconds": seconds,
        "seed": args.seed,
        "workers": info.num_workers,
        "replicas": int(strategy.num_replicas_in_sync),
        "resumed_from_epoch": initial_epoch,
        "weights_sha256": weights_digest(model),
    }
    if args.worker_report is not None:  # every worker may write one
        _io.write_json(args.worker_report, {"worker": info.index, **metrics})
    if not info.is_chief:
        _barrier(strategy)
        print(f"dde fit: worker {info.index} done in {seconds:.1f} s (the chief writes "
              f"{args.out}/)")
        return 0
    with _io.replaced_folder(args.out) as folder:
        _io.save_keras(model, folder / "model.keras")
        _io.write_json(folder / "metrics.json", metrics)
        _write_plots(model, history, stats.sample, folder)
    _barrier(strategy)
    print(f"dde fit: final loss {metrics['final_loss']:.4f}"
          if metrics["final_loss"] is not None else "dde fit: no epoch left to train",
          end="")
    print((f", validation loss {metrics['final_val_loss']:.4f}"
           if metrics["final_val_loss"] is not None else "")
          + f", σ = {final_sigma:.4g}, {seconds:.1f} s; wrote {args.out}/")
    return 0


def _check_training(history, model, x_train, stats=None) -> None:
    """A run whose losses or energies are not finite, or whose energies are absurd (beyond
    what float32 log-densities resolve, as for data far from unit scale), is an error:
    nothing of it is written. x_train: the training rows (or a sample of them); stats:
    their `DataStatistics` (for the data's range)."""
    import numpy as np

    from dde._validation import check_finite_results
    from dde.models import MAX_ABS_LOG_Z

    for key, values in history.history.items():
        bad = [i + 1 for i, v in enumerate(values) if not np.isfinite(v)]
        if bad:
            raise ValueError(f"Training diverged: {key} is not finite at epoch {bad[0]} (data "
                             "far from unit scale? standardize it or lower --learning-rate).")
    f = check_finite_results(model.log_density(x_train), "learned log-density of the "
                                                         "training data")
    if np.abs(f).max() > MAX_ABS_LOG_Z:
        raise ValueError(f"The learned log-density reaches |f| = {np.abs(f).max():.3g} on the "
                         f"training data (> {MAX_ABS_LOG_Z:g}, where float32 no longer "
                         "resolves log-densities): the data are far from unit scale "
                         f"(|x| up to {_largest(x_train, stats):.3g}); standardize them.")


def _largest(x, stats) -> float:
    import numpy as np

    if stats is None:
        return float(np.abs(x).max())
    return float(max(np.abs(stats.minimum).max(), np.abs(stats.maximum).max()))


def _run_detector(args, x_train, x_val, data_name, out: Path) -> int:
    import numpy as np

    from dde import _io
    from dde_cli.score import fit_detector

    x = x_train if x_val is None else np.concatenate([x_train, x_val])
    print(f"dde fit --detector: {data_name}: {len(x)} rows, d = {x.shape[1]}")
    with _io.replaced_folder(out) as folder:
        metrics = {"data": data_name, **fit_detector(args, x, folder=folder)}
        _io.write_json(folder / "metrics.json", metrics)
    print(f"dde fit --detector: wrote {out}/detector.zip and metrics.json")
    return 0


def _plot_bounds(x):
    """Plot window around data x [n, d]: its range padded by 15 % (never empty)."""
    import numpy as np

    lo, hi = x.min(0).astype(np.float64), x.max(0).astype(np.float64)
    pad = np.maximum(0.15 * (hi - lo), 1e-3 * np.maximum(1.0, np.abs(lo) + np.abs(hi)))
    return [(float(a), float(b)) for a, b in zip(lo - pad, hi + pad)]


def _write_plots(model, history, x_train, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from dde import _io, plotting

    sigma = float(model.noise_std.numpy())
    title = f"un-normalized density exp f(x)\n(log Ẑ not estimated), σ = {sigma:.3g}"
    figures = {"training_curves.png": plotting.plot_training_curves(history)}
    if x_train.shape[1] == 2:
        bounds = _plot_bounds(x_train)
        fig = plotting.plot_density(model, bounds=bounds, data=x_train, normalize=False,
                                    colorbar=True, title=title)
        fig.axes[1].set_ylabel("exp(f(x) − max f)")
        figures["density.png"] = fig
        figures["score_field.png"] = plotting.plot_score_field(
            model, bounds=bounds, title=f"score ∇ₓf(x), σ = {sigma:.3g}")
    elif x_train.shape[1] == 1:
        figures["density.png"] = plotting.plot_density_1d(
            model, bounds=_plot_bounds(x_train)[0], data=x_train,
            title=f"density exp f(x), normalized over this window\n(log Ẑ not estimated), "
                  f"σ = {sigma:.3g}")
    for name, fig in figures.items():
        _io.save_figure(fig, out / name, dpi=90)
