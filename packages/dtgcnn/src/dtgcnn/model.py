"""DT-GCNN: dynamic-topology graph CNN over mesh vertices (DGCNN-style EdgeConv stack), in MLX.

Each EdgeConv layer rebuilds a k-nearest-neighbour graph in its own input feature space (the "dynamic
topology"), computes edge features h(x_i, x_j - x_i) and max-pools them over the k neighbours. The
multi-scale outputs of all layers are concatenated, fused per point, pooled (max and mean) into a global
descriptor, and mapped to an L2-normalised embedding plus a classification head.

Algebraic saving: DGCNN's edge MLP is one linear layer on the concatenation [x_j - x_i ; x_i]:
    W [x_j - x_i ; x_i] + b = W1 x_j + (W2 - W1) x_i + b,
so it is applied once per *point* (two [N, C_in] x [C_in, C_out] products) and only the result is gathered
over the k neighbours, instead of a [N*k, 2*C_in] x [2*C_in, C_out] product on every edge: k times fewer
FLOPs, with identical outputs (tested against the naive form).
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn

from dtgcnn import cpu_kernels, cpu_neighbours, cpu_norm
from dtgcnn.neighbour_max import max_over_neighbours


def knn(x: mx.array, k: int) -> mx.array:
    """Indices [B,N,k] of each point's k nearest points (itself included) in feature space x [B,N,C]."""
    return mx.stop_gradient(smallest_k(knn_scores(x), k))


def knn_scores(x: mx.array) -> mx.array:
    """[B,N,N] scores whose row-wise order is the squared-distance order in feature space x [B,N,C].

    Ranking row i by |x_j|^2 - 2 x_i.x_j equals ranking by the squared distance (|x_i|^2 is constant in
    the row), one [B,N,N] pass fewer. The neighbour choice is not differentiated."""
    x = mx.stop_gradient(x)
    sq = mx.sum(x * x, axis=-1)  # [B,N]
    # addmm fuses the product, the scaling and the broadcast add into one pass over the [B,N,N] output.
    return mx.addmm(sq[:, None, :], x, x.swapaxes(1, 2), alpha=-2.0)


KNN_BLOCK = 8  # columns per block in smallest_k; 4-16 measured alike, 8 fastest at N=1024, k=20


