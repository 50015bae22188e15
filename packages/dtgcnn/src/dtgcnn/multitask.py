"""Multi-task training: the text DT-GCNN's embeddings feed a triplet loss, a classification head and a
regression head, trained together with weighted losses (`multitask_weights`: triplet, classification,
regression).

- classification: the sentence's label (labelled-sentence data only: bare triplets have no labels);
- regression: the sentence's length in words, standardised by the training sentences' mean and standard
  deviation (kept in the model, so `predict(texts, 'regression')` answers in words). A real property of every text
  that the encoder vectors carry only indirectly, so the head shows how much of it the embedding keeps.

Each task's metrics are tracked apart: train/ and val/ `triplet_loss`, `classification_loss`,
`classification_accuracy`, `regression_loss` (MSE of the standardised target), `regression_mae` (in words);
`loss` is the weighted sum that is trained (val/loss too, which early stopping watches).
"""

from __future__ import annotations

from collections.abc import Sequence

import mlx.core as mx
import mlx.nn as nn
import numpy as np

import dtgcnn  # noqa: F401  (fast BLAS before mlx)
from common.errors import ConfigError
from dtgcnn.config import DTGCNNConfig
from dtgcnn.text_model import TextDTGCNN
from dtgcnn.text_task import TripletTask, evaluate_loader, text_loss_terms


def word_counts(texts: Sequence[str]) -> np.ndarray:
    return np.array([len(t.split()) for t in texts], dtype=np.float32)


class MultiTaskDTGCNN(TextDTGCNN):
    """`MultiTaskDTGCNN(config)`: the text DT-GCNN plus `classification_head` (output_dim -> num_classes)
    and `regression_head` (output_dim -> 1) on its unit embeddings. `model(x, task=...)` with task
    'triplet' (embeddings), 'classification' (logits), 'regression' (standardised value) or 'all'."""

    def __init__(self, config: DTGCNNConfig, num_classes: int | None = None) -> None:
        super().__init__(config)
        num_classes = num_classes or config.num_classes
        if num_classes < 2:
            raise ConfigError(f"a multi-task model needs num_classes >= 2 labels, got {num_classes}.")
        # unit embeddings cluster tightly (a spread of ~0.05 per dimension): standardised per dimension, the
        # heads need no large weights, which AdamW steps and gradient clipping would take long to grow
        self.head_norm = nn.BatchNorm(config.output_dim, affine=False)
        self.classification_head = nn.Linear(config.output_dim, num_classes)
        self.regression_head = nn.Linear(config.output_dim, 1)
        self.target_stats = mx.array([0.0, 1.0])  # mean, std of the regression target (words)
        self.freeze(recurse=False, keys=["target_stats"])

    def heads(self, emb: mx.array) -> tuple[mx.array, mx.array]:
        """(logits [B, num_classes], standardised regression [B]) of unit embeddings [B, output_dim]."""
        h = self.head_norm(emb)
        return self.classification_head(h), self.regression_head(h)[:, 0]

    def __call__(self, x: mx.array, task: str = "triplet"):
        emb = super().__call__(x)
        if task == "triplet":
            return emb
        logits, value = self.heads(emb)
        outputs = {"classification": logits, "regression": value}
        return (emb, logits, value) if task == "all" else outputs[task]

    def predict(self, texts: Sequence[str], task: str = "triplet") -> np.ndarray:
        """Eval-mode outputs for texts: 'triplet' unit embeddings [N, output_dim], 'classification' logits
        [N, num_classes], 'regression' the predicted length in words [N]."""
        emb = self.encode(texts)
        if task == "triplet":
            return emb
        was_training = self.training
        self.eval()  # the heads' standardisation uses its running statistics
        logits, value = self.heads(mx.array(emb))
        self.train(was_training)
        if task == "classification":
            return np.array(logits)
        mean, std = np.array(self.target_stats).tolist()
        return np.array(value) * std + mean


