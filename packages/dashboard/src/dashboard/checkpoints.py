"""A run's checkpoints in step order, with the role the manifest gives each file and the metrics at its step.

Every Trainyard checkpoint carries a JSON skeleton of its state tree: the `__trainyard__.npy` member of the npz
flavour, or the `__trainyard__` string inside a torch zip's `data.pkl`. Its top level holds the counters
(`epoch`, `global_step`), so the table is built from that skeleton alone: no array is read, no torch is
imported, and nothing is unpickled (the torch pickle is only walked opcode by opcode with `pickletools`).
`checkpoints/manifest.json` (common's CheckpointManager) names the best file, its score and the last file.
"""

from __future__ import annotations

import io
import json
import pickletools
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from common.checkpoint import META_MEMBER
from common.runs import is_temp_file

CHECKPOINT_SUFFIXES = (".npz", ".ckpt", ".pth", ".pt", ".safetensors")
MANIFEST = "manifest.json"
# The torch flavour keeps the skeleton as a JSON string under this key of the saved dict.
TORCH_META_KEY = "__trainyard__"


def checkpoint_table(folder: Path, history: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per checkpoint file in `folder`, ordered by global step (then epoch, then name): file, role,
    epoch (shown from 1), step, size, the manifest's score for kept files, and the `val/*` metrics the
    history holds at the file's step, in the order they were logged."""
    manifest = _manifest(folder / MANIFEST)
    rows = []
    for path in _checkpoint_files(folder):
        counters = checkpoint_counters(path)
        rows.append(
            {
                "file": path.name,
                "role": _role(path.name, manifest),
                "epoch": _shown_epoch(counters),
                "step": counters.get("global_step"),
                "size (MB)": round(path.stat().st_size / 2**20, 2),
                "score": _kept_score(path.name, manifest),
            }
        )
    columns = ["file", "role", "epoch", "step", "size (MB)", "score"]
    table = pd.DataFrame(rows, columns=columns)
    if table.empty:
        return table
    if manifest.get("monitor"):
        table = table.rename(columns={"score": f"score ({manifest['monitor']})"})
    table = table.sort_values(["step", "epoch", "file"], na_position="last", kind="stable")
    if history is not None and not history.empty:
        table = _with_metrics_at_step(table, history)
    return table.reset_index(drop=True)


def checkpoint_counters(path: Path) -> dict[str, int]:
    """{"epoch", "batch_in_epoch", "global_step"} from the checkpoint's skeleton ({} for a file without one)."""
    skeleton = _skeleton(path)
    if not isinstance(skeleton, dict):
        return {}
    keys = ("epoch", "batch_in_epoch", "global_step")
    return {k: int(skeleton[k]) for k in keys if isinstance(skeleton.get(k), int | float)}


def _shown_epoch(counters: dict[str, int]) -> int | None:
    """The epoch the checkpoint was taken in, counted from 1 as people count. The saved `epoch` counts from 0:
    at the end of an epoch it is already the next one's index (= epochs done), mid-epoch it is the current's."""
    if "epoch" not in counters:
        return None
    mid_epoch = counters.get("batch_in_epoch", 0) > 0
    return counters["epoch"] + 1 if mid_epoch else counters["epoch"]


def _checkpoint_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return [
        p for p in folder.iterdir() if p.suffix in CHECKPOINT_SUFFIXES and p.is_file() and not is_temp_file(p)
    ]


def _skeleton(path: Path) -> object:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            if META_MEMBER in names:
                raw = np.load(io.BytesIO(archive.read(META_MEMBER)), allow_pickle=False)
                return json.loads(raw.tobytes().decode("utf-8")).get("skeleton")
            pickle_member = next((n for n in names if n.endswith("/data.pkl")), None)
            if pickle_member is not None:
                return _torch_skeleton(archive.read(pickle_member))
    except (zipfile.BadZipFile, OSError, KeyError, ValueError, UnicodeDecodeError, AttributeError):
        return None
    return None


def _torch_skeleton(pickled: bytes) -> object:
    """The skeleton JSON string that follows the `__trainyard__` key in a torch pickle, read from the
    opcodes' arguments (pickletools never builds an object, so nothing in the file runs)."""
    after_key = False
    for opcode, arg, _ in pickletools.genops(pickled):
        if not isinstance(arg, str):
            continue
        if after_key and opcode.name.endswith("UNICODE"):
            return json.loads(arg).get("skeleton")
        after_key = arg == TORCH_META_KEY
    return None


def _manifest(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _role(name: str, manifest: dict) -> str:
    roles = []
    if name == manifest.get("best"):
        roles.append("best")
    elif any(isinstance(k, dict) and k.get("file") == name for k in manifest.get("kept") or []):
        roles.append("top-k")
    if name == manifest.get("last"):
        roles.append("last")
    if name == manifest.get("step"):
        roles.append("mid-epoch")
    return ", ".join(roles) or "periodic"


def _kept_score(name: str, manifest: dict) -> float | None:
    for kept in manifest.get("kept") or []:
        if isinstance(kept, dict) and kept.get("file") == name:
            return kept.get("score")
    return None


def _with_metrics_at_step(table: pd.DataFrame, history: pd.DataFrame) -> pd.DataFrame:
    validation = history[history["metric"].str.startswith("val/")]
    names = list(dict.fromkeys(validation["metric"]))  # first-logged first: the package's own order
    at_step = validation.groupby(["metric", "step"])["value"].last()
    for name in names:
        table[name] = [at_step.get((name, step)) if pd.notna(step) else None for step in table["step"]]
    return table
