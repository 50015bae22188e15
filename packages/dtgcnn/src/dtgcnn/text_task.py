"""Triplet-text training on the shared loop (`common.loop`): `TripletTask` holds what is this mode's own.

- batches of encoder vectors (`text_data.TextLoader`, resumable), the text DT-GCNN and its optimizer, the
  triplet loss and its diagnostics through the mesh mode's gradient machinery (`engine.Stepper`:
  accumulation, clipping, NaN guard, bf16 compute);
- the graph schedule: the reference bank is filled from the training texts when the model has none, and
  the graph space is refreshed at the start of every `dynamic_graph_update_freq`-th epoch (model state, so
  a resumed run has it exactly);
- the margin of each epoch (`target_margin`: the adaptive margin, a function of the epoch, so resume is
  exact; validation keeps `triplet_margin`, so val/loss compares like with like across epochs) and the
  focal weighting (`focal_gamma`);
- automatic batch-size halving after an out-of-memory error (`dtgcnn.memory.BatchHalving`; the split is
  task state);
- validation: the loss and diagnostics over the val batches, retrieval (precision@1, R-precision, MAP@R)
  of the val texts by their labels, and the same retrieval on the untrained encoder vectors
  (`val/encoder_<name>`), so a run shows what training added.
"""

from __future__ import annotations

import logging
from pathlib import Path

import mlx.core as mx
import mlx.optimizers as optim
import numpy as np

import dtgcnn  # noqa: F401  (fast BLAS before mlx)
from common.config import config_to_dict
from common.errors import CheckpointError, ConfigError
from common.mlx_support import load_model_state, load_optimizer_state, model_state, optimizer_state
from dtgcnn.config import DTGCNNConfig
from dtgcnn.engine import Stepper, StepperTask
from dtgcnn.losses import adaptive_margin, triplet_loss
from dtgcnn.memory import BatchHalving
from dtgcnn.metrics import precision_at_r_metrics, triplet_batch_metrics
from dtgcnn.strategies import run_epochs
from dtgcnn.text_data import TextBatch, TextLoader, text_keys
from dtgcnn.text_model import TextDTGCNN

log = logging.getLogger("trainyard.dtgcnn")
MODE = "triplets"  # the checkpoint's "mode" entry: tells the loaders a text checkpoint from a mesh one


def text_loss_terms(
    model: TextDTGCNN, cfg: DTGCNNConfig, x: mx.array, y: mx.array, triplets, margin: float | None = None
):
    """(loss, diagnostics) of one batch; the diagnostics are auxiliary output, not differentiated.

    `margin`: this epoch's margin (the adaptive margin schedule); None = triplet_margin."""
    margin = cfg.triplet_margin if margin is None else margin
    emb = model(x)
    loss = triplet_loss(
        emb.astype(mx.float32),
        y,
        margin,
        cfg.mining_strategy,
        cfg.loss_reduction,
        triplets,
        focal_gamma=cfg.focal_gamma,
    )
    return loss, triplet_batch_metrics(emb, y, margin)


