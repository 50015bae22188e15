"""PyTorch adapters: precision (torch.amp), one guarded optimizer step, LR application, and conversion of
model/optimizer state to the numpy "state tree" that `common.checkpoint` stores.

Only torch packages import this module (`import common` stays torch-free).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from common.distributed import all_reduce_mean
from common.errors import CheckpointError, ConfigError, DeviceError, NonFiniteError
from common.loop import Task
from common.precision import canonical_precision

__all__ = [
    "OptimizerStepper",
    "Precision",
    "TorchTask",
    "apply_lrs",
    "from_numpy_state",
    "parse_precision",
    "restore_training_state",
    "to_numpy_state",
    "training_state",
    "unwrap",
]

# ----------------------------------------------------------------------------------------------- precision


@dataclass
class Precision:
    """How to run forward/backward: `autocast_dtype` set = mixed precision (weights stay float32);
    `param_dtype` != float32 = the whole model runs in that dtype ("16-true"/"bf16-true": call `cast_model`);
    `scaler` only for float16 mixed precision, whose gradients underflow without loss scaling."""

    name: str
    autocast_dtype: torch.dtype | None
    param_dtype: torch.dtype
    scaler: torch.amp.GradScaler | None
    device_type: str = "cpu"

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.autocast_dtype)

    def cast_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """Cast parameters and buffers to `param_dtype` (a no-op for "32" and the mixed modes)."""
        return model.to(dtype=self.param_dtype)


def _check_autocast(device_type: str, dtype: torch.dtype, name: str) -> None:
    """torch.autocast only warns (and disables itself) for a dtype the device does not support; a
    silently full-precision run is what we refuse, so turn that warning into a DeviceError."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            torch.autocast(device_type, dtype=dtype)
        except RuntimeError as e:
            raise DeviceError(f"precision {name!r} is not supported on {device_type}: {e}") from e
    for w in caught:
        if "autocast" in str(w.message).lower() and "disabl" in str(w.message).lower():
            raise DeviceError(f"precision {name!r} is not supported on {device_type}: {w.message}")


def _check_dtype_on_device(device: torch.device, dtype: torch.dtype, name: str) -> None:
    if device.type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise DeviceError(
            f"precision {name!r} needs bfloat16, which this CUDA GPU "
            f"({torch.cuda.get_device_name(device)}) does not support; use '16-mixed' or '32'."
        )
    try:
        torch.ones(2, dtype=dtype, device=device) * 2  # e.g. bf16 on MPS needs macOS 14
    except (RuntimeError, TypeError) as e:
        raise DeviceError(f"precision {name!r} is not supported on {device.type}: {e}. Use '32'.") from e


def parse_precision(name: str | int, device: torch.device | str) -> Precision:
    """Precision for any spelling `common.precision` accepts ("32", "16-mixed", "bf16-mixed", "16-true",
    "bf16-true"; "16" and "bf16" mean mixed) on `device`; DeviceError for what the device cannot do."""
    key = canonical_precision(name)
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"precision {key!r} was asked for on cuda, but CUDA is not available here.")
    if key == "32":
        return Precision(key, None, torch.float32, None, device.type)
    if key in ("16-true", "bf16-true"):  # the model itself in half precision, no autocast, no scaler
        dtype = torch.float16 if key == "16-true" else torch.bfloat16
        _check_dtype_on_device(device, dtype, key)
        return Precision(key, None, dtype, None, device.type)
    if key == "16-mixed" and device.type == "cpu":
        raise DeviceError(
            "precision '16-mixed' is refused on cpu: CPU autocast in float16 has few fast "
            "kernels and needs loss scaling, so it is slower than float32 and less stable. "
            "Use 'bf16-mixed' (same float32 range, no scaler) or '32' on CPU; '16-mixed' is "
            "for CUDA (and MPS) GPUs."
        )
    dtype = torch.float16 if key == "16-mixed" else torch.bfloat16
    _check_dtype_on_device(device, dtype, key)
    _check_autocast(device.type, dtype, key)
    scaler = None
    if key == "16-mixed":  # float16's small range underflows small gradients: scale the loss
        try:
            scaler = torch.amp.GradScaler(device.type)
        except (RuntimeError, AssertionError) as e:
            raise DeviceError(
                f"precision '16-mixed' needs a gradient scaler, which torch "
                f"{torch.__version__} does not offer on {device.type}: {e}. "
                "Use 'bf16-mixed' or '32'."
            ) from e
    return Precision(key, dtype, torch.float32, scaler, device.type)


# ----------------------------------------------------------------------------------------- optimizer step


