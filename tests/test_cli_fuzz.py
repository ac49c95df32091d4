"""Property-based fuzzing of the command line (issue 14): for every sub-command, generated bad
data files (NaN/inf, values beyond float32, wrong shapes, dtypes and feature counts, empty,
ragged, truncated, corrupted), bad model and detector files (truncated, corrupted, damaged
contents, the wrong kind), bad output paths (an input under another spelling, a link to it,
another output, a folder, under a file, read-only) and nonsensical options must all end the
same way: exit status 2, a single line `dde COMMAND: error: ...` on stderr (no traceback),
inputs byte-identical afterwards, and nothing new or changed where outputs go.

`main` runs in-process on tiny saved models (the session fixture `tiny_artifacts`); each
family is bounded (`max_examples`, derandomized, so a run is a fixed set of examples) and
the whole file takes well under two minutes (about 40 s on a shared 2-core machine). There is no chance element: every generated case is
bad by construction, and a failure names the case.
"""
import contextlib
import io
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import lock_folder, unlock_folder
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dde_cli import main

SETTINGS = dict(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])

# A valid call of each sub-command, relative to a case folder holding in/ (inputs) and out/.
BASE = {
    "fit": ["fit", "--data", "in/train.npy", "--out", "out/run", "--epochs", "1", "--width",
            "4", "--depth", "1", "--initial-noise-std", "0.1", "--quiet"],
    "fit_detector": ["fit", "--detector", "--data", "in/train.npy", "--out", "out/run",
                     "--max-steps", "4", "--width", "4", "--depth", "1", "--activation",
                     "softplus", "--detector-noise-std", "0.5", "--quiet"],
    "sample": ["sample", "--model", "in/model.keras", "-n", "3", "--steps", "2", "--init",
               "in/init.npy", "--out", "out/s.npy", "--plot", "out/s.png", "--quiet"],
    "normalize": ["normalize", "--model", "in/model.keras", "--data", "in/train.npy",
                  "--num-samples", "256", "--out", "out/m.keras", "--json", "out/m.json",
                  "--quiet"],
    "evaluate": ["evaluate", "--model", "in/normalized.keras", "--data", "in/train.npy",
                 "--json", "out/e.json"],
    "score": ["score", "--model", "in/detector.zip", "--data", "in/train.csv", "--out",
              "out/s.csv"],
    "density": ["density", "--model", "in/normalized.keras", "--data", "in/train.npy",
                "--out", "out/d.csv", "--chunk-rows", "64", "--quiet"],
    "export": ["export", "--model", "in/model.keras", "--out", "out/exported", "--quiet"],
}
COMMANDS = list(BASE)
FITS = ("fit", "fit_detector")  # `dde fit` and `dde fit --detector`
FOLDER_OUTPUTS = FITS + ("export",)  # commands whose --out is a folder written as a whole
DATA_FLAG = {"fit": "--data", "fit_detector": "--data", "sample": "--init",
             "normalize": "--data", "evaluate": "--data", "score": "--data",
             "density": "--data"}
DATA_COMMANDS = [c for c in COMMANDS if c in DATA_FLAG]
MODEL_COMMANDS = ["sample", "normalize", "evaluate", "score", "density", "export"]
INPUTS = {"fit": ["--data"], "fit_detector": ["--data"], "sample": ["--model", "--init"],
          "normalize": ["--model", "--data"], "evaluate": ["--model", "--data"],
          "score": ["--model", "--data"], "density": ["--model", "--data"],
          "export": ["--model"]}
OUTPUTS = {"fit": ["--out"], "fit_detector": ["--out"], "sample": ["--out", "--plot"],
           "normalize": ["--out", "--json"], "evaluate": ["--json"], "score": ["--out"],
           "density": ["--out"], "export": ["--out"]}
SUFFIX = {("sample", "--out"): ".npy", ("sample", "--plot"): ".png",
          ("normalize", "--out"): ".keras", ("normalize", "--json"): ".json",
          ("evaluate", "--json"): ".json", ("score", "--out"): ".csv",
          ("density", "--out"): ".csv"}


def with_option(argv, flag, value):
    """argv with `flag` set to `value` (replaced if present, else appended)."""
    argv = list(argv)
    if flag in argv:
        argv[argv.index(flag) + 1] = value
    else:
        argv += [flag, value]
    return argv


