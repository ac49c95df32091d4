"""The command line's promises, one test per defect of issues 13 and 14: inputs are never
overwritten, file-system errors exit with status 2 naming the path before any work, outputs
are written all or nothing with normal permissions, short runs reach the requested σ,
nonsense is refused, messages are clean, and `dde --help` needs no TensorFlow."""
import errno
import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest

import dde
from dde import _io
from dde_cli import _common, main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def work(tiny_artifacts, tmp_path):
    """Copies of the tiny artifacts in a fresh folder."""
    for item in tiny_artifacts.iterdir():
        shutil.copy(item, tmp_path / item.name)
    return tmp_path


def snapshot(folder):
    """{relative path: (bytes, mode)} of every file below `folder`, and its folders."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None,
                                         p.lstat().st_mode)
            for p in sorted(folder.rglob("*"))}


def error_line(capsys):
    """The error line of a failed command: one line, after at most some one-line warnings,
    without traceback or colour codes."""
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert lines and all(re.match(r"dde \w+: warning: ", line) for line in lines[:-1]), err
    assert lines[-1].startswith("dde ") and ": error: " in lines[-1], err
    assert "Traceback" not in err and "\x1b[" not in err
    return lines[-1]


def expect_refusal(capsys, work, argv, *fragments):
    """Run `dde ARGV`: exit status 2, one error line holding `fragments`, nothing changed."""
    before = snapshot(work)
    assert main(argv) == 2
    line = error_line(capsys)
    for fragment in fragments:
        assert fragment in line, line
    assert snapshot(work) == before
    return line


# ------------------------------------------------------------- 1. inputs never overwritten
def test_evaluate_json_onto_its_data_is_refused(work, capsys):
    expect_refusal(capsys, work, ["evaluate", "--model", str(work / "normalized.keras"),
                                  "--data", str(work / "train.npy"),
                                  "--json", str(work / "train.npy")],
                   "--json", "would overwrite the input file --data")


def test_sample_out_onto_its_init_is_refused(work, capsys):
    np.save(work / "init.npy", np.zeros((1, 2)))
    expect_refusal(capsys, work, ["sample", "--model", str(work / "model.keras"), "-n", "3",
                                  "--steps", "2", "--init", str(work / "init.npy"),
                                  "--out", str(work / "init.npy"), "--quiet"],
                   "--out", "--init")


@pytest.mark.parametrize("spelling", ["dot", "symlink", "hardlink", "dotdot"])
def test_outputs_are_compared_after_resolving_paths(work, capsys, monkeypatch, spelling):
    """`./x` vs `x`, a symbolic link, a hard link and `sub/../x` all name the input."""
    monkeypatch.chdir(work)
    target = "train.npy"
    if spelling == "dot":
        out = "./train.npy"
    elif spelling == "symlink":
        os.symlink(work / "train.npy", work / "link.json")
        out = "link.json"
    elif spelling == "hardlink":
        os.link(work / "train.npy", work / "hard.json")
        out = "hard.json"
    else:
        (work / "sub").mkdir()
        out = "sub/../train.npy"
    expect_refusal(capsys, work, ["evaluate", "--model", "normalized.keras", "--data", target,
                                  "--json", out], "would overwrite")


def test_two_outputs_that_coincide_are_refused(work, capsys):
    expect_refusal(capsys, work, ["normalize", "--model", str(work / "model.keras"),
                                  "--data", str(work / "train.npy"), "--out",
                                  str(work / "m2.keras"), "--json", str(work / "m2.keras")],
                   "the same file")
    os.symlink(work / "s.npy", work / "s.png")  # a plot path that resolves to the samples
    expect_refusal(capsys, work, ["sample", "--model", str(work / "model.keras"), "-n", "3",
                                  "--steps", "2", "--out", str(work / "s.npy"), "--plot",
                                  str(work / "s.png"), "--quiet"], "the same file")


def test_normalize_json_onto_its_data_or_model_is_refused(work, capsys):
    for target in ("train.npy", "model.keras"):
        expect_refusal(capsys, work, ["normalize", "--model", str(work / "model.keras"),
                                      "--data", str(work / "train.npy"), "--out",
                                      str(work / "m2.keras"), "--json", str(work / target)],
                       "--json", "would overwrite")


def test_fit_out_folder_holding_its_data_is_refused(work, capsys):
    run = work / "run"
    run.mkdir()
    np.save(run / "data.npy", np.random.default_rng(0).normal(size=(50, 2)))
    expect_refusal(capsys, work, ["fit", "--data", str(run / "data.npy"), "--out", str(run),
                                  "--epochs", "1", "--quiet"], "holds the input --data")


# --------------------------------------------- 2. file-system errors: exit 2, before work
def test_read_only_output_folder_exits_2_naming_it(work, capsys, read_only_dir):
    locked = read_only_dir()
    line = expect_refusal(capsys, work, ["sample", "--model", str(work / "model.keras"),
                                         "-n", "3", "--steps", "2", "--quiet", "--out",
                                         str(locked / "s.npy")], "cannot write in")
    assert str(locked) in line


def test_fit_checks_its_output_before_training(work, capsys, read_only_dir, monkeypatch):
    """An unwritable --out fails at once: the model is never trained."""
    def no_training(*args, **kwargs):
        raise AssertionError("trained before checking the output folder")

    monkeypatch.setattr(dde.DenoisingDensityEstimator, "fit", no_training)
    locked = read_only_dir()
    expect_refusal(capsys, work, ["fit", "--out", str(locked / "run"), "--epochs", "1",
                                  "--quiet"], "cannot write in", str(locked))
    (work / "afile").write_text("x")
    expect_refusal(capsys, work, ["fit", "--out", str(work / "afile" / "run"), "--quiet"],
                   "which is a file")
    expect_refusal(capsys, work, ["fit", "--out", str(work / "afile"), "--quiet"],
                   "is not a folder")


@pytest.mark.parametrize("case", ["directory", "under_a_file", "missing_folder_under_file"])
def test_output_path_problems_exit_2(work, capsys, case):
    (work / "adir").mkdir()
    out = {"directory": work / "adir",
           "under_a_file": work / "train.csv" / "s.json",
           "missing_folder_under_file": work / "train.csv" / "sub" / "s.json"}[case]
    expect_refusal(capsys, work, ["evaluate", "--model", str(work / "normalized.keras"),
                                  "--data", str(work / "train.npy"), "--json", str(out)],
                   "--json")


def test_missing_output_folders_are_created(work):
    out = work / "new" / "deeper" / "s.npy"
    assert main(["sample", "--model", str(work / "model.keras"), "-n", "3", "--steps", "2",
                 "--out", str(out), "--quiet"]) == 0
    assert np.load(out).shape == (3, 2)


def test_os_error_while_writing_names_the_path(work, capsys, monkeypatch):
    """An OSError without a file name (a full disk) is reported with the target's path."""
    def full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(_io.os, "replace", full)
    line = expect_refusal(capsys, work, ["evaluate", "--model", str(work / "normalized.keras"),
                                         "--data", str(work / "train.npy"),
                                         "--json", str(work / "e.json")],
                          "No space left on device")
    assert str(work / "e.json") in line


