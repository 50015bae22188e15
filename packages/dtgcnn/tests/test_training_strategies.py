"""The training guide's strategies in triplet-text mode: progressive stages freeze exactly what they claim
and resume exactly mid-stage, curriculum order follows difficulty, multi-task heads learn and are tracked,
ensembles report their members and themselves."""

import csv
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

import dtgcnn  # noqa: F401  (fast BLAS before mlx)
from common.callbacks import Callback
from common.checkpoint import load_checkpoint
from common.config import load_config
from common.testing import assert_trees_equal, history_series
from dtgcnn.config import DTGCNNConfig
from dtgcnn.testing import TINY_TEXT
from dtgcnn.text_trainer import fit_triplets, load_text_model

TINY = {**TINY_TEXT, "num_epochs": 1, "dynamic_graph_update_freq": 1}


def flat_parameters(model) -> dict[str, np.ndarray]:
    """Every trainable-kind parameter (weights, biases, BatchNorm affine), frozen or not."""
    from mlx.utils import tree_flatten

    from dtgcnn.text_model import GRAPH_STATE

    return {
        k: np.array(v)
        for k, v in tree_flatten(model.parameters())
        if k.split(".")[0] not in GRAPH_STATE and "running" not in k
    }


class ChangedPerEpoch(Callback):
    """Records which parameters each epoch changed (compared bit for bit)."""

    def __init__(self) -> None:
        self.changed: list[set[str]] = []

    def on_train_epoch_start(self, loop) -> None:
        self.before = flat_parameters(loop.task.model)

    def on_train_epoch_end(self, loop, metrics) -> None:
        after = flat_parameters(loop.task.model)
        self.changed.append({k for k, v in after.items() if not np.array_equal(v, self.before[k])})


def test_progressive_stages_freeze_exactly_what_they_claim(text_corpus, tmp_path):
    from dtgcnn.progressive import ProgressiveTrainer
    from dtgcnn.text_data import TripletDataset
    from dtgcnn.text_trainer import create_model

    cfg = DTGCNNConfig(
        **TINY | dict(scheduler="constant", weight_decay=0.01),
        progressive_epochs=[1, 1],
        progressive_lrs=[0.01, 0.002],
    )
    train_loader, val_loader = TripletDataset(text_corpus / "triplets.json").create_dataloaders(16, 0.8, 3)
    model = create_model(cfg, 512)
    probe = ChangedPerEpoch()
    result = ProgressiveTrainer(model, cfg, output_dir=tmp_path / "run").train_progressive(
        train_loader, val_loader, callbacks=[probe]
    )
    assert result.epochs_done == 3  # two stages of one epoch, then num_epochs
    names = set(flat_parameters(model))
    head = {k for k in names if k.startswith("output_proj.")}
    embedding = {k for k in names if k.startswith("input_proj.")}
    gcn = names - head - embedding
    assert gcn and all(k.startswith(("gcn_layers.", "norms.")) for k in gcn)
    # weight decay would move a frozen array that the optimizer touched: none is touched
    assert probe.changed == [embedding | head, gcn | head, names]
    lrs = [v for _, v in history_series(result.run_dir / "metrics_history.json")["lr"]]
    steps = len(train_loader)
    assert lrs == [0.01] * steps + [0.002] * steps + [0.003] * steps


def cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "dtgcnn.train", "--mode", "triplets", *args],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=600,
    )


def test_strategies_resume_exactly_after_sigkill_mid_stage_two(text_corpus, tmp_path):
    """progressive + curriculum (re-ranked by the model) + multi-task, from the command line: killed in the
    middle of progressive stage 2, resumed, equal to an uninterrupted run."""
    data = text_corpus / "sentences.csv"
    strategies = dict(
        progressive=True,
        progressive_epochs=[1, 2],
        curriculum=True,
        curriculum_stages=2,
        curriculum_difficulty="model",
        multitask=True,
        checkpoint_every_steps=1,
        train_split=0.8,
    )
    overrides = [f"{k}={json.dumps(v)}" for k, v in (TINY | strategies).items()]
    kill = "callbacks=[{class_path: common.testing.KillAt, init_args: {step: 5}}]"  # 3 steps per epoch
    killed = cli("--data", str(data), "--output-dir", str(tmp_path / "b"), *overrides, kill)
    assert killed.returncode == -9, killed.stderr[-2000:]
    resumed = cli("--output-dir", str(tmp_path / "b"), "--resume", "last", "callbacks=[]")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    cfg = load_config(DTGCNNConfig, "triplet_config", package="dtgcnn", overrides=overrides)
    fit_triplets(cfg, tmp_path / "a", data=data)
    a = load_checkpoint(tmp_path / "a" / "checkpoints" / "last.npz")
    b = load_checkpoint(tmp_path / "b" / "checkpoints" / "last.npz")
    assert a["global_step"] == b["global_step"] == 12
    assert_trees_equal(a, b, skip=("manager", "data_path", "torch"))
    ha, hb = (history_series(p / "metrics_history.json") for p in (tmp_path / "a", tmp_path / "b"))
    assert ha == hb
    assert [v for _, v in ha["curriculum/stage"]] == [2.0]
    for task in ("triplet_loss", "classification_accuracy", "regression_mae"):
        assert f"train/{task}" in ha and f"val/{task}" in ha


