"""Shared fixtures: tiny synthetic datasets made in tmp_path (a few dozen graphs of a handful of atoms), and
a factory of training tasks on them."""

import numpy as np
import pytest
import torch

from common.config import load_config
from common.torch_support import parse_precision
from egnn_com.config import EgnnComConfig
from egnn_com.data import load_dataset, make_loader
from egnn_com.model import build_model
from egnn_com.synthetic import generate_dataset
from egnn_com.task import CentreOfMassTask, make_optimizer


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)  # the test machine is small and shared


@pytest.fixture
def tiny_data(tmp_path):
    """40 graphs of 6-12 atoms as .pt files."""
    return generate_dataset(tmp_path / "graphs", num_graphs=40, seed=3, min_nodes=6, max_nodes=12)


@pytest.fixture
def make_task(tiny_data):
    """make_task(*overrides) -> a CPU CentreOfMassTask training on all 40 tiny graphs (validating on 8),
    with weights initialised from torch seed 0."""
    graphs = load_dataset(tiny_data).graphs

    def make(*overrides: str) -> CentreOfMassTask:
        cfg = load_config(
            EgnnComConfig,
            overrides=["data.num_workers=0", "model.hidden_dim=16", "model.num_layers=2", *overrides],
        )
        device = torch.device("cpu")
        torch.manual_seed(0)
        model = build_model(cfg.model, graphs[0].num_node_features)
        kw = {"batch_size": cfg.data.batch_size, "seed": cfg.train.seed}
        return CentreOfMassTask(
            cfg,
            model=model,
            optimizer=make_optimizer(cfg, model),
            precision=parse_precision("32", device),
            device=device,
            train_loader=make_loader(graphs, train=True, **kw),
            val_loader=make_loader(graphs[:8], train=False, **kw),
            num_features=graphs[0].num_node_features,
        )

    return make


# Small molecules embedded by RDKit (several conformers each) and real geometries that ASE ships (the g2 set).
SMILES = {"ethanol": "CCO", "alanine": "CC(N)C(=O)O", "acetone": "CC(=O)C", "aminopropanol": "CC(O)CN"}
G2_NAMES = ["CH3CH2OH", "CH3COCH3", "H2O", "NH3", "CH4", "C6H6", "CH3CHO", "HCOOH", "CH3OH", "C2H4"]


def _moved(atoms, rng):
    """The molecule rigidly rotated and moved away from the origin, as molecules come in real files."""
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    atoms = atoms.copy()
    atoms.positions = atoms.positions @ q.T + rng.uniform(-6.0, 6.0, size=3)
    return atoms


@pytest.fixture(scope="session")
def molecule_files(tmp_path_factory):
    """Real-format molecule files written by RDKit and ASE themselves:
    conformers.sdf (4 molecules x 3 conformers, RDKit), water.xyz, g2.extxyz, g2.traj, g2.db (ASE's g2)."""
    import ase.db
    import ase.io
    from ase.build import molecule
    from rdkit import Chem
    from rdkit.Chem import AllChem, rdMolTransforms

    out = tmp_path_factory.mktemp("molecules")
    rng = np.random.default_rng(0)
    writer = Chem.SDWriter(str(out / "conformers.sdf"))
    for name, smiles in SMILES.items():
        mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
        mol.SetProp("_Name", name)
        for conf in AllChem.EmbedMultipleConfs(mol, 3, randomSeed=7):
            motion = np.eye(4)
            motion[:3, :3] = np.linalg.qr(rng.normal(size=(3, 3)))[0]
            motion[:3, 3] = rng.uniform(-6.0, 6.0, size=3)
            rdMolTransforms.TransformConformer(mol.GetConformer(conf), motion)
            writer.write(mol, confId=conf)
    writer.close()
    g2 = [_moved(molecule(name), rng) for name in G2_NAMES]
    ase.io.write(out / "water.xyz", _moved(molecule("H2O"), rng))
    ase.io.write(out / "g2.extxyz", g2[:4])
    ase.io.write(out / "g2.traj", g2[4:7])
    with ase.db.connect(out / "g2.db") as db:
        for name, atoms in zip(G2_NAMES[7:], g2[7:], strict=True):
            db.write(atoms, name=name)
    return out
