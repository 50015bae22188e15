"""Graph files -> validated PyG `Data` objects, and the training and validation DataLoaders.

A dataset folder holds one file per graph: a torch tensor dict (`.pt`, read with `torch.load(weights_only=True)`
so no pickled code runs) or an `.npz` archive (read with `allow_pickle=False`). Keys:
    x [N, F] float node features, pos [N, 3] float positions, edge_index [2, E] int64 (0 <= i < N),
    mass [N] float > 0, y [3] or [1, 3] float target centre of mass (optional for prediction).
Other keys (`egnn_com.prepare` also writes the atomic numbers `z`) are ignored. Molecule files and PyG data
become such graphs through `egnn_com.prepare` / `from_pyg`; the split is `egnn_com.splits`.
"""

from __future__ import annotations

import logging
import pickle
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader as TorchDataLoader
from torch_geometric.data import Data
from torch_geometric.loader import DataLoader

from common.errors import DataError
from common.prefetch import prefetch_in_thread
from common.sampler import ResumableSampler
from egnn_com.packed import PackedGraphs, can_pack

GRAPH_SUFFIXES = (".pt", ".npz")
REQUIRED_KEYS = ("x", "pos", "edge_index", "mass")
TARGET_KEY = "y"


class GraphFileError(DataError):
    """One graph file is unreadable or invalid (the message names the file and the reason)."""


def read_raw(path: Path) -> dict[str, torch.Tensor]:
    """Read a graph file into a dict of tensors without executing pickled code."""
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                return {k: torch.from_numpy(np.array(archive[k])) for k in archive.files}
        if not zipfile.is_zipfile(path):  # torch.save writes a zip; anything else is truncated or foreign
            raise GraphFileError(
                f"{path}: cannot be read (not a torch.save zip archive: corrupt or truncated)"
            )
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except GraphFileError:
        raise
    except pickle.UnpicklingError as exc:  # weights_only refuses anything but tensors and plain containers
        raise GraphFileError(
            f"{path}: refused by torch.load(weights_only=True): it holds pickled Python "
            f"objects, not only tensors"
        ) from exc
    except Exception as exc:  # zip, npz and torch readers raise many types for damaged files
        raise GraphFileError(
            f"{path}: cannot be read ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200] if str(exc) else 'damaged file'})"
        ) from exc
    if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise GraphFileError(f"{path}: expected a dict of tensors, got {type(raw).__name__}")
    return raw


