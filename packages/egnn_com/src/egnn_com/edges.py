"""A batch's edge structure for the EGNN layers, built once per batch (by the packed loader, or else at the
start of the forward) and shared by every layer.

None of it is learned: the edges reordered by target, 1 / in-degree for the means, and for the one-node
float32 layer (`egnn_com.fused_layer`) the rows `embedding_bag` sums into each edge's first pre-activation
and the sparse incidence matrices that sum edge rows into nodes.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor


class EdgeLayout(NamedTuple):
    """The edges j -> i of a batch, sorted by target i, and what the layers read of them."""

    src: Tensor  # [E] source node j of each edge
    dst: Tensor  # [E] target node i, in ascending order
    inv_degree: Tensor  # [N, 1] 1 / in-degree, 1 where a node has no incoming edge (its sum is 0 then)
    # The rest is the one-node layer's only (None for the autograd path, which builds its bags per layer,
    # and whose torch.compile does not trace sparse tensors):
    bag_rows: Tensor | None  # [E, 3] see `bag_rows`
    # [E + 1] where each edge's bag starts in bag_rows flattened: 0, 3, 6, ..., 3E
    bag_offsets: Tensor | None
    into_dst: Tensor | None  # [N, E] sparse CSR: (into_dst @ x)_i sums x over the edges into node i
    # [2N, E] sparse CSR: row 2i sums over the edges into node i, row 2i + 1 over those out of it, so one
    # product gives [N, 2H] viewed as each node's (target-side, source-side) sums side by side
    into_both: Tensor | None

    @classmethod
    def of(cls, edge_index: Tensor, num_nodes: int, fused: bool) -> EdgeLayout:
        """The layout of `edge_index` [2, E] (any order) over `num_nodes` nodes; `fused`: for the one-node
        layer, which reads the bags and the sparse incidence matrices."""
        if not fused:
            src, dst = edges_by_target(edge_index)
            return cls(src, dst, inverse_in_degree(dst, num_nodes), None, None, None, None)
        src, dst = edge_index.index_select(1, stable_order(edge_index[1], num_nodes))
        in_degree = torch.bincount(dst, minlength=num_nodes)  # [N]; the edges are sorted by target:
        ends = in_degree.cumsum(0)  # node i's edges are edges[ends[i - 1]:ends[i]], in their own order
        inv_degree = (1.0 / in_degree.clamp(min=1).to(torch.float32)).unsqueeze(-1)
        into_dst = _csr(ends, torch.arange(dst.shape[0], device=dst.device), dst.shape[0])
        rows = bag_rows(dst, src, num_nodes)
        offsets = torch.arange(0, 3 * dst.shape[0] + 1, 3, device=dst.device)
        into_both = _into_both(rows[:, 0], rows[:, 1], num_nodes)
        return cls(src, dst, inv_degree, rows, offsets, into_dst, into_both)


def sum_into_rows(incidence: Tensor, values: Tensor) -> Tensor:
    """incidence @ values for a 0/1 CSR incidence matrix [R, E] (`EdgeLayout.into_dst`, `into_both`) and
    values [E, C]: row r sums the values of its edges, in their order in the row.

    On CPU as an `embedding_bag` sum whose bags are the CSR's rows (offsets = its row pointers, indices = its
    column indices): the same sums in the same order as the sparse product, which zero-fills its output
    first and reads the rows more slowly (23 against 43 us for a small batch's [4000, 64] into 620 nodes).
    Other devices take the sparse product (torch.sparse.mm rather than @: the FLOP counter would count @ as
    a dense [R, E] product).
    """
    if values.device.type == "cpu" and values.shape[0] > 0:
        return bag_sums(values, incidence.col_indices(), incidence.crow_indices())
    return torch.sparse.mm(incidence, values)


def bag_sums(table: Tensor, rows: Tensor, offsets: Tensor, weights: Tensor | None = None) -> Tensor:
    """[B, C]: bag b sums (weighted by `weights`, else 1) the `table` rows rows[offsets[b]:offsets[b + 1]];
    `offsets` [B + 1] ends with the number of rows.

    torch's `embedding_bag` kernel called straight: `nn.functional.embedding_bag`'s argument checks and
    reshapes cost about 20 us a call, and the one-node layer sums bags three times per layer and step."""
    return torch.embedding_bag(table, rows, offsets, False, 0, False, weights, True, None)[0]


def edges_by_target(edge_index: Tensor) -> Tensor:
    """The edges reordered by target node [2, E]: the layer's function does not depend on edge order.

    Each layer sums [E, hidden] tensors by target twice (the messages forward, the target-side gather's
    gradient backward) and by source once; sums into rows in order write memory in order and run about
    twice as fast as into scattered rows, and PyG batches come sorted by source instead.
    """
    # always sorted, never tested first: a test would be a data-dependent branch (a sync on a GPU, a graph
    # break under torch.compile), and a stable sort of E indices costs little beside one layer
    return edge_index.index_select(1, torch.sort(edge_index[1], stable=True).indices)


def inverse_in_degree(dst: Tensor, num_nodes: int) -> Tensor:
    """1 / (edges into each node) [N, 1], 1 for a node without edges (its sum, so its mean, is 0)."""
    # index_add_, not bincount: bincount's output size depends on the data, which torch.compile cannot trace
    degree = torch.zeros(num_nodes, device=dst.device)  # float32
    degree.index_add_(0, dst, torch.ones_like(dst, dtype=degree.dtype))
    return (1.0 / degree.clamp(min=1.0)).unsqueeze(-1)


def bag_rows(dst: Tensor, src: Tensor, num_nodes: int) -> Tensor:
    """[E, 3]: each edge's rows (2 target, 2 source + 1, 2N) in the table [a_0; b_0; a_1; b_1; ...; w_d]
    (a = W_i h + b, b = W_j h), the bag `embedding_bag` sums into the edge's first pre-activation.

    Interleaved so that the one-node layer writes both node terms with one product, h @ [W_i; W_j]^T
    [N, 2H], straight into the table viewed as [N, 2H]."""
    return torch.stack([2 * dst, 2 * src + 1, torch.full_like(dst, 2 * num_nodes)], dim=1)


def stable_order(keys: Tensor, bound: int) -> Tensor:
    """The permutation [K] (int64) that sorts `keys` (integers in [0, bound)) stably.

    On CPU with keys below 2^15, NumPy's stable argsort of int16 keys, which is a radix sort: about 6 times
    faster than torch's comparison sort on a small batch's 4,000 edges (0.06 against 0.4 ms), and the
    one-node layer's structure sorts twice per batch."""
    if keys.device.type == "cpu" and bound <= np.iinfo(np.int16).max:
        return torch.from_numpy(np.argsort(keys.numpy().astype(np.int16), kind="stable"))
    return torch.sort(keys, stable=True).indices


def _into_both(dst_rows: Tensor, src_rows: Tensor, num_nodes: int) -> Tensor:
    """The [2N, E] incidence of `EdgeLayout.into_both` from its rows 2 dst_e and 2 src_e + 1 (`bag_rows`):
    entries (2 dst_e, e) and (2 src_e + 1, e)."""
    num_edges = dst_rows.shape[0]
    rows = torch.cat([dst_rows, src_rows])  # [2E]: entry k is edge k mod E
    order = stable_order(rows, 2 * num_nodes)
    ends = torch.bincount(rows, minlength=2 * num_nodes).cumsum(0)
    return _csr(ends, order % max(num_edges, 1), num_edges)


def _csr(row_ends: Tensor, columns: Tensor, num_columns: int) -> Tensor:
    """A 0/1 CSR matrix [rows, num_columns] from each row's end in `columns` (cumulative counts).

    Why not `index_add_`: on CPU it expands the index to the source's [E, H] shape (int64, twice the data)
    and scatters; a CSR product reads the [E, H] rows once and runs about twice as fast (the same sums, in
    the same order). int32 indices: the CPU product converts int64 ones on every call (half its time on
    small batches)."""
    index = torch.int32 if columns.shape[0] < 2**31 else torch.int64
    crow = torch.cat([row_ends.new_zeros(1), row_ends]).to(index)
    values = torch.ones(columns.shape[0], device=columns.device)
    with warnings.catch_warnings():  # "sparse CSR support is in beta": the product used here is long stable
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, columns.to(index), values, (row_ends.shape[0], num_columns))
