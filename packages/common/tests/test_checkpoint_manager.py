"""CheckpointManager retention: last, best (min/max, NaN), top-k, every N epochs, templates, resume."""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import time

import numpy as np
import pytest

from common.checkpoint import CheckpointManager, load_checkpoint
from common.checkpoint.manager import MANIFEST
from common.errors import CheckpointError, ConfigError


def files(folder) -> set[str]:
    """The checkpoint files (the manifest beside them is tested on its own)."""
    return {p.name for p in folder.iterdir() if p.name != MANIFEST}


def top_k_oracle(values: list[float], k: int, mode: str) -> list[tuple[int, float]]:
    """(epoch, value) of the k best finite values; ties keep the earlier epoch (as a stable sort does)."""
    finite = [(e, v) for e, v in enumerate(values, start=1) if math.isfinite(v)]
    return sorted(finite, key=lambda ev: ev[1] if mode == "min" else -ev[1])[:k]


def test_last_is_written_every_epoch_and_holds_the_latest_state(tmp_path):
    manager = CheckpointManager(tmp_path, last="last.ckpt")
    for epoch in range(1, 4):
        written = manager.save({"epoch": epoch, "w": np.full(3, epoch)}, epoch=epoch)
        assert written == [tmp_path / "last.ckpt"]
    assert files(tmp_path) == {"last.ckpt"}
    assert load_checkpoint(tmp_path / "last.ckpt")["epoch"] == 3
    assert manager.best_path is None and manager.best_value is None


def test_best_min_with_the_seed_template_and_nan_never_best(tmp_path):
    manager = CheckpointManager(
        tmp_path,
        last="last.ckpt",
        best="best-model-{epoch:02d}-{val_loss:.3f}.ckpt",
        monitor="val_loss",
        mode="min",
    )
    # A NaN first epoch must not become best even though the top-1 slot is empty.
    assert manager.save({"epoch": 1}, epoch=1, metrics={"val_loss": float("nan")}) == [tmp_path / "last.ckpt"]
    assert manager.best_path is None
    manager.save({"epoch": 2}, epoch=2, metrics={"val_loss": 0.5})
    assert manager.best_path == tmp_path / "best-model-02-0.500.ckpt" and manager.best_value == 0.5
    manager.save({"epoch": 3}, epoch=3, metrics={"val_loss": 0.25})
    manager.save({"epoch": 4}, epoch=4, metrics={"val_loss": 0.75})
    manager.save({"epoch": 5}, epoch=5, metrics={"val_loss": float("nan")})
    manager.save({"epoch": 6}, epoch=6, metrics={"val_loss": float("-inf")})  # non-finite: never best
    manager.save({"epoch": 7}, epoch=7, metrics={"train_loss": 0.1})  # monitor not evaluated this epoch
    assert files(tmp_path) == {"last.ckpt", "best-model-03-0.250.ckpt"}
    assert manager.best_value == 0.25
    assert load_checkpoint(manager.best_path)["epoch"] == 3
    assert load_checkpoint(tmp_path / "last.ckpt")["epoch"] == 7


def test_best_max_with_slash_metric_names(tmp_path):
    manager = CheckpointManager(
        tmp_path, last=None, best="best_{epoch}_{val_acc:.2f}.npz", monitor="val/acc", mode="max", top_k=2
    )
    for epoch, acc in enumerate([0.5, 0.7, 0.6, 0.9, 0.1], start=1):
        manager.save({"epoch": epoch}, epoch=epoch, metrics={"val/acc": acc, "val/loss": 1 - acc})
    assert files(tmp_path) == {"best_4_0.90.npz", "best_2_0.70.npz"}
    assert manager.best_path == tmp_path / "best_4_0.90.npz" and manager.best_value == 0.9


@pytest.mark.parametrize("mode", ["min", "max"])
def test_top_k_retention_keeps_exactly_the_k_best_files(tmp_path, mode):
    rng = np.random.default_rng(0)
    values = [float(v) for v in rng.uniform(0, 1, 15)]
    values[4] = float("nan")
    manager = CheckpointManager(
        tmp_path, last="last.ckpt", best="epoch={epoch:03d}.ckpt", monitor="val_loss", mode=mode, top_k=3
    )
    for epoch, value in enumerate(values, start=1):
        manager.save({"epoch": epoch, "value": value}, epoch=epoch, metrics={"val_loss": value})
        expected = top_k_oracle(values[:epoch], 3, mode)
        assert files(tmp_path) == {"last.ckpt"} | {f"epoch={e:03d}.ckpt" for e, _ in expected}, epoch
    best_epoch, best_value = top_k_oracle(values, 1, mode)[0]
    assert manager.best_value == best_value
    assert load_checkpoint(manager.best_path)["epoch"] == best_epoch


