"""Monitoring and debugging: MetricsTracker (recorded in a run and read from its history, the 2x3 plot),
DebugCallback (gradient norm, collapse and NaN findings with the batch saved), the embedding maps' legend
and the loss-distribution plot."""

import logging
import math
import sys
from types import SimpleNamespace

import numpy as np
import pytest

import dtgcnn  # noqa: F401  (fast BLAS before mlx)
from common.errors import ConfigError, NonFiniteError
from common.testing import history_series
from dtgcnn.config import DTGCNNConfig
from dtgcnn.monitoring import DebugCallback, MetricsTracker
from dtgcnn.testing import TINY_TEXT
from dtgcnn.text_trainer import fit_triplets

TINY = {
    **TINY_TEXT,
    "hidden_dims": [16],
    "num_gcn_layers": 1,
    "output_dim": 8,
    "samples_per_label": 4,
    "graph_bank_size": 16,
    "train_split": 0.75,
}


def _same(series, expected):
    """(step, value) series equal: same steps, values to float precision."""
    np.testing.assert_allclose(np.array(series, dtype=float), np.array(expected, dtype=float), rtol=1e-6)


def _png_is_drawn(path, size=None):
    from matplotlib.image import imread

    img = imread(path)
    assert img.std() > 0.05, path  # not a blank canvas
    if size:
        assert img.shape[:2] == size


@pytest.fixture(scope="module")
def tracked_run(text_corpus, tmp_path_factory):
    tracker = MetricsTracker()
    debug = DebugCallback(grad_norm_threshold=0.0, collapse_threshold=10.0, max_saves=3)  # fires every step
    out = tmp_path_factory.mktemp("monitored") / "run"
    result = fit_triplets(
        DTGCNNConfig(**TINY), out, data=text_corpus / "sentences.csv", callbacks=[tracker, debug]
    )
    return result, tracker, debug


def test_tracker_records_the_guide_metrics_and_plots_them(tracked_run, tmp_path):
    result, tracker, _ = tracked_run
    hist = history_series(result.run_dir / "metrics_history.json")
    _same(tracker.series["loss"], hist["train/loss_step"])
    _same(tracker.series["gradient_norm"], hist["train/grad_norm_step"])
    for name in (
        "triplet_accuracy",
        "mean_positive_distance",
        "mean_negative_distance",
        "hard_negative_ratio",
    ):
        _same(tracker.series[name], hist[f"train/{name}_step"])
    assert len(tracker.metrics["lr"]) == result.global_step and tracker.metrics["lr"][0] == pytest.approx(
        0.003
    )
    _same(tracker.series["val/map_at_r"], hist["val/map_at_r"])
    again = MetricsTracker.from_history(result.run_dir)
    _same(again.series["loss"], tracker.series["loss"])
    _same(again.series["val/loss"], hist["val/loss"])
    _png_is_drawn(tracker.plot_metrics(tmp_path / "metrics.png"), size=(900, 1500))


def test_debug_callback_saves_the_offending_batch(tracked_run, text_corpus, caplog):
    result, _, debug = tracked_run
    from dtgcnn.text_data import TripletDataset

    saved = sorted((result.run_dir / "debug").iterdir())
    assert (
        [p.name for p in saved]
        == sorted(debug.saved)
        == [
            "collapse_step0000001.npz",
            "grad_norm_step0000001.npz",
            "grad_norm_step0000002.npz",
        ]
    )
    dataset = TripletDataset(text_corpus / "sentences.csv")
    for path in saved:
        with np.load(path, allow_pickle=False) as f:
            ids = f["text_ids"]
            assert list(f["texts"]) == [dataset.texts[i] for i in ids]
            np.testing.assert_allclose(f["vectors"], dataset.vectors[ids], atol=1e-6)
            np.testing.assert_allclose(np.linalg.norm(f["embeddings"], axis=1), 1.0, atol=1e-5)
            np.testing.assert_allclose(f["embedding_std"], f["embeddings"].std(axis=0), atol=1e-6)
            assert len(f["labels"]) == len(ids) and "grad_norm" in str(f["metrics"])


