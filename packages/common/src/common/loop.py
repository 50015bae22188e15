"""The training loop every package runs: counters, cadence, accumulation, schedule, stopping, exact resume.

A package hands the loop a `Task` (its batches, the forward + backward of one micro-batch, the optimizer
step, validation, its state) and keeps only what is truly its own: data, model, losses, metrics. Everything
that every trainer repeats lives here once, framework-free: torch and MLX specifics stay in the task.

The counters, one meaning everywhere (logs, checkpoints, callbacks):
    pos.epoch   the epoch in progress, from 0 in code and state (people see epoch + 1)
    pos.batch   micro-batches of that epoch already trained (the resume point inside the epoch)
    pos.step    optimizer steps of the whole run (`global_step`): one per `accumulate` micro-batches

One epoch, flat:

    for batch in task.batches(epoch, start=pos.batch):
        out = task.micro_step(batch, scale)          # forward + backward of loss * scale (scale = 1/group size)
        pos.batch += 1
        if the step's micro-batches are all in:
            grad_norm = task.optimizer_step(); pos.step += 1
            schedule (per step), log every N steps, callbacks.on_train_batch_end (checkpoints, stop requests)
    validate, schedule (per epoch), log the epoch row, callbacks.on_train_epoch_end (early stopping, checkpoints)

The last optimizer step of an epoch may gather fewer micro-batches than `accumulate` (the epoch's batch count
need not divide); its scale is 1/(its own size), so every step averages its micro-batches' losses exactly once.

Exact resume: a checkpoint holds the task's state, the loop's position and running epoch sums, the schedule,
every callback's state and the RNG states of python, numpy, torch and MLX, all captured at an optimizer-step
boundary. Data order must be a pure function of (seed, epoch) (see `common.sampler`), so a resumed run asks
the task for the epoch's batches from `pos.batch` and replays nothing.

Several processes: each draws from generators of its own (rank r > 0 splits off when a new run starts,
`split_rank_streams`), and every process's RNG state travels into rank 0's checkpoint: the processes gather
them (one collective) at every point where rank 0 may write one. A collective that fails because another
process died ends the run with an error naming the lost rank (`common.distributed.lost_process_error`).
"""

from __future__ import annotations

import contextlib
import logging
import shlex
import signal
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.checkpoint import load_checkpoint
from common.distributed import (
    all_gather_object,
    get_rank,
    get_world_size,
    is_main_process,
    lost_process_error,
)
from common.errors import CheckpointError, ConfigError
from common.runs import release_run_folders
from common.schedules import ConstantSchedule, ReduceOnPlateauSchedule, Schedule, WarmupSchedule
from common.seeding import capture_rng_state, restore_rng_state, split_rank_streams

__all__ = ["FitResult", "Loop", "Plan", "Position", "Task", "fit"]

log = logging.getLogger("trainyard.loop")

# Exit statuses a scheduler (SLURM, a shell) reads as "killed by this signal": 128 + the signal number.
SIGNAL_EXIT_CODES = {"SIGINT": 128 + signal.SIGINT, "SIGTERM": 128 + signal.SIGTERM}


