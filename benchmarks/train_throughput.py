"""Training throughput of `DenoisingDensityEstimator.fit` against this CPU's arithmetic limit
and against a plain eager GradientTape loop.

For softplus energy MLPs (depth 3, widths 128 and 256) on d-dimensional Gaussian data
(d = 2, 20, 100) at batch 512, measures training samples per second of
  - `model.fit` as compiled by default (`dde.training`: 16 steps per execution, Keras's
    `jit_compile="auto"`, i.e. no XLA on a CPU-only machine), and with one step per
    execution without and with XLA (Keras's plain defaults);
  - `fit` with XLA and 16 steps per execution;
  - the model's train step in a bare tf.function on pre-made batches (arithmetic only);
  - the reference: an uncompiled eager loop of nested GradientTapes (as in the original DDE
    tutorial), same network, loss and optimizer;
and, in the same run, this CPU's sustained float32 matmul rate through TensorFlow
(`roofline.matmul_peak`), the step's FLOPs (`roofline.dsm_step_flops`: 6F, F the forward
pass) and achieved/peak for each variant. Prints a markdown table and writes JSON.

    python benchmarks/train_throughput.py [--steps 300] [--out benchmarks/results/train_throughput.json]
"""
from __future__ import annotations

import argparse
import os
import platform
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import dde  # noqa: E402
import roofline  # noqa: E402
from dde import _io  # noqa: E402

BATCH = 512
DEPTH = 3
#: The variants of `fit` timed: label → compile options.
FIT_VARIANTS = {"fit_default": {},
                "fit_graph": {"jit_compile": False, "steps_per_execution": 1},
                "fit_xla": {"jit_compile": True, "steps_per_execution": 1},
                "fit_xla_spe16": {"jit_compile": True, "steps_per_execution": 16}}


def build(d, width, seed=0):
    keras.utils.set_random_seed(seed)
    return dde.DenoisingDensityEstimator(dde.nets.energy_mlp(d, depth=DEPTH, width=width),
                                         noise_std=0.1, seed=seed)


def data(d, steps):
    return np.random.default_rng(0).normal(size=(BATCH * steps, d)).astype("float32")


def fit_throughput(d, width, steps, repeats, **compile_options):
    """Samples/s of `model.fit` over BATCH·steps rows (best of `repeats` epochs)."""
    x = data(d, steps)
    model = build(d, width)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), **compile_options)
    model.fit(x[:BATCH * 32], batch_size=BATCH, epochs=1, verbose=0)  # trace + warm up
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        model.fit(x, batch_size=BATCH, epochs=1, verbose=0, shuffle=False)
        best = min(best, time.perf_counter() - start)
    return BATCH * steps / best, bool(model.jit_compile)


def compiled_step_throughput(d, width, steps, repeats):
    """The model's own train step in a tf.function, fed pre-made batches (no `fit`): the
    cost of the arithmetic alone, without Keras's input pipeline and callbacks."""
    x = data(d, steps)
    model = build(d, width)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=False)
    model.fit(x[:BATCH * 2], batch_size=BATCH, epochs=1, verbose=0)  # build optimizer
    step = tf.function(model.train_step)
    batches = [tf.constant(x[i * BATCH:(i + 1) * BATCH]) for i in range(steps)]
    step(batches[0])
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        for batch in batches:
            step(batch)
        best = min(best, time.perf_counter() - start)
    return BATCH * steps / best


def eager_throughput(d, width, steps, repeats):
    """The reference: a Python loop of eager steps, no tf.function."""
    x = data(d, steps)
    model = build(d, width)
    model(tf.zeros([1, d]))
    net = model.network
    optimizer = keras.optimizers.Adam(1e-3)
    sigma = 0.1

    def step(batch):
        noise = sigma * tf.random.normal(tf.shape(batch))
        noisy = batch + noise
        with tf.GradientTape() as outer:
            with tf.GradientTape() as inner:
                inner.watch(noisy)
                f = net(noisy)
            grad = inner.gradient(f, noisy)
            loss = tf.reduce_mean(tf.reduce_sum(tf.square(sigma * grad + noise / sigma), -1))
        grads = outer.gradient(loss, net.trainable_weights)
        optimizer.apply_gradients(zip(grads, net.trainable_weights))
        return loss

    for i in range(5):
        step(tf.constant(x[i * BATCH:(i + 1) * BATCH]))
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(steps):
            step(tf.constant(x[i * BATCH:(i + 1) * BATCH]))
        best = min(best, time.perf_counter() - start)
    return BATCH * steps / best


