"""Every schedule against torch.optim.lr_scheduler over full runs, two param groups with different LRs."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
from torch.optim import lr_scheduler as tl

from common.errors import CheckpointError, ConfigError
from common.schedules import (
    SCHEDULE_NAMES,
    ConstantSchedule,
    CosineWarmRestartsSchedule,
    ExponentialSchedule,
    OneCycleSchedule,
    ReduceOnPlateauSchedule,
    ScheduleConfig,
    StepSchedule,
    WarmupCosineSchedule,
    WarmupSchedule,
    build_schedule,
)

BASE = [0.1, 0.02]
STEPS = 200


def _optimizer() -> torch.optim.SGD:
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3))
    return torch.optim.SGD(
        [{"params": [a], "lr": BASE[0]}, {"params": [b], "lr": BASE[1]}], lr=BASE[0], momentum=0.9
    )


def _torch_run(make, steps: int, metrics=None) -> list[list[float]]:
    """LRs after 0..steps calls of torch's scheduler.step()."""
    opt = _optimizer()
    sched = make(opt)
    out = [[g["lr"] for g in opt.param_groups]]
    for t in range(steps):
        opt.step()  # no grads: a no-op, but keeps torch from warning about the call order
        sched.step(metrics[t]) if metrics is not None else sched.step()
        out.append([g["lr"] for g in opt.param_groups])
    return out


def _ours_run(schedule, steps: int, metrics=None) -> list[list[float]]:
    out = [list(schedule.lrs)]
    for t in range(steps):
        out.append(schedule.step(metrics[t] if metrics is not None else None))
    return out


def _same(ours, ref):
    assert len(ours) == len(ref)
    for t, (a, b) in enumerate(zip(ours, ref, strict=True)):
        assert a == pytest.approx(b, rel=1e-9, abs=1e-15), f"step {t}: ours {a} torch {b}"


def _plateau_metrics(n: int) -> list[float]:
    """Improves, stalls, improves a little (below / above threshold), stalls, with a NaN inside."""
    vals, v = [], 1.0
    for t in range(n):
        if t % 40 < 10:
            v *= 0.9
        elif t % 40 < 20:
            v *= 1 - 1e-6  # below the default relative threshold: counts as a plateau
        vals.append(v if t != 55 else math.nan)
    return vals


@pytest.mark.parametrize("warmup, start", [(20, 0.1), (1, 0.5), (0, 1.0)])
def test_warmup_cosine_matches_sequential_lr(warmup, start):
    def make(opt):
        cosine = tl.CosineAnnealingLR(opt, T_max=STEPS - warmup, eta_min=1e-3)
        if warmup == 0:
            return cosine
        linear = tl.LinearLR(opt, start_factor=start, total_iters=warmup)
        return tl.SequentialLR(opt, [linear, cosine], milestones=[warmup])

    ours = WarmupCosineSchedule(BASE, STEPS, warmup_steps=warmup, min_lr=1e-3, warmup_start_factor=start)
    _same(_ours_run(ours, STEPS), _torch_run(make, STEPS))
    assert ours.step() == pytest.approx([1e-3, 1e-3])  # past the end: stays at min_lr


def test_warmup_cosine_from_zero_follows_formula():
    # torch's LinearLR refuses start_factor=0, so check the documented formula directly
    s = WarmupCosineSchedule(BASE, total_steps=10, warmup_steps=4)
    lrs = [s.lr] + [s.step()[0] for _ in range(10)]
    assert lrs[:5] == pytest.approx([0.0, 0.025, 0.05, 0.075, 0.1])
    assert lrs[7] == pytest.approx(0.1 * (1 + math.cos(math.pi * 3 / 6)) / 2)
    assert lrs[10] == pytest.approx(0.0, abs=1e-15)


def test_step_and_exponential_match_torch():
    _same(
        _ours_run(StepSchedule(BASE, step_size=30, gamma=0.5), STEPS),
        _torch_run(lambda o: tl.StepLR(o, step_size=30, gamma=0.5), STEPS),
    )
    _same(
        _ours_run(ExponentialSchedule(BASE, gamma=0.97), STEPS),
        _torch_run(lambda o: tl.ExponentialLR(o, gamma=0.97), STEPS),
    )


@pytest.mark.parametrize("anneal, pct", [("cos", 0.3), ("linear", 0.25), ("cos", 0.137)])
def test_onecycle_matches_torch(anneal, pct):
    def make(opt):
        return tl.OneCycleLR(
            opt,
            max_lr=BASE,
            total_steps=STEPS,
            pct_start=pct,
            anneal_strategy=anneal,
            cycle_momentum=False,
            div_factor=20.0,
            final_div_factor=300.0,
        )

    ours = OneCycleSchedule(
        BASE, STEPS, pct_start=pct, div_factor=20.0, final_div_factor=300.0, anneal=anneal
    )
    # torch allows exactly total_steps calls; ours then holds the last value instead of raising
    _same(_ours_run(ours, STEPS), _torch_run(make, STEPS))
    last = list(ours.lrs)
    assert ours.step() == last