def smallest_k(score: mx.array, k: int, block: int = KNN_BLOCK) -> mx.array:
    """Column indices [B,N,k] of the k smallest entries of each row of score [B,N,M] (any order within k).

    Exact, in two cheap selections instead of one `argpartition` over all M columns (which costs the most
    in the whole k-NN, ~25 ns per element in MLX's CPU nth_element): split each row into blocks of `block`
    columns, keep the k blocks with the smallest minima, then select the k smallest of their k*block
    entries. Why that is exact: if a block outside the kept ones held an entry e below the row's k-th
    smallest value t, the k kept blocks' minima (all <= that block's minimum <= e < t) plus e would be k+1
    entries below t. So every entry < t is kept, and the kept blocks hold >= k entries <= t (their
    minima): the result is the k nearest, differing from a full argpartition only in which of several
    entries tied at exactly t are taken (tested). Rows are padded with +inf to a multiple of `block`.
    Falls back to one argpartition when there are fewer than 2k blocks (small inputs, no gain there).
    """
    b, n, m = score.shape
    blocks_per_row = -(-m // block)
    if blocks_per_row < 2 * k:
        return mx.argpartition(score, kth=k - 1, axis=-1)[:, :, :k]
    if blocks_per_row * block != m:
        pad = mx.full((b, n, blocks_per_row * block - m), mx.inf, dtype=score.dtype)
        score = mx.concatenate([score, pad], axis=-1)  # [B,N,G*block]; +inf is never among the k smallest
    blocks = score.reshape(b, n, blocks_per_row, block)  # [B,N,G,block]
    kept = mx.argpartition(mx.min(blocks, axis=-1), kth=k - 1, axis=-1)[:, :, :k]  # [B,N,k] block ids
    candidates = mx.take_along_axis(blocks, kept[..., None], axis=2).reshape(b, n, k * block)  # [B,N,k*block]
    pos = mx.argpartition(candidates, kth=k - 1, axis=-1)[:, :, :k]  # [B,N,k] in 0..k*block-1
    return mx.take_along_axis(kept, pos // block, axis=2) * block + pos % block  # [B,N,k] column ids


def gather_neighbours(values: mx.array, idx: mx.array) -> mx.array:
    """values [B,N,C] gathered at idx [B,N,k] -> [B,N,k,C]."""
    b, n, c = values.shape
    k = idx.shape[-1]
    offsets = (mx.arange(b) * n)[:, None, None]  # [B,1,1]: index into the flattened [B*N, C]
    flat = (idx + offsets).reshape(-1)  # [B*N*k]
    return values.reshape(b * n, c)[flat].reshape(b, n, k, c)


def neighbour_max(values: mx.array, features: mx.array, k: int) -> mx.array:
    """max over i's k nearest points j (in `features` [B,N,C'] space) of values[j]: values [B,N,C] -> [B,N,C].

    The gradient reaches `values` only at each channel's winning neighbour. On the CPU the selection and the
    max run as multi-threaded kernels (`dtgcnn.cpu_neighbours`); elsewhere (and with DTGCNN_CPU_KERNELS=0)
    as MLX ops (`smallest_k` above, `dtgcnn.neighbour_max`). Both give the same result (tested)."""
    if cpu_kernels.enabled():
        return cpu_neighbours.max_over_neighbours(values, cpu_neighbours.nearest(features, k))
    return max_over_neighbours(values, knn(features, k))


class EdgeConv(nn.Module):
    """x [B,N,C_in] -> [B,N,C_out] = LeakyReLU(BatchNorm(max over j in kNN(i) of W [x_j - x_i ; x_i])).

    The edge function is DGCNN's linear layer on [x_j - x_i ; x_i], aggregated by max over the k neighbours,
    then normalised and activated per point. Two exact savings over computing it edge by edge:
    1. the linear layer runs per point: W [x_j - x_i ; x_i] = W1 x_j + (W2 - W1) x_i (module docstring);
    2. the max over j of (W1 x_j + c_i) is (max over j of W1 x_j) + c_i, so only the per-point W1 x_j are
       gathered and maxed, and the gradient flows back to each channel's winning neighbour alone, never
       through a dense [B,N,k,C] tensor (the memory-bound part on CPU).
    `naive()` computes the same layer edge by edge; it is the oracle in the tests.
    """

    def __init__(self, in_dims: int, out_dims: int, k: int):
        super().__init__()
        self.k = k
        # Same parameterisation as DGCNN's Conv2d(2*C_in, C_out) on [x_j - x_i ; x_i]: weight [C_out, 2*C_in].
        self.edge = nn.Linear(2 * in_dims, out_dims, bias=False)
        self.norm = nn.BatchNorm(out_dims)

    def __call__(self, x: mx.array, graph_features: mx.array | None = None) -> mx.array:
        c = x.shape[-1]
        w1, w2 = self.edge.weight[:, :c], self.edge.weight[:, c:]  # [C_out, C_in] each
        per_neighbour = x @ w1.T  # [B,N,C_out]: W1 x_j, once per point
        per_centre = x @ (w2 - w1).T  # [B,N,C_out]: (W2 - W1) x_i
        graph = x if graph_features is None else graph_features
        pooled = neighbour_max(per_neighbour, graph, self.k) + per_centre  # [B,N,C_out]
        return cpu_norm.batch_norm_leaky(self.norm, pooled, negative_slope=0.2)

    def naive(self, x: mx.array, graph_features: mx.array | None = None) -> mx.array:
        """The same layer edge by edge: linear on every [x_j - x_i ; x_i] (k times the FLOPs), then max."""
        idx = knn(x if graph_features is None else graph_features, self.k)
        xj = gather_neighbours(x, idx)  # [B,N,k,C_in]
        xi = mx.broadcast_to(x[:, :, None, :], xj.shape)
        edges = self.edge(mx.concatenate([xj - xi, xi], axis=-1))  # [B,N,k,C_out]
        return nn.leaky_relu(self.norm(mx.max(edges, axis=2)), negative_slope=0.2)


@dataclass
class ModelSpec:
    in_channels: int = 6
    num_classes: int = 10
    k: int = 20
    edge_conv_dims: tuple[int, ...] = (64, 64, 128, 256)
    fusion_dim: int = 1024
    hidden_dim: int = 512
    embedding_dim: int = 256
    dropout: float = 0.5

    @classmethod
    def from_config(cls, cfg, in_channels: int, num_classes: int) -> ModelSpec:
        return cls(
            in_channels,
            num_classes,
            cfg.k,
            tuple(cfg.edge_conv_dims),
            cfg.fusion_dim,
            cfg.hidden_dim,
            cfg.embedding_dim,
            cfg.dropout,
        )


class DTGCNN(nn.Module):
    """x [B,N,C_in] -> {"embedding": [B,E] unit-norm, "logits": [B,classes], "raw": [B,E]}."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        dims = [spec.in_channels, *spec.edge_conv_dims]
        self.edge_convs = [EdgeConv(dims[i], dims[i + 1], spec.k) for i in range(len(spec.edge_conv_dims))]
        self.fusion = nn.Linear(sum(spec.edge_conv_dims), spec.fusion_dim, bias=False)
        self.fusion_norm = nn.BatchNorm(spec.fusion_dim)
        self.hidden = nn.Linear(2 * spec.fusion_dim, spec.hidden_dim, bias=False)
        self.hidden_norm = nn.BatchNorm(spec.hidden_dim)
        self.drop = nn.Dropout(spec.dropout)
        self.to_embedding = nn.Linear(spec.hidden_dim, spec.embedding_dim)
        self.classifier = nn.Linear(spec.embedding_dim, spec.num_classes)

    def __call__(self, x: mx.array) -> dict[str, mx.array]:
        features, h = [], x
        for i, conv in enumerate(self.edge_convs):
            # Layer 0 builds its graph from xyz only (normals would distort spatial neighbourhoods);
            # later layers from their own input features: the topology changes with depth.
            h = conv(h, x[:, :, :3] if i == 0 else None)  # [B,N,C_i]
            features.append(h)
        fused = self.fusion(mx.concatenate(features, axis=-1))  # [B,N,F]
        # max and mean over the points of LeakyReLU(BatchNorm(fused)), [B,2F]
        pooled = cpu_norm.batch_norm_leaky_pool(self.fusion_norm, fused, negative_slope=0.2)
        hidden = self.drop(nn.leaky_relu(self.hidden_norm(self.hidden(pooled)), 0.2))  # [B,H]
        raw = self.to_embedding(hidden)  # [B,E]
        embedding = raw / mx.sqrt(mx.sum(raw * raw, axis=-1, keepdims=True) + 1e-12)  # [B,E], unit norm
        return {"embedding": embedding, "logits": self.classifier(self.drop(raw)), "raw": raw}


def count_parameters(model: nn.Module) -> int:
    from mlx.utils import tree_flatten

    return sum(v.size for _, v in tree_flatten(model.trainable_parameters()))


def flops_per_sample(spec: ModelSpec, num_points: int, *, naive_edges: bool = False) -> dict[str, float]:
    """Forward multiply-add FLOPs (2 per MAC) of one sample; backward is counted as 2x forward.

    `naive_edges=True` counts the textbook edge MLP on every edge (what DGCNN implementations run)."""
    n, k = num_points, spec.k
    dims = [spec.in_channels, *spec.edge_conv_dims]
    fwd = 0.0
    for i in range(len(spec.edge_conv_dims)):
        cin, cout = dims[i], dims[i + 1]
        graph_c = 3 if i == 0 else cin
        fwd += 2 * n * n * graph_c  # pairwise distances
        fwd += 2 * n * k * 2 * cin * cout if naive_edges else 2 * n * 2 * cin * cout
    fwd += 2 * n * sum(spec.edge_conv_dims) * spec.fusion_dim
    fwd += 2 * (
        2 * spec.fusion_dim * spec.hidden_dim
        + spec.hidden_dim * spec.embedding_dim
        + spec.embedding_dim * spec.num_classes
    )
    return {"forward": fwd, "train": 3 * fwd}
