"""common.sweeps: `--multirun` over the common demo (a real train command), value splitting, refusals."""

from __future__ import annotations

import csv
import json

import pytest

from common.cli import run_cli
from common.demo import main
from common.sweeps import plan_sweep, split_values

TINY = ["epochs=2", "samples=64", "batch_size=32", "log_every_n_steps=100"]


def read_summary(root):
    with open(root / "sweep_summary.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_two_by_two_sweep_writes_four_runs_and_a_summary(tmp_path, capsys):
    root = tmp_path / "sweep"
    run_cli(main, ["-m", "lr=0.1,0.01", "seed=1,2", "--output-dir", str(root), *TINY])
    names = ["lr=0.1,seed=1", "lr=0.1,seed=2", "lr=0.01,seed=1", "lr=0.01,seed=2"]
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == sorted(names)
    for name in names:  # each run is a complete run folder holding its own combination
        config = (root / name / "config.yaml").read_text()
        lr, seed = name.split(",")
        assert f"lr: {lr.split('=')[1]}" in config and f"seed: {seed.split('=')[1]}" in config
        assert (root / name / "checkpoints" / "last.npz").is_file()
    rows = read_summary(root)
    assert [r["folder"] for r in rows] == names and {r["status"] for r in rows} == {"ok"}
    for row in rows:  # the summary's numbers are the runs' own histories
        history = json.loads((root / row["folder"] / "metrics_history.json").read_text())
        losses = [p["value"] for p in history["metrics"]["val/loss"]]
        assert float(row["val/loss final"]) == pytest.approx(losses[-1], rel=1e-5)
        assert float(row["val/loss best"]) == pytest.approx(min(losses), rel=1e-5)
    # a higher learning rate fits this problem faster: the table tells the runs apart
    assert float(rows[0]["val/loss final"]) < float(rows[2]["val/loss final"])
    printed = capsys.readouterr().out
    assert "| lr=0.1 seed=1 |" in printed.replace("| 0 | ok ", "")
    assert (root / "sweep_summary.md").read_text().startswith("| run | status |")


def test_a_failing_run_fails_the_sweep_and_the_others_still_run(tmp_path):
    root = tmp_path / "sweep"
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, ["--multirun", "lr=oops,0.1", f"--output-dir={root}", *TINY])
    assert exit_info.value.code == 1
    rows = read_summary(root)
    assert [r["status"] for r in rows] == ["failed (2)", "ok"]
    assert (root / "lr=0.1" / "metrics_history.json").is_file()
    assert not (root / "lr=oops").exists()  # the refused run left no folder
    # a second sweep into the same folder is refused before anything runs
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, ["-m", "lr=0.2,0.3", "--output-dir", str(root)])
    assert exit_info.value.code == 2


def test_commas_inside_brackets_and_quotes_do_not_separate():
    assert split_values('a,[1,2],"x,y",{k: 1, j: 2}') == ["a", "[1,2]", '"x,y"', "{k: 1, j: 2}"]
    shared, root, runs = plan_sweep(
        ["--epochs", "3", "model=./m.yaml,large", "tags=[a,b]", "x=1", "--output_dir", "out"]
    )
    assert shared == ["--epochs", "3", "tags=[a,b]", "x=1"] and str(root) == "out"
    assert [r.overrides for r in runs] == [["model=./m.yaml"], ["model=large"]]
    assert [r.folder.name for r in runs] == ["model=._m.yaml", "model=large"]  # no path separator
