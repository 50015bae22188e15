"""WandbTracker in offline mode; the run's .wandb log is decoded with W&B's own protobuf schema."""

from __future__ import annotations

import json
import struct
import time

import pytest

pytest.importorskip("wandb")

from wandb.proto import wandb_internal_pb2  # noqa: E402

from common.runs import RunFolder  # noqa: E402
from common.trackers import WandbTracker, build_trackers  # noqa: E402
from common.trackers.factory import WANDB_RUN_ID_FILE  # noqa: E402
from common.trackers.wandb import default_mode  # noqa: E402

_BLOCK = 32768  # the .wandb file is a LevelDB-style log: 32 KiB blocks of CRC-framed chunks
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def wandb_records(path) -> list[wandb_internal_pb2.Record]:
    """Decode a .wandb file: a 7-byte ":W&B" header, then records split into framed chunks."""
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    records, pending, pos = [], b"", 7
    while pos + 7 <= len(data):
        if _BLOCK - pos % _BLOCK < 7:  # a block tail too short for a chunk header is padding
            pos += _BLOCK - pos % _BLOCK
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == _FULL:
            records.append(chunk)
        elif kind == _FIRST:
            pending = chunk
        elif kind == _MIDDLE:
            pending += chunk
        elif kind == _LAST:
            records.append(pending + chunk)
    return [wandb_internal_pb2.Record.FromString(raw) for raw in records]


def items(entries) -> dict:
    """History / config items as {key: value}; W&B fills `key` or, for some items, `nested_key`."""
    return {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in entries}


def finished_records(path, timeout_s: float = 60.0) -> list[wandb_internal_pb2.Record]:
    """The records once W&B's service has written the run's exit record.

    run.finish() returns once the service has the data; the service process writes the file a moment later.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        records = wandb_records(path)
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


@pytest.fixture(autouse=True)
def offline_env(monkeypatch):
    for var in ("WANDB_API_KEY", "WANDB_MODE", "RANK", "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    monkeypatch.setenv("WANDB_CONSOLE", "off")


def test_mode_follows_api_key_and_wandb_mode(monkeypatch):
    assert default_mode() == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert default_mode() == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert default_mode() == "disabled"  # the user's WANDB_MODE wins, passed to wandb.init explicitly


def test_offline_run_records_params_metrics_and_artifacts(tmp_path):
    run = RunFolder(tmp_path / "run")
    trackers = build_trackers(run, wandb={"project": "egnn", "name": "exp-1", "tags": ["a", "b"]})
    tracker = trackers.trackers[1].tracker  # MLflow/W&B log from a worker thread (BackgroundTracker)
    assert isinstance(tracker, WandbTracker)
    trackers.log_params({"model": {"hidden": 64}, "lr": 1e-3})
    for step in range(1, 6):
        trackers.log_metrics({"train_loss": 1.0 / step}, step=step)
        trackers.log_metrics({"val_loss": 2.0 / step}, step=step)  # same step, second call
    (tmp_path / "curves.png").write_bytes(b"png")
    trackers.log_artifact(tmp_path / "curves.png")
    run_dir = tracker.run_dir
    trackers.close()

    assert run_dir.parent == run.path("wandb") and run_dir.name.startswith("offline-run-")
    [log_file] = run_dir.glob("*.wandb")
    records = finished_records(log_file)
    kinds = [r.WhichOneof("record_type") for r in records]
    rows = [items(r.history.item) for r in records if r.WhichOneof("record_type") == "history"]
    assert [(row["_step"], row["train_loss"], row["val_loss"]) for row in rows] == [
        (s, 1.0 / s, 2.0 / s) for s in range(1, 6)
    ]
    [run_record] = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert run_record.display_name == "exp-1" and list(run_record.tags) == ["a", "b"]
    config = {}
    for record in records:
        if record.WhichOneof("record_type") == "config":
            config.update(items(record.config.update))
    assert config["model"] == {"hidden": 64} and config["lr"] == 1e-3
    assert "artifact" in kinds and kinds[-1] in ("exit", "final", "footer")


def test_a_resumed_run_continues_its_wandb_run(tmp_path):
    run = RunFolder(tmp_path / "run")
    first = build_trackers(run, wandb={"project": "egnn"})
    first_id = first.trackers[1].run_id
    for step in range(1, 4):
        first.log_metrics({"loss": float(step)}, step=step)
    first.close()
    assert run.path(WANDB_RUN_ID_FILE).read_text() == first_id

    resumed = build_trackers(run, wandb={"project": "egnn"}, resume_step=3)
    tracker = resumed.trackers[1]
    assert tracker.run_id == first_id  # the same W&B run, not a new one
    for step in range(4, 6):
        resumed.log_metrics({"loss": float(step)}, step=step)
    second_dir = tracker.run_dir
    resumed.close()
    # offline: one folder per session, both named with the run's id (W&B adds "-1" when both sessions start in
    # the same second), so `wandb sync` joins them
    folders = sorted(run.path("wandb").glob(f"offline-run-*-{first_id}*"))
    assert second_dir in folders and len(folders) == 2
    [log_file] = second_dir.glob("*.wandb")
    rows = [
        items(r.history.item) for r in finished_records(log_file) if r.WhichOneof("record_type") == "history"
    ]
    assert [(row["_step"], row["loss"]) for row in rows] == [(4, 4.0), (5, 5.0)]
    # a fresh run in another folder starts a new W&B run
    other = build_trackers(RunFolder(tmp_path / "other"), wandb={"project": "egnn"})
    assert other.trackers[1].run_id != first_id
    other.close()
