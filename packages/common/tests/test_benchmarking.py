"""Benchmark helpers: medians after warm-up, interleaved side-by-side timing, FLOP counts, a matmul peak."""

import numpy as np
import pytest

from common.benchmarking import (
    Comparison,
    ScalingRun,
    Timing,
    count_flops,
    growth_table,
    matmul_gflop,
    median_seconds,
    numpy_matmul_peak_gflops,
    time_interleaved,
    torch_matmul_peak_gflops,
)


def test_median_runs_warmup_untimed_then_repeats_and_syncs():
    calls, syncs = [], []
    median_seconds(lambda: calls.append(1), warmup=3, repeats=4, sync=lambda: syncs.append(1))
    assert len(calls) == 7 and len(syncs) == 7


def test_median_is_the_middle_time(monkeypatch):
    ticks = iter([0.0, 1.0, 10.0, 13.0, 20.0, 22.0])  # durations 1, 3, 2 -> median 2
    monkeypatch.setattr("common.benchmarking.time.perf_counter", lambda: next(ticks))
    assert median_seconds(lambda: None, warmup=0, repeats=3) == 2.0


def test_matmul_flop_count():
    assert matmul_gflop(1000) == pytest.approx(2.0)


def test_peaks_are_positive_and_finite():
    for peak in (
        numpy_matmul_peak_gflops(n=128, repeats=2),
        torch_matmul_peak_gflops("cpu", n=128, repeats=2),
    ):
        assert np.isfinite(peak) and peak > 0.01


def test_interleaved_timing_alternates_the_two_workloads_after_warmup():
    order = []
    comparison = time_interleaved(
        lambda: order.append("a"), lambda: order.append("b"), warmup=1, min_steps=3, min_seconds=0.0
    )
    assert order == ["a", "b"] * 4  # one warm-up pair, then three timed pairs
    assert len(comparison.a.times) == len(comparison.b.times) == 3


def test_interleaved_timing_keeps_going_until_the_minimum_time_but_not_past_max_steps():
    ticks = iter(float(i) for i in range(10_000))
    clock = lambda: next(ticks)  # noqa: E731 - every call takes 1 s on this clock
    comparison = time_interleaved(
        lambda: None, lambda: None, warmup=0, min_steps=2, min_seconds=9.5, clock=clock
    )
    assert len(comparison.a.times) == 5 and comparison.a.times == [1.0] * 5  # 5 pairs = 10 s >= 9.5 s
    capped = time_interleaved(
        lambda: None, lambda: None, warmup=0, min_steps=2, min_seconds=1e9, max_steps=4, clock=clock
    )
    assert len(capped.a.times) == 4


def test_speedup_is_the_median_of_per_pair_ratios():
    # B takes 2x A in every pair, though the load triples the times of the last pairs
    comparison = Comparison(Timing([1.0, 1.0, 3.0, 3.0, 3.0]), Timing([2.0, 2.0, 6.0, 6.0, 6.0]))
    assert comparison.speedup == pytest.approx(2.0)
    assert comparison.pair_ratios.spread == 0.0
    assert comparison.b.per_s(12) == pytest.approx(2.0)  # 12 samples per 6 s median step


def test_timing_reports_min_median_max_and_warns_on_a_wide_spread():
    steady = Timing([1.00, 1.01, 1.02, 0.99, 1.00, 5.0])  # one stalled step does not unsettle the median
    assert (steady.min, steady.median, steady.max) == (0.99, 1.005, 5.0)
    assert not steady.unsteady and "WARNING" not in steady.summary()
    assert "min / median / max 990 / 1e+03 / 5e+03 ms over 6 steps" in steady.summary()
    unsteady = Timing([1.0, 1.5, 2.0, 1.0, 1.6, 2.1])
    assert unsteady.spread > 0.1 and unsteady.unsteady and "WARNING: spread above 10%" in unsteady.summary()


def test_flop_count_of_a_linear_layer_forward_and_backward():
    import torch

    layer, x = torch.nn.Linear(8, 4, bias=False), torch.randn(5, 8, requires_grad=True)
    assert count_flops(lambda: layer(x)) == 2 * 5 * 8 * 4
    # backward: a matmul for the input's gradient and one for the weight's
    assert count_flops(lambda: layer(x).sum().backward()) == 3 * 2 * 5 * 8 * 4


def test_growth_table_shows_each_point_as_a_multiple_of_the_first():
    rows = [
        {"value": 16, "epoch_s": 1.0, "peak_mb": 100.0},
        {"value": 32, "epoch_s": 2.1, "peak_mb": 190.0},
        {"value": 64, "epoch_s": 4.0, "peak_mb": 400.0},
    ]
    header, *lines = growth_table("batch", rows).splitlines()
    assert header.split() == ["batch", "x", "epoch", "s", "x", "peak", "MB", "x"]
    assert [line.split() for line in lines] == [
        ["16", "1", "1.000", "1.00", "100", "1.00"],
        ["32", "2", "2.100", "2.10", "190", "1.90"],
        ["64", "4", "4.000", "4.00", "400", "4.00"],
    ]


def test_a_scaling_run_pairs_its_rows_by_key_and_rates_the_efficiency():
    run = ScalingRun(nproc=2, cores=2, threads=1, launcher="torchrun --nproc_per_node=2")
    run.one = {"rows": [{"tile": 256, "per_s": 4.0}, {"tile": 512, "per_s": 1.0}]}
    run.many = {"rows": [{"tile": 512, "per_s": 1.5}, {"tile": 256, "per_s": 8.0}]}  # rank 0's own order
    pairs = run.pairs(lambda r: r["tile"])
    assert [(one["tile"], many["tile"]) for one, many in pairs] == [(256, 256), (512, 512)]
    rows = [run.compare(f"tile {one['tile']}", one["per_s"], many["per_s"]) for one, many in pairs]
    assert [r["scaling_efficiency"] for r in rows] == [1.0, 0.75]  # 8 / (2 x 4), 1.5 / (2 x 1)
