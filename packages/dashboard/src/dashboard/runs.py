"""Find the runs of every Trainyard package under one runs root and tell which package wrote each.

A run folder is a folder holding a `config.yaml`, a JSON history (`metrics_history.json`, or cabruca's
`training_history.json`) or a `checkpoints/` folder: what `common.runs.RunFolder` gives every package. The
search is recursive (runs may sit in `outputs/<package>/<run>`, or a sweep's folder), but never inside a run,
whose own sub-folders (`checkpoints/`, `plots/`, `evaluation/`) are not runs.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import yaml

from common.errors import TrainyardError

HISTORY_FILES = ("metrics_history.json", "training_history.json")
MARKERS = (*HISTORY_FILES, "config.yaml", "checkpoints")

# Top-level keys of each package's resolved config.yaml that no other package's schema has: how a run is
# recognised when its provenance does not name its package (runs started from Python, or older runs).
CONFIG_SIGNATURES = {
    "dtgcnn": {"edge_conv_dims", "num_vertices"},
    "egnn_com": {"optim", "train", "logging"},
    "spectral_mae": {"hparams", "general"},
    "cabruca": {"postprocess", "tracking"},
}
UNKNOWN_PACKAGE = "unknown"

# A run whose journal was appended to this recently is shown as live.
LIVE_WITHIN_S = 60.0
# Folders that hold tracker stores or environments, never runs worth listing.
SKIPPED_FOLDERS = {"mlruns", "mlartifacts", "wandb", "tensorboard", "__pycache__", "node_modules"}


class RunsRootError(TrainyardError):
    """The runs root given to the dashboard is not a readable folder."""


@dataclass(frozen=True)
class Run:
    """One run folder; `root` is the runs root it was found under (names are shown relative to it)."""

    path: Path
    root: Path = field(compare=False)

    @property
    def name(self) -> str:
        """The folder's path below the runs root (`egnn/run_1`), unique among the runs found there."""
        return self.path.relative_to(self.root).as_posix() if self.path != self.root else self.path.name

    @property
    def history_file(self) -> Path | None:
        return next((self.path / f for f in HISTORY_FILES if (self.path / f).is_file()), None)

    @cached_property
    def package(self) -> str:
        return detect_package(self.path)

    def modified(self) -> float:
        """Newest modification time among the files a training run keeps changing."""
        candidates = [self.path, *(self.path / f for f in (*HISTORY_FILES, "config.yaml"))]
        candidates += [journal_path(self.path / f) for f in HISTORY_FILES]
        return max(_mtime(p) for p in candidates)

    def is_live(self, now: float | None = None) -> bool:
        """The history journal exists (the run has not closed its history) and was written just now."""
        if self.history_file is None:
            return False
        now = time.time() if now is None else now
        return now - _mtime(journal_path(self.history_file)) < LIVE_WITHIN_S


def journal_path(history_file: Path) -> Path:
    """Where JsonHistory appends every log call between two rewrites of `history_file`."""
    return history_file.with_name(history_file.name + ".journal")


def is_run(folder: Path) -> bool:
    return any((folder / marker).exists() for marker in MARKERS)


def checked_runs_root(root: str | Path) -> Path:
    """`root` as an absolute folder, or a RunsRootError saying what is wrong with it."""
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        what = "does not exist" if not root.exists() else "is not a folder"
        raise RunsRootError(
            f"The runs root {root} {what}. Give the folder that holds your run folders (the --output-dir of "
            "your trainings, e.g. outputs/ or runs/)."
        )
    return root


def find_runs(root: str | Path) -> list[Run]:
    """Every run folder at or below `root`, newest first."""
    root = checked_runs_root(root)
    found: list[Run] = []
    pending = [root]
    while pending:
        folder = pending.pop()
        if is_run(folder):
            found.append(Run(folder, root))
            continue
        try:
            children = sorted(p for p in folder.iterdir() if p.is_dir())
        except OSError:
            continue  # unreadable folder: skip it, the other runs still show
        pending += [p for p in children if not p.name.startswith(".") and p.name not in SKIPPED_FOLDERS]
    return sorted(found, key=lambda run: run.modified(), reverse=True)


def detect_package(folder: Path) -> str:
    """Which package wrote the run: named in provenance.json when it records it, else known from the
    top-level keys of its config.yaml; `unknown` for a folder no package's config matches."""
    provenance = _read_json(folder / "provenance.json")
    named = provenance.get("package")
    if isinstance(named, str) and named:
        return named
    config = read_config(folder)
    keys = set(config)
    for package, signature in CONFIG_SIGNATURES.items():
        if signature <= keys:
            return package
    return UNKNOWN_PACKAGE


def read_config(folder: Path) -> dict:
    """The run's resolved config.yaml as a dict ({} when missing or unreadable)."""
    try:
        config = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return config if isinstance(config, dict) else {}


def read_provenance(folder: Path) -> dict:
    """provenance.json: git commit, command line, package versions ({} when the run has none)."""
    return _read_json(folder / "provenance.json")


def _mtime(path: Path) -> float:
    """Modification time, 0 for a file that is not there (or was just removed: a run closing its journal)."""
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
