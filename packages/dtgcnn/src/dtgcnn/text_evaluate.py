"""Retrieval evaluation of a triplet-mode checkpoint on a text file, seen and unseen labels apart.

Every text of the file is a query against all the others (leave-one-out, cosine): precision@1, R-precision
and MAP@R of the trained embeddings and of the encoder's own vectors beside them. Queries are reported
overall and split by whether training saw their label (labelled sentences: the label name is among the
checkpoint's training labels; bare triplets: the text itself was a training text), so a model that only
memorised its training classes cannot hide behind them. Triplet files also report the strict accuracy of
their own triplets, d(a,p) < d(a,n).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from common.checkpoint import load_checkpoint
from dtgcnn.metrics import precision_at_r_metrics
from dtgcnn.text_data import TripletDataset, in_batch_classes, text_keys
from dtgcnn.text_trainer import load_text_model


def evaluate_text(checkpoint: str | Path, data: str | Path) -> dict:
    model, cfg = load_text_model(checkpoint)
    state = load_checkpoint(checkpoint)
    ds = TripletDataset(data, cfg.encoder, cache_dir=cfg.encoder_cache_dir or None)
    if ds.kind == "sentences":
        ids, labels = ds.sentence_ids, ds.labels
        trained = set(state.get("train_labels", []))
        seen = np.array([ds.label_names[i] in trained for i in labels], dtype=bool)
    else:
        ids, local = np.unique(ds.triplets, return_inverse=True)
        labels = in_batch_classes(local.reshape(-1, 3)[:, :2], len(ids))
        trained = set(np.asarray(state.get("train_text_keys", []), dtype=np.uint64).tolist())
        seen = np.array([k in trained for k in text_keys([ds.texts[i] for i in ids]).tolist()], dtype=bool)
    raw = ds.vectors[ids]
    emb = model.embed_vectors(raw)
    out: dict = {"data": str(Path(data).resolve()), "kind": ds.kind, "num_texts": int(len(ids))}
    for name, mask in (("all", None), ("seen", seen), ("unseen", ~seen)):
        out[name] = {
            **precision_at_r_metrics(emb, labels, mask),
            **{
                f"encoder_{k}": v
                for k, v in precision_at_r_metrics(raw, labels, mask).items()
                if k != "num_queries"
            },
        }
    if ds.kind == "triplets":
        where = {t: i for i, t in enumerate(ids.tolist())}
        rows = np.vectorize(where.get)(ds.triplets)
        for name, vectors in (("triplet_accuracy", emb), ("encoder_triplet_accuracy", raw)):
            v = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
            d_ap = np.linalg.norm(v[rows[:, 0]] - v[rows[:, 1]], axis=1)
            d_an = np.linalg.norm(v[rows[:, 0]] - v[rows[:, 2]], axis=1)
            out[name] = float(np.mean(d_ap < d_an))
    return out
