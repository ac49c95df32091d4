"""How far beyond one process and one in-memory array does `dde` go?

    python benchmarks/scale.py --donors ../shared/data/adbench/11_donors.npz \
        [--scratch /tmp/dde-scale] [--rows 1000000] [--epochs 1] [--out FILE]

Measures, each command in a fresh process (peak resident memory by getrusage of the child):

1. the streaming pass (rows/s of `dde.streaming.streaming_statistics`) and the shuffled
   tf.data training pipeline over .npy, CSV and Parquet copies of ADBench donors (619,326
   rows × 10, standardized; written to --scratch, never to the repository);
2. `dde fit --data` on each copy: peak RSS and training rows/s, against the same rows
   given as .npz (read whole into memory);
3. `dde fit --workers 2` (two MultiWorkerMirroredStrategy workers on 127.0.0.1) against one
   process: training time and speed-up;
4. `dde score` (a detector) and `dde density` on --rows random rows and on twice as many:
   peak RSS (bounded: it must not grow with the rows) and rows/s;
5. `dde export` of the trained model and detector: the largest difference between the
   SavedModel's outputs (loaded by TensorFlow alone) and the model's, on 10,000 rows.

Prints markdown tables and writes JSON (default benchmarks/results/scale.json).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

def _status(pid):
    """{field: kB} of /proc/PID/status's RssAnon and RssFile (empty once it has exited)."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            return {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in handle)
                    if k in ("RssAnon", "RssFile", "VmHWM")}
    except (OSError, ValueError):
        return {}


def _tree(pid):
    """pid and its descendants (Linux /proc/PID/task/PID/children)."""
    out = [pid]
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as handle:
            for child in handle.read().split():
                out += _tree(int(child))
    except OSError:
        pass
    return out


def measured(argv):
    """Run argv (a fresh process) and return {seconds, peak_rss_mb (the largest VmHWM of
    a process of its tree: file-backed pages of memory-mapped inputs included),
    peak_anon_mb (the largest anonymous RSS of one process, memory the run allocated), both
    polled every 50 ms, stdout}. Raises on failure."""
    import threading

    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2",
                                 "CUDA_VISIBLE_DEVICES": ""})
    result = {}
    reader = threading.Thread(target=lambda: result.update(
        zip(("stdout", "stderr"), proc.communicate())))
    reader.start()
    anon = hwm = 0
    while reader.is_alive():
        for pid in _tree(proc.pid):
            status = _status(pid)
            anon = max(anon, status.get("RssAnon", 0))
            hwm = max(hwm, status.get("VmHWM", 0))
        time.sleep(0.05)
    reader.join()
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {result['stderr'][-2000:]}")
    return {"seconds": seconds, "peak_rss_mb": hwm / 1024.0, "peak_anon_mb": anon / 1024.0,
            "stdout": result["stdout"][-2000:]}


def reported_rate(stdout):
    """The 'N rows/s' a dde command printed (its own work, without start-up)."""
    import re

    found = re.findall(r"([\d,]+) rows/s", stdout)
    return float(found[-1].replace(",", "")) if found else None


def dde(*args):
    return [sys.executable, "-m", "dde_cli", *map(str, args)]