@pytest.mark.parametrize("t0, mult", [(10, 1), (7, 2), (1, 3)])
def test_warm_restarts_match_torch(t0, mult):
    ours = CosineWarmRestartsSchedule(BASE, T_0=t0, T_mult=mult, eta_min=1e-4)
    _same(
        _ours_run(ours, STEPS),
        _torch_run(lambda o: tl.CosineAnnealingWarmRestarts(o, T_0=t0, T_mult=mult, eta_min=1e-4), STEPS),
    )


PLATEAU_CASES = [
    {},
    {"mode": "min", "factor": 0.5, "patience": 3, "threshold": 1e-3, "threshold_mode": "abs", "cooldown": 4},
    {
        "mode": "max",
        "factor": 0.3,
        "patience": 2,
        "threshold": 0.01,
        "threshold_mode": "rel",
        "cooldown": 1,
        "min_lr": [1e-3, 5e-4],
    },
    {
        "mode": "max",
        "factor": 0.7,
        "patience": 0,
        "threshold": 1e-4,
        "threshold_mode": "abs",
        "min_lr": 0.05,
        "eps": 1e-3,
    },
]


@pytest.mark.parametrize("kw", PLATEAU_CASES)
def test_plateau_matches_torch(kw):
    metrics = _plateau_metrics(STEPS)
    if kw.get("mode") == "max":
        metrics = [10.0 - m for m in metrics]  # rising, with the same plateaus
    ours = _ours_run(ReduceOnPlateauSchedule(BASE, **kw), STEPS, metrics)
    ref = _torch_run(lambda o: tl.ReduceLROnPlateau(o, **kw), STEPS, metrics)
    _same(ours, ref)
    assert ours[-1] != ours[0]  # the sequence really did trigger reductions


def test_warmup_wrapper_matches_sequential_lr():
    def make(opt):
        return tl.SequentialLR(
            opt,
            [tl.LinearLR(opt, start_factor=0.25, total_iters=15), tl.StepLR(opt, step_size=20, gamma=0.5)],
            milestones=[15],
        )

    ours = WarmupSchedule(StepSchedule(BASE, step_size=20, gamma=0.5), 15, warmup_start_factor=0.25)
    _same(_ours_run(ours, STEPS), _torch_run(make, STEPS))


def test_warmup_then_plateau_reduces_only_after_warmup():
    s = WarmupSchedule(ReduceOnPlateauSchedule(BASE, patience=0, factor=0.5), 3, warmup_start_factor=0.5)
    lrs = [s.step(1.0) for _ in range(6)]  # a flat metric: every post-warm-up step after the first is "bad"
    assert lrs[0] == pytest.approx([0.1 * (0.5 + 0.5 / 3), 0.02 * (0.5 + 0.5 / 3)])
    assert lrs[2] == pytest.approx(BASE)  # milestone: the inner schedule starts at the base LRs
    assert lrs[3] == pytest.approx(BASE)  # first metric seen by the plateau sets `best`
    assert lrs[4] == pytest.approx([0.05, 0.01])


CONFIGS = [
    ScheduleConfig(name="constant"),
    ScheduleConfig(name="constant", warmup_steps=5, warmup_start_factor=0.1),
    ScheduleConfig(name="cosine", warmup_steps=7, min_lr=1e-4),
    ScheduleConfig(name="step", step_size=9, gamma=0.5, warmup_steps=3),
    ScheduleConfig(name="exponential", gamma=0.9),
    ScheduleConfig(name="onecycle", pct_start=0.4, anneal="linear"),
    ScheduleConfig(name="cosine_restarts", T_0=6, T_mult=2, min_lr=1e-5),
    ScheduleConfig(name="plateau", patience=2, cooldown=1, factor=0.5),
    ScheduleConfig(name="plateau", patience=1, warmup_steps=4, mode="max", threshold_mode="abs"),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.name}-w{c.warmup_steps}")
def test_state_dict_resume_continues_identically(cfg, tmp_path):
    checkpoint = pytest.importorskip("common.checkpoint")
    total, cut = 60, 23
    metrics = _plateau_metrics(total)
    if cfg.mode == "max":
        metrics = [10.0 - m for m in metrics]  # rising, with the same plateaus
    whole = build_schedule(cfg, BASE, total)
    expected = _ours_run(whole, total, metrics)

    first = build_schedule(cfg, BASE, total)
    head = _ours_run(first, cut, metrics)
    json.dumps(first.state_dict())  # plain JSON-able values only (the checkpoint skeleton is JSON)
    path = checkpoint.save_checkpoint(tmp_path / "s.ckpt", {"schedule": first.state_dict()})
    saved = checkpoint.load_checkpoint(path)["schedule"]
    resumed = build_schedule(cfg, BASE, total)
    resumed.load_state_dict(saved)
    tail = [resumed.step(m) for m in metrics[cut:]]
    assert head + tail == expected


