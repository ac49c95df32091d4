"""How the settings of the tempered-SMC start (`dde.smc.tempered_smc`) change the spread of
mode shares, on the exact 8gaussians density p_σ (σ = 0.1) from the data Gaussian.

For each setting (ESS kept per reweighting, kernel, moves per temperature) and `--seeds`
seeds, M particles: the standard deviation over seeds of each mode's share (mean over the 8
modes; the binomial floor sqrt(p(1 − p)/M) for exact independent draws is printed), the
largest |share − 1/8|, the temperatures used, evaluations per particle and the spread of
log Ẑ (exact: 0). Prints a markdown table and writes JSON.

    python benchmarks/smc_settings.py [--particles 4000] [--seeds 10] [--out benchmarks/results/smc_settings.json]
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

import dde  # noqa: E402
from dde import _io  # noqa: E402
from sampler_weights import shares  # noqa: E402
from sampling import EIGHT_STD, SIGMA, eight_gaussians_log_prob  # noqa: E402

SETTINGS = [(0.5, "hmc", 2), (0.9, "hmc", 2), (0.9, "hmc", 3), (0.95, "hmc", 5),
            (0.9, "mala", 10)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--particles", type=int, default=4000)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--out", default="benchmarks/results/smc_settings.json")
    args = parser.parse_args(argv)
    var = 4.0 + EIGHT_STD ** 2 + SIGMA ** 2  # per-coordinate variance of p_σ
    proposal = dde.partition.gaussian_from_moments(np.zeros(2), var * np.eye(2))
    rows = []
    for target_ess, kernel, moves in SETTINGS:
        fractions, log_z, start = [], [], time.perf_counter()
        for seed in range(args.seeds):
            res = dde.tempered_smc(lambda x: eight_gaussians_log_prob(x, SIGMA), proposal,
                                   args.particles, seed=seed, target_ess=target_ess,
                                   kernel=kernel, num_moves=moves)
            fractions.append(shares(res.samples))
            log_z.append(res.log_z)
        fractions = np.array(fractions)
        rows.append({"target_ess": target_ess, "kernel": kernel, "num_moves": moves,
                     "share_sd": float(fractions.std(0, ddof=1).mean()),
                     "max_share_error": float(np.abs(fractions - 1 / 8).max()),
                     "num_temperatures": len(res.temperatures) - 1,
                     "evaluations": res.num_evaluations,
                     "log_z_mean": float(np.mean(log_z)), "log_z_sd": float(np.std(log_z)),
                     "seconds_per_run": (time.perf_counter() - start) / args.seeds})
    floor = float(np.sqrt(1 / 8 * 7 / 8 / args.particles))
    print(f"\n{args.particles} particles, {args.seeds} seeds; binomial floor of a share's SD "
          f"{floor:.4f}\n")
    print("| ESS kept | kernel | moves per temperature | temperatures | evaluations | share SD "
          "| max abs(share − 1/8) | log Ẑ mean ± SD |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['target_ess']} | {r['kernel']} | {r['num_moves']} | "
              f"{r['num_temperatures']} | {r['evaluations']} | {r['share_sd']:.4f} | "
              f"{r['max_share_error']:.4f} | {r['log_z_mean']:+.4f} ± {r['log_z_sd']:.4f} |")
    _io.write_json(args.out, {"benchmark": "smc_settings", "particles": args.particles,
                              "seeds": args.seeds, "binomial_share_sd": floor, "rows": rows})
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
