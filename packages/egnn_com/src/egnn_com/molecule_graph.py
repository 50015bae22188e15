"""One molecule (an `ase.Atoms` with its masses) -> the package's graph arrays, after checking its geometry.

Every importer (files through `egnn_com.readers`, PyG data through `egnn_com.pyg_input`) ends here, so a
molecule from an SDF, an XYZ frame, an ASE database row or a PyG `Data` becomes the same graph:
    x [N, len(ELEMENTS) + 1] one-hot element (last column: any other element), pos [N, 3] Angstrom,
    edge_index [2, E] atoms closer than the cutoff (both directions), mass [N] (isotopes kept), z [N] atomic
    numbers, y [1, 3] = `ase.Atoms.get_center_of_mass()`: the true centre of mass from the atomic masses.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers

from common.errors import DataError
from egnn_com.synthetic import radius_edges

# The elements of organic and drug-like molecules get a one-hot column each; anything else shares the last
# column (the model still tells those atoms apart by their mass, which it reads as a node feature).
ELEMENTS = ("H", "C", "N", "O", "F", "P", "S", "Cl", "Br", "I")
DEFAULT_CUTOFF = 2.0  # Angstrom, the synthetic generator's edge radius: covalent bonds up to C-Br
MIN_SEPARATION = 0.1  # Angstrom: atoms closer than this are a duplicated atom or broken coordinates


class MoleculeError(DataError):
    """A molecule record that cannot become a graph; the message names the file and the record."""


@dataclass
class MoleculeRecord:
    """One molecule read from a file (or a PyG dataset) and where it came from, for messages and the index."""

    atoms: Atoms  # numbers, positions and masses (isotope masses already set)
    source: str  # file name (or "pyg dataset")
    record: int  # 1-based record number in its source (an ASE database: the row id)
    name: str = ""  # title, db name, or "" when the file gives none
    group: str = ""  # molecule id shared by all conformers of one molecule (see egnn_com.readers)

    def where(self) -> str:
        """'molecules.sdf, record 17 (name 'aspirin')' for error messages."""
        label = "row id" if self.source.endswith(".db") else "record"
        return f"{self.source}, {label} {self.record}" + (f" (name {self.name!r})" if self.name else "")


def element_features(numbers: np.ndarray) -> np.ndarray:
    """One-hot element rows [N, len(ELEMENTS) + 1] for atomic numbers [N]."""
    column_of = {atomic_numbers[symbol]: i for i, symbol in enumerate(ELEMENTS)}
    columns = np.array([column_of.get(int(z), len(ELEMENTS)) for z in numbers], dtype=np.int64)
    return np.eye(len(ELEMENTS) + 1, dtype=np.float32)[columns]


def check_molecule(record: MoleculeRecord) -> None:
    """MoleculeError naming the record when its atoms cannot give a meaningful centre of mass."""
    atoms = record.atoms
    where = record.where()
    if len(atoms) == 0:
        raise MoleculeError(f"{where}: the molecule has no atoms.")
    numbers, pos, masses = atoms.numbers, atoms.positions, atoms.get_masses()
    if (numbers < 1).any():
        k = int(np.flatnonzero(numbers < 1)[0])
        raise MoleculeError(
            f"{where}: atom {k + 1} is not a chemical element (atomic number {int(numbers[k])}: a dummy or "
            f"attachment point); remove it before preparing the data."
        )
    bad = ~np.isfinite(pos).all(axis=1)
    if bad.any():
        raise MoleculeError(
            f"{where}: atom {int(np.flatnonzero(bad)[0]) + 1} has NaN or infinite coordinates."
        )
    bad = ~(np.isfinite(masses) & (masses > 0))
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise MoleculeError(
            f"{where}: atom {k + 1} ({atoms[k].symbol}) has mass {masses[k]}; masses must be > 0."
        )
    if len(atoms) > 1:
        dist = np.linalg.norm(pos[:, None, :] - pos[None, :, :], axis=-1) + np.eye(len(atoms)) * 1e9
        i, j = np.unravel_index(np.argmin(dist), dist.shape)
        if dist[i, j] < MIN_SEPARATION:
            raise MoleculeError(
                f"{where}: atoms {min(i, j) + 1} and {max(i, j) + 1} are {dist[i, j]:.3f} A apart (a duplicated "
                f"atom, or coordinates that are not a 3D geometry)."
            )


def molecule_graph(record: MoleculeRecord, cutoff: float = DEFAULT_CUTOFF) -> dict[str, np.ndarray]:
    """The graph arrays of a checked molecule (see the module docstring for the keys)."""
    check_molecule(record)
    atoms = record.atoms
    pos = atoms.positions.astype(np.float64)
    return {
        "x": element_features(atoms.numbers),
        "pos": pos.astype(np.float32),
        "edge_index": radius_edges(pos, cutoff),
        "mass": atoms.get_masses().astype(np.float32),
        "z": atoms.numbers.astype(np.int64),
        "y": atoms.get_center_of_mass()[None, :].astype(np.float32),  # [1, 3] the oracle itself
    }
