"""--fast-dev-run of common's demo trainer: N steps, one validation, one summary line, no files anywhere."""

from __future__ import annotations

import re
import tempfile

import pytest

from common.cli import run_cli
from common.demo import main


@pytest.fixture
def places(tmp_path, monkeypatch):
    """(working folder, temporary-files folder), both empty: where a run could leave files."""
    cwd, scratch = tmp_path / "cwd", tmp_path / "tmp"
    cwd.mkdir()
    scratch.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    return cwd, scratch


@pytest.mark.parametrize(
    "args, steps",
    [
        (["--fast-dev-run", "3", "samples=128"], 3),
        (["--fast_dev_run", "samples=128"], 1),  # a bare flag before an override: N is 1, not the override
        (["samples=128", "--fast_dev_run"], 1),
    ],
)
def test_fast_dev_run_trains_n_steps_validates_and_writes_nothing(places, capsys, args, steps):
    run_cli(main, ["--output-dir", "out", *args])
    line = capsys.readouterr().out.strip()
    assert re.fullmatch(
        rf"fast-dev-run passed: {steps} optimizer step\(s\); train/loss [0-9.e+-]+, val/loss [0-9.e+-]+; "
        r"nothing written",
        line,
    )
    assert [list(p.iterdir()) for p in places] == [[], []]
