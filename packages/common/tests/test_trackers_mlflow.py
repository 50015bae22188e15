"""MlflowTracker, read back with MlflowClient (each local store costs a few seconds of schema setup)."""

from __future__ import annotations

import json
import logging
import shlex
import sys
from pathlib import Path

import pytest

pytest.importorskip("mlflow")

from mlflow.tracking import MlflowClient  # noqa: E402

from common.runs import RunFolder  # noqa: E402
from common.trackers import MlflowTracker, build_trackers  # noqa: E402
from common.trackers.factory import MLFLOW_RUN_ID_FILE  # noqa: E402
from common.trackers.mlflow import MAX_PARAM_VALUE  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:mlflow.store")


@pytest.fixture(autouse=True)
def no_tracking_env(monkeypatch):
    for var in ("MLFLOW_TRACKING_URI", "RANK", "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """Its `mlruns/` store is shared by the module: creating a store's schema is the slow part here."""
    return RunFolder(tmp_path_factory.mktemp("runs") / "first")


def history(client, run_id, key):
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_params_metrics_and_artifacts_in_the_run_folder_store(tmp_path, first_run, caplog):
    store = first_run.path("mlruns")
    trackers = build_trackers(
        first_run,
        mlflow={
            "experiment": "mae_large",
            "run_name": "trial",
            "tags": {"version": "v1.0"},
            "store_dir": store,
        },
    )
    tracker = trackers.trackers[1].tracker  # MLflow/W&B log from a worker thread (BackgroundTracker)
    assert isinstance(tracker, MlflowTracker)
    assert tracker.tracking_uri == f"sqlite:///{store.resolve() / 'mlflow.db'}"
    long_text = "x" * (MAX_PARAM_VALUE + 10)
    with caplog.at_level(logging.WARNING, logger="trainyard.trackers"):
        tracker.log_params({"model": {"dim": 8, "depths": [2, 2]}, "lr": 1e-3, "notes": long_text})
        tracker.log_params({"lr": 1e-3})  # same value again: fine
        tracker.log_params({"lr": 2e-3})  # params are write-once in MLflow: warned, not fatal
    assert any("truncated" in r.getMessage() for r in caplog.records)
    assert any("already logged" in r.getMessage() for r in caplog.records)
    for step in range(1, 6):
        tracker.log_metrics({"train/loss": 1.0 / step, "val acc": step / 10, "bad#name": 1.0}, step=step)
    (tmp_path / "curves.png").write_bytes(b"\x89PNG fake")
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "last.npz").write_bytes(b"weights")
    tracker.log_artifact(tmp_path / "curves.png")
    tracker.log_artifact(tmp_path / "curves.png", name="plots/training_curves.png")
    tracker.log_artifact(tmp_path / "ckpt")
    run_id = tracker.run_id
    trackers.close()

    client = MlflowClient(tracking_uri=tracker.tracking_uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "trial"
    assert run.data.tags["version"] == "v1.0"
    assert client.get_experiment(run.info.experiment_id).name == "mae_large"
    params = run.data.params
    assert params["model.dim"] == "8" and params["model.depths"] == "[2, 2]" and params["lr"] == "0.001"
    assert len(params["notes"]) == MAX_PARAM_VALUE and params["notes"].endswith(
        f"[truncated from {MAX_PARAM_VALUE + 10} characters]"
    )
    assert history(client, run_id, "train/loss") == [(s, 1.0 / s) for s in range(1, 6)]
    assert history(client, run_id, "val acc") == [(s, s / 10) for s in range(1, 6)]
    assert history(client, run_id, "bad_name") == [(s, 1.0) for s in range(1, 6)]
    top = sorted(a.path for a in client.list_artifacts(run_id))
    assert top == ["ckpt", "curves.png", "plots"]
    assert [a.path for a in client.list_artifacts(run_id, "plots")] == ["plots/training_curves.png"]
    assert [a.path for a in client.list_artifacts(run_id, "ckpt")] == ["ckpt/last.npz"]
    # Artifacts live in the run folder too, next to the database.
    assert list((store / "mlartifacts").rglob("training_curves.png"))


def test_env_tracking_uri_wins_and_a_resumed_run_continues_its_mlflow_run(tmp_path, first_run, monkeypatch):
    uri = f"sqlite:///{first_run.path('mlruns', 'mlflow.db')}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    run = RunFolder(tmp_path / "run")

    first = build_trackers(
        run, mlflow={"experiment": "egnn", "tracking_uri": f"sqlite:///{tmp_path}/other.db"}
    )
    assert first.trackers[1].tracking_uri == uri
    assert [type(getattr(t, "tracker", t)).__name__ for t in first.trackers] == [
        "JsonHistory",
        "MlflowTracker",
    ]
    first.log_params({"lr": 0.1, "resume": None})
    for step in range(1, 5):
        first.log_metrics({"loss": float(step)}, step=step)
    first.close()
    assert not run.path("mlruns").exists() and not (tmp_path / "other.db").exists()  # the env store was used
    run_id = run.path(MLFLOW_RUN_ID_FILE).read_text()

    resumed = build_trackers(run, mlflow={"experiment": "egnn"}, resume_step=4)
    assert resumed.trackers[1].run_id == run_id
    resumed.log_params({"lr": 0.1, "resume": "last.ckpt", "epochs": 3})  # a changed param must not break it
    assert [type(getattr(t, "tracker", t)).__name__ for t in resumed.trackers] == [
        "JsonHistory",
        "MlflowTracker",
    ]
    for step in range(5, 8):
        resumed.log_metrics({"loss": float(step)}, step=step)
    resumed.close()

    client = MlflowClient(tracking_uri=uri)
    assert history(client, run_id, "loss") == [(s, float(s)) for s in range(1, 8)]
    assert client.get_run(run_id).info.status == "FINISHED"
    params = {k: v for k, v in client.get_run(run_id).data.params.items() if not k.startswith("run.")}
    assert params == {"lr": "0.1", "resume": "None", "epochs": "3"}  # (run.*: where the run came from)
    assert len(client.search_runs([client.get_experiment_by_name("egnn").experiment_id])) == 1


def test_runs_share_one_store_where_the_command_runs_and_record_where_they_came_from(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ids = []
    for name in ("egnn", "cabruca"):
        trackers = build_trackers(RunFolder(tmp_path / name), mlflow={"experiment": "shared"})
        trackers.log_metrics({"train/loss": 1.0}, step=1)
        ids.append(trackers.trackers[1].run_id)
        trackers.close()
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")  # what `mlflow ui` opens in this folder
    found = client.search_runs([client.get_experiment_by_name("shared").experiment_id])
    assert sorted(r.info.run_id for r in found) == sorted(ids)
    params = found[0].data.params
    argv = [
        Path(sys.argv[0]).name,
        *sys.argv[1:],
    ]  # this process's command line (pytest's, or an xdist worker's)
    assert params["run.command"] == shlex.join(argv) and params["run.packages.trainyard-common"]
    assert json.loads((tmp_path / "egnn" / "provenance.json").read_text())["packages"]["trainyard-common"]


def test_a_file_store_is_accepted(tmp_path):
    uri = (tmp_path / "mlruns").as_uri()
    trackers = build_trackers(
        RunFolder(tmp_path / "run"), mlflow={"experiment": "files", "tracking_uri": uri}
    )
    assert [type(getattr(t, "tracker", t)).__name__ for t in trackers.trackers] == [
        "JsonHistory",
        "MlflowTracker",
    ]
    trackers.log_metrics({"loss": 0.5}, step=1)
    run_id = trackers.trackers[1].run_id
    trackers.close()
    assert MlflowClient(uri).get_metric_history(run_id, "loss")[0].value == 0.5