def validate_graph(raw: dict[str, torch.Tensor], path: Path, *, require_target: bool = True) -> Data:
    """Check keys, shapes, dtypes and finiteness; return a float32 `Data(x, pos, edge_index, mass, y)`."""
    keys = REQUIRED_KEYS + ((TARGET_KEY,) if require_target else ())
    missing = [k for k in keys if k not in raw]
    if missing:
        raise GraphFileError(f"{path}: missing key(s) {missing}; a graph file needs {list(keys)}")
    x, pos, edge_index, mass = (raw[k] for k in REQUIRED_KEYS)

    def bad(msg: str) -> GraphFileError:
        return GraphFileError(f"{path}: {msg}")

    if x.dim() != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise bad(f"'x' has shape {tuple(x.shape)}, expected [N, F] with N >= 1 nodes and F >= 1 features")
    n = x.shape[0]
    if tuple(pos.shape) != (n, 3):
        raise bad(f"'pos' has shape {tuple(pos.shape)}, expected [{n}, 3] ({n} nodes from 'x')")
    if tuple(mass.shape) != (n,):
        raise bad(f"'mass' has shape {tuple(mass.shape)}, expected [{n}]")
    if edge_index.dim() != 2 or edge_index.shape[0] != 2:
        raise bad(f"'edge_index' has shape {tuple(edge_index.shape)}, expected [2, E]")
    if edge_index.dtype.is_floating_point or edge_index.dtype == torch.bool:
        raise bad(f"'edge_index' has dtype {edge_index.dtype}, expected an integer type")
    if edge_index.numel() and (edge_index.min() < 0 or edge_index.max() >= n):
        raise bad(
            f"'edge_index' refers to node {int(edge_index.max())} (or a negative one); nodes are 0..{n - 1}"
        )
    loops = (edge_index[0] == edge_index[1]).nonzero().flatten()
    if loops.numel():  # a zero-length edge: the coordinate update's distance has no gradient there (NaN)
        node = int(edge_index[0, loops[0]])
        raise bad(
            f"'edge_index' has {loops.numel()} self-loop(s) (node {node} -> {node} first); EGNN messages run "
            "between distinct atoms: remove them, e.g. torch_geometric.utils.remove_self_loops"
        )
    for name in ("x", "pos", "mass") + ((TARGET_KEY,) if TARGET_KEY in raw else ()):
        t = raw[name]
        if not (t.dtype.is_floating_point or t.dtype in (torch.int32, torch.int64, torch.uint8, torch.bool)):
            raise bad(f"'{name}' has dtype {t.dtype}, expected a real number type")
        if t.dtype.is_floating_point and not torch.isfinite(t).all():
            raise bad(f"'{name}' contains NaN or inf")
    if (mass <= 0).any():
        raise bad("'mass' has a value <= 0; masses must be positive")
    data = Data(x=x.float(), pos=pos.float(), edge_index=edge_index.long(), mass=mass.float())
    if TARGET_KEY in raw:
        y = raw[TARGET_KEY]
        if y.numel() != 3:
            raise bad(f"'y' has shape {tuple(y.shape)}, expected [3] or [1, 3] (a 3D centre of mass)")
        data.y = y.float().reshape(1, 3)  # [1, 3] so a batch of B graphs stacks to [B, 3]
    return data


@dataclass
class GraphDataset:
    """Validated graphs in memory, with the load report."""

    graphs: list[Data]
    files: list[Path]  # files[i] holds graphs[i]
    failed: list[tuple[Path, str]] = field(default_factory=list)  # (file, reason)

    def __len__(self) -> int:
        return len(self.graphs)

    @property
    def num_features(self) -> int:
        return self.graphs[0].num_node_features


def list_graph_files(paths: str | Path | list) -> list[Path]:
    """Graph files in a folder (sorted), or the given file list; DataError when there are none."""
    items = [Path(p) for p in (paths if isinstance(paths, list | tuple) else [paths])]
    files: list[Path] = []
    for item in items:
        if item.is_dir():
            files += sorted(p for p in item.iterdir() if p.suffix in GRAPH_SUFFIXES and p.is_file())
        elif item.is_file():
            files.append(item)
        else:
            raise DataError(
                f"data path {item} does not exist. Create a dataset with "
                f"`python -m egnn_com.synthetic {item}` or point --data_dir at your processed graphs."
            )
    if not files:
        raise DataError(
            f"no graph files (*.pt, *.npz) in {', '.join(map(str, items))}. Create one with "
            f"`python -m egnn_com.synthetic {items[0]}`."
        )
    return files


