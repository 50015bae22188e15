"""Logging setup (console + timestamped file) and a timer for named startup phases."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from common.runs import timestamp

LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"

# Marks the handlers setup_logging installed, so a second call replaces only those and leaves handlers
# that the user (or pytest's caplog) attached alone.
_OWNED = "_trainyard_handler"


def setup_logging(
    log_dir: str | Path | None,
    *,
    filename: str = "training_{timestamp}.log",
    level: int | str = "INFO",
    name: str = "trainyard",
    console: bool = True,
) -> logging.Logger:
    """Configure logger `name` with a stderr handler and, when `log_dir` is given, a file handler there.

    `filename` may contain "{timestamp}" (YYYYMMDD_HHMMSS). Idempotent: calling again closes and replaces the
    handlers a previous call installed on this logger.
    """
    logger = logging.getLogger(name)
    for handler in list(logger.handlers):
        if getattr(handler, _OWNED, False):
            logger.removeHandler(handler)
            handler.close()

    logger.setLevel(level.upper() if isinstance(level, str) else level)
    formatter = logging.Formatter(LOG_FORMAT)
    handlers: list[logging.Handler] = []
    if console:
        handlers.append(logging.StreamHandler(sys.stderr))
    if log_dir is not None:
        log_dir = Path(log_dir)
        log_dir.mkdir(parents=True, exist_ok=True)
        log_file = log_dir / filename.format(timestamp=timestamp())
        handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
    for handler in handlers:
        handler.setFormatter(formatter)
        setattr(handler, _OWNED, True)
        logger.addHandler(handler)
    # Records still propagate to the root logger, which our CLIs never configure: that keeps pytest's caplog
    # (a root handler) working for every test that runs after a training run configured this logger.
    return logger


def log_file_path(logger: logging.Logger) -> Path | None:
    """The file the logger's setup_logging file handler writes to, if any (to tell the user where logs are)."""
    for handler in logger.handlers:
        if getattr(handler, _OWNED, False) and isinstance(handler, logging.FileHandler):
            return Path(handler.baseFilename)
    return None


class PhaseTimer:
    """Wall time of named phases (e.g. egnn_com's eight startup phases), reported as a table.

    >>> timer = PhaseTimer()
    >>> with timer.phase("load_data"):
    ...     pass
    """

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.logger = logger
        self.phases: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the `with` body; a phase entered twice accumulates. Recorded even if the body raises."""
        start = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            self.phases[name] = self.phases.get(name, 0.0) + elapsed
            if self.logger is not None:
                self.logger.debug("phase %s took %.3fs", name, elapsed)

    def total(self) -> float:
        """Sum of all phase times in seconds."""
        return sum(self.phases.values())

    def report(self, level: int = logging.DEBUG) -> str:
        """A table of phases and their total; also logged at `level` when the timer has a logger."""
        width = max([len(name) for name in self.phases] + [len("total")])
        lines = ["startup phases:"]
        lines += [f"  {name:<{width}}  {seconds:8.3f}s" for name, seconds in self.phases.items()]
        lines.append(f"  {'total':<{width}}  {self.total():8.3f}s")
        text = "\n".join(lines)
        if self.logger is not None:
            self.logger.log(level, "%s", text)
        return text
