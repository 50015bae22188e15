"""The reference EGNN, re-implemented faithfully for the benchmark's side-by-side timing.

Peer: github.com/vgsatorras/egnn, file `models/egnn_clean/egnn_clean.py`
(commit e9ca6c0c3e1d30a7598efbd66034121b4af8dccc), classes `E_GCL` and `EGNN` with their defaults (SiLU,
residual, no attention, no normalisation, coordinate mean, no tanh) and its `unsorted_segment_sum` /
`unsorted_segment_mean` aggregation. Same operations in the same order: per edge, concatenate
[h_row, h_col, |x_row - x_col|^2] and run the full edge MLP on it ([E, 2H+1] @ [2H+1, H]), then aggregate
with `scatter_add_` over an index expanded to [E, H].

`PeerCentreOfMass` puts that EGNN (hidden 64, 4 layers in the benchmark) in front of the same readout as
`egnn_com.model.EGNNCentreOfMass` (per-graph softmax of a per-node logit, mass-weighted, times the final
coordinates), so both models do the same task on the same batches and only the network differs.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch_geometric.utils import scatter, softmax

from egnn_com.model import mass_feature


class E_GCL(nn.Module):  # noqa: N801 - the peer's own class name, kept so the two read side by side
    """E(n)-equivariant convolutional layer, as the peer writes it (edges_in_d = 0, defaults)."""

    def __init__(self, input_nf: int, output_nf: int, hidden_nf: int):
        super().__init__()
        act_fn = nn.SiLU()
        self.edge_mlp = nn.Sequential(
            nn.Linear(2 * input_nf + 1, hidden_nf), act_fn, nn.Linear(hidden_nf, hidden_nf), act_fn
        )
        self.node_mlp = nn.Sequential(
            nn.Linear(hidden_nf + input_nf, hidden_nf), act_fn, nn.Linear(hidden_nf, output_nf)
        )
        layer = nn.Linear(hidden_nf, 1, bias=False)
        torch.nn.init.xavier_uniform_(layer.weight, gain=0.001)
        self.coord_mlp = nn.Sequential(nn.Linear(hidden_nf, hidden_nf), act_fn, layer)

    def forward(self, h: Tensor, edge_index: Tensor, coord: Tensor) -> tuple[Tensor, Tensor]:
        row, col = edge_index
        coord_diff = coord[row] - coord[col]  # [E, 3]
        radial = torch.sum(coord_diff**2, 1).unsqueeze(1)  # [E, 1]
        edge_feat = self.edge_mlp(torch.cat([h[row], h[col], radial], dim=1))  # [E, H]
        trans = coord_diff * self.coord_mlp(edge_feat)  # [E, 3]
        coord = coord + unsorted_segment_mean(trans, row, coord.size(0))  # [N, 3]
        agg = unsorted_segment_sum(edge_feat, row, h.size(0))  # [N, H]
        h = h + self.node_mlp(torch.cat([h, agg], dim=1))  # [N, H]
        return h, coord


class EGNN(nn.Module):
    """Embedding in, `n_layers` E_GCL layers, embedding out: the peer's EGNN (in_edge_nf = 0)."""

    def __init__(self, in_node_nf: int, hidden_nf: int, out_node_nf: int, n_layers: int = 4):
        super().__init__()
        self.embedding_in = nn.Linear(in_node_nf, hidden_nf)
        self.embedding_out = nn.Linear(hidden_nf, out_node_nf)
        self.layers = nn.ModuleList(E_GCL(hidden_nf, hidden_nf, hidden_nf) for _ in range(n_layers))

    def forward(self, h: Tensor, x: Tensor, edges: Tensor) -> tuple[Tensor, Tensor]:
        h = self.embedding_in(h)
        for layer in self.layers:
            h, x = layer(h, edges, x)
        return self.embedding_out(h), x


def unsorted_segment_sum(data: Tensor, segment_ids: Tensor, num_segments: int) -> Tensor:
    result = data.new_full((num_segments, data.size(1)), 0)
    result.scatter_add_(0, segment_ids.unsqueeze(-1).expand(-1, data.size(1)), data)
    return result


def unsorted_segment_mean(data: Tensor, segment_ids: Tensor, num_segments: int) -> Tensor:
    segment_ids = segment_ids.unsqueeze(-1).expand(-1, data.size(1))
    result = data.new_full((num_segments, data.size(1)), 0)
    count = data.new_full((num_segments, data.size(1)), 0)
    result.scatter_add_(0, segment_ids, data)
    count.scatter_add_(0, segment_ids, torch.ones_like(data))
    return result / count.clamp(min=1)


class PeerCentreOfMass(nn.Module):
    """The peer EGNN with egnn_com's centre-of-mass readout: one logit per node out of the EGNN."""

    def __init__(self, in_features: int, hidden_dim: int = 64, num_layers: int = 4):
        super().__init__()
        self.egnn = EGNN(in_features + 1, hidden_dim, 1, num_layers)  # + log(mass), as egnn_com reads it

    def forward(self, batch) -> Tensor:
        x = torch.cat([batch.x, mass_feature(batch)], dim=-1)  # [N, F + 1]
        logits, pos = self.egnn(x, batch.pos, batch.edge_index)  # [N, 1], [N, 3]
        logits = logits.squeeze(-1) + torch.log(batch.mass)
        w = softmax(logits, batch.batch, num_nodes=pos.shape[0])  # [N]
        return scatter(w.unsqueeze(-1) * pos, batch.batch, dim=0, dim_size=batch.num_graphs, reduce="sum")
