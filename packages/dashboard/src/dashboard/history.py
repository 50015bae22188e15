"""A run's metrics as a table: the JSON history plus its append-only journal, so a live run is current.

`common.trackers.JsonHistory` rewrites `metrics_history.json` only every 50 log calls and appends every call,
as one line, to `metrics_history.json.journal` in between. Reading the JSON alone would lag up to 50 rows behind
a live run; reading both gives every row logged so far. The journal is read first: a rewrite that lands
between the two reads then only moves rows from the journal into the JSON, and the journal lines the JSON
already holds (`seq` <= its `log_calls`) are skipped, so no row is counted twice or lost.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from dashboard.runs import journal_path

COLUMNS = ["metric", "step", "value", "time"]


def read_history(history_file: Path | None) -> tuple[dict, pd.DataFrame]:
    """(params, long table of metric/step/value/time) of one history file; empty while none is readable."""
    if history_file is None:
        return {}, pd.DataFrame(columns=COLUMNS)
    journal = _journal_lines(journal_path(history_file))
    data = _json_document(history_file)
    rows = []
    for name, entries in (data.get("metrics") or {}).items():
        for entry in entries if isinstance(entries, list) else []:
            if isinstance(entry, dict) and "value" in entry:
                rows.append((name, entry.get("step", 0), entry["value"], entry.get("time")))
    in_json = int(data.get("log_calls") or 0)
    for line in journal:
        if line["seq"] > in_json:
            rows += [(name, line["step"], value, line["time"]) for name, value in line["metrics"].items()]
    table = pd.DataFrame(rows, columns=COLUMNS)
    table["value"] = pd.to_numeric(table["value"], errors="coerce")
    table["step"] = pd.to_numeric(table["step"], errors="coerce").fillna(0).astype(int)
    params = data.get("params")
    return (params if isinstance(params, dict) else {}), table


def _json_document(path: Path) -> dict:
    """The JSON history, or {} while it does not exist yet. Its rewrites are atomic (a rename), so a reader
    sees either the old or the new file, never half of one."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _journal_lines(path: Path) -> list[dict]:
    """The journal's complete lines; a line being appended right now (no newline yet, or torn) ends it."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return []
    lines = []
    for raw in text.split("\n")[:-1]:  # the part after the last newline is still being written
        try:
            line = json.loads(raw)
            seq, step, metrics = int(line["seq"]), int(line["step"]), dict(line["metrics"])
        except (ValueError, KeyError, TypeError):
            break
        lines.append({"seq": seq, "step": step, "time": line.get("time"), "metrics": metrics})
    return lines


def series(history: pd.DataFrame, metric: str) -> pd.Series:
    """One metric as values indexed by step (the last value logged at a step wins), in step order."""
    rows = history[history["metric"] == metric]
    values = rows.groupby("step")["value"].last()
    return values.sort_index()


def wide(history: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Step-indexed table with one column per metric, for a line chart."""
    return pd.DataFrame({name: series(history, name) for name in metrics}).sort_index()


def summary(history: pd.DataFrame) -> pd.DataFrame:
    """Per metric, in name order: last value, min, max, number of points, last step."""
    if history.empty:
        return pd.DataFrame(columns=["metric", "last", "min", "max", "points", "last step"])
    ordered = history.sort_values("step", kind="stable").groupby("metric")
    values = ordered["value"]
    table = pd.DataFrame(
        {
            "last": values.last(),
            "min": values.min(),
            "max": values.max(),
            "points": values.size(),
            "last step": ordered["step"].max(),
        }
    )
    return table.reset_index()
