"""Run folders and crash-safe file writes.

A run folder holds everything one training run writes (config.yaml, checkpoints/, logs/, plots/, the metrics
history). Files other runs or a resume will read are written atomically: a crash at any instant leaves either
the old file or the new one, never a torn mix.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from common.distributed import is_main_process
from common.errors import TrainyardError


def _read_umask() -> int:
    # The only portable way to read the umask is to set it and put it back; done once, at import.
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def timestamp() -> str:
    """Local time as "YYYYMMDD_HHMMSS" (the run-folder and log-file suffix)."""
    return time.strftime("%Y%m%d_%H%M%S")


class RunFolderError(TrainyardError):
    """The output location cannot hold this run: a file, a read-only folder, or another run's folder."""


# Files whose presence makes a folder a run folder (what --overwrite may replace); anything else in a
# non-empty folder means it is not ours to delete.
RUN_MARKERS = ("config.yaml", "checkpoints")

# The file names of every package's checkpoints (what `--resume` looks for, and what shows that a run has
# trained, with a metrics history).
CHECKPOINT_SUFFIXES = (".ckpt", ".pth", ".pt", ".npz")

# Run folders this process created, so a run refused before it trained can leave nothing behind.
_created_here: list[Path] = []
# Run folders this process has claimed for the run in progress: opening one again (a command claims it
# before its logging writes there, the trainer opens it after) is the same run, not a second one. The loop
# releases them when a fit ends, so a second run in the same process (a notebook) is refused like any other.
_claimed: set[Path] = set()


def release_run_folders() -> None:
    """End the current run's claims (called when a fit ends)."""
    _claimed.clear()


class RunFolder:
    """One training run's output folder, with its standard sub-folders created up front.

    A new run never writes into a folder that already holds files: that is another run's history, config and
    checkpoints, which a second writer would truncate or replace. It is refused unless the run resumes that
    folder (`resume=True`) or the user asked to replace it (`overwrite=True`, only for a folder that looks
    like a run). Only rank 0 checks: the other ranks of a multi-process run see rank 0's fresh folder.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        checkpoints: str = "checkpoints",
        logs: str = "logs",
        plots: str = "plots",
        resume: bool = False,
        overwrite: bool = False,
    ) -> None:
        self.root = Path(root)
        self.checkpoints = self.root / checkpoints
        self.logs = self.root / logs
        self.plots = self.root / plots
        if self.root.exists() and not self.root.is_dir():
            raise RunFolderError(f"The output folder {self.root} is an existing file; choose a folder path.")
        if not resume and is_main_process():
            self._claim(overwrite)
        existed = self.root.exists()
        try:
            for folder in (self.root, self.checkpoints, self.logs, self.plots):
                folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunFolderError(
                f"Cannot create the run folder {self.root}: {exc.strerror or exc}. Choose a writable "
                "location with --output-dir."
            ) from None
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise RunFolderError(f"The run folder {self.root} is read-only; choose a writable --output-dir.")
        if not existed:
            _created_here.append(self.root.resolve())
        _claimed.add(self.root.resolve())

    def _claim(self, overwrite: bool) -> None:
        if self.root.resolve() in _claimed:
            return
        files = _files_under(self.root)
        if not files:
            return
        shown = ", ".join(str(f.relative_to(self.root)) for f in files[:3]) + (
            " ..." if len(files) > 3 else ""
        )
        looks_like_run = any((self.root / marker).exists() for marker in RUN_MARKERS)
        if overwrite and looks_like_run:
            shutil.rmtree(self.root)
            return
        if overwrite:
            raise RunFolderError(
                f"{self.root} holds {len(files)} file(s) ({shown}) but no run (no config.yaml or "
                "checkpoints/), so --overwrite will not delete it; choose an empty or new output folder."
            )
        raise RunFolderError(
            f"{self.root} already holds a run ({len(files)} file(s): {shown}); a new run would overwrite its "
            "history and checkpoints. Resume it with --resume, choose another output folder, or pass "
            "--overwrite to replace it."
        )

    @classmethod
    def timestamped(cls, parent: str | os.PathLike, prefix: str, **kw) -> RunFolder:
        """A new run folder `parent/<prefix>_<YYYYMMDD_HHMMSS>`.

        Two runs started within the same second get "_1", "_2", ... appended rather than sharing a folder.
        """
        parent = Path(parent)
        base = f"{prefix}_{timestamp()}" if prefix else timestamp()
        candidate, n = parent / base, 0
        while candidate.exists():
            n += 1
            candidate = parent / f"{base}_{n}"
        return cls(candidate, **kw)

    def path(self, *parts: str | os.PathLike) -> Path:
        """A path inside the run folder: `root.joinpath(*parts)`."""
        return self.root.joinpath(*parts)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.root)!r})"


# In every temp file name, so the leftovers of a writer killed mid-write are recognisable (and removable).
TEMP_MARK = ".trainyard-"


def _files_under(root: Path) -> list[Path]:
    """Every file below `root` except temp files of interrupted writes (empty folders do not count)."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.rglob("*") if not p.is_dir() and not is_temp_file(p))


def discard_unused_run_folders() -> list[Path]:
    """Remove the run folders this process created that hold no checkpoint and no metrics yet.

    Called when a run is refused (bad config, data, device) after its folder was made, so a refusal leaves
    nothing behind; a folder that existed before this process, or one a run has trained into, is kept."""
    removed = []
    for root in reversed(_created_here):
        files = _files_under(root)
        trained = any(f.suffix in CHECKPOINT_SUFFIXES or "history" in f.name for f in files)
        if root.is_dir() and not trained:
            shutil.rmtree(root, ignore_errors=True)
            removed.append(root)
    _created_here.clear()
    return removed


def is_temp_file(path: Path) -> bool:
    """True for the temporary file of an unfinished atomic write."""
    return path.name.startswith(".") and TEMP_MARK in path.name and path.name.endswith(".tmp")


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike) -> Iterator[IO[bytes]]:
    """A binary file that replaces `path` only when the `with` block ends cleanly: readers see the old or the
    complete new content, never a torn mix.

    The temporary file lives in the destination folder because os.replace is only atomic within one
    filesystem; it is fsynced before the rename, and the folder after it, so a power loss cannot leave a
    renamed-but-empty file. On any error (also KeyboardInterrupt) the temp file is removed and `path` is
    untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}{TEMP_MARK}", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp makes the file 0600; give it the mode a plain open() would have (0666 minus the umask).
        os.chmod(tmp_name, 0o666 & ~_UMASK)
        with os.fdopen(fd, "w+b") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically (see `atomic_writer`)."""
    with atomic_writer(path) as fh:
        fh.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Atomic UTF-8 text write; see `atomic_write_bytes`."""
    atomic_write_bytes(path, text.encode("utf-8"))


def fsync_dir(folder: Path) -> None:
    """fsync a folder so a rename inside it survives a power cut."""
    # Persist the rename itself (the directory entry). Not possible on every OS (Windows): best effort.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
