"""`dde fit --workers N`: a multi-worker run on this machine.

Starts N copies of the same `dde fit` command (without `--workers`), each with its own
`TF_CONFIG` naming the N workers at free ports of 127.0.0.1, so that they train together
with `tf.distribute.MultiWorkerMirroredStrategy` exactly as N machines of a cluster would
(see the README). Worker 0, the chief, prints its progress and writes --out; the others log
to temporaries that are shown when they fail. When one worker fails, the others are stopped
and the command fails (exit 2, nothing written by the chief unless it had finished). At
the end the workers' weights are compared (SHA-256 of all variables): a synchronous run
ends with the same weights on every worker, anything else is an error.

Standard library only: the launcher itself never starts TensorFlow.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dde_cli._common import TEMP_PREFIX


def free_ports(n: int, host: str = "127.0.0.1") -> list:
    """n distinct ports that were free on `host` a moment ago (bound, then released)."""
    sockets, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind((host, 0))
            sockets.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in sockets:
            s.close()
    return ports


def tf_configs(n: int, host: str = "127.0.0.1", ports=None) -> list:
    """The `TF_CONFIG` (JSON text) of each of n workers of a cluster on `host`."""
    ports = free_ports(n, host) if ports is None else list(ports)
    cluster = {"worker": [f"{host}:{p}" for p in ports]}
    return [json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})
            for i in range(n)]


def _without(argv, flag):
    """argv without `flag VALUE` / `flag=VALUE`."""
    out, skip = [], False
    for item in argv:
        if skip:
            skip = False
        elif item == flag:
            skip = True
        elif not item.startswith(flag + "="):
            out.append(item)
    return out


def launch_local_workers(args) -> int:
    """Run args' `dde fit` as `args.workers` local worker processes; see the module."""
    n = args.workers
    argv = _without(_without(list(args.argv), "--workers"), "--worker-report")
    scratch = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-workers-"))
    procs, logs = [], []
    try:
        for i, config in enumerate(tf_configs(n)):
            report = scratch / f"worker-{i}.json"
            env = {**os.environ, "TF_CONFIG": config}
            log = None if i == 0 else open(scratch / f"worker-{i}.log", "w")
            logs.append(log)
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "dde_cli", *argv, "--worker-report", str(report)],
                env=env, stdout=log, stderr=subprocess.STDOUT if log else None))
        failed = _wait(procs)
        if failed is not None:
            i, code = failed
            raise RuntimeError(f"worker {i} of {n} failed (exit status {code})"
                               + _last_line(scratch / f"worker-{i}.log" if i else None)
                               + "; the other workers were stopped.")
        digests = {}
        for i in range(n):
            report = json.loads((scratch / f"worker-{i}.json").read_text())
            digests[i] = report["weights_sha256"]
        if len(set(digests.values())) != 1:
            raise RuntimeError(f"the {n} workers ended with different weights "
                               f"({digests}): the run was not synchronous.")
        print(f"dde fit --workers {n}: every worker ended with the same weights "
              f"(SHA-256 {digests[0][:16]}…)")
        if args.worker_report is not None:
            shutil.copyfile(scratch / "worker-0.json", args.worker_report)
        return 0
    finally:
        for proc in procs:  # only the processes started here
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        for log in logs:
            if log is not None:
                log.close()
        shutil.rmtree(scratch, ignore_errors=True)


def _wait(procs):
    """Wait until all exit 0 (→ None) or one fails (→ (index, status))."""
    while True:
        codes = [p.poll() for p in procs]
        for i, code in enumerate(codes):
            if code not in (None, 0):
                return i, code
        if all(code == 0 for code in codes):
            return None
        time.sleep(0.2)


def _last_line(log) -> str:
    if log is None or not Path(log).exists():
        return ""
    lines = [line.strip() for line in Path(log).read_text(errors="replace").splitlines()
             if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    return f": {(errors or lines or [''])[-1][:300]}" if lines else ""
