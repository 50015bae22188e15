"""Crash-safe, pickle-free checkpoints of nested state trees (the retention policies are in `manager`).

File format (format 1). A checkpoint is a real uncompressed `.npz` archive, so
`np.load(path, allow_pickle=False)` opens it:
- one `<name>.npy` member per array (written with `np.lib.format.write_array(allow_pickle=False)`);
- `__trainyard__.npy`: a uint8 array holding UTF-8 JSON
  `{"format": 1, "skeleton": <tree, arrays replaced by {"__array__": member}>, "sha256": <hex over every
  other member's name and bytes, in name order>, "created": <ISO time>}`;
- the zip archive comment `trainyard-sha256:<hex>`: the SHA-256 of every byte of the file before that hex.
  The member hash alone would miss a flipped byte in zip headers that zipfile does not check (timestamps,
  local-header sizes); the trailer makes any flipped byte anywhere, and any truncation, a refused load.

Skeleton encoding (JSON cannot say "tuple", "int key" or "NaN"): lists are JSON arrays; dicts whose keys are
all plain strings are JSON objects; other dicts are {"__dict__": [[key, value], ...]} (int and str keys
round-trip exactly); tuples are {"__tuple__": [...]}; NaN/inf are {"__float__": "nan"}; numpy scalars are
0-d members with {"__array__": m, "scalar": true}. Python ints of any size are JSON ints (numpy PCG64 state
holds 128-bit ints).

Loading never unpickles: arrays are read with allow_pickle=False and the skeleton is JSON.

`.pth`, `.pt` and `.ckpt` files are the torch flavour of the same format (`torch_zip`): torch's own zip, which
`torch.load(path, weights_only=True)` opens, with the same skeleton inside and the same trailer. The suffix
picks the flavour when saving (torch files only where torch is installed; without it they are npz); loading
tells them apart by content.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import math
import os
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from common.checkpoint import torch_zip
from common.errors import CheckpointError
from common.runs import atomic_writer, is_temp_file

FORMAT = 1
META_MEMBER = "__trainyard__.npy"
TRAILER_PREFIX = b"trainyard-sha256:"
_DIGEST_HEX_LEN = 64
_CHUNK = 1 << 20
TORCH_SUFFIXES = (".pth", ".pt", ".ckpt")


# ----------------------------------------------------------------------------------------------- encoding


class _Encoder:
    """Turns a state tree into a JSON skeleton plus {member name: array}."""

    def __init__(self) -> None:
        self.arrays: dict[str, np.ndarray] = {}

    def encode(self, node: Any, path: str) -> Any:
        # bool before int (bool is an int); np.generic before float (np.float64 is a float).
        if node is None or isinstance(node, (bool, str)):
            return node
        if isinstance(node, np.generic):
            return {"__array__": self._add(np.asarray(node), path), "scalar": True}
        if isinstance(node, int):
            return int(node)
        if isinstance(node, float):
            return node if math.isfinite(node) else {"__float__": repr(node)}
        if isinstance(node, np.ndarray):
            return {"__array__": self._add(node, path)}
        if isinstance(node, tuple):
            return {"__tuple__": [self.encode(v, f"{path}.{i}") for i, v in enumerate(node)]}
        if isinstance(node, list):
            return [self.encode(v, f"{path}.{i}") for i, v in enumerate(node)]
        if isinstance(node, dict):
            return self._encode_dict(node, path)
        hint = ""
        if type(node).__module__.split(".")[0] in ("torch", "mlx"):
            hint = " Convert framework tensors first (common.torch_support / common.mlx_support)."
        raise CheckpointError(
            f"Cannot save the value at '{path or '<root>'}' in a checkpoint: {type(node).__name__} is not one "
            f"of dict, list, tuple, None, bool, int, float, str or numpy array.{hint}"
        )

    def _encode_dict(self, node: dict, path: str) -> Any:
        for key in node:
            if not isinstance(key, (str, int, np.integer)):
                raise CheckpointError(
                    f"Cannot save the dict at '{path or '<root>'}' in a checkpoint: key {key!r} is a "
                    f"{type(key).__name__}; only str and int keys are supported."
                )
        plain = all(isinstance(k, str) and not k.startswith("__") for k in node)
        if plain:
            return {k: self.encode(v, _join(path, k)) for k, v in node.items()}
        return {"__dict__": [[_plain_key(k), self.encode(v, _join(path, k))] for k, v in node.items()]}

    def _add(self, array: np.ndarray, path: str) -> str:
        if array.dtype.hasobject:
            raise CheckpointError(
                f"Cannot save the array at '{path or '<root>'}': dtype {array.dtype} holds Python objects, "
                "which would need pickle to store."
            )
        stem = re.sub(r"[^A-Za-z0-9_.-]", "_", path.strip(".")) or "array"
        stem = stem[:120]
        name, n = f"{stem}.npy", 1
        while name in self.arrays or name == META_MEMBER:
            n += 1
            name = f"{stem}~{n}.npy"
        self.arrays[name] = array
        return name


def _plain_key(key: str | int) -> str | int:
    # bool and numpy integer keys become plain ints (JSON would write a bool key as true).
    return key if isinstance(key, str) else int(key)


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _decode(node: Any, arrays: dict[str, np.ndarray]) -> Any:
    if isinstance(node, list):
        return [_decode(v, arrays) for v in node]
    if not isinstance(node, dict):
        return node
    if "__array__" in node:
        array = arrays[node["__array__"]]
        return array[()] if node.get("scalar") else array
    if "__tuple__" in node:
        return tuple(_decode(v, arrays) for v in node["__tuple__"])
    if "__dict__" in node:
        return {key: _decode(v, arrays) for key, v in node["__dict__"]}
    if "__float__" in node:
        return float(node["__float__"])
    return {k: _decode(v, arrays) for k, v in node.items()}


def _array_refs(node: Any) -> Iterator[str]:
    if isinstance(node, list):
        for v in node:
            yield from _array_refs(v)
    elif isinstance(node, dict):
        if "__array__" in node:
            yield node["__array__"]
        else:
            for v in node.values():
                yield from _array_refs(v)


class _HashingWriter(io.RawIOBase):
    """File-like sink that feeds a hash while forwarding writes (write_array streams large arrays)."""

    def __init__(self, sink, digest) -> None:
        self._sink, self._digest = sink, digest

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self._digest.update(data)
        return self._sink.write(data)


class _HashingReader(io.RawIOBase):
    def __init__(self, source, digest) -> None:
        self._source, self._digest = source, digest

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self._source.read(size)
        self._digest.update(data)
        return data


# --------------------------------------------------------------------------------------------- save / load


def save_checkpoint(path: str | os.PathLike, state: dict) -> Path:
    """Write `state` to `path` atomically; return the path.

    The archive is written to a temporary file in the same folder (os.replace is atomic only within one
    filesystem), flushed and fsynced, renamed over `path`, and the folder is fsynced so the rename itself
    survives a power cut. A crash at any instant leaves the previous file intact.
    """
    path = Path(path)
    if not isinstance(state, dict):
        raise CheckpointError(f"A checkpoint state must be a dict, got {type(state).__name__} for {path}.")
    encoder = _Encoder()
    skeleton = encoder.encode(state, "")
    with atomic_writer(path) as fh:
        if _torch_flavour(path):
            meta = {"format": FORMAT, "created": _now()}
            torch_zip.write_torch_archive(fh, encoder.arrays, skeleton, meta, _PLACEHOLDER)
        else:
            _write_archive(fh, encoder.arrays, skeleton)
        _seal(fh)
    return path


def _torch_flavour(path: Path) -> bool:
    """Torch-named files are torch zips wherever torch is installed (only there can torch.load open them)."""
    if path.suffix not in TORCH_SUFFIXES:
        return False
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


_PLACEHOLDER = TRAILER_PREFIX + b"0" * _DIGEST_HEX_LEN


def _write_archive(fh, arrays: dict[str, np.ndarray], skeleton: Any) -> None:
    members_digest = hashlib.sha256()
    with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_STORED) as archive:
        for name in sorted(arrays):  # name order: the member hash is defined over it
            array = arrays[name]
            members_digest.update(name.encode())
            # zip64 only when needed: zipfile must know up front that a streamed member may pass 2 GiB.
            with archive.open(name, "w", force_zip64=array.nbytes > (1 << 30)) as member:
                np.lib.format.write_array(
                    _HashingWriter(member, members_digest), np.asanyarray(array), allow_pickle=False
                )
        meta = {
            "format": FORMAT,
            "skeleton": skeleton,
            "sha256": members_digest.hexdigest(),
            "created": _now(),
        }
        text = json.dumps(meta, allow_nan=False, separators=(",", ":")).encode("utf-8")
        buffer = io.BytesIO()
        np.lib.format.write_array(buffer, np.frombuffer(text, dtype=np.uint8), allow_pickle=False)
        archive.writestr(META_MEMBER, buffer.getvalue())
        archive.comment = _PLACEHOLDER


def _seal(fh) -> None:
    """The comment is the last thing in a zip: hash everything before its hex and write the hex in place."""
    fh.seek(0, os.SEEK_END)
    end = fh.tell()
    fh.seek(0)
    file_digest = hashlib.sha256()
    remaining = end - _DIGEST_HEX_LEN
    while remaining > 0:
        chunk = fh.read(min(_CHUNK, remaining))
        file_digest.update(chunk)
        remaining -= len(chunk)
    fh.seek(end - _DIGEST_HEX_LEN)
    fh.write(file_digest.hexdigest().encode("ascii"))


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint written by `save_checkpoint`, verifying it byte for byte first.

    Raises CheckpointError (one paragraph naming the file and the problem) for a missing, truncated,
    corrupted or foreign file. Never unpickles.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"No checkpoint at {path}: the file does not exist.{_alternatives_hint(path)}")
    if not path.is_file():
        raise CheckpointError(f"Cannot load checkpoint {path}: it is not a regular file.")
    try:
        _verify_file_digest(path)
    except OSError as exc:
        raise CheckpointError(f"Cannot read checkpoint {path}: {exc.strerror or exc}.") from exc
    try:
        return _read_archive(path)
    except CheckpointError:
        raise
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, UnicodeDecodeError, TypeError,
            AttributeError) as exc:  # fmt: skip
        # The whole-file digest matched, so this is not damage: the file is another format or version.
        raise CheckpointError(
            f"Cannot read checkpoint {path}: its integrity hash is intact but its contents are not a "
            f"Trainyard format-{FORMAT} checkpoint ({type(exc).__name__}: {exc})."
        ) from exc


def _verify_file_digest(path: Path) -> None:
    size = path.stat().st_size
    trailer_len = len(TRAILER_PREFIX) + _DIGEST_HEX_LEN
    with path.open("rb") as fh:
        head = fh.read(4)
        if size >= trailer_len:
            fh.seek(size - trailer_len)
            trailer = fh.read(trailer_len)
        else:
            trailer = b""
        if not trailer.startswith(TRAILER_PREFIX):
            if head != b"PK\x03\x04":
                problem = "it is not a checkpoint archive (not a zip/npz file)"
                if size == 0:
                    problem = "the file is empty"
            else:
                problem = (
                    "its integrity trailer is missing: the file is truncated, or it is a zip/npz that was not "
                    "written by common.checkpoint.save_checkpoint"
                )
            raise CheckpointError(f"Cannot load checkpoint {path}: {problem}.{_alternatives_hint(path)}")
        recorded = trailer[len(TRAILER_PREFIX) :]
        digest = hashlib.sha256()
        fh.seek(0)
        remaining = size - _DIGEST_HEX_LEN
        while remaining > 0:
            chunk = fh.read(min(_CHUNK, remaining))
            if not chunk:
                break
            digest.update(chunk)
            remaining -= len(chunk)
    if digest.hexdigest().encode("ascii") != recorded:
        raise CheckpointError(
            f"Checkpoint {path} is corrupted: the SHA-256 of its bytes does not match the one recorded when "
            f"it was written (the file was damaged or modified afterwards).{_alternatives_hint(path)}"
        )


def _read_archive(path: Path) -> dict:
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
        if META_MEMBER not in names and any(name.endswith("/data.pkl") for name in names):
            meta, arrays = torch_zip.read_torch_archive(path)
            _check_format(path, meta)
            return _decode(meta["skeleton"], arrays)
        if META_MEMBER not in names:
            raise CheckpointError(
                f"Cannot load checkpoint {path}: it has no {META_MEMBER} member, so it is a plain npz archive "
                "rather than a Trainyard checkpoint."
            )
        with archive.open(META_MEMBER) as fh:
            meta_bytes = np.lib.format.read_array(fh, allow_pickle=False)
        meta = json.loads(np.asarray(meta_bytes, dtype=np.uint8).tobytes().decode("utf-8"))
        _check_format(path, meta)
        wanted = set(_array_refs(meta["skeleton"]))
        members = sorted(names - {META_MEMBER})
        if missing := wanted - set(members):
            raise CheckpointError(f"Checkpoint {path} is incomplete: members {sorted(missing)} are missing.")
        digest = hashlib.sha256()
        arrays: dict[str, np.ndarray] = {}
        for name in members:
            digest.update(name.encode())
            with archive.open(name) as fh:
                arrays[name] = np.lib.format.read_array(_HashingReader(fh, digest), allow_pickle=False)
    if digest.hexdigest() != meta["sha256"]:
        raise CheckpointError(
            f"Checkpoint {path} is corrupted: the SHA-256 over its array members does not match the one "
            f"recorded in {META_MEMBER}.{_alternatives_hint(path)}"
        )
    return _decode(meta["skeleton"], arrays)


def _check_format(path: Path, meta: dict) -> None:
    if meta.get("format") != FORMAT:
        raise CheckpointError(
            f"Cannot load checkpoint {path}: it is format {meta.get('format')!r}, this version of "
            f"trainyard-common reads format {FORMAT}."
        )


def _alternatives_hint(path: Path) -> str:
    """' Other checkpoints in <folder>: a, b. ...' so a broken `last` points the user at best/periodic files."""
    folder = path.parent
    if not folder.is_dir():
        return ""
    suffix = path.suffix
    others = [
        p
        for p in folder.iterdir()
        if p.is_file() and p != path and not is_temp_file(p) and (not suffix or p.suffix == suffix)
    ]
    if not others:
        return ""
    others.sort(key=lambda p: p.stat().st_mtime_ns, reverse=True)
    listed = ", ".join(p.name for p in others[:4])
    return (
        f" Other checkpoints in {folder} (newest first): {listed}; resume from one of them instead "
        "(for example the previous periodic or the best checkpoint)."
    )
