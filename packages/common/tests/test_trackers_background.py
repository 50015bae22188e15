"""BackgroundTracker: a slow or dead tracking server never holds training (and a real MLflow outage)."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import replace

import pytest

from common.callbacks import Callback
from common.testing import history_series
from common.trackers.background import BackgroundTracker


class Recorder:
    def __init__(self, gate: threading.Event | None = None, fail_on: str | None = None) -> None:
        self.calls: list[tuple] = []
        self.gate, self.fail_on = gate, fail_on
        self.closed = False

    def _do(self, *call) -> None:
        if self.gate is not None:
            self.gate.wait()
        if call[0] == self.fail_on:
            raise ConnectionError("server went away")
        self.calls.append(call)

    def log_params(self, params):
        self._do("log_params", params)

    def log_metrics(self, metrics, step):
        self._do("log_metrics", metrics, step)

    def log_artifact(self, path, name=None):
        self._do("log_artifact", str(path), name)

    def close(self):
        self.closed = True


def test_calls_reach_the_tracker_in_order_and_close_waits_for_them():
    inner = Recorder()
    tracker = BackgroundTracker(inner, label="fake")
    tracker.log_params({"lr": 0.1})
    for step in range(1, 201):
        tracker.log_metrics({"loss": 1.0 / step}, step)
    tracker.close()
    assert inner.closed and not tracker.down
    assert inner.calls[0] == ("log_params", {"lr": 0.1})
    assert [c[2] for c in inner.calls[1:]] == list(range(1, 201))


def test_a_server_that_stops_answering_costs_the_caller_at_most_the_stall_time(caplog):
    gate = threading.Event()  # never set: every call hangs, like a client retrying a dead server
    tracker = BackgroundTracker(Recorder(gate), label="hung", stall_seconds=0.3)
    with caplog.at_level(logging.WARNING, logger="trainyard.trackers"):
        started = time.monotonic()
        for step in range(1000):
            tracker.log_metrics({"loss": 1.0}, step)
        queued = time.monotonic() - started
        time.sleep(0.4)
        tracker.log_metrics({"loss": 1.0}, 1000)  # notices the stall: says so once, sends nothing more
        tracker.close()
        total = time.monotonic() - started
    assert tracker.down
    assert queued < total  # the calls themselves never waited on the hung server
    assert sum("tracker hung is down" in r.getMessage() for r in caplog.records) == 1
    gate.set()


def test_an_error_switches_the_tracker_off_once():
    inner = Recorder(fail_on="log_metrics")
    tracker = BackgroundTracker(inner, label="flaky")
    tracker.log_params({"a": 1})
    tracker.log_metrics({"loss": 1.0}, 1)
    tracker.log_metrics({"loss": 1.0}, 2)
    tracker.close()
    assert tracker.down and inner.calls == [("log_params", {"a": 1})]
    assert not inner.closed  # a failed tracker is not closed: closing would hit the same dead server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    """A real MLflow tracking server on the loopback interface (its Flask app under werkzeug: it starts in
    seconds, where `mlflow server` first spends a minute on its job executors)."""
    pytest.importorskip("mlflow")
    port = _free_port()
    env = {
        **os.environ,
        "_MLFLOW_SERVER_FILE_STORE": f"sqlite:///{tmp_path / 'server.db'}",
        "_MLFLOW_SERVER_ARTIFACT_ROOT": str(tmp_path / "artifacts"),
        "_MLFLOW_SERVER_SERVE_ARTIFACTS": "false",
    }
    code = (
        "from mlflow.server import app\nfrom werkzeug.serving import make_server\n"
        f"make_server('127.0.0.1', {port}, app).serve_forever()"
    )
    server = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2).read()
            break
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                pytest.fail("the loopback MLflow server did not start")
            time.sleep(0.2)
    from mlflow.tracking import MlflowClient

    MlflowClient(url).create_experiment("common_demo")  # the store's first request sets up its schema
    yield url, server
    server.kill()
    server.wait()


class KillServerAt(Callback):
    """Kills the tracking server at a step and notes when; without a server, only notes the time."""

    def __init__(self, step: int, server=None) -> None:
        self.step, self.server, self.at = step, server, None

    def on_train_batch_end(self, loop, outputs) -> None:
        if loop.pos.step == self.step:
            if self.server is not None:
                self.server.send_signal(signal.SIGKILL)
                self.server.wait()
            self.at = time.monotonic()


@pytest.mark.slow
def test_a_killed_mlflow_server_neither_stalls_the_run_nor_loses_history(
    tmp_path, mlflow_server, caplog, monkeypatch
):
    from common.demo import DemoConfig, train

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # (it would win over the server's URI)
    # The call the tracker abandons when the server dies goes on retrying in its thread after the test, and
    # urllib3's backoff jitter would draw from Python's global `random` meanwhile: later tests in this
    # process that check exact RNG resume would see those draws. Same retries, no jitter.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_JITTER", "0")
    url, server = mlflow_server
    cfg = DemoConfig(output_dir=str(tmp_path / "alone"), epochs=6, patience=100)
    marker = KillServerAt(20)
    train(cfg, callbacks=[marker])
    baseline = time.monotonic() - marker.at  # the same steps after the kill point, with no server at all

    killer = KillServerAt(20, server)
    with caplog.at_level(logging.WARNING, logger="trainyard.trackers"):
        train(replace(cfg, output_dir=str(tmp_path / "outage"), mlflow_uri=url), callbacks=[killer])
    after_kill = time.monotonic() - killer.at

    # Without the worker thread the MLflow client retries each call for minutes; with it the outage costs
    # about the 2 s stall limit. The bound sits far between the two, so a loaded machine does not flip it.
    assert after_kill - baseline < 30.0, (after_kill, baseline)
    assert sum("tracker MLflow is down" in r.getMessage() for r in caplog.records) == 1
    expected = history_series(tmp_path / "alone" / "metrics_history.json")
    assert len(expected["train/loss_step"]) > 40 and "val/loss" in expected
    assert history_series(tmp_path / "outage" / "metrics_history.json") == expected  # every row kept


def test_an_upload_in_progress_gets_time_for_its_size_before_it_counts_as_a_stall(tmp_path):
    from common.trackers.background import _SLOW_LINK_BYTES_PER_S, _transfer_seconds

    model = tmp_path / "model"
    model.mkdir()
    with open(model / "weights.bin", "wb") as f:
        f.truncate(3 * _SLOW_LINK_BYTES_PER_S)  # 3 s at the slow link's pace
    (model / "MLmodel").write_text("flavors: {}\n")
    assert _transfer_seconds("log_model", (model, "model")) == pytest.approx(3.0, abs=1e-3)
    assert _transfer_seconds("log_artifact", (model / "weights.bin", None)) == 3.0
    assert _transfer_seconds("log_metrics", ({"loss": 1.0}, 1)) == 0.0  # rows: no allowance
    assert _transfer_seconds("log_model", (tmp_path / "gone", "model")) == 0.0