def build_optimizer(cfg: DTGCNNConfig) -> optim.Optimizer:
    if cfg.optimizer == "adamw":
        return optim.AdamW(learning_rate=cfg.learning_rate, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return optim.Adam(learning_rate=cfg.learning_rate)
    return optim.SGD(learning_rate=cfg.learning_rate, momentum=0.9, weight_decay=cfg.weight_decay)


class TripletTask(StepperTask):
    """The triplet-text side of the loop. A batch is a `TextBatch`; see the module docstring."""

    def __init__(
        self,
        cfg: DTGCNNConfig,
        model: TextDTGCNN,
        train_loader: TextLoader,
        val_loader: TextLoader | None,
        *,
        debug_dir: Path | None = None,
    ) -> None:
        self.cfg, self.model = cfg, model
        self.train_loader, self.val_loader = train_loader, val_loader
        data = train_loader.dataset
        if model.spec["input_dim"] != data.input_dim:
            raise CheckpointError(
                f"The model takes {model.spec['input_dim']}-wide vectors but the encoder {data.encoder_spec!r} "
                f"gives {data.input_dim}; set input_dim to the encoder's width."
            )
        model.encoder_name = data.encoder_spec
        if model.bank_size == 0:
            bank_ids = self.bank_text_ids()
            model.set_bank(data.vectors[bank_ids])
        if cfg.focal_gamma and cfg.mining_strategy == "none" and data.kind == "sentences":
            raise ConfigError(
                "focal_gamma needs each triplet's own loss; mining_strategy none over labelled sentences sums "
                "every triplet in closed form. Use batch_hard or semi_hard, or set focal_gamma=0."
            )
        self.optimizer = build_optimizer(cfg)
        self.optimizer.init(model.trainable_parameters())
        self.margin = cfg.triplet_margin  # this epoch's margin (set in `batches`), read by the loss
        self.halving = BatchHalving(cfg.auto_batch_halving)  # per-forward batch split after out-of-memory
        loss_fn = lambda m, x, y, t: text_loss_terms(m, cfg, x, y, t, self.margin)  # noqa: E731
        self.stepper = Stepper(model, self.optimizer, cfg, debug_dir, loss_fn=loss_fn)
        self.loss_fn = loss_fn
        self.epoch_hooks: list = []  # strategies' per-epoch changes (progressive stages), before the batches
        self.val_embeddings: tuple[np.ndarray, np.ndarray] | None = None  # for the plots
        self._encoder_retrieval: dict[str, float] | None = None

    def bank_text_ids(self) -> np.ndarray:
        """graph_bank_size distinct training texts, a seeded choice (deterministic per seed)."""
        loader = self.train_loader
        ids, _ = loader.retrieval_set()
        order = np.random.default_rng(self.cfg.seed).permutation(len(ids))
        return ids[order[: self.model.bank.shape[0]]]

    # -- the loop's calls ----------------------------------------------------------------------------------
    def num_batches(self, epoch: int) -> int:
        return len(self.train_loader)

    def batches(self, epoch: int, start: int):
        for hook in self.epoch_hooks:
            hook(self, epoch)
        cfg = self.cfg
        margin = adaptive_margin(cfg.triplet_margin, cfg.target_margin, epoch, run_epochs(cfg))
        if margin != self.margin:
            self.margin = margin
            if cfg.jit_compile:
                self.rebuild_stepper()  # a compiled step holds the margin it was traced with
        freq = self.cfg.dynamic_graph_update_freq
        if start == 0 and freq > 0 and epoch % freq == 0:
            self.model.refresh_graph()
        self.train_loader.prefetch_depth = max(1, self.cfg.prefetch_factor)
        return self.train_loader.batches(epoch, start)

    def rebuild_stepper(self) -> None:
        """A fresh gradient step for `self.loss_fn` (also after the trainable set changed: a compiled step
        is traced for one set of trainable arrays)."""
        self.stepper = Stepper(
            self.model, self.optimizer, self.cfg, self.stepper.debug_dir, loss_fn=self.loss_fn
        )

    def micro_step(self, batch: TextBatch, scale: float) -> dict[str, float]:
        self.last_batch = batch  # what dtgcnn.monitoring.DebugCallback saves when a check fails
        return self.halving.run(self.stepper, batch, scale, self.forward_backward)

    def forward_backward(self, batch: TextBatch, scale: float) -> dict[str, float]:
        """Loss and gradients (times `scale`) of one micro-batch, added to the step's pending gradients."""
        triplets = batch.triplets if self.cfg.mining_strategy == "none" else None
        return self.stepper.micro_step(batch.vectors, batch.labels, triplets, scale=scale)

    def validate(self) -> dict[str, float]:
        if self.val_loader is None:
            return {}
        return evaluate_loader(self, self.val_loader)

    def encoder_retrieval(self) -> dict[str, float]:
        """Retrieval of the val texts on the raw encoder vectors (constant: computed once)."""
        if self._encoder_retrieval is None:
            ids, labels = self.val_loader.retrieval_set()
            raw = precision_at_r_metrics(self.val_loader.dataset.vectors[ids], labels)
            self._encoder_retrieval = {f"encoder_{k}": v for k, v in raw.items() if k != "num_queries"}
        return self._encoder_retrieval

    # -- state ---------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        data = self.train_loader.dataset
        ids, _ = self.train_loader.retrieval_set()
        state = {
            "mode": MODE,
            "model": model_state(self.model),
            "optimizer": optimizer_state(self.optimizer),
            "config": config_to_dict(self.cfg),
            "input_dim": self.model.spec["input_dim"],
            "data_path": str(data.path.resolve()),
            "train_text_keys": text_keys([data.texts[i] for i in ids]),
            "micro_splits": self.halving.splits,  # batch-size halving after out-of-memory, kept on resume
        }
        if data.label_names is not None:
            seen = sorted({data.label_names[i] for i in data.labels[self.train_loader.items]})
            state["train_labels"] = seen
        return state

    def load_state_dict(self, state: dict) -> None:
        if state.get("mode") != MODE:
            raise CheckpointError(
                "This checkpoint is not a triplet-text checkpoint (it has no mode 'triplets')."
            )
        load_model_state(self.model, state["model"])
        load_optimizer_state(self.optimizer, state["optimizer"])
        self.halving.splits = int(state.get("micro_splits", 1))


def evaluate_loader(task: TripletTask, loader: TextLoader) -> dict[str, float]:
    """Eval-mode loss and diagnostics over the loader's batches (weighted by batch size), retrieval metrics
    of its texts, and the encoder's retrieval beside them."""
    model, cfg = task.model, task.cfg
    was_training = model.training
    model.eval()
    sums: dict[str, float] = {}
    count = 0
    for batch in loader.batches(0, 0):
        x, y = mx.array(batch.vectors), mx.array(batch.labels)
        t = mx.array(batch.triplets) if cfg.mining_strategy == "none" and batch.triplets is not None else None
        loss, aux = text_loss_terms(model, cfg, x, y, t)
        mx.eval(loss, aux)
        n = len(batch.labels)
        for k, v in {"loss": loss, **aux}.items():
            sums[k] = sums.get(k, 0.0) + v.item() * n
        count += n
    model.train(was_training)
    ids, labels = loader.retrieval_set()
    emb = model.embed_vectors(loader.dataset.vectors[ids])
    task.val_embeddings = (emb, labels)
    retrieval = precision_at_r_metrics(emb, labels)
    retrieval.pop("num_queries")
    return {k: v / max(count, 1) for k, v in sums.items()} | retrieval | task.encoder_retrieval()
