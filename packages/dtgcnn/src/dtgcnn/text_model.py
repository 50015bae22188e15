"""The text DT-GCNN (exported from `dtgcnn` under the name `DTGCNN`): encoder vectors -> GCN over a
cosine k-NN graph -> L2-normalised retrieval embeddings.

The graph and why it has a reference bank. A k-NN graph over the batch alone would make a text's
embedding depend on the texts it happens to be batched with, and `encode(["a"])` and
`encode(["a", "b"])` would give "a" two embeddings. Here every node's neighbours come from a fixed
*reference bank*: `graph_bank_size` training texts (their encoder vectors) stored with the model's weights.
The bank's own nodes run through the same layers (their neighbours are other bank nodes), and a batch node
aggregates over bank nodes only, never over its batch-mates. So in eval mode an embedding is a function of
the text alone (and the saved model), the same in training and inference, and one forward costs
O((B + M) * M) for a bank of M.

Graph space and `dynamic_graph_update_freq`: neighbours are chosen by cosine similarity in a graph space,
at first the encoder's own space. Every `dynamic_graph_update_freq` epochs (from epoch 0) the training task
calls `refresh_graph()`, which snapshots the current input projection: from then on neighbours are chosen
in the model's current features until the next refresh. Edges: the `graph_k_neighbors` most similar bank
nodes, minus those below `graph_similarity_threshold`. A GCN layer takes the node and the mean of its
neighbours side by side (GraphSAGE's form: W [h_i ; mean_j h_j], a node without neighbours gets zeros), then
BatchNorm -> activation -> dropout.

    x [B, input_dim] --(bank [M, input_dim] prepended)--> input projection [M+B, w0]
      --> num_gcn_layers x GCN over A [M+B, M] --> rows M.. --> Linear -> [B, output_dim], unit length

Gradient checkpointing (`gradient_checkpointing`): in training, each GCN layer's aggregation, linear map,
BatchNorm and activation run under `mx.checkpoint`, so the backward pass keeps only the layer's input and
output and recomputes what lies between. Two things stay outside the recomputed part, so results equal the
plain forward: the dropout mask (drawn once; a recompute would draw another) and the BatchNorm running
statistics (returned by the layer and set once; a recompute would move them twice).

`weight_init`: "default" keeps MLX's Linear initialisation; "xavier_uniform" / "xavier_normal" redraw every
Linear weight with Glorot's scale and zero its bias.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np

ACTIVATIONS = {
    "relu": nn.relu,
    "gelu": nn.gelu,
    "leaky_relu": nn.leaky_relu,
    "elu": nn.elu,
    "silu": nn.silu,
    "tanh": mx.tanh,
}
# the model's state that is not trained: the reference bank and the graph-space snapshot
GRAPH_STATE = ("bank", "bank_valid", "graph_proj", "graph_bias", "graph_projected")


def init_linear_weights(model: nn.Module, scheme: str) -> None:
    """Redraw every Linear weight of `model` with `scheme` and zero its bias ("default": leave them)."""
    if scheme == "default":
        return
    inits = {"xavier_uniform": nn.init.glorot_uniform(), "xavier_normal": nn.init.glorot_normal()}
    if scheme not in inits:
        raise ValueError(f"weight_init {scheme!r} is not one of default, {', '.join(inits)}")
    for _, module in model.named_modules():
        if isinstance(module, nn.Linear):
            module.weight = inits[scheme](module.weight)
            if "bias" in module:
                module.bias = mx.zeros_like(module.bias)


def _unit(x: mx.array) -> mx.array:
    """Rows scaled to unit length, in float32: in float16 the floor 1e-12 is 0 and a zero row (an empty
    bank slot) would give 0 / 0."""
    x32 = x.astype(mx.float32)
    return (x32 / mx.maximum(mx.linalg.norm(x32, axis=-1, keepdims=True), 1e-12)).astype(x.dtype)


class TextDTGCNN(nn.Module):
    """DTGCNN(input_dim, hidden_dim | hidden_dims, output_dim, num_gcn_layers, gcn_activation,
    use_batch_norm, dropout_rate, graph_k_neighbors, graph_similarity_threshold, graph_bank_size, encoder),
    or DTGCNN(config) with a `DTGCNNConfig`. `model(x)` maps encoder vectors [B, input_dim] to unit
    embeddings [B, output_dim]; `model.encode(texts)` runs the encoder first."""

    def __init__(
        self,
        input_dim: Any = 768,
        hidden_dim: int = 256,
        output_dim: int = 128,
        num_gcn_layers: int = 3,
        *,
        hidden_dims: Sequence[int] | None = None,
        gcn_activation: str = "relu",
        use_batch_norm: bool = True,
        dropout_rate: float = 0.1,
        graph_k_neighbors: int = 10,
        graph_similarity_threshold: float = 0.0,
        graph_bank_size: int = 256,
        encoder: str = "hashing",
        gradient_checkpointing: bool = False,
        weight_init: str = "default",
    ) -> None:
        super().__init__()
        from dtgcnn.config import DTGCNNConfig

        if isinstance(input_dim, DTGCNNConfig):  # DTGCNN(config), the config's fields
            cfg = input_dim
            input_dim, hidden_dim, output_dim, num_gcn_layers = (
                cfg.input_dim,
                cfg.hidden_dim,
                cfg.output_dim,
                cfg.num_gcn_layers,
            )
            hidden_dims, gcn_activation, use_batch_norm, dropout_rate = (
                cfg.hidden_dims,
                cfg.gcn_activation,
                cfg.use_batch_norm,
                cfg.dropout_rate,
            )
            graph_k_neighbors, graph_similarity_threshold = (
                cfg.graph_k_neighbors,
                cfg.graph_similarity_threshold,
            )
            graph_bank_size, encoder = cfg.graph_bank_size, cfg.encoder
            gradient_checkpointing, weight_init = cfg.gradient_checkpointing, cfg.weight_init
        if gcn_activation not in ACTIVATIONS:
            raise ValueError(f"gcn_activation {gcn_activation!r} is not one of {', '.join(ACTIVATIONS)}")
        widths = list(hidden_dims) if hidden_dims else [hidden_dim] * num_gcn_layers
        if hidden_dims and len(widths) != num_gcn_layers:
            num_gcn_layers = len(widths)  # hidden_dims names the layers
        if not input_dim or input_dim < 1:
            raise ValueError("input_dim must be the encoder's width (e.g. 512 for hashing, 384 for minilm)")
        self.spec = dict(
            input_dim=int(input_dim),
            widths=widths,
            output_dim=int(output_dim),
            gcn_activation=gcn_activation,
            use_batch_norm=bool(use_batch_norm),
            dropout_rate=float(dropout_rate),
            graph_k_neighbors=int(graph_k_neighbors),
            graph_similarity_threshold=float(graph_similarity_threshold),
            graph_bank_size=int(graph_bank_size),
        )
        self.encoder_name = encoder
        self.input_proj = nn.Linear(input_dim, widths[0])
        # each layer sees [node ; mean of its neighbours] (GraphSAGE's form): the node keeps its own weight
        # however many neighbours it has, so a text is never drowned by the bank texts around it
        self.gcn_layers = [
            nn.Linear(2 * w_in, w_out) for w_in, w_out in zip(widths[:1] + widths[:-1], widths, strict=True)
        ]
        self.norms = [nn.BatchNorm(w) for w in widths] if use_batch_norm else []
        self.output_proj = nn.Linear(widths[-1], output_dim)
        self.dropout = nn.Dropout(dropout_rate)
        self.activation = ACTIVATIONS[gcn_activation]
        m = max(1, int(graph_bank_size))
        self.bank = mx.zeros((m, input_dim))
        self.bank_valid = mx.zeros((m,))
        self.graph_proj = mx.zeros((input_dim, widths[0]))
        self.graph_bias = mx.zeros((widths[0],))
        self.graph_projected = mx.zeros((1,))
        self.freeze(recurse=False, keys=list(GRAPH_STATE))
        self.gradient_checkpointing = bool(gradient_checkpointing)
        init_linear_weights(self, weight_init)

    # -- graph state ---------------------------------------------------------------------------------------
    @property
    def bank_size(self) -> int:
        return int(mx.sum(self.bank_valid).item())

    def set_bank(self, vectors: np.ndarray) -> None:
        """The reference bank: the first graph_bank_size rows of `vectors` [N, input_dim]."""
        m = self.bank.shape[0]
        rows = np.asarray(vectors, dtype=np.float32)[:m]
        bank = np.zeros(self.bank.shape, np.float32)
        bank[: len(rows)] = rows
        valid = np.zeros((m,), np.float32)
        valid[: len(rows)] = 1.0
        self.bank, self.bank_valid = mx.array(bank), mx.array(valid)

    def refresh_graph(self) -> None:
        """Choose neighbours in the current input projection's space from now on (a frozen snapshot)."""
        self.graph_proj = mx.array(np.array(self.input_proj.weight).T)
        self.graph_bias = mx.array(np.array(self.input_proj.bias))
        self.graph_projected = mx.ones((1,))

    def adjacency(self, nodes: mx.array) -> mx.array:
        """A [R, M] 0/1: row r's edges to bank nodes (rows 0..M-1 of `nodes` are the bank itself)."""
        m = self.bank.shape[0]
        raw = _unit(nodes)
        projected = _unit(nodes @ self.graph_proj + self.graph_bias)
        f = self.graph_projected
        sim = f * (projected @ projected[:m].T) + (1.0 - f) * (raw @ raw[:m].T)  # [R, M]
        not_self = mx.concatenate([1.0 - mx.eye(m), mx.ones((nodes.shape[0] - m, m))], axis=0)
        allowed = (not_self * self.bank_valid[None, :]) > 0
        sim = mx.where(allowed, sim, -2.0)  # cosine >= -1: disallowed nodes rank last
        k = min(self.spec["graph_k_neighbors"], m)
        kth = mx.min(mx.topk(sim, k, axis=1), axis=1, keepdims=True)  # the k-th largest similarity
        edges = (sim >= kth) & (sim >= self.spec["graph_similarity_threshold"]) & allowed
        return mx.stop_gradient(edges.astype(nodes.dtype))

    # -- forward -------------------------------------------------------------------------------------------
    def __call__(self, x: mx.array) -> mx.array:
        """x [B, input_dim] -> unit embeddings [B, output_dim]."""
        m = self.bank.shape[0]
        nodes = mx.concatenate([self.bank.astype(x.dtype), x], axis=0)  # [M+B, D]
        adj = self.adjacency(nodes)  # [M+B, M]
        scale = 1.0 / mx.maximum(mx.sum(adj, axis=1, keepdims=True), 1.0)  # [M+B, 1]
        h = self.dropout(self.activation(self.input_proj(nodes)))
        checkpointed = self.gradient_checkpointing and self.training
        for i in range(len(self.gcn_layers)):
            layer_fn = partial(self._gcn_layer, i)
            if checkpointed:
                layer_fn = mx.checkpoint(layer_fn)
            out, stats = layer_fn(self.layer_parameters(i), h, adj, scale)
            if self.norms:
                self.norms[i].update(stats)
            h = self.dropout(out)
        return _unit(self.output_proj(h[m:]))

    def layer_parameters(self, i: int) -> dict:
        """GCN layer i's trainable arrays (its Linear and BatchNorm) and its BatchNorm running statistics."""
        params = {"layer": self.gcn_layers[i].trainable_parameters()}
        if self.norms:
            norm = self.norms[i]
            params["norm"] = norm.trainable_parameters()
            params["stats"] = {"running_mean": norm.running_mean, "running_var": norm.running_var}
        return params

    def _gcn_layer(self, i: int, params: dict, h: mx.array, adj: mx.array, scale: mx.array):
        """(activation output [R, w], the BatchNorm running statistics after this batch) of GCN layer i:
        [node ; neighbour mean] -> Linear -> BatchNorm -> activation.

        The layer's arrays come in as `params` so that `mx.checkpoint` sees them as inputs (their gradients
        flow). The modules are left exactly as they were (a recompute in the backward pass must not move the
        running statistics again); the caller sets the returned statistics once."""
        m = self.bank.shape[0]
        layer = self.gcn_layers[i]
        kept = layer.parameters()
        layer.update(params["layer"])
        z = layer(mx.concatenate([h, (adj @ h[:m]) * scale], axis=1))  # [node ; neighbour mean]
        layer.update(kept)
        stats = {}
        if self.norms:
            norm = self.norms[i]
            kept = norm.parameters()
            norm.update({**params["norm"], **params["stats"]})
            # BatchNorm in float32 under half-precision compute (as torch's autocast does): its backward
            # takes (var + eps)^-1.5, which overflows float16 for small variances
            z = norm(z.astype(mx.float32)).astype(z.dtype)
            stats = {"running_mean": norm.running_mean, "running_var": norm.running_var}
            norm.update(kept)
        return self.activation(z), stats

    def encode(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """Unit embeddings [N, output_dim] of `texts` through the model's encoder, in eval mode.

        Deterministic, and a text's embedding does not depend on the other texts of the call."""
        from dtgcnn.encoders import get_encoder

        vectors = get_encoder(self.encoder_name).encode(list(texts))
        return self.embed_vectors(vectors, batch_size)

    def embed_vectors(self, vectors: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Eval-mode embeddings [N, output_dim] of encoder vectors [N, input_dim]."""
        was_training = self.training
        self.eval()
        out = []
        for i in range(0, len(vectors), batch_size):
            emb = self(mx.array(np.asarray(vectors[i : i + batch_size], dtype=np.float32)))
            out.append(np.array(emb.astype(mx.float32)))
        self.train(was_training)
        return np.concatenate(out) if out else np.zeros((0, self.spec["output_dim"]), np.float32)