def write_copies(donors: Path, scratch: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    x = np.load(donors)["X"].astype(np.float64)
    x = ((x - x.mean(0)) / np.where(x.std(0) > 0, x.std(0), 1.0)).astype(np.float32)
    paths = {k: scratch / f"donors.{k}" for k in ("npy", "csv", "parquet", "npz")}
    np.save(paths["npy"], x)
    np.savetxt(paths["csv"], x, delimiter=",", fmt="%.9g",
               header=",".join(f"x{j}" for j in range(x.shape[1])), comments="")
    pq.write_table(pa.table({f"x{j}": x[:, j] for j in range(x.shape[1])}), paths["parquet"])
    np.savez(paths["npz"], X=x)
    return x, paths


def streaming_rates(paths):
    from dde import streaming

    rows = {}
    for kind in ("npy", "csv", "parquet"):
        source = streaming.open_rows(paths[kind])
        start = time.perf_counter()
        stats = streaming.streaming_statistics(source)
        rows[kind] = stats.count / (time.perf_counter() - start)
    source = streaming.open_rows(paths["npy"])
    ds = streaming.training_dataset(source, batch_size=512, seed=0)
    n, start = 0, time.perf_counter()
    for batch in ds.take(600):
        n += int(batch.shape[0])
    rows["pipeline (npy)"] = n / (time.perf_counter() - start)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--donors", required=True, type=Path)
    parser.add_argument("--scratch", type=Path, default=None)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--big-factor", type=int, default=8,
                        help="the larger training file holds donors this many times")
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).parent / "results" / "scale.json")
    args = parser.parse_args(argv)
    scratch = args.scratch or Path(tempfile.mkdtemp(prefix="dde-scale-"))
    scratch.mkdir(parents=True, exist_ok=True)
    x, paths = write_copies(args.donors, scratch)
    result = {"rows": int(len(x)), "dimension": int(x.shape[1]), "epochs": args.epochs,
              "file_mb": {k: p.stat().st_size / 2**20 for k, p in paths.items()}}

    result["streaming_rows_per_s"] = streaming_rates(paths)

    fit_common = ["--epochs", args.epochs, "--batch-size", 512, "--quiet", "--seed", 0]
    result["fit"] = {}
    runs = [(kind, paths[kind], len(x)) for kind in ("npy", "csv", "parquet", "npz")]
    big = scratch / "big.npy"  # a larger file of the same kind: memory must not follow it
    np.save(big, np.tile(x, (args.big_factor, 1)))
    runs.append((f"npy ×{args.big_factor}", big, args.big_factor * len(x)))
    for kind, path, n in runs:
        out = scratch / f"run-{kind.split()[0]}{'-big' if ' ' in kind else ''}"
        m = measured(dde("fit", "--data", path, "--out", out, *fit_common))
        metrics = json.loads((out / "metrics.json").read_text())
        result["fit"][kind] = {
            "rows": n, "file_mb": path.stat().st_size / 2**20,
            "peak_rss_mb": m["peak_rss_mb"], "peak_anon_mb": m["peak_anon_mb"],
            "wall_seconds": m["seconds"], "training_seconds": metrics["training_seconds"],
            "training_rows_per_s": metrics["n_train"] * args.epochs
            / metrics["training_seconds"], "final_loss": metrics["final_loss"]}
    big.unlink()
    out = scratch / "run-workers"
    m = measured(dde("fit", "--data", paths["npy"], "--out", out, "--workers", 2, *fit_common))
    two = json.loads((out / "metrics.json").read_text())
    one = result["fit"]["npy"]
    result["workers"] = {"one_process_training_seconds": one["training_seconds"],
                         "two_workers_training_seconds": two["training_seconds"],
                         "speed_up": one["training_seconds"] / two["training_seconds"],
                         "two_workers_wall_seconds": m["seconds"],
                         "peak_rss_mb_per_worker": m["peak_rss_mb"],
                         "final_loss_one": one["final_loss"],
                         "final_loss_two": two["final_loss"]}

    det = scratch / "det"
    measured(dde("fit", "--detector", "--data", paths["npy"], "--out", det, "--max-steps",
                 300, "--activation", "softplus", "--detector-noise-std", 0.3, "--quiet"))
    model = scratch / "run-npy" / "model.keras"
    result["scoring"] = {}
    rng = np.random.default_rng(0)
    for n in (args.rows, 2 * args.rows):
        q = scratch / f"rows-{n}.npy"
        np.save(q, rng.normal(size=(n, x.shape[1])).astype(np.float32))
        for command in ("score", "density"):
            target = det / "detector.zip" if command == "score" else model
            m = measured(dde(command, "--model", target, "--data", q, "--out",
                             scratch / f"{command}-{n}.csv", "--quiet"))
            result["scoring"][f"{command} {n}"] = {
                "rows": n, "peak_rss_mb": m["peak_rss_mb"], "peak_anon_mb": m["peak_anon_mb"],
                "wall_seconds": m["seconds"], "rows_per_s": reported_rate(m["stdout"])}
            (scratch / f"{command}-{n}.csv").unlink()
        q.unlink()

    for name, target in (("density", model), ("detector", det / "detector.zip")):
        measured(dde("export", "--model", target, "--out", scratch / f"export-{name}",
                     "--quiet"))
    result["export_max_abs_diff"] = export_parity(scratch, model, det / "detector.zip",
                                                  x[:10_000])

    report(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out} (scratch files in {scratch})")
    return 0


