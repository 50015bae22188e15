"""--fast-dev-run of common's demo trainer: N steps, one validation, one summary line, no files anywhere."""

from __future__ import annotations

import itertools
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


def test_fast_dev_run_limits_the_validation_batches_the_task_sees():
    from common.demo import DemoConfig, RegressionTask
    from common.fast_dev_run import FastDevRun
    from common.loop import Loop, Plan

    class CountingTask(RegressionTask):
        """Validates over 10 batches unless the loop limits it, like the packages' validate loops."""

        seen: list[int] = []

        def validate(self):
            batches = list(itertools.islice(range(10), self.val_batch_limit))
            self.seen.append(len(batches))
            return super().validate()

    task = CountingTask(DemoConfig(samples=128))
    assert task.val_batch_limit is None  # an ordinary run validates everything
    Loop(task, Plan(max_epochs=1), callbacks=[FastDevRun(2)]).fit()
    assert task.seen == [2]
