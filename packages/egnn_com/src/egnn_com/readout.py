"""The EGNN's readout as one autograd node, for float32 training (`egnn_com.model` picks the path, as for
the one-node layer): the weight head's logits, then per graph a softmax of them weighting the nodes'
coordinates.

    s_i = w_2 . SiLU(W_1 h_i + b_1) + b_2 (+ log m_i)      w_i = exp(s_i) / sum_{j in graph(i)} exp(s_j)
    centre_g = sum_{i in g} w_i x_i

Written with modules, PyG's `softmax` and `scatter`, the readout is some 20 autograd nodes over [N, H],
[N] and [N, 3] tensors, each a fixed cost of a few microseconds forward and backward: on small molecules
about a millisecond of a step, for arithmetic that takes a fraction of that. The backward is the chain rule
written out; the softmax's: with g_w_i = x_i . dL/dcentre_g, dL/ds_i = w_i (g_w_i - sum_{j in g} w_j g_w_j).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

silu_backward = torch.ops.aten.silu_backward


def head_parameters(head: nn.Sequential) -> tuple[Tensor, ...]:
    """The weight head's parameters in `WeightedCentre`'s order: W_1 [H, H], b_1, w_2 [1, H], b_2 [1]."""
    return head[0].weight, head[0].bias, head[2].weight, head[2].bias


class WeightedCentre(torch.autograd.Function):
    """(h [N, H], pos [N, 3], log_mass [N] or None, graph [N] node -> graph, num_graphs, *head_parameters)
    -> the weighted centres [B, 3]."""

    @staticmethod
    def forward(ctx, h, pos, log_mass, graph, num_graphs: int, w1, b1, w2, b2) -> Tensor:
        u = torch.mm(h, w1.t()).add_(b1)  # [N, H] (the bias added after the product: see the one-node layer)
        su = nn.functional.silu(u)
        logits = torch.addmm(b2, su, w2.t()).squeeze(-1)  # [N]
        if log_mass is not None:  # softmax -> m_i exp(s_i) / sum_j m_j exp(s_j)
            logits = logits + log_mass
        # the softmax's shift by each graph's largest logit keeps exp() finite (a graph without nodes keeps
        # its -inf and is never read)
        top = logits.new_full((num_graphs,), float("-inf"))
        top.scatter_reduce_(0, graph, logits, "amax")
        w = (logits - top.index_select(0, graph)).exp_()
        w.div_(logits.new_zeros(num_graphs).index_add_(0, graph, w).index_select(0, graph))  # [N]
        ctx.save_for_backward(h, u, su, w, pos, graph, w1, w2)
        return pos.new_zeros(num_graphs, pos.shape[1]).index_add_(0, graph, w.unsqueeze(-1) * pos)

    @staticmethod
    def backward(ctx, g_centre: Tensor):
        h, u, su, w, pos, graph, w1, w2 = ctx.saved_tensors
        g_node = g_centre.index_select(0, graph)  # [N, 3] each node's graph's gradient
        g_pos = w.unsqueeze(-1) * g_node if ctx.needs_input_grad[1] else None
        w_g = w * (pos * g_node).sum(-1)  # [N] w_i g_w_i
        per_graph = w_g.new_zeros(g_centre.shape[0]).index_add_(0, graph, w_g)  # sum_j w_j g_w_j
        g_logits = w_g.sub_(w * per_graph.index_select(0, graph)).unsqueeze(-1)  # [N, 1]
        g_w2, g_b2 = g_logits.t() @ su, g_logits.sum(0)
        g_u = silu_backward(g_logits, u).mul_(w2)  # [N, H] (g_logits broadcast over the columns)
        g_h = g_u @ w1 if ctx.needs_input_grad[0] else None
        return g_h, g_pos, None, None, None, g_u.t() @ h, g_u.sum(0), g_w2, g_b2
