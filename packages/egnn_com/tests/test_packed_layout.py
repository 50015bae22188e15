"""A packed batch carries the EGNN's edge structure, built in the loader, and the model's result with it is
the result without it, bit for bit."""

import torch
from torch_geometric.data import Batch, Data

import egnn_com.packed
from egnn_com.data import make_loader
from egnn_com.edges import EdgeLayout
from egnn_com.metrics import mae_loss
from egnn_com.model import EGNNCentreOfMass
from egnn_com.packed import PackedGraphs, prebuilt_layout


def random_graphs(count: int, seed: int) -> list[Data]:
    """Graphs of 1 to 11 nodes and 0 to 29 random directed edges (some edgeless), with targets; no self-loops
    (an atom is not its own neighbour, and a zero distance has no gradient)."""
    gen = torch.Generator().manual_seed(seed)
    graphs = []
    for _ in range(count):
        n, e = int(torch.randint(1, 12, (1,), generator=gen)), int(torch.randint(0, 30, (1,), generator=gen))
        src = torch.randint(0, n, (e if n > 1 else 0,), generator=gen)
        dst = (src + torch.randint(1, max(n, 2), src.shape, generator=gen)) % n
        graphs.append(
            Data(
                x=torch.randn(n, 5, generator=gen),
                pos=torch.randn(n, 3, generator=gen),
                edge_index=torch.stack([src, dst]),
                mass=torch.rand(n, generator=gen) + 0.1,
                y=torch.randn(1, 3, generator=gen),
            )
        )
    return graphs


def assert_same_layout(got: EdgeLayout, want: EdgeLayout) -> None:
    for name, a, b in zip(EdgeLayout._fields, got, want, strict=True):
        if b.layout == torch.sparse_csr:
            parts = ("crow_indices", "col_indices", "values")
            assert a.layout == b.layout and a.shape == b.shape, name
            assert all(torch.equal(getattr(a, p)(), getattr(b, p)()) for p in parts), name
        else:
            assert a.dtype == b.dtype and torch.equal(a, b), name


def test_packed_batch_carries_the_layout_of_its_own_edges(monkeypatch):
    graphs = random_graphs(30, seed=5)  # includes edgeless graphs
    packed = PackedGraphs(graphs)
    for indices in ([3], [0, 7, 2, 9, 11], list(range(30))):
        batch = packed.collate(indices)
        layout = prebuilt_layout(batch, batch.num_nodes)
        assert layout is not None
        assert_same_layout(layout, EdgeLayout.of(batch.edge_index, batch.num_nodes, fused=True))
        assert "edge_index" in batch and "_edge_layout" not in batch  # PyG's keys, slices and to_data_list
    assert prebuilt_layout(batch.to("cpu"), batch.num_nodes) is layout  # same device: the same edges
    assert prebuilt_layout(batch, batch.num_nodes + 1) is None
    batch.edge_index = batch.edge_index.clone()  # other edges (as after a move to another device)
    assert prebuilt_layout(batch, batch.num_nodes) is None
    gcn_batch = PackedGraphs(graphs, edge_layout=False).collate([0, 1])  # the gcn reads no layout
    monkeypatch.setattr(egnn_com.packed, "get_worker_info", lambda: object())  # as in a worker process
    for other in (Batch.from_data_list(graphs[:4]), gcn_batch, packed.collate([0, 1])):
        assert prebuilt_layout(other, other.num_nodes) is None


def test_model_with_the_loaders_layout_equals_the_model_building_it(monkeypatch):
    graphs = random_graphs(24, seed=6)
    loader = make_loader(graphs, batch_size=12, train=False, seed=0, num_workers=1)  # the loader thread
    ours = next(iter(loader))
    pyg = Batch.from_data_list(graphs[:12])  # the same batch (test_packed), without the layout
    built = []
    of = EdgeLayout.of
    monkeypatch.setattr(EdgeLayout, "of", lambda *args, **kw: built.append(1) or of(*args, **kw))
    results = []
    for batch in (ours, pyg):
        torch.manual_seed(0)
        model = EGNNCentreOfMass(5, hidden_dim=16, num_layers=2)
        pred = model(batch)  # [12, 3]
        mae_loss(pred, batch.y).backward()
        results.append((pred.detach(), [p.grad for p in model.parameters()]))
    assert built == [1]  # only the PyG batch's forward built a layout
    (pred_a, grads_a), (pred_b, grads_b) = results
    assert all(torch.isfinite(g).all() for g in grads_a)  # so that equal means equal
    assert torch.equal(pred_a, pred_b)
    assert all(torch.equal(a, b) for a, b in zip(grads_a, grads_b, strict=True))
