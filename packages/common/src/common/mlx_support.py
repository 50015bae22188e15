"""MLX adapter: model parameters and optimizer state <-> numpy state trees for `common.checkpoint`.

MLX keeps parameters and optimizer state as nested dicts/lists of `mx.array` (`model.parameters()`,
`optimizer.state`), so conversion is a tree walk. numpy has no bfloat16: such arrays are stored as float32
(exact, bf16 is a truncated float32) inside a small marker dict {"__mlx_dtype__": "bfloat16", "array": ...}
and cast back on load. Importing this module imports mlx; only MLX users import it.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten

from common.errors import CheckpointError

_DTYPE_KEY = "__mlx_dtype__"
# dtypes numpy cannot hold, and the numpy dtype that carries them exactly.
_WIDENED = {mx.bfloat16: ("bfloat16", mx.float32)}
_NARROWED = {"bfloat16": mx.bfloat16}


def to_numpy_tree(tree: Any) -> Any:
    """mx arrays (anywhere in dicts/lists/tuples) -> numpy arrays; other leaves unchanged."""
    if isinstance(tree, mx.array):
        if tree.dtype in _WIDENED:
            name, carrier = _WIDENED[tree.dtype]
            return {_DTYPE_KEY: name, "array": np.array(tree.astype(carrier))}
        return np.array(tree)
    if isinstance(tree, dict):
        return {k: to_numpy_tree(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(to_numpy_tree(v) for v in tree)
    return tree


def from_numpy_tree(tree: Any) -> Any:
    """numpy arrays and scalars -> mx arrays (restoring widened dtypes such as bfloat16); inverse of to_numpy_tree."""
    if isinstance(tree, (np.ndarray, np.generic)):
        return mx.array(tree)
    if isinstance(tree, dict):
        if _DTYPE_KEY in tree:
            name = tree[_DTYPE_KEY]
            if name not in _NARROWED:
                raise CheckpointError(f"Checkpoint holds an MLX array of unknown dtype {name!r}.")
            return mx.array(tree["array"]).astype(_NARROWED[name])
        return {k: from_numpy_tree(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(from_numpy_tree(v) for v in tree)
    return tree


def model_state(model) -> dict:
    """All of `model.parameters()` (trainable or frozen, e.g. norm statistics) as a numpy tree."""
    return to_numpy_tree(model.parameters())


def load_model_state(model, state: dict) -> None:
    """Load `model_state` output into `model`; names and shapes must match exactly."""
    arrays = tree_flatten(from_numpy_tree(state))
    try:
        model.load_weights(arrays, strict=True)
    except ValueError as exc:  # load_weights lists the extra / missing / mis-shaped parameters
        raise CheckpointError(
            f"The checkpoint's model weights do not fit this {type(model).__name__}: {' '.join(str(exc).split())} "
            "Was it saved from a model built with another configuration?"
        ) from exc
    mx.eval(model.parameters())


def optimizer_state(optimizer) -> dict:
    """`optimizer.state` (step, learning rate, per-parameter moments) as a numpy tree."""
    return to_numpy_tree(optimizer.state)


def load_optimizer_state(optimizer, state: dict) -> None:
    """Set `optimizer.state` from `optimizer_state` output.

    MLX's state setter marks the optimizer uninitialised; its next update merges in state only for
    parameters missing from the loaded tree, so loaded moments and step are used as they are.
    """
    if not isinstance(state, dict) or "step" not in state:
        raise CheckpointError(
            "The checkpoint's optimizer state is not an MLX optimizer state (no 'step' entry); was it saved "
            "from a torch optimizer?"
        )
    optimizer.state = from_numpy_tree(state)
    mx.eval(optimizer.state)


# -- data parallelism with mx.distributed (launched by `mlx.launch`) ---------------------------------------

# The global group once `init_distributed` joined a run of several processes (None: one process).
# `common.distributed.get_rank / get_world_size` read it through sys.modules, without importing mlx.
GROUP: Any = None
# Every process's liveness beacon (`common.liveness`), in rank order, exchanged when the group forms.
BEACONS: list[tuple[str, int]] = []


def launched() -> bool:
    """True when `mlx.launch` (ring, nccl, jaccl or mpi backend) started this process."""
    from common.distributed import _mlx_env_world_size

    return _mlx_env_world_size() > 1


def init_distributed(backend: str = "any") -> Any:
    """Join the mx.distributed group `mlx.launch` described in the environment; returns it, or None when
    this is a single-process run (nothing done). Idempotent."""
    global GROUP
    if GROUP is not None:
        return GROUP
    if not launched():
        return None
    from common.errors import DeviceError

    try:
        group = mx.distributed.init(strict=True, backend=backend)
    except RuntimeError as exc:
        raise DeviceError(
            f"mlx.launch started this process but mx.distributed.init(backend={backend!r}) failed: {exc}"
        ) from exc
    if group.size() > 1:
        from common.liveness import start_beacon

        GROUP = group
        BEACONS[:] = all_gather_object(start_beacon(group.rank()))
    return GROUP


def lost_process_error(exc: BaseException) -> Exception | None:
    """A clear error naming the process(es) that died when `exc` is a collective failing because of them;
    None for any other error (or when every process still answers)."""
    if GROUP is None or not BEACONS or not isinstance(exc, RuntimeError):
        return None
    from common.errors import DeviceError
    from common.liveness import unreachable

    rank, world = GROUP.rank(), GROUP.size()
    lost = unreachable(BEACONS, rank)
    if not lost:
        return None
    names = ", ".join(str(r) for r in lost)
    return DeviceError(
        f"Process {rank} of {world} stops: lost rank {names} (it no longer answers: killed, out of memory, or "
        f"its machine went down), so the collective it was part of failed ({exc}). The checkpoints written "
        "before are intact; start the same mlx.launch command again with --resume last to continue."
    )


def _reduce_stream() -> Any:
    """Where the all-reduce runs: the GPU stream under CUDA (the nccl backend), else the CPU (the ring and
    MPI backends reduce host memory; on Apple silicon that memory is shared with the GPU)."""
    return None if mx.cuda.is_available() else mx.cpu


def all_reduce_mean(values: dict[str, float]) -> dict[str, float]:
    """Mean of each value over the processes of the run (every process passes the same keys; the order
    is fixed by sorting them); a float copy in a single-process run."""
    if GROUP is None:
        return {k: float(v) for k, v in values.items()}
    keys = sorted(values)
    packed = mx.array([float(values[k]) for k in keys], dtype=mx.float64)
    total = mx.distributed.all_sum(packed, group=GROUP, stream=mx.cpu) / GROUP.size()
    means = dict(zip(keys, total.tolist(), strict=True))
    return {k: float(means[k]) for k in values}


def all_reduce_mean_arrays(arrays: list[mx.array]) -> list[mx.array]:
    """The element-wise mean of each array over the processes, in one all-reduce: the arrays travel
    concatenated as one flat float32 buffer. Single-process runs get the list back unchanged."""
    if GROUP is None or not arrays:
        return arrays
    flat = mx.concatenate([a.astype(mx.float32).reshape(-1) for a in arrays])
    flat = mx.distributed.all_sum(flat, group=GROUP, stream=_reduce_stream()) / GROUP.size()
    out, start = [], 0
    for a in arrays:
        out.append(flat[start : start + a.size].reshape(a.shape).astype(a.dtype))
        start += a.size
    return out


def all_gather_object(obj: Any) -> list[Any]:
    """Every process's `obj` (pickled between the processes of one run), in rank order; `[obj]` in one
    process. mx.distributed gathers arrays of one shape, so the byte strings travel padded to the longest."""
    if GROUP is None:
        return [obj]
    import pickle

    payload = np.frombuffer(pickle.dumps(obj), dtype=np.uint8)
    sizes = mx.distributed.all_gather(mx.array([payload.size], dtype=mx.int32), group=GROUP, stream=mx.cpu)
    sizes = [int(n) for n in sizes.tolist()]
    padded = np.zeros(max(sizes), dtype=np.uint8)
    padded[: payload.size] = payload
    rows = mx.distributed.all_gather(mx.array(padded)[None], group=GROUP, stream=mx.cpu)
    rows = np.array(rows)
    return [pickle.loads(rows[r, :n].tobytes()) for r, n in enumerate(sizes)]
