"""The gradient side of a training step (compiled loss-and-gradient, accumulation, clipping, NaN guard) and
split evaluation."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_map, tree_unflatten

from common import mlx_support
from common.errors import NonFiniteError
from common.loop import Task
from common.precision import canonical_precision
from dtgcnn import cpu_kernels
from dtgcnn.config import TrainConfig
from dtgcnn.data import MeshSplit, eval_batches, make_batch
from dtgcnn.losses import joint_loss
from dtgcnn.metrics import batch_metrics, retrieval_metrics
from dtgcnn.model import EdgeConv

# compute dtype per canonical precision name (common.precision); the weights stay float32
DTYPES = {"32": mx.float32, "bf16-mixed": mx.bfloat16, "16-mixed": mx.float16}
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


def make_grad_fn(model: nn.Module, cfg: TrainConfig, loss_fn=None):
    """(*inputs) -> ((loss, aux), grads): float32 master weights; bf16/fp16 compute casts a copy per step.

    `loss_fn(model, *inputs) -> (loss, aux)`; default: the mesh mode's joint loss of (x, y)."""
    if loss_fn is None:
        loss_fn = lambda m, x, y: loss_terms(m, cfg, x, y)  # noqa: E731
    dtype = DTYPES[canonical_precision(cfg.precision)]
    if dtype == mx.float32:
        vg = nn.value_and_grad(model, loss_fn)
        return lambda *inputs: vg(model, *inputs)

    def low_precision_loss(params, *inputs):
        model.update(tree_map(lambda p: p.astype(dtype), params))  # the cast is differentiated: fp32 grads
        cast = [
            a.astype(dtype) if isinstance(a, mx.array) and mx.issubdtype(a.dtype, mx.floating) else a
            for a in inputs
        ]
        return loss_fn(model, *cast)

    vg = mx.value_and_grad(low_precision_loss)

    def grad_fn(*inputs):
        master = model.trainable_parameters()
        result = vg(master, *inputs)
        model.update(master)  # put the float32 master weights back
        return result

    return grad_fn


def compile_with_packed_aux(compile_fn, grad_fn):
    """`compile_fn(grad_fn)` with the auxiliary metrics leaving the compiled graph as ONE stacked array,
    unpacked into the same dict outside.

    Why: MLX's compiled gradient (0.32) fails on its first call with `IndexError: _Map_base::at` when an
    output of the graph is an identical recomputation of another array in it (its common-subexpression pass
    merges the two and then loses the output). Diagnostics do that naturally (the triplet mode's
    triplet_accuracy is 1 - x and hard_negative_ratio is x, x computed twice); as inputs of one stack they
    are merged harmlessly. The dict's keys are read while tracing (the same for every call of one loss)."""
    keys: list[str] = []

    def packed(*inputs):
        (loss, aux), grads = grad_fn(*inputs)
        keys[:] = list(aux)
        stacked = (
            mx.stack([mx.reshape(aux[k], ()).astype(mx.float32) for k in keys]) if keys else mx.zeros((0,))
        )
        return (loss, stacked), grads

    compiled = compile_fn(packed)

    def unpacked(*inputs):
        (loss, stacked), grads = compiled(*inputs)
        return (loss, {k: stacked[i] for i, k in enumerate(keys)}), grads

    return unpacked


def runs_cpu_kernels(model: nn.Module) -> bool:
    """Whether the model's step calls the mesh model's CPU kernels, which `mx.compile` cannot trace."""
    return cpu_kernels.enabled() and any(isinstance(m, EdgeConv) for m in model.modules())


