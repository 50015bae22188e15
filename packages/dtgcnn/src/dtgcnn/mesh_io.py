"""Mesh files in, fixed-size point sets out: find OBJ/PLY/OFF/STL files, read them with trimesh, check that
they have a surface, and sample that surface to `num_points` points with unit normals.

Sampling is area-weighted over the surface (`trimesh.sample.sample_surface`), never a subsample of the file's
vertices: scanners and modelling tools tessellate unevenly (a box has 8 vertices, a scan has dense patches
where the sensor lingered), so vertices would weight a region by its tessellation, not by its area, and two
files of the same shape would look different to the model. A sampled point's normal is the normal of the
face it lies on, exact for that point and oriented by the file's winding.

Each point set is centred on its mean and, by default, scaled so its farthest point lies at distance 1, so
meshes in millimetres and in metres come out alike (`keep_scale=True` keeps the size, when size is part of
what tells identities apart).
"""

from __future__ import annotations

import csv
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import trimesh

from common.errors import DataError

MESH_EXTENSIONS = (".obj", ".ply", ".off", ".stl")
# Files that sit beside OBJ meshes (materials, textures): expected in a mesh folder, so skipped silently.
COMPANION_EXTENSIONS = (".mtl", ".png", ".jpg", ".jpeg", ".tga", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class MeshFile:
    path: Path  # where to read it
    name: str  # how the user sees it: the path relative to the mesh root (posix)
    subject: str  # the identity it belongs to
    mesh_id: str  # its key under the subject in the HDF5 file (no '/': HDF5 would read it as a group path)


@dataclass(frozen=True)
class PointSet:
    coordinates: np.ndarray  # [N,3] float32, centred (and unit scale unless kept)
    normals: np.ndarray  # [N,3] float32, unit length
    centre: tuple[float, float, float]  # coordinates = (file coordinates - centre) / scale
    scale: float
    notes: tuple[str, ...]  # usable but worth a warning: zero-area faces, inconsistent winding


def find_in_subject_folders(root: Path) -> tuple[list[MeshFile], list[tuple[str, str]]]:
    """Mesh files under root/<subject>/ (at any depth below the subject folder), sorted by name, and the
    (name, reason) of every other file that was skipped."""
    meshes, skipped = [], []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root)
        name = rel.as_posix()
        if any(part.startswith(".") for part in rel.parts):
            continue  # hidden files and folders (.DS_Store, .git) are never data
        suffix = path.suffix.lower()
        if suffix in COMPANION_EXTENSIONS:
            continue
        if suffix not in MESH_EXTENSIONS:
            skipped.append(
                (name, f"unknown extension '{path.suffix}' (not one of {', '.join(MESH_EXTENSIONS)})")
            )
        elif len(rel.parts) < 2:
            skipped.append((name, "not inside a subject folder (the folder name is the label)"))
        else:
            meshes.append(MeshFile(path, name, rel.parts[0], "__".join(rel.parts[1:])))
    return meshes, skipped


def find_in_label_table(root: Path, table: Path) -> list[MeshFile]:
    """Mesh files listed in a CSV with the columns `path,label` (paths relative to root, or absolute; the
    label is the identity's name), in the table's order. Missing files are reported when they are read."""
    try:
        with table.open(newline="", encoding="utf-8-sig") as fh:  # -sig: spreadsheet exports start with a BOM
            reader = csv.DictReader(fh, skipinitialspace=True)
            rows = list(reader)
            header = {name.strip() for name in reader.fieldnames or []}
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{table}: cannot read it as CSV: {exc}") from exc
    if not rows or not {"path", "label"} <= header:
        raise DataError(
            f"{table}: needs a header row with the columns 'path,label' and one row per mesh file."
        )
    meshes, seen = [], {}
    for line, row in enumerate(rows, start=2):  # line 1 is the header
        path_text, label = (row.get("path") or "").strip(), (row.get("label") or "").strip()
        where = f"{table} line {line}"
        if not path_text or not label:
            raise DataError(f"{where}: empty path or label.")
        if "/" in label or label in (".", ".."):
            raise DataError(f"{where}: label {label!r} cannot name an HDF5 group (no '/', not '.' or '..').")
        if path_text in seen:
            raise DataError(f"{where}: {path_text} is listed twice (first on line {seen[path_text]}).")
        seen[path_text] = line
        path = Path(path_text) if Path(path_text).is_absolute() else root / path_text
        mesh_id = "__".join(part for part in Path(path_text).parts if part != "/")
        meshes.append(MeshFile(path, path_text, label, mesh_id))
    return meshes


