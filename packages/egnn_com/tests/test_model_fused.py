"""The one-node layer, the fused edge pre-activation and the target-sorted edges leave the EGNN's function
unchanged, and so does the trainer's fused optimizer.

`reference_layer` is the layer's math as it was before the fusion (two `index_select` gathers, a sum and an
in-place distance term, PyG's edge order): outputs and gradients must equal it on random graphs, and the
parameter names and shapes stay those older checkpoints were saved with.
"""

import copy

import pytest
import torch
from torch_geometric.data import Batch, Data

from egnn_com import fused_layer
from egnn_com.config import EgnnComConfig
from egnn_com.edges import (
    EdgeLayout,
    bag_sums,
    edges_by_target,
    inverse_in_degree,
    stable_order,
    sum_into_rows,
)
from egnn_com.model import EGNNCentreOfMass, EGNNLayer
from egnn_com.task import make_optimizer


def reference_layer(layer: EGNNLayer, h, pos, edge_index):
    """The layer before the fusion, on its own parameters, edges in the order given."""
    src, dst = edge_index
    rel = pos.index_select(0, dst) - pos.index_select(0, src)
    dist2 = (rel * rel).sum(-1, keepdim=True)
    pre = layer.edge_dst(h).index_select(0, dst) + layer.edge_src(h).index_select(0, src)
    pre = pre.addcmul_(dist2, layer.edge_dist)
    m = layer.edge_mlp(pre)
    shift = rel / (dist2.sqrt() + 1.0) * layer.coord_mlp(m)
    inv_degree = inverse_in_degree(dst, h.shape[0])
    m_mean = pos.new_zeros(h.shape[0], m.shape[1]).index_add_(0, dst, m) * inv_degree
    pos_step = pos.new_zeros(pos.shape).index_add_(0, dst, shift) * inv_degree
    return h + layer.node_mlp(torch.cat([h, m_mean], dim=-1)), pos + pos_step


def random_batch(seed: int, graphs: int = 3, features: int = 5) -> Batch:
    """Random graphs, edges in random order, some nodes without incoming edges."""
    gen = torch.Generator().manual_seed(seed)
    data = []
    for _ in range(graphs):
        n = int(torch.randint(4, 12, (1,), generator=gen))
        edges = torch.randint(0, n, (2, 4 * n), generator=gen)
        data.append(
            Data(
                x=torch.randn(n, features, generator=gen),
                pos=3 * torch.randn(n, 3, generator=gen),
                mass=1 + 10 * torch.rand(n, generator=gen),
                edge_index=edges[:, edges[0] != edges[1]],
            )
        )
    return Batch.from_data_list(data)


def grads(params) -> list:
    return [p.grad.clone() for p in params]


@pytest.mark.parametrize(
    ("seed", "edge_chunk"), [(0, fused_layer.EDGE_CHUNK), (1, fused_layer.EDGE_CHUNK), (2, 7)]
)
def test_layer_outputs_and_gradients_equal_the_unfused_layer(seed, edge_chunk, monkeypatch):
    """Also with the backward's edge chain in several chunks (7 edges each) instead of one."""
    monkeypatch.setattr(fused_layer, "EDGE_CHUNK", edge_chunk)
    torch.manual_seed(seed)
    batch, layer = random_batch(seed), EGNNLayer(16)
    h0 = torch.randn(batch.num_nodes, 16)
    results = []
    for forward in (
        lambda h, pos: layer(h, pos, batch.edge_index),
        lambda h, pos: reference_layer(layer, h, pos, batch.edge_index),
    ):
        layer.zero_grad(set_to_none=True)
        h, pos = h0.clone().requires_grad_(), batch.pos.clone().requires_grad_()
        h_out, pos_out = forward(h, pos)
        (h_out.sin().sum() + (pos_out**2).sum()).backward()  # every output element carries gradient
        results.append([h_out, pos_out, h.grad, pos.grad, *grads(layer.parameters())])
    for ours, reference in zip(*results, strict=True):
        torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("use_mass", [True, False])
def test_model_equals_the_unfused_model_and_keeps_its_state_dict(use_mass):
    """The one-node layers and the one-node readout (weight head, per-graph softmax, weighted centre)."""
    torch.manual_seed(0)
    batch = random_batch(3)
    model = EGNNCentreOfMass(5, hidden_dim=16, num_layers=3, use_mass=use_mass)
    reference = EGNNCentreOfMass(5, hidden_dim=16, num_layers=3, use_mass=use_mass)
    # parameter names and shapes unchanged: a checkpoint of the same architecture loads strictly
    reference.load_state_dict(model.state_dict(), strict=True)

    def unfused(batch):
        log_mass = batch.mass.log() if use_mass else torch.zeros(batch.num_nodes)
        x = torch.cat([batch.x, log_mass.unsqueeze(-1)], dim=-1) if use_mass else batch.x
        h, pos = reference.embed(x), batch.pos
        for layer in reference.layers:
            h, pos = reference_layer(layer, h, pos, batch.edge_index)  # PyG's edge order, unsorted targets
        logits = reference.weight_head(h).squeeze(-1) + log_mass
        w = torch.cat([logits[batch.batch == g].softmax(0) for g in range(batch.num_graphs)])
        return torch.stack([(w * pos.T)[:, batch.batch == g].sum(-1) for g in range(batch.num_graphs)])

    out, expected = model(batch), unfused(batch)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    out.square().sum().backward()
    expected.square().sum().backward()
    for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")