class Stepper:
    """The gradient side of a training step: micro-batch gradients summed into a pending total, then one
    clipped, guarded optimizer update. How many micro-batches make a step is the caller's (the training
    loop's) choice, given to `micro_step` as each micro-batch's `scale`.

    The loss-and-gradient function is `mx.compile`d (jit_compile) with the model state and the MLX random
    key as explicit state, so BatchNorm statistics and dropout keys flow in and out of the compiled graph.
    Not when the mesh model runs its CPU kernels (`dtgcnn.cpu_kernels`): those evaluate their inputs mid-step,
    which a compiled graph cannot, so that step runs uncompiled (and is faster than the compiled MLX ops it
    replaces).

    Data parallel (`common.mlx_support.GROUP` set by `init_distributed` under mlx.launch): micro-batches
    accumulate locally; `optimizer_step` averages the pending gradient sums over the processes in ONE
    all-reduce (`all_sum / size`, the arrays packed into one buffer) before clipping and the update. The same
    buffer carries the BatchNorm running statistics (averaged, so every process validates the same model)
    and a non-finite-loss flag (so every process stops at the same step).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: optim.Optimizer,
        cfg: TrainConfig,
        debug_dir: Path | None,
        loss_fn=None,
    ):
        self.model, self.optimizer, self.cfg = model, optimizer, cfg
        self.debug_dir = debug_dir
        grad_fn = make_grad_fn(model, cfg, loss_fn)
        if cfg.jit_compile and runs_cpu_kernels(model):
            log.info(
                "jit_compile: the step runs uncompiled, as the mesh model's CPU kernels evaluate inside it"
            )
        elif cfg.jit_compile:
            state = [model.state, mx.random.state]
            grad_fn = compile_with_packed_aux(partial(mx.compile, inputs=state, outputs=state), grad_fn)
        self.grad_fn = grad_fn
        self.pending = None  # sum of scale * gradients of the micro-batches of the step in progress
        self.pending_count = 0
        self._last_batch: tuple | None = None  # the micro-batch's inputs, saved if the step goes non-finite
        self._nonfinite_loss = False  # data parallel: a micro-batch of this step had a NaN/inf loss

    @property
    def next_step(self) -> int:
        """The optimizer step being gathered, counted from 1 (AdamW's own counter: it survives a resume)."""
        return int(self.optimizer.state.get("step", 0)) + 1

    def micro_step(self, *inputs: np.ndarray | None, scale: float = 1.0) -> dict[str, float]:
        """Loss and gradients of one micro-batch; adds `scale` x its gradients to the pending sum.

        `scale` is 1 / (micro-batches in this optimizer step), so the step's update follows the mean of its
        micro-batch losses. Returns the batch's float metrics (the unscaled loss under "loss"). A NaN/inf
        loss saves the batch to debug_dir and raises NonFiniteError; nothing is updated."""
        (loss, aux), grads = self.grad_fn(*(None if a is None else mx.array(a) for a in inputs))
        if scale != 1.0:
            grads = tree_map(lambda g: g * scale, grads)
        mx.eval(loss, aux, grads)
        metrics = {"loss": loss.item(), **{k: v.item() for k, v in aux.items()}}
        self._last_batch = inputs
        if not np.isfinite(metrics["loss"]):
            if mlx_support.GROUP is None:
                self._fail(f"loss is {metrics['loss']} at step {self.next_step}")
            self._nonfinite_loss = True  # every process learns of it in the step's all-reduce
        self.pending = grads if self.pending is None else tree_map(mx.add, self.pending, grads)
        self.pending_count += 1
        return metrics

    def optimizer_step(self) -> float:
        """Clip the pending gradient sum, check it, update the weights. Returns the pre-clip global norm.

        A NaN/inf norm saves the step's last micro-batch to debug_dir and raises NonFiniteError before any
        weight changes."""
        if self.pending is None:
            raise RuntimeError("optimizer_step() without a micro_step() since the last update")
        grads, step = self.pending, self.next_step
        self.pending, self.pending_count = None, 0
        if mlx_support.GROUP is not None:
            grads = self._all_reduce(grads, step)
        if self.cfg.gradient_clip_val > 0:
            grads, norm = optim.clip_grad_norm(grads, self.cfg.gradient_clip_val)
        else:
            norm = mx.sqrt(sum(mx.sum(g * g) for _, g in tree_flatten(grads)))
        norm = norm.item()
        if not np.isfinite(norm):
            self._fail(f"gradient norm is {norm} at step {step}")
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

    def _all_reduce(self, grads, step: int):
        """Mean of the pending gradients (and of the BatchNorm statistics) over the processes: one all_sum."""
        trainable = {k for k, _ in tree_flatten(self.model.trainable_parameters())}
        frozen = [(k, v) for k, v in tree_flatten(self.model.parameters()) if k not in trainable]
        flat_grads = tree_flatten(grads)
        flag = mx.array([float(self._nonfinite_loss)])
        arrays = [g for _, g in flat_grads] + [v for _, v in frozen] + [flag]
        reduced = mlx_support.all_reduce_mean_arrays(arrays)
        n = len(flat_grads)
        grads = tree_unflatten([(k, g) for (k, _), g in zip(flat_grads, reduced[:n], strict=True)])
        if reduced[-1].item() > 0:
            self._nonfinite_loss = False
            self._fail(f"loss is not finite on at least one process at step {step}")
        if frozen:
            self.model.update(
                tree_unflatten([(k, v) for (k, _), v in zip(frozen, reduced[n:-1], strict=True)])
            )
        return grads

    def _fail(self, what: str):
        where = ""
        if self.debug_dir is not None and self._last_batch is not None:
            names = ["x", "labels"] + [f"input{i}" for i in range(2, len(self._last_batch))]
            arrays = {n: a for n, a in zip(names, self._last_batch, strict=True) if a is not None}
            self.debug_dir.mkdir(parents=True, exist_ok=True)
            path = self.debug_dir / f"nonfinite_batch_step{self.next_step:07d}.npz"
            np.savez(path, **arrays)
            where = f" The offending batch is saved in {path}."
        self.pending, self.pending_count = None, 0
        raise NonFiniteError(
            f"Training stopped: {what}; no weights were updated and no checkpoint was "
            f"written from this state.{where} Lower learning_rate or check the data."
        )


class StepperTask(Task):
    """What the mesh and the text tasks share around their `Stepper` (set as `self.stepper`, with the MLX
    optimizer as `self.optimizer`): the optimizer step, the learning rate, and metrics averaged over the
    processes of an `mlx.launch` run."""

    stepper: Stepper
    optimizer: optim.Optimizer

    def optimizer_step(self) -> float:
        return self.stepper.optimizer_step()

    def set_lrs(self, lrs: Sequence[float]) -> None:
        self.optimizer.learning_rate = float(lrs[0])

    def reduce_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        """Mean over the processes (one all_sum of the packed values); unchanged in a single process."""
        return mlx_support.all_reduce_mean(metrics)


def evaluate_split(
    model: nn.Module,
    split: MeshSplit,
    cfg: TrainConfig,
    *,
    with_embeddings: bool = False,
    max_batches: int | None = None,
):
    """Eval-mode metrics over a whole split in file order: the joint loss and batch diagnostics (averaged over
    batches of batch_size, weighted by size), recall@1 and verification ROC-AUC over all its embeddings.
    `max_batches` evaluates only the first batches (fast-dev-run), the metrics over those samples.

    With `with_embeddings`, returns (metrics, embeddings [N,E], logits [N,C], labels [N])."""
    was_training = model.training
    model.eval()
    sums: dict[str, float] = {}
    embs, logits, labels = [], [], []
    seen = 0
    for idx in itertools.islice(eval_batches(len(split), cfg.batch_size), max_batches):
        seen += len(idx)
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
    metrics = {k: v / seen for k, v in sums.items()} | retrieval_metrics(emb, lab)
    return (metrics, emb, np.concatenate(logits), lab) if with_embeddings else metrics
