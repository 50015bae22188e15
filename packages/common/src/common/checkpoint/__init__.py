"""Atomic, verified checkpoints (`format`) and the retention policies that name and keep them (`manager`)."""

from common.checkpoint.format import META_MEMBER, load_checkpoint, save_checkpoint
from common.checkpoint.manager import CheckpointManager

__all__ = ["META_MEMBER", "CheckpointManager", "load_checkpoint", "save_checkpoint"]
