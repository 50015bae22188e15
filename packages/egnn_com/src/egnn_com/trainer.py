"""`Trainer`: Lightning's Trainer shape on the shared loop, to train and resume egnn_com models from Python.

    trainer = Trainer(max_epochs=100, callbacks=[...], default_root_dir="runs/python", gradient_clip_val=1.0)
    trainer.fit(module, train_loader, val_loader)                      # a new run in default_root_dir
    trainer.fit(module, train_loader, val_loader, ckpt_path="last")    # continue it exactly (or a file path)

It assembles what `egnn_com.pipeline.run_training` assembles for the command line (CentreOfMassTask, common's
Loop, callbacks, trackers, run folder) from a `CentreOfMassModule` and DataLoaders the caller built, instead
of a config file and a data folder. The run folder, its checkpoints and metrics history are the command
line's, so `python -m egnn_com.evaluate` / `predict` and `--resume` read them too.

Lightning arguments that mean something here are taken with Lightning's names and defaults; the others are
refused with the reason and what to do instead (`REFUSED`), never silently ignored.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
import yaml
from torch.utils.data import DataLoader as TorchDataLoader

from common.callbacks import Callback, ProgressBar, TrackerLogger
from common.callbacks import ModelCheckpoint as CommonModelCheckpoint
from common.config import config_to_dict, save_config
from common.devices import describe_device, torch_device
from common.distributed import get_world_size
from common.errors import CheckpointError, ConfigError
from common.logs import setup_logging
from common.loop import FitResult, Loop, Plan
from common.resume import (
    find_checkpoint,
    latest_checkpoint,
    read_training_checkpoint,
    run_folder_of,
    saved_config,
)
from common.runs import RunFolder, RunFolderError
from common.sampler import ResumableSampler
from common.schedules import build_schedule
from common.torch_support import parse_precision
from common.trackers import build_trackers
from egnn_com.config import EgnnComConfig, config_from_dict
from egnn_com.data import make_loader
from egnn_com.lightning_callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
from egnn_com.model import describe_model
from egnn_com.module import CentreOfMassModule
from egnn_com.pipeline import HISTORY_FILE, PLOT_FILE, TrainingResult, plot_training
from egnn_com.task import CentreOfMassTask, EpochSummary, cuda_warmup

__all__ = [
    "CentreOfMassModule",
    "EarlyStopping",
    "LearningRateMonitor",
    "ModelCheckpoint",
    "Trainer",
]

log = logging.getLogger("trainyard")

NO_DATA_DIR = "(Python DataLoaders: no data folder)"  # config.yaml's data.data_dir for runs fed by loaders

_TORCHRUN = (
    "egnn_com trains on several devices with one process per device, started by torchrun: "
    "`torchrun --nproc_per_node 4 -m egnn_com.train ...` (README, 'Scale out'); the Python Trainer is one process"
)
_NO_LIMITS = "build the loader with fewer batches: egnn_com.data.make_loader(..., max_batches=N)"
_ENDS = "a run ends at max_epochs or max_steps, or when a callback (EarlyStopping) stops it"
_REPRODUCIBLE = (
    "runs are reproducible by construction (seeded data order, RNG states in every checkpoint); call "
    "torch.use_deterministic_algorithms / torch.backends.cudnn settings yourself if you need them"
)
# Lightning Trainer arguments that have no meaning in this package, with the reason and what to do instead.
REFUSED = {
    "strategy": _TORCHRUN,
    "num_nodes": _TORCHRUN,
    "sync_batchnorm": _TORCHRUN,
    "use_distributed_sampler": _TORCHRUN,
    "fast_dev_run": "the quick check is `python -m egnn_com.train --fast_dev_run N`; here pass max_steps=N",
    "limit_train_batches": _NO_LIMITS,
    "limit_val_batches": _NO_LIMITS,
    "overfit_batches": _NO_LIMITS,
    "limit_test_batches": "there is no test loop: use egnn_com.evaluate",
    "limit_predict_batches": "there is no predict loop: use egnn_com.inference.predict",
    "val_check_interval": "validation runs after every check_val_every_n_epoch epochs (the LR plateau and the "
    "best checkpoint watch it once per epoch)",
    "min_epochs": _ENDS,
    "min_steps": _ENDS,
    "max_time": _ENDS,
    "num_sanity_val_steps": "no sanity validation runs: graphs are validated when they are loaded",
    "deterministic": _REPRODUCIBLE,
    "benchmark": _REPRODUCIBLE,
    "reload_dataloaders_every_n_epochs": "the loaders' order is a function of (seed, epoch) already",
    "profiler": "use `python -m egnn_com.bench` (throughput, timings, FLOPs) or torch.profiler around fit",
    "detect_anomaly": "a non-finite loss or gradient already stops the step with a clear error",
    "plugins": "not supported",
    "barebones": "not supported",
    "inference_mode": "validation always runs under torch.no_grad()",
}


class Trainer:
    """Lightning's Trainer arguments that apply here (defaults as in Lightning unless said):

    max_epochs (100, as the command line), max_steps (-1: no limit), callbacks, default_root_dir (the run
    folder; default runs/egnn_com_<timestamp>), accelerator ("auto", "cpu", "gpu"/"cuda", "mps"), devices
    (one: 1, "auto" or [index]), precision ("32", "16-mixed", "bf16-mixed", ...), gradient_clip_val (None: no
    clipping), gradient_clip_algorithm ("norm"), accumulate_grad_batches, log_every_n_steps,
    check_val_every_n_epoch, logger (True: JSON history + TensorBoard; False: the JSON history only, which is
    always written), enable_checkpointing (a best + last ModelCheckpoint when the callbacks have none),
    enable_progress_bar, enable_model_summary. `overwrite=True` lets a new run replace the run already in
    default_root_dir (refused otherwise, as on the command line).
    """

    def __init__(
        self,
        *,
        max_epochs: int | None = None,
        max_steps: int = -1,
        callbacks: Callback | Sequence[Callback] | None = None,
        default_root_dir: str | os.PathLike | None = None,
        accelerator: str = "auto",
        devices: int | str | Sequence[int] = "auto",
        precision: int | str = "32",
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
        accumulate_grad_batches: int = 1,
        log_every_n_steps: int = 50,
        check_val_every_n_epoch: int = 1,
        logger: bool = True,
        enable_checkpointing: bool = True,
        enable_progress_bar: bool = True,
        enable_model_summary: bool = True,
        overwrite: bool = False,
        **lightning_only: Any,
    ) -> None:
        _refuse(lightning_only)
        if gradient_clip_algorithm not in (None, "norm"):
            raise ConfigError(
                f"gradient_clip_algorithm={gradient_clip_algorithm!r}: egnn_com clips the global gradient norm "
                "only ('norm')."
            )
        if not isinstance(logger, bool):
            raise ConfigError(
                f"logger={type(logger).__name__}: pass True (JSON history + TensorBoard in the run folder) or "
                "False (the JSON history only); W&B runs are the command line's `--use_wandb`."
            )
        self.device = torch_device(_device_name(accelerator, devices))
        self.precision = parse_precision(precision, self.device)  # refused here, before any folder exists
        self.max_epochs = 100 if max_epochs is None else max_epochs
        self.max_steps = None if max_steps is None or max_steps < 0 else max_steps
        self.callbacks = [callbacks] if isinstance(callbacks, Callback) else list(callbacks or [])
        self.default_root_dir = Path(default_root_dir) if default_root_dir is not None else None
        self.gradient_clip_val = gradient_clip_val or 0.0
        self.accumulate_grad_batches = accumulate_grad_batches
        self.log_every_n_steps = log_every_n_steps
        self.check_val_every_n_epoch = check_val_every_n_epoch
        self.logger = logger
        self.enable_checkpointing = enable_checkpointing
        self.enable_progress_bar = enable_progress_bar
        self.enable_model_summary = enable_model_summary
        self.overwrite = overwrite
        if not enable_checkpointing and self.checkpoint_callbacks:
            raise ConfigError(
                "enable_checkpointing=False, but the callbacks hold a ModelCheckpoint; drop one of the two."
            )
        Plan(  # the plan's own checks, now rather than at fit
            max_epochs=self.max_epochs,
            max_steps=self.max_steps,
            accumulate=accumulate_grad_batches,
            log_every_n_steps=log_every_n_steps,
            val_every_n_epochs=check_val_every_n_epoch,
        )
        # what the last fit left, as Lightning's Trainer shows it
        self.result: TrainingResult | None = None
        self.log_dir: Path | None = None
        self.callback_metrics: dict[str, float] = {}
        self.current_epoch = 0
        self.global_step = 0

    # -- checkpoints ----------------------------------------------------------------------------------------
    @property
    def checkpoint_callbacks(self) -> list[CommonModelCheckpoint]:
        return [cb for cb in self.callbacks if isinstance(cb, CommonModelCheckpoint)]

    @property
    def checkpoint_callback(self) -> CommonModelCheckpoint | None:
        """The first ModelCheckpoint (`.best_model_path`, `.best_model_score`, `.last_model_path`)."""
        found = self.checkpoint_callbacks
        return found[0] if found else None

    def _find_checkpoint(self, ckpt_path: str | os.PathLike | None) -> Path | None:
        """The file `ckpt_path` names: a file, a run folder (its newest checkpoint) or "last": the newest
        checkpoint in the checkpoint callbacks' folders or in the checkpoint folder default_root_dir's
        config.yaml records, else of the run in default_root_dir (without one, the newest run under runs/)."""
        if ckpt_path is None:
            return None
        spec = str(ckpt_path)
        try:
            if spec not in ("last", "auto"):
                return find_checkpoint(spec)
            folders = [cb.dirpath for cb in self.checkpoint_callbacks if getattr(cb, "bound", True)]
            for folder in [*folders, *_recorded_checkpoint_dir(self.default_root_dir)]:
                found = latest_checkpoint(folder)
                if found is not None:
                    return found
            return find_checkpoint("last", self.default_root_dir or Path("runs"))
        except CheckpointError as exc:
            reason = str(exc).replace(f"--resume {spec}: ", "")
            raise CheckpointError(f"ckpt_path={spec!r}: {reason}") from None

    # -- fit ------------------------------------------------------------------------------------------------
    def fit(
        self,
        model: CentreOfMassModule,
        train_dataloaders: TorchDataLoader | None = None,
        val_dataloaders: TorchDataLoader | None = None,
        datamodule: Any = None,
        ckpt_path: str | os.PathLike | None = None,
    ) -> TrainingResult:
        """Train `model` on the loaders; with `ckpt_path` ("last", a checkpoint file or a run folder) continue
        that run exactly where it stopped: weights, optimizer, LR schedule, callback states, RNG states and
        the position inside the epoch. Returns how the run ended (also in `trainer.result`)."""
        if datamodule is not None:
            raise ConfigError("datamodule: pass the training and validation DataLoaders instead.")
        if not isinstance(model, CentreOfMassModule):
            raise ConfigError(
                f"model must be an egnn_com.module.CentreOfMassModule (the network and its optimizer), got "
                f"{type(model).__name__}."
            )
        if train_dataloaders is None or val_dataloaders is None:
            raise ConfigError(
                "fit needs a training and a validation DataLoader: the LR plateau and the best checkpoint "
                "watch val_loss every epoch."
            )
        if get_world_size() > 1:
            raise ConfigError(_TORCHRUN + ".")
        checkpoint = self._find_checkpoint(ckpt_path)
        state = _read_resumable(checkpoint, model) if checkpoint else None
        train_loader = resumable_loader(train_dataloaders, train=True, device=self.device)
        seed = train_loader.batch_sampler.seed
        val_loader = resumable_loader(val_dataloaders, train=False, device=self.device, seed=seed)
        cfg = self._run_config(model, train_loader, seed)
        sched = cfg.optim.schedule
        plan = Plan(
            max_epochs=self.max_epochs,
            max_steps=self.max_steps,
            accumulate=self.accumulate_grad_batches,
            log_every_n_steps=self.log_every_n_steps,
            val_every_n_epochs=self.check_val_every_n_epoch,
            schedule_interval=sched.interval,
            schedule_monitor="val/loss",
        )
        net = self.precision.cast_model(model.net).to(self.device)
        task = CentreOfMassTask(
            cfg,
            model=net,
            optimizer=model.configure_optimizers(),
            precision=self.precision,
            device=self.device,
            train_loader=train_loader,
            val_loader=val_loader,
            num_features=model.input_dim,
        )
        steps_per_epoch = math.ceil(task.num_batches(0) / plan.accumulate)
        units = plan.max_epochs * (steps_per_epoch if sched.interval == "step" else 1)
        schedule = build_schedule(sched, [cfg.optim.lr], max(units, 1))

        run = self._run_folder(checkpoint)  # everything above is checked before anything is created
        logger = setup_logging(run.logs)
        cfg.train.output_dir = str(run.root.resolve())
        savers = self._checkpoint_savers(run)
        cfg.train.checkpoint_dir = str(Path(savers[0].dirpath).resolve()) if savers else None
        save_config(cfg, run.path("config.yaml"))
        logger.info("device %s, precision %s", describe_device(self.device), self.precision.name)
        if self.enable_model_summary:
            logger.info("%s", describe_model(net).splitlines()[0])
        trackers = build_trackers(
            run,
            history_file=HISTORY_FILE,
            tensorboard=self.logger,
            logger=logger,
            resume_step=int(state["global_step"]) if state else None,
        )
        trackers.log_params(
            {
                "config": config_to_dict(cfg),
                "split": {"train_graphs": len(train_loader.dataset), "val_graphs": len(val_loader.dataset)},
            }
        )
        callbacks = [
            EpochSummary(task, logger),
            TrackerLogger(trackers),
            *([ProgressBar()] if self.enable_progress_bar else []),
            *[cb for cb in self.callbacks if not isinstance(cb, CommonModelCheckpoint)],
            *savers,
        ]
        loop = Loop(task, plan, callbacks=callbacks, schedule=schedule, resume=state, resume_path=checkpoint)
        if self.device.type == "cuda":
            logger.info("CUDA kernel warm-up took %.2fs (state restored afterwards)", cuda_warmup(task))
        try:
            fit = loop.fit()
        finally:
            trackers.close()
        history = run.path(HISTORY_FILE)
        if history.exists() and not fit.interrupted:
            plot_training(history, run.plots / PLOT_FILE, title=f"egnn_com {cfg.model.name}")
        result = TrainingResult(
            **{f.name: getattr(fit, f.name) for f in fields(FitResult)},
            checkpoint_dir=Path(cfg.train.checkpoint_dir) if cfg.train.checkpoint_dir else None,
            history=history,
        )
        result.run_dir = run.root
        self.result, self.log_dir = result, run.root
        self.callback_metrics = dict(fit.metrics)
        self.current_epoch, self.global_step = fit.epochs_done, fit.global_step
        logger.info(
            "outputs in %s (best checkpoint: %s)",
            run.root,
            result.best_checkpoint.name if result.best_checkpoint else "none",
        )
        return result

    def _run_config(self, module: CentreOfMassModule, train_loader, seed: int) -> EgnnComConfig:
        """The run's config (config.yaml, every checkpoint): the module's sections plus this trainer's."""
        cfg = copy.deepcopy(module.config)
        cfg.data.data_dir = NO_DATA_DIR
        cfg.data.batch_size = train_loader.batch_sampler.batch_size
        cfg.optim.gradient_clip_val = self.gradient_clip_val
        cfg.optim.accumulate_grad_batches = self.accumulate_grad_batches
        cfg.train.max_epochs = self.max_epochs
        cfg.train.precision = self.precision.name
        cfg.train.device = str(self.device)
        cfg.train.seed = seed
        cfg.logging.tensorboard = self.logger
        cfg.logging.log_every_n_steps = self.log_every_n_steps
        if cfg.optim.schedule.name == "plateau" and cfg.optim.schedule.interval != "epoch":
            raise ConfigError(
                "schedule: 'plateau' watches val_loss, which exists once per epoch; use interval=epoch."
            )
        return cfg

    def _run_folder(self, checkpoint: Path | None) -> RunFolder:
        """default_root_dir; without one, the checkpoint's own run folder (a resume continues its history)
        or a new runs/egnn_com_<timestamp>."""
        if self.default_root_dir is not None:
            if checkpoint is None:
                _make_room_for_new_run(self.default_root_dir, self.overwrite)
            return RunFolder(self.default_root_dir, resume=checkpoint is not None, overwrite=self.overwrite)
        if checkpoint is not None and (run_folder_of(checkpoint) / "config.yaml").is_file():
            return RunFolder(run_folder_of(checkpoint), resume=True)
        return RunFolder.timestamped("runs", "egnn_com")

    def _checkpoint_savers(self, run: RunFolder) -> list[CommonModelCheckpoint]:
        """The ModelCheckpoints of this run, bound to the run's checkpoints/ when they name no folder; by
        default (none given) the command line's: the best by val_loss and last.ckpt, last-step.ckpt every 50
        optimizer steps."""
        if not self.enable_checkpointing:
            return []
        if not self.checkpoint_callbacks:
            defaults = EgnnComConfig().train
            self.callbacks.append(
                ModelCheckpoint(
                    filename=defaults.checkpoint_filename,
                    monitor="val_loss",
                    save_last=True,
                    auto_insert_metric_name=False,
                    every_n_train_steps=defaults.save_every_n_steps,
                )
            )
        for cb in self.checkpoint_callbacks:
            if isinstance(cb, ModelCheckpoint) and not cb.bound:
                cb.bind(run.checkpoints)
        return self.checkpoint_callbacks