def snapshot(folder: Path):
    """Every entry below `folder`: relative path → (kind, bytes or link target, mode)."""
    entries = {}
    for path in sorted(folder.rglob("*")):
        if path.is_symlink():
            content = ("link", os.readlink(path))
        elif path.is_file():
            content = ("file", path.read_bytes())
        else:
            content = ("dir", None)
        entries[str(path.relative_to(folder))] = (*content, path.lstat().st_mode)
    return entries


@contextlib.contextmanager
def case_folder(tmp_path, artifacts):
    """A fresh case folder (in/ with copies of the tiny artifacts, empty out/) as the current
    directory; unlocked and removed afterwards."""
    root = Path(tempfile.mkdtemp(dir=tmp_path))
    (root / "in").mkdir()
    (root / "out").mkdir()
    for item in artifacts.iterdir():
        shutil.copy(item, root / "in" / item.name)
    np.save(root / "in" / "init.npy", np.zeros((1, 2)))
    old = os.getcwd()
    os.chdir(root)
    locked = []
    try:
        yield root, locked
    finally:
        os.chdir(old)
        for folder in locked:
            unlock_folder(folder)
        shutil.rmtree(root, ignore_errors=True)


def assert_refused(capsys, root, argv):
    """`dde ARGV` exits with 2, one clean error line, and changes nothing."""
    before = snapshot(root)
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, (argv, err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"dde {argv[0]}: error: "), (argv, err)
    assert "Traceback" not in err and "\x1b[" not in err
    assert snapshot(root) == before, argv


# ------------------------------------------------------------------------- bad data files
BAD_VALUES = st.one_of(st.sampled_from([np.nan, np.inf, -np.inf]),
                       st.floats(1e39, 1e308).flatmap(lambda v: st.sampled_from([v, -v])))


@st.composite
def planted_array(draw):
    """A finite [n, 2] array with one NaN, ±inf or beyond-float32 entry."""
    n = draw(st.integers(1, 8))
    x = np.asarray(draw(st.lists(st.floats(-3, 3), min_size=2 * n, max_size=2 * n)),
                   dtype=np.float64).reshape(n, 2)
    x[draw(st.integers(0, n - 1)), draw(st.integers(0, 1))] = draw(BAD_VALUES)
    return x


def bad_shapes(command):
    shapes = [np.zeros((2, 2, 2)), np.float64(1.5), np.zeros((0, 2)), np.zeros((3, 0)),
              np.zeros((0,))]
    if command not in FITS:  # any feature count trains a new model
        shapes += [np.ones((3, k)) for k in (1, 3, 5)] + [np.ones(4)]
    return st.sampled_from(shapes)


BAD_DTYPES = st.sampled_from([np.array([["a", "b"], ["c", "d"]]),
                              np.array([[1 + 2j, 3j]]),
                              np.array([[object(), 1.0]], dtype=object)])


def _npy_bytes(x):
    buffer = io.BytesIO()
    np.save(buffer, x, allow_pickle=True)
    return buffer.getvalue()


def _npz_bytes(x):
    buffer = io.BytesIO()
    np.savez(buffer, X=x)
    return buffer.getvalue()


def _csv_bytes(x):
    x = np.atleast_2d(x)
    return "\n".join(",".join(repr(float(v)) for v in row) for row in x).encode() + b"\n"


@st.composite
def bad_data_file(draw, command):
    """(suffix, bytes) of a data file no sub-command may accept, or (suffix, None) for a
    missing file and (suffix, "dir") for a folder in its place."""
    kind = draw(st.sampled_from(["values", "shape", "dtype", "csv", "truncated", "garbage",
                                 "suffix", "missing", "folder"]))
    if kind == "values":
        x = draw(planted_array())
        suffix = draw(st.sampled_from([".npy", ".npz", ".csv"]))
        return suffix, {".npy": _npy_bytes, ".npz": _npz_bytes, ".csv": _csv_bytes}[suffix](x)
    if kind == "shape":
        x = draw(bad_shapes(command))
        return draw(st.sampled_from([(".npy", _npy_bytes(x)), (".npz", _npz_bytes(x))]))
    if kind == "dtype":
        return ".npy", _npy_bytes(draw(BAD_DTYPES))
    if kind == "csv":
        return ".csv", draw(st.sampled_from([b"1,2\n3\n", b"1,2\n3,4,5\n", b"1,abc\n",
                                             b"", b"   \n\n", b"a,b\n", b"1,1e400\n",
                                             b"1,2\n,\n", b"\xff\xfe\x00garbage"]))
    if kind == "truncated":
        full = draw(st.sampled_from([(".npy", _npy_bytes(np.ones((20, 2)))),
                                     (".npz", _npz_bytes(np.ones((20, 2))))]))
        cut = draw(st.integers(0, len(full[1]) - 1))
        return full[0], full[1][:cut]
    if kind == "garbage":
        noise = draw(st.binary(min_size=1, max_size=200).filter(
            lambda b: not b.startswith((b"PK", b"\x93NUMPY"))))
        return draw(st.sampled_from([".npy", ".npz"])), noise
    if kind == "suffix":
        return draw(st.sampled_from([".parquet", ".json", ".h5", ""])), _csv_bytes(np.ones(
            (3, 2)))
    return ".npy", None if kind == "missing" else "dir"


