"""Graphs packed once into concatenated tensors (CSR style), so a batch is a few index-select calls.

PyG's `Batch.from_data_list` walks every `Data` object and every attribute on every batch (about 2 ms for 16
small graphs on a 2-core CPU, as long as a whole gcn step there). The same result (node tensors concatenated,
edge indices shifted by each graph's node offset, `batch`/`ptr` vectors, `y` stacked) is here computed from
per-graph offsets that are prepared once: one gather per tensor, vectorised over the batch.
`PackedGraphs.collate(indices)` equals `Batch.from_data_list([graphs[i] for i in indices])` exactly (tested),
including the slice/increment bookkeeping that `Batch.get_example`/`to_data_list` use.

The batch also carries the EGNN's edge structure (`egnn_com.edges.EdgeLayout`: the edges sorted by target,
1 / in-degree, the sparse incidence matrices), which depends on nothing but the batch's edges, so a loader
thread builds it ahead of the step instead of the model at the start of every forward (`prebuilt_layout`).
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset, get_worker_info
from torch_geometric.data import Batch, Data

from egnn_com.edges import EdgeLayout

NODE_KEYS = ("x", "pos", "mass")  # concatenated along dim 0, one row per node
PACKABLE = {"x", "pos", "edge_index", "mass", "y"}


def can_pack(graphs: list[Data]) -> bool:
    """True when every graph holds exactly the attributes `validate_graph` produces (y on all or none)."""
    if not graphs:
        return False
    keys = set(graphs[0].keys())
    return (
        {"x", "pos", "edge_index", "mass"} <= keys <= PACKABLE
        and all(set(g.keys()) == keys for g in graphs)
        and ("y" not in keys or all(g.y.shape == (1, 3) for g in graphs))
    )


def _segments(ptr: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For graphs `idx` of a CSR layout `ptr`: (rows to gather [R], sizes [B], owning position in batch [R])."""
    sizes = ptr[idx + 1] - ptr[idx]  # [B]
    owner = torch.repeat_interleave(torch.arange(len(idx)), sizes)  # [R] which batch slot each row belongs to
    starts = torch.cumsum(sizes, 0) - sizes  # [B] where each graph begins inside the batch
    rows = ptr[idx][owner] + torch.arange(int(sizes.sum())) - starts[owner]  # [R] rows in the packed tensor
    return rows, sizes, owner


class PackedGraphs(Dataset):
    """A dataset of graph indices; `collate` turns a list of indices into the PyG `Batch` of those graphs.

    `edge_layout`: the batches carry the EGNN's edge structure (`attach_layout`); off for a model that reads
    none (the gcn), which would pay some 0.9 ms per small batch for nothing."""

    def __init__(self, graphs: list[Data], *, edge_layout: bool = True):
        if not can_pack(graphs):
            raise ValueError("graphs must all hold x, pos, edge_index, mass (and y [1, 3] on all or none)")
        self.has_y = "y" in graphs[0]
        self.edge_layout = edge_layout
        self.nodes = {k: torch.cat([g[k] for g in graphs]) for k in NODE_KEYS}  # [N_total, ...]
        self.edge_index = torch.cat(
            [g.edge_index for g in graphs], dim=1
        )  # [2, E_total], graph-local indices
        self.y = torch.cat([g.y for g in graphs]) if self.has_y else None  # [G, 3]
        zero = torch.zeros(1, dtype=torch.long)
        self.node_ptr = torch.cat([zero, torch.tensor([g.num_nodes for g in graphs]).cumsum(0)])  # [G + 1]
        self.edge_ptr = torch.cat([zero, torch.tensor([g.num_edges for g in graphs]).cumsum(0)])  # [G + 1]

    def __len__(self) -> int:
        return len(self.node_ptr) - 1

    def __getitem__(self, i: int) -> int:
        return i  # the DataLoader hands lists of these to `collate`

    def collate(self, indices: list[int]) -> Batch:
        idx = torch.as_tensor(indices, dtype=torch.long)  # [B]
        b = len(indices)
        node_rows, n_sizes, batch_vec = _segments(self.node_ptr, idx)  # [N], [B], [N]
        edge_rows, e_sizes, edge_owner = _segments(self.edge_ptr, idx)  # [E], [B], [E]
        ptr = torch.cat([torch.zeros(1, dtype=torch.long), n_sizes.cumsum(0)])  # [B + 1] node offsets
        eptr = torch.cat([torch.zeros(1, dtype=torch.long), e_sizes.cumsum(0)])  # [B + 1]
        # local node ids + the graph's node offset in the batch (what PyG's collate adds via __inc__)
        edge_index = self.edge_index[:, edge_rows] + ptr[:-1][edge_owner]  # [2, E]
        attrs = {k: v[node_rows] for k, v in self.nodes.items()}
        attrs["edge_index"] = edge_index
        if self.has_y:
            attrs["y"] = self.y[idx]  # [B, 3]
        batch = Batch(batch=batch_vec, ptr=ptr, **attrs)
        zeros = torch.zeros(b, dtype=torch.long)
        batch._num_graphs = b
        batch._slice_dict = {k: ptr for k in NODE_KEYS}
        batch._slice_dict["edge_index"] = eptr
        batch._inc_dict = {k: zeros for k in NODE_KEYS}
        batch._inc_dict["edge_index"] = ptr[:-1]
        if self.has_y:
            batch._slice_dict["y"] = torch.arange(b + 1)
            batch._inc_dict["y"] = zeros
        if self.edge_layout and get_worker_info() is None:  # a loader thread or the main process
            attach_layout(batch)
        return batch


def attach_layout(batch: Batch) -> None:
    """Build the one-node EGNN layer's edge structure with the batch and keep it there beside the edges it was
    built from; `prebuilt_layout` hands it to the model.

    A name with a leading underscore lives beside PyG's `_slice_dict`, outside the batch's keys: PyG neither
    collates, slices (`to_data_list`) nor moves (`Batch.to`) it, and the keys stay those of PyG's collate.
    Not in worker processes (`collate` skips it there): torch's multiprocessing can rebuild sparse CSR
    tensors, but the layout's 11 tensors would each cross through shared memory, and handing a tensor over
    costs more than building it (see `egnn_com.data`)."""
    batch._edge_layout = (batch.edge_index, EdgeLayout.of(batch.edge_index, batch.x.shape[0], fused=True))


def prebuilt_layout(batch, num_nodes: int) -> EdgeLayout | None:
    """The layout `attach_layout` built with `batch`, if it still describes the batch's edges: the same
    `edge_index` tensor (moving the batch to another device or replacing its edges gives a new one) and
    `num_nodes` nodes; None otherwise (a batch from PyG's collate or a worker process, a `Data`)."""
    built = getattr(batch, "_edge_layout", None)
    if built is None:
        return None
    edge_index, layout = built
    same = edge_index is batch.edge_index and layout.inv_degree.shape[0] == num_nodes
    return layout if same else None
