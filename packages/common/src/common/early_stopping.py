"""Early stopping on a monitored metric, framework-free, with state that survives a resume.

Semantics follow Lightning's `EarlyStopping` and Keras: a value improves when it beats the best by more than
`min_delta` (lower in mode "min", higher in "max"); after `patience` consecutive updates without improvement
the run should stop. A NaN/inf value stops at once when `check_finite` (otherwise it just never improves).
"""

from __future__ import annotations

import math

from common.errors import CheckpointError, ConfigError

__all__ = ["EarlyStopping"]


class EarlyStopping:
    def __init__(
        self,
        monitor: str = "val_loss",
        mode: str = "min",
        patience: int = 10,
        min_delta: float = 0.0,
        check_finite: bool = True,
    ):
        if mode not in ("min", "max"):
            raise ConfigError(f"early stopping mode must be 'min' or 'max', got {mode!r}.")
        if patience < 0:
            raise ConfigError(f"early stopping patience must be >= 0, got {patience}.")
        if not (min_delta >= 0 and math.isfinite(min_delta)):
            raise ConfigError(f"early stopping min_delta must be a finite value >= 0, got {min_delta}.")
        self.monitor, self.mode, self.patience = monitor, mode, patience
        self.min_delta, self.check_finite = float(min_delta), check_finite
        self.best: float | None = None
        self.wait = 0  # consecutive updates without improvement
        self.should_stop = False
        self.reason: str | None = None

    def _improves(self, value: float) -> bool:
        if self.best is None:
            return math.isfinite(value)
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def update(self, metrics: dict[str, float]) -> bool:
        """Feed this epoch's metrics; True means stop now (and stays True)."""
        if self.monitor not in metrics:
            raise ConfigError(
                f"early stopping monitors {self.monitor!r}, which is not among the logged metrics "
                f"({', '.join(sorted(metrics)) or 'none'}); set early_stopping.monitor to one of them."
            )
        value = float(metrics[self.monitor])
        if self.should_stop:
            return True
        if self.check_finite and not math.isfinite(value):
            self.should_stop = True
            self.reason = f"{self.monitor} = {value} is not finite; stopping (best was {self.best})."
        elif self._improves(value):
            self.best, self.wait = value, 0
        else:
            self.wait += 1
            if self.wait >= self.patience:
                self.should_stop = True
                self.reason = (
                    f"{self.monitor} did not improve by more than {self.min_delta} for {self.wait} "
                    f"updates (best {self.best}, patience {self.patience})."
                )
        return self.should_stop

    def state_dict(self) -> dict:
        return {
            "monitor": self.monitor,
            "mode": self.mode,
            "best": self.best,
            "wait": self.wait,
            "should_stop": self.should_stop,
            "reason": self.reason,
        }

    def load_state_dict(self, d: dict) -> None:
        if (d["monitor"], d["mode"]) != (self.monitor, self.mode):
            raise CheckpointError(
                f"The checkpoint's early stopping watched {d['monitor']!r} ({d['mode']}), this run watches "
                f"{self.monitor!r} ({self.mode}); its best value would be meaningless. Resume with the same "
                "early_stopping settings or start a new run."
            )
        self.best = None if d["best"] is None else float(d["best"])
        self.wait, self.should_stop, self.reason = int(d["wait"]), bool(d["should_stop"]), d["reason"]

    def __repr__(self) -> str:
        return (
            f"EarlyStopping(monitor={self.monitor!r}, mode={self.mode!r}, best={self.best}, "
            f"wait={self.wait}/{self.patience}, should_stop={self.should_stop})"
        )