def markdown_table(rows, peak) -> str:
    lines = [f"float32 matmul peak through TensorFlow: {peak / 1e9:.1f} GFLOP/s\n",
             "| d | width | GFLOP/step | eager loop | `fit` (default) | `fit`, 1 step/execution | "
             "`fit`, XLA, 1 step/execution | XLA + 16 steps/execution | compiled step alone | default / eager | "
             "best `fit` / eager | best `fit` % of peak |", "|---" * 12 + "|"]
    for r in rows:
        lines.append(
            f"| {r['dimension']} | {r['width']} | {r['flops_per_step'] / 1e9:.3f} | "
            f"{r['eager_samples_per_s']:,.0f}/s | {r['fit_default_samples_per_s']:,.0f}/s | "
            f"{r['fit_graph_samples_per_s']:,.0f}/s | {r['fit_xla_samples_per_s']:,.0f}/s | "
            f"{r['fit_xla_spe16_samples_per_s']:,.0f}/s | "
            f"{r['compiled_step_samples_per_s']:,.0f}/s | "
            f"{r['ratio_default_vs_eager']:.1f}× | {r['ratio_best_fit_vs_eager']:.1f}× | "
            f"{100 * r['best_fit_fraction_of_peak']:.0f} % |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300, help="training steps per timing")
    parser.add_argument("--eager-steps", type=int, default=40, help="steps of the eager loop")
    parser.add_argument("--repeats", type=int, default=3, help="timings (best is kept)")
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 20, 100])
    parser.add_argument("--widths", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--out", default="benchmarks/results/train_throughput.json")
    args = parser.parse_args(argv)

    peak = roofline.matmul_peak()
    print(f"float32 matmul peak: {peak['flops'] / 1e9:.1f} GFLOP/s (n = {peak['size']})",
          flush=True)
    rows = []
    for width in args.widths:
        for d in args.dims:
            flops = roofline.dsm_step_flops(d, DEPTH, width, BATCH)
            row = {"dimension": d, "width": width, "depth": DEPTH, "batch_size": BATCH,
                   "flops_per_step": flops,
                   "eager_samples_per_s": eager_throughput(d, width, args.eager_steps,
                                                           args.repeats)}
            for label, options in FIT_VARIANTS.items():
                rate, jit = fit_throughput(d, width, args.steps, args.repeats, **options)
                row[f"{label}_samples_per_s"] = rate
                if label == "fit_default":
                    row["default_jit_compile"] = jit
            row["compiled_step_samples_per_s"] = compiled_step_throughput(
                d, width, args.steps, args.repeats)
            for key in [k for k in row if k.endswith("_samples_per_s")]:
                row[key.replace("_samples_per_s", "_fraction_of_peak")] = (
                    row[key] / BATCH * flops / peak["flops"])
            best = max(row[f"{label}_samples_per_s"] for label in FIT_VARIANTS)
            row["ratio_default_vs_eager"] = (row["fit_default_samples_per_s"]
                                             / row["eager_samples_per_s"])
            row["ratio_best_fit_vs_eager"] = best / row["eager_samples_per_s"]
            row["best_fit_fraction_of_peak"] = best / BATCH * flops / peak["flops"]
            rows.append(row)
            print(f"d={d} width={width}: eager {row['eager_samples_per_s']:,.0f}/s, " + ", ".join(
                f"{label} {row[label + '_samples_per_s']:,.0f}/s" for label in FIT_VARIANTS)
                + f", step alone {row['compiled_step_samples_per_s']:,.0f}/s; best fit "
                f"{100 * row['best_fit_fraction_of_peak']:.0f} % of peak", flush=True)

    print("\n" + markdown_table(rows, peak["flops"]))
    _io.write_json(args.out, {
        "benchmark": "train_throughput", "network": f"energy_mlp depth={DEPTH} softplus",
        "batch_size": BATCH, "matmul_peak_flops": peak["flops"], "matmul_peak": peak,
        "rows": rows, "tensorflow": tf.__version__, "keras": keras.__version__,
        "machine": platform.machine(), "cpus": os.cpu_count()})
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