def load_dataset(
    paths: str | Path | list,
    *,
    strict: bool = False,
    require_target: bool = True,
    logger: logging.Logger | None = None,
    debug: bool = False,
) -> GraphDataset:
    """Load and validate every file; skip (or, if strict, refuse) invalid ones and report them.

    All graphs must share one node-feature size: the most common one wins, files with another size fail.
    """
    log = logger or logging.getLogger("trainyard")
    files = list_graph_files(paths)
    good: list[tuple[Path, Data]] = []
    failed: list[tuple[Path, str]] = []
    for path in files:
        try:
            good.append((path, validate_graph(read_raw(path), path, require_target=require_target)))
        except GraphFileError as exc:
            failed.append((path, str(exc).removeprefix(f"{path}: ")))
    if good:
        width = Counter(d.num_node_features for _, d in good).most_common(1)[0][0]
        for path, d in [g for g in good if g[1].num_node_features != width]:
            failed.append(
                (path, f"'x' has {d.num_node_features} features per node, the other files have {width}")
            )
        good = [g for g in good if g[1].num_node_features == width]
    if debug:
        bad_files = {p for p, _ in failed}
        for path in files:
            log.debug("load %s: %s", path.name, "FAILED" if path in bad_files else "ok")
    if failed:
        shown = "; ".join(f"{p.name}: {why}" for p, why in failed[:5])
        more = f" (and {len(failed) - 5} more)" if len(failed) > 5 else ""
        message = f"{len(failed)} of {len(files)} graph files are invalid: {shown}{more}"
        if strict or not good:
            raise DataError(message + ("" if good else ". No valid graph file is left to train on."))
        log.warning("%s. Skipping them (use data.strict=true to make this an error).", message)
    log.info("loaded %d of %d graph files from %s", len(good), len(files), paths)
    return GraphDataset([d for _, d in good], [p for p, _ in good], failed)


def dataset_stats(graphs: list[Data]) -> dict[str, float]:
    """Graph, node and edge counts and feature sizes, for the log and the trackers."""
    nodes = np.array([g.num_nodes for g in graphs])
    edges = np.array([g.num_edges for g in graphs])
    return {
        "num_graphs": len(graphs),
        "num_node_features": graphs[0].num_node_features,
        "total_nodes": int(nodes.sum()),
        "total_edges": int(edges.sum()),
        "mean_nodes": float(nodes.mean()),
        "min_nodes": int(nodes.min()),
        "max_nodes": int(nodes.max()),
        "mean_edges": float(edges.mean()),
        "mean_degree": float(edges.sum() / max(nodes.sum(), 1)),
    }


def from_pyg(data, *, cutoff: float | None = None, target: str | None = None) -> list[Data]:
    """PyTorch Geometric molecules (a `Data`, a list, an `InMemoryDataset` such as QM9) as validated graphs of
    this package (x, pos, edge_index, mass, y = centre of mass); see `egnn_com.pyg_input`. To train on them,
    write them as a graph folder with `egnn_com.prepare.prepare_pyg(data, out_dir)`."""
    from egnn_com.pyg_input import from_pyg as convert  # imports ASE only when used

    return convert(data, cutoff=cutoff, target=target)


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # workers only collate graphs; more threads would fight the training process


class ThreadPrefetchLoader(TorchDataLoader):
    """A main-process DataLoader whose batches are built `prefetch_batches` ahead in a background thread.

    For packed in-memory graphs a batch is a few index-selects (egnn_com.packed): building it costs less than
    handing it over from a worker process (every tensor of the Batch crosses through shared memory), and on a
    small CPU worker processes compete with training for the cores. A thread overlaps the same work with the
    step at no hand-over cost; torch's indexing kernels release the GIL. Same sampler, same batches.
    """

    def __init__(self, *args, prefetch_batches: int, **kw):
        super().__init__(*args, **kw)
        self.prefetch_batches = prefetch_batches

    def __iter__(self):
        return prefetch_in_thread(super().__iter__(), self.prefetch_batches, name="egnn_com-loader")


