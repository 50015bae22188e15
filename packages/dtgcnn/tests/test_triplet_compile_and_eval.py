"""The compiled triplet step (`jit_compile`) trains exactly as the eager one, and eval-mode embeddings of a
short run lag only by their BatchNorm statistics; the t-SNE legend shows label names."""

import csv

import mlx.core as mx
import numpy as np

import dtgcnn  # noqa: F401  (fast BLAS before mlx)
from dtgcnn.config import DTGCNNConfig
from dtgcnn.text_task import TripletTask
from dtgcnn.text_trainer import create_model, loaders_for, val_label_names

SMALL = dict(
    hidden_dims=[32, 16],
    num_gcn_layers=2,
    output_dim=16,
    batch_size=16,
    learning_rate=0.003,
    warmup_epochs=0,
    graph_bank_size=32,
    graph_k_neighbors=4,
    dropout_rate=0.1,
    seed=3,
)


def train_losses(sentences, **overrides) -> tuple[list[float], list[float], TripletTask]:
    """(loss of every step, margin of every epoch, the task) of a few epochs driven through the task's own
    calls."""
    cfg = DTGCNNConfig(**{**SMALL, **overrides})
    train_loader, val_loader = loaders_for(cfg, sentences)
    mx.random.seed(cfg.seed)
    task = TripletTask(cfg, create_model(cfg, train_loader.dataset.input_dim), train_loader, val_loader)
    losses, margins = [], []
    for epoch in range(cfg.num_epochs):
        for batch in task.batches(epoch, 0):
            losses.append(task.micro_step(batch, 1.0)["loss"])
            task.optimizer_step()
        margins.append(task.margin)
    return losses, margins, task


def test_compiled_triplet_steps_equal_the_eager_ones_across_refreshes_and_margins(text_corpus):
    # graph refresh every epoch (the bank's graph space moves) and an adaptive margin (a new value per epoch)
    run = dict(num_epochs=3, dynamic_graph_update_freq=1, target_margin=0.5)
    eager, eager_margins, _ = train_losses(text_corpus / "sentences.csv", jit_compile=False, **run)
    compiled, compiled_margins, _ = train_losses(text_corpus / "sentences.csv", jit_compile=True, **run)
    assert len(set(eager_margins)) == 3 and compiled_margins == eager_margins
    assert len(eager) >= 6 and np.all(np.isfinite(eager))
    np.testing.assert_allclose(compiled, eager, rtol=1e-4, atol=1e-6)


def test_short_run_eval_collapse_is_the_batchnorm_running_statistics_lag(text_corpus):
    # no dropout, so a training-mode forward is deterministic and comparable with eval mode
    _, _, task = train_losses(text_corpus / "sentences.csv", num_epochs=3, dropout_rate=0.0)
    model, loader = task.model, task.val_loader
    ids, _ = loader.retrieval_set()
    vectors = loader.dataset.vectors[ids]
    young = model.embed_vectors(vectors).std(axis=0).mean()
    # set the running statistics to this very batch's (bank + val nodes): eval mode must then give exactly
    # the training-mode embeddings, a healthy spread: the eval path itself is sound, only the statistics lag
    for norm in model.norms:
        norm.momentum = 1.0
    model.train()
    trained_mode = np.array(model(mx.array(vectors)))
    nodes = model.bank.shape[0] + len(vectors)
    for norm in model.norms:  # the running variance is the unbiased one; training mode divides by n
        norm.running_var = norm.running_var * (nodes - 1) / nodes
    calibrated = model.embed_vectors(vectors)
    np.testing.assert_allclose(calibrated, trained_mode, atol=1e-5)
    healthy = calibrated.std(axis=0).mean()
    assert healthy > 0.05 and young < 0.6 * healthy  # the young running statistics shrink the spread


def test_the_tsne_legend_names_each_val_label_as_the_file_does(text_corpus):
    _, _, task = train_losses(text_corpus / "sentences.csv", num_epochs=0)
    names = val_label_names(task)
    with open(text_corpus / "sentences.csv", newline="") as fh:
        label_of = {row["text"]: row["label"] for row in csv.DictReader(fh)}
    ids, labels = task.val_loader.retrieval_set()
    texts = task.val_loader.dataset.texts
    assert len(ids) > 0 and [names[y] for y in labels] == [label_of[texts[i]] for i in ids]
