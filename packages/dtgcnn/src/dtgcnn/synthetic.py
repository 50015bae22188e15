"""Deterministic synthetic mesh-identity dataset in dtgcnn's data format (metadata JSON + HDF5 per split).

Each subject is a smooth, subject-specific radial deformation (plus an anisotropic stretch) of a closed
template surface, a Fibonacci-sphere triangulation with `num_vertices` vertices. Each mesh of a subject adds
a smaller per-mesh deformation, Gaussian vertex noise and a random pose (rotation about a random axis and a
translation). Normals are area-weighted vertex normals of the deformed, outward-oriented triangulation, so
they are consistent with the surface. Everything is a pure function of (seed, subject, split, mesh), so a
second run writes identical files.

    python -m dtgcnn.synthetic OUT_DIR --num-subjects 10 --train-per-subject 6 --num-vertices 1723
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import click
import h5py
import numpy as np
from scipy.spatial import ConvexHull

from common.cli import run_cli
from common.errors import DataError

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class SyntheticSpec:
    num_subjects: int = 10
    per_subject: tuple[int, int, int] = (6, 2, 2)  # meshes per subject in train, val, test
    num_vertices: int = 1723
    subject_scale: float = 0.25  # amplitude of the identity deformation (the signal)
    mesh_scale: float = 0.06  # amplitude of the per-mesh deformation (within-subject variation)
    noise_std: float = 0.005  # per-vertex Gaussian noise
    max_rotation_deg: float = 30.0  # random pose: rotation angle bound about a random axis
    translation_std: float = 0.05
    seed: int = 0


def template_sphere(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit directions [n,3] on a Fibonacci sphere and outward-oriented triangles [F,3] (their convex hull)."""
    i = np.arange(n) + 0.5
    z = 1.0 - 2.0 * i / n
    phi = np.pi * (1.0 + 5**0.5) * i
    r = np.sqrt(1.0 - z**2)
    dirs = np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)
    faces = ConvexHull(dirs).simplices.copy()
    # Orient every face outward: its normal must point away from the origin.
    tri = dirs[faces]  # [F,3,3]
    normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    flip = np.einsum("fi,fi->f", normal, tri.mean(axis=1)) < 0
    faces[flip] = faces[flip][:, ::-1]
    return dirs, faces