def place(root, name, content):
    """Write `content` (bytes, None: nothing, "dir": a folder) at root/in/name."""
    path = root / "in" / name
    if content == "dir":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    return f"in/{name}"


@settings(max_examples=80, **SETTINGS)
@given(data=st.data())
def test_bad_data_files_are_refused(data, capsys, tmp_path, tiny_artifacts):
    command = data.draw(st.sampled_from(DATA_COMMANDS), label="command")
    suffix, content = data.draw(bad_data_file(command), label="file")
    with case_folder(tmp_path, tiny_artifacts) as (root, _):
        name = place(root, "bad" + suffix, content)
        assert_refused(capsys, root, with_option(BASE[command], DATA_FLAG[command], name))


# ------------------------------------------------------------ bad model and detector files
def _zip_bytes(members):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def _damage(raw, cut_or_none, draw):
    """raw truncated, or its last 40 % replaced by noise (the zip directory destroyed)."""
    if cut_or_none is not None:
        return raw[:cut_or_none]
    keep = int(0.6 * len(raw))
    return raw[:keep] + draw(st.binary(min_size=len(raw) - keep, max_size=len(raw) - keep))


STATE_KEYS = ["params", "estimator_given", "n_features_in_", "feature_names_in_", "offset_",
              "noise_std_", "n_steps_", "best_step_", "history_", "scaler", "format",
              "version", "threshold_source_", "baseline_"]
STATE_EDITS = [("offset_", None), ("offset_", "0.5"), ("offset_", float("nan")),
               ("noise_std_", -1.0), ("n_features_in_", 0), ("n_features_in_", "2"),
               ("n_steps_", -3), ("history_", []), ("feature_names_in_", ["a"]),
               ("params", {"no_such_parameter": 1}), ("version", 99), ("scaler", "none"),
               ("threshold_source_", "guess"), ("baseline_", [0.0])]


