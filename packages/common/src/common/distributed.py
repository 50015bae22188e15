"""Distributed-training helpers around torch.distributed, framework-free at import.

Ranks come from the environment that `torchrun` (or any launcher) sets: RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT. torch is imported only inside the functions that need a process group, so
`common.trackers` can ask `is_main_process()` in an MLX or CPU-only run without pulling torch in.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

from common.errors import ConfigError, DeviceError

__all__ = [
    "all_gather_object",
    "all_reduce_mean",
    "barrier",
    "broadcast_object",
    "cleanup_distributed",
    "get_local_rank",
    "get_rank",
    "get_world_size",
    "init_distributed",
    "is_main_process",
    "lost_process_error",
    "rank_zero_only",
]

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(
            f"Environment variable {name}={raw!r} must be an integer (it is set by the "
            "distributed launcher, e.g. torchrun)."
        ) from None


def _process_group_ready() -> bool:
    """True when torch.distributed has an initialised group; never imports torch itself."""
    dist = sys.modules.get("torch.distributed")
    return dist is not None and dist.is_available() and dist.is_initialized()


def _mlx_group() -> Any:
    """The mx.distributed group `common.mlx_support.init_distributed` set up, or None; never imports mlx."""
    support = sys.modules.get("common.mlx_support")
    return getattr(support, "GROUP", None)


@functools.lru_cache(maxsize=8)
def _ring_hosts(path: str) -> int:
    """Processes in the ring hostfile mlx.launch writes (a JSON list with one entry per rank)."""
    try:
        with open(path, encoding="utf-8") as f:
            return len(json.load(f))
    except (OSError, ValueError):
        return 1


def _mlx_env_world_size() -> int:
    """World size from the environment `mlx.launch` sets (ring: MLX_HOSTFILE, nccl: MLX_WORLD_SIZE,
    mpi: OMPI_COMM_WORLD_SIZE / PMI_SIZE); 1 when not launched by it."""
    if os.environ.get("MLX_WORLD_SIZE", "").strip():
        return _env_int("MLX_WORLD_SIZE", 1)
    if os.environ.get("MLX_RANK", "").strip() and os.environ.get("MLX_HOSTFILE"):
        return _ring_hosts(os.environ["MLX_HOSTFILE"])
    for name in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE"):
        if os.environ.get(name, "").strip():
            return _env_int(name, 1)
    return 1


def _mlx_env_rank() -> int:
    for name in ("MLX_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK"):
        if os.environ.get(name, "").strip():
            return _env_int(name, 0)
    return 0


def get_rank() -> int:
    """This process's rank: torch.distributed's group, MLX's group, then RANK (torchrun) or the variables
    mlx.launch sets (MLX_RANK; OMPI_COMM_WORLD_RANK under MPI)."""
    if _process_group_ready():
        return sys.modules["torch.distributed"].get_rank()
    group = _mlx_group()
    if group is not None:
        return int(group.rank())
    if os.environ.get("RANK", "").strip():
        return _env_int("RANK", 0)
    return _mlx_env_rank()


def get_world_size() -> int:
    """Processes in the run, from the same sources as `get_rank`."""
    if _process_group_ready():
        return sys.modules["torch.distributed"].get_world_size()
    group = _mlx_group()
    if group is not None:
        return int(group.size())
    if os.environ.get("WORLD_SIZE", "").strip():
        return _env_int("WORLD_SIZE", 1)
    return _mlx_env_world_size()


def get_local_rank() -> int:
    return _env_int("LOCAL_RANK", 0)


def is_main_process() -> bool:
    return get_rank() == 0


def rank_zero_only(fn: F) -> F:
    """Decorator: run `fn` only on rank 0 (other ranks get None); for logging, saving, printing."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs) if is_main_process() else None

    return wrapper  # type: ignore[return-value]


def init_distributed(device_type: str, *, timeout_s: float = 1800.0) -> bool:
    """Join the process group described by the environment: nccl on cuda (and select this process's GPU
    from LOCAL_RANK), gloo otherwise. False (nothing done) for a single-process run (WORLD_SIZE <= 1)."""
    world = get_world_size()
    if world <= 1:
        return False
    if _process_group_ready():
        return True
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT", "RANK") if not os.environ.get(k)]
    if missing:
        raise ConfigError(
            f"WORLD_SIZE={world} asks for distributed training but {', '.join(missing)} "
            "is not set; launch with `torchrun --nproc_per_node=N -m <pkg>.train ...`."
        )
    import torch
    import torch.distributed as dist

    if not dist.is_available():
        raise DeviceError(
            "WORLD_SIZE > 1 asks for distributed training, but this torch build has no "
            "torch.distributed support."
        )
    backend = "gloo"
    if device_type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError("Distributed training on cuda was asked for, but CUDA is not available.")
        local = get_local_rank()
        if local >= torch.cuda.device_count():
            raise DeviceError(
                f"LOCAL_RANK={local} but only {torch.cuda.device_count()} CUDA devices are visible."
            )
        torch.cuda.set_device(local)
        backend = "nccl"
    dist.init_process_group(
        backend=backend,
        init_method="env://",
        rank=get_rank(),
        world_size=world,
        timeout=timedelta(seconds=timeout_s),
    )
    return True


def cleanup_distributed() -> None:
    if _process_group_ready():
        sys.modules["torch.distributed"].destroy_process_group()


def all_reduce_mean(values: dict[str, float]) -> dict[str, float]:
    """Mean of each value over all ranks (every rank must pass the same keys); a copy when not distributed."""
    if not _process_group_ready():
        return {k: float(v) for k, v in values.items()}
    import torch
    import torch.distributed as dist

    keys = sorted(values)  # same order on every rank, whatever order the dict was built in
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    # float64: means of large sums (sample counts, summed losses) stay exact enough
    packed = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(packed, op=dist.ReduceOp.SUM)
    packed /= dist.get_world_size()
    means = dict(zip(keys, packed.tolist(), strict=True))
    return {k: means[k] for k in values}


def barrier() -> None:
    """Wait for every rank (no-op when not distributed)."""
    if not _process_group_ready():
        return
    import torch
    import torch.distributed as dist

    if dist.get_backend() == "nccl":  # tell nccl which GPU this rank uses, or it guesses and warns
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


def broadcast_object(obj: T, src: int = 0) -> T:
    """Rank `src`'s `obj` on every rank (e.g. the run folder name rank 0 chose); `obj` itself when not
    distributed. The object is pickled between the processes of one run, never read from a file."""
    if not _process_group_ready():
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: T) -> list[T]:
    """Every rank's `obj`, in rank order, on every rank (a collective: all ranks call it at the same point);
    `[obj]` when not distributed. Pickled between the processes of one run, never read from a file."""
    if _process_group_ready():
        import torch.distributed as dist

        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, obj)
        return gathered
    if _mlx_group() is not None:
        return sys.modules["common.mlx_support"].all_gather_object(obj)
    return [obj]


def lost_process_error(exc: BaseException) -> Exception | None:
    """A clear error naming the lost rank when `exc` is a collective failing because another process died
    (mlx.distributed: the survivors ask each process's beacon, `common.liveness`); None otherwise. Under
    torchrun the elastic agent ends the other processes itself and its summary names the lost rank."""
    if _mlx_group() is not None:
        return sys.modules["common.mlx_support"].lost_process_error(exc)
    return None
