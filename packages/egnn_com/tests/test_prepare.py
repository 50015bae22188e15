"""`egnn_com.prepare` on files written by RDKit and ASE: targets equal ASE's centre of mass, groups, isotopes,
validation messages that name the file and record, and PyTorch Geometric input (Data, list, InMemoryDataset)."""

import csv
import json

import ase.db
import ase.io
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule
from rdkit import Chem
from rdkit.Chem import AllChem
from torch_geometric.data import Data, InMemoryDataset

from common.cli import run_cli
from common.errors import DataError
from egnn_com import prepare as prepare_cli
from egnn_com.data import from_pyg, load_dataset
from egnn_com.molecule_graph import ELEMENTS
from egnn_com.prepare import prepare_files, prepare_pyg


def rows(folder):
    with (folder / "molecules.csv").open() as fh:
        return list(csv.DictReader(fh))


def ase_oracle(path):
    """Every molecule of a file as ASE reads it (a database: its rows)."""
    if path.suffix == ".db":
        return [row.toatoms() for row in ase.db.connect(path).select()]
    return ase.io.read(path, index=":")


def sdf_oracle(path):
    """SDF molecules as ASE atoms built from RDKit's atoms and coordinates (standard masses)."""
    mols = Chem.SDMolSupplier(str(path), removeHs=False)
    return [
        Atoms(numbers=[a.GetAtomicNum() for a in m.GetAtoms()], positions=m.GetConformer().GetPositions())
        for m in mols
    ]


def test_every_format_gives_ase_centre_of_mass_and_groups(tmp_path, molecule_files):
    out = prepare_files([molecule_files], tmp_path / "prepared")
    table = rows(out.out_dir)
    graphs = load_dataset(out.out_dir).graphs
    assert out.num_graphs == len(table) == len(graphs) == 12 + 1 + 4 + 3 + 3
    by_source = {}
    for row, graph in zip(table, graphs, strict=True):
        by_source.setdefault(row["source"], []).append((row, graph))
    for source, pairs in by_source.items():
        path = molecule_files / source
        oracle = sdf_oracle(path) if source.endswith(".sdf") else ase_oracle(path)
        assert len(oracle) == len(pairs), source
        for atoms, (row, graph) in zip(oracle, pairs, strict=True):
            np.testing.assert_allclose(graph.y[0].numpy(), atoms.get_center_of_mass(), atol=1e-5)
            np.testing.assert_allclose(graph.pos.numpy(), atoms.positions, atol=1e-5)
            np.testing.assert_allclose(graph.mass.numpy(), atoms.get_masses(), rtol=1e-6)
            # one-hot element columns; nothing here is outside the list
            symbols = [ELEMENTS[i] for i in graph.x.argmax(1).tolist()]
            assert symbols == atoms.get_chemical_symbols() and graph.x.shape[1] == len(ELEMENTS) + 1
            dist = np.linalg.norm(atoms.positions[:, None] - atoms.positions[None], axis=-1)
            expected = {(i, j) for i, j in zip(*np.nonzero((dist < 2.0) & (dist > 0)), strict=True)}
            assert set(map(tuple, graph.edge_index.t().tolist())) == expected
            assert int(row["num_atoms"]) == len(atoms)
    sdf = [r for r in table if r["source"] == "conformers.sdf"]
    assert [r["name"] for r in sdf[:3]] == ["ethanol"] * 3 and sdf[0]["record"] == "1"
    assert len({r["group"] for r in sdf}) == 4 and len({r["group"] for r in sdf[:3]}) == 1
    assert sdf[0]["group"] == Chem.MolToInchiKey(Chem.MolFromSmiles("CCO")).split("-")[0]
    db_rows = [r for r in table if r["source"] == "g2.db"]
    assert [r["group"] for r in db_rows] == ["HCOOH", "CH3OH", "C2H4"]  # the db's name key
    assert [r["group"] for r in table if r["source"] == "g2.traj"] == ["CH4", "C6H6", "C2H4O"]  # formulas
    info = json.loads((out.out_dir / "dataset_info.json").read_text())
    assert info["num_graphs"] == 23 and info["features"][-1] == "other"


def test_isotopes_keep_their_mass(tmp_path):
    mol = Chem.AddHs(Chem.MolFromSmiles("CO"))
    AllChem.EmbedMolecule(mol, randomSeed=1)
    heavy = Chem.Mol(mol)
    for atom in heavy.GetAtoms():
        if atom.GetSymbol() == "H":
            atom.SetIsotope(2)
    with Chem.SDWriter(str(tmp_path / "methanol.sdf")) as writer:
        writer.write(mol)
        writer.write(heavy)
    out = prepare_files([tmp_path / "methanol.sdf"], tmp_path / "prepared")
    light, deuterated = load_dataset(out.out_dir).graphs
    h = light.x[:, 0] == 1
    assert torch.allclose(deuterated.mass[h], torch.tensor(2.014), atol=1e-3)
    (atoms,) = sdf_oracle(tmp_path / "methanol.sdf")[1:]  # the file's coordinates (4 decimals)
    atoms.set_masses(deuterated.mass.double().numpy())
    np.testing.assert_allclose(deuterated.y[0].numpy(), atoms.get_center_of_mass(), atol=1e-5)
    assert not torch.allclose(deuterated.y, light.y, atol=1e-3)  # deuterium moved the centre


