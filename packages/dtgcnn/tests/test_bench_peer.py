"""`python -m dtgcnn.bench` trains the peer DGCNN in its own torch process beside dtgcnn's step, interleaved:
the machinery is checked at tiny sizes (figures for sense, never for speed)."""

from __future__ import annotations

import json

from common.cli import run_cli
from dtgcnn import bench


def test_bench_times_the_peer_beside_dtgcnn_and_reports_both(tmp_path, capsys):
    out = tmp_path / "bench.json"
    args = ["--quick", "--batch-size", "4", "--num-points", "64", "--k", "4", "--json-output", str(out)]
    run_cli(bench.main, args)
    figures = json.loads(out.read_text())
    side = figures["peer"]
    for name in ("dtgcnn", "peer"):
        r = side[name]
        assert r["steps"] == 2 and r["step_s_min"] <= r["step_s_median"] <= r["step_s_max"]
        assert r["samples_per_s"] == 4 / r["step_s_median"] and r["gflop_per_sample"] > 0
        assert r["share_of_peak"] > 0
    # the peer runs the edge MLP on every one of the k edges per point; dtgcnn once per point
    assert side["peer"]["gflop_per_sample"] > side["dtgcnn"]["gflop_per_sample"]
    assert side["speedup"] > 0 and side["peer"]["peak_rss_mb"] > 0
    shown = capsys.readouterr().out
    assert "side by side with the peer (WangYueFt/dgcnn" in shown and "ratio" in shown
    assert "yardstick" not in shown and "textbook" not in shown  # no figures from elsewhere
