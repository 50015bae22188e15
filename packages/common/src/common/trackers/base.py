"""The `Tracker` protocol and `Trackers`, the fan-out a training loop talks to.

Optional backends (TensorBoard, MLflow, W&B) fail in ways training must survive: a server goes down, a disk
fills, a package is missing. The fan-out reports such a failure once, drops that backend and goes on; the
JSON history (always on) keeps the complete record. In distributed runs only rank 0 logs anything.
"""

from __future__ import annotations

import logging
import numbers
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

from common.distributed import is_main_process

DEFAULT_LOGGER = "trainyard.trackers"


@runtime_checkable
class Tracker(Protocol):
    """What every tracking backend implements."""

    def log_params(self, params: dict) -> None:
        """Hyperparameters; nested dicts allowed (backends that need flat keys join them with ".")."""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Scalar metrics at a global step."""

    def log_artifact(self, path: str | Path, name: str | None = None) -> None:
        """A file or folder the run produced (a plot, a checkpoint), stored as `name` (default: its name)."""

    def close(self) -> None:
        """Write out everything still buffered and release the backend."""


def flatten_params(params: Mapping, sep: str = ".", prefix: str = "") -> dict[str, object]:
    """{"optim": {"lr": 1e-3}} -> {"optim.lr": 1e-3}; leaves (lists, numbers, strings) are kept as is."""
    flat: dict[str, object] = {}
    for key, value in params.items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            flat.update(flatten_params(value, sep, name))
        else:
            flat[name] = value
    return flat


def metric_value(name: str, value: object) -> float:
    """A metric as a plain float: numpy scalars, 0-d arrays and 0-d torch tensors (via __float__) accepted."""
    # float("1.5") and float(True) would succeed, but a string or a bool metric is a caller bug.
    if isinstance(value, str | bytes | bool):
        raise TypeError(f"metric {name!r} must be a real number, got {type(value).__name__}: {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError) as exc:  # None, a list, a tensor with more than one element
        raise TypeError(f"metric {name!r} must be a real number, got {type(value).__name__}: {exc}") from None


class Trackers:
    """Fan-out over several trackers: one failing backend never stops training or the others.

    An exception from a tracker is logged once (a warning naming the tracker and the error) and that tracker
    is dropped for the rest of the run. A dropped tracker is not closed: closing a tracker whose server is
    down would block on the same network calls that just failed.
    """

    def __init__(self, trackers: Sequence[Tracker], logger: logging.Logger | None = None) -> None:
        self._logger = logger or logging.getLogger(DEFAULT_LOGGER)
        # Ranks other than 0 log nothing at all, whatever they were given.
        self._active: list[Tracker] = list(trackers) if is_main_process() else []
        self._failed: list[str] = []

    @property
    def trackers(self) -> tuple[Tracker, ...]:
        """The trackers still active (failed ones removed)."""
        return tuple(self._active)

    @property
    def failed(self) -> tuple[str, ...]:
        """Class names of the trackers dropped after an error, in the order they failed."""
        return tuple(self._failed)

    @property
    def history(self):
        """The tracker that keeps the series in memory (the JsonHistory), or None (rank != 0, none given)."""
        # Found by what it offers rather than by class, so this module does not import json_history,
        # which imports this one.
        return next((t for t in self._active if callable(getattr(t, "series", None))), None)

    def log_params(self, params: dict) -> None:
        if not isinstance(params, Mapping):
            raise TypeError(f"params must be a dict, got {type(params).__name__}")
        self._call("log_params", dict(params))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        # Converted once here so a bad value is the caller's error (raised), not a reason to drop a tracker.
        values = {str(name): metric_value(name, value) for name, value in metrics.items()}
        if isinstance(step, bool) or not isinstance(step, numbers.Integral):
            raise TypeError(f"step must be an int, got {type(step).__name__}: {step!r}")
        self._call("log_metrics", values, int(step))

    def log_artifact(self, path: str | Path, name: str | None = None) -> None:
        path = Path(path)
        if not self._active:
            return
        if not path.exists():
            # A missing file is the caller's slip, not a backend failure: keep every tracker.
            self._logger.warning("artifact %s does not exist; not logged", path)
            return
        self._call("log_artifact", path, name)

    def log_model(self, path: str | Path, name: str = "model") -> None:
        """The run's trained model, a file or folder (an MLflow model folder, or weights + config), to the
        trackers that store models; `LogFinalModel` writes it and calls this at the end of a run."""
        takers = self._model_takers()
        if not takers:
            return
        path = Path(path)
        if not path.exists():
            self._logger.warning("model %s does not exist; not logged", path)
            return
        for tracker in takers:
            self._call_one(tracker, "log_model", path, name)

    @property
    def stores_models(self) -> bool:
        """True when a tracker keeps models (`log_models` set, e.g. MLflow's): only then is one worth building."""
        return bool(self._model_takers())

    def _model_takers(self) -> list[Tracker]:
        # A tracker opts in with a true `log_models` attribute (read through a BackgroundTracker).
        return [t for t in self._active if getattr(t, "log_models", False)]

    def flush(self) -> None:
        """Write out what the trackers buffer: brings metrics_history.json up to date (e.g. per epoch)."""
        for tracker in list(self._active):
            if callable(getattr(tracker, "flush", None)):
                self._call_one(tracker, "flush")

    def close(self) -> None:
        for tracker in list(self._active):
            self._call_one(tracker, "close")
        self._active.clear()

    def __enter__(self) -> Trackers:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _call(self, method: str, *args) -> None:
        for tracker in list(self._active):
            self._call_one(tracker, method, *args)

    def _call_one(self, tracker: Tracker, method: str, *args) -> None:
        try:
            getattr(tracker, method)(*args)
        except Exception as exc:  # any backend error: report once, drop the tracker, keep training
            self._active.remove(tracker)
            name = type(tracker).__name__
            self._failed.append(name)
            self._logger.warning(
                "tracker %s failed in %s (%s: %s); it is switched off for the rest of this run, "
                "the other trackers and the JSON history go on",
                name,
                method,
                type(exc).__name__,
                one_line(exc),
            )


def one_line(exc: BaseException, limit: int = 500) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
