"""`python -m dtgcnn.prepare MESH_ROOT --output DATA_DIR`: your own meshes in dtgcnn's data format.

\b
    MESH_ROOT/<subject>/<any path>.obj|.ply|.off|.stl    one folder per identity (the folder name is the label)
    --labels labels.csv                                  or a CSV `path,label`, paths relative to MESH_ROOT

Every mesh is read with trimesh and sampled to a fixed number of surface points with normals (see
`dtgcnn.mesh_io`), then written as {split}_metadata.json + {split}_data.h5 for train/val/test, the layout
`dtgcnn.data.MeshSplit` reads, so `python -m dtgcnn.train --data-dir DATA_DIR` trains on it. Everything is
read and checked before anything is written, and the same files and seed give the same dataset. Each
sample's metadata also records its `source` file and the `centre` and `scale` that map its points back to
the file's units (coordinates = (file coordinates - centre) / scale).

\b
Splits (`--split TRAIN,VAL,TEST` fractions, test may be 0):
- `--split-by mesh` (default): each subject's meshes are divided among the splits, so val/test measure how well
  the model recognises the training identities in new scans (every subject needs a mesh in each split).
- `--split-by subject`: each subject goes whole into one split, so val/test measure identities never seen in
  training (recall@1, ROC-AUC; their accuracy is 0 by construction).
"""

from __future__ import annotations

import json
import os
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import click
import h5py
import numpy as np

from common.cli import console_script, run_cli, seed_option
from common.errors import DataError
from common.runs import atomic_write_text
from dtgcnn.config import TrainConfig
from dtgcnn.data import SPLITS
from dtgcnn.mesh_io import (
    MESH_EXTENSIONS,
    MeshFile,
    PointSet,
    find_in_label_table,
    find_in_subject_folders,
    mesh_to_points,
)

DEFAULT_NUM_POINTS = TrainConfig().num_vertices  # what `dtgcnn.train` expects when not told otherwise
MIN_SUBJECTS_PER_HELD_OUT_SPLIT = 2  # retrieval metrics need two identities to tell apart
MAX_LISTED = 20  # files named in one message; the rest are counted


@dataclass
class PrepareReport:
    output: Path
    num_points: int
    subjects: dict[str, int]  # subject -> label
    split_sizes: dict[str, tuple[int, int]]  # split -> (meshes, subjects)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, why), left out
    notes: list[tuple[str, str]] = field(default_factory=list)  # (file, what), kept


def parse_fractions(text: str) -> tuple[float, float, float]:
    """'0.7,0.15,0.15' -> (0.7, 0.15, 0.15), rescaled to sum to 1; train and val must be > 0."""
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 3 or min(values) < 0 or values[0] <= 0 or values[1] <= 0:
        raise DataError(
            f"--split {text!r}: give three fractions TRAIN,VAL,TEST (e.g. 0.7,0.15,0.15); train and val "
            f"must be > 0 (training validates every epoch), test may be 0."
        )
    total = sum(values)
    return values[0] / total, values[1] / total, values[2] / total


def held_out_counts(n: int, fractions: tuple[float, float, float], minimum: int) -> tuple[int, int, int]:
    """(train, val, test) counts of n items: val and test get round(n * fraction), at least `minimum` when
    their fraction is > 0; train gets the rest."""
    val = max(minimum, round(n * fractions[1]))
    test = max(minimum, round(n * fractions[2])) if fractions[2] > 0 else 0
    return n - val - test, val, test


def split_by_mesh(by_subject, fractions, seed) -> tuple[dict[str, list[MeshFile]], dict[str, int]]:
    """Each subject's meshes, shuffled by (seed, subject), divided among the splits; labels 0.. in subject
    name order. Refuses subjects with fewer meshes than splits."""
    splits: dict[str, list[MeshFile]] = {name: [] for name in SPLITS}
    short = []
    for subject in sorted(by_subject):
        files = by_subject[subject]
        counts = held_out_counts(len(files), fractions, minimum=1)
        if counts[0] < 1:
            short.append(f"{subject} ({len(files)})")
            continue
        order = np.random.default_rng([seed, zlib.crc32(subject.encode("utf-8"))]).permutation(len(files))
        start = 0
        for name, count in zip(SPLITS, counts, strict=True):
            splits[name].extend(files[i] for i in sorted(order[start : start + count]))
            start += count
    if short:
        need = 3 if fractions[2] > 0 else 2
        raise DataError(
            f"--split-by mesh puts every subject into each split, so each needs at least {need} meshes; "
            f"too few in: {listing(short)}. Add meshes, remove those folders, or use --split-by subject."
        )
    return splits, {subject: label for label, subject in enumerate(sorted(by_subject))}