def test_build_schedule_covers_every_name():
    kinds = {name: type(build_schedule(ScheduleConfig(name=name), BASE, 100)) for name in SCHEDULE_NAMES}
    assert kinds == {
        "constant": ConstantSchedule,
        "cosine": WarmupCosineSchedule,
        "step": StepSchedule,
        "exponential": ExponentialSchedule,
        "onecycle": OneCycleSchedule,
        "cosine_restarts": CosineWarmRestartsSchedule,
        "plateau": ReduceOnPlateauSchedule,
    }
    assert isinstance(
        build_schedule(ScheduleConfig(name="exponential", warmup_steps=2), 0.1, 10), WarmupSchedule
    )
    # options reach the schedule
    assert build_schedule(ScheduleConfig(name="onecycle", anneal="linear"), BASE, 10).anneal == "linear"
    plateau = build_schedule(
        ScheduleConfig(name="plateau", threshold_mode="abs", cooldown=3, min_lr=0.01), BASE, 10
    )
    assert (plateau.threshold_mode, plateau.cooldown, plateau.min_lrs) == ("abs", 3, [0.01, 0.01])


def test_build_schedule_errors_are_clear():
    with pytest.raises(ConfigError) as e:
        build_schedule(ScheduleConfig(name="cosin"), BASE, 100)
    assert all(name in str(e.value) for name in SCHEDULE_NAMES)
    with pytest.raises(ConfigError, match="larger than warmup_steps"):
        WarmupCosineSchedule(BASE, 10, warmup_steps=10)
    with pytest.raises(ConfigError, match="pct_start"):
        build_schedule(ScheduleConfig(name="onecycle", warmup_steps=10), BASE, 100)
    with pytest.raises(ConfigError, match="interval"):
        build_schedule(ScheduleConfig(interval="batch"), BASE, 100)
    with pytest.raises(ConfigError, match="factor"):
        build_schedule(ScheduleConfig(name="plateau", factor=1.5), BASE, 100)


def test_plateau_without_metric_and_wrong_state_are_refused():
    with pytest.raises(ConfigError, match="metric"):
        ReduceOnPlateauSchedule(BASE).step()
    with pytest.raises(CheckpointError, match="StepSchedule"):
        ConstantSchedule(BASE).load_state_dict(StepSchedule(BASE, 3).state_dict())
    with pytest.raises(CheckpointError, match="parameter groups"):
        ConstantSchedule([0.1]).load_state_dict(ConstantSchedule(BASE).state_dict())


def test_scalar_base_lr_and_lr_property():
    s = ExponentialSchedule(0.5, gamma=0.5)
    assert s.lrs == [0.5] and s.lr == 0.5
    s.step()
    assert s.lr == 0.25


def test_schedules_module_does_not_import_torch():
    code = "import sys, common.schedules; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_resuming_with_a_longer_plan_continues_on_the_new_schedule():
    # A finished 10-step cosine run resumed with 20 steps: the LR at step 10 is the new plan's, not 0.
    finished = build_schedule(ScheduleConfig(name="cosine", min_lr=0.0), 1.0, total_steps=10)
    for _ in range(10):
        finished.step()
    assert finished.lr == pytest.approx(0.0)
    longer = build_schedule(ScheduleConfig(name="cosine", min_lr=0.0), 1.0, total_steps=20)
    longer.load_state_dict(finished.state_dict())
    assert longer.last_step == 10 and longer.lr == pytest.approx(0.5)
    same = build_schedule(ScheduleConfig(name="cosine", min_lr=0.0), 1.0, total_steps=10)
    same.load_state_dict(finished.state_dict())
    assert same.lrs == finished.lrs  # the same plan gives back exactly the saved LRs


def test_a_run_shorter_than_its_warmup_warms_up_over_its_first_half(caplog):
    # e.g. a demo asked for fewer epochs than its config's warm-up: shortened, with a warning, not refused
    with caplog.at_level("WARNING", logger="trainyard.schedules"):
        schedule = build_schedule(ScheduleConfig(name="cosine", warmup_steps=10), 1.0, 6)
    assert "warm-up shortened from 10 to 3" in caplog.text
    lrs = [schedule.lr] + [schedule.step()[0] for _ in range(6)]
    assert lrs[3] == pytest.approx(1.0) and lrs[0] < lrs[1] < lrs[2] < lrs[3] > lrs[4] > lrs[5]
