"""Device choice for torch and MLX, peak-memory figures, and a one-line device description for the log.

torch and mlx are imported inside the functions: `import common.devices` must work where only one (or
neither) framework is installed, and dtgcnn must never pull in torch.
"""

from __future__ import annotations

import platform
import sys
from typing import Any

from common.errors import DeviceError

_MIB = 1024 * 1024


# ------------------------------------------------------------------------------------------------- torch


def _torch_available_devices() -> list[str]:
    import torch

    names = ["cpu"]
    if torch.cuda.is_available():
        names += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        names.append("mps")
    return names


def torch_device(name: str = "auto") -> Any:
    """A `torch.device` for "auto" (cuda, then mps, then cpu), "cpu", "cuda", "cuda:N" or "mps".

    An explicit device this machine does not have is a DeviceError naming the ones it does have.
    """
    import torch

    text = str(name).strip().lower()
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if text == "gpu":  # a common spelling in configs; means the first CUDA device
        text = "cuda"
    available = _torch_available_devices()
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise DeviceError(
            f"Unknown torch device {name!r}. Use auto, cpu, cuda, cuda:N or mps; this machine has: "
            f"{', '.join(available)}."
        ) from None
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = 0 if device.index is None else device.index
        if index >= count:
            why = "CUDA is not available" if count == 0 else f"only {count} CUDA device(s) exist"
            raise DeviceError(
                f"Device {name!r} was requested but {why} (torch {torch.__version__}, built for CUDA "
                f"{torch.version.cuda or 'none'}). Available devices: {', '.join(available)}; use --device auto "
                "to pick the best available."
            )
        return torch.device("cuda", index)
    if device.type == "mps":
        if not torch.backends.mps.is_available():
            raise DeviceError(
                f"Device {name!r} was requested but Apple MPS is not available on this machine. Available "
                f"devices: {', '.join(available)}; use --device auto to pick the best available."
            )
        return device
    raise DeviceError(
        f"Torch device type {device.type!r} is not supported by Trainyard. Use auto, cpu, cuda, cuda:N or mps; "
        f"this machine has: {', '.join(available)}."
    )


# --------------------------------------------------------------------------------------------------- MLX


def _mlx_gpu_available(mx) -> bool:
    return bool(mx.metal.is_available() or (hasattr(mx, "cuda") and mx.cuda.is_available()))


def mlx_device(name: str = "auto") -> Any:
    """An `mx.Device` for "auto" (gpu when Metal or CUDA is available, else cpu), "cpu", "gpu" or "gpu:N"."""
    import mlx.core as mx

    text = str(name).strip().lower()
    kind, _, index_text = text.partition(":")
    if kind in ("cuda", "metal", "mps"):  # the user means "the GPU"; MLX calls every accelerator gpu
        kind = "gpu"
    if kind not in ("auto", "cpu", "gpu") or (index_text and not index_text.isdigit()):
        raise DeviceError(f"Unknown MLX device {name!r}. Use auto, cpu, gpu or gpu:N.")
    index = int(index_text or 0)
    has_gpu = _mlx_gpu_available(mx)
    if kind == "auto":
        return mx.Device(mx.gpu if has_gpu else mx.cpu, 0)
    if kind == "cpu":
        return mx.Device(mx.cpu, index)
    count = mx.device_count(mx.gpu) if has_gpu and hasattr(mx, "device_count") else int(has_gpu)
    if index >= count:
        why = "MLX has no GPU backend here (no Metal, no CUDA)" if not has_gpu else f"MLX sees {count} GPU(s)"
        raise DeviceError(
            f"MLX device {name!r} was requested but {why}. Available: cpu"
            f"{', gpu' if has_gpu else ''}; use --device auto to pick the best available."
        )
    return mx.Device(mx.gpu, index)


# ------------------------------------------------------------------------------------------------ memory


def _rss_peak_mb() -> float | None:
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is in kilobytes on Linux but in bytes on macOS.
    return peak / _MIB if sys.platform == "darwin" else peak / 1024


def peak_memory_mb(device: Any = None) -> dict[str, float]:
    """Peak memory so far, in MiB: {"rss_peak_mb", "cuda_peak_mb", "mlx_peak_mb"}, each where available.

    CUDA is read only if torch is already imported and CUDA is initialised (reading it must not create a CUDA
    context); MLX only if mlx.core is already imported. `device` selects the CUDA device (default: current).
    """
    out: dict[str, float] = {}
    rss = _rss_peak_mb()
    if rss is not None:
        out["rss_peak_mb"] = rss
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        cuda_device = device if getattr(device, "type", None) == "cuda" else None
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated(cuda_device) / _MIB
    mx = sys.modules.get("mlx.core")
    if mx is not None:
        peak = mx.get_peak_memory() if hasattr(mx, "get_peak_memory") else mx.metal.get_peak_memory()
        out["mlx_peak_mb"] = peak / _MIB
    return out


# --------------------------------------------------------------------------------------------- describe


def describe_device(device: Any) -> str:
    """One line for the log, e.g. "cuda:0 (NVIDIA H100, 79.1 GiB, compute 9.0, torch 2.5.1)"."""
    module = type(device).__module__.split(".")[0]
    if module == "torch":
        return _describe_torch(device)
    if module == "mlx":
        return _describe_mlx(device)
    return f"{device} ({platform.machine()}, {platform.processor() or platform.system()})"


def _describe_torch(device) -> str:
    import torch

    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        return (
            f"cuda:{index} ({props.name}, {props.total_memory / 1024**3:.1f} GiB, compute "
            f"{props.major}.{props.minor}, torch {torch.__version__})"
        )
    if device.type == "mps":
        return f"mps (Apple GPU, {platform.machine()}, torch {torch.__version__})"
    return (
        f"{device} ({platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__})"
    )


def _describe_mlx(device) -> str:
    import mlx.core as mx

    try:
        info = mx.device_info(device) if hasattr(mx, "device_info") else {}
    except (RuntimeError, ValueError, TypeError):
        info = {}
    details = [str(info[k]) for k in ("device_name", "architecture") if k in info]
    memory = info.get("memory_size") or info.get("total_memory")
    if memory:
        details.append(f"{int(memory) / 1024**3:.1f} GiB")
    details.append(f"mlx {mx.__version__}")
    kind = "gpu" if device.type == mx.gpu else "cpu"
    return f"mlx {kind} ({', '.join(details)})"
