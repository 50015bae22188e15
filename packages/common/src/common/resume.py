"""`--resume last | <run folder> | <checkpoint file>`: finding the checkpoint a run continues from.

Every package's `--resume` takes the same three spellings. A resumed run rebuilds itself from the config
stored in the checkpoint (`saved_config`), so the resume command a run prints works exactly as printed;
options typed beside it still override that config.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from common.checkpoint import load_checkpoint
from common.checkpoint.manager import MANIFEST
from common.errors import CheckpointError, ConfigError
from common.runs import CHECKPOINT_SUFFIXES, is_temp_file

__all__ = [
    "newest_run",
    "run_folder_of",
    "CHECKPOINT_SUFFIXES",
    "best_checkpoint",
    "evaluation_output",
    "find_checkpoint",
    "latest_checkpoint",
    "read_training_checkpoint",
    "saved_config",
]


def latest_checkpoint(folder: str | Path) -> Path | None:
    """The newest checkpoint file in `folder` (the state a crash or a signal left last), or None."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    weights_only = _weights_only_files(folder)
    files = [
        p
        for p in folder.iterdir()
        if p.is_file()
        and p.suffix in CHECKPOINT_SUFFIXES
        and not is_temp_file(p)
        and p.name not in weights_only
    ]
    # Files written by one save share their state; among equal times the name decides, for a stable answer.
    return max(files, key=lambda p: (p.stat().st_mtime_ns, p.name)) if files else None


def _weights_only_files(folder: Path) -> set[str]:
    """The best files the manifest marks as weights-only: written last in a save, but unable to resume."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return set()
    if not manifest.get("best_weights_only"):
        return set()
    return {
        entry["file"] for entry in manifest.get("kept", []) if isinstance(entry, dict) and "file" in entry
    }


def newest_run(folder: str | Path, *, checkpoints: str = "checkpoints") -> Path | None:
    """The run folder `--resume last` continues in `folder`: `folder` itself when it is a run folder (it has
    checkpoints), else the run folder directly under it (timestamped runs of one output folder) whose newest
    checkpoint is the newest; None when there is none."""
    folder = Path(folder)
    if latest_checkpoint(folder / checkpoints) or latest_checkpoint(folder):
        return folder
    runs = [
        (found, child) for child in _subfolders(folder) if (found := latest_checkpoint(child / checkpoints))
    ]
    return max(runs, key=lambda fc: (fc[0].stat().st_mtime_ns, fc[1].name))[1] if runs else None


def _subfolders(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.is_dir()] if folder.is_dir() else []


def find_checkpoint(
    spec: str | Path, run_dir: str | Path | None = None, *, checkpoints: str = "checkpoints"
) -> Path:
    """The checkpoint file meant by a `--resume` value.

    "last" (or "auto"): the newest checkpoint of the run in `run_dir` (the --output-dir; a folder of
    timestamped run folders works too, see `newest_run`); a folder: the newest checkpoint in it or in its
    `checkpoints/`; a file: that file."""
    spec_text = str(spec)
    if spec_text in ("last", "auto"):
        if run_dir is None:
            raise CheckpointError(
                f"--resume {spec_text} needs the run folder: add --output-dir pointing at the run to continue, "
                "or pass the checkpoint file or run folder to --resume."
            )
        folder = newest_run(run_dir, checkpoints=checkpoints) or Path(run_dir)
    else:
        folder = Path(spec_text)
        if folder.is_file():
            return folder
        if not folder.exists():
            raise CheckpointError(f"--resume {spec_text}: no such checkpoint file or run folder.")
    for candidate in (folder / checkpoints, folder):
        found = latest_checkpoint(candidate)
        if found is not None:
            return found
    raise CheckpointError(
        f"--resume {spec_text}: {folder} holds no checkpoint ({', '.join(CHECKPOINT_SUFFIXES)}) to resume from."
    )


def run_folder_of(checkpoint: str | Path, *, checkpoints: str = "checkpoints") -> Path:
    """The run folder a checkpoint file belongs to: `<run>` for `<run>/checkpoints/<file>`, else its folder."""
    folder = Path(checkpoint).parent
    return folder.parent if folder.name == checkpoints else folder


EVALUATION_FOLDER = "evaluation"


def evaluation_output(checkpoint: str | Path, name: str, output: str | Path | None = None) -> Path:
    """Where an evaluation of `checkpoint` writes `name`: `<run>/evaluation/<name>` unless `output` is given.

    Evaluation writes its own files and never replaces a training result: an existing `output` outside an
    `evaluation/` folder (test_metrics.json, the history, a config) is refused."""
    if output is None:
        return run_folder_of(Path(checkpoint).resolve()) / EVALUATION_FOLDER / name
    output = Path(output)
    if output.exists() and output.resolve().parent.name != EVALUATION_FOLDER:
        raise ConfigError(
            f"{output} already exists; an evaluation never replaces an existing file (it may be a training "
            f"result). Choose a new --output, or leave it out to write under the run's {EVALUATION_FOLDER}/."
        )
    return output


def best_checkpoint(location: str | Path, *, checkpoints: str = "checkpoints") -> Path:
    """The best checkpoint of a run, from the manifest its ModelCheckpoint keeps (no file-name parsing).

    `location` is a run folder, its checkpoint folder, or the manifest itself. Without a monitored best (no
    validation yet, or no monitor), the `last` file is returned."""
    location = Path(location)
    candidates = (
        [location] if location.name == MANIFEST else [location / MANIFEST, location / checkpoints / MANIFEST]
    )
    manifest_path = next((p for p in candidates if p.is_file()), None)
    if manifest_path is None:
        raise CheckpointError(
            f"No checkpoint manifest in {location} (looked for {', '.join(str(c) for c in candidates)}); "
            "is it a run folder of a completed epoch?"
        )
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"Cannot read the checkpoint manifest {manifest_path}: {exc}") from None
    name = manifest.get("best") or manifest.get("last")
    if not name or not (manifest_path.parent / name).is_file():
        raise CheckpointError(f"{manifest_path} names no existing best or last checkpoint ({name!r}).")
    return manifest_path.parent / name


def read_training_checkpoint(path: str | Path) -> dict:
    """A verified checkpoint that can resume a run (it holds the loop's state and the run's config)."""
    state = load_checkpoint(path)
    missing = [k for k in ("loop", "config", "rng") if k not in state]
    if missing:
        raise CheckpointError(
            f"{path} cannot resume a run: it has no {', '.join(missing)} entry (a weights-only checkpoint or one "
            "written before the shared training loop). Start a new run from its weights instead."
        )
    return state


def saved_config(state: dict, schema: type | None = None) -> dict:
    """The run's config as the checkpoint recorded it (a mapping `common.config.load_config` accepts).

    With `schema` (the package's config dataclass), a config whose top-level keys that schema does not know is
    refused as a checkpoint of another package, rather than reported as unknown config keys."""
    if not isinstance(state.get("config"), dict):
        raise CheckpointError("The checkpoint records no run config to resume with.")
    config = state["config"]
    if schema is not None:
        known = {f.name for f in dataclasses.fields(schema)}
        foreign = sorted(set(config) - known)
        if foreign:
            raise CheckpointError(
                f"The checkpoint was written by another package or model: its config has keys "
                f"({', '.join(foreign[:5])}{' ...' if len(foreign) > 5 else ''}) that {schema.__name__} does "
                "not know. Resume a checkpoint of this package's runs."
            )
    return config
