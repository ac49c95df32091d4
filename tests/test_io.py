"""Tests of dde._io: atomic writes leave nothing behind on failure, several files are
written all or none, folders are swapped in whole, modes follow the umask, orphaned
temporaries are removed; data-file reading."""
import errno
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from dde import _io


def test_atomic_path_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "result.json"
    _io.write_json(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with _io.atomic_path(target) as tmp:
            with open(tmp, "w") as handle:
                handle.write("{half")
            raise RuntimeError("crash while writing")
    assert json.loads(target.read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]


def test_write_json_handles_numpy(tmp_path):
    _io.write_json(tmp_path / "x.json", {"v": np.float32(1.5), "a": np.arange(3)})
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": [0, 1, 2], "v": 1.5}


def test_read_array_formats(tmp_path):
    x = np.arange(6, dtype=float).reshape(3, 2)
    np.save(tmp_path / "a.npy", x)
    np.savez(tmp_path / "b.npz", X=x, y=np.zeros(3))
    (tmp_path / "c.csv").write_text("u,v\n0,1\n2,3\n4,5\n")
    (tmp_path / "d.csv").write_text("0,1\n2,3\n4,5\n")
    for name in ("a.npy", "b.npz", "c.csv", "d.csv"):
        np.testing.assert_array_equal(_io.read_array(tmp_path / name), x)


def test_read_array_errors(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        _io.read_array(tmp_path / "missing.npy")
    (tmp_path / "bad.npy").write_bytes(b"not a numpy file")
    with pytest.raises(ValueError, match="bad.npy"):
        _io.read_array(tmp_path / "bad.npy")
    (tmp_path / "bad.csv").write_text("1,2\n3,x\n")
    with pytest.raises(ValueError, match="bad.csv"):
        _io.read_array(tmp_path / "bad.csv")
    (tmp_path / "f.parquet").write_text("")
    with pytest.raises(ValueError, match="Unsupported"):
        _io.read_array(tmp_path / "f.parquet")
    np.savez(tmp_path / "two.npz", a=np.zeros(2), b=np.zeros(2))
    with pytest.raises(ValueError, match="'X'"):
        _io.read_array(tmp_path / "two.npz")


def test_atomic_files_writes_all_or_none(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "sub" / "b.npy"
    _io.write_json(a, {"old": True})
    with pytest.raises(RuntimeError):
        with _io.atomic_files([a, b]) as (ta, tb):
            _io.write_json(ta, {"new": True})
            raise RuntimeError("the second output failed")
    assert json.loads(a.read_text()) == {"old": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]  # no temporaries, no sub/
    with _io.atomic_files([a, b]) as (ta, tb):
        _io.write_json(ta, {"new": True})
        np.save(tb, np.arange(3))
    assert json.loads(a.read_text()) == {"new": True}
    np.testing.assert_array_equal(np.load(b), np.arange(3))


def test_written_files_get_normal_permissions(tmp_path):
    """mkstemp's 0600 is replaced by what a normal write gives: 0o666 minus the umask for a
    new file, the old mode for a replaced one."""
    old = os.umask(0o027)
    try:
        _io.write_text(tmp_path / "new.txt", "x")
        (tmp_path / "kept.txt").write_text("old")
        os.chmod(tmp_path / "kept.txt", 0o604)
        _io.write_text(tmp_path / "kept.txt", "new")
    finally:
        os.umask(old)
    assert (tmp_path / "new.txt").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "kept.txt").stat().st_mode & 0o777 == 0o604


def test_atomic_path_writes_through_a_symbolic_link(tmp_path):
    (tmp_path / "real.txt").write_text("old")
    os.symlink(tmp_path / "real.txt", tmp_path / "link.txt")
    _io.write_text(tmp_path / "link.txt", "new")
    assert (tmp_path / "link.txt").is_symlink() and (tmp_path / "real.txt").read_text() == "new"


def test_replaced_folder_swaps_a_whole_run_in(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "old.png").write_text("from the first run")
    with pytest.raises(RuntimeError):
        with _io.replaced_folder(run) as folder:
            (folder / "model.keras").write_text("half")
            raise RuntimeError("training failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert sorted(p.name for p in run.iterdir()) == ["old.png"]
    os.chmod(run, 0o750)
    with _io.replaced_folder(run) as folder:
        (folder / "model.keras").write_text("complete")
    assert sorted(p.name for p in run.iterdir()) == ["model.keras"]
    assert run.stat().st_mode & 0o777 == 0o750
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_orphaned_temporaries_of_dead_processes_are_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphans = [tmp_path / f"{_io.TEMP_PREFIX}{dead.pid}-x.npy-1.npy",
               tmp_path / f"{_io.TEMP_PREFIX}{dead.pid}-run-2"]
    orphans[0].write_bytes(b"half")
    orphans[1].mkdir()
    mine = tmp_path / f"{_io.TEMP_PREFIX}{os.getpid()}-y.npy-3.npy"
    mine.write_bytes(b"in use")
    other = tmp_path / ".dde-tmp-notes"  # not a temporary of ours: no pid
    other.write_text("keep")
    _io.save_npy(tmp_path / "x.npy", np.zeros(2))
    assert not any(p.exists() for p in orphans) and mine.exists() and other.exists()


def test_os_errors_name_the_target(tmp_path, monkeypatch):
    def full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(_io.os, "replace", full)
    with pytest.raises(OSError) as info:
        _io.write_text(tmp_path / "r.txt", "x")
    assert info.value.filename == str(tmp_path / "r.txt")
    assert list(tmp_path.iterdir()) == []


def test_read_array_names_a_folder_and_a_corrupted_archive(tmp_path):
    with pytest.raises(ValueError, match="is a folder"):
        _io.read_array(tmp_path)
    np.savez(tmp_path / "a.npz", X=np.zeros((3, 2)))
    data = (tmp_path / "a.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut.npz"):
        _io.read_array(tmp_path / "cut.npz")
