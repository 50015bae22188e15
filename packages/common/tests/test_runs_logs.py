"""common.runs (run folders, atomic writes) and common.logs (logging setup, phase timer)."""

from __future__ import annotations

import logging
import os
import re
import stat
import time

import pytest

from common import runs
from common.logs import PhaseTimer, log_file_path, setup_logging
from common.runs import (
    RunFolder,
    RunFolderError,
    atomic_write_bytes,
    atomic_write_text,
    discard_unused_run_folders,
    timestamp,
)
from common.testing import file_digests

# ------------------------------------------------------------------------------------------------ runs


def test_run_folder_creates_standard_subfolders(tmp_path):
    run = RunFolder(tmp_path / "out" / "exp1", checkpoints="ckpt")
    assert run.root == tmp_path / "out" / "exp1"
    for folder in (run.root, run.checkpoints, run.logs, run.plots):
        assert folder.is_dir()
    assert run.checkpoints.name == "ckpt"
    assert run.path("metrics_history.json") == run.root / "metrics_history.json"
    assert run.path("plots", "a.png") == run.plots / "a.png"
    RunFolder(run.root)  # re-opening an existing run folder is fine (resume)


def test_timestamp_format_and_timestamped_folders_are_unique(tmp_path):
    assert re.fullmatch(r"\d{8}_\d{6}", timestamp())
    first = RunFolder.timestamped(tmp_path, "mae")
    second = RunFolder.timestamped(tmp_path, "mae")  # same second: must not share a folder
    assert re.fullmatch(r"mae_\d{8}_\d{6}", first.root.name)
    assert second.root != first.root and second.root.name.startswith(first.root.name)


