"""The torch flavour of the checkpoint format: what `.pth`, `.pt` and `.ckpt` files are.

People who find a `.pth` or `.ckpt` file open it with `torch.load(path, weights_only=True)` first, so these
files are torch's own zip archive, written by `torch.save`: the state tree with every NumPy array as a tensor,
so `torch.load(p, weights_only=True)["model"]` is a state dict as `load_state_dict` wants it. Two things make it
a Trainyard checkpoint as well:

- the entry `__trainyard__`, a JSON string `{"format": 1, "flavour": "torch", "skeleton": ..., "raw": ...}`
  with the same skeleton as the npz flavour, so tuples, int keys, NaN and NumPy scalars come back exactly;
  arrays torch cannot hold as they are (strings, datetimes, another byte order) are stored as uint8 bytes
  and listed in "raw";
- the zip comment `trainyard-sha256:<hex>`, the SHA-256 of every byte before the hex, exactly as in the npz
  flavour: torch's zip reader ignores the comment, and `load_checkpoint` refuses any flipped byte.

Loading goes through torch's weights-only unpickler, which builds only containers, numbers, strings and
tensors: a file that names any other Python object is refused, never executed. torch is imported only here,
only when a torch-named file is written or read.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np

from common.errors import CheckpointError

META_KEY = "__trainyard__"
FLAVOUR = "torch"
# The end-of-central-directory record closes every zip: signature, 16 bytes of fields, comment length (u16).
_EOCD_SIGNATURE = b"PK\x05\x06"
_EOCD_SIZE = 22


def write_torch_archive(fh, arrays: dict[str, np.ndarray], skeleton: Any, meta: dict, comment: bytes) -> None:
    """torch.save the tree rebuilt from (skeleton, arrays) with tensors in place of arrays, then give the zip
    the comment `comment` (the caller overwrites its tail with the file's hash)."""
    import torch

    raw: dict[str, list] = {}

    def tensor(name: str) -> torch.Tensor:
        array = arrays[name]
        if array.dtype.kind in "USMmV" or not array.dtype.isnative:
            # No torch dtype (strings, datetimes) or another byte order: keep the bytes, note dtype and shape.
            raw[name] = [array.dtype.str, list(array.shape)]
            return torch.from_numpy(np.frombuffer(array.tobytes(), dtype=np.uint8).copy())
        # np.require keeps 0-d arrays 0-d (ascontiguousarray would make them 1-d).
        return torch.from_numpy(np.require(array, requirements="C"))

    payload = _rebuild(skeleton, tensor)
    if not isinstance(payload, dict) or META_KEY in payload:
        raise CheckpointError(f"A checkpoint state must be a dict without a '{META_KEY}' key.")
    payload[META_KEY] = json.dumps(
        {**meta, "flavour": FLAVOUR, "skeleton": skeleton, "raw": raw}, allow_nan=False, separators=(",", ":")
    )
    start = fh.tell()
    torch.save(payload, fh)
    end = fh.tell()
    fh.seek(end - _EOCD_SIZE)
    eocd = fh.read(_EOCD_SIZE)
    if end - start < _EOCD_SIZE or eocd[:4] != _EOCD_SIGNATURE or eocd[-2:] != b"\x00\x00":
        raise CheckpointError("torch.save wrote a zip this version of trainyard-common cannot seal.")
    fh.seek(end - 2)
    fh.write(struct.pack("<H", len(comment)) + comment)


def read_torch_archive(path) -> tuple[Any, dict[str, np.ndarray]]:
    """(skeleton, {member name: array}) of a torch-flavour checkpoint whose bytes were already verified."""
    try:
        import torch
    except ImportError as exc:
        raise CheckpointError(
            f"Checkpoint {path} was written by a torch package; install torch to read it."
        ) from exc
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (
        Exception
    ) as exc:  # torch raises UnpicklingError, RuntimeError or its own errors for foreign content
        raise CheckpointError(
            f"Cannot read checkpoint {path}: torch's weights-only loader refused it ({type(exc).__name__}: "
            f"{' '.join(str(exc).split())[:300]})."
        ) from exc
    if not isinstance(payload, dict) or not isinstance(payload.get(META_KEY), str):
        raise CheckpointError(
            f"Cannot load checkpoint {path}: it is a torch file without the '{META_KEY}' entry, so it was not "
            "written by common.checkpoint.save_checkpoint."
        )
    meta = json.loads(payload.pop(META_KEY))
    arrays: dict[str, np.ndarray] = {}
    _collect(meta["skeleton"], payload, arrays, str(path))
    for name, (dtype, shape) in meta.get("raw", {}).items():
        arrays[name] = np.frombuffer(arrays[name].tobytes(), dtype=np.dtype(dtype)).reshape(shape)
    return meta, arrays


def _rebuild(node: Any, tensor) -> Any:
    """The state tree the skeleton describes, with `tensor(member)` wherever an array was."""
    if isinstance(node, list):
        return [_rebuild(v, tensor) for v in node]
    if not isinstance(node, dict):
        return node
    if "__array__" in node:
        return tensor(node["__array__"])
    if "__tuple__" in node:
        return tuple(_rebuild(v, tensor) for v in node["__tuple__"])
    if "__dict__" in node:
        return {key: _rebuild(v, tensor) for key, v in node["__dict__"]}
    if "__float__" in node:
        return float(node["__float__"])
    return {k: _rebuild(v, tensor) for k, v in node.items()}


def _collect(skeleton: Any, tree: Any, arrays: dict[str, np.ndarray], where: str) -> None:
    """Walk the skeleton and the loaded tree side by side, taking each array member's tensor as NumPy."""
    if isinstance(skeleton, list):
        pairs = list(zip(skeleton, _checked(tree, list, len(skeleton), where), strict=True))
    elif not isinstance(skeleton, dict) or "__float__" in skeleton:
        return
    elif "__array__" in skeleton:
        import torch

        if not isinstance(tree, torch.Tensor):
            raise CheckpointError(f"Checkpoint {where} does not match its own skeleton (expected a tensor).")
        arrays[skeleton["__array__"]] = tree.numpy()
        return
    elif "__tuple__" in skeleton:
        items = skeleton["__tuple__"]
        pairs = list(zip(items, _checked(tree, tuple, len(items), where), strict=True))
    elif "__dict__" in skeleton:
        tree = _checked(tree, dict, len(skeleton["__dict__"]), where)
        pairs = [(v, tree[key]) for key, v in skeleton["__dict__"]]
    else:
        tree = _checked(tree, dict, len(skeleton), where)
        pairs = [(v, tree[k]) for k, v in skeleton.items()]
    for sub_skeleton, sub_tree in pairs:
        _collect(sub_skeleton, sub_tree, arrays, where)


def _checked(tree: Any, kind: type, length: int, where: str) -> Any:
    if not isinstance(tree, kind) or len(tree) != length:
        raise CheckpointError(
            f"Checkpoint {where} does not match its own skeleton (expected a {kind.__name__} of {length})."
        )
    return tree
