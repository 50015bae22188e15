"""MAE loss and the regression metrics: loss, mae, mse and per-component mae_x/y/z, mse_x/y/z.

`RegressionMetrics` sums errors over batches in float64, so validation metrics are exact over all graphs
(not a mean of batch means). Training batches all hold the same number of graphs, so the training loop's
per-epoch mean of batch metrics is that same exact value.
"""

from __future__ import annotations

import torch
from torch import Tensor

AXES = ("x", "y", "z")


def mae_loss(pred: Tensor, target: Tensor) -> Tensor:
    """The training objective: mean absolute error over all graphs and components ([B, 3] -> scalar)."""
    return torch.nn.functional.l1_loss(pred.float(), target.float())


class RegressionMetrics:
    """Accumulates absolute and squared errors per component over batches of [B, 3] predictions."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.abs_sum = [0.0, 0.0, 0.0]
        self.sq_sum = [0.0, 0.0, 0.0]
        self.count = 0

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> dict[str, float]:
        """Add one batch; returns that batch's own metrics."""
        err = pred.detach().double() - target.detach().double()  # [B, 3]
        abs_sum, sq_sum = err.abs().sum(0).tolist(), (err * err).sum(0).tolist()  # [3], [3]
        n = err.shape[0]
        for k in range(3):
            self.abs_sum[k] += abs_sum[k]
            self.sq_sum[k] += sq_sum[k]
        self.count += n
        return _finish(abs_sum, sq_sum, n)

    def compute(self) -> dict[str, float]:
        """Metrics over everything added since the last reset (NaN when empty)."""
        return _finish(self.abs_sum, self.sq_sum, self.count)

    def state_dict(self) -> dict:
        return {"abs_sum": list(self.abs_sum), "sq_sum": list(self.sq_sum), "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.abs_sum = [float(v) for v in state["abs_sum"]]
        self.sq_sum = [float(v) for v in state["sq_sum"]]
        self.count = int(state["count"])


def _finish(abs_sum: list[float], sq_sum: list[float], n: int) -> dict[str, float]:
    if n == 0:
        nan = float("nan")
        return {k: nan for k in ("loss", "mae", "mse", *(f"{m}_{a}" for m in ("mae", "mse") for a in AXES))}
    out = {"mae": sum(abs_sum) / (3 * n), "mse": sum(sq_sum) / (3 * n)}
    out["loss"] = out["mae"]  # the loss is the MAE
    for k, axis in enumerate(AXES):
        out[f"mae_{axis}"] = abs_sum[k] / n
        out[f"mse_{axis}"] = sq_sum[k] / n
    return out
