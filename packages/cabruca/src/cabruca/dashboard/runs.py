"""Read Trainyard run folders (any package) for the dashboard, without importing torch or any package.

A run folder is a directory holding at least one of: a JsonHistory file (`metrics_history.json`,
`training_history.json`), `config.yaml`, `checkpoints/`. JsonHistory format:
{"params": {...}, "metrics": {name: [{"step": s, "value": v, "time": t}, ...]}}.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

HISTORY_FILES = ("metrics_history.json", "training_history.json")
MARKERS = (*HISTORY_FILES, "config.yaml", "checkpoints")
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt", ".npz", ".safetensors")


@dataclass(frozen=True)
class Run:
    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def history_path(self) -> Path | None:
        return next((self.path / f for f in HISTORY_FILES if (self.path / f).is_file()), None)

    @property
    def config_path(self) -> Path | None:
        p = self.path / "config.yaml"
        return p if p.is_file() else None

    def modified(self) -> float:
        """Newest modification time among the files that change while training."""
        times = [self.path.stat().st_mtime]
        times += [p.stat().st_mtime for p in (self.history_path, self.config_path) if p is not None]
        return max(times)


def is_run(path: Path) -> bool:
    return path.is_dir() and any((path / m).exists() for m in MARKERS)


def find_runs(root: str | Path, max_depth: int = 3) -> list[Run]:
    """Run folders at or below `root` (newest first). A run's own sub-folders are not searched."""
    root = Path(root).expanduser()
    if not root.is_dir():
        return []
    found, frontier = [], [(root, 0)]
    while frontier:
        folder, depth = frontier.pop()
        if is_run(folder):
            found.append(Run(folder))
            continue
        if depth < max_depth:
            try:
                frontier += [
                    (p, depth + 1) for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")
                ]
            except OSError:
                continue
    return sorted(found, key=lambda r: r.modified(), reverse=True)


def load_history(run: Run) -> pd.DataFrame:
    """Long table: metric, step, value, time. Empty when the run has no (readable) history yet; a file
    being rewritten right now is retried once."""
    path = run.history_path
    columns = ["metric", "step", "value", "time"]
    if path is None:
        return pd.DataFrame(columns=columns)
    for attempt in range(2):
        try:
            data = json.loads(path.read_text())
            break
        except (json.JSONDecodeError, OSError):
            if attempt:
                return pd.DataFrame(columns=columns)
            time.sleep(0.2)
    metrics = data.get("metrics", {}) if isinstance(data, dict) else {}
    rows = []
    for name, entries in metrics.items():
        for e in entries if isinstance(entries, list) else []:
            if isinstance(e, dict) and "value" in e:
                rows.append((name, e.get("step", len(rows)), e["value"], e.get("time")))
            elif isinstance(e, int | float):
                rows.append((name, len(rows), e, None))
    df = pd.DataFrame(rows, columns=columns)
    df["value"] = pd.to_numeric(df["value"], errors="coerce")
    return df


def params(run: Run) -> dict:
    path = run.history_path
    try:
        return json.loads(path.read_text()).get("params", {}) if path else {}
    except (json.JSONDecodeError, OSError, AttributeError):
        return {}


def wide(history: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """step-indexed table with one column per metric (last value logged at a step wins)."""
    sub = history[history["metric"].isin(metrics)]
    if sub.empty:
        return pd.DataFrame()
    return sub.pivot_table(index="step", columns="metric", values="value", aggfunc="last").sort_index()


def summary(history: pd.DataFrame) -> pd.DataFrame:
    """Per metric: last, min, max, number of points."""
    if history.empty:
        return pd.DataFrame(columns=["metric", "last", "min", "max", "points"])
    g = history.sort_values("step").groupby("metric")["value"]
    return pd.DataFrame({"last": g.last(), "min": g.min(), "max": g.max(), "points": g.size()}).reset_index()


def checkpoints(run: Run, history: pd.DataFrame | None = None) -> pd.DataFrame:
    """Checkpoint files with size and time; epoch/step and the validation metrics logged at that step when
    the checkpoint's JSON skeleton (common.checkpoint's `__trainyard__` member) tells its global step."""
    folder = run.path / "checkpoints"
    rows = []
    if folder.is_dir():
        for p in sorted(folder.iterdir()):
            if p.suffix not in CHECKPOINT_SUFFIXES or not p.is_file() or ".tmp" in p.name:
                continue
            st = p.stat()
            row = {
                "file": p.name,
                "size_mb": round(st.st_size / 2**20, 2),
                "modified": pd.Timestamp(st.st_mtime, unit="s").strftime("%Y-%m-%d %H:%M:%S"),
            }
            row.update(_checkpoint_position(p))
            rows.append(row)
    df = pd.DataFrame(rows)
    if history is not None and not history.empty and "global_step" in df:
        val = history[history["metric"].str.startswith(("val", "eval"))]
        for name in sorted(val["metric"].unique())[:8]:
            series = val[val["metric"] == name].set_index("step")["value"]
            df[name] = [series.get(s) if pd.notna(s) else None for s in df["global_step"]]
    return df


def _checkpoint_position(path: Path) -> dict:
    """epoch and global_step from a common.checkpoint file's JSON skeleton (member `__trainyard__.npy`, a
    uint8 array of JSON text): no arrays loaded, no pickle. Other files give nothing."""
    import io
    import zipfile

    import numpy as np

    try:
        with zipfile.ZipFile(path) as zf:
            raw = zf.read("__trainyard__.npy")
        doc = json.loads(np.load(io.BytesIO(raw), allow_pickle=False).tobytes().decode("utf-8"))
    except (zipfile.BadZipFile, OSError, KeyError, ValueError, UnicodeDecodeError):
        return {}
    tree = doc.get("skeleton") if isinstance(doc, dict) else None
    if not isinstance(tree, dict):
        return {}
    return {k: tree[k] for k in ("epoch", "global_step", "step") if isinstance(tree.get(k), int | float)}


def system_snapshot() -> dict[str, float]:
    """This machine right now: CPU %, memory, and CUDA memory when torch is already imported with a GPU."""
    import sys

    import psutil

    vm = psutil.virtual_memory()
    snap = {
        "cpu_percent": psutil.cpu_percent(interval=0.1),
        "cpu_count": psutil.cpu_count(),
        "memory_used_gb": round((vm.total - vm.available) / 2**30, 2),
        "memory_total_gb": round(vm.total / 2**30, 2),
        "memory_percent": vm.percent,
    }
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        snap["cuda_memory_allocated_gb"] = round(torch.cuda.memory_allocated() / 2**30, 2)
    return snap
