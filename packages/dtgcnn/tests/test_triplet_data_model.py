"""Triplet-text data (formats, validation, deduplication, resumable batches) and the text model (graph options,
encode determinism), retrieval metrics against pytorch-metric-learning's AccuracyCalculator."""

import json

import mlx.core as mx
import numpy as np
import pytest

import dtgcnn  # noqa: F401  (fast BLAS before mlx)
from common.errors import DataError
from dtgcnn import DTGCNN, TripletDataset
from dtgcnn.metrics import precision_at_r_metrics
from dtgcnn.text_data import in_batch_classes


@pytest.mark.parametrize(
    "name, content, message",
    [
        (
            "t.json",
            '{"triplets": [{"anchor": "a", "positive": "b"}]}',
            "triplets[0]: field 'negative' is missing",
        ),
        (
            "t.json",
            '{"triplets": [{"anchor": "a", "positive": "b", "negative": 3}]}',
            "field 'negative' is int",
        ),
        ("t.json", '[{"anchor": "a"}]', 'expected an object {"triplets"'),
        ("t.json", "{nope", "not valid JSON"),
        ("t.csv", "anchor,positive,negative\nx,y,z\nx,,z\n", "line 3: field 'positive' is empty"),
        ("t.csv", "anchor,positive,negative\nx,y,x\n", "line 2: field 'negative' repeats the anchor"),
        ("t.csv", "query,doc\nx,y\n", "line 1: header query,doc is neither"),
        ("s.csv", "text,label\nhello,a\nhello,b\n", "two labels"),
        ("t.txt", "x", "unknown data format"),
    ],
)
def test_malformed_files_are_refused_naming_file_line_and_field(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataError, match=str(path).replace(".", r"\.")) as err:
        TripletDataset(path)
    assert message in str(err.value)


def test_formats_agree_and_identical_texts_are_one_node(text_corpus):
    js, cs = TripletDataset(text_corpus / "triplets.json"), TripletDataset(text_corpus / "triplets.csv")
    assert js.kind == cs.kind == "triplets" and js.texts == cs.texts
    np.testing.assert_array_equal(js.triplets, cs.triplets)
    assert len(js.texts) < 3 * len(js.triplets)  # texts repeat across triplets: one id each
    sentences = TripletDataset(text_corpus / "sentences.csv")
    assert sentences.kind == "sentences" and len(sentences.label_names) == 6
    train, val = js.create_dataloaders(batch_size=16, train_split=0.75, seed=1)
    batch = next(iter(train))
    assert batch.vectors.shape == (len(batch.text_ids), 512) and len(set(batch.text_ids)) == len(
        batch.text_ids
    )
    a, p, n = batch.triplets.T
    assert (batch.labels[a] == batch.labels[p]).all()  # anchor-positive links share a class
    # the split is a partition, and the batches are a pure function of (seed, epoch, index)
    assert sorted(np.r_[train.items, val.items]) == list(range(len(js)))
    again = list(train.batches(2, 3))
    np.testing.assert_array_equal(again[0].text_ids, list(train.batches(2, 0))[3].text_ids)
    ptrain, _ = sentences.create_dataloaders(batch_size=8, train_split=0.8, seed=0)
    labels = next(iter(ptrain)).labels
    assert len(set(labels)) == 2 and np.bincount(labels)[labels].min() == 4  # P x K = 2 x 4


def test_in_batch_classes_follow_anchor_positive_chains_only():
    # 0-1 and 1-2 linked, 3 alone, 4-5 linked
    np.testing.assert_array_equal(in_batch_classes(np.array([[0, 1], [2, 1], [4, 5]]), 6), [0, 0, 0, 1, 2, 2])


def tiny_model(**kw):
    base = dict(
        input_dim=512, hidden_dim=32, output_dim=16, num_gcn_layers=2, graph_k_neighbors=4, dropout_rate=0.0
    )
    base.update(kw)
    mx.random.seed(0)
    model = DTGCNN(**base)
    return model