def test_edges_by_target_is_a_stable_reordering_of_the_same_edges():
    edge_index = torch.tensor([[0, 1, 2, 3, 4, 5], [2, 0, 2, 1, 0, 2]])
    ordered = edges_by_target(edge_index)
    assert ordered.tolist() == [[1, 4, 3, 0, 2, 5], [0, 0, 1, 2, 2, 2]]
    assert torch.equal(edges_by_target(ordered), ordered)  # already sorted: unchanged
    layout = EdgeLayout.of(edge_index, 6, fused=True)  # the one-node layer's layout: the same order
    assert torch.stack([layout.src, layout.dst]).tolist() == ordered.tolist()


@pytest.mark.parametrize("bound", [50, 2**15, 2**20])
def test_stable_order_sorts_like_torch_stable_sort(bound):
    """NumPy's radix sort for keys below 2^15, torch's sort above: both the stable order."""
    keys = torch.randint(0, min(bound, 40), (500,), generator=torch.Generator().manual_seed(bound))
    assert torch.equal(stable_order(keys, bound), torch.sort(keys, stable=True).indices)


@pytest.mark.parametrize("width", [3, 64])
def test_sums_into_rows_equal_the_sparse_product(width):
    """The layer's sums by target and by source (on CPU bags of the CSR's rows) equal the sparse product bit
    for bit: the same sums in the same order (node 5 has no edge, node 3 none in)."""
    edge_index = torch.tensor([[0, 1, 2, 3, 4, 1, 0, 2], [2, 0, 2, 1, 0, 2, 1, 4]])
    layout = EdgeLayout.of(edge_index, 6, fused=True)
    rows = torch.randn(8, width, generator=torch.Generator().manual_seed(width))
    for incidence in (layout.into_dst, layout.into_both):
        assert torch.equal(sum_into_rows(incidence, rows), torch.sparse.mm(incidence, rows))
    no_edges = EdgeLayout.of(torch.zeros(2, 0, dtype=torch.long), 3, fused=True)
    assert torch.equal(sum_into_rows(no_edges.into_both, torch.zeros(0, width)), torch.zeros(6, width))


def test_bag_sums_equal_embedding_bag():
    """The kernel called straight sums what `nn.functional.embedding_bag` sums, an empty bag to 0, with
    and without per-row weights."""
    gen = torch.Generator().manual_seed(0)
    table, rows = torch.randn(7, 5, generator=gen), torch.tensor([3, 0, 6, 6, 1, 2])
    offsets, weights = torch.tensor([0, 2, 2, 5, 6]), torch.randn(6, generator=gen)
    for w in (None, weights):
        want = torch.nn.functional.embedding_bag(
            rows, table, offsets, mode="sum", per_sample_weights=w, include_last_offset=True
        )
        assert torch.equal(bag_sums(table, rows, offsets, w), want)
    assert torch.equal(bag_sums(table, rows, offsets)[1], torch.zeros(5))


def test_incidence_matrices_sum_edge_rows_into_their_nodes():
    """into_dst sums over the edges into each node, into_both's rows 2i and 2i + 1 over those into and out
    of node i (node 5 has no edge at all)."""
    edge_index = torch.tensor([[0, 1, 2, 3, 4, 1, 0], [2, 0, 2, 1, 0, 2, 1]])
    layout = EdgeLayout.of(edge_index, 6, fused=True)
    rows = torch.randn(7, 4, dtype=torch.float32)
    into = torch.zeros(6, 4).index_add_(0, layout.dst, rows)
    out_of = torch.zeros(6, 4).index_add_(0, layout.src, rows)
    torch.testing.assert_close(torch.sparse.mm(layout.into_dst, rows), into)
    both = torch.sparse.mm(layout.into_both, rows).view(6, 2, 4)
    torch.testing.assert_close(both[:, 0], into)
    torch.testing.assert_close(both[:, 1], out_of)
    # 1 / in-degree; 1 for a node without incoming edges, whose sum is 0
    torch.testing.assert_close(layout.inv_degree.squeeze(-1), torch.tensor([1 / 2, 1 / 2, 1 / 3, 1, 1, 1]))


