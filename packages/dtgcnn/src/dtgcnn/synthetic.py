"""Deterministic synthetic mesh-identity dataset in dtgcnn's data format (metadata JSON + HDF5 per split).

Each subject is a smooth, subject-specific radial deformation (plus an anisotropic stretch) of a closed
template surface, a Fibonacci-sphere triangulation with `num_vertices` vertices. Each mesh of a subject adds
a smaller per-mesh deformation, Gaussian vertex noise and a random pose (rotation about a random axis and a
translation). Normals are area-weighted vertex normals of the deformed, outward-oriented triangulation, so
they are consistent with the surface. Everything is a pure function of (seed, subject, split, mesh), so a
second run writes identical files.

    python -m dtgcnn.synthetic OUT_DIR --num-subjects 10 --train-per-subject 6 --num-vertices 1723

`--text OUT` writes the text modality's corpus instead (or as well): labelled sentences and their triplets,
see `generate_text`.

    python -m dtgcnn.synthetic --text OUT --num-labels 8 --per-label 40
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

import click
import h5py
import numpy as np
from scipy.spatial import ConvexHull

from common.cli import run_cli
from common.errors import DataError
from common.runs import atomic_write_text

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


# ----------------------------------------------------------------------------------------- text corpus

# Function words and neutral verbs/nouns every label's sentences draw from: most words of a sentence carry no
# label, as in real text, so a model must find the few topic words among them.
_FILLER_TEXT = (
    "the a an of and to in on with for at by from about as is was are were be been it this that these those "
    "we you they he she there here some many few more most very quite just also then now often never always "
    "report note story today yesterday people time way day year thing part place case week point group "
    "said made found took gave seemed kept went came saw heard told asked looked felt became"
)
FILLER_WORDS = tuple(_FILLER_TEXT.split())
_ONSETS = ("b", "c", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "tr", "st", "pl")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ou")
_CODAS = ("", "", "n", "r", "s", "l", "m", "x")


@dataclass(frozen=True)
class TextSpec:
    num_labels: int = 8
    per_label: int = 40  # sentences per label
    topic_words: int = 16  # words of a label's own vocabulary
    shared_words: int = 4  # of them, shared with the next label (no single word separates two neighbours)
    words_per_sentence: tuple[int, int] = (8, 14)  # inclusive bounds
    topic_share: float = 0.3  # expected share of a sentence's words from its label's vocabulary
    noise_share: float = 0.1  # expected share from other labels' vocabularies (cross-topic noise)
    seed: int = 0


def _pseudo_word(rng: np.random.Generator) -> str:
    syllables = int(rng.integers(2, 4))
    return "".join(
        _ONSETS[rng.integers(len(_ONSETS))]
        + _VOWELS[rng.integers(len(_VOWELS))]
        + _CODAS[rng.integers(len(_CODAS))]
        for _ in range(syllables)
    )


def topic_vocabularies(spec: TextSpec) -> list[list[str]]:
    """Per label, its topic words: `topic_words - shared_words` of its own plus `shared_words` that the
    previous label also owns (a ring, so every label shares words with two neighbours)."""
    rng = np.random.default_rng([spec.seed, 1_000_003])
    own = spec.topic_words - spec.shared_words
    pool: list[str] = []
    taken = set(FILLER_WORDS)
    while len(pool) < spec.num_labels * own:
        word = _pseudo_word(rng)
        if word not in taken:
            taken.add(word)
            pool.append(word)
    owned = [pool[i * own : (i + 1) * own] for i in range(spec.num_labels)]
    return [owned[j] + owned[j - 1][: spec.shared_words] for j in range(spec.num_labels)]


def text_sentences(spec: TextSpec) -> tuple[list[str], list[str]]:
    """(sentences, labels): `per_label` distinct sentences per label, a pure function of `spec`."""
    vocab = topic_vocabularies(spec)
    labels = [f"topic_{j:02d}" for j in range(spec.num_labels)]
    sentences: list[str] = []
    out_labels: list[str] = []
    seen: set[str] = set()
    for j, label in enumerate(labels):
        rng = np.random.default_rng([spec.seed, 2, j])
        made = 0
        while made < spec.per_label:
            n = int(rng.integers(spec.words_per_sentence[0], spec.words_per_sentence[1] + 1))
            words = []
            for _ in range(n):
                u = rng.random()
                if u < spec.topic_share:
                    words.append(vocab[j][rng.integers(len(vocab[j]))])
                elif u < spec.topic_share + spec.noise_share and spec.num_labels > 1:
                    other = (j + 1 + int(rng.integers(spec.num_labels - 1))) % spec.num_labels
                    words.append(vocab[other][rng.integers(len(vocab[other]))])
                else:
                    words.append(FILLER_WORDS[rng.integers(len(FILLER_WORDS))])
            if not any(w in vocab[j] for w in words):
                words[int(rng.integers(n))] = vocab[j][rng.integers(len(vocab[j]))]  # at least one clue
            sentence = " ".join(words).capitalize() + "."
            if sentence not in seen:
                seen.add(sentence)
                sentences.append(sentence)
                out_labels.append(label)
                made += 1
    return sentences, out_labels


def text_triplets(sentences: list[str], labels: list[str], seed: int = 0) -> list[dict[str, str]]:
    """One (anchor, positive, negative) per sentence as anchor: the positive another sentence of its label, the
    negative a sentence of another label, both drawn with a seeded RNG."""
    rng = np.random.default_rng([seed, 3])
    by_label: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        by_label.setdefault(label, []).append(i)
    triplets = []
    for i, label in enumerate(labels):
        same = [k for k in by_label[label] if k != i]
        others = [k for k, lab in enumerate(labels) if lab != label]
        if not same or not others:
            continue
        p = same[rng.integers(len(same))]
        n = others[rng.integers(len(others))]
        triplets.append({"anchor": sentences[i], "positive": sentences[p], "negative": sentences[n]})
    return triplets


def _csv_text(header: list[str], rows) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")  # "\n" on every OS: byte-identical files
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def generate_text(
    out_dir: str | Path,
    *,
    num_labels: int = 8,
    per_label: int = 40,
    seed: int = 0,
    spec: TextSpec | None = None,
) -> Path:
    """Write a labelled-sentence corpus and its triplets into out_dir; returns out_dir.

    Files: sentences.csv (text,label), triplets.json ({"triplets": [{"anchor", "positive", "negative"}]}) and
    triplets.csv (anchor,positive,negative), the formats `dtgcnn.TripletDataset` reads. Each label has its own
    vocabulary of invented topic words, partly shared with a neighbouring label; a sentence mixes a few of them
    with common English filler words and some words of other labels, so labels are learnable from words but
    no one word decides. Everything is a pure function of the arguments: a second run writes identical bytes.
    """
    spec = spec or TextSpec(num_labels=num_labels, per_label=per_label, seed=seed)
    if spec.num_labels < 2 or spec.per_label < 2:
        raise DataError("synthetic text needs at least 2 labels and 2 sentences per label (for positives)")
    if not 0 <= spec.shared_words < spec.topic_words:
        raise DataError("synthetic text: shared_words must be in [0, topic_words)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sentences, labels = text_sentences(spec)
    triplets = text_triplets(sentences, labels, spec.seed)
    atomic_write_text(
        out / "sentences.csv", _csv_text(["text", "label"], zip(sentences, labels, strict=True))
    )
    atomic_write_text(out / "triplets.json", json.dumps({"triplets": triplets}, indent=1) + "\n")
    atomic_write_text(
        out / "triplets.csv",
        _csv_text(
            ["anchor", "positive", "negative"],
            ([t["anchor"], t["positive"], t["negative"]] for t in triplets),
        ),
    )
    return out


@click.command(
    help="Write a deterministic synthetic mesh-identity dataset (train/val/test) to OUT_DIR, and/or with "
    "--text OUT a labelled-sentence corpus with its triplets (sentences.csv, triplets.json, triplets.csv)."
)
@click.argument("out_dir", type=click.Path(file_okay=False), required=False)
@click.option(
    "--text",
    "text_out",
    type=click.Path(file_okay=False),
    default=None,
    help="Write the synthetic text corpus into this folder.",
)
@click.option("--num-labels", default=8, show_default=True, help="Text: labels (topics).")
@click.option("--per-label", default=40, show_default=True, help="Text: sentences per label.")
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
    text_out,
    num_labels,
    per_label,
):
    if out_dir is None and text_out is None:
        raise click.UsageError("give OUT_DIR (synthetic meshes) and/or --text OUT (synthetic sentences)")
    if text_out is not None:
        folder = generate_text(text_out, num_labels=num_labels, per_label=per_label, seed=seed)
        click.echo(
            f"wrote {num_labels * per_label} sentences ({num_labels} labels) and their triplets to {folder}"
        )
    if out_dir is None:
        return
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