def split_by_subject(by_subject, fractions, seed) -> tuple[dict[str, list[MeshFile]], dict[str, int]]:
    """Whole subjects, shuffled by seed, divided among the splits. Labels: held-out subjects first (val,
    then test), training subjects last, because the trainer sizes its classifier from the largest training
    label and refuses val/test labels beyond it; the held-out identities' outputs are never trained."""
    subjects = sorted(by_subject)
    counts = held_out_counts(len(subjects), fractions, MIN_SUBJECTS_PER_HELD_OUT_SPLIT)
    if counts[0] < 2:
        need = 2 + sum(MIN_SUBJECTS_PER_HELD_OUT_SPLIT for f in fractions[1:] if f > 0)
        raise DataError(
            f"--split-by subject with fractions {format_fractions(fractions)} needs at least {need} subjects "
            f"(2 to train on, {MIN_SUBJECTS_PER_HELD_OUT_SPLIT} in each held-out split); found "
            f"{len(subjects)}: {listing(subjects)}. Add subjects or use --split-by mesh."
        )
    order = [subjects[i] for i in np.random.default_rng(seed).permutation(len(subjects))]
    train, val, test = (
        order[: counts[0]],
        order[counts[0] : counts[0] + counts[1]],
        order[counts[0] + counts[1] :],
    )
    labels = {subject: label for label, subject in enumerate([*sorted(val), *sorted(test), *sorted(train)])}
    splits = {
        name: [f for subject in sorted(group) for f in by_subject[subject]]
        for name, group in zip(SPLITS, (train, val, test), strict=True)
    }
    return splits, labels


def format_fractions(fractions) -> str:
    return ",".join(f"{f:.3g}" for f in fractions)


