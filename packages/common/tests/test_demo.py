"""common's self-demo end to end: it learns, writes the run folder, and resumes exactly."""

import json
from dataclasses import replace

import numpy as np
import pytest

from common.checkpoint import load_checkpoint
from common.demo import DemoConfig, train
from common.testing import SignalAt, history_series


def small(tmp_path, name: str, **kw) -> DemoConfig:
    return replace(
        DemoConfig(samples=128, epochs=4, batch_size=16, save_every_steps=3),
        output_dir=str(tmp_path / name),
        **kw,
    )


def test_demo_learns_and_writes_the_run_folder(tmp_path):
    cfg = small(tmp_path, "run")
    result = train(cfg)
    run = tmp_path / "run"
    assert result.metrics["val/loss"] < 0.1  # the noise floor is 0.01; a random start is ~8
    for path in ("config.yaml", "metrics_history.json", "checkpoints/last.npz", "plots/training_curves.png"):
        assert (run / path).is_file(), path
    assert list(run.glob("logs/training_*.log"))
    history = json.loads((run / "metrics_history.json").read_text())
    losses = [e["value"] for e in history["metrics"]["val/loss"]]
    assert losses[-1] < losses[0]
    assert len(list((run / "checkpoints").glob("best-*.npz"))) == 1


@pytest.mark.parametrize("stop_at_step", [5, 8, 17])
def test_resume_after_sigterm_matches_an_uninterrupted_run(tmp_path, stop_at_step):
    train(small(tmp_path, "reference"))

    interrupted = small(tmp_path, "interrupted")
    # a real SIGTERM to this process after step `stop_at_step`
    assert train(interrupted, callbacks=[SignalAt(stop_at_step, "SIGTERM")]).interrupted == "SIGTERM"
    step_file = tmp_path / "interrupted/checkpoints/last_step.npz"
    assert load_checkpoint(step_file)["global_step"] == stop_at_step
    train(interrupted, resume=str(step_file))

    done = load_checkpoint(tmp_path / "reference/checkpoints/last.npz")
    resumed = load_checkpoint(tmp_path / "interrupted/checkpoints/last.npz")
    np.testing.assert_array_equal(done["w"], resumed["w"])
    reference_rows = history_series(tmp_path / "reference/metrics_history.json")
    assert reference_rows == history_series(tmp_path / "interrupted/metrics_history.json")