def resumable_loader(
    loader: TorchDataLoader, *, train: bool, device: torch.device, seed: int | None = None
) -> TorchDataLoader:
    """`loader` if its batches come from a `common.sampler.ResumableSampler` (`egnn_com.data.make_loader`);
    a plain DataLoader of graphs (PyG's, shuffle or not) is rebuilt with make_loader from its graphs and batch
    size, since exact resume needs an order that is a function of (seed, epoch): training shuffled with the
    last partial batch dropped, validation in order."""
    if isinstance(getattr(loader, "batch_sampler", None), ResumableSampler):
        return loader
    dataset = getattr(loader, "dataset", None)
    batch_size = getattr(loader, "batch_size", None)
    if dataset is None or not batch_size:
        raise ConfigError(
            f"{'train' if train else 'val'} loader: expected a DataLoader of graphs (egnn_com.data.make_loader "
            f"or torch_geometric.loader.DataLoader with a batch_size), got {type(loader).__name__}."
        )
    seed = 42 if seed is None else seed  # the command line's default seed
    log.info(
        "%s loader rebuilt with egnn_com.data.make_loader(batch_size=%d, seed=%d) so that a resumed epoch starts "
        "at its saved batch",
        "train" if train else "val",
        batch_size,
        seed,
    )
    graphs = [dataset[i] for i in range(len(dataset))]
    return make_loader(
        graphs, batch_size=batch_size, train=train, seed=seed, num_workers=loader.num_workers, device=device
    )


