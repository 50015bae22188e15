"""The scaling table of `python -m cabruca.bench --scaling` at tiny points, measured in this process (the
bench runs each point in a fresh one): the table's shape and figures checked for sense, never for speed."""

import math

import pytest

from cabruca import bench_growth
from common.errors import ConfigError

TINY = {"tiles": 4, "batch_size": 2, "fpn": 8, "tile": 32, "epochs": 1}


def test_the_scaling_table_doubles_each_axis_and_reports_time_and_memory():
    tables = bench_growth.growth(
        TINY, points=2, overrides=("model.backbone=test_resnet",), device="cpu", in_process=True
    )
    assert {axis: [r["value"] for r in rows] for axis, rows in tables.items()} == {
        "tiles": [4, 8],
        "batch_size": [2, 4],
        "fpn": [8, 16],
    }
    # an epoch is every tile once: the tiles axis doubles the steps, the batch axis keeps them
    assert [r["steps"] for r in tables["tiles"]] == [2, 4] and [r["steps"] for r in tables["batch_size"]] == [
        2,
        2,
    ]
    for rows in tables.values():
        for r in rows:
            assert math.isfinite(r["epoch_s"]) and r["epoch_s"] > 0
            assert math.isfinite(r["peak_mb"]) and r["peak_mb"] > 0
    report = bench_growth.report(tables, TINY, "test_resnet")
    title, *tables_text = report.split("\n")
    assert "test_resnet + FPN, tiles of 32 px; base: 4 tiles, batch 2, FPN 8 (heads 4)" in title
    assert [line.split()[0] for line in tables_text if not line.split()[0].isdigit()] == [
        "tiles",
        "batch_size",
        "fpn",
    ]


def test_tiles_that_do_not_fill_whole_batches_are_refused():
    with pytest.raises(ConfigError, match="whole batches of 3"):
        bench_growth.growth({**TINY, "batch_size": 3}, points=2, in_process=True)
