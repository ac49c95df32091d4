"""Training throughput of `DenoisingDensityEstimator.fit` vs a plain eager GradientTape loop.

For a 3×128 softplus energy MLP on 2-D and 20-D Gaussian data at batch 512, measures training
samples per second of
  - `model.fit` (the Keras train step compiled by tf.function; optionally with XLA), and
  - the model's train step in a bare tf.function on pre-made batches (arithmetic only), and
  - the reference: an uncompiled eager loop of nested GradientTapes (as in the original DDE
    tutorial), same network, loss and optimizer.
Prints a markdown table with the ratio and writes JSON.

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
from dde import _io  # noqa: E402

BATCH = 512


def build(d, seed=0):
    keras.utils.set_random_seed(seed)
    model = dde.DenoisingDensityEstimator(dde.nets.energy_mlp(d, depth=3, width=128),
                                          noise_std=0.1, seed=seed)
    return model


def fit_throughput(d, steps, jit_compile, repeats):
    x = np.random.default_rng(0).normal(size=(BATCH * steps, d)).astype("float32")
    model = build(d)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=jit_compile)
    model.fit(x[:BATCH * 5], batch_size=BATCH, epochs=1, verbose=0)  # trace + warm up
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        model.fit(x, batch_size=BATCH, epochs=1, verbose=0, shuffle=False)
        best = min(best, time.perf_counter() - start)
    return BATCH * steps / best


def compiled_step_throughput(d, steps, repeats):
    """The model's own train step in a tf.function, fed pre-made batches (no `fit`): the
    cost of the arithmetic alone, without Keras's input pipeline and callbacks."""
    x = np.random.default_rng(0).normal(size=(BATCH * steps, d)).astype("float32")
    model = build(d)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
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


def eager_throughput(d, steps, repeats):
    """The reference: a Python loop of eager steps, no tf.function."""
    x = np.random.default_rng(0).normal(size=(BATCH * steps, d)).astype("float32")
    model = build(d)
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


def markdown_table(rows) -> str:
    lines = ["| d | eager loop | `fit` | `fit`, `jit_compile=True` | compiled step alone | "
             "fit / eager | fit+XLA / eager |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['dimension']} | {r['eager_samples_per_s']:,.0f}/s | "
            f"{r['fit_samples_per_s']:,.0f}/s | {r['fit_xla_samples_per_s']:,.0f}/s | "
            f"{r['compiled_step_samples_per_s']:,.0f}/s | {r['ratio_fit_vs_eager']:.1f}× | "
            f"{r['ratio_xla_vs_eager']:.1f}× |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300, help="training steps per timing")
    parser.add_argument("--eager-steps", type=int, default=60, help="steps of the eager loop")
    parser.add_argument("--repeats", type=int, default=3, help="timings (best is kept)")
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 20])
    parser.add_argument("--out", default="benchmarks/results/train_throughput.json")
    args = parser.parse_args(argv)

    rows = []
    for d in args.dims:
        eager = eager_throughput(d, args.eager_steps, args.repeats)
        graph = fit_throughput(d, args.steps, False, args.repeats)
        xla = fit_throughput(d, args.steps, True, args.repeats)
        raw = compiled_step_throughput(d, args.steps, args.repeats)
        rows.append({"dimension": d, "batch_size": BATCH, "eager_samples_per_s": eager,
                     "compiled_step_samples_per_s": raw,
                     "fit_samples_per_s": graph, "fit_xla_samples_per_s": xla,
                     "ratio_fit_vs_eager": graph / eager, "ratio_xla_vs_eager": xla / eager})
        print(f"d={d}: eager {eager:,.0f}/s, fit {graph:,.0f}/s, fit+XLA {xla:,.0f}/s, "
              f"compiled step alone {raw:,.0f}/s", flush=True)

    print("\n" + markdown_table(rows))
    _io.write_json(args.out, {
        "benchmark": "train_throughput", "network": "energy_mlp depth=3 width=128 softplus",
        "batch_size": BATCH, "rows": rows, "tensorflow": tf.__version__,
        "keras": keras.__version__, "machine": platform.machine(), "cpus": os.cpu_count()})
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