def _make_room_for_new_run(root: Path, overwrite: bool) -> None:
    """Refuse (or with `overwrite`, remove) a run already in `root` before a new fit writes there.

    `RunFolder` lets this process reopen a folder it has claimed (the command line claims it before the
    trainer opens it), so a second fit in one Python session (a notebook) would pass its check and write
    into the first run's history and checkpoints."""
    if not root.is_dir() or not any(p.is_file() for p in root.rglob("*")):
        return
    if overwrite and (root / "config.yaml").is_file():
        shutil.rmtree(root)
        return
    raise RunFolderError(
        f"{root} already holds a run; a new fit would overwrite its history and checkpoints. Continue it with "
        "fit(..., ckpt_path='last'), choose another default_root_dir, or pass Trainer(overwrite=True)."
    )


def _recorded_checkpoint_dir(root: Path | None) -> list[Path]:
    """The checkpoint folder a run's config.yaml records (a ModelCheckpoint's dirpath may be outside it)."""
    try:
        recorded = yaml.safe_load((root / "config.yaml").read_text(encoding="utf-8"))["train"][
            "checkpoint_dir"
        ]
    except (TypeError, OSError, KeyError, yaml.YAMLError):
        return []
    return [Path(recorded)] if recorded else []


def _read_resumable(checkpoint: Path, module: CentreOfMassModule) -> dict:
    """The checkpoint's state, refused clearly when it is another package's or another network's."""
    state = read_training_checkpoint(checkpoint)
    saved = config_from_dict(saved_config(state, EgnnComConfig))
    if config_to_dict(saved.model) != config_to_dict(module.config.model):
        raise CheckpointError(
            f"{checkpoint} was trained with model {config_to_dict(saved.model)}, but this module is "
            f"{config_to_dict(module.config.model)}; build the module with the checkpoint's settings."
        )
    return state


