"""`python -m egnn_com.prepare`: molecule files (or PyG data) -> a graph folder `egnn_com.train` reads.

    python -m egnn_com.prepare molecules.sdf conformers.xyz runs.traj store.db --output data/my_molecules
    python -m egnn_com.prepare raw_molecules/ --output data/my_molecules --cutoff 2.5 --group_by formula

Inputs are files or folders of them: SDF / MOL (RDKit), XYZ / extended XYZ, ASE databases (.db),
trajectories (.traj) and other formats `ase.io` reads (see `egnn_com.readers`). Every record is read and
checked before anything is written; the first bad one stops the command with a message naming its file and
record (`--skip_invalid` skips and lists them instead). The folder then holds:
    mol_00000.pt ...      one graph per molecule or conformer (x, pos, edge_index, mass, z, y; see
                          egnn_com.molecule_graph), y = the centre of mass from the atomic masses
    molecules.csv         file, group (molecule id, for split_by=molecule), source, record, name, formula, atoms
    dataset_info.json     element columns of x, cutoff, counts, inputs
From Python, `prepare_pyg(dataset, out_dir)` writes the same folder from PyTorch Geometric data.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import click

from common.cli import console_script, run_cli
from common.errors import DataError
from common.runs import atomic_write_text
from egnn_com.cliopts import option
from egnn_com.molecule_graph import DEFAULT_CUTOFF, ELEMENTS, MoleculeError, molecule_graph
from egnn_com.readers import GROUP_CHOICES, IMPLICIT_H_CHOICES, RDKIT_SUFFIXES, read_records
from egnn_com.splits import GROUP_FILE

INFO_FILE = "dataset_info.json"
KNOWN_SUFFIXES = (*RDKIT_SUFFIXES, ".xyz", ".extxyz", ".db", ".traj")  # what a folder input is searched for
CSV_COLUMNS = ["file", "group", "source", "record", "name", "formula", "num_atoms"]


@dataclass
class PrepareReport:
    """What a prepare run wrote (or would skip)."""

    out_dir: Path
    num_graphs: int
    num_groups: int
    skipped: list[str] = field(default_factory=list)  # one message per invalid record skipped


def input_files(paths: Iterable[str | Path]) -> list[Path]:
    """The files to read: given files as they are, folders searched (sorted, not recursively) for molecule files."""
    files: list[Path] = []
    for item in map(Path, paths):
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.is_file() and p.suffix.lower() in KNOWN_SUFFIXES)
            if not found:
                raise DataError(f"{item}: no molecule files ({', '.join(KNOWN_SUFFIXES)}) in this folder.")
            files += found
        elif item.is_file():
            files.append(item)
        else:
            raise DataError(f"{item}: no such file or folder.")
    if not files:
        raise DataError("prepare: give at least one molecule file or folder.")
    return files


def _file_graphs(path: Path, *, cutoff: float, group_by: str, implicit_hydrogens: str, invalid):
    """(record, graph) per valid molecule of one file; with an `invalid` list, bad records are noted there."""
    for record in read_records(
        path, group_by=group_by, implicit_hydrogens=implicit_hydrogens, invalid=invalid
    ):
        try:
            yield record, molecule_graph(record, cutoff)
        except MoleculeError as exc:
            if invalid is None:
                raise
            invalid.append(str(exc))


def prepare_files(
    paths: Iterable[str | Path],
    out_dir: str | Path,
    *,
    cutoff: float = DEFAULT_CUTOFF,
    group_by: str = "auto",
    implicit_hydrogens: str = "error",
    skip_invalid: bool = False,
    fmt: str = "pt",
) -> PrepareReport:
    """Read, check and convert every molecule of `paths`, then write the graph folder `out_dir`."""
    _check_output(Path(out_dir))
    if not cutoff > 0:
        raise DataError(f"cutoff must be > 0 Angstrom, got {cutoff}.")
    files = input_files(paths)
    skipped: list[str] = []
    pairs = []
    for path in files:
        pairs += _file_graphs(
            path,
            cutoff=cutoff,
            group_by=group_by,
            implicit_hydrogens=implicit_hydrogens,
            invalid=skipped if skip_invalid else None,
        )
    info = {"inputs": [str(p) for p in files], "group_by": group_by}
    return _write_folder(Path(out_dir), pairs, cutoff=cutoff, fmt=fmt, skipped=skipped, info=info)


def prepare_pyg(
    data, out_dir: str | Path, *, cutoff: float | None = None, target: str | None = None, fmt: str = "pt"
) -> PrepareReport:
    """A graph folder from PyTorch Geometric data (a Data, a list, an InMemoryDataset; see egnn_com.pyg_input).

    `cutoff`: radius edges at that distance instead of the data's own `edge_index`."""
    from egnn_com.pyg_input import pyg_graph, pyg_records

    _check_output(Path(out_dir))
    pairs = [
        (record, pyg_graph(record, item, cutoff=cutoff, target=target))
        for record, item in pyg_records(data, target=target)
    ]
    info = {"inputs": ["pyg dataset"], "group_by": "smiles, name or formula", "target": target or "mass"}
    return _write_folder(Path(out_dir), pairs, cutoff=cutoff, fmt=fmt, skipped=[], info=info)