def test_float32_layer_equals_the_autograd_layer_in_float64():
    """Float64 takes the autograd path (`EGNNLayer.edge_messages`): the one-node float32 layer agrees."""
    torch.manual_seed(4)
    batch, layer = random_batch(4), EGNNLayer(16)
    torch.nn.init.normal_(layer.coord_mlp[-1].weight, std=0.3)  # coordinate steps large enough to compare
    layer64 = EGNNLayer(16).double()
    layer64.load_state_dict(layer.state_dict())
    h0 = torch.randn(batch.num_nodes, 16)
    results = []
    for net, dtype in ((layer, torch.float32), (layer64, torch.float64)):
        h, pos = h0.to(dtype, copy=True).requires_grad_(), batch.pos.to(dtype, copy=True).requires_grad_()
        h_out, pos_out = net(h, pos, batch.edge_index)
        (h_out.sin().sum() + (pos_out**2).sum()).backward()
        results.append([h_out, pos_out, h.grad, pos.grad, *grads(net.parameters())])
    for ours, reference in zip(*results, strict=True):
        torch.testing.assert_close(ours.double(), reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["adamw", "adam"])
def test_lean_optimizer_steps_like_torch_fused_one_and_shares_its_state_dict(kind):
    """The trainer's optimizer takes torch's fused steps to the bit, also after loading a state dict either way
    and when a parameter has no gradient (torch's own step then); a plain torch optimizer continues from its
    state dict with the same step counts."""
    torch.manual_seed(0)
    batch = random_batch(6)
    batch.y = torch.randn(batch.num_graphs, 3)
    models = [EGNNCentreOfMass(5, hidden_dim=8, num_layers=2) for _ in range(3)]
    for model in models[1:]:
        model.load_state_dict(models[0].state_dict())
    cfg = EgnnComConfig()
    cfg.optim.optimizer = kind
    torch_kind = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam}[kind]
    lean = make_optimizer(cfg, models[0])
    fused = torch_kind(
        models[1].parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay, fused=True
    )
    assert isinstance(lean, torch_kind) and type(lean) is not torch_kind

    def steps(optimizers, count, frozen=None):
        for _ in range(count):
            for model, optimizer in zip(models, optimizers, strict=False):
                optimizer.zero_grad()
                (model(batch) - batch.y).abs().mean().backward()
                if frozen is not None:
                    dict(model.named_parameters())[frozen].grad = None
                optimizer.step()

    steps([lean, fused], 3)
    assert lean.__dict__.get("_lean_step_counts")  # the short way was taken after the first step
    steps([lean, fused], 1, frozen="embed.bias")  # a parameter without gradient: torch's step
    steps([lean, fused], 2)
    for p, q in zip(models[0].parameters(), models[1].parameters(), strict=True):
        assert torch.equal(p, q)
    assert [float(s["step"]) for s in lean.state_dict()["state"].values()] == [
        float(s["step"]) for s in fused.state_dict()["state"].values()
    ]
    # a torch optimizer continues from the lean one's state dict (each parameter's own count, once a step)
    plain = torch_kind(models[2].parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    models[2].load_state_dict(models[0].state_dict())
    plain.load_state_dict(copy.deepcopy(lean.state_dict()))
    lean.load_state_dict(copy.deepcopy(fused.state_dict()))
    steps([lean, fused, plain], 2)
    for p, q, r in zip(*(m.parameters() for m in models), strict=True):
        assert torch.equal(p, q)
        torch.testing.assert_close(r, p, rtol=1e-5, atol=1e-6)
    assert float(plain.state_dict()["state"][0]["step"]) == float(lean.state_dict()["state"][0]["step"]) == 8


def test_trainer_optimizer_is_fused_and_steps_like_the_default_adamw():
    """The fused AdamW the trainer builds takes the default AdamW's steps, and their states load both ways."""
    torch.manual_seed(0)
    batch = random_batch(5)
    batch.y = torch.randn(batch.num_graphs, 3)
    models = [EGNNCentreOfMass(5, hidden_dim=8, num_layers=2) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    cfg = EgnnComConfig()
    fused = make_optimizer(cfg, models[0])
    default = torch.optim.AdamW(models[1].parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    assert fused.defaults["fused"] and not default.defaults["fused"]
    for _ in range(3):
        for model, optimizer in zip(models, (fused, default), strict=True):
            optimizer.zero_grad()
            (model(batch) - batch.y).abs().mean().backward()
            optimizer.step()
    for p, q in zip(models[0].parameters(), models[1].parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    default.load_state_dict(fused.state_dict())
    fused.load_state_dict(default.state_dict())
    assert fused.state_dict()["state"][0]["step"] == 3
