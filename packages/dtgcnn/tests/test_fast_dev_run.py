"""`python -m dtgcnn.train --fast-dev-run N`: N steps and one validation on the tiny meshes; no files."""

from __future__ import annotations

import tempfile

from common.cli import run_cli
from dtgcnn.train import main

TINY = [
    "num_vertices=48",
    "k=4",
    "edge_conv_dims=[8,8,16]",
    "fusion_dim=32",
    "hidden_dim=16",
    "embedding_dim=8",
    "batch_size=8",
    "samples_per_label=4",
    "warmup_epochs=0",
    "prefetch_batches=1",
    "jit_compile=false",
    "tensorboard=true",  # a tracker that writes into the run folder: it must go too
]


def test_fast_dev_run_writes_nothing(tiny_data, tmp_path, monkeypatch, capsys):
    cwd, scratch = tmp_path / "cwd", tmp_path / "tmp"
    cwd.mkdir()
    scratch.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    args = ["--data_dir", str(tiny_data), "--output-dir", "run", "--fast-dev-run", "2", "--device", "cpu"]
    run_cli(main, [*args, *TINY])
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("fast-dev-run passed: 2 optimizer step(s); train/loss ")
    assert "val/loss" in line and line.endswith("nothing written")
    assert list(cwd.iterdir()) == [] and list(scratch.iterdir()) == []
