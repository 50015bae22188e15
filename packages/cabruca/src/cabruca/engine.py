"""cabruca's side of the shared training loop (`common.loop`): tiles, the multi-task model and loss, and the
COCO / segmentation metrics. Everything else (counters, cadence, accumulation, LR schedule, early stopping,
checkpoints, signals, exact resume) is the loop's and its callbacks' (see `cabruca.train`).

Exact resume: the training order is `epoch_permutation(n, seed, epoch)` (a `ResumableSampler`), each tile's
augmentation is `sample_rng(seed, epoch, index)`, and the data loaders never draw from torch's global RNG,
so a run resumed at (epoch, batch) sees the same tiles with the same augmentation as an uninterrupted one.

Data parallel (one process per GPU or CPU slot, launched by torchrun; see README "Scale out"): the process
group must exist before the task is built. `data.batch_size` is per process; each rank reads its contiguous
slice of the global batches a single process with batch size x world size reads, the model is wrapped in
DistributedDataParallel (`self.ddp`, so micro-batches that do not end an optimizer step skip the gradient
all-reduce), and rank 0 evaluates the whole validation set while the others wait; its metrics are broadcast,
so every rank (early stopping, plateau schedule) sees the same numbers as a single-process run would.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import torch

from common.checkpoint import load_checkpoint
from common.distributed import broadcast_object, get_rank, get_world_size, is_main_process
from common.errors import CheckpointError, ConfigError
from common.sampler import ResumableSampler
from common.seeding import seed_everything
from common.torch_support import OptimizerStepper, TorchTask, parse_precision, restore_training_state

from . import config as config_mod
from .config import CabrucaConfig
from .data import CabrucaTiles, load_split, make_loader
from .losses import MultiTaskLoss
from .metrics import Evaluator
from .model import CabrucaNet, build_model_with_report
from .optim import build_optimizer
from .postprocess import decode_instances, instances_from_ids

HISTORY_FILE = "training_history.json"
LOSS_NAMES = ("loss", "semantic", "instance", "centre", "offset", "crown", "density")


class CabrucaTask(TorchTask):
    """Data, model, optimizer and metrics of one cabruca run, built from its config.

    `micro_step` runs forward and backward of one micro-batch of tiles, its loss multiplied once by the
    loop's scale (1 / micro-batches in the optimizer step); `validate` returns the validation losses and
    metrics unprefixed (`loss`, `semantic`, ..., `mAP_50`, `canopy_IoU`, ...); the loop logs them as val/<name>.
    `init_weights` (a checkpoint's "model" tree) warm-starts the model: weights only, fresh optimizer.
    `pretrained` reports what `model.pretrained_checkpoint` filled (None without one); the run logs it.
    """

    def __init__(
        self,
        cfg: CabrucaConfig,
        device: torch.device,
        *,
        init_weights: dict | None = None,
        rank: int | None = None,
        world_size: int | None = None,
    ):
        self.config, self.device = cfg, device
        self.rank = get_rank() if rank is None else rank
        self.world_size = world = get_world_size() if world_size is None else world_size
        t, d = cfg.training, cfg.data
        seed_everything(cfg.seed)
        data_dir = Path(d.data_dir)
        self.train_set = CabrucaTiles(load_split(data_dir / d.train_split, d), d, seed=cfg.seed, train=True)
        self.val_set = CabrucaTiles(load_split(data_dir / d.val_split, d), d, seed=cfg.seed, train=False)
        self.accumulate = t.gradient_accumulation_steps
        cap = t.max_steps_per_epoch * self.accumulate if t.max_steps_per_epoch else None
        self.train_sampler = ResumableSampler(
            len(self.train_set),
            d.batch_size,
            seed=cfg.seed,
            shuffle=True,
            drop_last=True,
            max_batches=cap,
            rank=self.rank,
            world_size=world,
        )
        if self.train_sampler.batches_per_epoch() < 1:
            across = f" x {world} processes" if world > 1 else ""
            raise ConfigError(
                f"{len(self.train_set)} training tiles do not fill one global batch of data.batch_size "
                f"{d.batch_size}{across}; lower it or add data."
            )
        # Validation: every tile once, in order, in one process (rank 0 under DDP; see `validate`).
        self.val_sampler = ResumableSampler(len(self.val_set), d.batch_size, shuffle=False, drop_last=False)

        model, self.pretrained = build_model_with_report(cfg.model)  # report: None without a pretrained file
        self.model = model.to(device)
        if init_weights is not None:  # warm start (progressive training / fine-tuning): weights only
            restore_training_state({"model": init_weights, "optimizer": None}, self.model, None)
        forward: torch.nn.Module = self.model
        self.ddp = None
        if world > 1:
            if t.sync_batchnorm and device.type == "cuda":
                # BatchNorm statistics over the global batch (CUDA only in torch); state_dict keys unchanged
                self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
            # the loop's no_sync() uses self.ddp: micro-batches that do not end a step skip the all-reduce;
            # checkpoints keep saving the plain self.model
            self.ddp = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None
            )
            forward = self.ddp
        self.forward = torch.compile(forward) if t.compile else forward
        # Validation runs in one process: through the plain module under DDP (no collective in its forward).
        self.eval_forward = self.forward if self.ddp is None else self.model
        self.loss_fn = MultiTaskLoss(cfg.loss)
        self.optimizer, self.group_names = build_optimizer(self.model, cfg)
        self.precision = parse_precision(t.precision or ("16-mixed" if t.mixed_precision else "32"), device)
        self.stepper = OptimizerStepper(
            self.optimizer, precision=self.precision, clip_grad_norm=t.gradient_clip
        )
        self.tiles_seen = 0  # training tiles through micro_step in this process (for tiles/s)
        self.train_mode()

    def train_mode(self) -> None:
        """Training mode; with `training.norm_eval` the BatchNorm layers stay in eval mode (running
        statistics, not the micro-batch's: per-process batch statistics then no longer differ from a single
        process's, and small batches do not disturb the statistics)."""
        self.model.train()
        if self.config.training.norm_eval:
            for m in self.model.modules():
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                    m.eval()

    # ---- data -------------------------------------------------------------------------------------
    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps per epoch (the last one may gather fewer than `accumulate` micro-batches)."""
        return math.ceil(self.train_sampler.batches_per_epoch() / self.accumulate)

    def num_batches(self, epoch: int) -> int:
        return self.train_sampler.batches_per_epoch()

    def batches(self, epoch: int, start: int):
        self.train_sampler.set_epoch(epoch, start)
        for batch in make_loader(self.train_set, self.config.data, self.train_sampler):
            yield self._to_device(batch)

    def _to_device(self, batch: dict) -> dict:
        nb = self.device.type == "cuda"
        return {
            k: (v.to(self.device, non_blocking=nb) if torch.is_tensor(v) else v) for k, v in batch.items()
        }

    # ---- training ---------------------------------------------------------------------------------
    def micro_step(self, batch: dict, scale: float) -> dict[str, float]:
        """Forward + backward of one micro-batch (loss x `scale`); the unscaled loss components as floats."""
        with self.precision.autocast():
            out = self.forward(batch["image"])
        losses = self.loss_fn(out, batch)
        self.stepper.backward(losses["loss"], scale)
        self.tiles_seen += batch["image"].shape[0]
        return {k: float(v.detach()) for k, v in losses.items()}

    # ---- validation -------------------------------------------------------------------------------
    def validate(self) -> dict[str, float]:
        """Validation losses and metrics. Under DDP rank 0 evaluates the whole validation set (COCO mAP is
        not a mean over shards) while the others wait in the broadcast of its metrics; every rank returns
        the same dict, equal to a single process's."""
        if self.world_size <= 1:
            return self._evaluate()
        return broadcast_object(self._evaluate() if is_main_process() else None)

    @torch.no_grad()
    def _evaluate(self) -> dict[str, float]:
        cfg, model = self.config, self.model
        model.eval()
        ev = Evaluator(cfg.data.semantic_classes, cfg.data.instance_classes, cfg.data.instance_semantic_ids)
        sums, n = dict.fromkeys(LOSS_NAMES, 0.0), 0
        self.val_sampler.set_epoch(0)
        for batch in itertools.islice(
            make_loader(self.val_set, cfg.data, self.val_sampler), self.val_batch_limit
        ):
            batch = self._to_device(batch)
            with self.precision.autocast():
                out = self.eval_forward(batch["image"])
            losses = self.loss_fn(out, batch)
            b = batch["image"].shape[0]
            for k in LOSS_NAMES:
                sums[k] += float(losses[k]) * b
            n += b
            update_evaluator(ev, out, batch, cfg)
        self.train_mode()
        metrics = {k: v / max(n, 1) for k, v in sums.items()}
        metrics.update(ev.compute())
        return metrics


def update_evaluator(ev: Evaluator, out: dict, batch: dict, cfg: CabrucaConfig) -> list:
    """Decode one batch of model outputs and add it to `ev`. Returns the decoded instances per tile."""
    probs = out["semantic"].float().softmax(1)
    decoded = []
    pp = cfg.postprocess
    for i in range(probs.shape[0]):
        pred = decode_instances(
            probs[i],
            out["heatmap"][i].float(),
            out["offsets"][i].float(),
            cfg.data.instance_semantic_ids,
            threshold=pp.centre_threshold,
            nms_kernel=pp.nms_kernel,
            top_k=pp.top_k,
            min_area=pp.min_area,
        )
        gt = instances_from_ids(batch["instances"][i], batch["labels"][i])
        count = float(out["density"][i].float().sum()) / cfg.data.density_scale
        ev.update(probs[i].argmax(0), batch["semantic"][i], pred, gt, density_count=count)
        decoded.append(pred)
    return decoded


def load_from_checkpoint(
    path: str | Path, map_location: str | torch.device | None = None
) -> tuple[CabrucaNet, CabrucaConfig]:
    """The model of a cabruca checkpoint, ready for inference (eval mode, on `map_location`, default cpu),
    and the config of the run that wrote it."""
    state = load_checkpoint(path)
    if "model" not in state or not isinstance(state.get("config"), dict):
        raise CheckpointError(f"{path} is not a cabruca training checkpoint (it lacks the model or config).")
    cfg = config_mod.from_dict(state["config"])
    cfg.model.pretrained = False  # the checkpoint holds every weight: never download
    model = CabrucaNet(cfg.model)
    restore_training_state({"model": state["model"], "optimizer": None}, model, None)
    return model.to(map_location or "cpu").eval(), cfg
