"""`JsonHistory`: the always-on, complete metrics record of a run (`metrics_history.json`).

File format: {"params": {...nested...}, "metrics": {name: [{"step": s, "value": v, "time": t, "seq": n}, ...]},
"artifacts": [{"name", "path", "time"}, ...], "log_calls": n}.

Rewriting the whole JSON on every step would cost O(history) per step, so the JSON is rewritten atomically
every `flush_every` calls and on flush()/close(). Each logged step is also appended, as one line, to a small
journal beside it (`<name>.journal`); a process killed between two rewrites (even by SIGKILL) therefore
loses nothing, and reopening with `resume_step` folds the journal back in. The journal is emptied after each
rewrite and deleted on close. `log_calls` numbers the journal lines so that a crash between a rewrite and the
journal reset never counts an entry twice, and `seq` on each entry (its log call) lets a resumed run keep
exactly the rows logged before its checkpoint (`state_dict` / `load_state_dict`).
"""

from __future__ import annotations

import enum
import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path

from common.errors import CheckpointError
from common.runs import atomic_write_text
from common.trackers.base import metric_value

_log = logging.getLogger("trainyard.trackers")

# A rewrite of a long history (tens of thousands of entries) takes a noticeable time: automatic rewrites
# slower than _SLOW_FLUSH_S are spaced so they cost at most about 1/_MAX_OVERHEAD_RATIO of the wall time.
# Nothing is at risk meanwhile (the journal has every step), and an explicit flush() always writes.
_MAX_OVERHEAD_RATIO = 20
_SLOW_FLUSH_S = 0.05