def _device_name(accelerator: str, devices: int | str | Sequence[int]) -> str:
    """Lightning's (accelerator, devices) as one device name for `common.devices.torch_device`."""
    if isinstance(devices, str):
        devices = "auto" if devices == "auto" else [int(d) for d in devices.split(",") if d.strip()]
    if isinstance(devices, int):
        if devices not in (1,):
            raise ConfigError(f"devices={devices}: {_TORCHRUN}.")
        devices = "auto"
    index = None
    if devices != "auto":
        devices = list(devices)
        if len(devices) != 1:
            raise ConfigError(f"devices={devices}: {_TORCHRUN}.")
        index = devices[0]
    names = {"auto": "auto", "cpu": "cpu", "gpu": "cuda", "cuda": "cuda", "mps": "mps"}
    if accelerator not in names:
        raise ConfigError(f"accelerator={accelerator!r}: use one of {', '.join(names)}.")
    name = names[accelerator]
    return f"{name}:{index}" if name == "cuda" and index is not None else name


def _refuse(lightning_only: dict[str, Any]) -> None:
    """One clear error for every argument this Trainer does not take: Lightning's with their reason."""
    if not lightning_only:
        return
    lines = [
        f"- {name}: {REFUSED.get(name, 'not an argument of this Trainer (see help(egnn_com.trainer.Trainer))')}"
        for name in lightning_only
    ]
    raise ConfigError("Trainer does not take these arguments:\n" + "\n".join(lines))
