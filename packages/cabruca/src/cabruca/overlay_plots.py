"""The evaluation overlays as figures a person can read on their own: three titled panels (the tile, the
prediction, the target) at a legible size, and a legend naming each class colour, the crown outlines and
the tree centres. The class colours are blended into the tile by `cabruca.evaluation.overlay`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from common.plots import save_figure

CROWN_OUTLINE = (1.0, 1.0, 1.0)  # white, as overlay draws them
CENTRE_MARK = (1.0, 30 / 255, 30 / 255)  # red crosses
PANEL_INCHES = 3.6  # per panel: a 128-pixel tile shown about 2.5x its size at 100 dpi


def write_overlay_figure(
    image: np.ndarray,
    prediction: np.ndarray,
    target: np.ndarray,
    class_names: list[str],
    palette: np.ndarray,
    path: str | Path,
    *,
    title: str = "",
) -> Path:
    """image, prediction, target: (H, W, 3) arrays (image float in [0, 1], the overlays uint8) -> a PNG of
    three panels, about 1100 x 450 pixels, with a legend for the classes present in either overlay's
    source. `palette` (n, 3) uint8 gives each class id its colour (ids beyond it cycle, as in overlay)."""
    fig = Figure(figsize=(3 * PANEL_INCHES, PANEL_INCHES + 0.9))
    axes = fig.subplots(1, 3)
    panels = [(image, "image"), (prediction, "prediction"), (target, "target")]
    for ax, (picture, name) in zip(axes, panels, strict=True):
        ax.imshow(picture, interpolation="nearest")
        ax.set_title(name)
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [
        Patch(facecolor=palette[i % len(palette)] / 255, edgecolor="grey", label=name.replace("_", " "))
        for i, name in enumerate(class_names)
        if i > 0  # background is drawn as the tile itself
    ]
    handles += [
        Line2D([], [], color=CROWN_OUTLINE, marker="s", markeredgecolor="grey", ls="", label="crown outline"),
        Line2D([], [], color=CENTRE_MARK, marker="+", markersize=10, ls="", label="tree centre"),
    ]
    fig.legend(
        handles=handles, loc="lower center", ncol=min(len(handles), 4), fontsize="small", frameon=False
    )
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.12, 1, 0.94 if title else 1))  # the bottom strip is the legend's
    return save_figure(fig, path)
