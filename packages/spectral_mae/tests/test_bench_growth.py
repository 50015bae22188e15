"""The scaling table of `python -m spectral_mae.bench --scaling` at tiny points, measured in this process (the
bench runs each point in a fresh one): the table's shape and figures checked for sense, never for speed."""

import math

import pytest

from common.errors import ConfigError
from spectral_mae import bench_growth

TINY = {"images": 4, "batch_size": 2, "depth": 1, "img_size": 50, "epochs": 1}


def test_the_scaling_table_doubles_each_axis_and_reports_time_and_memory():
    tables = bench_growth.growth(TINY, points=2, device="cpu", in_process=True)
    assert {axis: [r["value"] for r in rows] for axis, rows in tables.items()} == {
        "images": [4, 8],
        "batch_size": [2, 4],
        "depth": [1, 2],
    }
    for rows in tables.values():
        for r in rows:
            assert r["tokens"] == 24  # 2 x 2 locations x 6 spectral groups at every point
            assert math.isfinite(r["epoch_s"]) and r["epoch_s"] > 0
            assert math.isfinite(r["peak_mb"]) and r["peak_mb"] > 0
    report = bench_growth.report(tables, TINY)
    title, *tables_text = report.split("\n")
    assert "mae_tiny at 50x50, 24 tokens per image; base: 4 images, batch 2, depth 1 (decoder 1)" in title
    assert [line.split()[0] for line in tables_text if not line.split()[0].isdigit()] == [
        "images",
        "batch_size",
        "depth",
    ]


def test_an_image_size_that_is_not_whole_patches_is_refused():
    with pytest.raises(ConfigError, match="multiple of the 25-pixel patches"):
        bench_growth.growth({**TINY, "img_size": 60}, points=2, device="cpu", in_process=True)
