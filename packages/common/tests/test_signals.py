"""common.signals.GracefulStop, driven by real signals sent to this process."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from common.signals import GracefulStop


def wait_for(predicate, timeout=2.0) -> bool:
    # Python runs signal handlers between bytecodes of the main thread: give it a few.
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_sets_requested_instead_of_killing(signum):
    with GracefulStop() as stop:
        assert stop.active and not stop.requested
        os.kill(os.getpid(), signum)
        assert wait_for(lambda: stop.requested)
        assert stop.signal_name == signal.Signals(signum).name
    assert "resume with: python -m pkg.train --resume auto" in stop.message(
        "python -m pkg.train --resume auto"
    )


def test_second_signal_raises_keyboard_interrupt():
    with GracefulStop() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert wait_for(lambda: stop.requested)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            wait_for(lambda: False, timeout=2.0)  # the handler raises while we wait


def test_previous_handlers_are_restored():
    seen = []

    def custom(signum, frame):
        seen.append(signum)

    before = signal.signal(signal.SIGTERM, custom)
    sigint_before = signal.getsignal(signal.SIGINT)  # Python's default, or SIG_IGN in a pytest-xdist worker
    try:
        with GracefulStop():
            assert signal.getsignal(signal.SIGTERM) is not custom
        assert signal.getsignal(signal.SIGTERM) is custom
        assert signal.getsignal(signal.SIGINT) is sigint_before
        os.kill(os.getpid(), signal.SIGTERM)
        assert wait_for(lambda: seen == [signal.SIGTERM])
    finally:
        signal.signal(signal.SIGTERM, before)


def test_restored_even_when_the_body_raises():
    previous = signal.getsignal(signal.SIGINT)
    with pytest.raises(RuntimeError), GracefulStop():
        raise RuntimeError("boom")
    assert signal.getsignal(signal.SIGINT) is previous


def test_noop_outside_the_main_thread():
    result = {}

    def worker():
        with GracefulStop() as stop:
            result["active"] = stop.active
            result["handler"] = signal.getsignal(signal.SIGINT)

    unchanged = signal.getsignal(signal.SIGINT)
    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert result == {"active": False, "handler": unchanged}