def _total_grad_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    """L2 norm over all gradients, accumulated in float32 so half-precision grads do not overflow it."""
    if any(g.dtype in (torch.float16, torch.bfloat16) for g in grads):
        grads = [g.float() for g in grads]
    if hasattr(torch.nn.utils, "get_total_norm"):  # torch >= 2.6
        return torch.nn.utils.get_total_norm(grads, 2.0)
    return torch.linalg.vector_norm(
        torch.stack([torch.linalg.vector_norm(g).to(grads[0].device) for g in grads])
    )


class OptimizerStepper:
    """The guarded optimizer step of a torch task: loss scaling, unscale, clipping, NaN guard, step, zero.

        with precision.autocast():
            loss = model_loss(batch)
        stepper.backward(loss, scale)                # scale: 1/(micro-batches in this step), from the loop
        ...                                          # more micro-batches of the same step
        norm = stepper.step()                        # once per optimizer step

    The training loop (`common.loop`) decides when a step ends and hands each micro-batch its scale, so the
    loss is scaled exactly once. Non-finite loss: NonFiniteError before backward. Non-finite gradients:
    without a scaler, NonFiniteError before optimizer.step (weights untouched, gradients cleared). With a
    float16 scaler an overflow is expected early on and handled as torch intends (step skipped, scale lowered,
    returns None); only `max_consecutive_skips` skips in a row (a real divergence) raise NonFiniteError.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        precision: Precision,
        clip_grad_norm: float | None = None,
        max_consecutive_skips: int = 20,
    ):
        if clip_grad_norm is not None and not clip_grad_norm > 0:
            raise ConfigError(f"gradient clipping norm must be > 0 (or off), got {clip_grad_norm}.")
        self.optimizer, self.precision = optimizer, precision
        self.clip_grad_norm = clip_grad_norm
        self.max_consecutive_skips = max_consecutive_skips
        self.skipped_steps = 0  # float16 overflow steps skipped by the scaler, whole run
        self._consecutive_skips = 0

    @property
    def scaler(self) -> torch.amp.GradScaler | None:
        return self.precision.scaler

    def _params(self) -> list[torch.Tensor]:
        return [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]

    def backward(self, loss: torch.Tensor, scale: float = 1.0) -> None:
        """Backpropagate `loss * scale` (and the float16 loss scale); NonFiniteError if loss is NaN/inf."""
        if not bool(torch.isfinite(loss.detach()).all()):
            raise NonFiniteError(
                f"The training loss is {loss.detach().float().cpu().tolist()}; no gradient was "
                "applied and the weights are unchanged. Lower the learning rate, enable gradient "
                "clipping, check the data for NaN/inf, or use 'bf16-mixed'/'32' precision."
            )
        if scale != 1.0:
            loss = loss * scale
        if self.scaler is not None:
            loss = self.scaler.scale(loss)
        loss.backward()

    def step(self) -> float | None:
        """Unscale, check, clip, step, zero the grads; the total gradient norm before clipping, or None when
        the float16 scaler skipped the step."""
        opt, scaler = self.optimizer, self.scaler
        params = self._params()
        if scaler is not None:
            scaler.unscale_(opt)  # clip and check the true gradients, not the scaled ones
        norm = _total_grad_norm([p.grad for p in params]) if params else torch.tensor(0.0)
        finite = bool(torch.isfinite(norm))
        if not finite and scaler is None:
            opt.zero_grad(set_to_none=True)
            raise NonFiniteError(
                f"The gradient norm is {float(norm)}; the optimizer step was not taken and the "
                "weights are unchanged. Lower the learning rate, enable gradient clipping "
                "(clip_grad_norm), or check the loss for operations that overflow."
            )
        if finite and self.clip_grad_norm is not None:
            if hasattr(torch.nn.utils, "clip_grads_with_norm_"):  # torch >= 2.6: reuse the norm
                torch.nn.utils.clip_grads_with_norm_(params, self.clip_grad_norm, norm)
            else:
                torch.nn.utils.clip_grad_norm_(params, self.clip_grad_norm)
        if scaler is not None:
            scaler.step(opt)  # skips optimizer.step itself when unscale_ found inf/NaN
            scaler.update()
        else:
            opt.step()
        opt.zero_grad(set_to_none=True)
        if finite:
            self._consecutive_skips = 0
            return float(norm)
        self.skipped_steps += 1
        self._consecutive_skips += 1
        if self._consecutive_skips >= self.max_consecutive_skips:
            raise NonFiniteError(
                f"The gradients were NaN/inf for {self._consecutive_skips} optimizer steps in a "
                f"row (loss scale now {scaler.get_scale():g}); the weights are unchanged since. "
                "Training diverged: lower the learning rate or use 'bf16-mixed'/'32'."
            )
        return None

    def state_dict(self) -> dict:
        return {
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "skipped_steps": self.skipped_steps,
            "consecutive_skips": self._consecutive_skips,
        }

    def load_state_dict(self, d: dict) -> None:
        # a scaler state from a float16 run is ignored when resuming in a precision without scaler
        if self.scaler is not None and d.get("scaler"):
            self.scaler.load_state_dict(dict(d["scaler"]))
        self.skipped_steps = int(d.get("skipped_steps", 0))
        self._consecutive_skips = int(d.get("consecutive_skips", 0))


def apply_lrs(optimizer: torch.optim.Optimizer, lrs: Sequence[float]) -> None:
    """Set each param group's LR from a schedule's `lrs` (one per group, in order)."""
    groups = optimizer.param_groups
    if len(lrs) != len(groups):
        raise ConfigError(
            f"The LR schedule has {len(lrs)} learning rates but the optimizer has {len(groups)} "
            "parameter groups; build the schedule with one base LR per group."
        )
    for group, lr in zip(groups, lrs, strict=True):
        if isinstance(group["lr"], torch.Tensor):  # tensor LRs (capturable/compiled optimizers) stay tensors
            group["lr"].fill_(lr)
        else:
            group["lr"] = float(lr)


# ---------------------------------------------------------------------------------------- state <-> numpy

# numpy has no bfloat16/float8/complex32: such a tensor is stored widened (exactly) with its dtype beside it
_DTYPE_NOTE = "__torch_dtype__"


def _tensor_to_numpy(t: torch.Tensor) -> np.ndarray | dict:
    t = t.detach().cpu().resolve_conj().resolve_neg()
    try:
        return t.numpy().copy()  # copy: the saved tree must not change when training goes on in place
    except TypeError:
        wide = t.to(torch.complex64 if t.is_complex() else torch.float32)
        return {_DTYPE_NOTE: str(t.dtype).removeprefix("torch."), "data": wide.numpy().copy()}


def to_numpy_state(state: Any, _path: str = "state") -> Any:
    """A model/optimizer state_dict (or any nested dict/list/tuple) with every tensor as a numpy array;
    dtypes numpy lacks (bfloat16, ...) become {"__torch_dtype__": name, "data": float32 array}."""
    if isinstance(state, torch.Tensor):
        return _tensor_to_numpy(state)
    if isinstance(state, dict):
        return {k: to_numpy_state(v, f"{_path}.{k}") for k, v in state.items()}
    if isinstance(state, list | tuple):
        items = [to_numpy_state(v, f"{_path}[{i}]") for i, v in enumerate(state)]
        return items if isinstance(state, list) else tuple(items)
    if state is None or isinstance(state, bool | int | float | str | np.ndarray | np.generic):
        return state
    raise CheckpointError(
        f"Cannot store {_path} (a {type(state).__name__}) in a checkpoint: only tensors, "
        "arrays, numbers, strings, None and dicts/lists of them are allowed."
    )


def _is_dtype_note(node: Any) -> bool:
    return isinstance(node, dict) and set(node) == {_DTYPE_NOTE, "data"}


def from_numpy_state(tree: Any, like: Any = None) -> Any:
    """Inverse of `to_numpy_state`: numpy arrays -> tensors, noted dtypes restored. With `like` (e.g.
    `model.state_dict()`), tensors also take the dtype and device of the matching entry, tuples come back
    as tuples, and digit-string keys match int keys (optimizer state) when `like` has int keys."""
    if _is_dtype_note(tree):
        t = torch.from_numpy(np.array(tree["data"])).to(getattr(torch, tree[_DTYPE_NOTE]))
        return t.to(device=like.device, dtype=like.dtype) if isinstance(like, torch.Tensor) else t
    if isinstance(tree, np.ndarray):
        t = torch.from_numpy(np.array(tree))  # np.array: a writable copy (loaded arrays may be read-only)
        return t.to(device=like.device, dtype=like.dtype) if isinstance(like, torch.Tensor) else t
    if isinstance(tree, dict):
        like_d = like if isinstance(like, dict) else {}
        if any(isinstance(k, int) for k in like_d):
            tree = {int(k) if isinstance(k, str) and k.isdigit() else k: v for k, v in tree.items()}
        return {k: from_numpy_state(v, like_d.get(k)) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        like_s = like if isinstance(like, list | tuple) and len(like) == len(tree) else [None] * len(tree)
        items = [from_numpy_state(v, lk) for v, lk in zip(tree, like_s, strict=True)]
        return tuple(items) if isinstance(tree, tuple) or isinstance(like, tuple) else items
    return tree


# ------------------------------------------------------------------------------------------ training state


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module inside DistributedDataParallel / DataParallel / torch.compile wrappers."""
    parallel = (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)
    while True:
        if isinstance(model, parallel):
            model = model.module
        elif isinstance(
            getattr(model, "_orig_mod", None), torch.nn.Module
        ):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            return model


