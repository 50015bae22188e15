"""`WandbTracker`: a Weights & Biases run, offline unless an API key says otherwise.

Mode: an explicit `mode`, else WANDB_MODE, else "online" when WANDB_API_KEY is set and "offline" when it is
not. The mode is always passed to `wandb.init` explicitly: wandb keeps process-wide settings from its first
use, so relying on it to re-read WANDB_MODE later can send a run online (and into a login prompt). Offline runs never touch the network, so training never
waits on it; they land in `<dir>/wandb/offline-run-*/` and can be uploaded later with `wandb sync <folder>`.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

from common.trackers.wandb_records import wait_until_complete

_log = logging.getLogger("trainyard.trackers")
_INVALID_ARTIFACT_CHARS = re.compile(r"[^\w\-.]")  # W&B artifact names: alphanumerics, dashes, _ and dots


def default_mode() -> str:
    """The W&B mode to ask for: WANDB_MODE when set; else online with an API key, offline without."""
    return os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")


class WandbTracker:
    """One W&B run; files go under `dir/wandb/` (default: the current folder); `run_id` continues that run."""

    def __init__(
        self,
        project: str,
        name: str | None = None,
        tags: Sequence[str] = (),
        config: dict | None = None,
        dir: str | Path | None = None,
        *,
        mode: str | None = None,
        run_id: str | None = None,
    ) -> None:
        import wandb

        self._wandb = wandb
        self.dir = Path(dir) if dir is not None else Path.cwd()
        self.dir.mkdir(parents=True, exist_ok=True)
        self._run = wandb.init(
            project=project,
            name=name,
            tags=list(tags) or None,
            config=config,
            dir=str(self.dir),
            mode=mode or default_mode(),
            # Several runs per process (tests, sweeps): a new run never finishes or reuses another one.
            reinit="create_new",
            # A resumed training run continues its W&B run (offline: a new folder with the same id, which
            # `wandb sync` appends to the same run). Steps replayed after a crash, at or below the last
            # step W&B has, are dropped by W&B; exact resume logs the same values there anyway.
            id=run_id,
            resume="allow" if run_id else None,
        )
        self.run_id: str = self._run.id

    @property
    def run_dir(self) -> Path:
        """This run's folder (`.../wandb/offline-run-<time>-<id>/` or `run-...`), holding the .wandb log."""
        return Path(self._run.dir).parent  # run.dir is the run's files/ sub-folder

    def log_params(self, params: dict) -> None:
        self._run.config.update(params, allow_val_change=True)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self._run.log(dict(metrics), step=int(step))

    def log_artifact(self, path: str | Path, name: str | None = None) -> None:
        path = Path(path)
        artifact = self._wandb.Artifact(_INVALID_ARTIFACT_CHARS.sub("-", name or path.name), type="file")
        if path.is_dir():
            artifact.add_dir(str(path))
        else:
            artifact.add_file(str(path))
        self._run.log_artifact(artifact)

    def close(self) -> None:
        """Finish the run; offline, also wait until its folder is complete (what `wandb sync` uploads)."""
        if self._run is not None:
            offline = self._run.settings._offline
            run_dir = self.run_dir
            self._run.finish()
            self._run = None
            if offline and not wait_until_complete(run_dir):
                _log.warning(
                    "W&B offline run %s is not complete yet; `wandb sync` may see it as crashed", run_dir
                )