def multitask_loss_terms(model: MultiTaskDTGCNN, cfg: DTGCNNConfig, x, y, triplets, target, margin=None):
    """(weighted loss, diagnostics) of one batch: one forward, three losses (`margin`: the epoch's)."""
    emb, logits, value = model(x, task="all")
    # the triplet side (focal weighting, adaptive margin and all) on these same embeddings
    triplet, aux = text_loss_terms(lambda _: emb, cfg, x, y, triplets, margin)
    ce = mx.mean(nn.losses.cross_entropy(logits.astype(mx.float32), y))
    mse = mx.mean(mx.square(value.astype(mx.float32) - target))
    w_triplet, w_class, w_regr = cfg.multitask_weights
    loss = w_triplet * triplet + w_class * ce + w_regr * mse
    std = model.target_stats[1]
    return loss, {
        **aux,
        "triplet_loss": triplet,
        "classification_loss": ce,
        "classification_accuracy": mx.mean(mx.argmax(logits, axis=1) == y),
        "regression_loss": mse,
        "regression_mae": mx.mean(mx.abs(value.astype(mx.float32) - target)) * std,
    }


def check(cfg: DTGCNNConfig, data) -> None:
    """Refuse what multi-task training cannot do, before anything is built."""
    if data.kind != "sentences":
        raise ConfigError(
            f"multitask needs labelled sentences (a text,label CSV) for its classification head; "
            f"{data.path} holds bare triplets."
        )
    if len(cfg.multitask_weights) != 3 or min(cfg.multitask_weights) < 0:
        raise ConfigError(
            "multitask_weights takes three weights >= 0 (triplet, classification, regression), got "
            f"{list(cfg.multitask_weights)}."
        )


class MultiTaskTask(TripletTask):
    """The triplet task with the two heads' losses and metrics added (labelled sentences only)."""

    def __init__(self, cfg: DTGCNNConfig, model: MultiTaskDTGCNN, train_loader, val_loader, **kwargs) -> None:
        check(cfg, train_loader.dataset)
        super().__init__(cfg, model, train_loader, val_loader, **kwargs)
        data = train_loader.dataset
        counts = word_counts(data.texts)  # per distinct text
        train_counts = counts[data.sentence_ids[train_loader.items]]
        mean, std = float(train_counts.mean()), float(max(train_counts.std(), 1e-6))
        model.target_stats = mx.array([mean, std])  # a pure function of the training split: same on resume
        self.targets = (counts - mean) / std  # standardised target of every text
        self.loss_fn = lambda m, x, y, t, r: multitask_loss_terms(m, cfg, x, y, t, r, self.margin)  # noqa: E731
        self.rebuild_stepper()

    def forward_backward(self, batch, scale: float) -> dict[str, float]:
        target = self.targets[batch.text_ids].astype(np.float32)
        return self.stepper.micro_step(batch.vectors, batch.labels, None, target, scale=scale)

    def validate(self) -> dict[str, float]:
        if self.val_loader is None:
            return {}
        metrics = evaluate_loader(self, self.val_loader)
        emb, labels = self.val_embeddings
        ids, _ = self.val_loader.retrieval_set()
        was_training = self.model.training
        self.model.eval()  # the heads' standardisation: running statistics, not this batch's
        logits, value = self.model.heads(mx.array(emb))
        self.model.train(was_training)
        target = mx.array(self.targets[ids].astype(np.float32))
        y = mx.array(labels)
        ce = mx.mean(nn.losses.cross_entropy(logits, y)).item()
        mse = mx.mean(mx.square(value - target)).item()
        w_triplet, w_class, w_regr = self.cfg.multitask_weights
        return metrics | {
            "triplet_loss": metrics["loss"],
            "loss": w_triplet * metrics["loss"] + w_class * ce + w_regr * mse,
            "classification_loss": ce,
            "classification_accuracy": mx.mean(mx.argmax(logits, axis=1) == y).item(),
            "regression_loss": mse,
            "regression_mae": mx.mean(mx.abs(value - target)).item()
            * float(self.model.target_stats[1].item()),
        }
