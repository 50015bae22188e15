"""Retention policies: which checkpoint files a run keeps, under which names (see CheckpointManager)."""

from __future__ import annotations

import math
import os
import shutil
import string
from pathlib import Path
from typing import Any

from common.checkpoint.format import _CHUNK, save_checkpoint
from common.errors import CheckpointError, ConfigError
from common.runs import atomic_writer, is_temp_file


def _template_fields(template: str) -> list[str]:
    return [field for _, field, _, _ in string.Formatter().parse(template) if field]


def _template_glob(template: str) -> str:
    """'best-{epoch:02d}-{val_loss:.3f}.ckpt' -> 'best-*-*.ckpt' (to find files written before a restart)."""
    parts = []
    for literal, field, _, _ in string.Formatter().parse(template):
        parts.append(literal.replace("[", "[[]").replace("*", "[*]").replace("?", "[?]"))
        if field is not None:
            parts.append("*")
    return "".join(parts)


def _atomic_copy(src: Path, dst: Path) -> None:
    with atomic_writer(dst) as fh, src.open("rb") as source:
        shutil.copyfileobj(source, fh, _CHUNK)


class CheckpointManager:
    """Writes a run's checkpoints under file-name templates and applies the retention policies.

    - `last`: written on every `save` (a fixed name, or a template whose previous file is then removed);
    - `best` with `monitor`/`mode`/`top_k`: the top_k files by the monitored metric; NaN/inf never count;
    - `periodic` every `every_n_epochs` epochs (never deleted);
    - `step_file` by `save_step` for mid-epoch checkpoints (only the newest kept).
    Templates are formatted with epoch=, step= and the metrics (a "/" in a metric name becomes "_").

    If the saved state has a "manager" entry (the exact-resume recipe), it is replaced by this manager's
    bookkeeping *after* this save, so a resumed run knows about the file written by the save it resumes from.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        last: str | None = "last.ckpt",
        best: str | None = None,
        monitor: str | None = None,
        mode: str = "min",
        top_k: int = 1,
        every_n_epochs: int | None = None,
        periodic: str | None = None,
        step_file: str | None = None,
    ) -> None:
        if mode not in ("min", "max"):
            raise ConfigError(f"Checkpoint mode must be 'min' or 'max', got {mode!r}.")
        if best is not None and not monitor:
            raise ConfigError(
                f"A best-checkpoint template ({best!r}) needs `monitor`: the metric to rank by."
            )
        if top_k < 1:
            raise ConfigError(f"Checkpoint top_k must be at least 1, got {top_k}.")
        if best is not None and top_k > 1 and not _template_fields(best):
            raise ConfigError(
                f"top_k={top_k} needs a best template with a field such as {{epoch}} in it; with the fixed "
                f"name {best!r} every kept file would overwrite the one before."
            )
        if every_n_epochs is not None and (every_n_epochs < 1 or periodic is None):
            raise ConfigError(
                "every_n_epochs must be a positive int and needs a `periodic` file template such as "
                f"'checkpoint_epoch_{{epoch:04d}}.npz' (got every_n_epochs={every_n_epochs}, periodic={periodic!r})."
            )
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.last, self.best, self.monitor, self.mode = last, best, monitor, mode
        self.top_k, self.every_n_epochs, self.periodic, self.step_file = (
            top_k,
            every_n_epochs,
            periodic,
            step_file,
        )
        self._kept: list[tuple[float, int, str]] = []  # (value, epoch, file name), best first
        self._last_name: str | None = None
        self._step_name: str | None = None
        self._remove_stale_temp_files()

    # -- public API -------------------------------------------------------------------------------------

    @property
    def best_path(self) -> Path | None:
        return self.directory / self._kept[0][2] if self._kept else None

    @property
    def kept_paths(self) -> list[Path]:
        """The best files kept, best first."""
        return [self.directory / name for _, _, name in self._kept]

    @property
    def last_path(self) -> Path | None:
        """The `last` file written by the latest `save` (None before the first)."""
        return self.directory / self._last_name if self._last_name else None

    @property
    def best_value(self) -> float | None:
        return self._kept[0][0] if self._kept else None

    def save(self, state: dict, *, epoch: int, metrics: dict[str, float] | None = None) -> list[Path]:
        """End-of-epoch save: `last`, the periodic file when due, `best` when the metric makes the top_k."""
        metrics = dict(metrics or {})
        fields = {k.replace("/", "_"): v for k, v in metrics.items()}
        # the counters win over a logged metric of the same name (the loop logs "epoch" too)
        fields.update(epoch=epoch, step=state.get("global_step", 0) if isinstance(state, dict) else 0)
        targets: list[Path] = []
        dropped: list[str] = []
        value = self._monitored(metrics)
        if self.best is not None and value is not None and self._qualifies(value):
            name = self._format(self.best, fields)
            kept = [entry for entry in self._kept if entry[2] != name] + [(value, epoch, name)]
            kept.sort(key=lambda e: e[0], reverse=self.mode == "max")
            dropped = [e[2] for e in kept[self.top_k :]]
            self._kept = kept[: self.top_k]
            targets.append(self.directory / name)
        previous_last = self._last_name
        if self.last is not None:
            self._last_name = self._format(self.last, fields)
            targets.append(self.directory / self._last_name)
        if self.every_n_epochs and epoch % self.every_n_epochs == 0:
            targets.append(self.directory / self._format(self.periodic, fields))
        if previous_last and previous_last != self._last_name:
            dropped.append(previous_last)
        written = self._write(state, targets)
        self._delete_unused(dropped)
        return written

    def save_step(self, state: dict, *, epoch: int, step: int) -> Path:
        """Mid-epoch periodic checkpoint to `step_file` (the previous step file is removed if renamed)."""
        if self.step_file is None:
            raise ConfigError("save_step needs a `step_file` template, e.g. 'last_step.ckpt'.")
        previous = self._step_name
        self._step_name = self._format(self.step_file, {"epoch": epoch, "step": step})
        (path,) = self._write(state, [self.directory / self._step_name])
        if previous and previous != self._step_name:
            self._delete_unused([previous])
        return path

    def latest(self) -> Path | None:
        """The newest `last` or step file on disk (for `--resume auto`); None when there is none."""
        candidates = []
        for template in (self.last, self.step_file):
            if template is not None:
                candidates += [
                    p for p in self.directory.glob(_template_glob(template)) if not is_temp_file(p)
                ]
        candidates = [p for p in candidates if p.is_file()]
        return max(candidates, key=lambda p: p.stat().st_mtime_ns) if candidates else None

    def state_dict(self) -> dict:
        return {
            "monitor": self.monitor,
            "mode": self.mode,
            "kept": [[value, epoch, name] for value, epoch, name in self._kept],
            "last_name": self._last_name,
            "step_name": self._step_name,
        }

    def load_state_dict(self, d: dict) -> None:
        if d.get("monitor") != self.monitor or d.get("mode") != self.mode:
            raise CheckpointError(
                f"The checkpoint ranked best files by {d.get('monitor')!r} ({d.get('mode')}), this run by "
                f"{self.monitor!r} ({self.mode}); resume with the same monitor and mode."
            )
        self._kept = [(float(v), int(e), str(n)) for v, e, n in d.get("kept", [])][: self.top_k]
        self._last_name = d.get("last_name")
        self._step_name = d.get("step_name")

    # -- helpers ----------------------------------------------------------------------------------------

    def _monitored(self, metrics: dict[str, float]) -> float | None:
        if self.monitor is None:
            return None
        for key in (self.monitor, self.monitor.replace("/", "_")):
            if key in metrics:
                value = float(metrics[key])
                return value if math.isfinite(value) else None  # NaN/inf never counts as best
        return None  # not evaluated this epoch

    def _qualifies(self, value: float) -> bool:
        if len(self._kept) < self.top_k:
            return True
        worst = self._kept[-1][0]
        return value < worst if self.mode == "min" else value > worst

    def _format(self, template: str, fields: dict[str, Any]) -> str:
        try:
            name = template.format(**fields)
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigError(
                f"Cannot fill the checkpoint file template {template!r} ({type(exc).__name__}: {exc}); "
                f"available fields: {', '.join(sorted(fields))}."
            ) from exc
        if "/" in name or name in ("", ".", ".."):
            raise ConfigError(f"Checkpoint template {template!r} gave {name!r}, which is not a file name.")
        return name

    def _write(self, state: dict, targets: list[Path]) -> list[Path]:
        if not targets:
            return []
        if isinstance(state, dict) and "manager" in state:
            state = {**state, "manager": self.state_dict()}
        unique = list(dict.fromkeys(targets))
        save_checkpoint(unique[0], state)
        for target in unique[1:]:  # serialise once, copy the bytes for the other names
            _atomic_copy(unique[0], target)
        return unique

    def _delete_unused(self, names: list[str]) -> None:
        in_use = {name for _, _, name in self._kept} | {self._last_name, self._step_name}
        for name in names:
            if name not in in_use:
                (self.directory / name).unlink(missing_ok=True)

    def _remove_stale_temp_files(self) -> None:
        # A writer killed mid-save leaves its temp file behind; they are never loadable checkpoints and can
        # be as large as the model, so a new run in the same folder removes them.
        for p in self.directory.iterdir():
            if is_temp_file(p):
                p.unlink(missing_ok=True)
