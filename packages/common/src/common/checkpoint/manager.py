"""Retention policies: which checkpoint files a run keeps, under which names (see CheckpointManager)."""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import shutil
import string
import time
from pathlib import Path
from typing import Any

import numpy as np

from common.checkpoint.format import _CHUNK, save_checkpoint
from common.errors import CheckpointError, ConfigError
from common.runs import TEMP_MARK, atomic_write_text, atomic_writer, fsync_dir, is_temp_file

log = logging.getLogger("trainyard.checkpoints")

MANIFEST = "manifest.json"

# What only resuming needs; a weights-only (best) checkpoint leaves these out and keeps the model, the
# run's config and its counters, which is all that evaluation, prediction or fine-tuning read.
TRAINING_ONLY_KEYS = (
    "optimizer",
    "loop",
    "schedule",
    "callbacks",
    "rng",
    "manager",
    "stepper",
    "sampler",
    "scaler",
)

# Free space kept beyond a checkpoint's estimated size (file-format overhead, other writers).
SPACE_MARGIN_BYTES = 16 * 2**20


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


def _atomic_link(src: Path, dst: Path) -> None:
    """`dst` becomes a second name of `src`'s bytes: the same weights are never stored twice. The link is made
    under a temp name and renamed, so `dst` is replaced atomically; a later atomic rewrite of `src` gives
    `src` a new file and leaves `dst` as it was. Falls back to a copy where hard links are not supported."""
    tmp = dst.parent / f".{dst.name}{TEMP_MARK}{os.getpid()}-{time.monotonic_ns()}.tmp"
    try:
        os.link(src, tmp)
    except OSError:
        _atomic_copy(src, dst)
        return
    os.replace(tmp, dst)
    fsync_dir(dst.parent)


def weights_only(state: dict) -> dict:
    """The checkpoint state without what only resuming needs (optimizer, loop, RNG, callbacks ...)."""
    kept = {k: v for k, v in state.items() if k not in TRAINING_ONLY_KEYS}
    kept["weights_only"] = True
    return kept


def _array_bytes(node: Any) -> int:
    if isinstance(node, np.ndarray):
        return node.nbytes
    if isinstance(node, dict):
        return sum(_array_bytes(v) for v in node.values())
    if isinstance(node, (list, tuple)):
        return sum(_array_bytes(v) for v in node)
    return getattr(node, "nbytes", 0) if hasattr(node, "shape") else 0


def _megabytes(n: int) -> str:
    return f"{n / 2**20:.1f} MB"


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
        best_weights_only: bool = False,
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
        self.best_weights_only = best_weights_only
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
        best_targets: list[Path] = []
        dropped: list[str] = []
        value = self._monitored(metrics)
        if self.best is not None and value is not None and self._qualifies(value):
            name = self._format(self.best, fields)
            kept = [entry for entry in self._kept if entry[2] != name] + [(value, epoch, name)]
            kept.sort(key=lambda e: e[0], reverse=self.mode == "max")
            dropped = [e[2] for e in kept[self.top_k :]]
            self._kept = kept[: self.top_k]
            (best_targets if self.best_weights_only else targets).append(self.directory / name)
        previous_last = self._last_name
        if self.last is not None:
            self._last_name = self._format(self.last, fields)
            targets.append(self.directory / self._last_name)
        if self.every_n_epochs and epoch % self.every_n_epochs == 0:
            targets.append(self.directory / self._format(self.periodic, fields))
        if previous_last and previous_last != self._last_name:
            dropped.append(previous_last)
        written = self._write(state, targets)
        if best_targets:
            written += self._write(weights_only(state), best_targets)
        self._delete_unused(dropped)
        self._write_manifest()
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
        self._write_manifest()
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
        self._check_free_space(state)
        try:
            save_checkpoint(unique[0], state)
            for target in unique[1:]:  # serialise once; the other names share the bytes
                _atomic_link(unique[0], target)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise CheckpointError(
                    f"The disk filled up while writing {unique[0]}; nothing was replaced (the previous "
                    "checkpoint is intact). Free some space or choose another output folder, then resume."
                ) from None
            raise
        size = unique[0].stat().st_size
        log.info("checkpoint %s: %s", ", ".join(p.name for p in unique), _megabytes(size))
        return unique

    def _check_free_space(self, state: dict) -> None:
        """Refuse a write the disk cannot hold, before starting it, so the previous file stays whole."""
        # Replacing a file frees its space only after the new one is complete, so the whole size is needed.
        needed = _array_bytes(state) + SPACE_MARGIN_BYTES
        free = shutil.disk_usage(self.directory).free
        if free < needed:
            raise CheckpointError(
                f"Not enough free space in {self.directory} for the next checkpoint: it needs about "
                f"{_megabytes(needed)}, {_megabytes(free)} are free. The previous checkpoint is intact; free "
                "some space or choose another output folder, then resume."
            )

    def _write_manifest(self) -> None:
        """manifest.json: which file is best (and by what), without parsing file names."""
        manifest = {
            "monitor": self.monitor,
            "mode": self.mode,
            "best": self._kept[0][2] if self._kept else None,
            "best_score": self._kept[0][0] if self._kept else None,
            "best_weights_only": self.best_weights_only,
            "last": self._last_name,
            "step": self._step_name,
            "kept": [{"file": name, "score": value, "epoch": epoch} for value, epoch, name in self._kept],
        }
        atomic_write_text(self.directory / MANIFEST, json.dumps(manifest, indent=2) + "\n")

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
