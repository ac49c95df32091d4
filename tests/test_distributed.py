"""Training beyond one process (`dde.distributed`, `dde fit --workers`, `TF_CONFIG`,
`--checkpoint-dir`): real worker processes on 127.0.0.1 at free ports, with a time bound,
and a real kill of a training process.

Each multi-worker test starts two `dde fit` processes that train together with
MultiWorkerMirroredStrategy (about a minute on a shared 2-core machine)."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from dde.distributed import task_info
from dde_cli.workers import tf_configs

TIMEOUT = 420


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dist")
    x = np.random.default_rng(0).normal(size=(6000, 3)).astype("float32")
    np.save(folder / "x.npy", x)
    return folder / "x.npy"


def fit_command(data, out, *extra):
    return [sys.executable, "-m", "dde_cli", "fit", "--data", str(data), "--out", str(out),
            "--epochs", "2", "--width", "16", "--depth", "2", "--batch-size", "256",
            "--learning-rate", "3e-3", "--lr-schedule", "constant", "--quiet", *extra]


def env(**more):
    return {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "2", **more}


def test_two_workers_match_one_process_and_end_with_identical_weights(data_file, tmp_path):
    """Two workers (TF_CONFIG as on a cluster) against one process on the same file and
    options, from the same initial weights. The first epoch's loss agrees within 5 %: the
    replicas draw other noise and read other batches than the single process, so the
    agreement is statistical (the epoch loss averages 21 batches of 256 noisy rows; 5 % is
    several times the spread of that average between seeds, so a chance failure is rare,
    and the fixed seeds make each run the same). The division of each replica's loss by
    the number of replicas is tested under MirroredStrategy with SGD in tests/test_models.py
    (Adam, used here, is blind to a constant gradient scale); here the replica count must
    be 2 and both workers must end with bit-identical weights (SHA-256 of every variable),
    with the same row count and σ path as the single process."""
    single = subprocess.run(fit_command(data_file, tmp_path / "one", "--worker-report",
                                        str(tmp_path / "one.json")),
                            capture_output=True, text=True, timeout=TIMEOUT, env=env())
    assert single.returncode == 0, single.stderr[-2000:]
    procs = [subprocess.Popen(fit_command(data_file, tmp_path / "two", "--worker-report",
                                          str(tmp_path / f"w{i}.json")),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env(TF_CONFIG=config))
             for i, config in enumerate(tf_configs(2))]
    try:
        outs = [p.communicate(timeout=TIMEOUT) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    one = json.loads((tmp_path / "one.json").read_text())
    w0, w1 = (json.loads((tmp_path / f"w{i}.json").read_text()) for i in (0, 1))
    assert (one["replicas"], w0["replicas"], w1["replicas"]) == (1, 2, 2)
    assert w0["weights_sha256"] == w1["weights_sha256"]
    assert w0["weights_sha256"] != one["weights_sha256"]
    np.testing.assert_allclose(w0["history"]["loss"][0], one["history"]["loss"][0], rtol=0.05)
    # the same data statistics and σ schedule on every worker, and as in one process
    assert w0["n_train"] == w1["n_train"] == one["n_train"]
    assert w0["history"]["noise_std"] == w1["history"]["noise_std"] == \
        one["history"]["noise_std"]
    assert (tmp_path / "two" / "model.keras").exists()  # written by the chief alone
    assert w0["final_val_loss"] is not None and w1["final_val_loss"] is None


def test_workers_option_launches_local_workers_with_checkpoints(data_file, tmp_path):
    out, ckpt = tmp_path / "run", tmp_path / "ckpt"
    result = subprocess.run(fit_command(data_file, out, "--workers", "2", "--checkpoint-dir",
                                        str(ckpt)),
                            capture_output=True, text=True, timeout=TIMEOUT, env=env())
    assert result.returncode == 0, result.stderr[-3000:]
    assert "every worker ended with the same weights" in result.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["workers"], metrics["replicas"]) == (2, 2)
    assert {"ckpt-2.index", "checkpoint"} <= set(os.listdir(ckpt))
    assert not [n for n in os.listdir(ckpt) if n.startswith(".dde-tmp-")]


def test_a_killed_run_resumes_from_its_checkpoint_to_the_same_weights(data_file, tmp_path):
    """A run killed (SIGKILL) after its first checkpoint and started again with the same
    options resumes after the last completed epoch and ends bit-identical to a run that
    was never interrupted: model, optimizer, epoch, σ schedule and data order resume."""
    command = fit_command(data_file, tmp_path / "a", "--epochs", "4", "--checkpoint-dir",
                          str(tmp_path / "ck_a"), "--worker-report", str(tmp_path / "a.json"))
    assert subprocess.run(command, capture_output=True, timeout=TIMEOUT,
                          env=env()).returncode == 0
    command = fit_command(data_file, tmp_path / "b", "--epochs", "4", "--checkpoint-dir",
                          str(tmp_path / "ck_b"), "--worker-report", str(tmp_path / "b.json"))
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env())
    deadline = time.monotonic() + TIMEOUT
    try:
        while not (tmp_path / "ck_b" / "checkpoint").exists():
            assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (tmp_path / "b").exists()
    resumed = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT,
                             env=env())
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = (json.loads((tmp_path / f"{k}.json").read_text()) for k in "ab")
    assert 1 <= b["resumed_from_epoch"] < 4
    assert len(b["history"]["loss"]) == 4 - b["resumed_from_epoch"]
    assert b["weights_sha256"] == a["weights_sha256"]
    assert "resumed after epoch" in resumed.stdout


def test_task_info_reads_tf_config():
    assert task_info({}) == (1, 0, True)
    config = json.loads(tf_configs(3, ports=[1, 2, 3])[2])
    assert config["cluster"]["worker"] == ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]
    assert task_info({"TF_CONFIG": json.dumps(config)}) == (3, 2, False)
    for bad in ("{", '{"cluster": {}}', '{"cluster": {"worker": []}}',
                '{"cluster": {"worker": ["a:1"]}, "task": {"type": "ps", "index": 0}}',
                '{"cluster": {"worker": ["a:1"]}, "task": {"index": 4}}'):
        with pytest.raises(ValueError, match="TF_CONFIG"):
            task_info({"TF_CONFIG": bad})


def test_bad_worker_options_exit_2(data_file, tmp_path, capsys):
    from dde_cli import main

    assert main(["fit", "--data", str(data_file), "--out", str(tmp_path / "o"), "--workers",
                 "0"]) == 2
    assert "--workers" in capsys.readouterr().err
    assert main(["fit", "--detector", "--data", str(data_file), "--out", str(tmp_path / "o"),
                 "--workers", "2"]) == 2
    assert main(["fit", "--data", str(data_file), "--out", str(tmp_path / "o"),
                 "--checkpoint-dir", str(tmp_path / "o" / "ck")]) == 2
    assert "overlap" in capsys.readouterr().err
    (tmp_path / "f").write_text("x")
    assert main(["fit", "--data", str(data_file), "--out", str(tmp_path / "o"),
                 "--checkpoint-dir", str(tmp_path / "f")]) == 2
    assert not (tmp_path / "o").exists()
