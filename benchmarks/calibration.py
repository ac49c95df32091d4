"""Calibration of the log Ẑ error bars: do the reported ±2·SE intervals cover the truth, and
does the reliability flag fire when they do not?

    python benchmarks/calibration.py [--quick] [--dims 2,10,21,43] [--seeds 100]
                                     [--families gaussian,mixture,banana,student_t]
                                     [--out FILE]

Targets with exactly known log Z (f = log p + c with p normalized and c known):
- gaussian: a correlated Gaussian (eigenvalues of the covariance from 0.2 to 3);
- mixture: three unequal components (weights 0.6, 0.3, 0.1), separated means, own covariances;
- banana: a rotated banana, each pair of coordinates (u₁, u₂ + b(u₁² − s²)) of a Gaussian u,
  rotated — a volume-preserving map, so Z = e^c;
- student_t: a correlated multivariate Student-t with 5 degrees of freedom.
Proposals are fitted to 2,000 exact draws of the target (`fits` independent fits per
configuration): the full-covariance Gaussian, the Student-t, a 4-component Gaussian mixture,
and AIS (HMC, from the Gaussian). 2,000 further draws are the reference samples of the
reliability checks, as a model's training data are in `model.normalize`: importance sampling
is unreliable when several lie beyond the proposal's largest weight, AIS when its reverse run
from them disagrees with the forward estimate (besides k̂ and the ESS). Every estimate is made `seeds` times at a small budget
(IS 5,000 samples, AIS 256 chains × 100 temperatures) and a few times at a large one (IS 2·10⁵,
AIS 2,048 chains × 300 temperatures).

Printed per configuration: runs marked reliable, coverage of log Z ± 2·SE among them, the
largest |error|/SE among them, the mean error in SE units (bias), and how many runs with an
error beyond 4·SE were *not* marked unreliable (the goal: none). Writes compact JSON with
every run (per configuration, one column per field).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from targets import FAMILIES, Target  # noqa: E402

PROPOSALS = ("gaussian", "student_t", "gmm", "ais")


# ------------------------------------------------------------------------------- runs
def run_configuration(family, d, proposal_kind, budget, fits, seeds, rng_seed=0):
    """Every run of one (target, proposal, budget): a list of dicts."""
    from dde import partition as P

    target = Target(family, d)
    f = target.energy()
    runs = []
    for fit in range(fits):
        rng = np.random.default_rng([rng_seed, fit, d, FAMILIES.index(family)])
        x_fit = target.sample(2000, rng)
        # Independent draws of the target: the reference samples of the reliability checks
        # (what the training data are to a fitted model).
        x_ref = target.sample(2000, rng)
        kind = "gaussian" if proposal_kind == "ais" else proposal_kind
        options = {"n_components": 4} if kind == "gmm" else {}
        q = P.make_proposal(kind, x_fit, seed=fit, **options)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for s in range(seeds):
                if proposal_kind == "ais":
                    chains = budget["ais_chains"]
                    refs = x_ref[np.random.default_rng([fit, s]).choice(len(x_ref), chains)]
                    r = P.estimate_log_partition(f, q, chains, batch_size=chains,
                                                 seed=[fit, s], method="ais",
                                                 num_steps=budget["ais_steps"],
                                                 reference_samples=refs,
                                                 on_low_ess="ignore")
                else:
                    r = P.estimate_log_partition(f, q, budget["is_samples"],
                                                 batch_size=min(budget["is_samples"], 20_000),
                                                 seed=[fit, s], reference_samples=x_ref,
                                                 on_low_ess="ignore")
                runs.append(_record(target, fit, s, r.log_z, r.stderr, r.ess, r.pareto_k,
                                    r.reliable, r.num_samples, r))
    return runs


def _record(target, fit, seed, log_z, stderr, ess, k, reliable, m, result):
    err = log_z - target.c
    return {"fit": fit, "seed": seed, "log_z": log_z, "true_log_z": target.c, "error": err,
            "stderr": stderr, "z_score": err / stderr if stderr > 0 else float("inf"),
            "ess": ess, "pareto_k": k, "reliable": bool(reliable), "num_samples": m,
            "reference_beyond_max": result.reference_beyond_max,
            "log_z_upper": result.log_z_upper, "stderr_upper": result.stderr_upper}


def summarize(runs) -> dict:
    rel = [r for r in runs if r["reliable"]]
    z = np.array([r["z_score"] for r in rel])
    missed = [r for r in runs if abs(r["z_score"]) > 4 and r["reliable"]]
    return {"runs": len(runs), "reliable": len(rel),
            "unreliable_share": 1 - len(rel) / len(runs) if runs else float("nan"),
            "coverage": float(np.mean(np.abs(z) <= 2)) if len(rel) else float("nan"),
            "max_abs_z": float(np.max(np.abs(z))) if len(rel) else float("nan"),
            "bias_se": float(np.mean(z)) if len(rel) else float("nan"),
            "beyond_4se_not_flagged": len(missed)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny budget (smoke test)")
    parser.add_argument("--dims", default="2,10,21,43")
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--proposals", default=",".join(PROPOSALS))
    parser.add_argument("--seeds", type=int, default=25, help="runs per proposal fit")
    parser.add_argument("--fits", type=int, default=4, help="proposal fits per configuration")
    parser.add_argument("--large-runs", type=int, default=5,
                        help="runs at the large budget (one fit)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" /
                                             "calibration.json"))
    parser.add_argument("--summarize", metavar="JSON", default=None,
                        help="print the tables of an existing results file and exit")
    parser.add_argument("--resume", action="store_true",
                        help="keep the configurations already in --out (the JSON is rewritten "
                             "after every configuration) and run only the missing ones")
    args = parser.parse_args(argv)
    if args.summarize:
        report = _load(Path(args.summarize))
        report["overall"] = overall(report["configurations"])
        print(summary_table(report) + "\n" + markdown(report))
        return 0
    dims = [int(v) for v in args.dims.split(",")]
    families = args.families.split(",")
    proposals = args.proposals.split(",")
    small = {"is_samples": 5000, "ais_chains": 256, "ais_steps": 100}
    large = {"is_samples": 200_000, "ais_chains": 2048, "ais_steps": 300}
    if args.quick:
        dims, small = dims[:1], {"is_samples": 500, "ais_chains": 32, "ais_steps": 10}
        large = {"is_samples": 2000, "ais_chains": 64, "ais_steps": 20}
        args.seeds, args.fits, args.large_runs = 3, 1, 1
    report = {"quick": args.quick, "budgets": {"small": small, "large": large},
              "configurations": [], "complete": False}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.resume and out.exists():
        previous = _load(out)
        if previous.get("budgets") == report["budgets"]:
            report["configurations"] = previous["configurations"]
    done = {(r["family"], r["d"], r["proposal"], r["budget"]) for r in report["configurations"]}
    from dde import _io

    start = time.perf_counter()
    for family in families:
        for d in dims:
            for prop in proposals:
                for label, budget, fits, seeds in (("small", small, args.fits, args.seeds),
                                                   ("large", large, 1, args.large_runs)):
                    if (family, d, prop, label) in done:
                        continue
                    t0 = time.perf_counter()
                    runs = run_configuration(family, d, prop, budget, fits, seeds)
                    row = {"family": family, "d": d, "proposal": prop, "budget": label,
                           **summarize(runs), "seconds": time.perf_counter() - t0,
                           "runs_detail": runs}
                    report["configurations"].append(row)
                    print(f"[{time.perf_counter() - start:7.1f}s] {family:9s} d={d:2d} "
                          f"{prop:9s} {label:5s}: reliable {row['reliable']:3d}/{row['runs']}, "
                          f"coverage {row['coverage']:.2f}, max|z| {row['max_abs_z']:.1f}, "
                          f"bias {row['bias_se']:+.2f}, >4SE unflagged "
                          f"{row['beyond_4se_not_flagged']}", flush=True)
                    _io.write_text(out, _dumps(report))
    order = {(f, d, p, b): i for i, (f, d, p, b) in enumerate(
        (f, d, p, b) for f in families for d in dims for p in proposals
        for b in ("small", "large"))}
    report["configurations"].sort(key=lambda r: order.get(
        (r["family"], r["d"], r["proposal"], r["budget"]), len(order)))
    report["overall"] = overall(report["configurations"])
    report["complete"] = True
    table = summary_table(report) + "\n" + markdown(report)
    print(table)
    _io.write_text(out, _dumps(report))
    _io.write_text(out.with_suffix(".md"), table)
    return 0


#: The per-run fields kept in the JSON (rounded to 6 significant digits, so that the file of
#: 6,720 runs stays small).
RUN_FIELDS = ("fit", "seed", "error", "stderr", "z_score", "ess", "pareto_k", "reliable",
              "num_samples", "reference_beyond_max", "log_z_upper")


def _dumps(report: dict) -> str:
    """The JSON text of a report: compact (no indentation), runs as columns."""
    return json.dumps(_compact(report), default=float, separators=(",", ":")) + "\n"


def _compact(report: dict) -> dict:
    """The report with each configuration's runs as columns ({field: [value per run]})."""
    def column(c, k):
        return [float(f"{r[k]:.6g}") if isinstance(r[k], float) else r[k]
                for r in c["runs_detail"]]
    return {**report, "configurations": [
        {**{k: v for k, v in c.items() if k != "runs_detail"},
         "runs_detail": {k: column(c, k) for k in RUN_FIELDS if c["runs_detail"]
                         and k in c["runs_detail"][0]}}
        for c in report["configurations"]]}