def training_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None, **extra: Any) -> dict:
    """{"model", "optimizer", **extra} as a numpy state tree for `common.checkpoint.save_checkpoint`."""
    state = {
        "model": to_numpy_state(unwrap(model).state_dict()),
        "optimizer": to_numpy_state(optimizer.state_dict()) if optimizer is not None else None,
    }
    state.update({k: to_numpy_state(v, k) for k, v in extra.items()})
    return state


def _strip_wrapper_prefix(weights: dict, expected: dict) -> dict:
    """Accept weights saved from a wrapped model ("module." from DDP, "_orig_mod." from torch.compile)."""
    for prefix in ("module.", "_orig_mod."):
        if (
            weights
            and all(k.startswith(prefix) for k in weights)
            and not any(k.startswith(prefix) for k in expected)
        ):
            weights = {k[len(prefix) :]: v for k, v in weights.items()}
    return weights


def _short(e: Exception, limit: int = 600) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[:limit] + " ..."


def restore_training_state(
    state: dict, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None
) -> dict:
    """Load the model (and optimizer) from a `training_state` tree; returns the other entries."""
    target = unwrap(model)
    expected = target.state_dict()
    weights = _strip_wrapper_prefix(from_numpy_state(state["model"], like=expected), expected)
    try:
        target.load_state_dict(weights)
    except RuntimeError as e:
        raise CheckpointError(
            f"The checkpoint's model weights do not fit this model (was it trained with "
            f"another model config?): {_short(e)}"
        ) from e
    if optimizer is not None and state.get("optimizer") is not None:
        opt_state = from_numpy_state(state["optimizer"], like=optimizer.state_dict())
        # torch matches per-parameter state by int index; a store that turned keys into strings must not
        # make the optimizer silently start from scratch
        opt_state["state"] = {int(k): v for k, v in opt_state.get("state", {}).items()}
        try:
            optimizer.load_state_dict(opt_state)
        except (ValueError, KeyError, RuntimeError) as e:
            raise CheckpointError(
                f"The checkpoint's optimizer state does not fit this optimizer (another "
                f"optimizer type or parameter groups?): {_short(e)}"
            ) from e
    return {k: v for k, v in state.items() if k not in ("model", "optimizer")}


