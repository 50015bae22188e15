"""Benchmark helpers: medians after warm-up, and a matmul peak in plausible units."""

import numpy as np
import pytest

from common.benchmarking import (
    matmul_gflop,
    median_seconds,
    numpy_matmul_peak_gflops,
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
