"""One EGNN layer as a single autograd node: forward and backward written out, for float32 training.

`egnn_com.model.EGNNLayer` computes

    pre_ij = (W_i h + b)_i + (W_j h)_j + w_d d2_ij            d2_ij = |x_i - x_j|^2, edges j -> i
    m_ij   = SiLU(W_2 SiLU(pre_ij) + b_2)                     edge message [E, hidden]
    c_ij   = w_4 . SiLU(W_3 m_ij + b_3)                        coordinate weight [E, 1]
    x_i'   = x_i + mean_j (x_i - x_j) / (sqrt(d2_ij) + 1) c_ij
    h_i'   = h_i + W_n2 SiLU(W_n1 [h_i; mean_j m_ij] + b_n1) + b_n2

Written with autograd, one layer is some 40 graph nodes, each with its own saved tensors, engine call and
gradient buffers; on small molecules (a few thousand edges a batch) such fixed costs were about a third of
a training step (a step on 4-atom graphs took a third of one on 39-atom graphs). Here the layer is one
node, and its backward is the chain rule of the lines above written out: it adds the coordinate branch's
message gradient into the gathered mean-message gradient in the same matrix product, skips the coordinates'
gradient where they need none (the first layer), and runs the edge chain in chunks of `EDGE_CHUNK` edges,
so that on large graphs each [chunk, H] gradient is read back from cache, not memory. Sums over edges into
nodes (the means forward, the gathers' gradients backward) are products with the batch's sparse incidence
matrices, built once per forward (`EdgeLayout`). Same function: tested against the autograd layer to 1e-5.

Float32 only, and not under autocast or torch.compile (the backward's matrix products take the saved
tensors as they are, and the compiler fuses the plain layer itself); `EGNNLayer` picks the path.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import torch
from torch import Tensor, nn

silu_backward = torch.ops.aten.silu_backward
silu_backward_into = torch.ops.aten.silu_backward.grad_input


class EdgeLayout(NamedTuple):
    """A batch's edge structure, built once per forward and shared by every layer (none of it is learned).

    The model sorts the edges by target first (`edges_by_target` in `egnn_com.model`).
    """

    src: Tensor  # [E] source node j of each edge
    dst: Tensor  # [E] target node i
    inv_degree: Tensor  # [N, 1] 1 / in-degree, 0 where a node has no incoming edge
    # The rest is the one-node layer's only (None for the autograd path, which builds its bags per layer,
    # and whose torch.compile does not trace sparse tensors):
    bag_rows: Tensor | None  # [E, 3]
    bag_ones: Tensor | None  # [E, 2] the two node terms' weights in the bag (the third is d2)
    # [N, E] sparse CSR: (into_dst @ x)_i sums x over the edges into node i, into_src over those out of j
    into_dst: Tensor | None
    into_src: Tensor | None

    @classmethod
    def of(cls, edge_index: Tensor, inv_degree: Tensor, fused: bool) -> EdgeLayout:
        src, dst = edge_index
        if not fused:
            return cls(src, dst, inv_degree, None, None, None, None)
        n, dtype = inv_degree.shape[0], inv_degree.dtype
        ones = torch.ones(dst.shape[0], 2, dtype=dtype, device=dst.device)
        return cls(
            src,
            dst,
            inv_degree,
            bag_rows(dst, src, n),
            ones,
            incidence(dst, n, dtype),
            incidence(src, n, dtype),
        )


def bag_rows(dst: Tensor, src: Tensor, num_nodes: int) -> Tensor:
    """[E, 3]: each edge's rows (target, N + source, 2N) in the stacked table [W_i h + b; W_j h; w_d], the
    bag `embedding_bag` sums into the edge's first pre-activation."""
    return torch.stack([dst, src + num_nodes, torch.full_like(dst, 2 * num_nodes)], dim=1)


def incidence(index: Tensor, num_nodes: int, dtype: torch.dtype) -> Tensor:
    """The [N, E] 0/1 matrix (CSR) that sums edge rows into node `index[e]`, edges in their given order.

    Why not `index_add_`: on CPU it expands the index to the source's [E, H] shape (int64, twice the data)
    and scatters; a CSR product reads the [E, H] rows once and runs about twice as fast (the same sums, in
    the same order)."""
    order = torch.sort(index, stable=True).indices  # the edges of node 0, then of node 1, ...
    ends = torch.bincount(index, minlength=num_nodes).cumsum(0)
    crow = torch.cat([ends.new_zeros(1), ends])
    values = torch.ones(index.shape[0], dtype=dtype, device=index.device)
    with warnings.catch_warnings():  # "sparse CSR support is in beta": the product used here is long stable
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, order, values, (num_nodes, index.shape[0]))