class Task:
    """What a package supplies to the loop. Subclass it and implement the first six methods.

    Batches must be resumable: `batches(epoch, start)` yields the epoch's micro-batches from index `start`,
    the same ones in the same order whenever it is asked (data order a pure function of seed and epoch).
    """

    # At most this many validation batches per `validate()` (None: all). `--fast-dev-run N` sets it to N, so a
    # check of a large dataset validates N batches rather than the whole split.
    val_batch_limit: int | None = None

    def num_batches(self, epoch: int) -> int:
        """Micro-batches in epoch `epoch` (on this process)."""
        raise NotImplementedError

    def batches(self, epoch: int, start: int) -> Iterable[Any]:
        """The epoch's micro-batches from index `start` on. If the iterator has `close()`, the loop calls it."""
        raise NotImplementedError

    def micro_step(self, batch: Any, scale: float) -> Mapping[str, float]:
        """Forward and backward of one micro-batch with the loss multiplied by `scale`; returns the batch's
        metrics as floats (the unscaled loss under "loss"), which the loop averages per step and per epoch."""
        raise NotImplementedError

    def optimizer_step(self) -> float | None:
        """Clip, update, zero the gradients; returns the gradient norm before clipping (None if skipped)."""
        raise NotImplementedError

    def validate(self) -> Mapping[str, float]:
        """Validation metrics, unprefixed ({"loss": ..., "accuracy": ...}); the loop logs them as val/<name>."""
        raise NotImplementedError

    def state_dict(self) -> dict:
        """Model, optimizer, scaler...: a numpy state tree (`common.torch_support` / `common.mlx_support`)."""
        raise NotImplementedError

    def load_state_dict(self, state: dict) -> None:
        raise NotImplementedError

    # -- optional -------------------------------------------------------------------------------------------
    def set_lrs(self, lrs: Sequence[float]) -> None:
        """Put the schedule's learning rates (one per parameter group) into the optimizer."""

    def reduce_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        """Mean of each metric over all processes (distributed runs); one process: unchanged."""
        return metrics

    def no_sync(self) -> contextlib.AbstractContextManager:
        """Context for a micro-batch that does not end its optimizer step: data-parallel tasks skip the
        gradient all-reduce there (it runs once, on the step's last micro-batch)."""
        return contextlib.nullcontext()


@dataclass
class Plan:
    """How long to train and how often things happen. Steps are optimizer steps."""

    max_epochs: int = 1  # epochs to train (a resumed run continues up to this)
    max_steps: int | None = None  # stop after this many optimizer steps (None: no limit)
    accumulate: int = 1  # micro-batches per optimizer step
    log_every_n_steps: int = 50  # train/<metric>_step rows every N optimizer steps (0: never)
    val_every_n_epochs: int = 1  # validate after every N epochs, and after the last (0: only the last)
    val_every_n_steps: int = 0  # also validate every N optimizer steps (0: never)
    schedule_interval: str = "epoch"  # "epoch" | "step": when the LR schedule advances
    schedule_monitor: str = "val/loss"  # the metric a plateau schedule watches

    def __post_init__(self) -> None:
        if self.max_epochs < 0:
            raise ConfigError(f"the number of epochs must be >= 0, got {self.max_epochs}.")
        if self.max_steps is not None and self.max_steps < 0:
            raise ConfigError(f"max_steps must be >= 0 (or unset), got {self.max_steps}.")
        if self.accumulate < 1:
            raise ConfigError(f"gradient accumulation must be >= 1 micro-batches, got {self.accumulate}.")
        for name in ("log_every_n_steps", "val_every_n_epochs", "val_every_n_steps"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}.")
        if self.schedule_interval not in ("epoch", "step"):
            raise ConfigError(
                f"the schedule interval must be 'epoch' or 'step', got {self.schedule_interval!r}."
            )


@dataclass
class Position:
    epoch: int = 0  # epoch in progress, from 0
    batch: int = 0  # micro-batches of that epoch done
    step: int = 0  # optimizer steps of the run (global_step)


@dataclass
class FitResult:
    """How a `fit` ended; packages add what is theirs (run folder, test metrics) in the same object."""

    epochs_done: int  # completed epochs
    global_step: int  # optimizer steps
    metrics: dict[str, float] = field(default_factory=dict)  # the last epoch row (train/..., val/...)
    stopped_early: bool = False  # a callback (early stopping) or max_steps ended the run before max_epochs
    stop_reason: str | None = None
    interrupted: str | None = None  # "SIGINT" / "SIGTERM" when a signal stopped the run
    checkpoint: Path | None = None  # the newest checkpoint written: resume from it
    best_checkpoint: Path | None = None
    run_dir: Path | None = None
    test: dict[str, float] | None = None

    @property
    def exit_code(self) -> int:
        """0 for a finished run; 130 / 143 when SIGINT / SIGTERM stopped it (the run did not finish)."""
        return SIGNAL_EXIT_CODES.get(self.interrupted or "", 0)


