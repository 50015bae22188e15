"""Trackers fan-out and build_trackers: failures reported once, nothing lost, rank 0 only."""

from __future__ import annotations

import json
import logging
import sys
import time

import pytest

from common.runs import RunFolder
from common.trackers import JsonHistory, Tracker, Trackers, build_trackers, flatten_params


class Recorder:
    """A tracker that remembers every call."""

    def __init__(self):
        self.calls = []

    def log_params(self, params):
        self.calls.append(("params", params))

    def log_metrics(self, metrics, step):
        self.calls.append(("metrics", metrics, step))

    def log_artifact(self, path, name=None):
        self.calls.append(("artifact", path.name, name))

    def close(self):
        self.calls.append(("close",))


class FlakyServer(Recorder):
    """Works for two metric calls, then its 'server' goes away."""

    def log_metrics(self, metrics, step):
        if len([c for c in self.calls if c[0] == "metrics"]) >= 2:
            raise ConnectionError("tracking server went away")
        super().log_metrics(metrics, step)


@pytest.fixture(autouse=True)
def rank_zero(monkeypatch):
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MLFLOW_TRACKING_URI", "WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(var, raising=False)


def warnings_from(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_failing_tracker_is_reported_once_and_nothing_is_lost(tmp_path, caplog):
    history, flaky, healthy = JsonHistory(tmp_path / "h.json"), FlakyServer(), Recorder()
    assert isinstance(flaky, Tracker)
    trackers = Trackers([history, flaky, healthy])
    with caplog.at_level(logging.WARNING, logger="trainyard.trackers"):
        trackers.log_params({"opt": {"lr": 0.1}})
        for step in range(1, 21):
            trackers.log_metrics({"loss": 1.0 / step}, step=step)
        trackers.close()

    messages = warnings_from(caplog)
    assert len(messages) == 1
    assert "FlakyServer" in messages[0] and "tracking server went away" in messages[0]
    assert trackers.failed == ("FlakyServer",)
    saved = json.loads((tmp_path / "h.json").read_text())
    assert [e["step"] for e in saved["metrics"]["loss"]] == list(range(1, 21))
    assert [c[2] for c in healthy.calls if c[0] == "metrics"] == list(range(1, 21))
    assert healthy.calls[-1] == ("close",)
    assert ("close",) not in flaky.calls  # a dropped tracker is not called again, not even to close


def test_values_are_checked_before_any_tracker_sees_them(tmp_path):
    recorder = Recorder()
    trackers = Trackers([recorder])
    with pytest.raises(TypeError, match="'acc'"):
        trackers.log_metrics({"acc": None}, step=1)
    with pytest.raises(TypeError, match="step"):
        trackers.log_metrics({"acc": 1.0}, step=1.5)
    assert recorder.calls == [] and trackers.trackers == (recorder,)  # a caller bug drops no tracker


def test_missing_artifact_is_a_warning_not_a_tracker_failure(tmp_path, caplog):
    recorder = Recorder()
    trackers = Trackers([recorder])
    with caplog.at_level(logging.WARNING, logger="trainyard.trackers"):
        trackers.log_artifact(tmp_path / "nope.png")
    assert "nope.png does not exist" in warnings_from(caplog)[0]
    (tmp_path / "curves.png").write_bytes(b"png")
    trackers.log_artifact(tmp_path / "curves.png", name="plot.png")
    assert recorder.calls == [("artifact", "curves.png", "plot.png")]


def test_flatten_params_joins_nested_keys_with_dots():
    assert flatten_params({"a": {"b": {"c": 1}, "d": [1, 2]}, "e": {}}) == {
        "a.b.c": 1,
        "a.d": [1, 2],
        "e": {},
    }


def test_build_trackers_default_is_the_json_history(tmp_path):
    run = RunFolder(tmp_path / "run")
    with build_trackers(run) as trackers:
        assert [type(t).__name__ for t in trackers.trackers] == ["JsonHistory"]
        trackers.log_metrics({"loss": 2.0}, step=3)
        assert trackers.history.series("loss") == [(3, 2.0)]
    assert json.loads(run.path("metrics_history.json").read_text())["metrics"]["loss"][0]["value"] == 2.0


def test_only_rank_zero_writes_anything(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    run = RunFolder(tmp_path / "run")
    before = sorted(p.relative_to(run.root) for p in run.root.rglob("*"))
    trackers = build_trackers(run, tensorboard=True)
    trackers.log_params({"a": 1})
    trackers.log_metrics({"loss": 1.0}, step=1)
    trackers.flush()
    trackers.close()
    assert trackers.history is None
    assert sorted(p.relative_to(run.root) for p in run.root.rglob("*")) == before
    # Trackers handed over by hand are ignored too on a non-zero rank.
    recorder = Recorder()
    Trackers([recorder]).log_metrics({"loss": 1.0}, step=1)
    assert recorder.calls == []


def test_unreachable_mlflow_server_degrades_to_one_warning_quickly(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    run = RunFolder(tmp_path / "run")
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="trainyard.trackers"):
        trackers = build_trackers(run, mlflow={"experiment": "x"})
    elapsed = time.monotonic() - start
    messages = warnings_from(caplog)
    assert len(messages) == 1 and "MLflow" in messages[0] and "127.0.0.1:9" in messages[0]
    assert [type(t).__name__ for t in trackers.trackers] == ["JsonHistory"]
    trackers.log_metrics({"loss": 1.0}, step=1)
    trackers.close()
    assert elapsed < 30, f"building trackers against a dead server took {elapsed:.1f}s"


def test_missing_package_degrades_to_one_warning(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "wandb", None)  # makes `import wandb` raise ImportError
    run = RunFolder(tmp_path / "run")
    with caplog.at_level(logging.WARNING, logger="trainyard.trackers"):
        trackers = build_trackers(run, wandb={"project": "p"})
    messages = warnings_from(caplog)
    assert len(messages) == 1 and "W&B" in messages[0] and "trainyard-common[wandb]" in messages[0]
    assert [type(t).__name__ for t in trackers.trackers] == ["JsonHistory"]
    trackers.close()


def test_importing_trackers_loads_no_backend():
    import subprocess

    code = (
        "import sys, common.trackers; "
        "print(sorted(m for m in ('torch', 'tensorboard', 'mlflow', 'wandb', 'tensorboardX') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"
