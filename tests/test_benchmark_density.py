"""Smoke test of benchmarks/density.py: a `--quick` run on scikit-learn's iris data set
writes a well-formed results.json (and the markdown beside it), with every method present
(the flows MAF and RQ-NSF included; the coupling RQ-NSF is selectable).

Deterministic (fixed seeds); the check is on structure and finiteness, not on values.
"""
import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "density.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("density_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_quick_run_writes_results_json(tmp_path, capsys):
    bench = _load_script()
    out = tmp_path / "results.json"
    assert bench.main(["--dataset", "iris", "--quick", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["benchmark"] == "density" and report["quick"] is True
    ds = report["datasets"]["iris"]
    assert ds["d"] == 4 and ds["sizes"] == {"train": 90, "validation": 30, "test": 30}
    assert 50 < ds["peak_rss_mb"] < 24 * 1024  # MiB: a TensorFlow process, not KiB or bytes
    candidates = ds["methods"]["DDE-IS"]["candidates"]
    assert {c["base"] for c in candidates} == {"gmm", "flow"}  # the RQ-NSF flow as a base
    assert set(ds["methods"]) == set(bench.METHODS)
    for name, r in ds["methods"].items():
        assert "error" not in r, (name, r.get("error"))
        assert math.isfinite(r["test_all"]) and r["stderr"] >= 0, name
        assert r["n_test"] == 30
        assert r["train_time_s"] > 0 and r["eval_time_s"] >= 0
    for name in ("DDE-IS", "DDE-AIS"):
        r = ds["methods"][name]
        assert math.isfinite(r["log_z"]) and r["log_z_stderr"] >= 0 and r["ess"] > 0
        assert r["selected"]["base"] == "gmm" and r["candidates"][0]["base"] == "gmm"
        assert math.isfinite(r["agreement"]["in_se"]) and "pareto_k" in r
        assert r["unreliable"] == bool(r["unreliable_reasons"])
    assert ds["methods"]["KDE"]["selected"]["bandwidth"] > 0
    assert ds["methods"]["GMM"]["selected"]["n_components"] in (1, 2)
    # The flows: dde.flows models trained with validation early stopping, skips counted.
    for name in bench.FLOWS:
        r = ds["methods"][name]
        assert r["skipped_steps"] == 0 and r["selected"]["steps"] > 0
        assert math.isfinite(r["val_all"])
    assert ds["methods"]["RQ-NSF"]["selected"]["structure"] == "autoregressive"
    assert ds["methods"]["RQ-NSF"]["selected"]["bins"] == 4
    # The markdown table lists every method and is printed and written next to the JSON.
    text = out.with_suffix(".md").read_text()
    for label in bench.LABELS.values():
        assert label in text
    assert "| iris | 4 | 90 / 30 / 30 |" in capsys.readouterr().out
    # `merge` joins runs on disjoint data sets into one report; a set in two runs is an error
    other = json.loads(out.read_text())
    other["datasets"] = {"iris-copy": other["datasets"]["iris"]}
    other["command"] = "python benchmarks/density.py --dataset iris-copy"
    second = tmp_path / "second.json"
    second.write_text(json.dumps(other))
    merged = tmp_path / "merged.json"
    assert bench.main(["merge", str(out), str(second), "--out", str(merged)]) == 0
    joined = json.loads(merged.read_text())
    assert list(joined["datasets"]) == ["iris", "iris-copy"]
    assert joined["commands"] == [report["command"], other["command"]]
    assert "| iris-copy | 4 |" in merged.with_suffix(".md").read_text()
    assert bench.main(["merge", str(out), str(out), "--out", str(merged)]) == 2
    assert "more than one report" in capsys.readouterr().err


def test_coupling_spline_flow_is_selectable(tmp_path):
    bench = _load_script()
    out = tmp_path / "results.json"
    assert bench.main(["--dataset", "iris", "--quick", "--methods", "RQ-NSF",
                       "--nsf-structure", "coupling", "--out", str(out)]) == 0
    r = json.loads(out.read_text())["datasets"]["iris"]["methods"]["RQ-NSF"]
    assert r["selected"]["structure"] == "coupling" and math.isfinite(r["test_all"])


def test_bad_dataset_name_exits_2_before_training(tmp_path, capsys):
    bench = _load_script()
    out = tmp_path / "results.json"
    assert bench.main(["--dataset", "no_such_set", "--quick", "--out", str(out)]) == 2
    assert "Unknown data set" in capsys.readouterr().err
    assert not out.exists()


def test_unknown_method_is_rejected():
    bench = _load_script()
    with pytest.raises(SystemExit) as info:
        bench.main(["--dataset", "iris", "--methods", "KDE,Magic"])
    assert info.value.code == 2


def test_unreliable_rows_are_marked_and_never_bolded():
    """A DDE row marked unreliable keeps its value with the mark but is not bolded even
    when its test ALL is the largest; the best comparable row is bolded instead."""
    bench = _load_script()

    def row(value, **extra):
        return {"test_all": value, "stderr": 0.1, "test_median": value, "n_test": 10,
                "val_all": value, "train_time_s": 1.0, "eval_time_s": 1.0, **extra}

    report = {"datasets": {"toy": {"d": 2, "sizes": {"train": 5, "validation": 5, "test": 10},
                                   "methods": {"GMM": row(-3.0),
                                               "DDE-IS": row(-1.0, unreliable=True)}}}}
    text = bench.markdown(report, ["GMM", "DDE-IS"])
    assert "**-3.00 ± 0.20**" in text and f"-1.00 ± 0.20{bench.UNRELIABLE_MARK}" in text
    assert "**-1.00" not in text
    assert "best or within 2·SE of the best on 0 of 1" in bench.goal_summary(
        report, ["GMM", "DDE-IS"])


def test_a_candidate_that_never_beat_its_base_is_its_base_exactly():
    """A selected candidate at step 0 has g ≡ 0: its rows are the base's normalized density
    (log Ẑ = 0 exactly, no sampling; test ALL = the mean of log q), both marked exact; a
    residual that is not zero is refused."""
    import types

    import numpy as np

    import dde
    from dde import bases, nets

    bench = _load_script()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 2)) @ np.array([[1.0, 0.5], [0.0, 0.7]])
    splits = types.SimpleNamespace(train=x[:200], validation=x[200:250], test=x[250:])
    base = bases.fit_gaussian_base(splits.train)
    model = dde.DenoisingDensityEstimator(nets.residual_energy_mlp(2, 2, 8, bound=3.0,
                                                                   bound_kind="tanh"),
                                          noise_std=0.1, base=base, smooth_base=False,
                                          seed=0)
    model.ensure_built(2)
    entry = {"base": "gmm", "base_smoothing": 0.0, "best_step": 0, "base_components": 1}
    out = bench._base_itself(model, entry, [entry], splits, train_time=1.0)
    expected = np.asarray(base.log_prob(splits.test.astype(np.float32)), np.float64)
    for name in ("DDE-IS", "DDE-AIS"):
        r = out[name]
        assert r["exact_log_z"] == "g ≡ 0" and r["agreement"]["exact"]
        assert not r["unreliable"] and r["log_z"] is None
        assert abs(r["test_all"] - expected.mean()) < 1e-5
    assert float(model.log_z.numpy()) == 0.0
    text = bench.markdown({"datasets": {"toy": {"d": 2, "sizes": {"train": 200,
                                                                    "validation": 50,
                                                                    "test": 50},
                                                  "methods": out}}}, ["DDE-IS", "DDE-AIS"])
    assert "0 (g ≡ 0)" in text and "0 (exact)" in text
    model.network.get_layer("residual").kernel.assign(np.ones((8, 1), np.float32))
    with pytest.raises(RuntimeError, match="non-zero residual"):
        bench._base_itself(model, entry, [entry], splits, train_time=1.0)