class Loop:
    """One training run of `task` per `plan`; see the module docstring. `fit()` runs it."""

    def __init__(
        self,
        task: Task,
        plan: Plan,
        *,
        callbacks: Sequence[Any] = (),
        schedule: Schedule | None = None,
        resume: dict | str | Path | None = None,
        resume_path: str | Path | None = None,
        command: str = "",
    ) -> None:
        """`resume`: a checkpoint path, or a checkpoint already loaded (then `resume_path` says where it
        came from, so checkpoint bookkeeping is kept only when it resumes in its own folder)."""
        from common.callbacks import CallbackList

        self.task, self.plan = task, plan
        self.schedule = schedule or ConstantSchedule([0.0])
        if plan.schedule_interval == "step" and _needs_metric(self.schedule):
            raise ConfigError(
                f"a plateau LR schedule watches {plan.schedule_monitor}, which exists once per validation; "
                "set its interval to 'epoch'."
            )
        # how to start this run again, e.g. "python -m dtgcnn.train --data-dir /data" (for the resume hint)
        self.command = command
        self.callbacks = CallbackList(callbacks)
        self.pos = Position()
        self.should_stop = False  # a callback sets it (with stop_reason) to end the run after this step
        self.stop_reason: str | None = None
        self.lrs_used: list[float] = list(self.schedule.lrs)  # the LRs of the optimizer step just taken
        self.last_checkpoint: Path | None = None
        self.resume_path: Path | None = Path(resume_path) if resume_path is not None else None
        self._epoch_sums: dict[str, float] = {}  # micro-batch metric sums of the epoch in progress
        self._epoch_micro = 0
        self._step_sums: dict[str, float] = {}  # micro-batch metric sums of the step in progress
        self._step_micro = 0
        # (step, every process's RNG state) as last gathered, for rank 0's checkpoint at that step
        self._rank_rngs: tuple[int, list[dict]] | None = None
        self._gather_every: list[int] = []  # rank 0's step-checkpoint cadences, known to every process
        self._epoch_done = False  # between the end of an epoch and the start of the next
        self._signal: str | None = None  # the signal that stops the run (seen by any process)
        self._last_row: dict[str, float] = {}
        self._epoch_started = 0.0
        self._pending_resume = resume

    # -- state ----------------------------------------------------------------------------------------------
    def resume_position(self) -> Position:
        """Where a run resumed from a checkpoint taken now would start."""
        if self._epoch_done:
            return Position(self.pos.epoch + 1, 0, self.pos.step)
        return Position(self.pos.epoch, self.pos.batch, self.pos.step)

    def checkpoint_state(self) -> dict:
        """Everything a resumed run needs, at the current optimizer-step boundary."""
        at = self.resume_position()
        sums = {} if self._epoch_done else dict(self._epoch_sums)
        state = dict(self.task.state_dict())
        state.update(
            loop={
                "epoch": at.epoch,
                "batch": at.batch,
                "step": at.step,
                "epoch_sums": sums,
                "epoch_micro": 0 if self._epoch_done else self._epoch_micro,
                "world_size": get_world_size(),
            },
            # the same counters at the top level, for people and tools reading a checkpoint
            epoch=at.epoch,
            batch_in_epoch=at.batch,
            global_step=at.step,
            schedule=self.schedule.state_dict(),
            callbacks=self.callbacks.state_dicts(),
            rng=capture_rng_state(),
        )
        if self._rank_rngs is not None and self._rank_rngs[0] == at.step:
            state["rng_ranks"] = self._rank_rngs[1]  # one entry per process, rank order
        self.callbacks.on_save_checkpoint(self, state)
        return state

    def _restore(self, resume: dict | str | Path) -> None:
        if isinstance(resume, dict):
            state = resume
        else:
            self.resume_path = Path(resume)
            state = load_checkpoint(self.resume_path)
        missing = [k for k in ("loop", "schedule", "rng") if k not in state]
        if missing:
            raise CheckpointError(
                f"{self.resume_path or 'the checkpoint'} cannot resume a run: it has no {', '.join(missing)} "
                "entry (a weights-only or older file). Start a new run from it with the package's "
                "init-weights option instead."
            )
        at = state["loop"]
        _check_world_size(
            int(at.get("world_size", 1)),
            get_world_size(),
            int(at["epoch"]),
            int(at["batch"]),
            self.resume_path,
        )
        self.task.load_state_dict(state)
        self.schedule.load_state_dict(state["schedule"])
        self.callbacks.load_state_dicts(state.get("callbacks", {}))
        self.callbacks.on_load_checkpoint(self, state)
        self.pos = Position(int(at["epoch"]), int(at["batch"]), int(at["step"]))
        self._epoch_sums = {k: float(v) for k, v in at["epoch_sums"].items()}
        self._epoch_micro = int(at["epoch_micro"])
        # last: nothing above may draw from the restored generators
        _restore_rank_rng(state, int(at.get("world_size", 1)))
        log.info(
            "resumed at epoch %d, batch %d, step %d%s",
            self.pos.epoch + 1,
            self.pos.batch,
            self.pos.step,
            f" from {self.resume_path}" if self.resume_path else "",
        )

    # -- logging --------------------------------------------------------------------------------------------
    def log(self, metrics: Mapping[str, float]) -> None:
        """Send a row of metrics at the current optimizer step to every callback's `on_log` (the trackers)."""
        if metrics:
            self.callbacks.on_log(self, dict(metrics))

    # -- the run --------------------------------------------------------------------------------------------
    def fit(self) -> FitResult:
        from common.signals import GracefulStop

        if self._pending_resume is not None:
            self._restore(self._pending_resume)
            self._pending_resume = None
        else:
            split_rank_streams(get_rank())  # every process seeded alike; now each draws its own
        if get_world_size() > 1:
            self._gather_every = all_gather_object(self._step_checkpoint_cadences())[0]
        self.task.set_lrs(self.schedule.lrs)
        self.lrs_used = list(self.schedule.lrs)
        interrupted: str | None = None
        with GracefulStop() as stop:
            try:
                self.callbacks.on_fit_start(self)
                while self.pos.epoch < self.plan.max_epochs and not self.should_stop:
                    if not self._train_epoch(stop):
                        interrupted = self._signal
                        break
                    if self.should_stop and self.pos.batch < self.task.num_batches(self.pos.epoch):
                        self._save_now()  # max_steps or a callback stopped mid-epoch: keep the state
                        break
                    self._end_epoch()
                result = self._result(interrupted)
                self.callbacks.on_fit_end(self, result)
            except BaseException as exc:
                self.callbacks.on_exception(self, exc)
                lost = lost_process_error(exc) if get_world_size() > 1 else None
                if lost is not None:  # another process died: say which, not just "connection lost"
                    raise lost from exc
                raise
            finally:
                release_run_folders()  # the run is over: its folder is no longer "this run's" to reopen
        return result

    def _train_epoch(self, stop) -> bool:
        """Train the rest of the epoch in progress; False when a signal interrupted it (state saved)."""
        task, plan, pos = self.task, self.plan, self.pos
        total = task.num_batches(pos.epoch)
        self._epoch_done = False
        self._epoch_started = time.perf_counter()
        if pos.batch == 0:
            self.callbacks.on_train_epoch_start(self)
        batches = iter(task.batches(pos.epoch, pos.batch))
        try:
            for batch in batches:
                group_start = pos.batch - pos.batch % plan.accumulate  # first micro-batch of this step
                group_size = min(plan.accumulate, total - group_start)
                ends_step = pos.batch + 1 - group_start == group_size
                with contextlib.nullcontext() if ends_step else task.no_sync():
                    out = task.micro_step(batch, 1.0 / group_size)
                pos.batch += 1
                _add(self._step_sums, out)
                self._step_micro += 1
                if not ends_step:
                    continue
                self._after_optimizer_step(task.optimizer_step(), stop)
                if self._signal is not None:
                    self._save_now()
                    log.warning(
                        "received %s: stopped after step %d; resume with: %s",
                        self._signal,
                        pos.step,
                        self.resume_hint(),
                    )
                    return False
                if self.should_stop:
                    break
        finally:
            close = getattr(batches, "close", None)
            if close is not None:
                close()  # stops a prefetch thread now, also when a step raised
        return True

    def _after_optimizer_step(self, grad_norm: float | None, stop) -> None:
        plan, pos = self.plan, self.pos
        pos.step += 1
        micro = self._step_micro
        step = {k: v / micro for k, v in self._step_sums.items()}
        if grad_norm is not None:
            step["grad_norm"] = float(grad_norm)
        self._step_sums, self._step_micro = {}, 0
        self.lrs_used = list(self.schedule.lrs)
        if plan.schedule_interval == "step":
            self.task.set_lrs(self.schedule.step())
        # One reduction per step: the step's metrics become means over all processes, and the signal flags
        # travel with them, so a process that saw no signal (or saw it later) stops at the same step too.
        got = stop.signal_name if stop.requested else None
        step.update({"#SIGINT": float(got == "SIGINT"), "#SIGTERM": float(got == "SIGTERM")})
        step = self.task.reduce_metrics(step)
        flags = {name: step.pop(f"#{name}") for name in ("SIGINT", "SIGTERM")}
        self._signal = next((name for name, seen in flags.items() if seen > 0), None)
        # The epoch sums are built from reduced values, so they are the same on every process and the one
        # rank 0 checkpoints is right for all of them on resume.
        _add(self._epoch_sums, {k: v * micro for k, v in step.items() if k != "grad_norm"})
        self._epoch_micro += micro
        if "grad_norm" in step:
            _add(self._epoch_sums, {"grad_norm": step["grad_norm"], "#grad_norm": 1.0})
        if plan.log_every_n_steps and pos.step % plan.log_every_n_steps == 0:
            self.log({f"train/{k}_step": v for k, v in step.items()})
        if plan.val_every_n_steps and pos.step % plan.val_every_n_steps == 0:
            self.log(self._validate())
        if any(pos.step % n == 0 for n in self._gather_every):
            self._gather_rank_rngs()  # rank 0 may write a step checkpoint in the callbacks below
        self.callbacks.on_train_batch_end(self, step)
        if self._signal is None and stop.requested and get_world_size() == 1:
            self._signal = stop.signal_name  # one process: a signal sent during the callbacks counts now
        if plan.max_steps is not None and pos.step >= plan.max_steps and not self.should_stop:
            self.should_stop, self.stop_reason = True, f"reached max_steps={plan.max_steps}"

    def _validate(self) -> dict[str, float]:
        metrics = {f"val/{k}": float(v) for k, v in self.task.validate().items()}
        self.callbacks.on_validation_end(self, metrics)
        return metrics

    def _end_epoch(self) -> None:
        plan, pos = self.plan, self.pos
        n = max(self._epoch_micro, 1)
        train = {f"train/{k}": v / n for k, v in self._epoch_sums.items() if not k.startswith("#")}
        if "#grad_norm" in self._epoch_sums:
            train["train/grad_norm"] = self._epoch_sums["grad_norm"] / self._epoch_sums["#grad_norm"]
        row = dict(train)  # already means over all processes (see _after_optimizer_step)
        last = pos.epoch + 1 == plan.max_epochs
        every = plan.val_every_n_epochs
        if last or (every and (pos.epoch + 1) % every == 0):
            row.update(self._validate())
        if plan.schedule_interval == "epoch":
            monitored = row.get(plan.schedule_monitor)
            if not _needs_metric(self.schedule):
                self.task.set_lrs(self.schedule.step())
            elif monitored is not None:
                self.task.set_lrs(self.schedule.step(monitored))
        row["epoch"] = float(pos.epoch + 1)
        row["system/epoch_time_s"] = time.perf_counter() - self._epoch_started
        self.log(row)
        self._last_row = row
        self._epoch_done = True
        self._gather_rank_rngs()  # before the epoch-end checkpoints
        self.callbacks.on_train_epoch_end(self, row)  # early stopping decides; checkpoints are written
        self.pos = Position(pos.epoch + 1, 0, pos.step)
        self._epoch_sums, self._epoch_micro, self._epoch_done = {}, 0, False

    def _save_now(self) -> None:
        from common.callbacks import ModelCheckpoint

        self._gather_rank_rngs()  # every process stops here (signal flags and max_steps are shared)
        savers = [cb for cb in self.callbacks if isinstance(cb, ModelCheckpoint)]
        if not savers and is_main_process():
            log.warning("stopped at step %d with no ModelCheckpoint callback: nothing saved", self.pos.step)
        for saver in savers:
            saver.save_step(self)

    def _step_checkpoint_cadences(self) -> list[int]:
        """The step cadences of this process's ModelCheckpoints (rank 0 alone has them in most packages)."""
        from common.callbacks import ModelCheckpoint

        savers = [cb for cb in self.callbacks if isinstance(cb, ModelCheckpoint)]
        return sorted({cb.every_n_steps for cb in savers if cb.every_n_steps > 0})

    def _gather_rank_rngs(self) -> None:
        """Every process's RNG state, for rank 0's next checkpoint at this step: a collective, so every process
        calls it at the same points (each epoch end, rank 0's step-checkpoint cadence, a stop mid-epoch)."""
        if get_world_size() > 1:
            self._rank_rngs = (self.resume_position().step, all_gather_object(capture_rng_state()))

    def resume_hint(self) -> str:
        """The command line part that resumes from the newest checkpoint, for log lines."""
        if self.last_checkpoint is None:
            return "(no checkpoint was written)"
        from common.cli import follow_up_command  # `uv run ` in front when this process runs under uv run

        return follow_up_command(f"{self.command} --resume {shlex.quote(str(self.last_checkpoint))}".strip())

    def _result(self, interrupted: str | None) -> FitResult:
        from common.callbacks import ModelCheckpoint

        best = next((cb.best_path for cb in self.callbacks if isinstance(cb, ModelCheckpoint)), None)
        early = self.should_stop and self.pos.epoch < self.plan.max_epochs
        return FitResult(
            epochs_done=self.pos.epoch,
            global_step=self.pos.step,
            metrics=dict(self._last_row),
            stopped_early=early and interrupted is None,
            stop_reason=self.stop_reason if early else None,
            interrupted=interrupted,
            checkpoint=self.last_checkpoint,
            best_checkpoint=best,
        )


