"""Graceful stop on SIGINT/SIGTERM: the training loop finishes its step, checkpoints, and exits cleanly.

    with GracefulStop() as stop:
        for step in ...:
            train_step()
            if stop.requested:
                save_checkpoint(...); break

A second signal while a stop is pending raises KeyboardInterrupt, so an impatient user can still abort.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

_HANDLED = (signal.SIGINT, signal.SIGTERM)


class GracefulStop:
    """Context manager that turns SIGINT/SIGTERM into a `requested` flag.

    Python only lets the main thread install signal handlers; elsewhere this is a no-op (`active` is False)
    and signals keep their previous behaviour. The previous handlers are restored on exit.
    """

    def __init__(self) -> None:
        self.requested: bool = False
        self.signal_name: str | None = None
        self.active: bool = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> GracefulStop:
        self.requested = False
        self.signal_name = None
        if threading.current_thread() is threading.main_thread():
            for signum in _HANDLED:
                self._previous[signum] = signal.signal(signum, self._handle)
            self.active = True
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.active:
            for signum, previous in self._previous.items():
                # signal.signal returns None for handlers not installed from Python; SIG_DFL is the safe reading.
                signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
            self._previous.clear()
            self.active = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}: stopping immediately")
        self.requested = True
        self.signal_name = signal.Signals(signum).name

    def message(self, resume_hint: str = "") -> str:
        """One line for the log: which signal stopped the run and, if given, how to resume it."""
        text = f"received {self.signal_name or 'a stop signal'}: stopped after the current step"
        return f"{text}; resume with: {resume_hint}" if resume_hint else text
