"""Train/validation splits: by graph (seeded shuffle) or by molecule (every conformer of one molecule on one side).

Conformers of one molecule have almost the same centre of mass relative to their atoms; with a split by graph
the validation set holds near-copies of training graphs and its scores leak. `data.split_by: molecule` reads
the molecule id of every graph file from `molecules.csv` in the data folder (written by `egnn_com.prepare`;
columns `file` and `group`, any others are ignored) and holds out whole molecules.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from common.errors import DataError

GROUP_FILE = "molecules.csv"  # file -> molecule id, beside the graph files
SPLIT_CHOICES = ("graph", "molecule")


def read_groups(files: list[Path]) -> list[str]:
    """The molecule id of each graph file, from the `molecules.csv` of its folder."""
    tables: dict[Path, dict[str, str]] = {}
    groups = []
    for path in files:
        folder = path.parent
        if folder not in tables:
            table_file = folder / GROUP_FILE
            if not table_file.is_file():
                raise DataError(
                    f"data.split_by=molecule needs {table_file} (columns file, group: the molecule id of each "
                    f"graph file), which `python -m egnn_com.prepare` writes; it is missing."
                )
            with table_file.open(newline="", encoding="utf-8") as fh:
                reader = csv.DictReader(fh)
                if not reader.fieldnames or not {"file", "group"} <= set(reader.fieldnames):
                    raise DataError(
                        f"{table_file}: needs the columns 'file' and 'group', has {reader.fieldnames}."
                    )
                tables[folder] = {row["file"]: row["group"] for row in reader}
        group = tables[folder].get(path.name)
        if not group:
            raise DataError(f"{folder / GROUP_FILE}: no molecule id (group) for graph file {path.name}.")
        groups.append(group)
    return groups


def split_by_graph(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train/validation split of range(n): (train_idx, val_idx), each sorted."""
    _check_fraction(val_fraction)
    n_val = max(1, round(n * val_fraction))
    if n - n_val < 1:
        raise DataError(f"only {n} valid graph(s): too few to split into training and validation sets.")
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def split_by_molecule(groups: list[str], val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of whole molecules: val_fraction of the molecules (not of the graphs) are held out,
    as sklearn's GroupShuffleSplit does, so no molecule has graphs on both sides."""
    _check_fraction(val_fraction)
    names, group_of = np.unique(np.asarray(groups, dtype=object).astype(str), return_inverse=True)
    if len(names) < 2:
        raise DataError(
            f"data.split_by=molecule: all {len(groups)} graphs belong to one molecule ({names[0]!r}); a split "
            f"by molecule needs at least two."
        )
    n_val = min(max(1, round(len(names) * val_fraction)), len(names) - 1)
    held_out = np.random.default_rng(seed).permutation(len(names))[:n_val]
    is_val = np.isin(group_of, held_out)
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def split_dataset(
    files: list[Path], split_by: str, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, val_idx) of the graphs loaded from `files` (training, evaluation and the demo agree)."""
    if split_by == "graph":
        return split_by_graph(len(files), val_fraction, seed)
    if split_by == "molecule":
        return split_by_molecule(read_groups(files), val_fraction, seed)
    raise DataError(f"data.split_by must be one of {', '.join(SPLIT_CHOICES)}, got {split_by!r}.")


def _check_fraction(val_fraction: float) -> None:
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"data.val_fraction must be between 0 and 1 (exclusive), got {val_fraction}.")
