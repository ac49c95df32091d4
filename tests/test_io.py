"""Tests of dde._io: atomic writes leave nothing behind on failure; data-file reading."""
import json

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
