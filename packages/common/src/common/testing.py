"""Helpers for testing training runs: callbacks that interrupt a run at a chosen step, and exact comparisons.

    callbacks: [{class_path: common.testing.KillAt, init_args: {step: 7}}]     # SIGKILL after step 7
    callbacks: [{class_path: common.testing.SignalAt, init_args: {step: 3, signal: SIGTERM}}]

They act in `on_train_batch_end`, before `ModelCheckpoint` (which always runs last), so a kill at step N
leaves the checkpoint of an earlier step, as a real crash would.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal as signal_module
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from common.callbacks import Callback
from common.distributed import get_rank

__all__ = [
    "CrashAt",
    "KillAt",
    "SignalAt",
    "SimulatedCrash",
    "assert_trees_equal",
    "assert_user_error",
    "file_digests",
    "history_series",
    "make_finished_run",
    "run_command",
    "torchrun",
]


class SimulatedCrash(RuntimeError):
    """Raised by `CrashAt`: the run dies without saving anything, like a crash."""


class KillAt(Callback):
    """SIGKILL this process after optimizer step `step` (nothing can clean up). `rank`: only that process of
    a multi-process run dies (the others must notice); `stamp`: a file that gets the time of the kill."""

    def __init__(self, step: int, rank: int | None = None, stamp: str | None = None) -> None:
        self.step, self.rank, self.stamp = step, rank, stamp

    def on_train_batch_end(self, loop, outputs) -> None:
        if loop.pos.step == self.step and (self.rank is None or get_rank() == self.rank):
            if self.stamp:
                Path(self.stamp).write_text(repr(time.time()))
            os.kill(os.getpid(), signal_module.SIGKILL)


class SignalAt(Callback):
    """Send `signal` ("SIGINT" / "SIGTERM") to this process after optimizer step `step`."""

    def __init__(self, step: int, signal: str = "SIGTERM") -> None:
        self.step, self.signum = step, getattr(signal_module, signal)

    def on_train_batch_end(self, loop, outputs) -> None:
        if loop.pos.step == self.step:
            os.kill(os.getpid(), self.signum)


class CrashAt(Callback):
    """Raise `SimulatedCrash` after optimizer step `step`: an in-process stand-in for SIGKILL."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, loop, outputs) -> None:
        if loop.pos.step == self.step:
            raise SimulatedCrash(f"simulated crash after step {self.step}")