class JsonHistory:
    """Complete, crash-safe metrics history in one JSON file."""

    def __init__(self, path: str | Path, *, resume_step: int | None = None, flush_every: int = 50) -> None:
        if flush_every < 1:
            raise ValueError(f"flush_every must be >= 1, got {flush_every}")
        self.path = Path(path)
        self.journal_path = self.path.with_name(self.path.name + ".journal")
        self.flush_every = flush_every
        self.params: dict = {}
        self.metrics: dict[str, list[dict]] = {}
        self.artifacts: list[dict] = []
        self._log_calls = 0
        self._since_flush = 0
        self._last_flush_cost = 0.0
        self._last_flush_end = 0.0
        self._journal = None
        self._closed = False
        self._resume_step = resume_step
        if resume_step is not None:
            self._load(resume_step)
        # Write at once: the file exists from the first step on, and a resumed file loses its dropped tail.
        self.flush()

    # -- Tracker protocol -------------------------------------------------------------------------------
    def log_params(self, params: dict) -> None:
        self._check_open()
        _deep_merge(self.params, params)
        self.flush()  # rare and precious: written straight away

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self._check_open()
        now = time.time()
        values = {str(name): metric_value(name, value) for name, value in metrics.items()}
        self._log_calls += 1
        for name, value in values.items():
            self._record(name, int(step), value, now, self._log_calls)
        self._append_journal({"seq": self._log_calls, "step": int(step), "time": now, "metrics": values})
        self._since_flush += 1
        if self._since_flush >= self.flush_every and self._flush_is_affordable():
            self.flush()

    def log_artifact(self, path: str | Path, name: str | None = None) -> None:
        self._check_open()
        path = Path(path)
        shown = path.relative_to(self.path.parent) if path.is_relative_to(self.path.parent) else path
        self.artifacts.append({"name": name or path.name, "path": str(shown), "time": time.time()})
        self.flush()

    def close(self) -> None:
        if self._closed:
            return
        self.flush()
        if self._journal is not None:
            self._journal.close()
            self._journal = None
        self.journal_path.unlink(missing_ok=True)
        self._closed = True

    # -- history API ------------------------------------------------------------------------------------
    def flush(self) -> None:
        """Atomic rewrite of the JSON file with everything logged so far, then reset the journal."""
        start = time.monotonic()
        data = {
            "params": self.params,
            "metrics": self.metrics,
            "artifacts": self.artifacts,
            "log_calls": self._log_calls,
        }
        atomic_write_text(self.path, json.dumps(data, default=_jsonable, separators=(",", ":")))
        # Everything journaled is in the JSON now. Truncating the journal after the rewrite (not before)
        # means a crash in between leaves duplicates, which `log_calls` filters out on load.
        if self._journal is not None:
            self._journal.seek(0)
            self._journal.truncate()
        elif self.journal_path.exists():
            self.journal_path.unlink()
        self._since_flush = 0
        self._last_flush_end = time.monotonic()
        self._last_flush_cost = self._last_flush_end - start

    def series(self, name: str) -> list[tuple[int, float]]:
        """[(step, value), ...] of one metric, in logging order."""
        if name not in self.metrics:
            raise KeyError(f"no metric {name!r} in {self.path}; logged metrics: {sorted(self.metrics)}")
        return [(entry["step"], entry["value"]) for entry in self.metrics[name]]

    def state_dict(self) -> dict:
        """How many log calls the history holds: a checkpoint records it, so a resume keeps exactly those."""
        return {"log_calls": self._log_calls}

    def load_state_dict(self, state: dict) -> None:
        """Keep only what was logged up to the checkpoint (by log call, not by step: rows logged at the
        checkpoint's own step after it was written are dropped and will be logged again)."""
        kept = int(state["log_calls"])
        for name in list(self.metrics):
            entries = [e for e in self.metrics[name] if e.get("seq", 0) <= kept]
            if entries:
                self.metrics[name] = entries
            else:
                del self.metrics[name]
        self._log_calls = kept
        self.flush()

    # -- internals --------------------------------------------------------------------------------------
    def _record(self, name: str, step: int, value: float, now: float, seq: int) -> None:
        series = self.metrics.setdefault(name, [])
        entry = {"step": step, "value": value, "time": now, "seq": seq}
        replayed = self._resume_step is not None and step <= self._resume_step
        if replayed and series and series[-1]["step"] == step:
            # A resumed loop may log the checkpoint's own step again: keep one entry per (name, step).
            series[-1] = entry
        else:
            series.append(entry)

    def _append_journal(self, line: dict) -> None:
        if self._journal is None:
            self._journal = open(self.journal_path, "a", encoding="utf-8")  # noqa: SIM115 (kept open)
        self._journal.write(json.dumps(line, separators=(",", ":")) + "\n")
        # Into the OS page cache: survives the process being killed (no fsync per step: too slow).
        self._journal.flush()

    def _flush_is_affordable(self) -> bool:
        if self._last_flush_cost < _SLOW_FLUSH_S:
            return True
        return time.monotonic() - self._last_flush_end >= _MAX_OVERHEAD_RATIO * self._last_flush_cost

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"JsonHistory({self.path}) is closed")

    def _load(self, resume_step: int) -> None:
        if not self.path.exists():
            _log.warning("no metrics history at %s to resume from; starting a new one", self.path)
            return
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            params, metrics = data["params"], data["metrics"]
            if not isinstance(params, dict) or not isinstance(metrics, dict):
                raise TypeError("'params' and 'metrics' must be objects")
            for name, entries in metrics.items():
                metrics[name] = [
                    {
                        "step": int(e["step"]),
                        "value": float(e["value"]),
                        "time": float(e["time"]),
                        "seq": int(e.get("seq", 0)),
                    }
                    for e in entries
                ]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(
                f"cannot resume the metrics history {self.path}: it is not a readable Trainyard history "
                f"({type(exc).__name__}: {exc}). Move the file away to start a new history."
            ) from None
        self.params, self.metrics = params, metrics
        self.artifacts = list(data.get("artifacts", []))
        self._log_calls = int(data.get("log_calls", 0))
        self._replay_journal()
        for name in list(self.metrics):
            kept = [e for e in self.metrics[name] if e["step"] <= resume_step]  # later steps will be replayed
            if kept:
                self.metrics[name] = kept
            else:
                del self.metrics[name]

    def _replay_journal(self) -> None:
        if not self.journal_path.exists():
            return
        for line in self.journal_path.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
                seq, step, now, values = entry["seq"], entry["step"], entry["time"], entry["metrics"]
            except (ValueError, KeyError, TypeError):
                break  # a line torn by the crash: nothing after it was written
            if seq <= self._log_calls:
                continue  # already in the JSON (crash between a rewrite and the journal reset)
            for name, value in values.items():
                self.metrics.setdefault(name, []).append(
                    {"step": step, "value": value, "time": now, "seq": seq}
                )
            self._log_calls = seq


def _deep_merge(into: dict, new: Mapping) -> None:
    """Merge `new` into `into`, nested dicts merged key by key (later values win)."""
    for key, value in new.items():
        key = str(key)
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _deep_merge(into[key], value)
        elif isinstance(value, Mapping):
            into[key] = {}
            _deep_merge(into[key], value)
        else:
            into[key] = value


def _jsonable(obj: object) -> object:
    """JSON fallback for params: numpy scalars/arrays, paths, enums, sets; anything else as its str()."""
    if hasattr(obj, "tolist"):  # numpy scalar or array
        return obj.tolist()
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, set | frozenset):
        return sorted(obj, key=str)
    return str(obj)
