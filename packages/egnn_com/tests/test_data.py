"""Synthetic generator, graph-file validation, split, sampler and loader settings."""

import logging

import numpy as np
import pytest
import torch

from common.errors import DataError
from common.seeding import epoch_permutation
from egnn_com.data import (
    GraphFileError,
    ThreadPrefetchLoader,
    dataset_stats,
    describe_loader,
    load_dataset,
    make_loader,
    read_raw,
    validate_graph,
)
from egnn_com.splits import split_by_graph
from egnn_com.synthetic import ATOM_MASSES, COVALENT_RADII, generate_dataset, make_graph


def test_generator_is_deterministic_and_target_is_centre_of_mass():
    a, b = make_graph(7, 3), make_graph(7, 3)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(make_graph(7, 4)["pos"], a["pos"])
    types = a["x"].argmax(1)
    np.testing.assert_allclose(a["mass"], ATOM_MASSES[types], rtol=1e-6)
    com = (a["mass"][:, None].astype(np.float64) * a["pos"]).sum(0) / a["mass"].sum()
    np.testing.assert_allclose(a["y"][0], com, atol=1e-4)


def test_generator_geometry_is_molecule_like():
    g = make_graph(0, 1, min_nodes=30, max_nodes=30, cutoff=2.0)
    dist = np.linalg.norm(g["pos"][:, None] - g["pos"][None], axis=-1)
    src, dst = g["edge_index"]
    assert (src != dst).all() and (dist[src, dst] < 2.0).all()
    assert len(src) == ((dist < 2.0).sum() - 30)  # every pair within the cutoff, both directions
    # every atom has a bonded neighbour at a covalent bond length
    nearest = np.sort(dist, axis=1)[:, 1]
    assert nearest.min() > 0.6 and nearest.max() < 2 * COVALENT_RADII.max() + 0.1


def test_load_valid_pt_and_npz(tmp_path):
    for fmt in ("pt", "npz"):
        folder = generate_dataset(tmp_path / fmt, num_graphs=5, fmt=fmt, min_nodes=4, max_nodes=6)
        ds = load_dataset(folder)
        assert len(ds) == 5 and not ds.failed and ds.num_features == 5
        g = ds.graphs[0]
        assert g.y.shape == (1, 3) and g.pos.dtype == torch.float32 and g.edge_index.dtype == torch.int64
    stats = dataset_stats(ds.graphs)
    assert stats["num_graphs"] == 5 and 20 <= stats["total_nodes"] <= 30 and stats["num_node_features"] == 5


def _raw(**changes):
    raw = {k: torch.from_numpy(v) for k, v in make_graph(0, 0, min_nodes=5, max_nodes=5).items()}
    raw.update(changes)
    return {k: v for k, v in raw.items() if v is not None}


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"pos": None}, "missing key(s) ['pos']"),
        ({"pos": torch.zeros(5, 2)}, "'pos' has shape (5, 2), expected [5, 3]"),
        ({"mass": torch.ones(4)}, "'mass' has shape (4,), expected [5]"),
        ({"x": torch.zeros(5)}, "'x' has shape (5,)"),
        ({"edge_index": torch.tensor([[0, 1], [1, 9]])}, "refers to node 9"),
        ({"edge_index": torch.zeros(3, 4, dtype=torch.long)}, "expected [2, E]"),
        ({"edge_index": torch.tensor([[0, 1, 3], [1, 0, 3]])}, "1 self-loop(s) (node 3 -> 3 first)"),
        ({"pos": torch.full((5, 3), float("nan"))}, "'pos' contains NaN or inf"),
        ({"y": torch.tensor([1.0, float("inf"), 0.0])}, "'y' contains NaN or inf"),
        ({"y": torch.zeros(2)}, "'y' has shape (2,)"),
        ({"mass": torch.zeros(5)}, "masses must be positive"),
    ],
)
def test_validation_names_file_and_problem(tmp_path, changes, needle):
    path = tmp_path / "graph_x.pt"
    with pytest.raises(GraphFileError) as err:
        validate_graph(_raw(**changes), path)
    assert str(path) in str(err.value) and needle in str(err.value)


def test_target_optional_for_prediction(tmp_path):
    data = validate_graph(_raw(y=None), tmp_path / "g.pt", require_target=False)
    assert getattr(data, "y", None) is None and data.num_nodes == 5


def test_corrupt_and_pickled_files_are_refused(tmp_path):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a zip archive at all")
    with pytest.raises(GraphFileError, match="cannot be read"):
        read_raw(corrupt)
    pickled = tmp_path / "pickled.pt"
    torch.save({"x": logging.getLogger("a")}, pickled)  # arbitrary object: weights_only must refuse it
    with pytest.raises(GraphFileError, match="pickled Python objects"):
        read_raw(pickled)
    bad_npz = tmp_path / "bad.npz"
    np.savez(bad_npz, x=np.array([object()], dtype=object))
    with pytest.raises(GraphFileError, match="bad.npz"):
        validate_graph(read_raw(bad_npz), bad_npz)


