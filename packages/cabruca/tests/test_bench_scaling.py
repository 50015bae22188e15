"""`python -m cabruca.bench --nproc N`'s measurement, one process of it run here: the timed training step in
bf16 autocast writes global tiles/s and the FLOPs per tile to its JSON (the launcher side is common's
`measure_scaling`, exercised by the other packages' benches)."""

from __future__ import annotations

import json

from click.testing import CliRunner

from cabruca.bench import main

TINY = ["model.backbone=test_resnet", "model.fpn_channels=32", "model.head_channels=16"]


def test_one_process_of_the_scaling_measurement_writes_its_figures(tmp_path):
    out = tmp_path / "part.json"
    args = ["--launched-part", "--config", "training_config_light", "--tile-sizes", "64", "--batch-size", "2"]
    args += ["--steps", "2", "--warmup", "1", "--device", "cpu", "--precision", "bf16-mixed"]
    result = CliRunner().invoke(main, [*args, "--json-out", str(out), *TINY], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    figures = json.loads(out.read_text())
    assert figures["world_size"] == 1
    (row,) = figures["rows"]
    assert (row["tile"], row["batch_per_process"], row["precision"], row["compiled"]) == (
        64,
        2,
        "bf16-mixed",
        False,
    )
    assert row["tiles_per_s"] == 2 / row["step_s"]  # one process: its own tiles
    assert row["train_gflop_per_tile"] > 0  # counted over one real step
