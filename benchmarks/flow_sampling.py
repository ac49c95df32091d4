"""Sampling an autoregressive flow: the per-coordinate inverse of `dde.flows` against the
whole-MADE inverse, side by side in one run.

    python benchmarks/flow_sampling.py [--dims 10,27,64,81] [--n 2048] [--threads 1]
                                       [--quick] [--out FILE]

x = T⁻¹(z) of an autoregressive layer takes d passes (θ_i needs x_{<i}). The reference pass
evaluates the whole MADE ([batch, d, P] parameters) and inverts the spline at every
coordinate, keeping coordinate i: d·(H·d·P + d spline inversions) per row and layer for
the output layer and the spline. `AutoregressiveLayer.inverse` evaluates only coordinate i's
P outputs (`MADE.coordinate_params`) and one spline inversion per pass: the hidden layers
are the same, the output layer and the spline d times cheaper.

The flow is the density benchmark's RQ-NSF (5 layers, MADE 128 × 128, 8 bins, learned
tails), its output layers set to small random weights (an untrained flow is the identity);
both samplers run in one `tf.function` on the same latent draws, timed after a warm-up
call (best of `--repeats`). The table gives ms per sample, the ratio and the largest
difference between the two samples (rounding only). Writes JSON (default
`benchmarks/results/flow_sampling.json`).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402


def whole_made_inverse(layer, z):
    """The reference inverse of an `AutoregressiveLayer`: every pass evaluates the whole
    MADE and inverts τ at every coordinate (after pass i, x_{≤i} is exact)."""
    import tensorflow as tf

    def body(i, x):
        return i + 1, layer.scalar_transform.inverse(z, layer.made(x))

    _, x = tf.while_loop(lambda i, _: i < layer.input_dim, body,
                         (tf.constant(0), tf.zeros_like(z)))
    return x


def reference_from_latent(flow, z):
    """x = T⁻¹(z) of a `NormalizingFlow` with `whole_made_inverse` for its autoregressive
    layers (the other layers' own inverses)."""
    from dde.flows import AutoregressiveLayer

    h = z
    for layer in reversed(flow.flow_layers):
        h = whole_made_inverse(layer, h) if isinstance(layer, AutoregressiveLayer) \
            else layer.inverse(h)
    return h


def make_flow(d: int, seed: int = 0):
    """The density benchmark's RQ-NSF at d, its output layers random (scale 0.05)."""
    from dde.flows import NormalizingFlow

    flow = NormalizingFlow(d, transform="spline", structure="autoregressive", num_layers=5,
                           hidden_units=(128, 128), num_bins=8, learn_tails=True, seed=seed)
    rng = np.random.default_rng(seed)
    for w in flow.weights:
        if "masked_output" in w.path:
            w.assign(rng.normal(0.0, 0.05, w.shape).astype(np.float32))
    return flow


def time_call(fn, z, repeats: int) -> tuple[float, np.ndarray]:
    """(best wall seconds over `repeats` after a warm-up call, the output)."""
    out = fn(z).numpy()
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn(z).numpy()
        best = min(best, time.perf_counter() - start)
    return best, out


def measure(d: int, n: int, repeats: int) -> dict:
    import tensorflow as tf

    flow = make_flow(d)
    z = tf.random.stateless_normal([n, d], [d, 1])
    per_coordinate = tf.function(flow.from_latent)
    reference = tf.function(lambda v: reference_from_latent(flow, v))
    t_new, x_new = time_call(per_coordinate, z, repeats)
    t_ref, x_ref = time_call(reference, z, repeats)
    z_back = flow.to_latent(x_new)[0].numpy()
    return {"d": d, "n": n, "reference_ms_per_sample": 1e3 * t_ref / n,
            "per_coordinate_ms_per_sample": 1e3 * t_new / n, "speedup": t_ref / t_new,
            "max_abs_difference": float(np.abs(x_new - x_ref).max()),
            "max_abs_round_trip_error": float(np.abs(z_back - z.numpy()).max())}


def markdown(rows) -> str:
    lines = ["| d | n | whole MADE per pass, ms / sample | per coordinate, ms / sample | "
             "speed-up | max \\|Δx\\| | max \\|T(x) − z\\| |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['d']} | {r['n']} | {r['reference_ms_per_sample']:.3f} | "
                     f"{r['per_coordinate_ms_per_sample']:.3f} | {r['speedup']:.1f}× | "
                     f"{r['max_abs_difference']:.1e} | {r['max_abs_round_trip_error']:.1e} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dims", default="10,27,64,81")
    parser.add_argument("--n", type=int, default=2048, help="samples per timed call")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None,
                        help="TensorFlow intra- and inter-op threads (default: all cores)")
    parser.add_argument("--quick", action="store_true", help="d = 3 and 5, 64 samples")
    parser.add_argument("--out", default="benchmarks/results/flow_sampling.json")
    args = parser.parse_args(argv)
    try:
        dims = [int(v) for v in args.dims.split(",")]
        if min(dims) < 1 or args.n < 1 or args.repeats < 1:
            raise ValueError
    except ValueError:
        print(f"error: --dims must be positive integers separated by commas and --n, "
              f"--repeats positive (got {args.dims!r}, {args.n}, {args.repeats})",
              file=sys.stderr)
        return 2
    if args.quick:
        dims, args.n, args.repeats = [3, 5], 64, 1
    import tensorflow as tf

    from dde import _io

    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    rows = []
    for d in dims:
        rows.append(measure(d, args.n, args.repeats))
        print(f"d = {d}: {rows[-1]['speedup']:.1f}×", flush=True)
    table = markdown(rows)
    print(table)
    _io.write_json(args.out, {"benchmark": "flow_sampling", "rows": rows,
                              "threads": args.threads, "quick": args.quick,
                              "command": "python benchmarks/flow_sampling.py "
                                         + " ".join(argv if argv is not None
                                                    else sys.argv[1:]),
                              "machine": {"platform": platform.platform(),
                                          "cpus": os.cpu_count()}})
    _io.write_text(os.path.splitext(args.out)[0] + ".md", table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
