"""This CPU's arithmetic limit, measured through TensorFlow, and the floating-point cost of the
networks' steps: the anchor of the throughput benchmarks (achieved / peak).

- `matmul_peak(sizes)`: sustained float32 matrix-multiply rate (FLOP/s, 2n³ per n×n product)
  of chains of products inside one `tf.function`, best over square sizes and repeats.
- `dense_flops(sizes, batch)`: F = 2·batch·Σ in·out, the multiply-adds of one forward pass of
  an MLP with layer sizes [d, w, …, w, 1] (elementwise work and the optimizer's update,
  O(batch·Σ out) and O(parameters), are left out: below 2 % at width ≥ 128).
- `dsm_step_flops`: one denoising score-matching training step costs 6F — the forward pass
  (F), the input gradient ∇ₓf (F, one product by Wᵀ per layer) and the parameter gradient of
  a loss of that input gradient (4F: each of those 2 products per layer has 2 operands).
- `langevin_step_flops`: one ULA / MALA step of a chain evaluates f and ∇ₓf: 2F per chain.

    python benchmarks/roofline.py    # prints the measured peak
"""
from __future__ import annotations

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402


def matmul_peak(sizes=(256, 512, 1024, 2048), chain: int = 8, repeats: int = 5) -> dict:
    """Best sustained float32 matmul FLOP/s over square sizes: {"flops": rate, "size": n,
    "by_size": {n: rate}} (each timing runs `chain` dependent n×n products in one graph)."""
    by_size = {}
    for n in sizes:
        a = tf.random.stateless_normal([n, n], [0, n]) / np.sqrt(n)
        b = tf.random.stateless_normal([n, n], [1, n]) / np.sqrt(n)

        @tf.function
        def run(a, b):
            x = a
            for _ in range(chain):
                x = tf.linalg.matmul(x, b)
            return tf.reduce_sum(x)

        run(a, b).numpy()  # trace and warm up
        best = np.inf
        for _ in range(repeats):
            start = time.perf_counter()
            run(a, b).numpy()
            best = min(best, time.perf_counter() - start)
        by_size[n] = 2.0 * n ** 3 * chain / best
    n_best = max(by_size, key=by_size.get)
    return {"flops": by_size[n_best], "size": n_best, "by_size": by_size}


def dense_flops(sizes, batch: int) -> float:
    """F = 2·batch·Σ_l in_l·out_l for layer sizes [d, w₁, …, 1]."""
    return 2.0 * batch * float(sum(a * b for a, b in zip(sizes[:-1], sizes[1:])))


def mlp_sizes(d: int, depth: int, width: int) -> list:
    """[d, width × depth, 1]: the layer sizes of `dde.nets.energy_mlp(d, depth, width)`."""
    return [d] + [width] * depth + [1]


def dsm_step_flops(d: int, depth: int, width: int, batch: int) -> float:
    """FLOPs of one DSM training step of an energy MLP: 6F (see module)."""
    return 6.0 * dense_flops(mlp_sizes(d, depth, width), batch)


def langevin_step_flops(d: int, depth: int, width: int, chains: int) -> float:
    """FLOPs of one Langevin step (f and ∇ₓf) of `chains` chains: 2F."""
    return 2.0 * dense_flops(mlp_sizes(d, depth, width), chains)


if __name__ == "__main__":
    peak = matmul_peak()
    print("float32 matmul:", {n: f"{r / 1e9:.1f} GFLOP/s" for n, r in peak["by_size"].items()})
    print(f"peak {peak['flops'] / 1e9:.1f} GFLOP/s at n = {peak['size']}")
