"""Seeding, RNG state capture/restore for exact resume, and order-independent per-sample generators.

Framework RNGs are touched only when that framework is already imported (it is in `sys.modules`): this module
never imports torch or mlx itself, so a torch-free package (dtgcnn) stays torch-free, and a package that uses
a framework has imported it long before it seeds or checkpoints.

Captured states hold only numpy arrays and JSON-able values, so they go through `common.checkpoint` unchanged.
"""

from __future__ import annotations

import hashlib
import random
import sys
from typing import Any

import numpy as np

# Keeps the two kinds of derived generators apart: without it, a data-order stream for (seed, epoch) and a
# per-sample stream could start from the same SeedSequence entropy.
_SAMPLE_STREAM = 0
_PERMUTATION_STREAM = 1
_UINT64 = (1 << 64) - 1


def seed_everything(seed: int) -> None:
    """Seed python `random`, numpy's global RandomState, and torch (CPU + all CUDA devices) / mlx when imported."""
    seed = int(seed)
    random.seed(seed)
    # numpy's legacy global generator only accepts 0 <= seed < 2**32.
    np.random.seed(seed & 0xFFFFFFFF)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.manual_seed(seed)  # also seeds every CUDA device (lazily, if CUDA is not initialised yet)
    mx = _mlx_core()
    if mx is not None:
        mx.random.seed(seed & _UINT64)


def split_rank_streams(rank: int) -> None:
    """Give process `rank` of a multi-process run global generators of its own (rank 0 keeps its streams).

    Every process seeds the same (same initial weights); training then needs draws that differ per process,
    or each slice of the global batch would get the same dropout masks. Rank r > 0 re-seeds python, numpy,
    torch and MLX from (a digest of its current numpy state, r), so its streams are a pure function of what
    it held: of the run's seed at the start, of rank 0's saved state when a checkpoint is resumed on another
    number of processes. Data order never comes from these generators (`epoch_permutation` is global).
    """
    if rank <= 0:
        return
    _, keys, pos, *_ = np.random.get_state(legacy=True)
    digest = hashlib.sha256(np.asarray(keys, dtype=np.uint32).tobytes() + int(pos).to_bytes(4, "little"))
    entropy = [int.from_bytes(digest.digest()[:8], "little"), int(rank)]
    seed_everything(int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0]))


def capture_rng_state() -> dict[str, Any]:
    """Every global RNG state, as numpy arrays and JSON-able values (see `restore_rng_state`)."""
    version, internal, gauss_next = random.getstate()
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
        "numpy": {
            "name": name,
            "keys": np.asarray(keys, dtype=np.uint32).copy(),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
    }
    torch = sys.modules.get("torch")
    if torch is not None:
        state["torch"] = torch.get_rng_state().numpy().copy()
        # is_available() does not initialise CUDA; get_rng_state_all() would, so only ask when there is one.
        if torch.cuda.is_available():
            state["torch_cuda"] = [s.numpy().copy() for s in torch.cuda.get_rng_state_all()]
    mx = _mlx_core()
    if mx is not None:
        # mx.random.state is a one-element list holding the global key: uint32 [high word, low word].
        state["mlx"] = np.array(mx.random.state[0], dtype=np.uint32)
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of `capture_rng_state`. Keys for frameworks that are not imported here are ignored."""
    if "python" in state:
        py = state["python"]
        gauss_next = py["gauss_next"]
        random.setstate((int(py["version"]), tuple(int(x) for x in py["internal"]), gauss_next))
    if "numpy" in state:
        st = state["numpy"]
        np.random.set_state(
            (
                str(st["name"]),
                np.asarray(st["keys"], dtype=np.uint32),
                int(st["pos"]),
                int(st["has_gauss"]),
                float(st["cached_gaussian"]),
            )
        )
    torch = sys.modules.get("torch")
    if torch is not None:
        if "torch" in state:
            torch.set_rng_state(torch.from_numpy(np.ascontiguousarray(state["torch"], dtype=np.uint8)))
        if "torch_cuda" in state and torch.cuda.is_available():
            cuda_states = [
                torch.from_numpy(np.ascontiguousarray(s, dtype=np.uint8)) for s in state["torch_cuda"]
            ]
            # A checkpoint from a machine with more GPUs restores the devices this machine has.
            n = min(len(cuda_states), torch.cuda.device_count())
            for device_index in range(n):
                torch.cuda.set_rng_state(cuda_states[device_index], device_index)
    mx = _mlx_core()
    if mx is not None and "mlx" in state:
        # mlx has no "set state" call, but seed(s) sets the key to [s >> 32, s & 0xffffffff]: rebuild s.
        high, low = (int(v) for v in np.asarray(state["mlx"], dtype=np.uint32))
        mx.random.seed((high << 32) | low)


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """A generator for one sample's augmentation, a pure function of (seed, epoch, index).

    Independent of global RNG state and of which worker processes the sample, so results do not depend on the
    worker count or on the order workers run in.
    """
    entropy = [int(seed) & _UINT64, int(epoch), int(index)]
    return np.random.default_rng(np.random.SeedSequence(entropy, spawn_key=(_SAMPLE_STREAM,)))


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """The data order of one epoch: a permutation of range(n) (int64), a pure function of (n, seed, epoch)."""
    entropy = [int(seed) & _UINT64, int(epoch)]
    rng = np.random.default_rng(np.random.SeedSequence(entropy, spawn_key=(_PERMUTATION_STREAM,)))
    return rng.permutation(int(n)).astype(np.int64)


def _mlx_core():
    """`mlx.core` if the process has imported it (never imports it here)."""
    return sys.modules.get("mlx.core")
