"""`python -m dtgcnn.bench --nproc 2`: the train step alone and as 2 processes under mlx.launch, with the
scaling efficiency (figures checked for sense, never for speed)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from common.cli import run_cli
from dtgcnn import bench

pytestmark = pytest.mark.skipif(
    not Path(sys.executable).with_name("mlx.launch").exists(), reason="mlx.launch is not installed"
)


@pytest.mark.slow
def test_bench_nproc_2_reports_one_and_two_process_throughput_under_mlx_launch(tmp_path, capsys):
    out = tmp_path / "scaling.json"
    args = ["--nproc", "2", "--batch-size", "4", "--num-points", "64", "--k", "4", "--steps", "2"]
    run_cli(bench.main, [*args, "--warmup", "1", "--no-jit", "--json-output", str(out)])
    scaling = json.loads(out.read_text())["scaling"]
    assert scaling["nproc"] == 2 and scaling["n_process"]["world_size"] == 2
    assert scaling["one_process"]["world_size"] == 1 and scaling["threads_per_process"] >= 1
    (row,) = scaling["rows"]
    for key in ("samples_per_s_1", "samples_per_s_2", "scaling_efficiency"):
        assert math.isfinite(row[key]) and row[key] > 0, (key, row)
    assert row["scaling_efficiency"] == pytest.approx(row["samples_per_s_2"] / (2 * row["samples_per_s_1"]))
    # the same timed steps with the same batch per process in both runs
    one, two = scaling["one_process"], scaling["n_process"]
    assert one["batch_per_process"] == two["batch_per_process"] == 4
    assert one["timed_steps"] == two["timed_steps"] == 2 and row["samples_per_step_2"] == 8
    assert "mlx.launch -n 2" in capsys.readouterr().out


def test_nproc_refuses_the_triplet_mode():
    with pytest.raises(SystemExit) as exc:
        run_cli(bench.main, ["--nproc", "2", "--mode", "triplets"])
    assert exc.value.code == 2
