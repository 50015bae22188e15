"""Prepare the next items of an iterable in a background thread while the caller works on the current one.

Used for batches that are cheap to build in the training process (in-memory tensors, cached meshes): a
thread avoids what worker processes cost (start-up, pickling, shared-memory hand-over of every tensor) and
still overlaps loading with the step, because NumPy, torch and h5py release the GIL in their heavy calls.
Framework-free: it never imports torch or mlx.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

_DONE = object()  # sentinel: the producer has no more items


class _Failure:
    """An exception raised by the producer, carried to the consumer and re-raised there."""

    def __init__(self, exc: BaseException):
        self.exc = exc


def prefetch_in_thread(items: Iterable[T], depth: int, *, name: str = "trainyard-prefetch") -> Iterator[T]:
    """Yield the items of `items` in order, produced up to `depth` items ahead in a daemon thread.

    `iter(items)` itself runs in the thread, so an expensive start (a DataLoader iterator, a generator's first
    step) overlaps too. An exception in the producer is re-raised here, at the item where it happened. When
    the consumer stops early (break, an exception, the generator being closed), the producer stops at its
    next item instead of running on. `depth <= 0` iterates in the caller's thread, with no thread at all.
    """
    if depth <= 0:
        yield from items
        return
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        """Wait for room unless the consumer has gone; False when it has."""
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(_DONE)
        except BaseException as exc:  # noqa: BLE001 - every failure must reach the consumer
            put(_Failure(exc))

    thread = threading.Thread(target=produce, name=name, daemon=True)
    thread.start()
    try:
        while True:
            item = ready.get()
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)
