"""torch's fused Adam and AdamW with a shorter way to their kernel (the trainer's optimizers, `make_optimizer`).

A fused step is one kernel over every parameter, but torch reaches it through a Python walk over the
parameters (state checks, lists, grouping by device and dtype, options read per step): on the EGNN's 58
parameters about 0.6 ms, three times the kernel's time and over 1% of a small-graph training step. Once
every parameter has its state, `step` builds the kernel's lists straight from the optimizer's state, counts
the step for all parameters in one op (`_step_counts`) and calls the same fused update torch calls, so the
update is torch's to the bit.
Anything else (the first step, a closure, the float16 grad scaler's scale, a parameter without a
gradient, options the fused kernel takes otherwise) goes through torch's own step. State dicts are torch's.
"""

from __future__ import annotations

import torch

_NO_STATE: dict = {}


class _LeanFusedStep:
    """The `step` of a fused `torch.optim.Adam` subclass (AdamW included)."""

    def step(self, closure=None):
        groups = self.param_groups
        # torch's grad scaler hands a fused optimizer its scale and inf flags as these two attributes
        scaled = getattr(self, "grad_scale", None) is not None or getattr(self, "found_inf", None) is not None
        if closure is not None or scaled or not all(self._lean(group) for group in groups):
            return super().step(closure)
        with torch.no_grad():
            for index, group in enumerate(groups):
                params = group["params"]
                states = [self.state[p] for p in params]
                counts, steps = self._step_counts(index, states)
                beta1, beta2 = group["betas"]
                decoupled = group.get("decoupled_weight_decay", isinstance(self, torch.optim.AdamW))
                update = torch._fused_adamw_ if decoupled else torch._fused_adam_
                counts.add_(1)
                update(
                    params,
                    [p.grad for p in params],
                    [s["exp_avg"] for s in states],
                    [s["exp_avg_sq"] for s in states],
                    [],
                    steps,
                    amsgrad=False,
                    lr=group["lr"],
                    beta1=beta1,
                    beta2=beta2,
                    weight_decay=group["weight_decay"],
                    eps=group["eps"],
                    maximize=False,
                    grad_scale=None,
                    found_inf=None,
                )
        return None

    def _step_counts(self, index: int, states: list[dict]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Group `index`'s step counts [P] and, as views of it, the states' own "step" tensors.

        torch counts a step with a `_foreach_add_` over one scalar tensor per parameter, on CPU a loop of
        some 60 ops; as views of one tensor the counts take one op, and stay per-parameter tensors in the
        state dict (loaded back, they are made views again here)."""
        counters = self.__dict__.setdefault("_lean_step_counts", {})
        counts, steps = counters.get(index, (None, []))
        if len(steps) != len(states) or any(s["step"] is not v for s, v in zip(states, steps, strict=True)):
            counts = torch.stack([s["step"] for s in states])
            steps = list(counts.unbind(0))
            for state, step in zip(states, steps, strict=True):
                state["step"] = step
            counters[index] = (counts, steps)
        return counts, steps

    def _lean(self, group: dict) -> bool:
        """Whether the group's step is the plain fused update: options, gradients and state all as the short
        way takes them (one device and dtype, dense gradients, float lr, every parameter's state made)."""
        params = group["params"]
        if not params or not group["fused"] or isinstance(group["lr"], torch.Tensor):
            return False
        if group["amsgrad"] or group["maximize"] or group["capturable"] or group["differentiable"]:
            return False
        first = params[0]
        return all(
            p.grad is not None
            and not p.grad.is_sparse
            and p.device == first.device
            and p.dtype == first.dtype
            and "step" in self.state.get(p, _NO_STATE)
            for p in params
        )


class LeanFusedAdamW(_LeanFusedStep, torch.optim.AdamW):
    """`torch.optim.AdamW(..., fused=True)`, stepped the short way."""


class LeanFusedAdam(_LeanFusedStep, torch.optim.Adam):
    """`torch.optim.Adam(..., fused=True)`, stepped the short way."""
