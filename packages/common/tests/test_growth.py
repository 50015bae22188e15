"""The shared half of the benches' `--scaling` tables: the doubling points, a point measured in a fresh
process, the peak-memory growth it reports, and the report."""

import os
import textwrap

import pytest

from common.growth import doubling_points, growth_report, measure_growth, measure_in_fresh_process

# A point module as a package writes one: it takes its point as options, grows its memory by --mb MiB (the
# oracle for the figure it must report), and writes its figures to --json.
PROBE = textwrap.dedent(
    """
    import json, sys, time
    from common.growth import peak_rss_growth_mb, memory_baseline_mb

    options = dict(arg[2:].split("=", 1) for arg in sys.argv[1:])
    if options.get("fail"):
        sys.exit("the probe was told to fail")
    before = memory_baseline_mb()
    start = time.perf_counter()
    block = b"x" * (int(options["mb"]) * 2**20)  # written, so every page is resident
    figures = {"epoch_s": time.perf_counter() - start, "peak_mb": peak_rss_growth_mb(before), "got": options}
    del block
    open(options["json"], "w").write(json.dumps(figures))
    """
)


@pytest.fixture
def probe_env(tmp_path):
    (tmp_path / "growth_probe.py").write_text(PROBE)
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))}


def test_each_axis_doubles_from_the_base_taking_the_keys_that_grow_with_it():
    base = {"samples": 32, "batch": 4, "width": 16, "epochs": 1}
    assert doubling_points(base, "width", 3) == [
        {"samples": 32, "batch": 4, "width": 16, "epochs": 1},
        {"samples": 32, "batch": 4, "width": 32, "epochs": 1},
        {"samples": 32, "batch": 4, "width": 64, "epochs": 1},
    ]
    batch = doubling_points(base, "batch", 3, grows_with=("samples",))
    assert [(p["batch"], p["samples"], p["width"]) for p in batch] == [
        (4, 32, 16),
        (8, 64, 16),
        (16, 128, 16),
    ]


def test_points_run_in_fresh_processes_and_report_their_own_memory_growth(probe_env):
    tables = measure_growth(
        "growth_probe", {"mb": 24, "steps": 3}, {"mb": ()}, points=2, args=["--tag=t"], env=probe_env
    )
    rows = tables["mb"]
    assert [r["value"] for r in rows] == [24, 48]
    for r in rows:
        assert r["got"] == {"tag": "t", "mb": str(r["value"]), "steps": "3", "json": r["got"]["json"]}
        assert r["epoch_s"] > 0
        # the larger point comes second yet reports its own growth: a fresh process each, baseline excluded
        assert r["value"] - 1 <= r["peak_mb"] <= r["value"] + 8
    report = growth_report("scaling (probe)", tables)
    title, header, *lines = report.splitlines()
    assert title == "scaling (probe)" and header.split()[:2] == ["mb", "x"]
    assert [line.split()[:2] for line in lines] == [["24", "1"], ["48", "2"]]


def test_a_failing_point_raises_with_its_own_error(probe_env):
    with pytest.raises(RuntimeError, match="the probe was told to fail"):
        measure_in_fresh_process("growth_probe", {"mb": 1, "fail": 1}, env=probe_env)
