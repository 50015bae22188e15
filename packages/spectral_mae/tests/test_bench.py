"""The benchmark runs both decoders and reports FLOPs consistent with the decoders' attention (no timings asserted)."""

from __future__ import annotations

import json

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
