"""The images a run wrote: curves under `plots/`, predictions, evaluation overlays, newest first."""

from __future__ import annotations

from pathlib import Path

from common.runs import is_temp_file

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".svg")
# Tracker stores keep copies of the same figures (MLflow artifacts) or none worth showing.
SKIPPED_FOLDERS = {"mlruns", "mlartifacts", "wandb", "tensorboard", "checkpoints"}


def run_images(run_folder: Path, limit: int = 200) -> list[Path]:
    """Image files anywhere in the run folder except tracker stores, newest first, at most `limit`."""
    found = []
    for path in run_folder.rglob("*"):
        relative = path.relative_to(run_folder).parts
        if any(part in SKIPPED_FOLDERS or part.startswith(".") for part in relative[:-1]):
            continue
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file() and not is_temp_file(path):
            found.append(path)
    found.sort(key=_mtime_then_name, reverse=True)
    return found[:limit]


def _mtime_then_name(path: Path) -> tuple[float, str]:
    try:
        return path.stat().st_mtime, path.name
    except OSError:
        return 0.0, path.name
