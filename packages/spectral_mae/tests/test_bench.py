"""The benchmark runs both decoders and reports FLOPs consistent with the decoders' attention (no timings asserted)."""

from __future__ import annotations

import json
import math

import pytest

from spectral_mae.bench import main


def test_bench_times_each_decoder_and_counts_fewer_flops_for_divided(tmp_path):
    out = tmp_path / "bench.json"
    main.main(
        [
            "--models",
            "mae_tiny",
            "--img-size",
            "50",
            "--batch-size",
            "1",
            "--steps",
            "1",
            "--warmup",
            "1",
            "--no-yardstick",
            "--device",
            "cpu",
            "--json",
            str(out),
        ],
        standalone_mode=False,
    )
    rows = {r["model"]: r for r in json.loads(out.read_text())["results"]}
    assert set(rows) == {"mae_tiny (divided)", "mae_tiny (joint)"}
    assert all(r["tokens"] == 6 * 2 * 2 and r["gflop_per_sample"] > 0 for r in rows.values())
    # Divided attention scores each token against 6 + 4 others instead of all 24, but adds a spectral
    # attention's projections: at 24 tokens the projections dominate, so divided counts more FLOPs here.
    assert rows["mae_tiny (divided)"]["gflop_per_sample"] > rows["mae_tiny (joint)"]["gflop_per_sample"]


@pytest.mark.slow
def test_bench_nproc_2_reports_one_and_two_process_throughput_under_torchrun(tmp_path, capsys):
    out = tmp_path / "scaling.json"
    args = ["--nproc", "2", "--models", "mae_tiny", "--decoders", "joint", "--img-size", "50"]
    args += ["--batch-size", "1", "--steps", "2", "--warmup", "1", "--device", "cpu", "--json", str(out)]
    main.main(args, standalone_mode=False)
    scaling = json.loads(out.read_text())["scaling"]
    assert scaling["nproc"] == 2 and scaling["n_process"]["world_size"] == 2
    assert scaling["n_process"]["torch_threads"] == scaling["threads_per_process"] >= 1
    (row,) = scaling["rows"]
    assert row["model"] == "mae_tiny (joint)"
    for key in ("samples_per_s_1", "samples_per_s_2", "scaling_efficiency"):
        assert math.isfinite(row[key]) and row[key] > 0, (key, row)
    assert row["scaling_efficiency"] == pytest.approx(row["samples_per_s_2"] / (2 * row["samples_per_s_1"]))
    # the same steps with the same batch per process: 2 processes train twice the samples per step
    assert row["batch_per_process"] == 1 and row["samples_per_step_1"] == 1 and row["samples_per_step_2"] == 2
    (one,), (two,) = scaling["one_process"]["results"], scaling["n_process"]["results"]
    assert one["gflop_per_sample"] == pytest.approx(two["gflop_per_sample"], rel=1e-6)
    assert "torchrun --standalone --nproc_per_node 2" in capsys.readouterr().out


def test_a_model_beside_the_yardstick_is_timed_in_interleaved_pairs(capsys):
    import torch

    from spectral_mae.benchmark import YARDSTICK_ARCH, beside_yardstick, format_side_by_side
    from spectral_mae.model import build_model

    tiny_yardstick = YARDSTICK_ARCH | dict(img_size=32, embed_dim=32, encoder_depth=1, encoder_num_heads=2)
    tiny_yardstick |= dict(decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)
    model = build_model("mae_tiny", img_size=50, decoder_attention="joint")
    r = beside_yardstick(
        "mae_tiny (joint)",
        model,
        1,
        torch.device("cpu"),
        False,
        peak_gflops=10.0,
        min_steps=3,
        min_seconds=0.0,
        yardstick_arch=tiny_yardstick,
        yardstick_batch=2,
    )
    assert r["steps"] == 3
    for side in ("model_side", "yardstick_side"):
        assert r[side]["samples_per_s"] > 0 and r[side]["gflop_per_sample"] > 0
        assert r[side]["share_of_peak"] == pytest.approx(
            r[side]["samples_per_s"] * r[side]["gflop_per_sample"] / 10.0
        )
    assert math.isfinite(r["share_ratio"]) and r["share_ratio"] > 0
    assert "share of peak, model / yardstick" in format_side_by_side(r)
