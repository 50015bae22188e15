"""Optimizer with per-part parameter groups and the LR schedule (common.schedules) the config asks for."""

from __future__ import annotations

from collections.abc import Callable

import torch

from common.errors import ConfigError
from common.schedules import Schedule, ScheduleConfig, build_schedule
from common.torch_support import OptimizerStepper, parse_precision

from .config import CabrucaConfig


def build_optimizer(model, cfg: CabrucaConfig) -> tuple[torch.optim.Optimizer, list[str]]:
    """Groups named in optimizer.param_groups get their own LR (and weight decay); the rest share
    optimizer.lr in a group named "default". A "heads" group also takes the decoder unless "decoder" is named.
    Returns the optimizer and the group names in order."""
    oc = cfg.optimizer
    parts = model.param_groups()  # backbone / decoder / heads
    named = {g.name: g for g in oc.param_groups}
    unknown = set(named) - set(parts)
    if unknown:
        raise ConfigError(f"optimizer.param_groups names {sorted(unknown)}; valid names are {sorted(parts)}.")
    if "heads" in named and "decoder" not in named:
        parts = {"backbone": parts["backbone"], "heads": parts["decoder"] + parts["heads"]}
    groups, names, rest = [], [], []
    for part, params in parts.items():
        if part in named:
            g = named[part]
            wd = oc.weight_decay if g.weight_decay is None else g.weight_decay
            groups.append({"params": params, "lr": g.lr, "weight_decay": wd})
            names.append(part)
        else:
            rest += params
    if rest:
        groups.append({"params": rest, "lr": oc.lr, "weight_decay": oc.weight_decay})
        names.append("default")
    if oc.type == "sgd":
        opt = torch.optim.SGD(groups, lr=oc.lr, momentum=oc.momentum, weight_decay=oc.weight_decay)
    elif oc.type == "adam":
        opt = torch.optim.Adam(groups, lr=oc.lr, weight_decay=oc.weight_decay)
    else:
        opt = torch.optim.AdamW(groups, lr=oc.lr, weight_decay=oc.weight_decay)
    return opt, names


def backward_and_step(
    model, cfg: CabrucaConfig, device, precision: str = "32"
) -> Callable[[torch.Tensor], None]:
    """`step(loss)`: the backward pass and optimizer step exactly as the trainer takes them (the config's
    optimizer and parameter groups, loss scaling, the non-finite guard, gradient clipping, zeroed grads),
    for the benches, which time cabruca's training step without the loop around it."""
    stepper = OptimizerStepper(
        build_optimizer(model, cfg)[0],
        precision=parse_precision(precision, device),
        clip_grad_norm=cfg.training.gradient_clip,
    )

    def step(loss: torch.Tensor) -> None:
        stepper.backward(loss)
        stepper.step()

    return step


def build_lr_schedule(
    cfg: CabrucaConfig, base_lrs: list[float], steps_per_epoch: int
) -> tuple[Schedule, str]:
    """The `scheduler` config section translated to common's ScheduleConfig. Returns (schedule, interval):
    onecycle steps per optimizer step, every other schedule per epoch (plateau reads the monitored metric)."""
    sc, epochs = cfg.scheduler, cfg.training.num_epochs
    kind = {"none": "constant", "warm_restarts": "cosine_restarts"}.get(sc.type, sc.type)
    common_cfg = ScheduleConfig(
        name=kind,
        interval="step" if kind == "onecycle" else "epoch",
        min_lr=sc.eta_min,
        warmup_steps=sc.warmup_steps if kind == "cosine" else 0,
        pct_start=sc.pct_start,
        div_factor=sc.div_factor,
        final_div_factor=sc.final_div_factor,
        T_0=sc.T_0,
        T_mult=sc.T_mult,
        factor=sc.factor,
        patience=sc.patience,
        mode="min" if cfg.training.minimize_metric else "max",
    )
    if kind == "onecycle":
        peaks = (
            [sc.max_lr] * len(base_lrs)
            if sc.max_lr is not None and not cfg.optimizer.param_groups
            else base_lrs
        )
        total = max(epochs * steps_per_epoch, 2)
        return build_schedule(common_cfg, peaks, total), "step"
    total = sc.T_max or epochs
    if kind == "cosine":
        total = max(total, sc.warmup_steps + 1)
    return build_schedule(common_cfg, base_lrs, total), "epoch"
