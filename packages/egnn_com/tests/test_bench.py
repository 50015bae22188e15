"""The benchmark runs end to end on tiny settings and reports sensible figures (no assertion on speed)."""

import json
import math

import pytest

from common.cli import run_cli
from egnn_com import bench


def test_bench_quick(tmp_path, capsys):
    out = tmp_path / "bench.json"
    run_cli(
        bench.main,
        [
            "--sizes",
            "small",
            "--graphs",
            "8",
            "--batch_size",
            "4",
            "--hidden_dim",
            "8",
            "--num_layers",
            "2",
            "--epochs",
            "1",
            "--num_workers",
            "0",
            "--startup_graphs",
            "40",
            "--threads",
            "1",
            "--quick",
            "--json",
            str(out),
        ],
    )
    result = json.loads(out.read_text())
    assert result["matmul_peak_gflops"] > 0
    assert (
        len(result["startup"]["phases"]) == 8
        and result["startup"]["first_step_s"] > result["startup"]["startup_s"]
    )
    rows = {r["model"]: r for r in result["training"]}
    assert set(rows) == {"gcn", "egnn"}
    for r in rows.values():
        assert r["graphs_per_epoch"] == 8 and r["graphs_per_s"] > 0 and r["forward_ms"] > 0
        assert 0 <= r["data_share"] < 1 and r["gflop_per_graph"] > 0 and 10 <= r["mean_nodes"] < 60
    assert (
        rows["egnn"]["gflop_per_graph"] > rows["gcn"]["gflop_per_graph"]
    )  # edge MLPs vs one linear per layer
    (side,) = result["peer"]  # egnn_com's EGNN and the peer's, trained interleaved on the same batches
    assert side["size"] == "small" and side["batch_size"] == 4 and side["speedup"] > 0
    for name in ("egnn_com", "peer"):
        r = side[name]
        assert r["steps"] == 2 and r["step_ms_min"] <= r["step_ms_median"] <= r["step_ms_max"]
        assert r["graphs_per_s"] == pytest.approx(4e3 / r["step_ms_median"]) and r["peak_share"] > 0
    # the peer runs its full edge MLP on concatenated [h_i, h_j, d2] per edge; egnn_com gathers node terms
    assert side["peer"]["gflop_per_graph"] > side["egnn_com"]["gflop_per_graph"]
    shown = capsys.readouterr().out
    assert "graphs/s" in shown and "side by side with the peer (vgsatorras/egnn" in shown


@pytest.mark.slow
def test_bench_nproc_2_reports_one_and_two_process_throughput_under_torchrun(tmp_path, capsys):
    out = tmp_path / "scaling.json"
    args = ["--nproc", "2", "--sizes", "small", "--graphs", "16", "--batch_size", "4", "--hidden_dim", "8"]
    args += ["--num_layers", "2", "--epochs", "1", "--num_workers", "0", "--json", str(out)]
    run_cli(bench.main, args)
    scaling = json.loads(out.read_text())["scaling"]
    assert scaling["nproc"] == 2 and scaling["n_process"]["world_size"] == 2
    assert (
        scaling["threads_per_process"] >= 1
        and scaling["n_process"]["torch_threads"] == scaling["threads_per_process"]
    )
    assert {(r["size"], r["model"]) for r in scaling["rows"]} == {("small", "gcn"), ("small", "egnn")}
    for r in scaling["rows"]:
        for key in ("samples_per_s_1", "samples_per_s_2", "scaling_efficiency"):
            assert math.isfinite(r[key]) and r[key] > 0, (key, r)
        assert r["scaling_efficiency"] == pytest.approx(r["samples_per_s_2"] / (2 * r["samples_per_s_1"]))
        assert (
            r["graphs_per_epoch_1"] == r["graphs_per_epoch_2"] == 16
        )  # the same work, shared by 2 processes
    shown = capsys.readouterr().out
    assert "torchrun --standalone --nproc_per_node 2" in shown and "threads per process" in shown
