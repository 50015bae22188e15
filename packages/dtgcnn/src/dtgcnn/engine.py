"""One training step (compiled loss-and-gradient, accumulation, clipping, guards) and split evaluation."""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_map

from common.errors import NonFiniteError
from dtgcnn.config import TrainConfig
from dtgcnn.data import MeshSplit, eval_batches, make_batch
from dtgcnn.losses import joint_loss
from dtgcnn.metrics import batch_metrics, retrieval_metrics

DTYPES = {"float32": mx.float32, "bfloat16": mx.bfloat16, "float16": mx.float16}
log = logging.getLogger("trainyard.dtgcnn")


def loss_terms(model: nn.Module, cfg: TrainConfig, x: mx.array, y: mx.array):
    """(loss, {ce, triplet, accuracy, ...}) of one batch; the dict is auxiliary output, not differentiated."""
    out = model(x)
    loss, parts = joint_loss(
        out,
        y,
        classification_weight=cfg.classification_weight,
        triplet_weight=cfg.triplet_weight,
        margin=cfg.triplet_margin,
        strategy=cfg.mining_strategy,
    )
    return loss, {**parts, **batch_metrics(out, y, cfg.triplet_margin)}


def make_grad_fn(model: nn.Module, cfg: TrainConfig):
    """(x, y) -> ((loss, aux), grads): float32 master weights; bf16/fp16 compute casts a copy per step."""
    dtype = DTYPES[cfg.precision]
    if dtype == mx.float32:
        vg = nn.value_and_grad(model, lambda m, x, y: loss_terms(m, cfg, x, y))
        return lambda x, y: vg(model, x, y)

    def low_precision_loss(params, x, y):
        model.update(tree_map(lambda p: p.astype(dtype), params))  # the cast is differentiated: fp32 grads
        return loss_terms(model, cfg, x.astype(dtype), y)

    vg = mx.value_and_grad(low_precision_loss)

    def grad_fn(x, y):
        master = model.trainable_parameters()
        result = vg(master, x, y)
        model.update(master)  # put the float32 master weights back
        return result

    return grad_fn


class Stepper:
    """Micro-batch steps with gradient accumulation; an optimizer update every `accumulate` micro-batches.

    The loss-and-gradient function is `mx.compile`d (jit_compile) with the model state and the MLX random
    key as explicit state, so BatchNorm statistics and dropout keys flow in and out of the compiled graph.
    """

    def __init__(
        self, model: nn.Module, optimizer: optim.Optimizer, cfg: TrainConfig, debug_dir: Path | None
    ):
        self.model, self.optimizer, self.cfg = model, optimizer, cfg
        self.accumulate = max(1, cfg.gradient_accumulation_steps)
        self.debug_dir = debug_dir
        grad_fn = make_grad_fn(model, cfg)
        if cfg.jit_compile:
            state = [model.state, mx.random.state]
            grad_fn = partial(mx.compile, inputs=state, outputs=state)(grad_fn)
        self.grad_fn = grad_fn
        self.pending = None  # summed gradients of the micro-batches since the last update
        self.pending_count = 0

    def micro_step(self, x: np.ndarray, y: np.ndarray, *, step: int) -> dict[str, float]:
        """Forward/backward on one batch; updates the weights when `accumulate` batches are pending.

        Returns the batch's float metrics (plus grad_norm on update steps). A NaN/inf loss or gradient saves
        the batch to debug_dir and raises NonFiniteError before any weight changes."""
        xa, ya = mx.array(x), mx.array(y)
        (loss, aux), grads = self.grad_fn(xa, ya)
        mx.eval(loss, aux, grads)
        metrics = {"loss": loss.item(), **{k: v.item() for k, v in aux.items()}}
        if not np.isfinite(metrics["loss"]):
            self._fail(x, y, step, f"loss is {metrics['loss']} at step {step}")
        self.pending = grads if self.pending is None else tree_map(mx.add, self.pending, grads)
        self.pending_count += 1
        if self.pending_count >= self.accumulate:
            metrics["grad_norm"] = self.apply(x, y, step)
        return metrics

    def apply(self, x=None, y=None, step: int = -1) -> float:
        """Average the pending gradients, clip, check, update. Returns the pre-clip global norm."""
        grads = tree_map(lambda g: g / self.pending_count, self.pending)
        self.pending, self.pending_count = None, 0
        if self.cfg.gradient_clip_val > 0:
            grads, norm = optim.clip_grad_norm(grads, self.cfg.gradient_clip_val)
        else:
            norm = mx.sqrt(sum(mx.sum(g * g) for _, g in tree_flatten(grads)))
        norm = norm.item()
        if not np.isfinite(norm):
            self._fail(x, y, step, f"gradient norm is {norm} at step {step}")
        if norm > self.cfg.grad_norm_warn:
            log.warning(
                "exploding gradients: global norm %.1f > %.1f at step %d (clipped to %.1f)",
                norm,
                self.cfg.grad_norm_warn,
                step,
                self.cfg.gradient_clip_val,
            )
        self.optimizer.update(self.model, grads)
        mx.eval(self.model.state, self.optimizer.state)
        return norm

    def flush(self) -> float | None:
        """Apply a partial accumulation (end of epoch) so epochs start clean; None when nothing is pending."""
        return self.apply() if self.pending_count else None

    def _fail(self, x, y, step: int, what: str):
        where = ""
        if self.debug_dir is not None and x is not None:
            self.debug_dir.mkdir(parents=True, exist_ok=True)
            path = self.debug_dir / f"nonfinite_batch_step{step:07d}.npz"
            np.savez(path, x=x, labels=y)
            where = f" The offending batch is saved in {path}."
        self.pending, self.pending_count = None, 0
        raise NonFiniteError(
            f"Training stopped: {what}; no weights were updated and no checkpoint was "
            f"written from this state.{where} Lower learning_rate or check the data."
        )


def evaluate_split(model: nn.Module, split: MeshSplit, cfg: TrainConfig, *, with_embeddings: bool = False):
    """Eval-mode metrics over a whole split in file order: the joint loss and batch diagnostics (averaged over
    batches of batch_size, weighted by size), recall@1 and verification ROC-AUC over all its embeddings.

    With `with_embeddings`, returns (metrics, embeddings [N,E], logits [N,C], labels [N])."""
    was_training = model.training
    model.eval()
    sums: dict[str, float] = {}
    embs, logits, labels = [], [], []
    for idx in eval_batches(len(split), cfg.batch_size):
        x, y = make_batch(split, idx, None, 0, 0, 0)
        xa, ya = mx.array(x), mx.array(y)
        out = model(xa)
        loss, parts = joint_loss(
            out,
            ya,
            classification_weight=cfg.classification_weight,
            triplet_weight=cfg.triplet_weight,
            margin=cfg.triplet_margin,
            strategy=cfg.mining_strategy,
        )
        aux = {"loss": loss, **parts, **batch_metrics(out, ya, cfg.triplet_margin)}
        mx.eval(aux, out["embedding"], out["logits"])
        for k, v in aux.items():
            sums[k] = sums.get(k, 0.0) + v.item() * len(idx)
        embs.append(np.array(out["embedding"].astype(mx.float32)))
        logits.append(np.array(out["logits"].astype(mx.float32)))
        labels.append(y)
    model.train(was_training)
    emb, lab = np.concatenate(embs), np.concatenate(labels)
    metrics = {k: v / len(split) for k, v in sums.items()} | retrieval_metrics(emb, lab)
    return (metrics, emb, np.concatenate(logits), lab) if with_embeddings else metrics
