"""The triplet mode's loss and optimisation options: focal triplet loss and the adaptive margin against
hand-computed values, the small / medium / large templates, one-cycle / Xavier / accumulation / clipping
wired into a run, and mixed precision (half-precision compute, float32 weights) against float32."""

import math

import mlx.core as mx
import numpy as np
import pytest
from click.testing import CliRunner

import dtgcnn  # noqa: F401  (fast BLAS before mlx)
from common.config import load_config
from common.errors import ConfigError
from common.schedules import build_schedule
from common.testing import history_series
from dtgcnn.config import DTGCNNConfig, triplet_config_source
from dtgcnn.losses import AdaptiveMarginScheduler, FocalTripletLoss, adaptive_margin, triplet_loss
from dtgcnn.testing import TINY_TEXT as TINY


def focal_by_hand(losses, gamma):
    return [(1 - math.exp(-loss)) ** gamma * loss for loss in losses]


def test_focal_triplet_loss_equals_hand_computed_values():
    # three triplets in the plane: distances chosen so the plain losses are 0.5, 0.0 (satisfied) and 1.2
    anchor = np.array([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]], np.float32)
    positive = np.array([[0.5, 0.0], [0.1, 0.0], [1.0, 0.0]], np.float32)
    negative = np.array([[0.0, 0.2], [0.0, 2.0], [0.0, 0.0001]], np.float32)
    d_ap = np.linalg.norm(anchor - positive, axis=1)
    d_an = np.linalg.norm(anchor - negative, axis=1)
    plain = np.maximum(d_ap - d_an + 0.2, 0.0)
    np.testing.assert_allclose(plain, [0.5, 0.0, 1.1999], atol=1e-6)
    for gamma in (0.0, 1.0, 2.0, 0.5):
        got = FocalTripletLoss(margin=0.2, gamma=gamma)(*(mx.array(a) for a in (anchor, positive, negative)))
        assert got.item() == pytest.approx(np.mean(focal_by_hand(plain, gamma)), rel=1e-5)


def test_focal_weighting_of_mined_triplets_equals_brute_force():
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((12, 4)).astype(np.float32)
    labels = np.repeat(np.arange(4), 3).astype(np.int32)
    d = np.sqrt(((emb[:, None] - emb[None]) ** 2).sum(-1))
    hard = []
    for a in range(12):
        pos = [p for p in range(12) if labels[p] == labels[a] and p != a]
        neg = [n for n in range(12) if labels[n] != labels[a]]
        hard.append(max(0.0, d[a, pos].max() - d[a, neg].min() + 0.3))
    got = triplet_loss(mx.array(emb), mx.array(labels), 0.3, "batch_hard", focal_gamma=2.0).item()
    assert got == pytest.approx(np.mean(focal_by_hand(hard, 2.0)), rel=1e-5)
    total = triplet_loss(mx.array(emb), mx.array(labels), 0.3, "batch_hard", "sum", focal_gamma=2.0).item()
    assert total == pytest.approx(np.sum(focal_by_hand(hard, 2.0)), rel=1e-5)
    with pytest.raises(ConfigError, match="focal_gamma needs each triplet's own loss"):
        DTGCNNConfig(mining_strategy="batch_all", focal_gamma=2.0)


def test_adaptive_margin_moves_from_initial_to_target_by_epoch(text_corpus):
    assert [adaptive_margin(0.2, 0.5, e, 10) for e in (0, 1, 5, 10)] == pytest.approx([0.2, 0.23, 0.35, 0.5])
    assert adaptive_margin(0.2, None, 7, 10) == 0.2
    assert AdaptiveMarginScheduler(0.2, 0.5).step(4, 8) == pytest.approx(0.35)
    from dtgcnn.text_task import TripletTask
    from dtgcnn.text_trainer import create_model, loaders_for

    cfg = DTGCNNConfig(**{**TINY, "num_epochs": 4}, triplet_margin=0.1, target_margin=0.9)
    train, val = loaders_for(cfg, text_corpus / "sentences.csv")
    model = create_model(cfg, train.dataset.input_dim)
    model.eval()  # no dropout: the loss is a function of the margin alone
    task = TripletTask(cfg, model, train, val)
    batch = next(iter(train.batches(0)))
    x, y = mx.array(batch.vectors), mx.array(batch.labels)
    for epoch, margin in [(0, 0.1), (1, 0.3), (3, 0.7)]:
        task.batches(epoch, 0).close()
        assert task.margin == pytest.approx(margin)
        loss, _ = task.loss_fn(model, x, y, None)
        assert loss.item() == pytest.approx(triplet_loss(model(x), y, margin, "batch_hard").item(), rel=1e-6)


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("small", dict(batch_size=128, learning_rate=5e-5, num_epochs=100, dropout_rate=0.3, weight_decay=1e-4,
                       graph_k_neighbors=5, early_stopping_patience=10)),
        ("medium", dict(batch_size=512, learning_rate=1e-4, num_epochs=50, dropout_rate=0.1, weight_decay=1e-5,
                        graph_k_neighbors=10, gradient_accumulation_steps=2)),
        ("large", dict(batch_size=1024, learning_rate=2e-4, num_epochs=20, dropout_rate=0.05, weight_decay=1e-6,
                       graph_k_neighbors=20, mixed_precision=True, gradient_accumulation_steps=4)),
    ],
)  # fmt: skip
def test_the_guide_templates_are_bundled_and_selectable(choice, expected):
    from dtgcnn.train import main

    for source, overrides in [(choice, ["seed=7"]), (None, [f"config={choice}", "seed=7"])]:
        name, rest = triplet_config_source(source, overrides)
        cfg = load_config(DTGCNNConfig, name, package="dtgcnn", overrides=rest)
        assert {k: getattr(cfg, k) for k in expected} == expected and cfg.seed == 7
    runner = CliRunner()
    for args in (["--config", choice], [f"config={choice}"]):
        out = runner.invoke(main, ["--mode", "triplets", *args, "--print-config"])
        assert out.exit_code == 0, out.output
        assert f"batch_size: {expected['batch_size']}" in out.output
    with pytest.raises(ConfigError, match="the config is given twice"):
        triplet_config_source("small", ["config=large"])


