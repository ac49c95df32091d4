"""Development runs for the flow defaults of `density.py`: validation log-likelihoods only.

    python benchmarks/flows_dev.py [--dataset NAME[,NAME...]] [--data-dir DIR]
                                   [--methods MAF,RQ-NSF] [--variants JSON] [--seed S]
                                   [--threads N] [--out FILE]

Each variant is a dict of `density.Budget` fields over the defaults (default variants: one
change at a time — tail bound, depth, width, learning rate, batch size, whitening). Every
(data set, method, variant) trains the flow exactly as `density.py` does (`fit_flow`: early
stopping on the validation split, best weights restored) and reports the validation average
log-likelihood (nats per example) and the training steps and time. The test split is never
evaluated: the defaults of `density.py` are chosen from these numbers. Default data sets:
iris, wine, adbench:magic.gamma, adbench:annthyroid. Writes JSON (default
`benchmarks/results/flows_dev.json`) and a markdown table beside it.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, fields
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from density import FLOWS, Budget, fit_flow, log  # noqa: E402

DEFAULT_SETS = "iris,wine,adbench:magic.gamma,adbench:annthyroid"
DEFAULT_VARIANTS = {
    "default": {},
    "tail_bound=5": {"nsf_tail_bound": 5.0},
    "layers=10": {"maf_layers": 10, "nsf_layers": 10},
    "hidden=256": {"maf_hidden": [256, 256], "nsf_hidden": [256, 256]},
    "lr=5e-4": {"flow_learning_rate": 5e-4},
    "batch=512": {"flow_batch_size": 512},
    "whiten": {"flow_whiten": True},
}
# Fields that only one method reads: a variant changing only those is skipped for the other.
_ONLY = {"MAF": {"maf_"}, "RQ-NSF": {"nsf_"}}


def _applies(method: str, overrides: dict) -> bool:
    other = [p for m, prefixes in _ONLY.items() if m != method for p in prefixes]
    return not overrides or any(not k.startswith(tuple(other)) for k in overrides)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default=DEFAULT_SETS)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--methods", default=",".join(FLOWS))
    parser.add_argument("--variants", default=None,
                        help='JSON {"name": {Budget field: value}, ...}')
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="TensorFlow intra- and inter-op threads (default 1)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" /
                                             "flows_dev.json"))
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.dataset.split(",") if n.strip()]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    known = {f.name for f in fields(Budget)}
    try:
        variants = json.loads(args.variants) if args.variants else DEFAULT_VARIANTS
        bad = [k for v in variants.values() for k in v if k not in known]
        if bad or set(methods) - set(FLOWS):
            raise ValueError(f"unknown Budget fields {bad} or methods {methods}")
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    import keras
    import tensorflow as tf

    from dde import _io

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    from dde.datasets import load_splits

    results = {}
    for name in names:
        splits = load_splits(name, args.data_dir)
        for method in methods:
            for vname, overrides in variants.items():
                if not _applies(method, overrides):
                    continue
                budget = Budget(**{**asdict(Budget()), **overrides})
                t0 = time.perf_counter()
                flow, record = fit_flow(splits, method, budget, args.seed)
                val = flow.log_prob(splits.validation)
                entry = {"val_all": float(np.mean(val)),
                         "val_se": float(np.std(val, ddof=1) / np.sqrt(len(val))),
                         "steps": record["steps"], "skipped_steps": record["skipped_steps"],
                         "seconds": time.perf_counter() - t0}
                results.setdefault(name, {}).setdefault(method, {})[vname] = entry
                log(f"{name} {method} {vname}: validation ALL {entry['val_all']:.3f} ± "
                    f"{2 * entry['val_se']:.3f}, {entry['steps']} steps, "
                    f"{entry['seconds']:.0f} s")
                keras.backend.clear_session()
    lines = ["| data set | method | " + " | ".join(variants) + " |",
             "|---|---|" + "---|" * len(variants)]
    for name, by_method in results.items():
        for method, row in by_method.items():
            cells = [f"{row[v]['val_all']:.3f} ({row[v]['steps']}, {row[v]['seconds']:.0f} s)"
                     if v in row else "—" for v in variants]
            lines.append(f"| {name} | {method} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print("\n" + table)
    _io.write_json(args.out, {"benchmark": "flows_dev", "variants": variants,
                              "seed": args.seed, "results": results, "table": table,
                              "budget": asdict(Budget())})
    _io.write_text(Path(args.out).with_suffix(".md"),
                   "# Flow defaults: validation average log-likelihood (training steps, "
                   f"seconds)\n\nCommand: `python benchmarks/flows_dev.py "
                   f"{' '.join(argv or sys.argv[1:])}`\n\n{table}\n")
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