def margins_by_hand(ds, rows):
    """d(a,n) - d(a,p) of triplet rows on unit encoder vectors, one row at a time."""
    out = []
    for a, p, n in ds.triplets[rows]:
        va, vp, vn = (ds.vectors[i].astype(np.float64) for i in (a, p, n))
        va, vp, vn = va / np.linalg.norm(va), vp / np.linalg.norm(vp), vn / np.linalg.norm(vn)
        out.append(np.linalg.norm(va - vn) - np.linalg.norm(va - vp))
    return np.array(out)


def test_curriculum_order_is_by_difficulty(text_corpus):
    from dtgcnn.curriculum import Curriculum
    from dtgcnn.text_data import TripletDataset

    cfg = DTGCNNConfig(**TINY, curriculum=True, curriculum_stages=4)
    ds = TripletDataset(text_corpus / "triplets.json")
    train, _ = ds.create_dataloaders(16, 0.9, 3)
    curriculum = Curriculum(cfg, train)
    margins = margins_by_hand(ds, train.items)
    np.testing.assert_allclose(curriculum.margins, margins, atol=1e-9)
    n = len(train.items)
    easy_first = np.argsort(-margins, kind="stable")
    for stage in range(4):
        order = curriculum.order(stage)  # schedule: one epoch per stage
        pool = set(easy_first[: -(-n * (stage + 1) // 4)].tolist())
        assert set(order.tolist()) == pool and len(order) == n  # the easiest share, a full epoch long
        assert margins[order].min() >= margins[sorted(set(range(n)) - pool)].max(initial=-np.inf)
    # a pure function of (seed, epoch, stage): another instance gives the same epoch, epochs differ
    np.testing.assert_array_equal(Curriculum(cfg, train).order(1), curriculum.order(1))
    assert not np.array_equal(curriculum.order(4), curriculum.order(5))
    curriculum.install()
    first = [b.triplets for b in train.batches(0)]
    assert len(first) == len(train)


def test_curriculum_on_a_plateau_and_for_labelled_sentences(text_corpus):
    from dtgcnn.curriculum import Curriculum, sentence_margins
    from dtgcnn.text_data import TripletDataset

    cfg = DTGCNNConfig(
        **TINY, curriculum=True, curriculum_stages=2, curriculum_advance="plateau", curriculum_patience=2
    )
    ds = TripletDataset(text_corpus / "sentences.csv")
    train, _ = ds.create_dataloaders(16, 0.9, 3)
    curriculum = Curriculum(cfg, train)
    labels = ds.labels[train.items]
    margins = sentence_margins(ds.vectors[ds.sentence_ids[train.items]], labels)
    pool = curriculum.pool(0)
    for c in np.unique(labels):  # every label keeps its easier half
        mine = np.flatnonzero(labels == c)
        kept = np.intersect1d(mine, pool)
        assert len(kept) == -(-len(mine) // 2)
        assert margins[kept].min() >= margins[np.setdiff1d(mine, kept)].max()
    assert set(curriculum.order(0).tolist()) <= set(pool.tolist())
    logged = []
    loop = SimpleNamespace(pos=SimpleNamespace(epoch=0), log=logged.append)
    for epoch, loss in enumerate([1.0, 0.9, 0.95, 0.93]):  # two validations without improvement
        loop.pos.epoch = epoch
        curriculum.on_train_epoch_end(loop, {"val/loss": loss})
    assert curriculum.stage == 1 and logged == [{"curriculum/stage": 2.0}]
    assert np.array_equal(curriculum.pool(1), np.arange(len(train.items)))  # the last stage: every sentence
    assert set(curriculum.order(4).tolist()) - set(pool.tolist())  # harder sentences are drawn now


WORDS = {
    "cats": "cat kitten feline whiskers purr meow",
    "markets": "stock market shares trading investors prices",
    "cooking": "pasta recipe oven bake sauce garlic",
    "football": "goal match striker league referee penalty",
    "weather": "rain storm forecast sunny cloud wind",
    "space": "planet orbit rocket astronaut galaxy telescope",
}


def write_sentences(path, per_topic=14, seed=0):
    """Labelled sentences whose word counts vary (4-15 words): a regression target with a spread."""
    rng = np.random.default_rng(seed)
    rows = []
    for topic, words in WORDS.items():
        for i in range(per_topic):
            length = int(rng.integers(2, 14))
            rows.append((" ".join(rng.choice(words.split(), length)) + f" item {i}", topic))
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    return rows


def test_multitask_heads_learn_their_tasks_with_weighted_losses(tmp_path):
    rows = write_sentences(tmp_path / "sentences.csv")
    cfg = DTGCNNConfig(
        **TINY | dict(num_epochs=8), multitask=True, multitask_weights=[0.2, 0.5, 1.0], train_split=0.75
    )
    result = fit_triplets(cfg, tmp_path / "run", data=tmp_path / "sentences.csv")
    hist = history_series(result.run_dir / "metrics_history.json")
    w_triplet, w_class, w_regr = cfg.multitask_weights
    for (_, loss), (_, t), (_, c), (_, r) in zip(
        hist["train/loss_step"],
        hist["train/triplet_loss_step"],
        hist["train/classification_loss_step"],
        hist["train/regression_loss_step"],
        strict=True,
    ):
        assert loss == pytest.approx(w_triplet * t + w_class * c + w_regr * r, rel=1e-5)
    val = result.metrics
    assert val["val/classification_accuracy"] > 3 / 6  # chance: 1/6
    model, saved = load_text_model(result.run_dir / "checkpoints" / "last.npz")
    assert saved.num_classes == 6
    counts = np.array([len(t.split()) for t, _ in rows])
    mean_guess = np.mean(np.abs(counts - counts.mean()))  # MAE of always answering the mean
    assert val["val/regression_mae"] < 0.8 * mean_guess
    predicted = model.predict([t for t, _ in rows], task="regression")
    assert np.mean(np.abs(predicted - counts)) < 0.8 * mean_guess


def test_strategies_refuse_what_they_cannot_do_before_writing(text_corpus, tmp_path):
    from common.errors import ConfigError
    from dtgcnn.text_data import TripletDataset

    with pytest.raises(ConfigError, match="multitask needs labelled sentences"):
        fit_triplets(DTGCNNConfig(**TINY, multitask=True), tmp_path / "a", data=text_corpus / "triplets.json")
    bad = DTGCNNConfig(**TINY, progressive=True, progressive_epochs=[3])
    with pytest.raises(ConfigError, match="progressive_epochs and progressive_lrs take two values"):
        fit_triplets(bad, tmp_path / "b", data=text_corpus / "triplets.json")
    train, val = TripletDataset(text_corpus / "sentences.csv").create_dataloaders(16, 0.8, 3)
    with pytest.raises(ConfigError, match="trains its own members"):
        fit_triplets(
            DTGCNNConfig(**TINY, ensemble_size=2), tmp_path / "c", train_loader=train, val_loader=val
        )
    assert not (tmp_path / "c").exists()


def test_ensemble_reports_members_and_their_average_and_resumes(text_corpus, tmp_path):
    from common.cli import run_cli
    from dtgcnn.ensemble import ensemble_embeddings
    from dtgcnn.metrics import precision_at_r_metrics
    from dtgcnn.text_data import TripletDataset
    from dtgcnn.train import main

    data = text_corpus / "sentences.csv"
    overrides = [f"{k}={json.dumps(v)}" for k, v in TINY.items()] + ["ensemble_size=2", "train_split=0.7"]
    out = tmp_path / "ens"
    run_cli(main, ["--mode", "triplets", "--data", str(data), "--output-dir", str(out), *overrides])
    report = json.loads((out / "ensemble_metrics.json").read_text())
    assert [m["seed"] for m in report["members"]] == [3, 4]
    models = [load_text_model(out / f"member_{i:02d}" / "checkpoints" / "last.npz")[0] for i in (0, 1)]
    _, val = TripletDataset(data).create_dataloaders(16, 0.7, 3)
    ids, labels = val.retrieval_set()
    vectors = val.dataset.vectors[ids]
    for model, member in zip(models, report["members"], strict=True):
        found = precision_at_r_metrics(model.embed_vectors(vectors), labels)
        assert member["map_at_r"] == pytest.approx(found["map_at_r"])
    found = precision_at_r_metrics(ensemble_embeddings(models, vectors), labels)
    assert report["ensemble"]["map_at_r"] == pytest.approx(found["map_at_r"])
    assert report["ensemble"]["precision_at_1"] == pytest.approx(found["precision_at_1"])
    # resuming a finished ensemble reuses its members (their checkpoints stay as they were)
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("member_*/checkpoints/last.npz")}
    run_cli(main, ["--mode", "triplets", "--output-dir", str(out), "--resume", "last"])
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert json.loads((out / "ensemble_metrics.json").read_text()) == report
