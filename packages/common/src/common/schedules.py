"""Learning-rate schedules, framework-free.

Why hand-written: MLX has no plateau, one-cycle or warm-restart schedule, and every package should read the
same `ScheduleConfig`, so the schedules live once here as plain Python. Each one reproduces the values of its
`torch.optim.lr_scheduler` counterpart (the tests compare every step of full runs):

| here                          | torch                                                                      |
|-------------------------------|----------------------------------------------------------------------------|
| ConstantSchedule              | no scheduler (LinearLR warm-up when wrapped in WarmupSchedule)             |
| WarmupCosineSchedule          | SequentialLR([LinearLR(start_factor, total_iters=W), CosineAnnealingLR(T_max=total-W, eta_min)], [W]) |
| StepSchedule                  | StepLR                                                                     |
| ExponentialSchedule           | ExponentialLR                                                              |
| OneCycleSchedule              | OneCycleLR(three_phase=False), learning rate only (no momentum cycling)    |
| CosineWarmRestartsSchedule    | CosineAnnealingWarmRestarts                                                |
| ReduceOnPlateauSchedule       | ReduceLROnPlateau                                                          |
| WarmupSchedule(inner, W)      | SequentialLR([LinearLR(start_factor, total_iters=W), inner], [W])          |

Usage: build once, apply `schedule.lrs` to the optimizer, call `step()` once per `interval` unit (after the
optimizer step, as in torch) and apply the returned LRs (torch: `common.torch_support.apply_lrs`, MLX:
`optimizer.learning_rate = lrs[0]`). `lrs` after k calls to `step()` equals torch's `get_last_lr()` after k
calls to `scheduler.step()`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

from common.errors import CheckpointError, ConfigError

__all__ = [
    "SCHEDULE_NAMES",
    "ConstantSchedule",
    "CosineWarmRestartsSchedule",
    "ExponentialSchedule",
    "OneCycleSchedule",
    "ReduceOnPlateauSchedule",
    "Schedule",
    "ScheduleConfig",
    "StepSchedule",
    "WarmupCosineSchedule",
    "WarmupSchedule",
    "build_schedule",
]


def _lr_list(values: float | Sequence[float], what: str, n: int | None = None) -> list[float]:
    """One float per param group; a scalar is broadcast to `n` groups (or one group when `n` is None)."""
    out = [float(values)] * (n or 1) if isinstance(values, int | float) else [float(v) for v in values]
    if not out:
        raise ConfigError(f"{what} is empty: give one learning rate per parameter group.")
    if n is not None and len(out) != n:
        raise ConfigError(f"{what} has {len(out)} values but there are {n} parameter groups.")
    if any(not math.isfinite(v) or v < 0 for v in out):
        raise ConfigError(f"{what} must be finite and >= 0, got {out}.")
    return out


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


class Schedule:
    """Per-group learning rates advanced by `step()`.

    Closed-form subclasses only implement `_lr_at(group, t)`: the LR of group `group` after `t` steps.
    Stateful ones (plateau, warm-up wrapper) override `step` and the state hooks.
    """

    def __init__(self, base_lrs: float | Sequence[float]):
        self.base_lrs: list[float] = _lr_list(base_lrs, "base_lrs")
        self.last_step = 0  # number of step() calls so far
        self.lrs: list[float] = self._lrs_at(0)

    @property
    def lr(self) -> float:
        return self.lrs[0]

    def _lr_at(self, group: int, t: int) -> float:
        raise NotImplementedError

    def _lrs_at(self, t: int) -> list[float]:
        return [self._lr_at(g, t) for g in range(len(self.base_lrs))]

    def step(self, metric: float | None = None) -> list[float]:
        """Advance one unit (a step or an epoch, per the config's `interval`); returns the new LRs."""
        self.last_step += 1
        self.lrs = self._lrs_at(self.last_step)
        return list(self.lrs)

    # --- state: only progress is saved; hyper-parameters come from the config the run is rebuilt with ---
    def _extra_state(self) -> dict:
        return {}

    def _load_extra_state(self, d: dict) -> None:
        pass

    def state_dict(self) -> dict:
        return {
            "kind": type(self).__name__,
            "last_step": self.last_step,
            "lrs": list(self.lrs),
            **self._extra_state(),
        }

    def load_state_dict(self, d: dict) -> None:
        kind = d.get("kind")
        if kind != type(self).__name__:
            raise CheckpointError(
                f"The checkpoint's LR schedule is {kind!r} but this run builds {type(self).__name__!r}; "
                "resume with the schedule config the checkpoint was trained with."
            )
        if len(d["lrs"]) != len(self.base_lrs):
            raise CheckpointError(
                f"The checkpoint's LR schedule has {len(d['lrs'])} parameter groups, this run has "
                f"{len(self.base_lrs)}."
            )
        self.last_step = int(d["last_step"])
        self.lrs = [float(v) for v in d["lrs"]]
        self._load_extra_state(d)
        if type(self).step is Schedule.step and not self._extra_state():
            # A closed-form schedule is re-planned from the config the run is rebuilt with: resuming a finished
            # run with more epochs continues on the longer schedule instead of at the old one's final LR. With
            # the same config this gives back the saved LRs exactly.
            self.lrs = self._lrs_at(self.last_step)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(step={self.last_step}, lrs={self.lrs})"


class ConstantSchedule(Schedule):
    """The base LRs, forever."""

    def _lr_at(self, group: int, t: int) -> float:
        return self.base_lrs[group]


class WarmupCosineSchedule(Schedule):
    """Linear warm-up from `warmup_start_factor * base` to `base` over `warmup_steps`, then a half cosine
    down to `min_lr` at `total_steps`:

        t <  W: base * (f + (1 - f) * t / W)
        t >= W: min_lr + (base - min_lr) * (1 + cos(pi * (t - W) / (total - W))) / 2

    Equal to torch's SequentialLR(LinearLR, CosineAnnealingLR) for t <= total (torch needs f > 0; f = 0 is
    allowed here: the first step then runs at LR 0, as in timm / transformers warm-ups). After `total_steps`
    the LR stays at `min_lr` (torch's cosine would rise again).
    """

    def __init__(
        self,
        base_lrs: float | Sequence[float],
        total_steps: int,
        warmup_steps: int = 0,
        min_lr: float | Sequence[float] = 0.0,
        warmup_start_factor: float = 0.0,
    ):
        _require(warmup_steps >= 0, f"warmup_steps must be >= 0, got {warmup_steps}.")
        _require(
            total_steps > warmup_steps,
            f"total_steps ({total_steps}) must be larger than warmup_steps ({warmup_steps}) for a "
            "cosine schedule.",
        )
        _require(
            0.0 <= warmup_start_factor <= 1.0,
            f"warmup_start_factor must be in [0, 1], got {warmup_start_factor}.",
        )
        self.total_steps, self.warmup_steps, self.warmup_start_factor = (
            total_steps,
            warmup_steps,
            warmup_start_factor,
        )
        n = 1 if isinstance(base_lrs, int | float) else len(base_lrs)
        self.min_lrs = _lr_list(min_lr, "min_lr", n)
        super().__init__(base_lrs)

    def _lr_at(self, group: int, t: int) -> float:
        base, low = self.base_lrs[group], self.min_lrs[group]
        if t < self.warmup_steps:
            f = self.warmup_start_factor
            return base * (f + (1.0 - f) * t / self.warmup_steps)
        t_cos = min(t, self.total_steps) - self.warmup_steps
        return (
            low
            + (base - low) * (1.0 + math.cos(math.pi * t_cos / (self.total_steps - self.warmup_steps))) / 2.0
        )


class StepSchedule(Schedule):
    """base * gamma ** (t // step_size)  (torch StepLR)."""

    def __init__(self, base_lrs: float | Sequence[float], step_size: int, gamma: float = 0.1):
        _require(step_size >= 1, f"step_size must be >= 1, got {step_size}.")
        _require(gamma > 0, f"gamma must be > 0, got {gamma}.")
        self.step_size, self.gamma = step_size, gamma
        super().__init__(base_lrs)

    def _lr_at(self, group: int, t: int) -> float:
        return self.base_lrs[group] * self.gamma ** (t // self.step_size)


class ExponentialSchedule(Schedule):
    """base * gamma ** t  (torch ExponentialLR)."""

    def __init__(self, base_lrs: float | Sequence[float], gamma: float):
        _require(gamma > 0, f"gamma must be > 0, got {gamma}.")
        self.gamma = gamma
        super().__init__(base_lrs)

    def _lr_at(self, group: int, t: int) -> float:
        return self.base_lrs[group] * self.gamma**t


class OneCycleSchedule(Schedule):
    """1cycle (torch OneCycleLR, two phases). `base_lrs` are the MAX LRs.

    Phase 1 (steps 0 .. pct_start*total - 1): max/div_factor -> max; phase 2 (.. total - 1): max ->
    max/div_factor/final_div_factor, both annealed with `anneal` ("cos" or "linear"). torch refuses to step
    past `total_steps`; here the LR then stays at its value at `total_steps`.
    """

    def __init__(
        self,
        base_lrs: float | Sequence[float],
        total_steps: int,
        pct_start: float = 0.3,
        div_factor: float = 25.0,
        final_div_factor: float = 1e4,
        anneal: str = "cos",
    ):
        _require(total_steps >= 1, f"total_steps must be >= 1, got {total_steps}.")
        _require(0.0 <= pct_start <= 1.0, f"pct_start must be in [0, 1], got {pct_start}.")
        _require(
            div_factor > 0 and final_div_factor > 0,
            f"div_factor and final_div_factor must be > 0, got {div_factor}, {final_div_factor}.",
        )
        _require(anneal in ("cos", "linear"), f"anneal must be 'cos' or 'linear', got {anneal!r}.")
        self.total_steps, self.pct_start, self.anneal = total_steps, pct_start, anneal
        self.div_factor, self.final_div_factor = div_factor, final_div_factor
        # (end_step, which LR the phase starts from, which it ends at), as torch's _schedule_phases
        self._phases = [
            (float(pct_start * total_steps) - 1, "initial", "max"),
            (float(total_steps - 1), "max", "min"),
        ]
        super().__init__(base_lrs)

    def _anneal(self, start: float, end: float, pct: float) -> float:
        if self.anneal == "cos":
            return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
        return (end - start) * pct + start

    def _lr_at(self, group: int, t: int) -> float:
        peak = self.base_lrs[group]
        initial = peak / self.div_factor
        levels = {"initial": initial, "max": peak, "min": initial / self.final_div_factor}
        t = min(t, self.total_steps)
        start_step = 0.0
        for i, (end_step, start, end) in enumerate(self._phases):
            if t <= end_step or i == len(self._phases) - 1:
                # end_step == start_step only for degenerate tiny runs (torch divides by zero there)
                pct = (t - start_step) / (end_step - start_step) if end_step != start_step else 1.0
                return self._anneal(levels[start], levels[end], pct)
            start_step = end_step
        raise AssertionError("unreachable: the last phase always matches")


class CosineWarmRestartsSchedule(Schedule):
    """SGDR (torch CosineAnnealingWarmRestarts, stepped without an explicit epoch): cosine from base to
    eta_min over T_i steps, then restart with T_i *= T_mult."""

    def __init__(self, base_lrs: float | Sequence[float], T_0: int, T_mult: int = 1, eta_min: float = 0.0):
        _require(int(T_0) == T_0 and T_0 >= 1, f"T_0 must be an integer >= 1, got {T_0}.")
        _require(int(T_mult) == T_mult and T_mult >= 1, f"T_mult must be an integer >= 1, got {T_mult}.")
        self.T_0, self.T_mult, self.eta_min = int(T_0), int(T_mult), float(eta_min)
        self.T_i, self.T_cur = self.T_0, 0  # current cycle length, position in the cycle
        super().__init__(base_lrs)

    def _lrs_at(self, t: int) -> list[float]:
        # depends on (T_cur, T_i), which step() keeps; t is implied by them
        cos = (1 + math.cos(math.pi * self.T_cur / self.T_i)) / 2
        return [self.eta_min + (b - self.eta_min) * cos for b in self.base_lrs]

    def step(self, metric: float | None = None) -> list[float]:
        self.T_cur += 1
        if self.T_cur >= self.T_i:
            self.T_cur -= self.T_i
            self.T_i *= self.T_mult
        return super().step(metric)

    def _extra_state(self) -> dict:
        return {"T_cur": self.T_cur, "T_i": self.T_i}

    def _load_extra_state(self, d: dict) -> None:
        self.T_cur, self.T_i = int(d["T_cur"]), int(d["T_i"])


class ReduceOnPlateauSchedule(Schedule):
    """torch ReduceLROnPlateau: after more than `patience` steps without improving the metric by
    `threshold` (rel: a fraction of the best, abs: an amount), multiply every LR by `factor` (not below
    `min_lr`; changes smaller than `eps` are skipped), then ignore `cooldown` steps. `step(metric)` needs
    the metric; NaN never improves."""

    def __init__(
        self,
        base_lrs: float | Sequence[float],
        mode: str = "min",
        factor: float = 0.1,
        patience: int = 10,
        threshold: float = 1e-4,
        threshold_mode: str = "rel",
        cooldown: int = 0,
        min_lr: float | Sequence[float] = 0.0,
        eps: float = 1e-8,
    ):
        _require(mode in ("min", "max"), f"plateau mode must be 'min' or 'max', got {mode!r}.")
        _require(
            threshold_mode in ("rel", "abs"),
            f"threshold_mode must be 'rel' or 'abs', got {threshold_mode!r}.",
        )
        _require(0.0 < factor < 1.0, f"plateau factor must be in (0, 1), got {factor}.")
        _require(
            patience >= 0 and cooldown >= 0,
            f"patience and cooldown must be >= 0, got {patience}, {cooldown}.",
        )
        self.mode, self.factor, self.patience, self.threshold = mode, factor, patience, threshold
        self.threshold_mode, self.cooldown, self.eps = threshold_mode, cooldown, eps
        n = 1 if isinstance(base_lrs, int | float) else len(base_lrs)
        self.min_lrs = _lr_list(min_lr, "min_lr", n)
        self.best = math.inf if mode == "min" else -math.inf
        self.num_bad_steps = 0
        self.cooldown_counter = 0
        super().__init__(base_lrs)

    def _lrs_at(self, t: int) -> list[float]:
        return list(self.base_lrs)  # only the start; later LRs are state, changed by step()

    def _is_better(self, value: float) -> bool:
        if self.mode == "min":
            return value < (
                self.best * (1.0 - self.threshold)
                if self.threshold_mode == "rel"
                else self.best - self.threshold
            )
        return value > (
            self.best * (1.0 + self.threshold) if self.threshold_mode == "rel" else self.best + self.threshold
        )

    def step(self, metric: float | None = None) -> list[float]:
        if metric is None:
            raise ConfigError(
                "The 'plateau' LR schedule needs the monitored metric: call step(metric) with "
                "the validation value, or pick another schedule name."
            )
        value = float(metric)
        self.last_step += 1
        if self._is_better(value):
            self.best, self.num_bad_steps = value, 0
        else:
            self.num_bad_steps += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_steps = 0  # bad steps during cooldown do not count
        if self.num_bad_steps > self.patience:
            for g, old in enumerate(self.lrs):
                new = max(old * self.factor, self.min_lrs[g])
                if old - new > self.eps:
                    self.lrs[g] = new
            self.cooldown_counter, self.num_bad_steps = self.cooldown, 0
        return list(self.lrs)

    def _extra_state(self) -> dict:
        return {
            "best": self.best,
            "num_bad_steps": self.num_bad_steps,
            "cooldown_counter": self.cooldown_counter,
        }

    def _load_extra_state(self, d: dict) -> None:
        self.best = float(d["best"])
        self.num_bad_steps, self.cooldown_counter = int(d["num_bad_steps"]), int(d["cooldown_counter"])


class WarmupSchedule(Schedule):
    """Linear warm-up over `warmup_steps` (torch LinearLR(start_factor, total_iters=W)), then `inner` from
    its own step 0 (torch SequentialLR with milestone W). The inner schedule sees no metric during warm-up."""

    def __init__(self, inner: Schedule, warmup_steps: int, warmup_start_factor: float = 0.0):
        _require(warmup_steps >= 1, f"warmup_steps must be >= 1, got {warmup_steps}.")
        _require(
            0.0 <= warmup_start_factor <= 1.0,
            f"warmup_start_factor must be in [0, 1], got {warmup_start_factor}.",
        )
        self.inner, self.warmup_steps, self.warmup_start_factor = inner, warmup_steps, warmup_start_factor
        super().__init__(inner.base_lrs)

    def _lrs_at(self, t: int) -> list[float]:
        if t >= self.warmup_steps:
            return list(self.inner.lrs)
        f = self.warmup_start_factor
        return [b * (f + (1.0 - f) * t / self.warmup_steps) for b in self.base_lrs]

    def step(self, metric: float | None = None) -> list[float]:
        if self.last_step >= self.warmup_steps:  # past the milestone: the inner schedule advances
            self.inner.step(metric)
        return super().step(metric)

    def _extra_state(self) -> dict:
        return {"inner": self.inner.state_dict()}

    def _load_extra_state(self, d: dict) -> None:
        self.inner.load_state_dict(d["inner"])


SCHEDULE_NAMES = ("constant", "cosine", "step", "exponential", "onecycle", "cosine_restarts", "plateau")


@dataclass
class ScheduleConfig:
    """The shared LR-schedule config section every package reads."""

    name: str = "constant"  # constant | cosine | step | exponential | onecycle | cosine_restarts | plateau
    warmup_steps: int = 0  # linear warm-up length in `interval` units (all but onecycle, which has pct_start)
    warmup_start_factor: float = 0.0  # warm-up starts at this fraction of the base LR
    min_lr: float = 0.0  # floor: cosine's end value, cosine_restarts' eta_min, plateau's min_lr
    step_size: int = 30  # step: decay every step_size units
    gamma: float = 0.1  # step / exponential: decay factor
    pct_start: float = 0.3  # onecycle: fraction of the run spent rising
    div_factor: float = 25.0  # onecycle: start LR = max LR / div_factor
    final_div_factor: float = 1e4  # onecycle: end LR = start LR / final_div_factor
    anneal: str = "cos"  # onecycle: "cos" or "linear" annealing
    T_0: int = 10  # cosine_restarts: first cycle length
    T_mult: int = 1  # cosine_restarts: cycle length multiplier
    factor: float = 0.1  # plateau: LR multiplier on a plateau
    patience: int = 10  # plateau: non-improving units tolerated before reducing
    mode: str = "min"  # plateau: "min" or "max" of the monitored metric
    threshold: float = 1e-4  # plateau: improvement that counts (a fraction of the best, or an amount)
    threshold_mode: str = "rel"  # plateau: "rel" (fraction) or "abs" (amount)
    cooldown: int = 0  # plateau: units to wait after a reduction
    interval: str = "epoch"  # "epoch" | "step": when the training loop calls step()


def build_schedule(cfg: ScheduleConfig, base_lrs: float | Sequence[float], total_steps: int) -> Schedule:
    """The schedule `cfg.name` for `base_lrs` (one per param group); `total_steps` in `cfg.interval` units."""
    if cfg.name not in SCHEDULE_NAMES:
        raise ConfigError(f"Unknown LR schedule name {cfg.name!r}; valid names: {', '.join(SCHEDULE_NAMES)}.")
    _require(
        cfg.interval in ("epoch", "step"),
        f"schedule.interval must be 'epoch' or 'step', got {cfg.interval!r}.",
    )
    _require(cfg.warmup_steps >= 0, f"schedule.warmup_steps must be >= 0, got {cfg.warmup_steps}.")
    if cfg.name == "cosine":
        warmup = cfg.warmup_steps
        if total_steps >= 2 and warmup >= total_steps:
            # A short run (a demo with fewer epochs, a smoke test) would otherwise be refused after its data
            # loaded; warming up over the first half keeps the schedule's shape, and the log says so.
            warmup = total_steps // 2
            logging.getLogger("trainyard.schedules").warning(
                "LR warm-up shortened from %d to %d %s(s): this run has only %d",
                cfg.warmup_steps,
                warmup,
                cfg.interval,
                total_steps,
            )
        return WarmupCosineSchedule(base_lrs, total_steps, warmup, cfg.min_lr, cfg.warmup_start_factor)
    if cfg.name == "onecycle":
        _require(
            cfg.warmup_steps == 0,
            "The 'onecycle' schedule warms up by itself (pct_start); set schedule.warmup_steps=0.",
        )
        return OneCycleSchedule(
            base_lrs, total_steps, cfg.pct_start, cfg.div_factor, cfg.final_div_factor, cfg.anneal
        )
    inner: Schedule
    if cfg.name == "constant":
        inner = ConstantSchedule(base_lrs)
    elif cfg.name == "step":
        inner = StepSchedule(base_lrs, cfg.step_size, cfg.gamma)
    elif cfg.name == "exponential":
        inner = ExponentialSchedule(base_lrs, cfg.gamma)
    elif cfg.name == "cosine_restarts":
        inner = CosineWarmRestartsSchedule(base_lrs, cfg.T_0, cfg.T_mult, cfg.min_lr)
    else:  # plateau
        inner = ReduceOnPlateauSchedule(
            base_lrs,
            mode=cfg.mode,
            factor=cfg.factor,
            patience=cfg.patience,
            threshold=cfg.threshold,
            threshold_mode=cfg.threshold_mode,
            cooldown=cfg.cooldown,
            min_lr=cfg.min_lr,
        )
    return WarmupSchedule(inner, cfg.warmup_steps, cfg.warmup_start_factor) if cfg.warmup_steps else inner
