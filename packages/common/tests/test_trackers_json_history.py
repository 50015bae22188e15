"""JsonHistory: complete record, atomic rewrites, crash journal, resume truncation."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from common.errors import CheckpointError
from common.trackers import JsonHistory


def read(path):
    return json.loads(path.read_text(encoding="utf-8"))


def test_records_params_metrics_and_artifacts(tmp_path):
    history = JsonHistory(tmp_path / "metrics_history.json")
    assert read(history.path) == {"params": {}, "metrics": {}, "artifacts": [], "log_calls": 0}

    history.log_params({"model": {"dim": 8, "act": "gelu"}, "lr": 1e-3})
    history.log_params({"model": {"depth": 2}})  # merged into the nested dict, not replacing it
    history.log_metrics({"train/loss": np.float32(0.5), "lr": 1e-3}, step=1)
    history.log_metrics({"train/loss": 0.25, "val/loss": float("nan")}, step=2)
    plot = tmp_path / "plots" / "curves.png"
    plot.parent.mkdir()
    plot.write_bytes(b"png")
    history.log_artifact(plot)
    history.close()

    data = read(history.path)
    assert data["params"] == {"model": {"dim": 8, "act": "gelu", "depth": 2}, "lr": 1e-3}
    assert [(e["step"], e["value"]) for e in data["metrics"]["train/loss"]] == [(1, 0.5), (2, 0.25)]
    assert data["metrics"]["lr"][0]["value"] == 1e-3 and data["metrics"]["lr"][0]["time"] > 0
    assert math.isnan(data["metrics"]["val/loss"][0]["value"])
    assert data["artifacts"][0]["name"] == "curves.png"
    assert data["artifacts"][0]["path"] == "plots/curves.png"  # relative to the history's folder
    assert history.series("train/loss") == [(1, 0.5), (2, 0.25)]
    assert not history.journal_path.exists()  # close() leaves only the JSON
    with pytest.raises(KeyError, match="train/loss"):
        history.series("train/los")


def test_rewrites_every_flush_every_calls_and_journals_the_rest(tmp_path):
    history = JsonHistory(tmp_path / "h.json", flush_every=3)
    for step in range(1, 3):
        history.log_metrics({"loss": 1.0 / step}, step=step)
    assert read(history.path)["metrics"] == {}  # not yet rewritten ...
    assert len(history.journal_path.read_text().splitlines()) == 2  # ... but every step is journaled
    history.log_metrics({"loss": 1.0 / 3}, step=3)
    assert [e["step"] for e in read(history.path)["metrics"]["loss"]] == [1, 2, 3]
    assert history.journal_path.read_text() == ""  # the journal restarts after each rewrite
    history.log_metrics({"loss": 0.2}, step=4)
    history.flush()
    assert [e["step"] for e in read(history.path)["metrics"]["loss"]] == [1, 2, 3, 4]
    # No temporary files left behind by the atomic writes.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h.json", "h.json.journal"]
    history.close()


def test_resume_drops_steps_after_the_checkpoint(tmp_path):
    path = tmp_path / "h.json"
    first = JsonHistory(path)
    first.log_params({"seed": 0})
    for step in range(1, 11):
        first.log_metrics({"loss": float(step)}, step=step)
    first.close()

    resumed = JsonHistory(path, resume_step=6)
    assert resumed.series("loss") == [(s, float(s)) for s in range(1, 7)]
    assert [e["step"] for e in read(path)["metrics"]["loss"]] == list(range(1, 7))  # rewritten at once
    resumed.log_metrics({"loss": 6.0}, step=6)  # a loop that logs its checkpoint step again
    for step in range(7, 11):
        resumed.log_metrics({"loss": float(step)}, step=step)
    resumed.close()
    assert read(path)["params"] == {"seed": 0}
    assert JsonHistory(path, resume_step=100).series("loss") == [(s, float(s)) for s in range(1, 11)]


def test_process_killed_between_rewrites_loses_nothing(tmp_path):
    """The child logs 30 steps (no rewrite: flush_every=50) and dies without closing, as under SIGKILL."""
    path = tmp_path / "h.json"
    child = textwrap.dedent(f"""
        import os
        from common.trackers.json_history import JsonHistory
        history = JsonHistory({str(path)!r}, flush_every=50)
        for step in range(1, 31):
            history.log_metrics({{"loss": step / 10}}, step=step)
        os._exit(0)  # no close(), no atexit, no buffers flushed by Python
    """)
    subprocess.run([sys.executable, "-c", child], check=True, timeout=60)
    assert read(path)["metrics"] == {}  # the JSON itself is stale

    resumed = JsonHistory(path, resume_step=20)  # the checkpoint was at step 20
    assert resumed.series("loss") == [(s, s / 10) for s in range(1, 21)]
    assert [e["step"] for e in read(path)["metrics"]["loss"]] == list(range(1, 21))
    resumed.close()


def test_journal_entries_already_in_the_json_are_not_counted_twice(tmp_path):
    path = tmp_path / "h.json"
    history = JsonHistory(path, flush_every=100)
    for step in range(1, 4):
        history.log_metrics({"loss": float(step)}, step=step)
    journal = history.journal_path.read_text()
    history.flush()
    # Crash after the rewrite but before the journal reset: the old lines are still there.
    history.journal_path.write_text(journal)
    assert JsonHistory(path, resume_step=10).series("loss") == [(1, 1.0), (2, 2.0), (3, 3.0)]


def test_new_run_without_resume_starts_an_empty_history(tmp_path):
    path = tmp_path / "h.json"
    old = JsonHistory(path)
    old.log_metrics({"loss": 1.0}, step=1)
    old.close()
    assert read(JsonHistory(path).path)["metrics"] == {}


def test_corrupt_history_on_resume_is_a_clear_error(tmp_path):
    path = tmp_path / "h.json"
    path.write_text('{"params": {}, "metrics": {"loss": [{"step": 1,')
    with pytest.raises(CheckpointError, match="h.json.*Move the file away"):
        JsonHistory(path, resume_step=1)


def test_rejects_non_numeric_metrics(tmp_path):
    history = JsonHistory(tmp_path / "h.json")
    with pytest.raises(TypeError, match="'acc'"):
        history.log_metrics({"acc": "high"}, step=1)
    with pytest.raises(TypeError, match="'vec'"):
        history.log_metrics({"vec": [1.0, 2.0]}, step=1)


def test_a_resume_keeps_exactly_the_rows_logged_before_its_checkpoint(tmp_path):
    path = tmp_path / "h.json"
    history = JsonHistory(path)
    history.log_metrics({"loss": 1.0}, step=4)
    state = history.state_dict()  # the checkpoint is written here, at step 4
    history.log_metrics({"lr": 0.1}, step=4)  # logged at the same step after the checkpoint
    history.log_metrics({"loss": 0.5}, step=5)
    # killed: the journal has everything; a resume cuts back to the checkpoint by log call, not by step
    resumed = JsonHistory(path, resume_step=4)
    resumed.load_state_dict(state)
    assert "lr" not in resumed.metrics and resumed.series("loss") == [(4, 1.0)]
    resumed.log_metrics({"lr": 0.1}, step=4)
    resumed.close()
    again = JsonHistory(path, resume_step=4)
    assert again.series("lr") == [(4, 0.1)]