# --------------------------------------------------------------------------------------- the loop's task


class TorchTask(Task):
    """The torch half of a `common.loop.Task`, shared by the torch packages.

    A subclass sets `self.model` (the plain module, not a DDP/compile wrapper), `self.optimizer`,
    `self.stepper` (an OptimizerStepper) and `self.config` (the run's config dataclass), and implements
    `num_batches`, `batches`, `micro_step` (calling `self.stepper.backward(loss, scale)`) and `validate`.
    A data-parallel task also sets `self.ddp` (its DistributedDataParallel wrapper), so micro-batches that do
    not end a step skip the gradient all-reduce. Extra state goes through `extra_state` / `load_extra_state`.
    """

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    stepper: OptimizerStepper
    config: Any
    ddp: torch.nn.parallel.DistributedDataParallel | None = None

    def no_sync(self) -> contextlib.AbstractContextManager:
        return self.ddp.no_sync() if self.ddp is not None else contextlib.nullcontext()

    def optimizer_step(self) -> float | None:
        return self.stepper.step()

    def set_lrs(self, lrs: Sequence[float]) -> None:
        apply_lrs(self.optimizer, lrs)

    def reduce_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        return all_reduce_mean(metrics)

    def extra_state(self) -> dict:
        """More state to checkpoint (numpy-convertible); {} by default."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        """Restore what `extra_state` saved; `state` holds every checkpoint entry but model and optimizer."""

    def state_dict(self) -> dict:
        from common.config import config_to_dict

        return training_state(
            self.model,
            self.optimizer,
            stepper=self.stepper.state_dict(),
            config=config_to_dict(self.config),
            **self.extra_state(),
        )

    def load_state_dict(self, state: dict) -> None:
        rest = restore_training_state(state, self.model, self.optimizer)
        self.stepper.load_state_dict(rest.get("stepper") or {})
        self.load_extra_state(rest)
