"""Run folders and crash-safe file writes.

A run folder holds everything one training run writes (config.yaml, checkpoints/, logs/, plots/, the metrics
history). Files other runs or a resume will read are written atomically: a crash at any instant leaves either
the old file or the new one, never a torn mix.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO


def _read_umask() -> int:
    # The only portable way to read the umask is to set it and put it back; done once, at import.
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def timestamp() -> str:
    """Local time as "YYYYMMDD_HHMMSS" (the run-folder and log-file suffix)."""
    return time.strftime("%Y%m%d_%H%M%S")


class RunFolder:
    """One training run's output folder, with its standard sub-folders created up front."""

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        checkpoints: str = "checkpoints",
        logs: str = "logs",
        plots: str = "plots",
    ) -> None:
        self.root = Path(root)
        self.checkpoints = self.root / checkpoints
        self.logs = self.root / logs
        self.plots = self.root / plots
        for folder in (self.root, self.checkpoints, self.logs, self.plots):
            folder.mkdir(parents=True, exist_ok=True)

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