# ------------------------------------------------------------- 3. all-or-nothing outputs
def test_normalize_in_place_leaves_the_model_unchanged_when_the_json_fails(work, capsys,
                                                                           monkeypatch):
    def broken(path, obj):
        raise OSError(errno.EIO, "Input/output error", str(path))

    monkeypatch.setattr(_io, "write_json", broken)
    expect_refusal(capsys, work, ["normalize", "--model", str(work / "model.keras"),
                                  "--data", str(work / "train.npy"), "--num-samples", "500",
                                  "--quiet"], "Input/output error")


def test_sample_writes_no_samples_when_the_plot_fails(work, capsys, monkeypatch):
    """Writing the plot fails after the samples were written: they must not stay."""
    def broken(fig, path, **kwargs):
        raise OSError(errno.EIO, "Input/output error", str(path))

    monkeypatch.setattr(_io, "save_figure", broken)
    line = expect_refusal(capsys, work, ["sample", "--model", str(work / "model.keras"),
                                         "-n", "3", "--steps", "2", "--out",
                                         str(work / "s.npy"), "--plot", str(work / "s.png"),
                                         "--quiet"], "Input/output error")
    assert line.endswith(str(work / "s.png"))  # the target's name, not the temporary's


def test_fit_writes_nothing_when_a_plot_fails(work, capsys, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("plotting failed")

    monkeypatch.setattr(dde.plotting, "plot_score_field", broken)
    expect_refusal(capsys, work, ["fit", "--out", str(work / "run"), "--epochs", "1",
                                  "--num-samples", "300", "--width", "8", "--quiet"],
                   "plotting failed")


# ------------------------------------------------------ 4. short runs reach the asked σ
def test_fit_one_epoch_on_small_data_reaches_the_requested_noise_std(work):
    """1 epoch of 8 batches: σ must still end at --noise-std (it stopped near 0.105)."""
    out = work / "run"
    assert main(["fit", "--out", str(out), "--epochs", "1", "--num-samples", "2000",
                 "--width", "8", "--depth", "1", "--quiet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["noise_std"] == pytest.approx(0.1, rel=1e-6)
    assert metrics["requested_noise_std"] == 0.1 and metrics["noise_std_reached"] is True
    schedule = metrics["noise_schedule"]
    assert schedule["final_from_batch"] < schedule["total_batches"] == 8
    assert float(keras.models.load_model(out / "model.keras").noise_std.numpy()) == \
        pytest.approx(0.1, rel=1e-6)


def test_fit_refuses_a_decay_interval_that_cannot_reach_the_noise_std(work, capsys):
    expect_refusal(capsys, work, ["fit", "--out", str(work / "run"), "--epochs", "1",
                                  "--num-samples", "2000", "--decay-every", "5", "--quiet"],
                   "--decay-every", "reaches 0.1 after")


def test_fit_single_batch_cannot_anneal(work, capsys):
    expect_refusal(capsys, work, ["fit", "--out", str(work / "run"), "--epochs", "1",
                                  "--num-samples", "100", "--quiet"], "Cannot anneal")


# -------------------------------------------------------------- 5. nonsense is refused
@pytest.mark.parametrize("argv, fragment", [
    (["fit", "--decay-every", "0"], "--decay-every must be"),
    (["fit", "--seed", "-1"], "--seed must be an integer in [0,"),
    (["fit", "--detector", "--seed", "-1"], "--seed must be an integer in [0,"),
    (["sample", "--seed", "-1"], "--seed must be an integer in [0,"),
    (["normalize", "--seed", "-1"], "--seed must be an integer in [0,"),
    (["normalize", "--min-ess", "-1"], "--min-ess"),
])
def test_nonsense_options_are_refused(work, capsys, argv, fragment):
    paths = {"fit": ["--out", str(work / "run"), "--quiet"],
             "sample": ["--model", str(work / "model.keras"), "--out", str(work / "s.npy")],
             "normalize": ["--model", str(work / "model.keras"), "--data",
                           str(work / "train.npy")]}[argv[0]]
    expect_refusal(capsys, work, argv + paths, fragment)


def test_absurd_log_partition_is_refused_not_stored(work, capsys):
    """Data scaled by 1e30 gave log Ẑ ≈ 1.9e28, stored with a warning."""
    np.save(work / "huge.npy", np.load(work / "train.npy") * 1e30)
    expect_refusal(capsys, work, ["normalize", "--model", str(work / "model.keras"),
                                  "--data", str(work / "huge.npy"), "--num-samples", "1000",
                                  "--quiet"], "absurd")


def test_evaluate_names_rows_with_non_finite_log_density(work, capsys):
    """A model whose energy overflows float32 away from the origin (first-layer kernel 1e37):
    rows 2 and 4 get no finite log-density, and no result is written."""
    model = keras.models.load_model(work / "normalized.keras")
    kernel = model.network.layers[1].kernel
    kernel.assign(np.full(kernel.shape, 1e37, "float32"))
    model.save(work / "steep.keras")
    x = np.zeros((6, 2))
    x[[2, 4]] = 50.0
    np.save(work / "far.npy", x)
    expect_refusal(capsys, work, ["evaluate", "--model", str(work / "steep.keras"),
                                  "--data", str(work / "far.npy"), "--json",
                                  str(work / "e.json")], "not finite at rows 2, 4 of 6")


def test_fit_refuses_data_that_make_the_energy_absurd(work, capsys):
    """Data scaled by 1e30 trained 'fine' (the loss does not see the scale) into energies of
    order 1e30, which no float32 log-density resolves."""
    np.save(work / "huge.npy", np.load(work / "train.npy") * 1e30)
    expect_refusal(capsys, work, ["fit", "--data", str(work / "huge.npy"), "--out",
                                  str(work / "run"), "--epochs", "1", "--batch-size", "32",
                                  "--quiet"], "standardize them")


# ------------------------------------------------------- 6. reruns replace a used folder
def test_rerun_into_a_used_folder_replaces_its_files_as_a_whole(work):
    out = work / "run"
    assert main(["fit", "--out", str(out), "--epochs", "2", "--num-samples", "300",
                 "--width", "8", "--quiet"]) == 0
    assert (out / "density.png").exists()
    np.save(work / "three.npy", np.random.default_rng(0).normal(size=(200, 3)))
    assert main(["fit", "--data", str(work / "three.npy"), "--out", str(out), "--epochs",
                 "2", "--width", "8", "--quiet"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "model.keras",
                                                     "training_curves.png"]
    assert json.loads((out / "metrics.json").read_text())["dimension"] == 3
    assert sorted(p.name for p in work.iterdir() if p.name.startswith(".")) == []


def test_readme_main_command_can_be_rerun(work, monkeypatch):
    """`dde fit --out runs/demo` twice in the same place (small budget)."""
    monkeypatch.chdir(work)
    for _ in range(2):
        assert main(["fit", "--out", "runs/demo", "--epochs", "2", "--num-samples", "300",
                     "--width", "8", "--quiet"]) == 0
    assert sorted(p.name for p in (work / "runs").iterdir()) == ["demo"]


def test_fit_refuses_a_folder_with_other_files(work, capsys):
    (work / "mine").mkdir()
    (work / "mine" / "notes.txt").write_text("precious")
    expect_refusal(capsys, work, ["fit", "--out", str(work / "mine"), "--quiet"],
                   "other files than those of a dde run")


# ------------------------------------------------------ 7. permissions and temporaries
def test_outputs_get_umask_permissions(work):
    old = os.umask(0o027)
    try:
        assert main(["sample", "--model", str(work / "model.keras"), "-n", "3", "--steps",
                     "2", "--out", str(work / "s.npy"), "--plot", str(work / "s.png"),
                     "--quiet"]) == 0
        assert main(["fit", "--out", str(work / "run"), "--epochs", "2", "--num-samples",
                     "300", "--width", "8", "--quiet"]) == 0
    finally:
        os.umask(old)
    for path in (work / "s.npy", work / "s.png", work / "run" / "model.keras",
                 work / "run" / "metrics.json"):
        assert path.stat().st_mode & 0o777 == 0o640, path
    assert (work / "run").stat().st_mode & 0o777 == 0o750


def test_normalize_in_place_keeps_the_model_mode(work):
    os.chmod(work / "model.keras", 0o640)
    assert main(["normalize", "--model", str(work / "model.keras"), "--data",
                 str(work / "train.npy"), "--num-samples", "500", "--quiet"]) == 0
    assert (work / "model.keras").stat().st_mode & 0o777 == 0o640
    assert keras.models.load_model(work / "model.keras").is_normalized


def test_orphaned_temporaries_are_cleaned_on_the_next_run(work):
    """A killed save leaves `.dde-tmp-<pid>-...`; the next write there removes it (a live
    process's temporary stays)."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = work / f"{_io.TEMP_PREFIX}{dead.pid}-s.npy-abc123.npy"
    orphan.write_bytes(b"half")
    orphan_dir = work / f"{_io.TEMP_PREFIX}{dead.pid}-run-xyz"
    orphan_dir.mkdir()
    (orphan_dir / "model.keras").write_bytes(b"half")
    alive = work / f"{_io.TEMP_PREFIX}{os.getpid()}-other.npy-def.npy"
    alive.write_bytes(b"in use")
    assert main(["sample", "--model", str(work / "model.keras"), "-n", "3", "--steps", "2",
                 "--out", str(work / "s.npy"), "--quiet"]) == 0
    assert not orphan.exists() and not orphan_dir.exists() and alive.exists()
    assert _common.TEMP_PREFIX == _io.TEMP_PREFIX


# ------------------------------------------------------------------------- 8. messages
def test_truncated_keras_file_is_not_reported_missing(work, capsys):
    data = (work / "model.keras").read_bytes()
    (work / "cut.keras").write_bytes(data[: len(data) // 2])
    line = expect_refusal(capsys, work, ["sample", "--model", str(work / "cut.keras"), "-n",
                                         "3", "--out", str(work / "s.npy")],
                          "truncated or corrupted", str(work / "cut.keras"))
    assert "not found" not in line


def _rewrite_state(src, dst, change):
    with zipfile.ZipFile(src) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    members["detector.json"] = change(members["detector.json"])
    with zipfile.ZipFile(dst, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)


def _state_edit(key, value=None, drop=False):
    def change(raw):
        state = json.loads(raw)
        target = state["scaler"] if key in ("mean_", "scale_") else state
        if drop:
            del target[key]
        else:
            target[key] = value
        return json.dumps(state)
    return change


def _widen(raw, d):
    """A state consistent in itself for d features (its model takes 2)."""
    state = json.loads(raw)
    state["n_features_in_"] = d
    for key in ("mean_", "var_", "scale_"):
        state["scaler"][key] = [1.0] * d
    state["baseline_"] = [0.0] * d
    return json.dumps(state)


@pytest.mark.parametrize("name, change, fragment", [
    ("badjson", lambda raw: raw[:-5], "not valid JSON"),
    ("nulloffset", _state_edit("offset_", None), "'offset_' must be a finite number"),
    ("nokey", _state_edit("n_features_in_", drop=True), "'n_features_in_' is missing"),
    ("noscale", _state_edit("scale_", drop=True), "scaler 'scale_' is missing"),
    ("shortscaler", _state_edit("mean_", [0.0]), "scaler 'mean_' must be a list of 2"),
    ("widemodel", lambda raw: _widen(raw, 3), "its model takes 2 features, but the detector 3"),
])
def test_damaged_detector_files_are_named_value_errors(work, capsys, name, change, fragment):
    """Issue 13 (b) and issue 14 (8): a KeyError traceback, a silently accepted short
    scaler, and messages without the file name, before."""
    bad = work / f"{name}.zip"
    _rewrite_state(work / "detector.zip", bad, change)
    with pytest.raises(ValueError, match=re.escape(fragment)) as info:
        dde.DDEAnomalyDetector.load(bad)
    assert str(bad) in str(info.value)
    expect_refusal(capsys, work, ["score", "--model", str(bad), "--data",
                                  str(work / "train.csv"), "--out", str(work / "s.csv")],
                   str(bad), fragment)


def test_detector_refuses_rows_that_overflow_float32(work, capsys):
    """Issue 13 (a): 1e300 became inf, a NaN score, and the label +1 (inlier)."""
    det = dde.DDEAnomalyDetector.load(work / "detector.zip")
    x = np.load(work / "train.npy")[:5].astype(np.float64)
    x[3, 1] = 1e300
    for method in (det.score_samples, det.decision_function, det.predict):
        with pytest.raises(ValueError, match=r"X\[3, 1\] = 1e\+300 is too large"):
            method(x)
    np.savetxt(work / "big.csv", x, delimiter=",")
    expect_refusal(capsys, work, ["score", "--model", str(work / "detector.zip"), "--data",
                                  str(work / "big.csv"), "--out", str(work / "s.csv")],
                   "X[3, 1] = 1e+300")


# ------------------------------------------------------------------- first-run polish
def _child_imports(code):
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("argv", [["--help"], ["fit", "--help"], ["--version"]])
def test_help_and_version_do_not_import_tensorflow(argv):
    out = _child_imports(
        "import sys, dde_cli\n"
        "try:\n"
        f"    dde_cli.main({argv!r})\n"
        "except SystemExit as exit:\n"
        "    assert exit.code == 0, exit.code\n"
        "assert 'tensorflow' not in sys.modules and 'dde' not in sys.modules\n"
        "print('ok')\n")
    assert out.strip().endswith("ok")


def test_console_script_help_and_version_are_fast():
    """The installed `dde` script answers --help and --version in under 2 s each (it took
    20-45 s when the parser imported TensorFlow)."""
    script = shutil.which("dde", path=os.path.dirname(sys.executable)) or shutil.which("dde")
    if script is None:
        pytest.skip("the dde console script is not installed")
    for argv in (["--help"], ["--version"]):
        start = time.perf_counter()
        result = subprocess.run([script, *argv], capture_output=True, text=True, timeout=60)
        elapsed = time.perf_counter() - start
        assert result.returncode == 0 and elapsed < 2.0, (argv, elapsed, result.stderr)
    assert result.stdout.strip() == f"dde {dde.__version__}"


def test_python_dash_m_dde_runs_the_command_line():
    result = subprocess.run([sys.executable, "-m", "dde", "--version"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == f"dde {dde.__version__}"


def test_help_texts_speak_to_users(capsys):
    for command in ("fit", "sample", "normalize", "evaluate", "score"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = capsys.readouterr().out
        assert "This module" not in text and "fit_detector" not in text, command


def test_readme_commands_use_separate_fresh_environments_and_ci_runs_the_test_command():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = readme.split("```bash", 1)[1].split("```", 1)[0]
    commands = [line for line in block.splitlines() if line.startswith("python3 -m venv")]
    assert len(commands) == 2
    venvs = [re.match(r"python3 -m venv --clear (\S+)", c).group(1) for c in commands]
    assert venvs[0] != venvs[1]
    assert "pytest" in commands[1]
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert commands[1] in ci.splitlines()


def test_fit_plots_are_labelled_and_say_the_density_is_unnormalized(work, monkeypatch):
    figures = {}
    real = _io.save_figure

    def keep(fig, path, **kwargs):
        figures[Path(path).name] = fig
        real(fig, path, **kwargs)

    monkeypatch.setattr(_io, "save_figure", keep)
    assert main(["fit", "--out", str(work / "run"), "--epochs", "2", "--num-samples", "300",
                 "--width", "8", "--quiet"]) == 0
    density = figures["density.png"]
    assert "un-normalized" in density.axes[0].get_title()
    assert density.axes[0].get_xlabel() and density.axes[0].get_ylabel()
    assert len(density.axes) == 2 and density.axes[1].get_ylabel()  # the colour bar
    assert "not directly comparable" in figures["training_curves.png"].axes[0].get_title()
