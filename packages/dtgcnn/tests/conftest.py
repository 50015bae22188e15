"""Tiny synthetic datasets and a tiny model config shared by the dtgcnn tests."""

from __future__ import annotations

import pytest

import dtgcnn  # noqa: F401  (fast BLAS before anything imports mlx)
from dtgcnn.config import TrainConfig
from dtgcnn.synthetic import SyntheticSpec, generate

TINY_SPEC = SyntheticSpec(num_subjects=4, per_subject=(6, 2, 2), num_vertices=48, seed=3)


def tiny_config(**kw) -> TrainConfig:
    base = dict(
        num_vertices=48,
        k=4,
        edge_conv_dims=[8, 8, 16],
        fusion_dim=32,
        hidden_dim=16,
        embedding_dim=8,
        dropout=0.1,
        batch_size=8,
        samples_per_label=4,
        learning_rate=0.01,
        num_epochs=2,
        warmup_epochs=0,
        scheduler_type="cosine",
        prefetch_batches=1,
        log_interval=1,
        plot_every=1,
        checkpoint_every=1,
        jit_compile=False,
        seed=5,
    )
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(name="tiny_config")
def tiny_config_fixture():
    """Factory: a tiny-model TrainConfig for the tiny data, with keyword overrides."""
    return tiny_config


@pytest.fixture(name="tiny_spec")
def tiny_spec_fixture():
    return TINY_SPEC


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """train 24 / val 8 / test 8 meshes of 48 vertices, 4 identities (made once per test session)."""
    return generate(tmp_path_factory.mktemp("tiny_meshes"), TINY_SPEC)


# -- triplet-text mode --------------------------------------------------------------------------------------

TOPICS = {
    "cats": "cat kitten feline whiskers purr meow litter paws tabby",
    "markets": "stock market shares trading investors prices index bonds crash",
    "cooking": "pasta recipe oven bake sauce garlic kitchen chef dinner",
    "football": "goal match striker league referee penalty stadium team coach",
    "weather": "rain storm forecast sunny cloud wind temperature snow humid",
    "space": "planet orbit rocket astronaut galaxy telescope moon launch star",
}


def write_text_corpus(folder, per_topic=12, seed=0):
    """sentences.csv (text,label) and triplets.json/.csv drawn from it: topic words make the lexical signal."""
    import csv
    import json

    import numpy as np

    rng = np.random.default_rng(seed)
    filler = ["the", "a", "of", "today", "really", "some", "very", "with", "and", "about"]
    rows = []
    for topic, words in TOPICS.items():
        vocab = words.split()
        for i in range(per_topic):
            chosen = list(rng.choice(vocab, 4, replace=False)) + list(rng.choice(filler, 3))
            rng.shuffle(chosen)
            rows.append((" ".join(chosen) + f" {i}", topic))
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "sentences.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "label"])
        w.writerows(rows)
    by = {}
    for text, label in rows:
        by.setdefault(label, []).append(text)
    labels = list(by)
    triplets = []
    for _ in range(len(rows) * 2):
        a_label, n_label = rng.choice(labels, 2, replace=False)
        a, p = rng.choice(by[a_label], 2, replace=False)
        triplets.append({"anchor": a, "positive": p, "negative": str(rng.choice(by[n_label]))})
    (folder / "triplets.json").write_text(json.dumps({"triplets": triplets}))
    with open(folder / "triplets.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["anchor", "positive", "negative"])
        w.writerows([(t["anchor"], t["positive"], t["negative"]) for t in triplets])
    return folder


@pytest.fixture(scope="session")
def text_corpus(tmp_path_factory):
    """72 labelled sentences of 6 topics and 144 triplets drawn from them (made once per session)."""
    return write_text_corpus(tmp_path_factory.mktemp("text_corpus"))


@pytest.fixture(autouse=True)
def _encoder_cache_in_tmp(tmp_path_factory, monkeypatch):
    """Encoder vectors cached in the session's temporary folder, never in the user's home."""
    monkeypatch.setenv("TRAINYARD_CACHE", str(tmp_path_factory.getbasetemp() / "encoder_cache"))
