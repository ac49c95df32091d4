"""Smoke test of benchmarks/flow_sampling.py: a `--quick` run writes JSON and markdown, and
the per-coordinate inverse gives the whole-MADE reference's samples (deterministic: fixed
seeds; the bound is float32 rounding through 5 spline layers)."""
import importlib.util
import json
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "flow_sampling.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("flow_sampling_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_quick_run_agrees_with_the_reference(tmp_path, capsys):
    bench = _load_script()
    out = tmp_path / "flow_sampling.json"
    assert bench.main(["--quick", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["d"] for r in rows] == [3, 5]
    for r in rows:
        assert r["max_abs_difference"] < 1e-4 and r["max_abs_round_trip_error"] < 1e-3
        assert r["reference_ms_per_sample"] > 0 and r["per_coordinate_ms_per_sample"] > 0
    assert "| 5 | 64 |" in out.with_suffix(".md").read_text()
    assert bench.main(["--dims", "0", "--out", str(out)]) == 2
    assert "--dims" in capsys.readouterr().err