def layer_parameters(layer: nn.Module) -> tuple[Tensor, ...]:
    """The layer's parameters in `FusedEGNNLayer`'s order (names and shapes as checkpoints hold them)."""
    return (
        layer.edge_dst.weight,  # [H, H] W_i
        layer.edge_dst.bias,  # [H]
        layer.edge_src.weight,  # [H, H] W_j
        layer.edge_dist,  # [H] w_d
        layer.edge_mlp[1].weight,  # [H, H] W_2
        layer.edge_mlp[1].bias,
        layer.coord_mlp[0].weight,  # [H, H] W_3
        layer.coord_mlp[0].bias,
        layer.coord_mlp[2].weight,  # [1, H] w_4
        layer.node_mlp[0].weight,  # [H, 2H] W_n1
        layer.node_mlp[0].bias,
        layer.node_mlp[2].weight,  # [H, H] W_n2
        layer.node_mlp[2].bias,
    )


class FusedEGNNLayer(torch.autograd.Function):
    """(h [N, H], pos [N, 3], layout, *layer_parameters) -> (h' [N, H], pos' [N, 3])."""

    @staticmethod
    def forward(ctx, h, pos, layout: EdgeLayout, wd, bd, ws, w_dist, w2, b2, w3, b3, w4, wn1, bn1, wn2, bn2):
        src, dst, inv_degree = layout.src, layout.dst, layout.inv_degree
        rel = pos.index_select(0, dst) - pos.index_select(0, src)  # [E, 3] target minus source
        dist2 = (rel * rel).sum(-1, keepdim=True)  # [E, 1]
        dist = dist2.sqrt()
        norm = dist + 1.0
        # [E, H]: the node terms gathered per edge plus w_d d2, written once (see EdgePreactivation)
        table = torch.cat([torch.addmm(bd, h, wd.t()), h @ ws.t(), w_dist.unsqueeze(0)])  # [2N + 1, H]
        weights = torch.cat([layout.bag_ones, dist2], dim=1)  # [E, 3]
        pre = nn.functional.embedding_bag(layout.bag_rows, table, mode="sum", per_sample_weights=weights)
        s1 = nn.functional.silu(pre)
        z2 = torch.addmm(b2, s1, w2.t())
        m = nn.functional.silu(z2)  # [E, H] messages
        z3 = torch.addmm(b3, m, w3.t())
        s3 = nn.functional.silu(z3)
        c = s3 @ w4.t()  # [E, 1]
        k = c / norm  # [E, 1] the shift per unit of relative vector
        # (torch.sparse.mm rather than @: the FLOP counter would count @ as a dense [N, E] product)
        m_mean = torch.sparse.mm(layout.into_dst, m).mul_(inv_degree)  # [N, H]
        pos_out = torch.sparse.mm(layout.into_dst, rel * k).mul_(inv_degree).add_(pos)
        hm = torch.cat([h, m_mean], dim=-1)  # [N, 2H]
        t = torch.addmm(bn1, hm, wn1.t())
        st = nn.functional.silu(t)
        h_out = torch.addmm(bn2, st, wn2.t()).add_(h)
        ctx.layout = layout
        activations = (h, rel, dist2, dist, norm, k, pre, s1, z2, m, z3, s3, hm, t, st)
        ctx.save_for_backward(*activations, wd, ws, w_dist, w2, w3, w4, wn1, wn2)
        return h_out, pos_out

    @staticmethod
    def backward(ctx, g_h, g_pos):
        h, rel, dist2, dist, norm, k, pre, s1, z2, m, z3, s3, hm, t, st, *weights = ctx.saved_tensors
        wd, ws, w_dist, w2, w3, w4, wn1, wn2 = weights
        dst, inv_degree = ctx.layout.dst, ctx.layout.inv_degree
        hidden = h.shape[1]
        # node update h' = h + W_n2 SiLU(W_n1 [h; m_mean] + b_n1) + b_n2
        g_wn2, g_bn2 = g_h.t() @ st, g_h.sum(0)
        g_t = silu_backward(g_h @ wn2, t)
        g_wn1, g_bn1 = g_t.t() @ hm, g_t.sum(0)
        g_hm = g_t @ wn1  # [N, 2H]
        g_h_in = g_hm[:, :hidden] + g_h  # the residual's gradient plus the node MLP's
        # the means: every edge into i receives i's gradient / in-degree
        g_msum = g_hm[:, hidden:] * inv_degree  # [N, H]
        g_shift = (g_pos * inv_degree).index_select(0, dst)  # [E, 3]
        # shift = rel * k, k = c / norm
        g_k = (g_shift * rel).sum(-1, keepdim=True)  # [E, 1]
        g_c = g_k / norm
        g_w4 = g_c.t() @ s3  # [1, H] coordinate weight c = w_4 . SiLU(W_3 m + b_3)
        g_pre_d2 = dist2.new_empty(dist2.shape) if ctx.needs_input_grad[1] else None  # [E, 1]
        edge_grads = _EdgeGradients(w2, w3, w_dist, pre)
        for e in _edge_chunks(dst.shape[0]):
            edge_grads.add_chunk(
                e, g_msum, g_c, dst, pre, s1, z2, m, z3, dist2, (w2, w3, w4, w_dist), g_pre_d2
            )
        # [N, H] the gradients of W_i h + b and W_j h: pre's gradient summed by target and by source
        g_a = torch.sparse.mm(ctx.layout.into_dst, edge_grads.g_pre)
        g_b = torch.sparse.mm(ctx.layout.into_src, edge_grads.g_pre)
        g_wd, g_bd, g_ws = g_a.t() @ h, g_a.sum(0), g_b.t() @ h
        torch.addmm(torch.addmm(g_h_in, g_a, wd, out=g_h_in), g_b, ws, out=g_h_in)
        g_pos_in = None
        if ctx.needs_input_grad[1]:  # the first layer's coordinates are data: no gradient to send back
            g_norm = -g_k * k / norm  # k = c / norm
            g_d2 = g_norm / (2 * dist) + g_pre_d2  # norm = sqrt(d2) + 1, and pre
            g_rel = g_shift * k + 2 * rel * g_d2  # [E, 3] from shift = rel k and d2 = |rel|^2
            g_pos_in = torch.sparse.mm(ctx.layout.into_dst, g_rel).sub_(
                torch.sparse.mm(ctx.layout.into_src, g_rel)
            )
            g_pos_in.add_(g_pos)
        return (
            g_h_in,
            g_pos_in,
            None,
            g_wd,
            g_bd,
            g_ws,
            edge_grads.g_w_dist.squeeze(-1),
            edge_grads.g_w2,
            edge_grads.g_b2,
            edge_grads.g_w3,
            edge_grads.g_b3,
            g_w4,
            g_wn1,
            g_bn1,
            g_wn2,
            g_bn2,
        )


