"""One point of the scaling table of `python -m egnn_com.bench --scaling` (which runs each point in a fresh
process; here in this one): figures checked for sense, never for speed."""

from egnn_com import bench_growth


def test_a_scaling_point_reports_epoch_time_and_memory_growth():
    figures = bench_growth.measure_point(
        "small", graphs=8, batch_size=4, hidden_dim=8, num_layers=1, epochs=1
    )
    assert figures["epoch_s"] > 0 and figures["peak_mb"] >= 0
    point = {"graphs": 8, "batch_size": 4, "hidden_dim": 8}
    table = bench_growth.report({"graphs": [{"value": 8, **figures}]}, "small", point)
    assert "base: 8 graphs, batch 4, hidden 8" in table and "epoch s" in table
