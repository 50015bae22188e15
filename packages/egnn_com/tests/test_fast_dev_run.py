"""`python -m egnn_com.train --fast-dev-run N` (both spellings): N train and N val batches; no files."""

from __future__ import annotations

import tempfile

from common.cli import run_cli
from egnn_com.train import main


def test_fast_dev_run_writes_nothing(tiny_data, tmp_path, monkeypatch, capsys):
    cwd, scratch = tmp_path / "cwd", tmp_path / "tmp"
    cwd.mkdir()
    scratch.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    args = ["--data-dir", str(tiny_data), "--output-dir", "run", "--fast-dev-run", "2", "--device", "cpu"]
    run_cli(main, [*args, "--num_workers", "0", "model.hidden_dim=16", "model.num_layers=2"])
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("fast-dev-run passed: 2 optimizer step(s); train/loss ")
    assert "val/loss" in line and line.endswith("nothing written")
    assert list(cwd.iterdir()) == []
    # PyG writes its generated message-passing modules to the temp folder on first use: its cache, not ours
    assert [p.name for p in scratch.iterdir() if not p.name.startswith("torch_geometric.")] == []
