"""Training-curve PNGs (matplotlib, rendered off-screen).

matplotlib is imported inside the functions so `import common` stays fast. Figures are built with
`matplotlib.figure.Figure` rather than pyplot: that renders through Agg without selecting a global backend
(so it works headless and never disturbs a user's interactive backend) and leaves no figure in pyplot's
global registry to leak memory when a plot is redrawn every epoch.
"""

from __future__ import annotations

import io
import json
import logging
import math
from collections.abc import Mapping
from pathlib import Path

from common.errors import DataError
from common.runs import atomic_write_bytes

_log = logging.getLogger("trainyard.plots")


def plot_curves(
    series: dict[str, list[tuple[int, float]]],
    path: str | Path,
    *,
    title: str = "",
    xlabel: str = "step",
    groups: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
) -> Path:
    """Write one PNG with one subplot per metric group and return its path.

    Metrics whose names share the part after the last "/" share an axis ("train/loss" and "val/loss" are
    drawn together on a "loss" axis); a name without "/" is its own group. `groups` puts a series on another
    group's axis (a yardstick beside the curve it judges: {"val/baseline_mse": "mse"}), `labels` renames a
    series in the legend. Non-finite values are skipped.
    """
    from matplotlib.figure import Figure

    grouped = _group_by_suffix(series, groups or {})
    labels = labels or {}
    n = max(1, len(grouped))
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(5 * cols, 3.5 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, (group, names) in zip(axes.flat, grouped.items(), strict=False):
        for name in names:
            points = [(s, v) for s, v in series[name] if v is not None and math.isfinite(v)]
            if points:
                steps, values = zip(*points, strict=True)
                ax.plot(steps, values, label=labels.get(name, name), marker="." if len(points) < 30 else None)
        # One series: its full name is the title (train/ or val/ is not lost); several: a legend names them.
        ax.set_title(labels.get(names[0], names[0]) if len(names) == 1 else group)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(group)
        ax.grid(True, alpha=0.3)
        if len(names) > 1:
            ax.legend(fontsize="small")
    for ax in list(axes.flat)[len(grouped) :]:
        ax.axis("off")  # unused cells of the grid
    if not grouped:
        axes.flat[0].text(0.5, 0.5, "no metrics yet", ha="center", va="center")
        axes.flat[0].set_title("no metrics yet")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


def save_figure(fig, path: str | Path, *, dpi: int = 100, fmt: str | None = None) -> Path:
    """Render `fig` (a `matplotlib.figure.Figure`) off-screen and write it atomically: a dashboard reading the
    file never sees half of it. A figure that `figure_problems` finds unlabelled is written anyway, with one
    warning naming what is missing (a plot is a convenience; it never stops a run)."""
    problems = figure_problems(fig)
    if problems:
        _log.warning("plot %s is not fully labelled: %s", Path(path).name, "; ".join(problems))
    buffer = io.BytesIO()
    fig.savefig(buffer, format=fmt or Path(path).suffix.lstrip(".") or "png", dpi=dpi)
    path = Path(path)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def figure_problems(fig) -> list[str]:
    """What keeps a figure from being read on its own, one line per panel: a panel of curves needs a title,
    an x and a y label, and a legend when it draws several labelled series; an image panel needs a title
    (or the figure a legend saying what its colours mean)."""
    problems = []
    for i, ax in enumerate(fig.axes):
        if not ax.get_visible() or not (ax.lines or ax.images or ax.collections or ax.patches):
            continue  # unused grid cells, colour bars' own axes are checked through their parent
        name = ax.get_title() or f"panel {i + 1}"
        if not ax.get_title() and not fig.get_suptitle():
            problems.append(f"{name} has no title")
        if ax.images:
            continue  # a picture: its title says what it shows
        if not ax.get_xlabel() and ax.axison:
            problems.append(f"{name} has no x label")
        if not ax.get_ylabel() and ax.axison and not _is_colorbar(ax):
            problems.append(f"{name} has no y label")
        labelled = [line for line in ax.lines if not line.get_label().startswith("_")]
        if len(labelled) > 1 and ax.get_legend() is None and not fig.legends:
            problems.append(f"{name} draws {len(labelled)} series without a legend")
    return problems


def _is_colorbar(ax) -> bool:
    return getattr(ax, "_colorbar", None) is not None


def plot_history(history_json_path: str | Path, out_path: str | Path, **kw) -> Path:
    """Plot every metric of a `JsonHistory` file ({"metrics": {name: [{"step", "value"}, ...]}})."""
    history_json_path = Path(history_json_path)
    try:
        data = json.loads(history_json_path.read_text(encoding="utf-8"))
        metrics = data["metrics"]
        series = {
            name: [(int(p["step"]), float(p["value"])) for p in points] for name, points in metrics.items()
        }
    except FileNotFoundError:
        raise DataError(f"metrics history {history_json_path} does not exist") from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise DataError(
            f"metrics history {history_json_path} is not a Trainyard history file "
            f'({{"metrics": {{name: [{{"step": s, "value": v}}, ...]}}}}): {exc}'
        ) from None
    return plot_curves(series, out_path, **kw)


def _group_by_suffix(
    series: dict[str, list[tuple[int, float]]], moved: Mapping[str, str] | None = None
) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for name in series:
        groups.setdefault((moved or {}).get(name) or name.rsplit("/", 1)[-1], []).append(name)
    return groups
