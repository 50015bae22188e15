"""Progress reporting: a tqdm bar in a terminal, plain log lines otherwise (CI logs, files, pipes)."""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def progress(
    iterable: Iterable[T],
    *,
    total: int | None = None,
    desc: str = "",
    logger: logging.Logger | None = None,
    log_every: float = 0.1,
) -> Iterator[T]:
    """Yield the items of `iterable`, reporting progress.

    In a terminal (stderr is a tty) this is a tqdm bar. Otherwise a bar would fill logs with carriage-return
    noise, so it logs one line (to `logger`, default the "trainyard" logger) each time another `log_every`
    fraction of `total` is done (and at the end). `total` defaults to `len(iterable)`; for an iterable without
    a length and no `total`, it logs every `round(1 / log_every)` items.
    """
    if total is None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
    logger = logger or logging.getLogger("trainyard")
    if stderr_is_terminal():
        # tqdm only when a bar is actually drawn (keeps `import common` light)
        from tqdm import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        # While the bar is up, the logger's console lines go through tqdm.write so they do not tear the bar.
        with logging_redirect_tqdm(loggers=[logger]):
            yield from tqdm(iterable, total=total, desc=desc or None, dynamic_ncols=True, leave=False)
        return
    yield from _logged(iterable, total, desc, logger, log_every)


def _logged(
    iterable: Iterable[T], total: int | None, desc: str, logger: logging.Logger, log_every: float
) -> Iterator[T]:
    if total is not None and total > 0:
        every = max(1, math.ceil(total * log_every)) if log_every > 0 else total
    else:
        every = max(1, round(1 / log_every)) if log_every > 0 else 0
    label = f"{desc}: " if desc else ""
    start = time.perf_counter()
    for done, item in enumerate(iterable, start=1):
        yield item
        last = total is not None and done == total
        if last or (every and done % every == 0):
            elapsed = time.perf_counter() - start
            rate = done / elapsed if elapsed > 0 else float("inf")
            if total:
                logger.info("%s%d/%d (%.0f%%) %.1f it/s", label, done, total, 100.0 * done / total, rate)
            else:
                logger.info("%s%d %.1f it/s", label, done, rate)


def stderr_is_terminal() -> bool:
    try:
        return sys.stderr is not None and sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False