def test_debug_callback_finds_nan_and_stops(text_corpus, tmp_path, caplog):
    from dtgcnn.text_data import TripletDataset
    from dtgcnn.text_trainer import create_model

    train, _ = TripletDataset(text_corpus / "sentences.csv").create_dataloaders(16, 0.75)
    model = create_model(DTGCNNConfig(**TINY), 512)
    model.set_bank(train.dataset.vectors[:16])
    batch = next(iter(train))
    task = SimpleNamespace(model=model, train_loader=train, last_batch=batch)
    loop = SimpleNamespace(pos=SimpleNamespace(step=5), task=task, should_stop=False)
    debug = DebugCallback(debug_dir=tmp_path / "debug")
    with caplog.at_level(logging.WARNING, logger="trainyard.dtgcnn"):
        debug.on_train_batch_end(loop, {"loss": math.nan, "grad_norm": 1.0, "embedding_spread": 0.2})
        debug.on_train_batch_end(loop, {"loss": 1.0, "grad_norm": 1.0, "embedding_spread": 0.2})  # healthy
        debug.on_exception(loop, NonFiniteError("Training stopped: gradient norm is nan at step 5; ..."))
    assert loop.should_stop and "NaN" in loop.stop_reason
    assert (
        "NaN/inf in the step's metrics" in caplog.text
        and str(tmp_path / "debug" / "nan_step0000005.npz") in caplog.text
    )
    with np.load(tmp_path / "debug" / "nan_step0000005.npz", allow_pickle=False) as f:
        assert list(f["texts"]) == [train.dataset.texts[i] for i in batch.text_ids]
    # eval-mode collapse seen at validation: the validation embeddings are saved
    emb = model.embed_vectors(train.dataset.vectors[:20])
    task.val_embeddings = (emb, np.arange(20) % 4)
    with caplog.at_level(logging.WARNING, logger="trainyard.dtgcnn"):
        debug.on_validation_end(loop, {"val/embedding_spread": 0.002, "val/loss": 0.5})
        debug.on_validation_end(loop, {"val/embedding_spread": 0.2})  # healthy: nothing written
    assert debug.saved == ["nan_step0000005.npz", "nan_step0000005.npz", "collapse_val_step0000005.npz"]
    with np.load(tmp_path / "debug" / "collapse_val_step0000005.npz", allow_pickle=False) as f:
        np.testing.assert_array_equal(f["embeddings"], emb)
        np.testing.assert_allclose(f["embedding_std"], emb.std(axis=0))
    assert "validation embedding collapse: per-dimension std 0.002 < 0.01" in caplog.text
    assert debug.findings({"loss": 1.0, "grad_norm": 150.0, "embedding_spread": 0.005}, 0.005) == [
        "grad_norm",
        "collapse",
    ]


def test_embedding_maps_use_categorical_colours_with_a_legend(tmp_path, monkeypatch):
    from dtgcnn.text_plots import embeddings_tsne, embeddings_umap, label_figure

    rng = np.random.default_rng(0)
    names = ["HassTurnOn", "HassTurnOff", "HassGetWeather"]
    emb = np.concatenate([rng.normal(loc=3 * i, size=(15, 8)) for i in range(3)]).astype(np.float32)
    labels = np.repeat([0, 1, 2], 15)
    fig = label_figure(emb[:, :2], labels, "map", label_names=names)
    (ax,) = fig.axes  # one axes: no colour bar
    assert [t.get_text() for t in ax.get_legend().get_texts()] == names
    colours = {tuple(np.round(c.get_facecolor()[0], 3)) for c in ax.collections}
    assert len(colours) == 3
    assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel()
    _png_is_drawn(embeddings_tsne(emb, labels, tmp_path / "tsne.png", label_names=names))
    monkeypatch.setitem(sys.modules, "umap", None)  # as if umap-learn were not installed
    with pytest.raises(ConfigError, match=r"pip install 'trainyard-dtgcnn\[umap\]'"):
        embeddings_umap(emb, labels, tmp_path / "umap.png")
    assert not (tmp_path / "umap.png").exists()


def test_loss_distribution_shows_one_value_per_validation_anchor(tmp_path):
    from dtgcnn.plotting import hardest_triplet_gaps, loss_distribution

    rng = np.random.default_rng(1)
    emb = rng.normal(size=(30, 8))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    labels = np.repeat(np.arange(6), 5)
    labels[-1] = 99  # an anchor without a positive is left out
    d = np.linalg.norm(emb[:, None] - emb[None], axis=-1)
    expected = [
        max(d[a, p] for p in range(30) if p != a and labels[p] == labels[a])
        - min(d[a, n] for n in range(30) if labels[n] != labels[a])
        for a in range(29)
    ]
    np.testing.assert_allclose(hardest_triplet_gaps(d, labels), expected, atol=1e-12)
    path = loss_distribution(tmp_path / "loss_distribution.png", [0.9, 0.7, 0.65, 0.5], emb, labels, epoch=3)
    _png_is_drawn(path, size=(450, 1600))