def listing(items: list[str]) -> str:
    """'a, b, c' with at most MAX_LISTED items named and the rest counted."""
    shown = ", ".join(items[:MAX_LISTED])
    return shown + (f" and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else "")


def find_meshes(mesh_root: Path, labels: str) -> tuple[list[MeshFile], list[tuple[str, str]]]:
    if labels == "folder":
        return find_in_subject_folders(mesh_root)
    return find_in_label_table(mesh_root, Path(labels)), []


def sample_all(files, num_points, seed, keep_scale, skip_bad):
    """{file name: PointSet} of the usable files and the (name, why) of the unusable ones; refuses all of
    them at once (naming each) unless skip_bad."""
    points, bad = {}, []
    for mesh_file in files:
        try:
            points[mesh_file.name] = mesh_to_points(mesh_file, num_points, seed, keep_scale=keep_scale)
        except DataError as exc:
            bad.append((mesh_file.name, str(exc).removeprefix(f"{mesh_file.name}: ").rstrip(".")))
    if bad and not skip_bad:
        raise DataError(
            f"{len(bad)} of {len(files)} mesh files cannot be used: "
            + "; ".join(f"{name}: {why}" for name, why in bad[:MAX_LISTED])
            + (f"; and {len(bad) - MAX_LISTED} more" if len(bad) > MAX_LISTED else "")
            + ". Fix or remove them, or pass --skip-bad to leave them out."
        )
    return points, bad


def check_output(output: Path, overwrite: bool) -> None:
    existing = [p.name for s in SPLITS for p in (output / f"{s}_data.h5", output / f"{s}_metadata.json")]
    existing = [name for name in existing if (output / name).exists()]
    if existing and not overwrite:
        raise DataError(
            f"{output} already holds a dataset ({', '.join(existing)}); pass --overwrite to replace it."
        )


def write_split(
    output: Path, split: str, files, points: dict[str, PointSet], labels, num_points, info
) -> None:
    """{split}_data.h5 (/<subject>/<mesh_id>/coordinates and /normals [N,3] float32) and its metadata JSON,
    the HDF5 first: a crash in between leaves no metadata, which MeshSplit reports as a missing file."""
    h5_path = output / f"{split}_data.h5"
    partial = h5_path.with_name(f".{h5_path.name}.partial")
    samples = []
    with h5py.File(partial, "w") as h5:
        for mesh_file in files:
            group = h5.create_group(f"{mesh_file.subject}/{mesh_file.mesh_id}")
            group.create_dataset("coordinates", data=points[mesh_file.name].coordinates)
            group.create_dataset("normals", data=points[mesh_file.name].normals)
            samples.append(
                {
                    "subject_id": mesh_file.subject,
                    "mesh_id": mesh_file.mesh_id,
                    "label": labels[mesh_file.subject],
                    "source": mesh_file.name,
                    "centre": list(points[mesh_file.name].centre),
                    "scale": points[mesh_file.name].scale,
                }
            )
    os.replace(partial, h5_path)
    meta = {"num_vertices": num_points, "num_classes": len(labels), **info, "samples": samples}
    atomic_write_text(output / f"{split}_metadata.json", json.dumps(meta, indent=1))


def write_dataset(output: Path, splits, points, labels, num_points, info) -> dict[str, tuple[int, int]]:
    """Every non-empty split into output; returns {split: (meshes, subjects)}. The old metadata goes first,
    so a dataset being replaced is never half old, half new: MeshSplit would report a missing file."""
    for name in SPLITS:
        (output / f"{name}_metadata.json").unlink(missing_ok=True)
        (output / f"{name}_data.h5").unlink(missing_ok=True)  # also an old test split the new one lacks
    sizes = {}
    for name in SPLITS:
        if splits[name]:
            write_split(output, name, splits[name], points, labels, num_points, info)
            sizes[name] = (len(splits[name]), len({f.subject for f in splits[name]}))
    return sizes


def prepare(
    mesh_root: str | Path,
    output: str | Path,
    *,
    num_points: int = DEFAULT_NUM_POINTS,
    labels: str = "folder",
    split: str = "0.7,0.15,0.15",
    split_by: str = "mesh",
    seed: int = 0,
    keep_scale: bool = False,
    skip_bad: bool = False,
    overwrite: bool = False,
) -> PrepareReport:
    """Convert the meshes under mesh_root into a dtgcnn dataset in output (see the module doc)."""
    mesh_root, output = Path(mesh_root), Path(output)
    if not mesh_root.is_dir():
        raise DataError(f"{mesh_root}: no such folder of meshes.")
    if num_points < 16:
        raise DataError(f"--num-points {num_points}: need at least 16 points per mesh.")
    if split_by not in ("mesh", "subject"):
        raise DataError(f"--split-by {split_by!r}: use 'mesh' or 'subject'.")
    fractions = parse_fractions(split)
    check_output(output, overwrite)
    files, skipped = find_meshes(mesh_root, labels)
    if not files:
        raise DataError(
            f"{mesh_root}: no {'/'.join(e[1:].upper() for e in MESH_EXTENSIONS)} files found in subject "
            "folders (MESH_ROOT/<subject>/<mesh file>)."
        )
    clashes = _duplicate_keys(files)
    if clashes:
        raise DataError(
            f"These files map to the same subject/mesh key: {listing(clashes)}; rename one of each."
        )
    points, bad = sample_all(files, num_points, seed, keep_scale, skip_bad)
    usable = [f for f in files if f.name in points]
    by_subject: dict[str, list[MeshFile]] = defaultdict(list)
    for mesh_file in usable:
        by_subject[mesh_file.subject].append(mesh_file)
    if len(by_subject) < 2:
        raise DataError(
            f"{mesh_root}: found {len(by_subject)} subject(s) with usable meshes; need at least 2."
        )
    assign = split_by_mesh if split_by == "mesh" else split_by_subject
    splits, label_of = assign(by_subject, fractions, seed)

    output.mkdir(parents=True, exist_ok=True)
    info = {
        "labels": label_of,
        "prepared_from": {
            "mesh_root": str(mesh_root.resolve()),
            "split": format_fractions(fractions),
            "split_by": split_by,
            "seed": seed,
            "sampling": "area-weighted surface points, face normals",
            "normalisation": "centred" if keep_scale else "centred, farthest point at distance 1",
        },
    }
    sizes = write_dataset(output, splits, points, label_of, num_points, info)
    notes = [(name, "; ".join(p.notes)) for name, p in points.items() if p.notes]
    return PrepareReport(output, num_points, label_of, sizes, [*skipped, *bad], notes)


def _duplicate_keys(files: list[MeshFile]) -> list[str]:
    seen: dict[tuple[str, str], str] = {}
    clashes = []
    for mesh_file in files:
        key = (mesh_file.subject, mesh_file.mesh_id)
        if key in seen:
            clashes.append(f"{seen[key]} and {mesh_file.name}")
        seen[key] = mesh_file.name
    return clashes


def train_command(report: PrepareReport) -> str:
    """The command that trains on the prepared folder (num_vertices only when not the config's default)."""
    extra = "" if report.num_points == DEFAULT_NUM_POINTS else f" num_vertices={report.num_points}"
    return f"python -m dtgcnn.train --data-dir {report.output}{extra}"


@click.command(help=__doc__)
@click.argument("mesh_root", type=click.Path(file_okay=False))
@click.option(
    "--output",
    "--output-dir",
    "-o",
    "output",
    required=True,
    type=click.Path(file_okay=False),
    help="Dataset folder to write (give it to dtgcnn.train as --data-dir).",
)
@click.option(
    "--num-points",
    default=DEFAULT_NUM_POINTS,
    show_default=True,
    help="Surface points per mesh (the training config's num_vertices).",
)
@click.option(
    "--labels",
    default="folder",
    show_default=True,
    help="'folder' (MESH_ROOT/<subject>/...) or a CSV file with the columns path,label.",
)
@click.option("--split", default="0.7,0.15,0.15", show_default=True, help="TRAIN,VAL,TEST fractions.")
@click.option(
    "--split-by",
    type=click.Choice(["mesh", "subject"]),
    default="mesh",
    show_default=True,
    help="mesh: every subject in every split; subject: each subject in one split.",
)
@seed_option(default=0, show_default=True, help="Seed for the split and the surface sampling.")
@click.option("--keep-scale", is_flag=True, help="Centre each mesh but keep its size (default: unit scale).")
@click.option(
    "--skip-bad", is_flag=True, help="Leave out unreadable or empty meshes (listed) instead of failing."
)
@click.option("--overwrite", is_flag=True, help="Replace a dataset already in --output.")
def main(mesh_root, output, num_points, labels, split, split_by, seed, keep_scale, skip_bad, overwrite):
    report = prepare(
        mesh_root,
        output,
        num_points=num_points,
        labels=labels,
        split=split,
        split_by=split_by,
        seed=seed,
        keep_scale=keep_scale,
        skip_bad=skip_bad,
        overwrite=overwrite,
    )
    if report.skipped:
        click.echo(
            f"warning: skipped {len(report.skipped)} file(s): "
            + "; ".join(f"{name}: {why}" for name, why in report.skipped[:MAX_LISTED]),
            err=True,
        )
    if report.notes:
        click.echo(
            f"warning: {len(report.notes)} mesh(es) kept with surface defects: "
            + "; ".join(f"{name}: {what}" for name, what in report.notes[:MAX_LISTED]),
            err=True,
        )
    for name, (meshes, subjects) in report.split_sizes.items():
        click.echo(f"{name}: {meshes} meshes of {subjects} subjects")
    click.echo(
        f"wrote {len(report.subjects)} subjects, {report.num_points} points per mesh, to {report.output}"
    )
    click.echo(f"train with: {train_command(report)}")


cli = console_script(main)  # the installed command

if __name__ == "__main__":
    run_cli(main)