def test_fixed_best_name_is_only_overwritten_by_an_improvement(tmp_path):
    manager = CheckpointManager(
        tmp_path, last="checkpoint_latest.pth", best="checkpoint_best.pth", monitor="val_loss"
    )
    for epoch, loss in enumerate([0.9, 0.4, 0.6, 0.3, 0.8], start=1):
        manager.save({"epoch": epoch}, epoch=epoch, metrics={"val_loss": loss})
    assert files(tmp_path) == {"checkpoint_latest.pth", "checkpoint_best.pth"}
    assert load_checkpoint(tmp_path / "checkpoint_best.pth")["epoch"] == 4


def test_every_n_epochs_writes_periodic_files_that_are_never_deleted(tmp_path):
    manager = CheckpointManager(
        tmp_path, last="last.npz", every_n_epochs=2, periodic="checkpoint_epoch_{epoch:04d}.npz"
    )
    written = [manager.save({"epoch": e}, epoch=e) for e in range(1, 6)]
    assert written[1] == [tmp_path / "last.npz", tmp_path / "checkpoint_epoch_0002.npz"]
    assert files(tmp_path) == {"last.npz", "checkpoint_epoch_0002.npz", "checkpoint_epoch_0004.npz"}
    assert load_checkpoint(tmp_path / "checkpoint_epoch_0004.npz")["epoch"] == 4


def test_templated_last_keeps_only_the_newest(tmp_path):
    manager = CheckpointManager(tmp_path, last="last-{epoch}.ckpt")
    for epoch in range(3):
        manager.save({"epoch": epoch}, epoch=epoch)
    assert files(tmp_path) == {"last-2.ckpt"}
    assert manager.latest() == tmp_path / "last-2.ckpt"


def test_save_step_and_latest_pick_the_newest_file(tmp_path):
    manager = CheckpointManager(tmp_path, last="last.ckpt", step_file="step-{step}.ckpt")
    assert manager.latest() is None
    manager.save({"epoch": 1}, epoch=1)
    path = manager.save_step({"step": 10}, epoch=2, step=10)
    assert path == tmp_path / "step-10.ckpt"
    now = time.time_ns()
    os.utime(path, ns=(now + 10**10, now + 10**10))  # ordering independent of the clock's resolution
    assert manager.latest() == path
    manager.save_step({"step": 20}, epoch=2, step=20)
    assert files(tmp_path) == {"last.ckpt", "step-20.ckpt"}  # the older step file was removed
    manager.save({"epoch": 2}, epoch=2)
    os.utime(tmp_path / "last.ckpt", ns=(now + 2 * 10**10, now + 2 * 10**10))
    assert manager.latest() == tmp_path / "last.ckpt"


def _run(manager, values, epochs):
    for epoch in epochs:
        state = {"epoch": epoch, "manager": manager.state_dict()}
        manager.save(state, epoch=epoch, metrics={"val_loss": values[epoch - 1]})


def test_state_dict_keeps_top_k_across_a_resume(tmp_path):
    values = [0.8, 0.3, 0.5, 0.9, 0.2, 0.4, 0.1, 0.6]
    kwargs = dict(last="last.ckpt", best="best-{epoch:02d}-{val_loss:.3f}.ckpt", monitor="val_loss", top_k=2)

    straight = CheckpointManager(tmp_path / "straight", **kwargs)
    _run(straight, values, range(1, 9))

    first = CheckpointManager(tmp_path / "resumed", **kwargs)
    _run(first, values, range(1, 5))
    # A new process: rebuild from the "last" file only. Its "manager" entry includes epoch 4's own save.
    saved = load_checkpoint(tmp_path / "resumed" / "last.ckpt")
    assert saved["manager"] == first.state_dict()
    second = CheckpointManager(tmp_path / "resumed", **kwargs)
    second.load_state_dict(saved["manager"])
    assert second.best_path == tmp_path / "resumed" / "best-02-0.300.ckpt"
    _run(second, values, range(5, 9))

    assert (
        files(tmp_path / "resumed")
        == files(tmp_path / "straight")
        == {"last.ckpt", "best-07-0.100.ckpt", "best-05-0.200.ckpt"}
    )
    assert second.state_dict() == straight.state_dict()


