"""Molecule files -> `MoleculeRecord`s, each with its name and molecule id (group), read by ASE or RDKit.

- SDF / MOL (`.sdf`, `.sd`, `.mol`): RDKit `Chem.SDMolSupplier(removeHs=False)`, one record per conformer;
  isotope labels (e.g. deuterium written as [2H]) keep their isotope mass.
- ASE databases (`.db`): `ase.db.connect(path).select()`, one record per row (its id in messages).
- XYZ / extended XYZ, ASE trajectories (`.traj`) and any other format `ase.io` reads (PDB, CIF, ...):
  `ase.io.iread(path, index=":")`, one record per frame; masses stored in the file (extXYZ `masses`
  column, `.traj`, `.db`) are kept.

Group (molecule id) choices, so that `split_by=molecule` keeps the conformers of one molecule together:
    auto      SDF/MOL: `skeleton`; ASE: `name` when the frame or row has one, else `formula`
    name      the record's title (SDF `_Name`, extXYZ / db key `name`)
    inchikey  the full InChIKey (stereo and isotopes included; SDF/MOL only)
    skeleton  the InChIKey's first block: connectivity only (SDF/MOL only)
    smiles    RDKit canonical isomeric SMILES without hydrogens (SDF/MOL only)
    formula   the Hill formula (conformers and isomers of one formula together)
    file      the file name (one group per file)
    record    every record on its own (no grouping)
`skeleton` is the default for RDKit because a 3D conformer of a molecule with an unassigned stereocentre can
come out as either enantiomer: their full InChIKeys differ, and grouping by them would put conformers of one
molecule on both sides of a split.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from ase import Atoms

from common.errors import DataError
from egnn_com.molecule_graph import MoleculeError, MoleculeRecord

RDKIT_SUFFIXES = (".sdf", ".sd", ".mol")
ASE_DB_SUFFIXES = (".db",)
GROUP_CHOICES = ("auto", "name", "inchikey", "skeleton", "smiles", "formula", "file", "record")
IMPLICIT_H_CHOICES = ("error", "add", "ignore")
_RDKIT_ONLY = ("inchikey", "skeleton", "smiles")


def read_records(
    path: str | Path,
    *,
    group_by: str = "auto",
    implicit_hydrogens: str = "error",
    invalid: list[str] | None = None,
) -> Iterator[MoleculeRecord]:
    """The molecules of one file, in file order; MoleculeError names the file and record at fault.

    With an `invalid` list, a bad record's message is appended to it and reading goes on with the next record
    (an SDF record, an ASE database row; a damaged XYZ or trajectory ends at the damage, since its reader
    cannot find the next frame).

    `implicit_hydrogens` (SDF/MOL): an atom with hydrogens the file does not list as atoms has no complete
    mass or geometry, so by default that is an error; "add" places them with RDKit (`Chem.AddHs(addCoords=
    True)`), "ignore" keeps the listed atoms only.
    """
    path = Path(path)
    if group_by not in GROUP_CHOICES:
        raise DataError(f"group_by must be one of {', '.join(GROUP_CHOICES)}, got {group_by!r}.")
    if implicit_hydrogens not in IMPLICIT_H_CHOICES:
        raise DataError(
            f"implicit_hydrogens must be one of {', '.join(IMPLICIT_H_CHOICES)}, got {implicit_hydrogens!r}."
        )
    if not path.is_file():
        raise DataError(f"{path}: no such file.")
    suffix = path.suffix.lower()
    if suffix in RDKIT_SUFFIXES:
        yield from _rdkit_records(path, group_by, implicit_hydrogens, invalid)
        return
    if group_by in _RDKIT_ONLY:
        raise DataError(
            f"{path.name}: group_by={group_by} needs the bonds of an SDF/MOL file (RDKit); for {suffix or 'this'} "
            f"files group by name, formula, file or record."
        )
    if suffix in ASE_DB_SUFFIXES:
        yield from _ase_db_records(path, group_by, invalid)
    else:
        yield from _ase_frames(path, group_by, invalid)


def _ase_group(atoms: Atoms, name: str, source: str, record: int, group_by: str) -> str:
    if group_by == "auto":
        return name or atoms.get_chemical_formula(mode="hill")
    if group_by == "name":
        return name
    if group_by == "formula":
        return atoms.get_chemical_formula(mode="hill")
    if group_by == "file":
        return source
    return f"{source}#{record}"  # record


def _ase_frames(path: Path, group_by: str, invalid: list[str] | None) -> Iterator[MoleculeRecord]:
    import ase.io

    frames = ase.io.iread(str(path), index=":")
    record = 0
    while True:
        try:
            atoms = next(frames)
        except StopIteration:
            break
        except Exception as exc:  # ASE's readers raise many types (ValueError, KeyError, ...) on bad text
            error = MoleculeError(
                f"{path.name}, record {record + 1}: ase.io cannot read it ({type(exc).__name__}: "
                f"{_first_line(exc)}) after {record} good record(s)."
            )
            _report(error, invalid)
            return
        record += 1
        name = str(atoms.info.get("name", "")).strip()
        group = _ase_group(atoms, name, path.name, record, group_by)
        try:
            yield _named(MoleculeRecord(atoms, path.name, record, name, group), group_by)
        except MoleculeError as error:
            _report(error, invalid)
    if record == 0:
        raise MoleculeError(f"{path.name}: ase.io found no molecule in it.")


def _ase_db_records(path: Path, group_by: str, invalid: list[str] | None) -> Iterator[MoleculeRecord]:
    import ase.db

    try:
        rows = list(ase.db.connect(str(path)).select())
    except Exception as exc:  # sqlite and JSON back ends raise their own types for a damaged file
        raise MoleculeError(
            f"{path.name}: ase.db cannot read it ({type(exc).__name__}: {_first_line(exc)})."
        ) from exc
    if not rows:
        raise MoleculeError(f"{path.name}: the ASE database has no rows.")
    for row in rows:
        atoms = row.toatoms()
        name = str(row.key_value_pairs.get("name", "")).strip()
        group = _ase_group(atoms, name, path.name, row.id, group_by)
        try:
            yield _named(MoleculeRecord(atoms, path.name, row.id, name, group), group_by)
        except MoleculeError as error:
            _report(error, invalid)


def _rdkit_records(
    path: Path, group_by: str, implicit_hydrogens: str, invalid: list[str] | None
) -> Iterator[MoleculeRecord]:
    from rdkit import Chem

    supplier = Chem.SDMolSupplier(str(path), removeHs=False)
    if len(supplier) == 0:
        raise MoleculeError(f"{path.name}: RDKit found no molecule record in it.")
    for index in range(len(supplier)):
        try:
            record = _rdkit_record(supplier, index, path, group_by, implicit_hydrogens)
        except MoleculeError as error:
            _report(error, invalid)
            continue
        yield record


def _rdkit_record(supplier, index: int, path: Path, group_by: str, implicit_hydrogens: str) -> MoleculeRecord:
    from rdkit import rdBase

    with rdBase.CaptureErrorLog() as capture:
        mol = supplier[index]
    record = MoleculeRecord(Atoms(), path.name, index + 1)
    if mol is None:
        record.name = supplier.GetItemText(index).split("\n", 1)[0].strip()  # the title line, read as text
        raise MoleculeError(f"{record.where()}: RDKit cannot read it ({_rdkit_reason(capture.messages)}).")
    record.name = mol.GetProp("_Name").strip() if mol.HasProp("_Name") else ""
    mol = _complete_hydrogens(mol, record, implicit_hydrogens)
    if mol.GetNumConformers() == 0 or not mol.GetConformer().Is3D():
        raise MoleculeError(
            f"{record.where()}: the atoms have no 3D coordinates (the record is a 2D drawing: its header "
            f"says 2D or every z is 0); embed a 3D conformer first, e.g. with RDKit's "
            f"AllChem.EmbedMolecule."
        )
    record.atoms = _rdkit_atoms(mol)
    record.group = _rdkit_group(mol, record, group_by)
    return _named(record, group_by)


def _complete_hydrogens(mol, record: MoleculeRecord, implicit_hydrogens: str):
    from rdkit import Chem

    missing = [
        (a.GetIdx(), a.GetSymbol(), a.GetNumImplicitHs()) for a in mol.GetAtoms() if a.GetNumImplicitHs()
    ]
    if not missing or implicit_hydrogens == "ignore":
        return mol
    if implicit_hydrogens == "add":
        return Chem.AddHs(mol, addCoords=True)
    idx, symbol, count = missing[0]
    raise MoleculeError(
        f"{record.where()}: atom {idx + 1} ({symbol}) has {count} hydrogen(s) that are not atoms of the record, "
        f"so they have no coordinates and the centre of mass would miss them ({len(missing)} atom(s) like "
        f"this). Use --implicit_hydrogens add to place them with RDKit, or ignore to keep the listed atoms only."
    )


def _rdkit_atoms(mol) -> Atoms:
    """ASE atoms of an RDKit molecule: standard masses, except isotope-labelled atoms keep RDKit's isotope mass."""
    numbers = [a.GetAtomicNum() for a in mol.GetAtoms()]
    atoms = Atoms(numbers=numbers, positions=np.asarray(mol.GetConformer().GetPositions(), dtype=np.float64))
    masses = atoms.get_masses()
    for atom in mol.GetAtoms():
        if atom.GetIsotope():
            masses[atom.GetIdx()] = atom.GetMass()
    atoms.set_masses(masses)
    return atoms


