"""Training-curve PNGs (matplotlib, rendered off-screen).

matplotlib is imported inside the functions so `import common` stays fast. Figures are built with
`matplotlib.figure.Figure` rather than pyplot: that renders through Agg without selecting a global backend
(so it works headless and never disturbs a user's interactive backend) and leaves no figure in pyplot's
global registry to leak memory when a plot is redrawn every epoch.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

from common.errors import DataError
from common.runs import atomic_write_bytes


def plot_curves(
    series: dict[str, list[tuple[int, float]]],
    path: str | Path,
    *,
    title: str = "",
    xlabel: str = "step",
) -> Path:
    """Write one PNG with one subplot per metric group and return its path.

    Metrics whose names share the part after the last "/" share an axis ("train/loss" and "val/loss" are
    drawn together on a "loss" axis); a name without "/" is its own group. Non-finite values are skipped.
    """
    from matplotlib.figure import Figure

    groups = _group_by_suffix(series)
    n = max(1, len(groups))
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(5 * cols, 3.5 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, (group, names) in zip(axes.flat, groups.items(), strict=False):
        for name in names:
            points = [(s, v) for s, v in series[name] if v is not None and math.isfinite(v)]
            if points:
                steps, values = zip(*points, strict=True)
                ax.plot(steps, values, label=name, marker="." if len(points) < 30 else None)
        ax.set_title(group)
        ax.set_xlabel(xlabel)
        ax.grid(True, alpha=0.3)
        if len(names) > 1:
            ax.legend(fontsize="small")
    for ax in list(axes.flat)[len(groups) :]:
        ax.axis("off")  # unused cells of the grid
    if not groups:
        axes.flat[0].text(0.5, 0.5, "no metrics yet", ha="center", va="center")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    # Render to memory, then replace atomically: a dashboard reading the PNG never sees half a file.
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    path = Path(path)
    atomic_write_bytes(path, buffer.getvalue())
    return path


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


def _group_by_suffix(series: dict[str, list[tuple[int, float]]]) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for name in series:
        groups.setdefault(name.rsplit("/", 1)[-1], []).append(name)
    return groups