def fit(
    task: Task,
    plan: Plan,
    *,
    callbacks: Sequence[Any] = (),
    schedule: Schedule | None = None,
    resume: dict | str | Path | None = None,
    resume_path: str | Path | None = None,
    command: str = "",
) -> FitResult:
    """Train `task` per `plan`: `Loop(...).fit()`."""
    loop = Loop(
        task,
        plan,
        callbacks=callbacks,
        schedule=schedule,
        resume=resume,
        resume_path=resume_path,
        command=command,
    )
    return loop.fit()


def _check_world_size(saved: int, now: int, epoch: int, batch: int, path: Path | None) -> None:
    """The rule for resuming on another number of processes: only at an epoch boundary.

    Inside an epoch the saved position counts each process's micro-batches of a global batch that spans
    `saved` processes; with another count the same index names other samples. At an epoch boundary the new
    run simply continues with its own global batch (per-process batch x processes x accumulation), a
    different optimisation from then on: the learning rate is not rescaled for it.
    """
    if saved == now:
        return
    where = f" ({path})" if path else ""
    if batch:
        raise CheckpointError(
            f"The checkpoint{where} was written by {saved} process(es) in the middle of epoch {epoch + 1}; "
            f"this run has {now}. Resume it with {saved} process(es), or resume from an end-of-epoch "
            "checkpoint (the run's last file) to continue with another number of processes."
        )
    log.warning(
        "resuming a %d-process run on %d process(es): the global batch changes from here on (the learning rate "
        "is left as it is)",
        saved,
        now,
    )


def _restore_rank_rng(state: dict, saved_world: int) -> None:
    """Each process takes back its own RNG state: rank 0 the checkpoint's `rng`, rank r its `rng_ranks[r]`.

    On another number of processes (or from a checkpoint without per-process states) rank 0 still takes
    `rng` and every other rank r splits its streams off from it with `split_rank_streams(r)`: a pure function
    of the checkpoint, so two resumes of it draw alike, but not the draws an unchanged run would have made.
    """
    rank, per_rank = get_rank(), state.get("rng_ranks")
    if rank > 0 and per_rank is not None and saved_world == get_world_size() == len(per_rank):
        restore_rng_state(per_rank[rank])
        return
    restore_rng_state(state["rng"])
    split_rank_streams(rank)


def _add(sums: dict[str, float], values: Mapping[str, float]) -> None:
    for k, v in values.items():
        sums[k] = sums.get(k, 0.0) + float(v)


def _needs_metric(schedule: Schedule) -> bool:
    """A plateau schedule (possibly after warm-up) advances only with the monitored metric."""
    inner = schedule.inner if isinstance(schedule, WarmupSchedule) else schedule
    return isinstance(inner, ReduceOnPlateauSchedule)
