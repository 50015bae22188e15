"""Memory options of the triplet mode: gradient checkpointing lowers MLX's peak memory at equal loss,
gradients and BatchNorm statistics; periodic cache clearing; automatic batch-size halving after an
out-of-memory error, logged, and resumed exactly after a crash."""

import logging
from types import SimpleNamespace

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

import dtgcnn  # noqa: F401  (fast BLAS before mlx)
from common.checkpoint import load_checkpoint
from common.errors import TrainyardError
from common.testing import CrashAt, SimulatedCrash, assert_trees_equal, history_series
from dtgcnn.config import DTGCNNConfig
from dtgcnn.engine import Stepper
from dtgcnn.losses import triplet_loss
from dtgcnn.memory import BatchHalving, ClearCacheEverySteps, is_out_of_memory, peak_memory_mb, split_batch
from dtgcnn.text_data import TextBatch
from dtgcnn.text_model import TextDTGCNN


def one_step(checkpointing: bool, batch=256, bank=256, width=256, layers=4):
    """(peak MiB, loss, gradients, parameters after the step's BatchNorm update) of one loss-and-gradient."""
    mx.random.seed(0)
    model = TextDTGCNN(
        input_dim=64,
        hidden_dims=[width] * layers,
        num_gcn_layers=layers,
        output_dim=32,
        graph_bank_size=bank,
        graph_k_neighbors=8,
        dropout_rate=0.1,
        gradient_checkpointing=checkpointing,
    )
    rng = np.random.default_rng(0)
    model.set_bank(rng.standard_normal((bank, 64)).astype(np.float32))
    x = mx.array(rng.standard_normal((batch, 64)).astype(np.float32))
    y = mx.array(rng.integers(0, 8, batch).astype(np.int32))
    mx.eval(model.parameters(), x, y)
    step = nn.value_and_grad(model, lambda m, x, y: triplet_loss(m(x), y, 0.2))
    mx.random.seed(1)  # the same dropout masks in both runs
    out = {}

    def run():
        out["loss"], out["grads"] = step(model, x, y)
        return out["loss"], out["grads"], model.state

    peak = peak_memory_mb(run)
    return peak, out["loss"].item(), dict(tree_flatten(out["grads"])), dict(tree_flatten(model.parameters()))


def test_gradient_checkpointing_lowers_peak_memory_at_equal_results():
    plain_peak, plain_loss, plain_grads, plain_params = one_step(False)
    ck_peak, ck_loss, ck_grads, ck_params = one_step(True)
    assert ck_loss == plain_loss
    for key, g in plain_grads.items():
        np.testing.assert_allclose(np.array(ck_grads[key]), np.array(g), rtol=1e-5, atol=1e-7, err_msg=key)
    for key, p in plain_params.items():  # BatchNorm running statistics moved once, as without checkpointing
        np.testing.assert_array_equal(np.array(ck_params[key]), np.array(p), err_msg=key)
    assert ck_peak < 0.9 * plain_peak, (ck_peak, plain_peak)


def test_cache_is_cleared_every_n_optimizer_steps():
    callback = ClearCacheEverySteps(3)
    for step in (1, 2, 3):
        mx.eval(mx.ones((256, 1024)) * 2)  # freed at once: the buffer goes to MLX's cache
        assert mx.get_cache_memory() > 0
        callback.on_train_batch_end(SimpleNamespace(pos=SimpleNamespace(step=step)), {})
    assert mx.get_cache_memory() == 0