def export_parity(scratch, model_path, detector_path, x):
    import keras
    import tensorflow as tf

    import dde

    model = keras.models.load_model(model_path)
    det = dde.DDEAnomalyDetector.load(detector_path)
    a = tf.saved_model.load(str(scratch / "export-density")).signatures
    b = tf.saved_model.load(str(scratch / "export-detector")).signatures
    xt = tf.constant(x)
    return {
        "log_density": float(np.abs(a["log_density"](x=xt)["log_density"].numpy()
                                    - model.log_density(x)).max()),
        "score": float(np.abs(a["score"](x=xt)["score"].numpy() - model.score(x)).max()),
        "score_samples": float(np.abs(b["score_samples"](x=xt)["score_samples"].numpy()
                                      - det.score_samples(x)).max()),
        "predict_disagreements": int((b["predict"](x=xt)["predict"].numpy()
                                      != det.predict(x)).sum()),
    }


def report(r):
    print(f"## Streaming ({r['rows']:,} rows × {r['dimension']})\n")
    print("| source | rows/s |\n|---|---|")
    for k, v in r["streaming_rows_per_s"].items():
        print(f"| {k} | {v:,.0f} |")
    print(f"\n## dde fit --data ({r['epochs']} epoch, batch 512)\n")
    print("| file | rows | size (MB) | peak RSS (MB) | peak anonymous RSS (MB) | "
          "training rows/s | wall (s) |\n|---|---|---|---|---|---|---|")
    for k, v in r["fit"].items():
        print(f"| .{k}{' (read whole)' if k == 'npz' else ''} | {v['rows']:,} | "
              f"{v['file_mb']:.0f} | {v['peak_rss_mb']:.0f} | {v['peak_anon_mb']:.0f} | "
              f"{v['training_rows_per_s']:,.0f} | {v['wall_seconds']:.1f} |")
    w = r["workers"]
    print(f"\n## Two workers on 127.0.0.1\n\none process {w['one_process_training_seconds']:.1f} s,"
          f" two workers {w['two_workers_training_seconds']:.1f} s: speed-up "
          f"{w['speed_up']:.2f}× (final loss {w['final_loss_one']:.4f} vs "
          f"{w['final_loss_two']:.4f}; peak RSS per worker {w['peak_rss_mb_per_worker']:.0f} MB)")
    print("\n## Batch scoring\n\n| command | rows | peak RSS (MB) | peak anonymous RSS (MB) | "
          "rows/s | wall (s) |\n|---|---|---|---|---|---|")
    for k, v in r["scoring"].items():
        print(f"| dde {k.split()[0]} | {v['rows']:,} | {v['peak_rss_mb']:.0f} | "
              f"{v['peak_anon_mb']:.0f} | {v['rows_per_s'] or float('nan'):,.0f} | "
              f"{v['wall_seconds']:.1f} |")
    print(f"\n## Export parity (10,000 rows)\n\n{r['export_max_abs_diff']}")


if __name__ == "__main__":
    sys.exit(main())