def vertex_normals(coords: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals [N,3] of a triangulated surface."""
    tri = coords[faces]  # [F,3,3]
    face_n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])  # [F,3], length = 2*area
    normals = np.zeros_like(coords)
    for corner in range(3):
        np.add.at(normals, faces[:, corner], face_n)
    return normals / np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)


def radial_field(
    dirs: np.ndarray, rng: np.random.Generator, terms: int = 12, freq: float = 2.0
) -> np.ndarray:
    """A smooth random function on the sphere [N]: random Fourier features of the direction, unit RMS."""
    w = rng.normal(0.0, freq, size=(terms, 3))
    phase = rng.uniform(0, 2 * np.pi, size=terms)
    amp = rng.normal(size=terms)
    field = np.cos(dirs @ w.T + phase) @ amp  # [N]
    return field / (np.sqrt(np.mean(field**2)) + 1e-12)


def random_rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    """Rotation matrix [3,3] about a uniformly random axis by an angle in [-max_deg, max_deg] (Rodrigues)."""
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = np.deg2rad(rng.uniform(-max_deg, max_deg))
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)


def subject_shape(spec: SyntheticSpec, dirs: np.ndarray, subject: int) -> tuple[np.ndarray, np.ndarray]:
    """The subject's identity: a radial field [N] and a per-axis stretch [3]."""
    rng = np.random.default_rng([spec.seed, subject, 0])
    stretch = 1.0 + rng.uniform(-0.2, 0.2, size=3)
    return spec.subject_scale * radial_field(dirs, rng), stretch


def make_mesh(spec, dirs, faces, identity, split_index: int, subject: int, mesh: int):
    """coordinates [N,3] and normals [N,3] (float32) of one mesh of one subject."""
    field, stretch = identity
    rng = np.random.default_rng([spec.seed, subject, 1 + split_index, mesh])
    radius = 1.0 + field + spec.mesh_scale * radial_field(dirs, rng)  # [N], stays > 0 for these amplitudes
    surface = dirs * np.maximum(radius, 0.2)[:, None] * stretch  # [N,3]
    normals = vertex_normals(surface, faces)
    coords = surface + rng.normal(0.0, spec.noise_std, size=surface.shape)
    rot = random_rotation(rng, spec.max_rotation_deg)
    coords = coords @ rot.T + rng.normal(0.0, spec.translation_std, size=3)
    normals = normals @ rot.T
    return coords.astype(np.float32), normals.astype(np.float32)


def generate(out_dir: str | Path, spec: SyntheticSpec = SyntheticSpec()) -> Path:
    """Write {split}_metadata.json and {split}_data.h5 for train/val/test into out_dir; returns out_dir."""
    if spec.num_subjects < 2 or spec.num_vertices < 16 or min(spec.per_subject) < 1:
        raise DataError(
            "synthetic data needs at least 2 subjects, 16 vertices and 1 mesh per subject per split"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dirs, faces = template_sphere(spec.num_vertices)
    identities = [subject_shape(spec, dirs, s) for s in range(spec.num_subjects)]
    mesh_counter = 0
    for split_index, split in enumerate(SPLITS):
        samples = []
        with h5py.File(out / f"{split}_data.h5", "w") as h5:
            for s in range(spec.num_subjects):
                subject_id = f"subject_{s + 1:04d}"
                for m in range(spec.per_subject[split_index]):
                    mesh_counter += 1
                    mesh_id = f"mesh_{mesh_counter:06d}"
                    coords, normals = make_mesh(spec, dirs, faces, identities[s], split_index, s, m)
                    group = h5.create_group(f"{subject_id}/{mesh_id}")
                    group.create_dataset("coordinates", data=coords)
                    group.create_dataset("normals", data=normals)
                    samples.append({"subject_id": subject_id, "mesh_id": mesh_id, "label": s})
        meta = {"num_vertices": spec.num_vertices, "num_classes": spec.num_subjects, "samples": samples}
        (out / f"{split}_metadata.json").write_text(json.dumps(meta, indent=1))
    return out


@click.command(help="Write a deterministic synthetic mesh-identity dataset (train/val/test) to OUT_DIR.")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--num-subjects", default=10, show_default=True, help="Identities (= classes).")
@click.option("--train-per-subject", default=6, show_default=True)
@click.option("--val-per-subject", default=2, show_default=True)
@click.option("--test-per-subject", default=2, show_default=True)
@click.option("--num-vertices", default=1723, show_default=True, help="Vertices per mesh.")
@click.option("--subject-scale", default=0.25, show_default=True, help="Identity deformation amplitude.")
@click.option("--mesh-scale", default=0.06, show_default=True, help="Per-mesh deformation amplitude.")
@click.option("--noise-std", default=0.005, show_default=True)
@click.option("--max-rotation", default=30.0, show_default=True, help="Pose rotation bound, degrees.")
@click.option("--seed", default=0, show_default=True)
def main(
    out_dir,
    num_subjects,
    train_per_subject,
    val_per_subject,
    test_per_subject,
    num_vertices,
    subject_scale,
    mesh_scale,
    noise_std,
    max_rotation,
    seed,
):
    spec = SyntheticSpec(
        num_subjects,
        (train_per_subject, val_per_subject, test_per_subject),
        num_vertices,
        subject_scale,
        mesh_scale,
        noise_std,
        max_rotation,
        seed=seed,
    )
    out = generate(out_dir, spec)
    click.echo(
        f"wrote {sum(spec.per_subject) * num_subjects} meshes of {num_vertices} vertices "
        f"({num_subjects} subjects) to {out}"
    )


if __name__ == "__main__":
    run_cli(main)
