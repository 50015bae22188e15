"""End to end on files RDKit and ASE wrote: prepare -> a short egnn run split by molecule -> prediction.

Checks content: predicted centres against the mass-weighted truth (and the unweighted centroid baseline),
deuterium moving the prediction as it moves the true centre, and the best checkpoint found through the
manifest (no file-name parsing), weights-only, loadable by evaluate and predict.
"""

import csv
import io
import json

import numpy as np
import pytest
import torch

from common.checkpoint import load_checkpoint
from common.cli import run_cli
from common.config import load_config
from common.errors import ConfigError
from egnn_com import predict as predict_cli
from egnn_com import prepare as prepare_cli
from egnn_com.config import EgnnComConfig, config_from_dict
from egnn_com.data import load_dataset
from egnn_com.evaluate import evaluate
from egnn_com.inference import load_from_checkpoint, predict, resolve_checkpoint
from egnn_com.pipeline import run_training
from egnn_com.splits import read_groups, split_dataset

SHORT_RUN = [
    "model.name=egnn",
    "model.hidden_dim=32",
    "model.num_layers=3",
    "data.batch_size=4",
    "data.num_workers=0",
    "data.split_by=molecule",
    "optim.lr=3e-3",
    "train.max_epochs=8",
    "train.save_every_n_steps=0",
    "train.best_weights_only=true",
    "logging.tensorboard=false",
]


@pytest.fixture(scope="module")
def trained(molecule_files, tmp_path_factory):
    """(prepared folder, training result) of a short egnn run on the prepared real-format files."""
    root = tmp_path_factory.mktemp("real")
    run_cli(prepare_cli.main, [str(molecule_files), "--output", str(root / "prepared")])
    cfg = load_config(EgnnComConfig, overrides=SHORT_RUN)
    cfg.data.data_dir, cfg.train.output_dir = str(root / "prepared"), str(root / "run")
    torch.set_num_threads(1)
    return root / "prepared", run_training(cfg)


def test_predicted_centres_match_the_mass_weighted_truth(trained, capsys):
    data, result = trained
    capsys.readouterr()
    run_cli(predict_cli.main, ["--checkpoint", str(result.run_dir), str(data)])
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    graphs = load_dataset(data).graphs
    assert len(rows) == len(graphs) == 23
    _, val = split_dataset(sorted(data.glob("*.pt")), "molecule", 0.2, seed=42)
    pred = np.array([[float(r[f"pred_{c}"]) for c in "xyz"] for r in rows])
    truth = np.array([g.y[0].tolist() for g in graphs])  # ase.Atoms.get_center_of_mass of each molecule
    centroid = np.array([g.pos.mean(0).tolist() for g in graphs])  # the unweighted baseline
    error = np.linalg.norm(pred - truth, axis=1)
    baseline = np.linalg.norm(centroid - truth, axis=1)
    assert error[val].max() < 0.02  # Angstrom, on molecules the run never trained on
    assert error.mean() < 0.1 * baseline.mean()
    np.testing.assert_allclose([float(r["true_x"]) for r in rows], truth[:, 0], atol=1e-6)


def test_deuterium_moves_the_prediction_by_the_true_shift(trained):
    data, result = trained
    model, _ = load_from_checkpoint(result.run_dir)
    checked = 0
    for graph in load_dataset(data).graphs:
        hydrogen = graph.x[:, 0] == 1
        if not hydrogen.any():
            continue
        heavy = graph.clone()
        heavy.mass = torch.where(hydrogen, torch.tensor(2.014), graph.mass)  # every H -> D, same element
        centre = [(g.mass[:, None] * g.pos.double()).sum(0) / g.mass.sum() for g in (graph, heavy)]
        true_shift = centre[1] - centre[0]
        before, after = predict(model, [graph, heavy], torch.device("cpu")).double()
        if true_shift.norm() < 0.01:  # a symmetric molecule (CH4, C6H6): deuterium leaves its centre in place
            assert (after - before).norm() < 0.002
            continue
        moved = float((after - before) @ true_shift / (true_shift @ true_shift))
        assert 0.9 <= moved <= 1.1, moved  # the share of the true shift the prediction moved
        checked += 1
    assert checked >= 15


def test_best_checkpoint_from_the_manifest(trained):
    data, result = trained
    folder = result.checkpoint_dir
    manifest = json.loads((folder / "manifest.json").read_text())
    best = resolve_checkpoint(result.run_dir)
    assert best == folder / manifest["best"] == resolve_checkpoint(folder) and best.exists()
    assert manifest["monitor"] == "val/loss" and manifest["last"] == "last.ckpt"
    assert best.name.startswith("best-model-") and f"{manifest['best_score']:.4e}" in best.name
    assert "optimizer" not in load_checkpoint(best) and "optimizer" in load_checkpoint(folder / "last.ckpt")
    scored = evaluate(result.run_dir)  # the best weights on the run's own validation molecules
    assert scored["checkpoint"] == str(best) and scored["num_graphs"] == len(
        split_dataset(sorted(data.glob("*.pt")), "molecule", 0.2, 42)[1]
    )
    assert scored["metrics"]["mae"] == pytest.approx(manifest["best_score"], rel=1e-4)
    groups = read_groups(sorted(data.glob("*.pt")))
    train, val = split_dataset(sorted(data.glob("*.pt")), "molecule", 0.2, 42)
    assert not {groups[i] for i in train} & {groups[i] for i in val}


def test_checkpoint_template_is_checked_before_anything_is_written(tmp_path, molecule_files):
    cfg = load_config(
        EgnnComConfig, overrides=[*SHORT_RUN, "train.checkpoint_filename=best-{val_acc:.2f}.ckpt"]
    )
    cfg.data.data_dir, cfg.train.output_dir = str(molecule_files), str(tmp_path / "run")
    with pytest.raises(ConfigError, match="val_acc.*can use"):
        run_training(cfg)
    assert not (tmp_path / "run").exists()


def test_checkpoints_from_before_masses_load_without_them():
    saved = {"model": {"name": "egnn", "hidden_dim": 8}}
    assert config_from_dict(saved).model.use_mass is False
    assert config_from_dict({"model": {"name": "egnn", "use_mass": True}}).model.use_mass is True