def test_onecycle_xavier_accumulation_and_clipping_are_wired_into_a_run(text_corpus, tmp_path):
    from dtgcnn.text_model import TextDTGCNN
    from dtgcnn.text_trainer import fit_triplets

    model = TextDTGCNN(input_dim=40, hidden_dims=[30, 20], num_gcn_layers=2, weight_init="xavier_uniform")
    for layer in [model.input_proj, *model.gcn_layers, model.output_proj]:
        fan_out, fan_in = layer.weight.shape
        bound = math.sqrt(6 / (fan_in + fan_out))  # Glorot's uniform bound
        w = np.array(layer.weight)
        assert np.abs(w).max() <= bound and np.abs(w).max() > 0.9 * bound
        assert not np.array(layer.bias).any()
    cfg = DTGCNNConfig(
        **TINY,
        scheduler="onecycle",
        pct_start=0.4,
        weight_init="xavier_uniform",
        gradient_accumulation_steps=2,
        gradient_clip_val=0.05,
    )
    result = fit_triplets(cfg, tmp_path / "run", data=text_corpus / "sentences.csv")
    hist = {
        k: [v for _, v in rows]
        for k, rows in history_series(tmp_path / "run" / "metrics_history.json").items()
    }
    steps_per_epoch = len(hist["train/loss_step"]) // cfg.num_epochs
    sched_cfg, total = cfg.schedule_config(steps_per_epoch)
    schedule = build_schedule(sched_cfg, cfg.learning_rate, total)
    expected = []
    for _ in range(total):
        expected.append(schedule.lr)
        schedule.step()
    assert result.global_step == total == len(hist["lr"])
    np.testing.assert_allclose(hist["lr"], expected, rtol=1e-6)
    peak = int(np.argmax(hist["lr"]))  # rises towards learning_rate, then falls far below it
    assert 0 < peak < total - 1 and hist["lr"][0] < cfg.learning_rate / 10 > hist["lr"][-1]
    assert min(hist["train/grad_norm_step"]) > cfg.gradient_clip_val  # every step was clipped


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_mixed_precision_computes_in_half_and_keeps_float32_weights(text_corpus, tmp_path, dtype):
    from mlx.utils import tree_flatten

    from dtgcnn.engine import make_grad_fn
    from dtgcnn.text_task import text_loss_terms
    from dtgcnn.text_trainer import create_model, fit_triplets, load_text_model, loaders_for

    cfg = DTGCNNConfig(**TINY, mixed_precision=True, mixed_precision_dtype=dtype)
    train, _ = loaders_for(cfg, text_corpus / "sentences.csv")
    model = create_model(cfg, train.dataset.input_dim)
    seen = []

    def recording_loss(m, x, y, t):
        seen.append(m(x).dtype)  # the embeddings as the step computes them
        return text_loss_terms(m, cfg, x, y, t)

    batch = next(iter(train.batches(0)))
    (loss, _), grads = make_grad_fn(model, cfg, recording_loss)(
        mx.array(batch.vectors), mx.array(batch.labels), None
    )
    assert seen == [getattr(mx, dtype)] and loss.dtype == mx.float32
    assert {g.dtype for _, g in tree_flatten(grads)} == {mx.float32}
    assert {p.dtype for _, p in tree_flatten(model.parameters())} == {mx.float32}

    runs = {}
    for name, c in [("float32", DTGCNNConfig(**TINY)), (dtype, cfg)]:
        fit_triplets(c, tmp_path / name, data=text_corpus / "sentences.csv")
        runs[name] = {
            k: [v for _, v in rows]
            for k, rows in history_series(tmp_path / name / "metrics_history.json").items()
        }
    full, half = runs["float32"], runs[dtype]
    # the first step has the same weights and batch: only the compute precision differs
    assert half["train/loss_step"][0] == pytest.approx(full["train/loss_step"][0], rel=0.01)
    for key in ("train/loss", "val/loss", "train/mean_positive_distance", "train/triplet_accuracy"):
        assert half[key][-1] == pytest.approx(full[key][-1], rel=0.1), key
    trained, _ = load_text_model(tmp_path / dtype / "checkpoints" / "last.npz")
    assert {p.dtype for _, p in tree_flatten(trained.parameters())} == {mx.float32}
