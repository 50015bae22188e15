"""PyTorch Geometric molecules (a `Data`, a list of them, or an `InMemoryDataset` such as QM9) as records.

Each `Data` needs `pos` [N, 3] and the atoms' elements: atomic numbers `z` [N], or, in the QM9 layout, node
features `x` whose first five columns are one-hot H, C, N, O, F. Optional: `mass` [N] (isotope masses; else
standard masses from `z`), a target attribute named by `target` holding the centre of mass [3] (else it is
computed from the masses, as for files: a PyG dataset's own `y`, e.g. QM9's 19 properties, is not a centre of
mass), and `edge_index` (kept unless a `cutoff` asks for radius edges). The group (molecule id) is the
`smiles` attribute, else `name`, else the formula.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import torch
from ase import Atoms
from torch_geometric.data import Data

from common.errors import DataError
from egnn_com.molecule_graph import MoleculeError, MoleculeRecord, molecule_graph

QM9_ONE_HOT = (1, 6, 7, 8, 9)  # QM9's x[:, :5]: H, C, N, O, F
SOURCE = "pyg dataset"


def _as_list(data) -> Iterable[Data]:
    if isinstance(data, Data):
        return [data]
    try:
        return iter(data)
    except TypeError:
        raise DataError(
            f"from_pyg takes a torch_geometric Data, a list of them or a dataset, got {type(data).__name__}."
        ) from None


def _atomic_numbers(data: Data, where: str) -> np.ndarray:
    if getattr(data, "z", None) is not None:
        return data.z.detach().cpu().numpy().astype(np.int64).reshape(-1)
    x = getattr(data, "x", None)
    if x is not None and x.dim() == 2 and x.shape[1] >= 5:
        one_hot = x[:, :5].detach().cpu()
        ok = ((one_hot == 0) | (one_hot == 1)).all(dim=1) & (one_hot.sum(dim=1) == 1)
        if ok.all():
            return np.array(QM9_ONE_HOT)[one_hot.argmax(dim=1).numpy()]
        raise MoleculeError(
            f"{where}: no atomic numbers `z`, and `x` is not in the QM9 layout (atom "
            f"{int((~ok).nonzero()[0]) + 1} has no single 1 in its first five columns, one-hot H, C, N, O, F)."
        )
    raise MoleculeError(f"{where}: needs atomic numbers `z` [N] (or QM9-layout one-hot `x`) besides `pos`.")


def pyg_records(data, *, target: str | None = None) -> Iterator[tuple[MoleculeRecord, Data]]:
    """(record, the original Data) per molecule, numbered from 1 in dataset order."""
    for index, item in enumerate(_as_list(data), start=1):
        where = f"{SOURCE}, record {index}"
        if not isinstance(item, Data):
            raise MoleculeError(f"{where}: expected a torch_geometric Data, got {type(item).__name__}.")
        if getattr(item, "pos", None) is None or item.pos.dim() != 2 or item.pos.shape[1] != 3:
            raise MoleculeError(f"{where}: needs positions `pos` of shape [N, 3].")
        numbers = _atomic_numbers(item, where)
        if len(numbers) != item.pos.shape[0]:
            raise MoleculeError(f"{where}: {len(numbers)} atomic numbers but {item.pos.shape[0]} positions.")
        atoms = Atoms(numbers=numbers, positions=item.pos.detach().cpu().double().numpy())
        if getattr(item, "mass", None) is not None:
            atoms.set_masses(item.mass.detach().cpu().double().numpy().reshape(-1))
        if target is not None and getattr(item, target, None) is None:
            raise MoleculeError(f"{where}: has no target attribute {target!r}.")
        name = str(getattr(item, "name", "") or "")
        group = str(getattr(item, "smiles", "") or "") or name or atoms.get_chemical_formula(mode="hill")
        yield MoleculeRecord(atoms, SOURCE, index, name, group), item


def pyg_graph(record: MoleculeRecord, item: Data, *, cutoff: float | None, target: str | None) -> dict:
    """The package's graph arrays for one PyG molecule (see egnn_com.molecule_graph)."""
    graph = molecule_graph(record, cutoff if cutoff is not None else 2.0)
    if cutoff is None and getattr(item, "edge_index", None) is not None:
        graph["edge_index"] = item.edge_index.detach().cpu().numpy().astype(np.int64)
    if target is not None:
        y = torch.as_tensor(getattr(item, target)).detach().cpu().float().reshape(-1)
        if y.numel() != 3 or not torch.isfinite(y).all():
            raise MoleculeError(
                f"{record.where()}: target {target!r} must hold 3 finite numbers, got {y.tolist()}."
            )
        graph["y"] = y.numpy()[None, :]
    return graph


def from_pyg(data, *, cutoff: float | None = None, target: str | None = None) -> list[Data]:
    """Graphs in the package's layout (x, pos, edge_index, mass, y), ready for `make_loader` or `predict`."""
    from egnn_com.data import validate_graph

    graphs = []
    for record, item in pyg_records(data, target=target):
        arrays = pyg_graph(record, item, cutoff=cutoff, target=target)
        # the same checks as a graph file (e.g. an edge index out of range in the dataset's own edges)
        graphs.append(validate_graph({k: torch.from_numpy(v) for k, v in arrays.items()}, record.where()))
    if not graphs:
        raise DataError("from_pyg: the PyG input holds no molecule.")
    return graphs
