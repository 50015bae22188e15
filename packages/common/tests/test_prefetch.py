import threading
import time

import pytest

from common.prefetch import prefetch_in_thread


def _producer(n, log, fail_at=None):
    """Yields 0..n-1, recording the thread each item was made in; raises at `fail_at`."""
    for i in range(n):
        if i == fail_at:
            raise ValueError(f"bad item {i}")
        log.append((i, threading.current_thread().name))
        yield i


def test_items_arrive_in_order_and_are_made_in_another_thread():
    log = []
    assert list(prefetch_in_thread(_producer(50, log), depth=3, name="loader")) == list(range(50))
    assert {name for _, name in log} == {"loader"}


def test_producer_runs_ahead_of_the_consumer_by_depth():
    log = []
    it = prefetch_in_thread(_producer(100, log), depth=4)
    assert next(it) == 0
    deadline = time.monotonic() + 5
    while len(log) < 6 and time.monotonic() < deadline:  # 1 consumed + 4 queued + 1 waiting to be put
        time.sleep(0.01)
    time.sleep(0.05)
    assert len(log) == 6
    it.close()


def test_a_producer_exception_is_raised_at_its_item():
    got = []
    with pytest.raises(ValueError, match="bad item 7"):
        for item in prefetch_in_thread(_producer(20, [], fail_at=7), depth=2):
            got.append(item)
    assert got == list(range(7))


def test_stopping_early_stops_the_producer():
    log = []
    for item in prefetch_in_thread(_producer(10_000, log), depth=2, name="early-stop"):
        if item == 3:
            break
    assert not any(t.name == "early-stop" for t in threading.enumerate())
    assert len(log) <= 3 + 1 + 2 + 1  # consumed, the one in hand, the queue, one being put


def test_depth_zero_iterates_in_the_callers_thread():
    log = []
    assert list(prefetch_in_thread(_producer(5, log), depth=0)) == [0, 1, 2, 3, 4]
    assert {name for _, name in log} == {threading.current_thread().name}