def torchrun(
    module: str, *args: str, nproc: int = 2, env: dict | None = None, timeout: float = 600
) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node N -m module args...` (the real launcher, a free rendezvous
    port), output captured. One OpenMP thread per process unless `env` says otherwise."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    env = {"OMP_NUM_THREADS": "1", **(env if env is not None else os.environ)}
    return subprocess.run(
        [*command, "-m", module, *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def run_process_group(script: str, *args: str, world: int = 2, timeout: float = 180) -> list[list[str]]:
    """Run `python -c script args...` as ranks 0..world-1 of one torch.distributed group (the environment
    torchrun would set, a free rendezvous port, one OpenMP thread each) without a launcher in between, so
    each rank's stdout comes back apart. Asserts every rank exited 0; returns each rank's stdout lines."""
    port = _free_port()
    procs = []
    for rank in range(world):
        env = {
            **os.environ,
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(world),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "OMP_NUM_THREADS": "1",
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", script, *args],
                env=env,
                text=True,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        )
    outputs = []
    for rank, p in enumerate(procs):
        out, err = p.communicate(timeout=timeout)
        assert p.returncode == 0, f"rank {rank} exited {p.returncode}:\n{err[-4000:]}"
        outputs.append(out.strip().splitlines())
    return outputs


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_trees_equal(a: Any, b: Any, path: str = "state", *, skip: tuple[str, ...] = ()) -> None:
    """Bit-exact equality of two state trees (dicts, lists, arrays, numbers; NaN equals NaN)."""
    if isinstance(a, dict) and isinstance(b, dict):
        keys_a, keys_b = set(a) - set(skip), set(b) - set(skip)
        assert keys_a == keys_b, f"{path}: keys differ: {sorted(map(str, keys_a ^ keys_b))}"
        for k in keys_a:
            assert_trees_equal(a[k], b[k], f"{path}.{k}", skip=skip)
    elif isinstance(a, list | tuple) and isinstance(b, list | tuple):
        assert len(a) == len(b), f"{path}: lengths {len(a)} != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_trees_equal(x, y, f"{path}[{i}]", skip=skip)
    elif isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        x, y = np.asarray(a), np.asarray(b)
        assert x.shape == y.shape and x.dtype == y.dtype, f"{path}: {x.dtype}{x.shape} != {y.dtype}{y.shape}"
        assert x.tobytes() == y.tobytes(), f"{path}: values differ (max |diff| {_max_diff(x, y)})"
    elif isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def _max_diff(x: np.ndarray, y: np.ndarray) -> float:
    try:
        return float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64))))
    except (TypeError, ValueError):
        return math.nan


def history_series(
    path: str | Path, *, exclude: tuple[str, ...] = ("system/",)
) -> dict[str, list[tuple[int, float]]]:
    """{metric: [(step, value), ...]} of a metrics_history.json, without wall-clock metrics and times."""
    metrics = json.loads(Path(path).read_text(encoding="utf-8"))["metrics"]
    return {
        name: [(e["step"], e["value"]) for e in entries]
        for name, entries in metrics.items()
        if not name.startswith(exclude)
    }


# -- the command-line contract: exit codes, one-paragraph errors, earlier outputs untouched -----------------


def run_command(
    module: str, *args: str, cwd: str | Path | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """`python -m <module> args...` in a fresh interpreter, as a user types it (text output captured)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("TRAINYARD_TRACEBACK", None)
    return subprocess.run(
        [sys.executable, "-m", module, *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_user_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """A refused command: exit status 2, one paragraph `error: ...` on stderr naming `fragments`, no traceback.

    Returns the error paragraph. Log lines before it (a run that got as far as logging) are allowed."""
    stderr = result.stderr
    assert result.returncode == 2, f"exit {result.returncode}, expected 2\nstderr:\n{stderr[-3000:]}"
    assert "Traceback" not in stderr, stderr[-3000:]
    start = stderr.rfind("error: ")
    assert start >= 0, f"no 'error: ' paragraph on stderr:\n{stderr[-3000:]}"
    paragraph = stderr[start:].strip()
    assert "\n\n" not in paragraph, f"the error is not one paragraph:\n{paragraph}"
    for fragment in fragments:
        assert fragment.lower() in paragraph.lower(), f"{fragment!r} not in the error:\n{paragraph}"
    return paragraph


def make_finished_run(folder: str | Path, checkpoint: str = "last.ckpt") -> Path:
    """A folder that looks like another run's (config, history, a checkpoint), for refusal tests."""
    folder = Path(folder)
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "config.yaml").write_text("seed: 1\n")
    (folder / "metrics_history.json").write_text('{"metrics": {}}')
    (folder / "checkpoints" / checkpoint).write_bytes(b"weights")
    return folder


def file_digests(folder: str | Path) -> dict[str, str]:
    """{relative path: sha256} of every file under `folder`, to show that a command left them byte-identical."""
    folder = Path(folder)
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def assert_torch_loadable(path: str | Path, loader, tmp_dir: str | Path) -> None:
    """A torch package's checkpoint opens with `torch.load(path, weights_only=True)`, its "model" entry is
    the state dict the package's own `loader(path) -> (model, config)` restores, and a copy with one byte
    flipped is refused by that loader (CheckpointError), so the standard loader costs no integrity."""
    import torch

    from common.errors import CheckpointError

    payload = torch.load(path, map_location="cpu", weights_only=True)
    model, _ = loader(path)
    expected = model.state_dict()
    assert set(payload["model"]) == set(expected), f"{path}: model keys differ from the restored model's"
    for key, tensor in expected.items():
        assert torch.equal(payload["model"][key].to(tensor.dtype), tensor.cpu()), f"{path}: {key} differs"
    data = bytearray(Path(path).read_bytes())
    data[len(data) // 2] ^= 0x01
    flipped = Path(tmp_dir) / "flipped" / Path(path).name
    flipped.parent.mkdir(parents=True, exist_ok=True)
    flipped.write_bytes(bytes(data))
    try:
        loader(flipped)
    except CheckpointError:
        return
    raise AssertionError(
        f"{flipped}: a flipped byte was not refused by {loader.__module__}.{loader.__name__}"
    )