def _write_sdf(path, blocks):
    path.write_text("".join(block.rstrip("\n") + "\n$$$$\n" for block in blocks))


def _block(smiles, name, *, embed=True, hydrogens=True):
    mol = Chem.MolFromSmiles(smiles)
    mol = Chem.AddHs(mol) if hydrogens else mol
    if embed:
        AllChem.EmbedMolecule(mol, randomSeed=3)
    else:
        AllChem.Compute2DCoords(mol)
    mol.SetProp("_Name", name)
    return Chem.MolToMolBlock(mol)


@pytest.mark.parametrize(
    "case, needle",
    [
        ("2d", "molecules.sdf, record 2 (name 'flat'): the atoms have no 3D coordinates"),
        ("element", "molecules.sdf, record 2 (name 'broken'): RDKit cannot read it (Element 'Xx' not found"),
        ("implicit", "molecules.sdf, record 2 (name 'bare'): atom 1 (C) has 3 hydrogen(s)"),
        ("nan", "frames.xyz, record 2: atom 1 has NaN or infinite coordinates"),
        ("overlap", "frames.xyz, record 1: atoms 1 and 2 are 0.000 A apart"),
    ],
)
def test_bad_records_are_named_and_nothing_is_written(tmp_path, capsys, case, needle):
    good = _block("CCO", "ethanol")
    if case == "2d":
        _write_sdf(tmp_path / "molecules.sdf", [good, _block("CCO", "flat", embed=False)])
    elif case == "element":
        broken = _block("CCO", "broken").replace(" C   0", " Xx  0", 1)
        _write_sdf(tmp_path / "molecules.sdf", [good, broken])
    elif case == "implicit":
        _write_sdf(tmp_path / "molecules.sdf", [good, _block("CC", "bare", hydrogens=False)])
    else:
        water = molecule("H2O")
        bad = water.copy()
        if case == "nan":
            bad.positions[0] = np.nan
            ase.io.write(tmp_path / "frames.xyz", [water, bad])
        else:
            bad.positions[1] = bad.positions[0]
            ase.io.write(tmp_path / "frames.xyz", [bad, water])
    source = next(p for p in tmp_path.iterdir() if p.is_file())
    with pytest.raises(SystemExit) as exc:
        run_cli(prepare_cli.main, [str(source), "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and needle in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_skip_invalid_hydrogens_and_refused_output(tmp_path):
    _write_sdf(
        tmp_path / "m.sdf",
        [_block("CCO", "ethanol"), _block("CCO", "flat", embed=False), _block("CC", "bare", hydrogens=False)],
    )
    report = prepare_files([tmp_path / "m.sdf"], tmp_path / "a", skip_invalid=True)
    assert report.num_graphs == 1 and len(report.skipped) == 2  # went on after record 2
    assert "record 2 (name 'flat')" in report.skipped[0] and "record 3 (name 'bare')" in report.skipped[1]
    kept = prepare_files([tmp_path / "m.sdf"], tmp_path / "b", skip_invalid=True, implicit_hydrogens="ignore")
    assert rows(tmp_path / "b")[1]["name"] == "bare" and load_dataset(kept.out_dir).graphs[1].num_nodes == 2
    added = prepare_files([tmp_path / "m.sdf"], tmp_path / "c", skip_invalid=True, implicit_hydrogens="add")
    assert load_dataset(added.out_dir).graphs[1].num_nodes == 8  # ethane with its hydrogens placed by RDKit
    with pytest.raises(DataError, match="already exists and is not an empty folder"):
        prepare_files([tmp_path / "m.sdf"], tmp_path / "a")


class _Molecules(InMemoryDataset):
    def __init__(self, data_list):
        super().__init__(None)
        self.data, self.slices = self.collate(data_list)


def test_pyg_data_list_and_in_memory_dataset(tmp_path):
    water, methane = molecule("H2O"), molecule("CH4")
    methane.positions += 3.0
    qm9_x = torch.zeros(5, 11)  # QM9 layout: one-hot H, C, N, O, F first
    qm9_x[0, 1] = qm9_x[1:, 0] = 1

    def pos(atoms):
        return torch.tensor(atoms.positions, dtype=torch.float)

    mixed = [Data(pos=pos(water), z=torch.tensor(water.numbers)), Data(pos=pos(methane), x=qm9_x, smiles="C")]
    uniform = [
        Data(pos=pos(a), z=torch.tensor(a.numbers), smiles=s) for a, s in [(water, "O"), (methane, "C")]
    ]
    for data in (mixed[0], mixed, _Molecules(uniform)):
        graphs = from_pyg(data, cutoff=2.0)
        for graph, atoms in zip(graphs, [water, methane], strict=False):
            np.testing.assert_allclose(graph.y[0].numpy(), atoms.get_center_of_mass(), atol=1e-5)
            assert graph.x.shape == (len(atoms), len(ELEMENTS) + 1)
    report = prepare_pyg(mixed, tmp_path / "pyg", cutoff=2.0)
    assert report.num_graphs == 2 and [r["group"] for r in rows(tmp_path / "pyg")] == ["H2O", "C"]
    with pytest.raises(DataError, match="pyg dataset, record 1: needs atomic numbers"):
        from_pyg(Data(pos=torch.zeros(2, 3)))