@st.composite
def bad_model_file(draw, command, artifacts):
    """(name, bytes or None/"dir") of a model file `command` must refuse."""
    if command == "score":
        raw = (artifacts / "detector.zip").read_bytes()
        with zipfile.ZipFile(artifacts / "detector.zip") as archive:
            members = {n: archive.read(n) for n in archive.namelist()}
        state = json.loads(members["detector.json"])
        kind = draw(st.sampled_from(["truncated", "corrupted", "keras", "badjson", "nokey",
                                     "edit", "scaler", "estimator", "missing", "folder"]))
        if kind in ("truncated", "corrupted"):
            cut = draw(st.integers(0, len(raw) - 1)) if kind == "truncated" else None
            return "d.zip", _damage(raw, cut, draw)
        if kind == "keras":
            return "d.zip", (artifacts / "model.keras").read_bytes()
        if kind == "badjson":
            text = members["detector.json"]
            cut = draw(st.integers(0, len(text) - 2))
            return "d.zip", _zip_bytes({**members, "detector.json": text[:cut]})
        if kind == "nokey":
            del state[draw(st.sampled_from(STATE_KEYS))]
        elif kind == "edit":
            key, value = draw(st.sampled_from(STATE_EDITS))
            state[key] = value
        elif kind == "scaler":
            key = draw(st.sampled_from(["mean_", "var_", "scale_", "n_samples_seen_"]))
            state["scaler"][key] = draw(st.sampled_from([[0.0], [1.0, 2.0, 3.0], None,
                                                         [float("nan"), 1.0], [-1.0, 1.0]]))
            if key == "mean_" and state["scaler"][key] == [-1.0, 1.0]:
                state["scaler"][key] = [1.0]  # a negative mean is fine; a short one is not
        elif kind == "estimator":
            model = members["estimator.keras"]
            return "d.zip", _zip_bytes({**members, "estimator.keras": model[:len(model) // 2]})
        else:
            return "d.zip", None if kind == "missing" else "dir"
        return "d.zip", _zip_bytes({**members, "detector.json": json.dumps(state)})
    raw = (artifacts / "model.keras").read_bytes()
    kinds = ["truncated", "corrupted", "empty_zip", "bad_config", "other", "detector",
             "suffix", "missing", "folder"] + (["unnormalized"] if command == "evaluate" else [])
    kind = draw(st.sampled_from(kinds))
    if kind in ("truncated", "corrupted"):
        cut = draw(st.integers(0, len(raw) - 1)) if kind == "truncated" else None
        return "m.keras", _damage(raw, cut, draw)
    if kind == "empty_zip":
        return "m.keras", _zip_bytes({"readme.txt": "hello"})
    if kind == "bad_config":
        with zipfile.ZipFile(artifacts / "model.keras") as archive:
            members = {n: archive.read(n) for n in archive.namelist()}
        members["config.json"] = draw(st.sampled_from([b"{", b"[]", b'{"class_name": "X"}']))
        return "m.keras", _zip_bytes(members)
    if kind == "other":
        return "m.keras", (artifacts / "other.keras").read_bytes()
    if kind == "detector":
        return "m.keras", (artifacts / "detector.zip").read_bytes()
    if kind == "suffix":
        return "m.h5", raw
    if kind == "unnormalized":
        return "m.keras", raw
    return "m.keras", None if kind == "missing" else "dir"


@settings(max_examples=60, **SETTINGS)
@given(data=st.data())
def test_bad_model_files_are_refused(data, capsys, tmp_path, tiny_artifacts):
    command = data.draw(st.sampled_from(MODEL_COMMANDS), label="command")
    name, content = data.draw(bad_model_file(command, tiny_artifacts), label="model")
    with case_folder(tmp_path, tiny_artifacts) as (root, _):
        assert_refused(capsys, root, with_option(BASE[command], "--model",
                                                 place(root, name, content)))


# -------------------------------------------------------------------------- bad out paths
def _spell(path, how):
    """Another spelling of the relative path `path` (in/x): ./in/x or in/../in/x."""
    return {"plain": path, "dot": "./" + path, "dotdot": "in/../" + path}[how]


@st.composite
def bad_output(draw, command, root, locked):
    """argv of `command` with one output path made bad; builds what that needs in root."""
    argv = list(BASE[command])
    flag = draw(st.sampled_from(OUTPUTS[command]))
    suffix = SUFFIX.get((command, flag), "")
    kind = draw(st.sampled_from(["input", "link", "hardlink", "folder", "under_file",
                                 "read_only"] + (["coincide"] if command in ("sample",
                                                                            "normalize")
                                                 else [])
                                + (["foreign", "holds_input", "cwd"]
                                   if command in FOLDER_OUTPUTS else [])))
    inputs = [f for f in INPUTS[command]
              if not (command == "normalize" and flag == "--out" and f == "--model")]
    if kind in ("input", "link", "hardlink"):
        source = argv[argv.index(draw(st.sampled_from(inputs))) + 1]
        if kind == "input":
            return with_option(argv, flag, _spell(source, draw(st.sampled_from(
                ["plain", "dot", "dotdot"]))))
        link = root / "out" / ("link" + suffix)
        (os.symlink if kind == "link" else os.link)(root / source, link)
        return with_option(argv, flag, f"out/link{suffix}")
    if kind == "coincide":
        if command == "normalize":
            return with_option(with_option(argv, "--json", "out/m.keras"), "--out",
                               "out/m.keras")
        os.symlink(root / "out" / "s.npy", root / "out" / "s.png")  # --plot → --out's file
        return argv
    if kind == "folder":
        if command in FOLDER_OUTPUTS:
            (root / argv[argv.index("--out") + 1]).write_text("a file, not a folder")
            return argv
        (root / "out" / ("adir" + suffix)).mkdir()
        return with_option(argv, flag, f"out/adir{suffix}")
    if kind == "under_file":
        parent = draw(st.sampled_from(["in/train.npy", "out/afile"]))
        (root / "out" / "afile").write_text("x")
        return with_option(argv, flag, f"{parent}/sub/x{suffix}")
    if kind == "read_only":
        folder = root / "out" / "locked"
        folder.mkdir()
        if command in FOLDER_OUTPUTS and draw(st.booleans()):
            target = "out/locked"  # the folder to replace is itself unwritable
        else:
            target = ("out/locked/run" if command in FOLDER_OUTPUTS
                      else f"out/locked/x{suffix}")
        lock_folder(folder)
        locked.append(folder)
        return with_option(argv, flag, target)
    if kind == "foreign":
        folder = root / argv[argv.index("--out") + 1]
        folder.mkdir()
        (folder / "notes.txt").write_text("mine")
        return argv
    if kind == "holds_input":
        return with_option(argv, "--out", draw(st.sampled_from(["in", "in/..", "."])))
    return with_option(argv, "--out", "out/..")  # cwd


@pytest.fixture
def lockable(read_only_dir):
    """Skips where no folder can be made read-only for this process."""
    read_only_dir()


@settings(max_examples=80, **SETTINGS)
@given(data=st.data())
def test_bad_output_paths_are_refused(data, capsys, tmp_path, tiny_artifacts, lockable):
    command = data.draw(st.sampled_from(COMMANDS), label="command")
    with case_folder(tmp_path, tiny_artifacts) as (root, locked):
        argv = data.draw(bad_output(command, root, locked), label="argv")
        assert_refused(capsys, root, argv)


# ------------------------------------------------------------------------ bad options
NONPOSITIVE = st.sampled_from(["0", "-1", "-100"])
BAD_FLOATS = st.sampled_from(["0", "-0.5", "nan", "inf"])
BAD_SEEDS = st.sampled_from(["-1", "-7", str(2**31), str(2**40)])
OPTIONS = {
    "fit": [("--epochs", NONPOSITIVE), ("--batch-size", NONPOSITIVE),
            ("--decay-every", NONPOSITIVE), ("--depth", NONPOSITIVE), ("--width", NONPOSITIVE),
            ("--num-samples", NONPOSITIVE), ("--seed", BAD_SEEDS),
            ("--learning-rate", BAD_FLOATS), ("--noise-std", BAD_FLOATS),
            ("--initial-noise-std", BAD_FLOATS), ("--decay-factor", BAD_FLOATS),
            ("--validation-split", st.sampled_from(["1", "1.5", "-0.1", "nan"]))],
    "sample": [("-n", NONPOSITIVE), ("--steps", NONPOSITIVE), ("--levels", NONPOSITIVE),
               ("--burnin", st.sampled_from(["-1", "-50"])), ("--step-size", BAD_FLOATS),
               ("--target-accept", st.sampled_from(["0", "1", "1.5", "nan"])),
               ("--seed", BAD_SEEDS)],
    "normalize": [("--num-samples", NONPOSITIVE), ("--batch-size", NONPOSITIVE),
                  ("--num-steps", NONPOSITIVE), ("--n-components", NONPOSITIVE),
                  ("--num-leapfrog-steps", NONPOSITIVE), ("--proposal-scale", BAD_FLOATS),
                  ("--min-ess", st.sampled_from(["-1", "nan"])), ("--seed", BAD_SEEDS),
                  ("--df", st.sampled_from(["2", "1.5", "0", "nan"])),
                  ("--smoothing-std", BAD_FLOATS), ("--noise-std", st.sampled_from(["0.1"]))],
    "evaluate": [("--batch-size", NONPOSITIVE), ("--noise-std", st.sampled_from(["0.1"]))],
    "score": [("--chunk-rows", NONPOSITIVE)],
    "density": [("--chunk-rows", NONPOSITIVE), ("--noise-std", st.sampled_from(["0.1"])),
                ("--noise-std", BAD_FLOATS)],
    "export": [("--noise-std", st.sampled_from(["0.1"])), ("--noise-std", BAD_FLOATS)],
    "fit_detector": [("--contamination", st.sampled_from(["0", "0.9", "-0.1", "nan"])),
                     ("--max-steps", NONPOSITIVE), ("--width", NONPOSITIVE),
                     ("--detector-noise-std", BAD_FLOATS), ("--seed", BAD_SEEDS),
                     ("--learning-rate", BAD_FLOATS), ("--activation", st.sampled_from(
                         ["relu", "no_such_activation"]))],
}


@settings(max_examples=60, **SETTINGS)
@given(data=st.data())
def test_nonsensical_options_are_refused(data, capsys, tmp_path, tiny_artifacts):
    command = data.draw(st.sampled_from(list(OPTIONS)), label="command")
    flag, values = data.draw(st.sampled_from(OPTIONS[command]), label="option")
    value = data.draw(values, label="value")
    with case_folder(tmp_path, tiny_artifacts) as (root, _):
        assert_refused(capsys, root, with_option(BASE[command], flag, value))


def test_the_base_calls_are_valid(capsys, tmp_path, tiny_artifacts):
    """The fuzzed calls differ from working ones only by the generated fault."""
    with case_folder(tmp_path, tiny_artifacts) as (root, _):
        for command in COMMANDS:
            assert main(BASE[command]) == 0, capsys.readouterr().err