def sampling_seed(seed: int, name: str) -> list[int]:
    """A mesh's own RNG seed: from (seed, its name), so adding or removing other files never changes it."""
    return [seed, zlib.crc32(name.encode("utf-8"))]


def read_mesh(mesh_file: MeshFile) -> trimesh.Trimesh:
    """The file as one triangle mesh (a scene's parts concatenated), refused with a DataError naming it when
    it cannot be read or has no surface to sample."""
    name = mesh_file.name
    suffix = mesh_file.path.suffix.lower()
    if suffix not in MESH_EXTENSIONS:
        raise DataError(
            f"{name}: unknown mesh extension '{mesh_file.path.suffix}'; use {', '.join(MESH_EXTENSIONS)}."
        )
    if not mesh_file.path.is_file():
        raise DataError(f"{name}: no such file.")
    try:
        # process=False: keep the file's triangles as written; merging vertices is not needed to sample.
        mesh = trimesh.load(mesh_file.path, file_type=suffix[1:], force="mesh", process=False)
    except Exception as exc:  # trimesh raises many types (ValueError, KeyError, IndexError...) for bad files
        raise DataError(f"{name}: cannot read it as {suffix[1:].upper()}: {exc}") from exc
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
        raise DataError(f"{name}: mesh has 0 faces; need a surface to sample (a point cloud or empty file?).")
    if not np.isfinite(mesh.vertices).all():
        raise DataError(f"{name}: vertex coordinates contain NaN or inf.")
    if not mesh.area > 0:
        raise DataError(f"{name}: all {len(mesh.faces)} faces have zero area; need a surface to sample.")
    return mesh


def surface_notes(mesh: trimesh.Trimesh) -> tuple[str, ...]:
    """What is usable but may hurt: zero-area faces (never sampled) and a surface whose faces are not wound
    consistently or has edges shared by more than two faces (its normals may point inwards in places)."""
    notes = []
    extent = float(np.max(mesh.extents))
    degenerate = int(np.sum(mesh.area_faces <= np.finfo(np.float64).eps * extent**2))
    if degenerate:
        notes.append(f"{degenerate} of {len(mesh.faces)} faces have zero area (never sampled)")
    # STL stores each triangle with its own corners: merge them to see the surface's edges.
    welded = trimesh.Trimesh(mesh.vertices, mesh.faces, process=True)
    _, uses = np.unique(welded.edges_sorted, axis=0, return_counts=True)
    non_manifold = int(np.sum(uses > 2))
    if non_manifold:
        notes.append(f"{non_manifold} edges shared by more than two faces (non-manifold)")
    elif not welded.is_winding_consistent:
        notes.append("faces are not wound consistently, so some normals may point inwards")
    return tuple(notes)


def sample_surface(
    mesh: trimesh.Trimesh, num_points: int, rng: np.random.Generator, *, keep_scale: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(coordinates [N,3], normals [N,3]) float32, N area-weighted surface points and their faces' normals,
    centred on their mean and (unless keep_scale) scaled to a farthest point at distance 1; then the centre
    [3] and scale used."""
    points, face_index = trimesh.sample.sample_surface(mesh, num_points, seed=rng)  # [N,3], [N]
    normals = mesh.face_normals[face_index]  # [N,3]; zero-area faces have weight 0, so never appear here
    centre = points.mean(axis=0)  # [3]
    scale = 1.0 if keep_scale else float(np.max(np.linalg.norm(points - centre, axis=1)))
    coords = (points - centre) / scale  # a uniform scale leaves the normals unchanged
    return coords.astype(np.float32), normals.astype(np.float32), centre, scale


def mesh_to_points(mesh_file: MeshFile, num_points: int, seed: int, *, keep_scale: bool = False) -> PointSet:
    """Read, check and sample one mesh file; the same (file, num_points, seed) gives the same points."""
    mesh = read_mesh(mesh_file)
    rng = np.random.default_rng(sampling_seed(seed, mesh_file.name))
    coords, normals, centre, scale = sample_surface(mesh, num_points, rng, keep_scale=keep_scale)
    lengths = np.linalg.norm(normals, axis=1)
    if not np.allclose(lengths, 1.0, atol=1e-4):
        raise DataError(
            f"{mesh_file.name}: trimesh gave {int(np.sum(abs(lengths - 1) > 1e-4))} non-unit normals."
        )
    return PointSet(coords, normals, tuple(float(c) for c in centre), scale, surface_notes(mesh))
