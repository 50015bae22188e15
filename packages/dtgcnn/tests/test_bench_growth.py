"""The scaling table of `python -m dtgcnn.bench --scaling` at tiny points, measured in this process (the
bench runs each point in a fresh one): the table's shape and figures checked for sense, never for speed."""

import math

import pytest

from common.errors import ConfigError
from dtgcnn import bench_growth

# uncompiled: mx.compile would build CPU kernels for every new shape, seconds each on a fresh machine
TINY = {"meshes": 8, "batch_size": 4, "width": 4, "num_points": 32, "k": 4, "epochs": 1, "jit": False}


def test_the_scaling_table_doubles_each_axis_and_reports_time_and_memory():
    tables = bench_growth.growth(TINY, points=2, in_process=True)
    assert {axis: [r["value"] for r in rows] for axis, rows in tables.items()} == {
        "meshes": [8, 16],
        "batch_size": [4, 8],
        "width": [4, 8],
    }
    for rows in tables.values():
        for r in rows:
            assert math.isfinite(r["epoch_s"]) and r["epoch_s"] > 0
            assert math.isfinite(r["peak_mb"]) and r["peak_mb"] > 0
    report = bench_growth.report(tables, TINY)
    title, *tables_text = report.split("\n")
    assert "base: 8 meshes of 32 points, batch 4 = 1 x 4" in title
    assert [line.split()[0] for line in tables_text if not line.split()[0].isdigit()] == [
        "meshes",
        "batch_size",
        "width",
    ]


def test_a_batch_that_is_not_whole_identities_is_refused():
    with pytest.raises(ConfigError, match="multiple of 4"):
        bench_growth.growth({**TINY, "batch_size": 6}, points=2, in_process=True)