def make_loader(
    graphs: list[Data],
    *,
    batch_size: int,
    train: bool,
    seed: int,
    num_workers: int = 0,
    prefetch_factor: int = 4,
    device: torch.device | None = None,
    worker_type: str = "thread",
    max_batches: int | None = None,
    rank: int = 0,
    world_size: int = 1,
    edge_layout: bool = True,
) -> TorchDataLoader:
    """A DataLoader of PyG Batches whose `batch_sampler` is a `common.sampler.ResumableSampler`.

    Batch i of epoch e holds positions [i*B, (i+1)*B) of `epoch_permutation(n, seed, e)` (training: shuffled,
    the last partial batch dropped) or of 0..n-1 (validation: in order, the last partial batch kept). Call
    `loader.batch_sampler.set_epoch(epoch, start_batch)` before iterating; a resumed epoch starts at its saved
    batch. `max_batches` caps the batches per epoch (fast_dev_run).

    Data-parallel (`world_size` processes): `batch_size` is per process; global batch i is positions
    [i*W*B, (i+1)*W*B) and process `rank` takes its contiguous slice [(i*W + r)*B, (i*W + r + 1)*B), so the W
    processes together see exactly the graphs of a single process with batch size W*B. Validation pads its last
    global batch by wrapping around (every process gets whole batches); `CentreOfMassTask.validate` leaves the
    padding out of the metrics.

    `num_workers` > 0 loads in the background, `num_workers x prefetch_factor` batches ahead: in one thread
    (`worker_type="thread"`, packable graphs, see ThreadPrefetchLoader) or in that many persistent worker
    processes (`"process"`, or graphs PyG must collate generically).

    `edge_layout`: packed batches built in the loader thread or the main process carry the EGNN's edge
    structure, so its forward does not build it (`egnn_com.packed.attach_layout`); False for the gcn.
    """
    if batch_size < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}.")
    if train and len(graphs) < batch_size * world_size:
        processes = f" x {world_size} processes" if world_size > 1 else ""
        raise DataError(
            f"the training split has {len(graphs)} graphs, fewer than one batch of {batch_size}{processes} "
            f"(training drops the last partial batch). Use a smaller --batch_size or more data."
        )
    if worker_type not in ("thread", "process"):
        raise DataError(f"worker_type must be 'thread' or 'process', got {worker_type!r}.")
    sampler = ResumableSampler(
        len(graphs),
        batch_size,
        seed=seed,
        shuffle=train,
        drop_last=train,
        max_batches=max_batches,
        rank=rank,
        world_size=world_size,
    )
    workers = max(0, num_workers)
    packable = can_pack(graphs)
    in_thread = packable and worker_type == "thread" and workers > 0
    processes = 0 if in_thread else workers
    extra = (
        {"persistent_workers": True, "prefetch_factor": prefetch_factor, "worker_init_fn": _worker_init}
        if processes > 0
        else {}
    )
    # Its own generator: every iter() of a DataLoader draws a worker base seed from it, which must not come
    # from the global torch RNG (dropout draws from that, and a resumed run restores it mid-epoch).
    generator = torch.Generator().manual_seed(seed)
    settings = dict(
        batch_sampler=sampler,
        num_workers=processes,
        pin_memory=device is not None and device.type == "cuda",
        generator=generator,
        **extra,
    )
    if not packable:
        return DataLoader(graphs, **settings)  # graphs with other attributes: PyG's general collate
    # Same batches as PyG's loader (same sampler, same Batch contents), but collated from tensors packed
    # once up front instead of per-batch Batch.from_data_list; see egnn_com.packed.
    packed = PackedGraphs(graphs, edge_layout=edge_layout)
    if in_thread:
        return ThreadPrefetchLoader(
            packed, collate_fn=packed.collate, prefetch_batches=workers * prefetch_factor, **settings
        )
    return TorchDataLoader(packed, collate_fn=packed.collate, **settings)


def describe_loader(loader: TorchDataLoader) -> str:
    """One line of the loader settings for the debug log."""
    sampler = loader.batch_sampler
    workers = (
        f"background thread {loader.prefetch_batches} batches ahead"
        if isinstance(loader, ThreadPrefetchLoader)
        else f"num_workers={loader.num_workers} persistent_workers={loader.persistent_workers} "
        f"prefetch_factor={loader.prefetch_factor}"
    )
    return (
        f"batch_size={sampler.batch_size} {workers} pin_memory={loader.pin_memory} "
        f"drop_last={sampler.drop_last} batches={sampler.batches_per_epoch()}"
    )