def test_resume_with_another_monitor_is_refused(tmp_path):
    a = CheckpointManager(tmp_path, best="b-{epoch}.ckpt", monitor="val_loss")
    b = CheckpointManager(tmp_path, best="b-{epoch}.ckpt", monitor="val_acc", mode="max")
    with pytest.raises(CheckpointError, match="val_loss"):
        b.load_state_dict(a.state_dict())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(mode="up"), "'min' or 'max'"),
        (dict(best="best.ckpt"), "needs `monitor`"),
        (dict(best="best.ckpt", monitor="val_loss", top_k=3), "fixed"),
        (dict(every_n_epochs=5), "periodic"),
        (dict(top_k=0), "at least 1"),
    ],
)
def test_bad_manager_settings_are_config_errors(tmp_path, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        CheckpointManager(tmp_path, **kwargs)


def test_a_template_naming_an_unknown_metric_is_a_clear_error(tmp_path):
    manager = CheckpointManager(tmp_path, best="best-{val_los:.3f}.ckpt", monitor="val_loss")
    with pytest.raises(ConfigError, match=r"val_los.*available fields: epoch, step, val_loss"):
        manager.save({}, epoch=1, metrics={"val_loss": 0.2})
    with pytest.raises(ConfigError, match="step_file"):
        manager.save_step({}, epoch=1, step=3)


def test_manifest_names_the_best_file_and_best_checkpoint_reads_it(tmp_path):
    from common.resume import best_checkpoint

    manager = CheckpointManager(
        tmp_path / "checkpoints", best="model-{epoch}.ckpt", monitor="val/loss", top_k=2
    )
    for epoch, loss in enumerate([0.5, 0.2, 0.4], start=1):
        manager.save({"w": np.full(3, epoch)}, epoch=epoch, metrics={"val/loss": loss})
    manifest = json.loads((tmp_path / "checkpoints" / MANIFEST).read_text())
    assert manifest["best"] == "model-2.ckpt" and manifest["best_score"] == 0.2
    assert [k["file"] for k in manifest["kept"]] == ["model-2.ckpt", "model-3.ckpt"]
    assert manifest["last"] == "last.ckpt"
    # a run folder, its checkpoint folder or the manifest itself all lead to the same file
    for where in (tmp_path, tmp_path / "checkpoints", tmp_path / "checkpoints" / MANIFEST):
        assert best_checkpoint(where) == tmp_path / "checkpoints" / "model-2.ckpt"
    with pytest.raises(CheckpointError, match="No checkpoint manifest"):
        best_checkpoint(tmp_path / "elsewhere")


def test_same_state_under_two_names_is_stored_once_and_survives_the_next_last(tmp_path):
    manager = CheckpointManager(tmp_path, best="best.ckpt", monitor="val/loss")
    manager.save({"w": np.arange(1000.0)}, epoch=1, metrics={"val/loss": 0.1})
    assert os.stat(tmp_path / "best.ckpt").st_ino == os.stat(tmp_path / "last.ckpt").st_ino
    manager.save({"w": np.zeros(1000)}, epoch=2, metrics={"val/loss": 0.9})  # worse: only last changes
    assert load_checkpoint(tmp_path / "best.ckpt")["w"][5] == 5.0
    assert load_checkpoint(tmp_path / "last.ckpt")["w"][5] == 0.0


def test_weights_only_best_files_leave_out_what_only_resuming_needs(tmp_path):
    manager = CheckpointManager(tmp_path, best="best.ckpt", monitor="val/loss", best_weights_only=True)
    state = {
        "model": {"w": np.ones(4)},
        "optimizer": {"m": np.ones(10_000)},
        "config": {"lr": 0.1},
        "rng": {},
    }
    manager.save(state, epoch=1, metrics={"val/loss": 0.1})
    best, last = load_checkpoint(tmp_path / "best.ckpt"), load_checkpoint(tmp_path / "last.ckpt")
    assert set(best) == {"model", "config", "weights_only"} and best["weights_only"] is True
    assert "optimizer" in last
    assert (tmp_path / "best.ckpt").stat().st_size < (tmp_path / "last.ckpt").stat().st_size / 10


def test_a_checkpoint_the_disk_cannot_hold_is_refused_before_writing(tmp_path, monkeypatch):
    manager = CheckpointManager(tmp_path)
    manager.save({"w": np.arange(10.0)}, epoch=1)
    before = (tmp_path / "last.ckpt").read_bytes()
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage._replace(free=1000))
    with pytest.raises(CheckpointError, match="Not enough free space.*previous checkpoint is intact"):
        manager.save({"w": np.zeros(10)}, epoch=2)
    assert (tmp_path / "last.ckpt").read_bytes() == before


def test_the_disk_filling_up_mid_write_is_a_clear_error_and_keeps_the_old_file(tmp_path, monkeypatch):
    import common.checkpoint.manager as manager_module

    manager = CheckpointManager(tmp_path)
    manager.save({"w": np.arange(10.0)}, epoch=1)
    before = (tmp_path / "last.ckpt").read_bytes()

    def disk_full(path, state):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(manager_module, "save_checkpoint", disk_full)
    with pytest.raises(CheckpointError, match="disk filled up"):
        manager.save({"w": np.zeros(10)}, epoch=2)
    assert (tmp_path / "last.ckpt").read_bytes() == before


def test_resume_last_skips_weights_only_best_files_written_after_last(tmp_path):
    from common.resume import latest_checkpoint

    manager = CheckpointManager(tmp_path, best="best.ckpt", monitor="val/loss", best_weights_only=True)
    manager.save({"model": {"w": np.ones(2)}, "optimizer": {}}, epoch=1, metrics={"val/loss": 0.1})
    os.utime(tmp_path / "best.ckpt", ns=(2 * 10**18, 2 * 10**18))  # newer than last, as the save order gives
    assert latest_checkpoint(tmp_path) == tmp_path / "last.ckpt"
