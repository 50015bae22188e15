"""What the dashboard's pages show, as plain tables: the runs, and one metric compared across runs.

Every package logs the same names (`train/loss`, `val/<metric>`, `lr`, `system/<name>`), so comparing runs
of different packages is a join on the metric name.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from functools import cached_property

import pandas as pd

from dashboard.history import read_history, series
from dashboard.runs import Run

# Metrics the runs table shows the last value of, and the compare page offers first, in this order.
HEADLINE_METRICS = ("train/loss", "val/loss")
SYSTEM_PREFIX = "system/"


@dataclass
class RunData:
    """A run with its history read once per page refresh."""

    run: Run

    @cached_property
    def _read(self) -> tuple[dict, pd.DataFrame]:
        return read_history(self.run.history_file)

    @property
    def history(self) -> pd.DataFrame:
        return self._read[1]

    @property
    def params(self) -> dict:
        return self._read[0]

    @property
    def label(self) -> str:
        """How a run is named in charts and tables: its package and its folder."""
        return f"{self.run.package} · {self.run.name}"


def runs_table(runs: list[RunData], now: float | None = None) -> pd.DataFrame:
    """One row per run: name, package, status, last step, headline metrics, last change."""
    rows = []
    for data in runs:
        history = data.history
        row = {
            "run": data.run.name,
            "package": data.run.package,
            "status": "live" if data.run.is_live(now) else "idle",
            "last step": int(history["step"].max()) if not history.empty else None,
            "metrics": history["metric"].nunique(),
        }
        for name in HEADLINE_METRICS:
            values = series(history, name)
            row[name] = values.iloc[-1] if not values.empty else None
        row["modified"] = dt.datetime.fromtimestamp(data.run.modified()).strftime("%Y-%m-%d %H:%M:%S")
        rows.append(row)
    return pd.DataFrame(
        rows, columns=["run", "package", "status", "last step", "metrics", *HEADLINE_METRICS, "modified"]
    )


def shared_metrics(runs: list[RunData]) -> list[str]:
    """Metric names every given run logged, headline metrics first, then by name."""
    if not runs:
        return []
    common = set.intersection(*(set(data.history["metric"]) for data in runs))
    first = [name for name in HEADLINE_METRICS if name in common]
    return first + sorted(common - set(first))


def compare(runs: list[RunData], metric: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(chart, table) of one metric over runs: the chart is step-indexed with one column per run; the table
    has one row per run that logged it (run, package, last, min, max, points, last step)."""
    curves = {}
    rows = []
    for data in runs:
        values = series(data.history, metric)
        if values.empty:
            continue
        curves[data.label] = values
        rows.append(
            {
                "run": data.run.name,
                "package": data.run.package,
                "last": values.iloc[-1],
                "min": values.min(),
                "max": values.max(),
                "points": len(values),
                "last step": int(values.index.max()),
            }
        )
    chart = pd.DataFrame(curves).sort_index()
    table = pd.DataFrame(rows, columns=["run", "package", "last", "min", "max", "points", "last step"])
    return chart, table


def system_metrics(history: pd.DataFrame) -> list[str]:
    """The run's `system/*` metric names (time per epoch, memory, throughput), by name."""
    return sorted(name for name in history["metric"].unique() if name.startswith(SYSTEM_PREFIX))
