"""Finding and reading the checkpoint a run resumes from (`--ckpt_path PATH` or `--ckpt_path auto`)."""

from __future__ import annotations

from pathlib import Path

from common.checkpoint import CheckpointManager, load_checkpoint
from common.errors import CheckpointError


def find_latest(cfg) -> Path:
    """Newest last.ckpt / last-step.ckpt in the configured checkpoint folder (for 'auto')."""
    from egnn_com.engine import STEP_CHECKPOINT
    from egnn_com.pipeline import LAST_FILE

    folder = cfg.train.checkpoint_dir or (
        Path(cfg.train.output_dir) / "checkpoints" if cfg.train.output_dir else None
    )
    if folder is None or not Path(folder).is_dir():
        raise CheckpointError(
            "--ckpt_path auto needs --output_dir (or --checkpoint_dir) naming an earlier run's "
            f"folder; {folder or 'none was given'} has no checkpoints."
        )
    latest = CheckpointManager(folder, last=LAST_FILE, step_file=STEP_CHECKPOINT).latest()
    if latest is None:
        raise CheckpointError(f"no last.ckpt or {STEP_CHECKPOINT} in {folder} to resume from.")
    return latest


def load_resume_state(ckpt_path: str | Path, cfg=None) -> dict:
    """The checkpoint tree (verified by common.checkpoint); 'auto' looks in cfg's checkpoint folder."""
    path = find_latest(cfg) if str(ckpt_path) == "auto" else Path(ckpt_path)
    state = load_checkpoint(path)
    missing = [k for k in ("model", "optimizer", "config", "global_step", "rng") if k not in state]
    if missing:
        raise CheckpointError(f"{path} is not an egnn_com training checkpoint (missing {missing}).")
    return state