def _check_output(out: Path) -> None:
    # never mix a new dataset into (or over) another one: a folder that exists must be empty
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out} already exists and is not an empty folder; choose a new --output folder.")


def _write_folder(
    out: Path, pairs: list, *, cutoff, fmt: str, skipped: list[str], info: dict
) -> PrepareReport:
    """Write every graph into a temporary sibling folder, then move it into place in one rename."""
    from egnn_com.synthetic import write_graph

    if fmt not in ("pt", "npz"):
        raise DataError(f"format must be 'pt' or 'npz', got {fmt!r}.")
    if not pairs:
        reasons = f" ({len(skipped)} invalid record(s) skipped; the first: {skipped[0]})" if skipped else ""
        raise DataError(f"no valid molecule to write{reasons}.")
    _check_output(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.prepare-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        table = io.StringIO()
        writer = csv.DictWriter(table, fieldnames=CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for i, (record, graph) in enumerate(pairs):
            name = f"mol_{i:05d}.{fmt}"
            write_graph(staging / name, graph)
            writer.writerow(
                {
                    "file": name,
                    "group": record.group,
                    "source": record.source,
                    "record": record.record,
                    "name": record.name,
                    "formula": record.atoms.get_chemical_formula(mode="hill"),
                    "num_atoms": len(record.atoms),
                }
            )
        atomic_write_text(staging / GROUP_FILE, table.getvalue())
        groups = {record.group for record, _ in pairs}
        info = {
            **info,
            "num_graphs": len(pairs),
            "num_groups": len(groups),
            "num_skipped": len(skipped),
            "features": [*ELEMENTS, "other"],  # the columns of x, in order
            "cutoff": cutoff,  # None: the PyG data's own edges
            "target": "centre of mass from the atomic masses (ase.Atoms.get_center_of_mass)",
            "format": fmt,
        }
        atomic_write_text(staging / INFO_FILE, json.dumps(info, indent=2) + "\n")
        if out.exists():
            out.rmdir()  # checked empty above
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return PrepareReport(out, len(pairs), len(groups), skipped)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.argument("inputs", nargs=-1, required=True)
@option("output", "-o", required=True, help="New (or empty) folder for the graph files.")
@option("cutoff", type=float, default=DEFAULT_CUTOFF, help="Edge radius in Angstrom.")
@option(
    "group_by",
    type=click.Choice(GROUP_CHOICES),
    default="auto",
    help="Molecule id for split_by=molecule (auto: SDF/MOL InChIKey skeleton, ASE name or formula).",
)
@option(
    "implicit_hydrogens",
    type=click.Choice(IMPLICIT_H_CHOICES),
    default="error",
    help="SDF/MOL hydrogens that are not atoms of the record: error, add (RDKit places them), or ignore.",
)
@option("skip_invalid", is_flag=True, help="Skip invalid records (listed) instead of stopping at the first.")
@click.option("--format", "fmt", type=click.Choice(["pt", "npz"]), default="pt", help="Graph file format.")
def main(inputs, output, cutoff, group_by, implicit_hydrogens, skip_invalid, fmt):
    """Convert molecule files or folders (SDF/MOL, XYZ/extXYZ, ASE .db/.traj) into a graph folder for
    `python -m egnn_com.train --data_dir OUTPUT`; the target is each molecule's centre of mass."""
    report = prepare_files(
        inputs,
        output,
        cutoff=cutoff,
        group_by=group_by,
        implicit_hydrogens=implicit_hydrogens,
        skip_invalid=skip_invalid,
        fmt=fmt,
    )
    log = logging.getLogger("trainyard")
    for message in report.skipped:
        log.warning("skipped: %s", message)
    click.echo(
        f"wrote {report.num_graphs} graphs of {report.num_groups} molecules to {report.out_dir}"
        + (f" ({len(report.skipped)} invalid record(s) skipped, listed above)" if report.skipped else "")
        + f"\ntrain on them: python -m egnn_com.train --data_dir {report.out_dir} --model egnn --split_by molecule"
    )


cli = console_script(main)  # the installed command

if __name__ == "__main__":
    run_cli(main)
