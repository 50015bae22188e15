"""`python -m spectral_mae.train --fast-dev-run N`: N steps and one validation on the tiny cubes; no files."""

from __future__ import annotations

import tempfile

from common.cli import run_cli
from spectral_mae.train import main


def test_fast_dev_run_writes_nothing(override_factory, tmp_path, monkeypatch, capsys):
    cwd, scratch = tmp_path / "cwd", tmp_path / "tmp"
    cwd.mkdir()
    scratch.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    overrides = override_factory(cwd / "runs", "mlflow.enabled=true")  # MLflow would write mlflow.db here
    run_cli(main, ["--fast_dev_run", "2", "--device", "cpu", *overrides])
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("fast-dev-run passed: 2 optimizer step(s); train/loss ")
    assert "val/loss" in line and line.endswith("nothing written")
    assert list(cwd.iterdir()) == []  # no run folder, no MLflow store
    # the run's scratch folder is gone (libraries imported on the way may keep caches of their own there)
    assert [p.name for p in scratch.iterdir() if p.name.startswith("spectral_mae")] == []
