"""Where a run came from: the code's git commit, the command line, the installed package versions.

Recorded with every run (`build_trackers` logs it as the `run` params of every tracker and MLflow's source
tags), so a result can be traced to the exact code and environment that produced it.
"""

from __future__ import annotations

import platform
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path

# The distributions whose versions decide a run's numbers; the workspace's own packages are found by prefix.
KEY_DISTRIBUTIONS = ("numpy", "torch", "torch-geometric", "timm", "mlx", "scipy", "h5py")
WORKSPACE_PREFIX = "trainyard-"


def git_state(folder: str | Path | None = None) -> dict[str, object]:
    """{"commit", "branch", "dirty"} of the git checkout holding `folder` (the working directory by default);
    {} outside a checkout or without git."""

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", *args], cwd=folder, capture_output=True, text=True, timeout=10, check=True
        )
        return done.stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        branch = git("rev-parse", "--abbrev-ref", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"commit": commit, "branch": branch, "dirty": dirty}


def package_versions() -> dict[str, str]:
    """Versions of the workspace's packages and of the libraries that decide the numbers, as installed."""
    versions = {}
    for dist in metadata.distributions():
        name = (dist.metadata["Name"] or "").lower()
        if name.startswith(WORKSPACE_PREFIX) or name in KEY_DISTRIBUTIONS:
            versions[name] = dist.version
    return dict(sorted(versions.items()))


def run_provenance() -> dict[str, object]:
    """Everything `build_trackers` records about where a run came from."""
    return {
        "command": shlex.join([Path(sys.argv[0]).name if sys.argv else "python", *sys.argv[1:]]),
        "git": git_state(),
        "python": platform.python_version(),
        "host": platform.node(),
        "packages": package_versions(),
    }
