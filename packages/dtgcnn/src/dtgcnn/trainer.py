"""The training run: data, model, optimizer, schedule, early stopping, checkpoints, trackers, exact resume.

Exact resume (DESIGN.md): the checkpoint holds model, optimizer, schedule, early stopping, checkpoint
bookkeeping, epoch, batch position, global step, the epoch's running metric sums and the RNG states.
The batch order is PKSampler.batches(epoch) (a function of seed and epoch) and augmentation uses
sample_rng(seed, epoch, position), so a resumed run rebuilds the epoch and skips the done batches by index.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import mlx.optimizers as optim

import dtgcnn  # noqa: F401  (puts the fast BLAS in place before mlx loads)
from common.checkpoint import CheckpointManager, load_checkpoint
from common.config import config_to_dict, save_config
from common.devices import describe_device, mlx_device, peak_memory_mb
from common.early_stopping import EarlyStopping
from common.errors import CheckpointError, DataError
from common.logs import PhaseTimer
from common.mlx_support import load_model_state, load_optimizer_state, model_state, optimizer_state
from common.progress import progress
from common.runs import RunFolder, atomic_write_text
from common.schedules import build_schedule
from common.seeding import capture_rng_state, restore_rng_state, seed_everything
from common.signals import GracefulStop
from common.trackers import build_trackers
from dtgcnn import plotting, streams
from dtgcnn.config import TrainConfig, schedule_config
from dtgcnn.data import MeshAugmentation, MeshSplit, PKSampler, prefetch
from dtgcnn.engine import Stepper, evaluate_split
from dtgcnn.model import DTGCNN, ModelSpec, count_parameters

log = logging.getLogger("trainyard.dtgcnn")

TRAIN_KEYS = (
    "loss",
    "ce",
    "triplet",
    "accuracy",
    "triplet_accuracy",
    "mean_positive_distance",
    "mean_negative_distance",
    "hard_negative_ratio",
    "embedding_spread",
)


@dataclass
class RunResult:
    output_dir: Path
    epochs_done: int
    global_step: int
    stopped_early: bool
    interrupted: bool
    final_val: dict[str, float]
    test: dict[str, float] | None


def load_splits(cfg: TrainConfig, data_dir: Path) -> dict[str, MeshSplit]:
    """train and val (required) and test (when its files exist), validated against each other."""
    kw = {"num_vertices": cfg.num_vertices, "use_normals": cfg.use_normals, "center": cfg.center_meshes}
    train = MeshSplit(data_dir, "train", num_classes=cfg.num_classes or None, cache=cfg.cache_data, **kw)
    splits = {"train": train}
    for name in ("val", "test"):
        if name == "test" and not (data_dir / "test_metadata.json").exists():
            continue
        splits[name] = MeshSplit(data_dir, name, num_classes=train.num_classes, cache=cfg.cache_data, **kw)
    return splits


def build_model(cfg: TrainConfig, in_channels: int, num_classes: int) -> DTGCNN:
    model = DTGCNN(ModelSpec.from_config(cfg, in_channels, num_classes))
    mx.eval(model.parameters())
    return model


def setup_device(cfg: TrainConfig) -> str:
    device = mlx_device(cfg.device)
    mx.set_default_device(device)
    if cfg.memory_limit_gb > 0:
        mx.set_memory_limit(int(cfg.memory_limit_gb * 1024**3))
    return describe_device(device)


class Training:
    """One run in `output_dir`; `run()` trains until num_epochs, early stopping, a signal or `stop_after_steps`."""

    def __init__(
        self,
        cfg: TrainConfig,
        data_dir: str | Path,
        output_dir: str | Path,
        *,
        resume: str | Path | None = None,
        stop_after_steps: int | None = None,
    ):
        self.cfg, self.data_dir = cfg, Path(data_dir)
        self.run_dir = RunFolder(output_dir)
        self.stop_after_steps = stop_after_steps
        timer = PhaseTimer(log)
        log.info(dtgcnn.BLAS.describe())
        log.info("CPU: %s; %s", dtgcnn.MALLOC, streams.describe())
        log.info("device: %s", setup_device(cfg))
        with timer.phase("load_data"):
            self.splits = load_splits(cfg, self.data_dir)
        train = self.splits["train"]
        self.num_classes = train.num_classes
        self.sampler = PKSampler(train.labels, cfg.batch_size, cfg.samples_per_label, cfg.seed)
        self.augmentation = (
            MeshAugmentation(cfg.rotation_range, tuple(cfg.scale_range), cfg.noise_std, cfg.flip_probability)
            if cfg.augment
            else None
        )
        seed_everything(cfg.seed)
        with timer.phase("build_model"):
            self.model = build_model(cfg, train.in_channels, self.num_classes)
        self.optimizer = optim.AdamW(learning_rate=cfg.learning_rate, weight_decay=cfg.weight_decay)
        self.optimizer.init(self.model.trainable_parameters())
        self.accumulate = max(1, cfg.gradient_accumulation_steps)
        updates_per_epoch = math.ceil(len(self.sampler) / self.accumulate)
        sched_cfg, total = schedule_config(cfg, updates_per_epoch)
        self.schedule_per_step = sched_cfg.interval == "step"
        self.schedule = build_schedule(sched_cfg, cfg.learning_rate, total)
        self.early = EarlyStopping(
            monitor="val_loss", mode="min", patience=cfg.patience, min_delta=cfg.min_delta
        )
        self.manager = CheckpointManager(
            self.run_dir.checkpoints,
            last="last.npz",
            best="best_model.npz",
            monitor="val_loss",
            mode="min",
            every_n_epochs=cfg.checkpoint_every,
            periodic="checkpoint_epoch_{epoch:04d}.npz",
            step_file="last_step.npz",
        )
        self.epoch, self.batch_in_epoch, self.global_step = 1, 0, 0
        self.sums: dict[str, float] = {}
        self.batch_losses: list[float] = []
        if resume:
            with timer.phase("resume"):
                self._restore(Path(resume))
        self.trackers = build_trackers(
            self.run_dir,
            tensorboard=cfg.tensorboard,
            resume_step=self.global_step if resume else None,
            logger=log,
        )
        if not resume:
            self.trackers.log_params(config_to_dict(cfg))
        save_config(cfg, self.run_dir.path("config.yaml"))
        self.stepper = Stepper(self.model, self.optimizer, cfg, self.run_dir.path("debug"))
        log.info(
            "data: %s; %d train / %d val meshes, %d identities, %d batches (P=%d x K=%d) per epoch",
            self.data_dir,
            len(train),
            len(self.splits["val"]),
            self.num_classes,
            len(self.sampler),
            self.sampler.p,
            self.sampler.k,
        )
        log.info(
            "model: %d parameters; k=%d, edge convs %s",
            count_parameters(self.model),
            cfg.k,
            list(cfg.edge_conv_dims),
        )
        timer.report()

    # -- state ---------------------------------------------------------------------------------------------

    def state(self) -> dict:
        return {
            "model": model_state(self.model),
            "optimizer": optimizer_state(self.optimizer),
            "schedule": self.schedule.state_dict(),
            "early_stopping": self.early.state_dict(),
            "manager": self.manager.state_dict(),
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "global_step": self.global_step,
            "epoch_sums": dict(self.sums),
            "batch_losses": list(self.batch_losses),
            "rng": capture_rng_state(),
            "config": config_to_dict(self.cfg),
            "num_classes": self.num_classes,
        }

    def _restore(self, path: Path) -> None:
        state = load_checkpoint(path)
        for key in ("model", "optimizer", "schedule", "early_stopping", "epoch", "global_step", "rng"):
            if key not in state:
                raise CheckpointError(f"{path} is not a dtgcnn training checkpoint (no '{key}' entry).")
        if int(state.get("num_classes", self.num_classes)) != self.num_classes:
            raise CheckpointError(
                f"{path} was trained on {state['num_classes']} identities, this data has {self.num_classes}."
            )
        load_model_state(self.model, state["model"])
        load_optimizer_state(self.optimizer, state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.early.load_state_dict(state["early_stopping"])
        if "manager" in state and Path(path).resolve().parent == self.run_dir.checkpoints.resolve():
            self.manager.load_state_dict(state["manager"])
        self.epoch, self.batch_in_epoch = int(state["epoch"]), int(state.get("batch_in_epoch", 0))
        self.global_step = int(state["global_step"])
        self.sums = {k: float(v) for k, v in state.get("epoch_sums", {}).items()}
        self.batch_losses = [float(v) for v in state.get("batch_losses", [])]
        restore_rng_state(state["rng"])
        log.info(
            "resumed from %s at epoch %d, batch %d, global step %d",
            path,
            self.epoch,
            self.batch_in_epoch,
            self.global_step,
        )

    # -- loop ----------------------------------------------------------------------------------------------

    def run(self) -> RunResult:
        cfg = self.cfg
        interrupted = False
        val: dict[str, float] = {}
        with GracefulStop() as stop:
            while self.epoch <= cfg.num_epochs and not self.early.should_stop:
                if self._train_epoch(stop):
                    interrupted = True
                    break
                val = self._end_epoch()
        test = None
        if not interrupted:
            test = self._final_test()
        self.trackers.close()
        return RunResult(
            self.run_dir.root,
            self.epoch - 1,
            self.global_step,
            self.early.should_stop,
            interrupted,
            val,
            test,
        )

    def _train_epoch(self, stop: GracefulStop) -> bool:
        """Train the rest of the current epoch; True when interrupted (a step checkpoint was written)."""
        cfg, epoch = self.cfg, self.epoch
        batches = self.sampler.batches(epoch)
        stream = prefetch(
            self.splits["train"],
            batches,
            augmentation=self.augmentation,
            seed=cfg.seed,
            epoch=epoch,
            start=self.batch_in_epoch,
            depth=cfg.prefetch_batches,
        )
        try:
            return self._consume(stream, len(batches), stop)
        finally:
            stream.close()  # stops the prefetch thread now, also when a step raised

    def _consume(self, stream, num_batches: int, stop: GracefulStop) -> bool:
        cfg, epoch = self.cfg, self.epoch
        for b, x, y in progress(
            stream, total=num_batches - self.batch_in_epoch, desc=f"epoch {epoch}", logger=log
        ):
            self.optimizer.learning_rate = self.schedule.lr
            metrics = self.stepper.micro_step(x, y, step=self.global_step + 1)
            self.global_step += 1
            self.batch_in_epoch = b + 1
            if "grad_norm" in metrics and self.schedule_per_step:
                self.schedule.step()
            self._accumulate(metrics)
            if self.global_step % max(1, cfg.log_interval) == 0:
                self.trackers.log_metrics(
                    {"train/step_loss": metrics["loss"], "step_lr": self.schedule.lr}, step=self.global_step
                )
            if self.stepper.pending_count == 0 and self.batch_in_epoch < num_batches:
                asked = stop.requested or (
                    self.stop_after_steps is not None and self.global_step >= self.stop_after_steps
                )
                periodic = cfg.checkpoint_every_steps and self.global_step % cfg.checkpoint_every_steps == 0
                if asked or periodic:
                    path = self.manager.save_step(self.state(), epoch=epoch, step=self.global_step)
                    if asked:
                        log.warning(
                            "%s",
                            stop.message(f"--resume {path}")
                            if stop.requested
                            else f"stopped after step {self.global_step} as asked; resume with --resume {path}",
                        )
                        return True
        return False

    def _accumulate(self, metrics: dict[str, float]) -> None:
        for k in (*TRAIN_KEYS, "grad_norm"):
            if k in metrics:
                self.sums[k] = self.sums.get(k, 0.0) + metrics[k]
                self.sums[f"n_{k}"] = self.sums.get(f"n_{k}", 0.0) + 1
        self.batch_losses.append(metrics["loss"])

    def _end_epoch(self) -> dict[str, float]:
        cfg, epoch = self.cfg, self.epoch
        norm = self.stepper.flush()
        if norm is not None:
            self._accumulate_norm(norm)
        if not self.schedule_per_step:
            self.schedule.step()
        train = {
            k: self.sums[k] / self.sums[f"n_{k}"] for k in (*TRAIN_KEYS, "grad_norm") if f"n_{k}" in self.sums
        }
        val, emb, _, labels = evaluate_split(self.model, self.splits["val"], cfg, with_embeddings=True)
        memory = peak_memory_mb()
        record = {f"train/{k}": v for k, v in train.items()} | {f"val/{k}": v for k, v in val.items()}
        record |= {
            "lr": self.schedule.lr,
            "epoch": float(epoch),
            **{f"memory/{k}": v for k, v in memory.items()},
        }
        self.trackers.log_metrics(record, step=self.global_step)
        log.info(
            "epoch %d/%d step %d: train loss %.4f acc %.3f | val loss %.4f acc %.3f recall@1 %.3f "
            "AUC %.3f | lr %.2e | peak %s",
            epoch,
            cfg.num_epochs,
            self.global_step,
            train.get("loss", math.nan),
            train.get("accuracy", math.nan),
            val["loss"],
            val["accuracy"],
            val["recall_at_1"],
            val["roc_auc"],
            self.schedule.lr,
            ", ".join(f"{k} {v:.0f}" for k, v in memory.items()),
        )
        if train.get("embedding_spread", 1.0) < cfg.collapse_warn:
            log.warning(
                "embedding collapse: spread %.4f < %.4f; lower triplet_weight or learning_rate",
                train["embedding_spread"],
                cfg.collapse_warn,
            )
        self.trackers.flush()
        if cfg.plot_every and (epoch % cfg.plot_every == 0 or epoch == cfg.num_epochs):
            plotting.training_curves(self.run_dir.path("metrics_history.json"), self.run_dir.plots, epoch)
        plotting.loss_distribution(
            self.run_dir.plots / "loss_distribution.png", self.batch_losses, emb, labels, epoch
        )
        self.early.update({"val_loss": val["loss"]})
        if self.early.should_stop:
            log.info("early stopping: %s", self.early.reason)
        if cfg.clear_cache_every and epoch % cfg.clear_cache_every == 0:
            mx.clear_cache()
        self.epoch, self.batch_in_epoch = epoch + 1, 0
        self.sums, self.batch_losses = {}, []
        self.manager.save(self.state(), epoch=epoch, metrics={"val_loss": val["loss"]})
        return val

    def _accumulate_norm(self, norm: float) -> None:
        self.sums["grad_norm"] = self.sums.get("grad_norm", 0.0) + norm
        self.sums["n_grad_norm"] = self.sums.get("n_grad_norm", 0.0) + 1

    def _final_test(self) -> dict[str, float] | None:
        """Test metrics of the best checkpoint (or the current weights) -> test_metrics.json."""
        if "test" not in self.splits:
            return None
        best = self.manager.best_path
        if best is not None and best.exists():
            load_model_state(self.model, load_checkpoint(best)["model"])
        test = evaluate_split(self.model, self.splits["test"], self.cfg)
        self.trackers.log_metrics({f"test/{k}": v for k, v in test.items()}, step=self.global_step)
        atomic_write_text(self.run_dir.path("test_metrics.json"), json.dumps(test, indent=2))
        log.info(
            "test (%s): loss %.4f acc %.3f recall@1 %.3f AUC %.3f",
            best.name if best else "last weights",
            test["loss"],
            test["accuracy"],
            test["recall_at_1"],
            test["roc_auc"],
        )
        return test


def train(cfg: TrainConfig, data_dir, output_dir, *, resume=None, stop_after_steps=None) -> RunResult:
    if not Path(data_dir).is_dir():
        raise DataError(
            f"Data directory {data_dir} does not exist (make one with python -m dtgcnn.synthetic)."
        )
    started = time.perf_counter()
    result = Training(cfg, data_dir, output_dir, resume=resume, stop_after_steps=stop_after_steps).run()
    log.info(
        "finished in %.1f s: %d epochs, %d steps; outputs in %s",
        time.perf_counter() - started,
        result.epochs_done,
        result.global_step,
        result.output_dir,
    )
    return result
