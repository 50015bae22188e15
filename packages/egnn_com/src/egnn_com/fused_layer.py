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
nodes (the means forward, the gathers' gradients backward) run over the batch's incidence matrices, built
once per batch (`egnn_com.edges.EdgeLayout`, `sum_into_rows`). Matrix products are written without their
bias, which is added in place after: `addmm` first copies the bias into its fresh [E, H] output and then
makes the product read that back, and on a small batch those extra passes over memory that no op has
touched yet were 2-3% of a step. Same function: tested against the autograd layer to 1e-5.

Float32 only, and not under autocast or torch.compile (the backward's matrix products take the saved
tensors as they are, and the compiler fuses the plain layer itself); `EGNNLayer` picks the path.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from egnn_com.edges import EdgeLayout, bag_sums, sum_into_rows

silu_backward = torch.ops.aten.silu_backward
silu_backward_into = torch.ops.aten.silu_backward.grad_input


def _sum_xyz(t: Tensor) -> Tensor:
    """[E, 3] -> [E, 1], the sum over the 3 coordinates as a product with a ones column: a reduction over a
    last dimension of 3 walks the rows one by one (57 against 29 us for a small batch's 4,000 edges)."""
    return torch.mm(t, t.new_ones(3, 1))


def layer_parameters(layer: nn.Module) -> tuple[Tensor, ...]:
    """The layer's parameters in `FusedEGNNLayer`'s order (names and shapes as checkpoints hold them)."""
    # read from the state's names through the modules' own parameter dicts: attribute access and
    # `Sequential[i]` go through Python lookups that took 30 us per layer and step
    return tuple(_parameter(layer, path) for path in _PARAMETER_PATHS)


LAYER_PARAMETERS = (
    "edge_dst.weight",  # [H, H] W_i
    "edge_dst.bias",  # [H]
    "edge_src.weight",  # [H, H] W_j
    "edge_dist",  # [H] w_d
    "edge_mlp.1.weight",  # [H, H] W_2
    "edge_mlp.1.bias",
    "coord_mlp.0.weight",  # [H, H] W_3
    "coord_mlp.0.bias",
    "coord_mlp.2.weight",  # [1, H] w_4
    "node_mlp.0.weight",  # [H, 2H] W_n1
    "node_mlp.0.bias",
    "node_mlp.2.weight",  # [H, H] W_n2
    "node_mlp.2.bias",
)


_PARAMETER_PATHS = tuple(tuple(name.split(".")) for name in LAYER_PARAMETERS)


def _parameter(module: nn.Module, path: tuple[str, ...]) -> Tensor:
    for part in path[:-1]:
        module = module._modules[part]
    return module._parameters[path[-1]]


class FusedEGNNLayer(torch.autograd.Function):
    """(h [N, H], pos [N, 3], layout, *layer_parameters) -> (h' [N, H], pos' [N, 3])."""

    @staticmethod
    def forward(ctx, h, pos, layout: EdgeLayout, wd, bd, ws, w_dist, w2, b2, w3, b3, w4, wn1, bn1, wn2, bn2):
        src, dst, inv_degree = layout.src, layout.dst, layout.inv_degree
        num_nodes, hidden = h.shape
        rel = pos.index_select(0, dst) - pos.index_select(0, src)  # [E, 3] target minus source
        dist2 = _sum_xyz(rel * rel)  # [E, 1]
        dist = dist2.sqrt()
        norm = dist + 1.0
        # [E, H]: the node terms gathered per edge plus w_d d2, written once (see EdgePreactivation); both
        # node terms in one product written into the table [a_0; b_0; a_1; b_1; ...; w_d] (`bag_rows`)
        w_node = torch.cat([wd, ws])  # [2H, H]
        table = h.new_empty(2 * num_nodes + 1, hidden)
        node_terms = table[: 2 * num_nodes].view(num_nodes, 2 * hidden)
        torch.mm(h, w_node.t(), out=node_terms)
        node_terms[:, :hidden].add_(bd)
        table[-1] = w_dist
        # [E, 3] the bag's weights (1, 1, d2): a pad writes them in one pass, where a concatenation with a
        # column of ones took 4 times as long
        weights = nn.functional.pad(dist2, (2, 0), value=1.0)
        pre = bag_sums(table, layout.bag_rows.view(-1), layout.bag_offsets, weights.view(-1))
        s1 = nn.functional.silu(pre)
        z2 = torch.mm(s1, w2.t()).add_(b2)  # the bias after the product (see the module's docstring)
        m = nn.functional.silu(z2)  # [E, H] messages
        z3 = torch.mm(m, w3.t()).add_(b3)
        s3 = nn.functional.silu(z3)
        c = s3 @ w4.t()  # [E, 1]
        k = c / norm  # [E, 1] the shift per unit of relative vector
        # what the coordinates' gradient reads of the distance: d(k)/d(d2) = -k / (2 norm sqrt(d2))
        k_per_dist = k / (norm * dist) if ctx.needs_input_grad[1] else None
        m_mean = sum_into_rows(layout.into_dst, m).mul_(inv_degree)  # [N, H]
        pos_out = sum_into_rows(layout.into_dst, rel * k).mul_(inv_degree).add_(pos)
        hm = torch.cat([h, m_mean], dim=-1)  # [N, 2H]
        t = torch.mm(hm, wn1.t()).add_(bn1)
        st = nn.functional.silu(t)
        h_out = torch.mm(st, wn2.t()).add_(bn2).add_(h)
        ctx.layout = layout
        activations = (h, rel, dist2, k_per_dist, norm, k, pre, s1, z2, m, z3, s3, hm, t, st)
        ctx.save_for_backward(*activations, w_node, w_dist, w2, w3, w4, wn1, wn2)
        return h_out, pos_out

    @staticmethod
    def backward(ctx, g_h, g_pos):
        h, rel, dist2, k_per_dist, norm, k, pre, s1, z2, m, z3, s3, hm, t, st, *weights = ctx.saved_tensors
        w_node, w_dist, w2, w3, w4, wn1, wn2 = weights
        dst, inv_degree = ctx.layout.dst, ctx.layout.inv_degree
        num_nodes, hidden = h.shape
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
        g_k = _sum_xyz(g_shift * rel)  # [E, 1]
        g_c = g_k / norm
        g_w4 = g_c.t() @ s3  # [1, H] coordinate weight c = w_4 . SiLU(W_3 m + b_3)
        g_pre_d2 = dist2.new_empty(dist2.shape) if ctx.needs_input_grad[1] else None  # [E, 1]
        edge_grads = _EdgeGradients(w2, w3, w4, w_dist, pre)
        for e in _edge_chunks(dst.shape[0]):
            edge_grads.add_chunk(e, g_msum, g_c, dst, pre, s1, z2, m, z3, dist2, g_pre_d2)
        # [N, 2H] the gradients of W_i h + b and W_j h side by side: pre's gradient summed by target and by
        # source in one product, then both weights' gradients and h's in one product each
        g_ab = sum_into_rows(ctx.layout.into_both, edge_grads.g_pre).view(num_nodes, 2 * hidden)
        g_w_node = g_ab.t() @ h  # [2H, H]: W_i's gradient over W_j's
        torch.addmm(g_h_in, g_ab, w_node, out=g_h_in)
        g_pos_in = None
        if ctx.needs_input_grad[1]:  # the first layer's coordinates are data: no gradient to send back
            # d2's gradient through k = c / (sqrt(d2) + 1), and through pre
            g_d2 = torch.addcmul(g_pre_d2, g_k, k_per_dist, value=-0.5)
            # [E, 3] from shift = rel k and d2 = |rel|^2
            g_rel = torch.addcmul(g_shift * k, rel, g_d2, value=2.0)
            # the target's gradient minus the source's
            g_rel_sums = sum_into_rows(ctx.layout.into_both, g_rel).view(num_nodes, 2, 3)
            g_pos_in = torch.sub(g_rel_sums[:, 0], g_rel_sums[:, 1]).add_(g_pos)
        return (
            g_h_in,
            g_pos_in,
            None,
            g_w_node[:hidden],
            g_ab[:, :hidden].sum(0),
            g_w_node[hidden:],
            edge_grads.g_w_dist.squeeze(-1),
            edge_grads.g_w2,
            edge_grads.g_b2,
            *edge_grads.coordinate_weight_gradients(),
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
    whole, to be summed into the nodes by target and by source in one sum (`sum_into_rows`)."""

    def __init__(self, w2: Tensor, w3: Tensor, w4: Tensor, w_dist: Tensor, pre: Tensor):
        self.w2, self.w4, self.w_dist = w2, w4, w_dist
        # c = w_4 . SiLU(z_3) with z_3 = W_3 m + b_3: z_3's gradient is g_c SiLU'(z_3) scaled column by
        # column by w_4. The chunks compute g_c SiLU'(z_3) [C, H] straight from g_c [C, 1] and move w_4 into
        # [H, H] factors: no [C, H] product g_c w_4 to write and read back.
        self.w3_by_w4 = w4.t() * w3  # diag(w_4) W_3
        self.g_pre = torch.empty_like(pre)  # [E, H] summed into the nodes after the last chunk
        self.g_w2, self.g_b2 = torch.zeros_like(w2), w2.new_zeros(w2.shape[0])
        # W_3's and b_3's gradients before their scaling by w_4
        self.g_w3_unscaled, self.g_b3_unscaled = torch.zeros_like(w3), w3.new_zeros(w3.shape[0])
        self.g_w_dist = w_dist.new_zeros(w_dist.shape[0], 1)

    def coordinate_weight_gradients(self) -> tuple[Tensor, Tensor]:
        """(W_3's, b_3's) gradients, after the last chunk."""
        return self.g_w3_unscaled.mul_(self.w4.t()), self.g_b3_unscaled.mul_(self.w4[0])

    def add_chunk(self, e, g_msum, g_c, dst, pre, s1, z2, m, z3, dist2, g_pre_d2) -> None:
        g_m = g_msum.index_select(0, dst[e])  # [C, H] the mean message's gradient, per edge
        g_z3 = silu_backward(g_c[e], z3[e])  # [C, H] g_c SiLU'(z_3), without the factor w_4
        # (out=: products the FLOP counter sees)
        torch.addmm(self.g_w3_unscaled, g_z3.t(), m[e], out=self.g_w3_unscaled)
        self.g_b3_unscaled.add_(g_z3.sum(0))
        # the message feeds both the mean and the coordinate weight
        torch.addmm(g_m, g_z3, self.w3_by_w4, out=g_m)
        # m = SiLU(W_2 SiLU(pre) + b_2). The elementwise gradients are written over their inputs, and pre's
        # product straight into pre's gradient: no fresh [C, H] buffers for the chunk to write
        g_z2 = silu_backward_into(g_m, z2[e], grad_input=g_m)
        torch.addmm(self.g_w2, g_z2.t(), s1[e], out=self.g_w2)
        self.g_b2.add_(g_z2.sum(0))
        g_pre = self.g_pre[e]  # [C, H]; pre = (W_i h + b)[dst] + (W_j h)[src] + w_d d2
        torch.mm(g_z2, self.w2, out=g_pre)
        silu_backward_into(g_pre, pre[e], grad_input=g_pre)
        torch.addmm(self.g_w_dist, g_pre.t(), dist2[e], out=self.g_w_dist)
        if g_pre_d2 is not None:
            torch.mm(g_pre, self.w_dist.unsqueeze(-1), out=g_pre_d2[e])
