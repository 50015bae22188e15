"""BackgroundTracker: a network tracker (MLflow, W&B) whose calls run on a worker thread.

A tracking server that is slow or gone must never hold training: its client retries HTTP calls for minutes.
The training thread only queues each call (no waiting at all); the worker sends them in order. When the
server fails or stops answering, the tracker says so once and is switched off; every row is still in the
JSON history, which is written on the training thread. Closing waits for the queue to drain only while the
server keeps answering, so a dead server costs at most `stall_seconds` at the end of a run (plus, for a
file upload in progress, the time its size takes at a slow link's pace: a big model is not a stall).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from pathlib import Path

from common.trackers.base import DEFAULT_LOGGER, Tracker, one_line

_CLOSE = object()  # the queue's last item: close the tracker and stop the worker


class BackgroundTracker:
    """Wraps `tracker` so that its calls never block the caller (see the module docstring)."""

    def __init__(
        self,
        tracker: Tracker,
        *,
        label: str | None = None,
        stall_seconds: float = 2.0,
        max_pending: int = 100_000,
        logger: logging.Logger | None = None,
    ) -> None:
        self.tracker = tracker
        self.label = label or type(tracker).__name__
        self.stall_seconds = stall_seconds
        self._logger = logger or logging.getLogger(DEFAULT_LOGGER)
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self._down = False
        self._said_down = threading.Lock()  # held once the "down" warning has been given
        self._busy_since: float | None = None  # when the call in progress started
        self._busy_allowance = (
            stall_seconds  # how long the call in progress may take before it counts as a stall
        )
        self._worker = threading.Thread(target=self._work, name=f"tracker-{self.label}", daemon=True)
        self._worker.start()

    @property
    def down(self) -> bool:
        """True once the tracker failed or stopped answering; it is sent nothing more."""
        return self._down

    def __getattr__(self, name: str):
        # The wrapped tracker's own attributes (run_id, tracking_uri, run_dir ...) read through.
        if name == "tracker":
            raise AttributeError(name)
        return getattr(self.tracker, name)

    # -- the Tracker protocol, each call queued -------------------------------------------------------

    def log_params(self, params: dict) -> None:
        self._submit("log_params", dict(params))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self._submit("log_metrics", dict(metrics), step)

    def log_artifact(self, path: str | Path, name: str | None = None) -> None:
        self._submit("log_artifact", path, name)

    def log_model(self, path: str | Path, name: str = "model") -> None:
        self._submit("log_model", path, name)

    def flush(self) -> None:
        """Nothing to do here: the worker sends rows as they come, and waiting would defeat its purpose."""

    def close(self) -> None:
        """Send what is queued, then close the tracker; give up when the server stops answering."""
        if not self._down:
            try:
                self._queue.put_nowait((_CLOSE, ()))
            except queue.Full:
                self._give_up(f"{self._queue.qsize()} calls are waiting")
        while self._worker.is_alive() and not self._down:
            self._worker.join(timeout=0.05)
            self._check_stalled()
        if self._worker.is_alive():
            left = self._queue.qsize()
            self._logger.warning(
                "%s: %d queued call(s) not sent; the JSON history has every row of this run", self.label, left
            )

    # -- internals ------------------------------------------------------------------------------------

    def _submit(self, method: str, *args) -> None:
        if self._down:
            return
        self._check_stalled()
        try:
            self._queue.put_nowait((method, args))
        except queue.Full:  # the server cannot keep up at all: stop feeding it rather than wait
            self._give_up(f"{self._queue.qsize()} calls are waiting")

    def _check_stalled(self) -> None:
        busy_since = self._busy_since
        if busy_since is not None and time.monotonic() - busy_since > self._busy_allowance:
            self._give_up(f"no answer for {time.monotonic() - busy_since:.0f} s")

    def _give_up(self, why: str) -> None:
        self._down = True
        if self._said_down.acquire(blocking=False):
            self._logger.warning(
                "tracker %s is down (%s); it is switched off for the rest of this run. Training goes on and "
                "the JSON history keeps every row.",
                self.label,
                why,
            )

    def _work(self) -> None:
        while True:
            method, args = self._queue.get()
            if self._down:
                continue  # drain without sending; the caller stops waiting on its own
            self._busy_allowance = self.stall_seconds + _transfer_seconds(method, args)
            self._busy_since = time.monotonic()
            try:
                if method is _CLOSE:
                    self.tracker.close()
                    return
                getattr(self.tracker, method)(*args)
            except Exception as exc:  # any backend error: say it once, send nothing more
                self._give_up(f"{method} failed: {type(exc).__name__}: {one_line(exc)}")
            finally:
                self._busy_since = None


# A file upload takes time in proportion to its size even from a server that answers: a model or a checkpoint
# of hundreds of MB gets that time (at a slow link's pace) on top of `stall_seconds` before it counts as a stall.
_SLOW_LINK_BYTES_PER_S = 5 * 2**20


def _transfer_seconds(method, args: tuple) -> float:
    if method not in ("log_artifact", "log_model"):
        return 0.0
    path = Path(args[0])
    try:
        files = path.rglob("*") if path.is_dir() else [path]
        size = sum(f.stat().st_size for f in files if f.is_file())
    except OSError:  # gone meanwhile: the call itself will report it
        return 0.0
    return size / _SLOW_LINK_BYTES_PER_S
