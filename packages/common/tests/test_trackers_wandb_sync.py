"""A W&B offline run is complete when the tracker closes: its `.wandb` log ends with the exit record (read
with wandb's own protobuf schema), holds every row, and `wandb sync` takes the folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("wandb")

from common.runs import RunFolder  # noqa: E402
from common.trackers import build_trackers  # noqa: E402
from common.trackers.wandb_records import is_complete, read_records  # noqa: E402


@pytest.fixture(autouse=True)
def offline_env(monkeypatch):
    for var in ("WANDB_API_KEY", "WANDB_MODE", "RANK", "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    monkeypatch.setenv("WANDB_CONSOLE", "off")


def test_offline_run_is_complete_at_close_and_wandb_sync_takes_it(tmp_path):
    trackers = build_trackers(RunFolder(tmp_path / "run"), wandb={"project": "trainyard"})
    for step in range(1, 4):
        trackers.log_metrics({"train/loss": 1.0 / step, "lr": 0.1}, step=step)
    run_dir = trackers.trackers[1].run_dir
    trackers.close()

    assert is_complete(run_dir)  # at once: no waiting for W&B's service after close
    [log] = run_dir.glob("*.wandb")
    records = read_records(log)
    rows = [
        {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
        for r in records
        if r.WhichOneof("record_type") == "history"
    ]
    assert [(row["_step"], row["train/loss"]) for row in rows] == [(s, 1.0 / s) for s in range(1, 4)]

    done = subprocess.run(
        [sys.executable, "-m", "wandb", "sync", "--dry-run", str(run_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "WANDB_MODE": "offline"},
    )
    assert done.returncode == 0, done.stderr
    assert "Would sync 1 run" in done.stdout + done.stderr and log.name in done.stdout + done.stderr
