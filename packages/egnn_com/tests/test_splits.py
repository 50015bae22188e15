"""Splits: by graph (seeded) and by molecule (no molecule on both sides), from config and the command line."""

import numpy as np
import pytest

from common.cli import run_cli
from common.errors import DataError
from egnn_com import train as train_cli
from egnn_com.splits import read_groups, split_by_molecule, split_dataset


def test_split_by_molecule_keeps_every_molecule_on_one_side():
    rng = np.random.default_rng(0)
    groups = [f"mol{g}" for g in rng.integers(0, 15, size=120)]
    for seed in range(5):
        train, val = split_by_molecule(groups, 0.2, seed)
        assert sorted([*train, *val]) == list(range(120))
        assert not {groups[i] for i in train} & {groups[i] for i in val}
        assert len({groups[i] for i in val}) == 3  # 20% of the 15 molecules, as GroupShuffleSplit counts
    np.testing.assert_array_equal(split_by_molecule(groups, 0.2, 1)[1], split_by_molecule(groups, 0.2, 1)[1])
    assert not np.array_equal(split_by_molecule(groups, 0.2, 1)[1], split_by_molecule(groups, 0.2, 2)[1])
    with pytest.raises(DataError, match="all 3 graphs belong to one molecule"):
        split_by_molecule(["a", "a", "a"], 0.2, 0)


def test_groups_come_from_molecules_csv(tmp_path):
    files = [tmp_path / f"mol_{i}.pt" for i in range(4)]
    with pytest.raises(DataError, match="molecules.csv.*egnn_com.prepare"):
        read_groups(files)
    (tmp_path / "molecules.csv").write_text("file,group\nmol_0.pt,a\nmol_1.pt,a\nmol_2.pt,b\n")
    with pytest.raises(DataError, match="no molecule id .* mol_3.pt"):
        read_groups(files)
    (tmp_path / "molecules.csv").write_text(
        "file,group,name\nmol_0.pt,a,x\nmol_1.pt,a,x\nmol_2.pt,b,y\nmol_3.pt,c,z\n"
    )
    assert read_groups(files) == ["a", "a", "b", "c"]
    train, val = split_dataset(files, "molecule", 0.3, seed=0)
    assert {0, 1} <= set(train) or {0, 1} <= set(val)


def test_split_by_option_and_config_key(capsys):
    run_cli(train_cli.main, ["--print_config", "--split_by", "molecule"])
    assert "split_by: molecule" in capsys.readouterr().out
    run_cli(
        train_cli.main,
        ["--print_config", "data.split_by=molecule", "train.checkpoint_filename=b-{epoch}.ckpt"],
    )
    out = capsys.readouterr().out
    assert "split_by: molecule" in out and "checkpoint_filename: b-{epoch}.ckpt" in out
    with pytest.raises(SystemExit) as exc:
        run_cli(train_cli.main, ["--print_config", "data.split_by=atom"])
    assert exc.value.code == 2 and "split_by" in capsys.readouterr().err
