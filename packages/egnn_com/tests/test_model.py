"""Equivariance of the EGNN (rotation/reflection + translation identities) and non-equivariance of the GCN."""

from types import SimpleNamespace

import pytest
import torch
from torch_geometric.data import Batch
from torch_geometric.utils import scatter

from common.errors import ConfigError
from egnn_com.data import load_dataset
from egnn_com.model import EGNNCentreOfMass, EGNNLayer, GCNCentreOfMass, build_model


def _cfg(name, **kw):
    base = {"name": name, "hidden_dim": 32, "num_layers": 3, "dropout": 0.1, "pooling": "mean"}
    return SimpleNamespace(**{**base, **kw})


def _orthogonal(gen, reflect=False):
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=gen, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    if (torch.det(q) < 0) != reflect:
        q[:, 0] = -q[:, 0]
    return q.float()


def _moved(batch, rot, shift):
    out = batch.clone()
    out.pos = batch.pos @ rot.T + shift  # [N, 3]
    return out


@pytest.fixture
def batch(tiny_data):
    return Batch.from_data_list(load_dataset(tiny_data).graphs[:8])


@pytest.mark.parametrize("reflect", [False, True])
def test_egnn_is_e3_equivariant(batch, reflect):
    torch.manual_seed(0)
    model = build_model(_cfg("egnn"), batch.num_node_features).eval()
    # give the coordinate MLPs real weight so the coordinate updates matter in this check
    for layer in model.layers:
        torch.nn.init.normal_(layer.coord_mlp[-1].weight, std=0.3)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        pred = model(batch)  # [B, 3]
        for _ in range(3):
            rot, shift = _orthogonal(gen, reflect), torch.randn(3, generator=gen) * 10
            moved = model(_moved(batch, rot, shift))
            torch.testing.assert_close(moved, pred @ rot.T + shift, atol=2e-4, rtol=1e-5)


def test_egnn_layer_features_invariant_coordinates_equivariant(batch):
    torch.manual_seed(0)
    layer = EGNNLayer(16)
    torch.nn.init.normal_(layer.coord_mlp[-1].weight, std=0.3)
    h = torch.randn(batch.num_nodes, 16)
    rot, shift = _orthogonal(torch.Generator().manual_seed(2)), torch.tensor([3.0, -4.0, 5.0])
    with torch.no_grad():
        h1, x1 = layer(h, batch.pos, batch.edge_index)
        h2, x2 = layer(h, batch.pos @ rot.T + shift, batch.edge_index)
    torch.testing.assert_close(h2, h1, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(x2, x1 @ rot.T + shift, atol=1e-4, rtol=1e-5)
    assert (x1 - batch.pos).abs().max() > 1e-3  # the coordinates did move


def test_split_first_edge_layer_equals_the_papers_concatenated_layer(batch):
    """phi_e(W [h_i; h_j; d_ij^2] + b) computed the paper's way gives the layer's messages."""
    torch.manual_seed(0)
    layer = EGNNLayer(8)
    h = torch.randn(batch.num_nodes, 8)
    dst, src = batch.edge_index[1], batch.edge_index[0]  # PyG flow: messages go source -> target
    weight = torch.cat(
        [layer.edge_dst.weight, layer.edge_src.weight, layer.edge_dist[:, None]], dim=1
    )  # [8, 17]
    d2 = (batch.pos[dst] - batch.pos[src]).pow(2).sum(-1, keepdim=True)
    paper = layer.edge_mlp(torch.cat([h[dst], h[src], d2], dim=-1) @ weight.T + layer.edge_dst.bias)  # [E, 8]
    with torch.no_grad():
        ours, _ = layer.edge_messages(h, batch.pos, src, dst)
    torch.testing.assert_close(ours, paper.detach(), atol=1e-5, rtol=1e-5)


def test_egnn_layer_aggregates_the_mean_message_and_shift_over_incoming_edges(batch):
    """The layer's own index_add_ means equal PyG's mean scatter of the same per-edge messages."""
    torch.manual_seed(0)
    layer = EGNNLayer(8)
    torch.nn.init.normal_(layer.coord_mlp[-1].weight, std=0.3)
    h = torch.randn(batch.num_nodes, 8)
    src, dst = batch.edge_index
    with torch.no_grad():
        m, shift = layer.edge_messages(h, batch.pos, src, dst)
        m_mean = scatter(m, dst, dim=0, dim_size=batch.num_nodes, reduce="mean")
        step = scatter(shift, dst, dim=0, dim_size=batch.num_nodes, reduce="mean")
        expected_h = h + layer.node_mlp(torch.cat([h, m_mean], dim=-1))
        h1, x1 = layer(h, batch.pos, batch.edge_index)
    torch.testing.assert_close(h1, expected_h, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x1, batch.pos + step, atol=1e-6, rtol=1e-5)


def test_egnn_predicts_convex_combination_of_positions(batch):
    model = build_model(_cfg("egnn", num_layers=1), batch.num_node_features).eval()
    for layer in model.layers:
        torch.nn.init.zeros_(
            layer.coord_mlp[-1].weight
        )  # no coordinate update: output = weighted mean of input
    with torch.no_grad():
        pred = model(batch)
    for g in range(batch.num_graphs):
        pos = batch.pos[batch.batch == g]
        assert ((pred[g] >= pos.min(0).values - 1e-4) & (pred[g] <= pos.max(0).values + 1e-4)).all()


def test_gcn_fed_raw_coordinates_is_not_equivariant(batch):
    torch.manual_seed(0)
    model = build_model(_cfg("gcn"), batch.num_node_features).eval()
    rot, shift = _orthogonal(torch.Generator().manual_seed(3)), torch.tensor([5.0, -2.0, 7.0])
    with torch.no_grad():
        error = (model(_moved(batch, rot, shift)) - (model(batch) @ rot.T + shift)).abs().max()
    assert error > 0.1


def test_build_model_variants_and_errors():
    assert isinstance(build_model(_cfg("gcn"), 5), GCNCentreOfMass)
    assert isinstance(build_model(_cfg("egnn"), 5), EGNNCentreOfMass)
    gcn = build_model(_cfg("gcn", num_layers=4), 5)
    assert len(gcn.convs) == 4 and gcn.convs[0].in_channels == 9  # 5 features + log mass + xyz
    assert build_model(_cfg("gcn", use_mass=False), 5).convs[0].in_channels == 8  # 5 features + xyz
    assert build_model(_cfg("egnn", use_mass=False), 5).embed.in_features == 5
    with pytest.raises(ConfigError, match="num_layers"):
        build_model(_cfg("gcn", num_layers=1), 5)
    with pytest.raises(ConfigError, match="'gcn' or 'egnn'"):
        build_model(_cfg("schnet"), 5)
