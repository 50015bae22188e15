"""The dashboard's data layer on run folders written by common itself: JsonHistory (JSON + journal),
CheckpointManager files and manifest, provenance and config files, plots."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import yaml

from common.checkpoint import CheckpointManager
from common.trackers import JsonHistory
from dashboard.checkpoints import checkpoint_table
from dashboard.history import read_history, series
from dashboard.images import run_images
from dashboard.runs import RunsRootError, find_runs
from dashboard.views import RunData, compare, runs_table, shared_metrics, system_metrics

# Top-level config keys as each package's config.yaml has them (a few of each, enough to tell them apart).
CONFIGS = {
    "dtgcnn": {"num_vertices": 48, "edge_conv_dims": [8, 16], "batch_size": 8},
    "egnn_com": {"data": {}, "model": {}, "optim": {}, "train": {}, "logging": {}},
    "spectral_mae": {"dataset": {}, "model": {}, "hparams": {}, "general": {}},
    "cabruca": {"experiment_name": "x", "model": {}, "postprocess": {}, "tracking": {}},
}


def write_run(folder, package, *, scale=1.0, history_file="metrics_history.json", steps=6):
    """A run folder as a package writes it: config.yaml, JsonHistory, a plot."""
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(CONFIGS[package]))
    history = JsonHistory(folder / history_file)
    for step in range(1, steps + 1):
        history.log_metrics({"train/loss_step": scale / step, "lr": 0.1}, step=step)
        if step % 3 == 0:
            history.log_metrics(
                {"train/loss": scale / step, "val/loss": 2 * scale / step, "system/epoch_time_s": 1.0},
                step=step,
            )
    history.close()
    (folder / "plots").mkdir()
    (folder / "plots" / "training_curves.png").write_bytes(b"\x89PNG not really")
    return folder


def test_history_reads_the_journal_so_a_live_run_is_current(tmp_path):
    path = tmp_path / "metrics_history.json"
    history = JsonHistory(path, flush_every=50)
    for step in range(1, 121):
        history.log_metrics({"train/loss_step": 1.0 / step}, step=step)
    # The JSON was rewritten at 50 and 100 calls: the last 20 are only in the journal.
    assert len(json.loads(path.read_text())["metrics"]["train/loss_step"]) == 100
    _, table = read_history(path)
    assert list(series(table, "train/loss_step").items()) == history.series("train/loss_step")

    # A line being appended right now (no newline yet) is left for the next read.
    with open(path.with_name(path.name + ".journal"), "a") as journal:
        journal.write('{"seq": 121, "step": 121, "time": 0, "metr')
    assert len(read_history(path)[1]) == 120
    history.close()


def test_history_counts_each_row_once_across_a_rewrite(tmp_path):
    path = tmp_path / "metrics_history.json"
    journal = path.with_name(path.name + ".journal")
    history = JsonHistory(path, flush_every=10)
    for step in range(1, 10):
        history.log_metrics({"val/loss": float(step)}, step=step)
    before_rewrite = journal.read_text()
    history.log_metrics({"val/loss": 10.0}, step=10)  # the 10th call rewrites the JSON, empties the journal
    history.log_metrics({"val/loss": 11.0}, step=11)
    # A reader that saw the journal just before the rewrite, and the JSON just after it: no row twice.
    journal.write_text(before_rewrite + journal.read_text())
    _, table = read_history(path)
    assert table["value"].tolist() == [float(s) for s in range(1, 12)]
    history.close()


def test_runs_are_found_recursively_with_their_package(tmp_path):
    root = tmp_path / "outputs"
    for package in CONFIGS:
        write_run(root / package / f"{package}_20260101", package)
    named = write_run(root / "sweep" / "lr=0.1", "dtgcnn")
    (named / "provenance.json").write_text(json.dumps({"package": "egnn_com", "command": "x"}))
    (root / "dtgcnn" / "dtgcnn_20260101" / "evaluation" / "config.yaml").parent.mkdir()
    (root / "mlruns" / "0" / "abc").mkdir(parents=True)
    (root / "mlruns" / "0" / "abc" / "config.yaml").write_text("{}")  # a tracker store holds no runs
    (root / "notes").mkdir()
    os.utime(root / "cabruca" / "cabruca_20260101" / "metrics_history.json", (2e9, 2e9))

    runs = find_runs(root)
    assert {r.name: r.package for r in runs} == {
        "dtgcnn/dtgcnn_20260101": "dtgcnn",
        "egnn_com/egnn_com_20260101": "egnn_com",
        "spectral_mae/spectral_mae_20260101": "spectral_mae",
        "cabruca/cabruca_20260101": "cabruca",
        "sweep/lr=0.1": "egnn_com",  # provenance.json names the package: it wins over the config
    }
    assert runs[0].name == "cabruca/cabruca_20260101"  # newest first
    with pytest.raises(RunsRootError, match="does not exist"):
        find_runs(tmp_path / "missing")


def test_checkpoints_are_ordered_by_step_with_manifest_roles_and_metrics_at_their_step(tmp_path):
    run = write_run(tmp_path / "run", "dtgcnn", steps=12)
    manager = CheckpointManager(
        run / "checkpoints",
        last="last.npz",
        best="best.npz",
        monitor="val/loss",
        every_n_epochs=1,
        periodic="epoch_{epoch}.npz",
    )
    # Epochs 3, 9 and 10 saved at steps 3, 9, 10: "epoch_10" sorts before "epoch_3" and "epoch_9" by name.
    for epoch, step, val in ((3, 3, 0.9), (9, 9, 0.5), (10, 10, 0.7)):
        manager.save(
            {"epoch": epoch, "global_step": step, "w": np.zeros(2)}, epoch=epoch, metrics={"val/loss": val}
        )
    (run / "checkpoints" / "notes.txt").write_text("not a checkpoint")

    table = checkpoint_table(run / "checkpoints", read_history(run / "metrics_history.json")[1])
    assert table["file"].tolist() == ["epoch_3.npz", "best.npz", "epoch_9.npz", "epoch_10.npz", "last.npz"]
    assert table["step"].tolist() == [3, 9, 9, 10, 10]
    assert table["epoch"].tolist() == [3, 9, 9, 10, 10]  # epochs done, as the file names count them
    assert table["role"].tolist() == ["periodic", "best", "periodic", "periodic", "last"]
    assert table["score (val/loss)"].tolist()[1] == 0.5
    assert table["val/loss"].tolist()[0] == pytest.approx(2 / 3)  # logged at step 3
    assert table["val/loss"].tolist()[1] == pytest.approx(2 / 9)


def test_compare_joins_runs_of_different_packages_on_metric_names(tmp_path):
    root = tmp_path / "outputs"
    for i, package in enumerate(CONFIGS):
        write_run(root / package, package, scale=i + 1.0)
    egnn = write_run(root / "older_egnn", "egnn_com")
    shutil.rmtree(egnn / "plots")
    runs = [RunData(run) for run in find_runs(root)]

    assert shared_metrics(runs)[:2] == ["train/loss", "val/loss"]
    assert "system/epoch_time_s" in shared_metrics(runs)
    chart, table = compare(runs, "val/loss")
    assert sorted(table["package"]) == ["cabruca", "dtgcnn", "egnn_com", "egnn_com", "spectral_mae"]
    assert chart.index.tolist() == [3, 6] and chart.shape[1] == 5
    cabruca = table.set_index("run").loc["cabruca"]
    assert (cabruca["last"], cabruca["min"], cabruca["max"], cabruca["last step"]) == (
        4 * 2 / 6,
        4 * 2 / 6,
        4 * 2 / 3,
        6,
    )
    overview = runs_table(runs).set_index("run")
    assert overview.loc["spectral_mae", "train/loss"] == pytest.approx(3 / 6)
    assert set(overview["status"]) == {"idle"}  # every history was closed
    assert system_metrics(runs[0].history) == ["system/epoch_time_s"]


def test_a_live_run_shows_as_live(tmp_path):
    history = JsonHistory(tmp_path / "run" / "metrics_history.json")
    history.log_metrics({"train/loss_step": 1.0}, step=1)
    (run,) = find_runs(tmp_path)
    assert run.is_live() and runs_table([RunData(run)])["last step"].tolist() == [1]
    history.close()
    assert not run.is_live()


def test_images_skip_tracker_stores_and_come_newest_first(tmp_path):
    run = write_run(tmp_path / "run", "cabruca")
    (run / "evaluation" / "overlays").mkdir(parents=True)
    (run / "evaluation" / "overlays" / "tile_0.png").write_bytes(b"png")
    (run / "mlruns" / "1").mkdir(parents=True)
    (run / "mlruns" / "1" / "copy.png").write_bytes(b"png")
    os.utime(run / "plots" / "training_curves.png", (2e9, 2e9))
    assert [p.relative_to(run).as_posix() for p in run_images(run)] == [
        "plots/training_curves.png",
        "evaluation/overlays/tile_0.png",
    ]