EDGE_CHUNK = 2048  # edges per pass of the backward's edge chain: its [chunk, H] gradients stay in cache


def _edge_chunks(num_edges: int):
    """Slices of at most EDGE_CHUNK edges covering all of them (one slice for a small batch)."""
    return (slice(lo, lo + EDGE_CHUNK) for lo in range(0, max(num_edges, 1), EDGE_CHUNK))


class _EdgeGradients:
    """The gradients of the per-edge chain pre -> m -> c, summed over chunks of edges.

    On large graphs each [E, H] gradient written whole leaves the cache before the next op reads it back, and
    that traffic, not arithmetic, set the backward's time; a chunk's gradients are read back while cached.
    Only the forward's saved activations of a chunk come from memory, and pre's gradient goes back to it
    whole, to be summed into the nodes by one sparse product per side."""

    def __init__(self, w2: Tensor, w3: Tensor, w_dist: Tensor, pre: Tensor):
        self.g_pre = torch.empty_like(pre)  # [E, H] summed into the nodes after the last chunk
        self.g_w2, self.g_b2 = torch.zeros_like(w2), w2.new_zeros(w2.shape[0])
        self.g_w3, self.g_b3 = torch.zeros_like(w3), w3.new_zeros(w3.shape[0])
        self.g_w_dist = w_dist.new_zeros(w_dist.shape[0], 1)

    def add_chunk(self, e, g_msum, g_c, dst, pre, s1, z2, m, z3, dist2, weights, g_pre_d2) -> None:
        w2, w3, w4, w_dist = weights
        g_m = g_msum.index_select(0, dst[e])  # [C, H] the mean message's gradient, per edge
        g_z3 = silu_backward(g_c[e] * w4, z3[e])  # [C, H]
        torch.addmm(self.g_w3, g_z3.t(), m[e], out=self.g_w3)  # (out=: products the FLOP counter sees)
        self.g_b3.add_(g_z3.sum(0))
        torch.addmm(g_m, g_z3, w3, out=g_m)  # the message feeds both the mean and the coordinate weight
        g_z2 = silu_backward(g_m, z2[e])  # m = SiLU(W_2 SiLU(pre) + b_2)
        torch.addmm(self.g_w2, g_z2.t(), s1[e], out=self.g_w2)
        self.g_b2.add_(g_z2.sum(0))
        g_pre = self.g_pre[e]  # [C, H]; pre = (W_i h + b)[dst] + (W_j h)[src] + w_d d2
        silu_backward_into(g_z2 @ w2, pre[e], grad_input=g_pre)
        torch.addmm(self.g_w_dist, g_pre.t(), dist2[e], out=self.g_w_dist)
        if g_pre_d2 is not None:
            torch.mm(g_pre, w_dist.unsqueeze(-1), out=g_pre_d2[e])
