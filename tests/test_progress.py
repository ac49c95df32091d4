"""Progress reports (`dde.progress`): a Keras progress bar with ETA on a terminal, nothing
in non-interactive runs or with --quiet, and the command line following that rule."""
import io
import re
import sys

import numpy as np

from dde import progress
from dde_cli import main


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_bars_only_on_a_terminal(monkeypatch, capsys):
    assert not progress.interactive()  # pytest captures: not a terminal
    assert progress.progress_bar(10, "row", enabled="auto") is None
    assert not progress.show_progress(quiet=False)
    assert progress.keras_verbose(False) == 2 and progress.keras_verbose(True) == 0
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    assert progress.show_progress(False) and not progress.show_progress(True)
    assert progress.keras_verbose(False) == 1
    chunks = [(i, np.zeros((5, 2))) for i in range(0, 20, 5)]
    seen = []
    for item in progress.chunks_with_progress(iter(chunks), 20, "row", "auto"):
        seen.append(item[0])
    assert seen == [0, 5, 10, 15]
    text = terminal.getvalue()
    assert "20/20" in text and "/row" in text  # units done and the time per unit
    bar = progress.progress_bar(100, "step")
    bar.update(10)
    # Keras writes the ETA, in bold, before the time per unit while work remains
    assert re.search(r"10/100.*\x1b\[1m\d+s\x1b\[0m \d+\w?s/step", terminal.getvalue())
    assert progress.progress_bar(5, enabled=False) is None


def test_commands_print_no_bar_when_not_interactive(tiny_artifacts, tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.zeros((300, 2)))
    assert main(["density", "--model", str(tiny_artifacts / "model.keras"), "--data",
                 str(tmp_path / "x.npy"), "--out", str(tmp_path / "d.csv"),
                 "--chunk-rows", "50"]) == 0
    assert main(["sample", "--model", str(tiny_artifacts / "model.keras"), "-n", "4",
                 "--steps", "20", "--out", str(tmp_path / "s.npy")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and out[0].startswith("dde density: 300 rows") \
        and out[1].startswith("dde sample:"), out
