"""TensorBoardTracker, read back with TensorBoard's own event reader."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tensorboard")

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402
from tensorboard.plugins.hparams import plugin_data_pb2  # noqa: E402
from tensorboard.util import tensor_util  # noqa: E402

from common.runs import RunFolder  # noqa: E402
from common.trackers import TensorBoardTracker, build_trackers  # noqa: E402


def read_events(log_dir) -> EventAccumulator:
    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0, "images": 0})
    events.Reload()
    return events


def test_scalars_params_and_images_round_trip(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tracker = TensorBoardTracker(tmp_path / "tb")
    tracker.log_params({"model": {"dim": 8, "blocks": [2, 2]}, "lr": 3e-4, "name": "a|b"})
    losses = {step: 1.0 / (step + 1) for step in range(0, 50, 5)}
    for step, loss in losses.items():
        tracker.log_metrics({"train/loss": loss, "lr": 3e-4 * step}, step=step)
    fig, ax = plt.subplots(figsize=(2, 1))
    ax.plot([0, 1], [1, 0])
    fig.savefig(tmp_path / "curves.png")
    plt.close(fig)
    tracker.log_artifact(tmp_path / "curves.png")
    tracker.log_artifact(tmp_path / "curves.png", name="plots/curves")
    tracker.close()

    events = read_events(tmp_path / "tb")
    scalars = events.Scalars("train/loss")
    # Scalars are stored as float32: exact once both sides are float32.
    assert [(e.step, np.float32(e.value)) for e in scalars] == [(s, np.float32(v)) for s, v in losses.items()]
    assert [e.step for e in events.Scalars("lr")] == list(losses)

    table = tensor_util.make_ndarray(events.Tensors("params")[0].tensor_proto).item().decode()
    assert (
        "| model.dim | 8 |" in table and "| name | a\\|b |" in table and "| model.blocks | [2, 2] |" in table
    )
    start = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(start).session_start_info.hparams
    assert hparams["lr"].number_value == pytest.approx(3e-4)
    assert hparams["model.blocks"].string_value == "[2, 2]"

    images = events.Tags()["images"]
    assert sorted(images) == ["curves", "plots/curves"]
    assert events.Images("curves")[0].width == 200 and events.Images("curves")[0].height == 100


def test_resumed_run_purges_the_replayed_steps(tmp_path):
    run = RunFolder(tmp_path / "run")
    first = build_trackers(run, tensorboard=True)
    for step in range(1, 11):
        first.log_metrics({"loss": float(step)}, step=step)
    first.close()  # as if killed after step 10; the checkpoint was at step 6

    resumed = build_trackers(run, tensorboard=True, resume_step=6)
    for step in range(7, 13):
        resumed.log_metrics({"loss": step + 0.5}, step=step)
    resumed.close()

    scalars = read_events(run.path("tensorboard")).Scalars("loss")
    assert [(e.step, e.value) for e in scalars] == [(s, float(s)) for s in range(1, 7)] + [
        (s, s + 0.5) for s in range(7, 13)
    ]


def test_writing_tensorboard_events_imports_neither_torch_nor_tensorflow(tmp_path):
    """dtgcnn (MLX) must be able to log to TensorBoard without torch ever being imported."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from common.trackers import TensorBoardTracker\n"
        f"t = TensorBoardTracker({str(tmp_path / 'tb')!r})\n"
        "t.log_params({'a': 1}); t.log_metrics({'loss': 1.0}, step=1); t.close()\n"
        "print(sorted(m for m in ('torch', 'tensorflow', 'tensorboardX') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "[]"
    assert [e.value for e in read_events(tmp_path / "tb").Scalars("loss")] == [1.0]