def _rdkit_group(mol, record: MoleculeRecord, group_by: str) -> str:
    from rdkit import Chem

    if group_by in ("auto", "skeleton", "inchikey"):
        key = Chem.MolToInchiKey(mol)
        if key:
            return key if group_by == "inchikey" else key.split("-")[0]
        if group_by != "auto":
            raise MoleculeError(
                f"{record.where()}: RDKit could not compute its InChIKey; use --group_by smiles."
            )
    if group_by in ("auto", "smiles"):
        return Chem.MolToSmiles(Chem.RemoveHs(mol, sanitize=False))
    if group_by == "name":
        return record.name
    if group_by == "formula":
        return record.atoms.get_chemical_formula(mode="hill")
    if group_by == "file":
        return record.source
    return f"{record.source}#{record.record}"  # record


def _named(record: MoleculeRecord, group_by: str) -> MoleculeRecord:
    if not record.group:
        raise MoleculeError(
            f"{record.where()}: it has no {group_by} to group it by (the record has no title); use "
            f"--group_by formula, file or record."
        )
    return record


def _report(error: MoleculeError, invalid: list[str] | None) -> None:
    """Raise the error, or, when invalid records are being collected, note it and go on."""
    if invalid is None:
        raise error
    invalid.append(str(error))


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else "no message"


_RDKIT_NOISE = re.compile(
    r"^(\*+|-+|Violation occurred.*|Failed Expression.*|.*Violation|moving to the beginning of the next molecule)$"
)


def _rdkit_reason(messages: str) -> str:
    """RDKit's log lines for one record, without timestamps, C++ assertion boilerplate and stack traces."""
    kept = []
    for line in messages.splitlines():
        line = re.sub(r"^\[\d\d:\d\d:\d\d\]\s*", "", line).strip().removeprefix("ERROR: ").strip()
        if line.startswith("Stacktrace") or re.match(r"^\d+# ", line):
            continue
        if line and not _RDKIT_NOISE.match(line):
            kept.append(line)
    return "; ".join(dict.fromkeys(kept)) or "no reason given"