def bank_vectors(n=40, dim=512, seed=0):
    v = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_encode_is_deterministic_and_independent_of_the_other_texts(text_corpus):
    ds = TripletDataset(text_corpus / "sentences.csv")
    model = tiny_model()
    model.set_bank(ds.vectors[:30])
    model.train()  # encode must switch to eval mode itself
    texts = ds.texts[30:40]
    alone = np.concatenate([model.encode([t]) for t in texts])
    together = model.encode(texts)
    shuffled = model.encode(texts[::-1] + ["some other text entirely", "and one more"])
    np.testing.assert_allclose(together, alone, atol=1e-6)
    np.testing.assert_allclose(shuffled[: len(texts)][::-1], alone, atol=1e-6)
    np.testing.assert_array_equal(model.encode(texts), together)
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    assert model.training  # restored


def embeddings_for(x, bank, refresh=False, **kw):
    model = tiny_model(**kw)
    model.set_bank(bank)
    if refresh:
        model.input_proj.weight = model.input_proj.weight * 3.0 + 0.1  # training moved the projection
        model.refresh_graph()
    model.train()  # batch statistics: an untrained BatchNorm is the identity in eval mode
    return np.array(model(mx.array(x)))


@pytest.mark.parametrize(
    "option, a, b",
    [
        ("graph_k_neighbors", 2, 8),
        ("graph_similarity_threshold", -1.0, 0.05),
        ("gcn_activation", "relu", "tanh"),
        ("use_batch_norm", True, False),
        ("num_gcn_layers", 1, 3),
        ("hidden_dims", [32, 32], [64, 16]),
    ],
)
def test_each_graph_and_model_option_changes_the_embeddings(option, a, b):
    bank, x = bank_vectors(40), bank_vectors(6, seed=1)
    first, second = embeddings_for(x, bank, **{option: a}), embeddings_for(x, bank, **{option: b})
    assert first.shape == second.shape
    assert np.abs(first - second).max() > 1e-3


def test_graph_refresh_and_dropout_change_the_result():
    bank, x = bank_vectors(40), bank_vectors(6, seed=1)
    assert np.abs(embeddings_for(x, bank) - embeddings_for(x, bank, refresh=True)).max() > 1e-3
    model = tiny_model(dropout_rate=0.5)
    model.set_bank(bank)
    model.train()
    y1, y2 = np.array(model(mx.array(x))), np.array(model(mx.array(x)))
    assert np.abs(y1 - y2).max() > 1e-3  # dropout in training mode
    no_bank = tiny_model().train()  # no bank: no neighbours, the GCN layers see the node alone
    assert np.abs(embeddings_for(x, bank) - np.array(no_bank(mx.array(x)))).max() > 1e-3


def test_retrieval_metrics_equal_pytorch_metric_learning():
    torch = pytest.importorskip("torch")
    from pytorch_metric_learning.distances import CosineSimilarity
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
    from pytorch_metric_learning.utils.inference import CustomKNN

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 7, 120)
    labels[0] = 99  # a lone label: nothing to retrieve, skipped on both sides
    emb = rng.standard_normal((120, 8)).astype(np.float32) + labels[:, None] % 7 * 0.3
    calc = AccuracyCalculator(
        include=("precision_at_1", "r_precision", "mean_average_precision_at_r"),
        knn_func=CustomKNN(CosineSimilarity()),
    )
    e, y = torch.tensor(emb), torch.tensor(labels)
    ref = calc.get_accuracy(e, y, e, y, ref_includes_query=True)
    ours = precision_at_r_metrics(emb, labels)
    assert ours["precision_at_1"] == pytest.approx(ref["precision_at_1"], abs=1e-6)
    assert ours["r_precision"] == pytest.approx(ref["r_precision"], abs=1e-6)
    assert ours["map_at_r"] == pytest.approx(ref["mean_average_precision_at_r"], abs=1e-6)
    seen = labels < 3
    part = precision_at_r_metrics(emb, labels, seen)
    assert part["num_queries"] == seen.sum()


def test_json_triplet_file_roundtrip(tmp_path):
    doc = {
        "triplets": [
            {
                "anchor": "The cat sat on the mat",
                "positive": "A feline rested on the rug",
                "negative": "The stock market crashed today",
            },
            {
                "anchor": "Machine learning is fascinating",
                "positive": "AI and deep learning are exciting fields",
                "negative": "I enjoy cooking Italian food",
            },
        ]
    }
    (tmp_path / "t.json").write_text(json.dumps(doc))
    ds = TripletDataset(tmp_path / "t.json")
    assert len(ds) == 2 and len(ds.texts) == 6 and ds.vectors.shape == (6, 512)