def _load(path: Path) -> dict:
    """A results file with each configuration's runs back as a list of dicts."""
    report = json.loads(path.read_text())
    for c in report["configurations"]:
        runs = c["runs_detail"]
        if isinstance(runs, dict):
            n = len(next(iter(runs.values()), []))
            c["runs_detail"] = [{k: v[i] for k, v in runs.items()} for i in range(n)]
    return report


def overall(rows) -> dict:
    out = {}
    for label in ("small", "large"):
        runs = [r for row in rows if row["budget"] == label for r in row["runs_detail"]]
        if runs:
            out[label] = summarize(runs)
    return out


def summary_table(report) -> str:
    """Per target family and proposal, over every d: runs marked reliable, coverage of ±2·SE
    among them and runs beyond 4·SE not flagged (small budget; the large budget pooled)."""
    rows = report["configurations"]
    families = list(dict.fromkeys(r["family"] for r in rows))
    proposals = list(dict.fromkeys(r["proposal"] for r in rows))
    lines = ["| target | " + " | ".join(proposals) + " | large budget (all proposals) |",
             "|---|" + "---|" * (len(proposals) + 1)]
    for family in families:
        cells = []
        for prop in proposals + [None]:
            runs = [x for r in rows if r["family"] == family
                    and (r["proposal"] == prop if prop else r["budget"] == "large")
                    and (r["budget"] == "small" or prop is None) for x in r["runs_detail"]]
            s = summarize(runs)
            cov = "—" if not s["reliable"] else f"{s['coverage']:.2f}"
            cells.append(f"{cov} ({s['reliable']}/{s['runs']}; {s['beyond_4se_not_flagged']})")
        lines.append(f"| {family} | " + " | ".join(cells) + " |")
    return ("Cells: coverage of log Z ± 2·SE among runs marked reliable (reliable / runs; runs "
            "more than 4 SE off and not flagged).\n\n" + "\n".join(lines) + "\n")


def markdown(report) -> str:
    lines = ["| target | d | proposal | budget | reliable | coverage ±2SE | max abs z | "
             "bias (SE) | >4SE not flagged |", "|---|---|---|---|---|---|---|---|---|"]
    for r in report["configurations"]:
        lines.append(f"| {r['family']} | {r['d']} | {r['proposal']} | {r['budget']} | "
                     f"{r['reliable']}/{r['runs']} | {r['coverage']:.2f} | "
                     f"{r['max_abs_z']:.1f} | {r['bias_se']:+.2f} | "
                     f"{r['beyond_4se_not_flagged']} |")
    for label, s in report["overall"].items():
        lines.append(f"| **all** | | | {label} | {s['reliable']}/{s['runs']} | "
                     f"**{s['coverage']:.3f}** | {s['max_abs_z']:.1f} | {s['bias_se']:+.2f} | "
                     f"**{s['beyond_4se_not_flagged']}** |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