def test_batches_split_by_whole_labels_or_whole_triplets():
    vectors = np.arange(12, dtype=np.float32)[:, None]
    labels = np.repeat([5, 2, 7, 9], 3).astype(np.int32)
    sentences = TextBatch(0, vectors, labels, None, np.arange(12))
    assert split_batch(sentences, 1) == [sentences]
    halves = split_batch(sentences, 2)
    assert [h.labels.tolist() for h in halves] == [[5] * 3 + [2] * 3, [7] * 3 + [9] * 3]
    assert [h.vectors[:, 0].tolist() for h in halves] == [[0, 1, 2, 3, 4, 5], [6, 7, 8, 9, 10, 11]]
    assert split_batch(sentences, 4) is None  # a part needs two labels
    triplets = np.array([[0, 1, 2], [0, 3, 4], [5, 6, 0], [7, 8, 9]], np.int32)
    bare = TextBatch(0, vectors[:10], np.zeros(10, np.int32), triplets, np.arange(10) + 100)
    first, second = split_batch(bare, 2)
    assert first.text_ids.tolist() == [100, 101, 102, 103, 104] and first.triplets.tolist() == [
        [0, 1, 2],
        [0, 3, 4],
    ]
    assert second.text_ids.tolist() == [100, 105, 106, 107, 108, 109]
    assert second.triplets.tolist() == [[1, 2, 0], [3, 4, 5]] and second.labels.tolist() == [0, 1, 1, 2, 2, 3]
    # a failure that halving cannot get around is one clear error; other errors pass through untouched
    stepper = SimpleNamespace(pending=None, pending_count=0, next_step=1)

    def always_out_of_memory(part, scale):
        stepper.pending, stepper.pending_count = "partial", 1
        raise MemoryError("std::bad_alloc")

    with pytest.raises(TrainyardError, match="cannot be split into 4"):
        BatchHalving(True).run(stepper, sentences, 1.0, always_out_of_memory)
    assert (stepper.pending, stepper.pending_count) == (None, 0)  # the failed parts' gradients are dropped
    with pytest.raises(MemoryError):
        BatchHalving(False).run(stepper, sentences, 1.0, always_out_of_memory)
    assert is_out_of_memory(MemoryError()) and is_out_of_memory(
        RuntimeError("[malloc] Unable to allocate 8 GB")
    )
    assert not is_out_of_memory(RuntimeError("shapes do not match"))


HALVING = dict(
    hidden_dims=[32, 16],
    num_gcn_layers=2,
    output_dim=16,
    batch_size=24,
    samples_per_label=4,
    learning_rate=0.003,
    num_epochs=3,
    warmup_epochs=0,
    graph_bank_size=32,
    graph_k_neighbors=4,
    log_interval=1,
    plot_every=0,
    tsne_plot=False,
    checkpoint_every_steps=1,
    target_margin=0.4,
    seed=3,
)


@pytest.fixture
def out_of_memory_at_step_3(monkeypatch):
    """An allocation failure the first time step 3 runs a micro-batch of more than 12 texts (as a device
    with less memory would raise it); later steps and smaller micro-batches fit."""
    original = Stepper.micro_step
    failed = []

    def micro_step(self, *inputs, scale=1.0):
        if self.next_step == 3 and len(inputs[0]) > 12 and not failed:
            failed.append(len(inputs[0]))
            raise MemoryError("std::bad_alloc")
        return original(self, *inputs, scale=scale)

    monkeypatch.setattr(Stepper, "micro_step", micro_step)
    return failed


def test_batch_halving_keeps_the_run_going_and_resumes_exactly(
    text_corpus, tmp_path, out_of_memory_at_step_3, caplog
):
    from dtgcnn.text_trainer import fit_triplets

    data = text_corpus / "sentences.csv"
    cfg = DTGCNNConfig(**HALVING)
    with caplog.at_level(logging.WARNING, logger="trainyard.dtgcnn"):
        whole = fit_triplets(cfg, tmp_path / "a", data=data)
    assert out_of_memory_at_step_3 == [24]
    assert "out of memory at optimizer step 3" in caplog.text and "as 2 micro-batches" in caplog.text
    assert whole.global_step > 5
    out_of_memory_at_step_3.clear()
    with pytest.raises(SimulatedCrash):
        fit_triplets(cfg, tmp_path / "b", data=data, callbacks=[CrashAt(5)])
    saved = load_checkpoint(tmp_path / "b" / "checkpoints" / "last_step.npz")
    assert saved["global_step"] == 4 and saved["micro_splits"] == 2  # CrashAt(5) stops before step 5 is saved
    fit_triplets(cfg, tmp_path / "b", data=data, resume=tmp_path / "b" / "checkpoints" / "last_step.npz")
    a = load_checkpoint(tmp_path / "a" / "checkpoints" / "last.npz")
    b = load_checkpoint(tmp_path / "b" / "checkpoints" / "last.npz")
    assert a["global_step"] == b["global_step"] == whole.global_step
    assert_trees_equal(a, b, skip=("manager", "config", "torch"))
    ha, hb = (history_series(p / "metrics_history.json") for p in (tmp_path / "a", tmp_path / "b"))
    assert ha == hb