def test_invalid_files_are_skipped_and_reported(tiny_data, caplog):
    (tiny_data / "graph_00001.pt").write_bytes(b"garbage")
    torch.save(_raw(pos=torch.full((5, 3), float("nan"))), tiny_data / "graph_00002.pt")
    torch.save(_raw(x=torch.zeros(5, 7)), tiny_data / "graph_00003.pt")  # odd feature width
    with caplog.at_level(logging.DEBUG, logger="trainyard"):
        ds = load_dataset(tiny_data, debug=True)
    assert len(ds) == 37 and {p.name for p, _ in ds.failed} == {
        "graph_00001.pt",
        "graph_00002.pt",
        "graph_00003.pt",
    }
    text = caplog.text
    assert "3 of 40 graph files are invalid" in text and "contains NaN" in text and "7 features" in text
    assert "load graph_00002.pt: FAILED" in text and "load graph_00004.pt: ok" in text  # per-file in debug
    with pytest.raises(DataError, match="graph_00001.pt"):
        load_dataset(tiny_data, strict=True)


def test_no_valid_file_is_an_error(tmp_path):
    (tmp_path / "a.pt").write_bytes(b"x")
    with pytest.raises(DataError, match="No valid graph file"):
        load_dataset(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no graph files"):
        load_dataset(empty)
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(tmp_path / "missing")


def test_split_is_seeded_and_disjoint():
    tr, va = split_by_graph(50, 0.2, seed=1)
    assert len(va) == 10 and len(tr) == 40 and not set(tr) & set(va)
    tr2, va2 = split_by_graph(50, 0.2, seed=1)
    np.testing.assert_array_equal(va, va2)
    assert not np.array_equal(split_by_graph(50, 0.2, seed=2)[1], va)
    with pytest.raises(DataError):
        split_by_graph(1, 0.2, seed=0)


def test_sampler_order_is_function_of_seed_and_epoch_and_skips_batches(tiny_data):
    graphs = load_dataset(tiny_data).graphs[:20]
    loader = make_loader(graphs, batch_size=4, train=True, seed=5)
    s = loader.batch_sampler
    s.set_epoch(3)
    full = [i for batch in s for i in batch]
    assert full == epoch_permutation(20, 5, 3).tolist()
    s.set_epoch(3, start_batch=2)
    assert [i for batch in s for i in batch] == full[8:] and len(s) == len(loader) == 3
    assert [b.num_graphs for b in loader] == [4, 4, 4]


def _batch_contents(loader):
    return [(b.x.tolist(), b.edge_index.tolist(), b.batch.tolist(), b.y.tolist()) for b in loader]


def test_loader_settings(tiny_data):
    graphs = load_dataset(tiny_data).graphs
    # background loading in persistent worker processes
    train = make_loader(
        graphs,
        batch_size=8,
        train=True,
        seed=0,
        num_workers=2,
        prefetch_factor=4,
        device=torch.device("cpu"),
        worker_type="process",
    )
    assert train.batch_sampler.drop_last and train.persistent_workers and train.prefetch_factor == 4
    assert not train.pin_memory
    assert train.num_workers == 2
    val = make_loader(graphs[:10], batch_size=8, train=False, seed=0)
    assert not val.batch_sampler.drop_last and val.num_workers == 0 and [b.num_graphs for b in val] == [8, 2]
    with pytest.raises(DataError, match="fewer than one batch"):
        make_loader(graphs[:3], batch_size=8, train=True, seed=0)


def test_thread_loader_gives_the_same_batches_from_a_background_thread(tiny_data):
    graphs = load_dataset(tiny_data).graphs
    kw = dict(batch_size=8, train=True, seed=3)
    threaded = make_loader(graphs, num_workers=2, prefetch_factor=3, **kw)  # worker_type="thread" by default
    assert isinstance(threaded, ThreadPrefetchLoader) and threaded.prefetch_batches == 6
    assert threaded.num_workers == 0  # no worker processes
    assert "background thread 6 batches ahead" in describe_loader(threaded)
    in_process = make_loader(graphs, num_workers=0, **kw)
    for epoch, start in [(0, 0), (2, 1)]:  # a resumed epoch starts at its saved batch in both
        threaded.batch_sampler.set_epoch(epoch, start)
        in_process.batch_sampler.set_epoch(epoch, start)
        assert _batch_contents(threaded) == _batch_contents(in_process)
    assert len(threaded) == len(in_process)


def test_loaders_never_draw_from_the_global_torch_rng(tiny_data):
    graphs = load_dataset(tiny_data).graphs
    torch.manual_seed(0)
    before = torch.get_rng_state()
    for num_workers in (0, 2):  # in the main process and from the loader thread
        loader = make_loader(graphs, batch_size=8, train=True, seed=1, num_workers=num_workers)
        for epoch in range(2):
            loader.batch_sampler.set_epoch(epoch)
            list(loader)
    assert torch.equal(before, torch.get_rng_state())
