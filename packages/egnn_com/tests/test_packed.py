"""Packed batches equal PyG's Batch.from_data_list exactly, and the loader yields PyG's batches in order."""

import torch
from torch_geometric.data import Batch, Data
from torch_geometric.loader import DataLoader as PygDataLoader

from common.sampler import ResumableSampler
from egnn_com.data import make_loader
from egnn_com.packed import PackedGraphs, can_pack


def random_graphs(count: int, *, with_y: bool, seed: int = 0) -> list[Data]:
    gen = torch.Generator().manual_seed(seed)
    graphs = []
    for _ in range(count):
        n = int(torch.randint(1, 12, (1,), generator=gen))
        e = int(torch.randint(0, 30, (1,), generator=gen))  # includes edgeless graphs
        g = Data(
            x=torch.randn(n, 5, generator=gen),
            pos=torch.randn(n, 3, generator=gen),
            edge_index=torch.randint(0, n, (2, e), generator=gen),
            mass=torch.rand(n, generator=gen) + 0.1,
        )
        if with_y:
            g.y = torch.randn(1, 3, generator=gen)
        graphs.append(g)
    return graphs


def assert_same_batch(ours: Batch, ref: Batch) -> None:
    assert set(ours.keys()) == set(ref.keys()) and ours.num_graphs == ref.num_graphs
    for key in ref.keys():  # noqa: SIM118 (a Batch iterates over (key, value) pairs)
        assert ours[key].dtype == ref[key].dtype, key
        assert torch.equal(ours[key], ref[key]), key
    for book in ("_slice_dict", "_inc_dict"):
        a, b = getattr(ours, book), getattr(ref, book)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in b), book
    for got, want in zip(ours.to_data_list(), ref.to_data_list(), strict=True):  # bookkeeping really works
        assert all(torch.equal(got[k], want[k]) for k in want.keys())  # noqa: SIM118


def test_packed_collate_equals_pyg_for_random_graph_lists():
    gen = torch.Generator().manual_seed(1)
    for with_y in (True, False):
        graphs = random_graphs(40, with_y=with_y)
        packed = PackedGraphs(graphs)
        for size in (1, 2, 7, 16, 40):
            idx = torch.randperm(40, generator=gen)[:size].tolist()
            assert_same_batch(packed.collate(idx), Batch.from_data_list([graphs[i] for i in idx]))


def test_loader_yields_pygs_batches_in_the_same_order():
    graphs = random_graphs(37, with_y=True, seed=3)
    ours = make_loader(graphs, batch_size=8, train=True, seed=4)
    ours.batch_sampler.set_epoch(2, start_batch=1)
    sampler = ResumableSampler(37, 8, seed=4)
    sampler.set_epoch(2, start_batch=1)
    ref = PygDataLoader(graphs, batch_sampler=sampler)
    assert len(ours) == len(ref) == 3
    for a, b in zip(ours, ref, strict=True):
        assert_same_batch(a, b)


def test_graphs_with_other_attributes_use_pygs_collate():
    graphs = random_graphs(10, with_y=True)
    for g in graphs:
        g.extra = torch.zeros(1)
    assert not can_pack(graphs)
    batch = next(iter(make_loader(graphs, batch_size=4, train=False, seed=0)))
    assert batch.extra.shape == (4,) and batch.num_graphs == 4