def test_atomic_write_creates_and_replaces_without_leftovers(tmp_path):
    target = tmp_path / "sub" / "config.yaml"
    atomic_write_text(target, "a: 1\n")
    atomic_write_text(target, "a: 2\n")
    assert target.read_text() == "a: 2\n"
    atomic_write_bytes(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    assert os.listdir(target.parent) == ["config.yaml"]


def test_atomic_write_uses_temp_in_same_folder_fsync_and_replace(tmp_path, monkeypatch):
    calls = []
    real_replace, real_fsync = os.replace, os.fsync

    def spy_replace(src, dst):
        calls.append(("replace", os.path.dirname(src), os.path.exists(src)))
        real_replace(src, dst)

    def spy_fsync(fd):
        calls.append(("fsync",))
        real_fsync(fd)

    monkeypatch.setattr(runs.os, "replace", spy_replace)
    monkeypatch.setattr(runs.os, "fsync", spy_fsync)
    atomic_write_text(tmp_path / "x.txt", "hello")
    assert calls[0] == ("fsync",)  # file data synced before the rename
    assert calls[1] == ("replace", str(tmp_path), True)


def test_failed_write_keeps_old_file_and_removes_temp(tmp_path, monkeypatch):
    target = tmp_path / "last.ckpt"
    atomic_write_bytes(target, b"old")

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(runs.os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(target, b"new" * 1000)
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["last.ckpt"]


def test_atomic_write_gives_normal_file_permissions(tmp_path):
    target = tmp_path / "f.txt"
    atomic_write_text(target, "x")
    mode = stat.S_IMODE(target.stat().st_mode)
    assert mode == 0o666 & ~runs._UMASK  # not mkstemp's 0600


# ------------------------------------------------------------------------------------------------ logs


def test_setup_logging_writes_console_and_timestamped_file(tmp_path, capsys):
    logger = setup_logging(tmp_path / "logs", name="trainyard.test_logs")
    logger.info("epoch %d done", 3)
    logger.debug("hidden at INFO")
    log_file = log_file_path(logger)
    assert log_file is not None and log_file.parent == tmp_path / "logs"
    assert re.fullmatch(r"training_\d{8}_\d{6}\.log", log_file.name)
    for handler in logger.handlers:
        handler.flush()
    text = log_file.read_text()
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO epoch 3 done\n", text)
    err = capsys.readouterr().err
    assert "INFO epoch 3 done" in err and "hidden" not in err


def test_setup_logging_is_idempotent_and_keeps_foreign_handlers(tmp_path):
    name = "trainyard.test_idempotent"
    foreign = logging.NullHandler()
    logging.getLogger(name).addHandler(foreign)
    for _ in range(3):
        logger = setup_logging(tmp_path, name=name, filename="train.log", level="DEBUG")
    assert len(logger.handlers) == 3  # foreign + console + file, not 7
    assert foreign in logger.handlers and logger.level == logging.DEBUG
    logger = setup_logging(None, name=name, console=False)
    assert logger.handlers == [foreign]
    logger.removeHandler(foreign)


def test_records_still_reach_caplog_after_setup(tmp_path, caplog):
    logger = setup_logging(tmp_path, name="trainyard.test_caplog", console=False)
    with caplog.at_level(logging.WARNING, logger=logger.name):
        logger.warning("tracker mlflow failed")
    assert "tracker mlflow failed" in caplog.text


def test_phase_timer_records_phases_in_order_and_reports(tmp_path, caplog):
    logger = logging.getLogger("trainyard.test_phases")
    timer = PhaseTimer(logger)
    names = ["directory_setup", "dataset_loading", "dataset_splitting", "dataloader_creation"]
    for name in names:
        with timer.phase(name):
            time.sleep(0.002)
    with timer.phase("dataset_loading"):  # re-entered: accumulates
        time.sleep(0.002)
    with pytest.raises(ZeroDivisionError), timer.phase("model_init"):
        1 / 0  # noqa: B018  (a failing phase is still timed)
    assert list(timer.phases) == names + ["model_init"]
    assert all(seconds > 0 for seconds in timer.phases.values())
    assert timer.phases["dataset_loading"] >= 0.004
    assert timer.total() == pytest.approx(sum(timer.phases.values()))
    with caplog.at_level(logging.DEBUG, logger="trainyard.test_phases"):
        report = timer.report()
    lines = report.splitlines()
    assert lines[0] == "startup phases:" and lines[-1].split()[0] == "total"
    assert [line.split()[0] for line in lines[1:-1]] == names + ["model_init"]
    assert report in caplog.text


def test_phase_timer_without_logger():
    timer = PhaseTimer()
    with timer.phase("a"):
        pass
    assert "a" in timer.report() and timer.total() >= 0


def as_another_process(monkeypatch) -> None:
    """Forget the run folders this process claimed, as a second command would start without them."""
    import common.runs

    monkeypatch.setattr(common.runs, "_claimed", set())


def test_a_new_run_never_writes_into_another_runs_folder(tmp_path, monkeypatch):
    first = RunFolder(tmp_path / "run")
    (first.root / "config.yaml").write_text("lr: 0.1\n")
    (first.checkpoints / "last.ckpt").write_bytes(b"weights")
    RunFolder(tmp_path / "run")  # the same process opening its own run again (command, then trainer)
    as_another_process(monkeypatch)
    with pytest.raises(RunFolderError, match=r"already holds a run \(2 file\(s\).*--resume.*--overwrite"):
        RunFolder(tmp_path / "run")
    assert (first.root / "config.yaml").read_text() == "lr: 0.1\n"
    RunFolder(tmp_path / "run", resume=True)  # resuming it is what that folder is for
    assert (first.checkpoints / "last.ckpt").read_bytes() == b"weights"
    as_another_process(monkeypatch)
    RunFolder(tmp_path / "run", overwrite=True)
    assert not (first.root / "config.yaml").exists() and first.checkpoints.is_dir()


def test_overwrite_never_deletes_a_folder_that_is_not_a_run(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.h5").write_bytes(b"precious")
    with pytest.raises(RunFolderError, match="no run .*will not delete it"):
        RunFolder(tmp_path / "data", overwrite=True)
    assert (tmp_path / "data" / "train.h5").read_bytes() == b"precious"


def test_output_folder_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "out").write_text("a file")
    with pytest.raises(RunFolderError, match="is an existing file"):
        RunFolder(tmp_path / "out")


def test_a_refused_run_leaves_no_folder_behind_but_keeps_trained_and_older_ones(tmp_path, monkeypatch):
    import common.runs

    monkeypatch.setattr(common.runs, "_created_here", [])  # only this test's folders
    existing = tmp_path / "existing"
    existing.mkdir()
    refused = RunFolder(tmp_path / "refused")
    (refused.logs / "train.log").write_text("error: bad config\n")
    trained = RunFolder(tmp_path / "trained")
    (trained.root / "metrics_history.json").write_text("{}")
    RunFolder(existing)
    removed = discard_unused_run_folders()
    assert removed == [refused.root.resolve()]
    assert not refused.root.exists() and trained.root.exists() and existing.exists()


def test_a_folder_that_cannot_be_created_is_one_clear_error(tmp_path, monkeypatch):
    # (a read-only folder cannot be made here: the tests run as root, which writes anywhere)
    import errno
    from pathlib import Path

    def read_only(self, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "mkdir", read_only)
    with pytest.raises(RunFolderError, match="Cannot create the run folder .*Read-only file system"):
        RunFolder(tmp_path / "run")


def test_a_second_run_in_the_same_process_is_refused_once_the_first_fit_ended(tmp_path):
    from common.demo import DemoConfig, train
    from common.schedules import ScheduleConfig

    cfg = DemoConfig(output_dir=str(tmp_path / "run"), epochs=1, schedule=ScheduleConfig())
    train(cfg)
    before = file_digests(tmp_path / "run")
    with pytest.raises(RunFolderError, match="already holds a run"):
        train(cfg)  # e.g. the same cell run twice in a notebook
    assert file_digests(tmp_path / "run") == before
