"""`dtgcnn.prepare`: mesh files written by trimesh (OBJ/PLY/OFF/STL) -> dtgcnn's HDF5 layout, checked against
trimesh's own surfaces, then a short training run and an evaluation on it; bad input gives one paragraph."""

import contextlib
import io
import json
import subprocess
import sys

import h5py
import numpy as np
import pytest
import trimesh

from common.cli import run_cli
from common.errors import DataError
from dtgcnn import evaluate as evaluate_cli
from dtgcnn import prepare as prepare_cli
from dtgcnn.data import SPLITS, MeshSplit
from dtgcnn.prepare import prepare
from dtgcnn.trainer import train

NUM_POINTS = 64
FORMATS = ("obj", "ply", "off", "stl")
SHAPES = (  # one base surface per identity, all made by trimesh itself
    lambda: trimesh.creation.icosphere(subdivisions=2),
    lambda: trimesh.creation.box(extents=(1.0, 0.6, 0.4)),
    lambda: trimesh.creation.capsule(height=1.0, radius=0.3, count=(8, 8)),
    lambda: trimesh.creation.cylinder(radius=0.5, height=0.8, sections=12),
    lambda: trimesh.creation.cone(radius=0.5, height=1.0, sections=12),
    lambda: trimesh.creation.annulus(r_min=0.2, r_max=0.5, height=0.3, sections=12),
)


def write_subjects(root, num_subjects, meshes_per_subject):
    """root/subject_XX/scan_Y.<fmt>: the subject's base shape with its own stretch; each scan adds a small
    stretch, a random rotation, a translation and a size in other units, cycling through the four formats."""
    rng = np.random.default_rng(0)
    for s in range(num_subjects):
        folder = root / f"subject_{s:02d}"
        folder.mkdir(parents=True)
        stretch = 1.0 + rng.uniform(-0.3, 0.3, size=3)
        for m in range(meshes_per_subject):
            mesh = SHAPES[s % len(SHAPES)]()
            mesh.apply_scale(stretch * (1.0 + rng.uniform(-0.05, 0.05, size=3)))
            mesh.apply_transform(trimesh.transformations.random_rotation_matrix(rng.random(3)))
            mesh.apply_translation(rng.normal(size=3))
            mesh.apply_scale(10.0 ** rng.integers(0, 3))  # metres, decimetres, centimetres
            mesh.export(folder / f"scan_{m}.{FORMATS[(s + m) % len(FORMATS)]}")
    return root


@pytest.fixture(scope="module")
def mesh_root(tmp_path_factory):
    """4 subjects x 6 meshes, plus a file that is not a mesh."""
    root = write_subjects(tmp_path_factory.mktemp("meshes"), 4, 6)
    (root / "subject_00" / "notes.txt").write_text("scanned on a Tuesday")
    return root


@pytest.fixture(scope="module")
def prepared(mesh_root, tmp_path_factory):
    """The CLI's dataset: each subject's 6 meshes split 2 / 2 / 2, and what it printed."""
    out = tmp_path_factory.mktemp("prepared")
    args = [
        str(mesh_root),
        "--output",
        str(out),
        "--num-points",
        str(NUM_POINTS),
        "--split",
        "0.34,0.33,0.33",
    ]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
        run_cli(prepare_cli.main, args)
    return out, printed.getvalue()


def read_split(data_dir, split):
    meta = json.loads((data_dir / f"{split}_metadata.json").read_text())
    with h5py.File(data_dir / f"{split}_data.h5", "r") as h5:
        arrays = [
            (
                np.asarray(h5[s["subject_id"]][s["mesh_id"]]["coordinates"]),
                np.asarray(h5[s["subject_id"]][s["mesh_id"]]["normals"]),
            )
            for s in meta["samples"]
        ]
    return meta, arrays


def faces_touching(mesh, points, tol):
    """[P,F] bool: which faces of `mesh` lie within `tol` of each point (trimesh's own closest-point query)."""
    tris = mesh.triangles  # [F,3,3]
    p, f = len(points), len(tris)
    closest = trimesh.triangles.closest_point(np.tile(tris, (p, 1, 1)), np.repeat(points, f, axis=0))
    return (np.linalg.norm(closest - np.repeat(points, f, axis=0), axis=1) < tol).reshape(p, f)


def test_points_lie_on_the_file_surface_with_its_face_normals(mesh_root, prepared):
    data_dir, printed = prepared
    sources = set()
    for split in SPLITS:
        meta, arrays = read_split(data_dir, split)
        assert meta["num_vertices"] == NUM_POINTS
        for sample, (coords, normals) in zip(meta["samples"], arrays, strict=True):
            sources.add(sample["source"])
            assert coords.shape == normals.shape == (NUM_POINTS, 3) and coords.dtype == np.float32
            # normalised: centred, farthest point at distance 1
            np.testing.assert_allclose(coords.mean(axis=0), 0.0, atol=1e-5)
            assert np.linalg.norm(coords, axis=1).max() == pytest.approx(1.0, abs=1e-5)
            np.testing.assert_allclose(np.linalg.norm(normals, axis=1), 1.0, atol=1e-5)
            # back in the file's units, each point lies on a face of the file and carries that face's normal
            mesh = trimesh.load(mesh_root / sample["source"], force="mesh")
            points = coords.astype(np.float64) * sample["scale"] + np.asarray(sample["centre"])
            touching = faces_touching(mesh, points, tol=1e-4 * mesh.scale)  # [P,F]
            assert touching.any(axis=1).all(), sample["source"]
            agree = np.abs(normals @ mesh.face_normals.T - 1.0) < 1e-4  # [P,F] same direction as that face
            assert (touching & agree).any(axis=1).all(), sample["source"]
    assert sources == {f"subject_{s:02d}/scan_{m}.{FORMATS[(s + m) % 4]}" for s in range(4) for m in range(6)}
    assert "skipped 1 file(s): subject_00/notes.txt: unknown extension '.txt'" in printed
    assert "surface defects" not in printed  # trimesh's shapes are closed and consistently wound


def test_labels_follow_folders_and_every_subject_is_in_every_split(prepared):
    data_dir, printed = prepared
    for split in SPLITS:
        meta, _ = read_split(data_dir, split)
        pairs = {(s["subject_id"], s["label"]) for s in meta["samples"]}
        assert pairs == {(f"subject_{i:02d}", i) for i in range(4)}
        assert len(meta["samples"]) == 8  # 2 meshes of each subject
        # the trainer's reader accepts it as it is, with the label range of the training split
        split_reader = MeshSplit(data_dir, split, num_vertices=NUM_POINTS, num_classes=4)
        assert len(split_reader) == 8
    assert f"train with: python -m dtgcnn.train --data-dir {data_dir} num_vertices={NUM_POINTS}" in printed


def test_same_seed_same_dataset_other_seed_other_points(mesh_root, prepared, tmp_path):
    data_dir, _ = prepared
    for seed, same in ((0, True), (1, False)):
        out = tmp_path / f"seed{seed}"
        prepare(mesh_root, out, num_points=NUM_POINTS, split="0.34,0.33,0.33", seed=seed)
        meta_a, arrays_a = read_split(data_dir, "train")
        meta_b, arrays_b = read_split(out, "train")
        identical = meta_a["samples"] == meta_b["samples"] and all(
            np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
            for a, b in zip(arrays_a, arrays_b, strict=True)
        )
        assert identical == same
    for name in ("train_data.h5", "val_data.h5", "test_data.h5", "test_metadata.json"):
        assert (tmp_path / "seed0" / name).read_bytes() == (data_dir / name).read_bytes(), name


def test_split_by_subject_keeps_each_subject_on_one_side(tmp_path):
    root = write_subjects(tmp_path / "meshes", 7, 3)
    prepare(root, tmp_path / "data", num_points=32, split_by="subject", seed=3)
    subjects, labels = {}, {}
    for split in SPLITS:
        meta, _ = read_split(tmp_path / "data", split)
        subjects[split] = {s["subject_id"] for s in meta["samples"]}
        labels[split] = {s["label"] for s in meta["samples"]}
        assert all(s["label"] == meta["labels"][s["subject_id"]] for s in meta["samples"])
    assert [len(subjects[s]) for s in SPLITS] == [3, 2, 2]  # 7 subjects: round(7 * 0.15) -> at least 2
    assert not (subjects["train"] & subjects["val"] or subjects["train"] & subjects["test"])
    assert not subjects["val"] & subjects["test"]
    assert set().union(*subjects.values()) == {f"subject_{i:02d}" for i in range(7)}
    # training identities hold the top labels, so the trainer's label range covers the held-out ones
    assert min(labels["train"]) > max(labels["val"] | labels["test"])
    train = MeshSplit(tmp_path / "data", "train", num_vertices=32)
    for split in ("val", "test"):
        MeshSplit(tmp_path / "data", split, num_vertices=32, num_classes=train.num_classes)


def test_train_and_evaluate_on_the_prepared_meshes(prepared, tiny_config, tmp_path, monkeypatch):
    data_dir, _ = prepared
    monkeypatch.setenv("MPLBACKEND", "Agg")
    # the trainer reads the folder as written: only the model is made tiny and the point count told
    cfg = tiny_config(num_vertices=NUM_POINTS, batch_size=4, samples_per_label=2, num_epochs=1, plot_every=0)
    result = train(cfg, data_dir, tmp_path / "run")
    assert result.global_step == 2  # 8 training meshes in P x K = 2 x 2 batches
    out_json = tmp_path / "test_metrics.json"
    run_cli(
        evaluate_cli.main,
        [str(result.best_checkpoint), "--data-dir", str(data_dir), "--output", str(out_json)],
    )
    metrics = json.loads(out_json.read_text())
    assert metrics["num_samples"] == 8
    for name in ("loss", "accuracy", "recall_at_1", "roc_auc", "triplet_accuracy", "embedding_spread"):
        assert np.isfinite(metrics[name]), name


def test_a_label_table_names_the_identities(mesh_root, tmp_path):
    rows = ["path,label"] + [
        f"subject_{s:02d}/scan_{m}.{FORMATS[(s + m) % 4]},person_{s % 2}" for s in range(4) for m in range(3)
    ]
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    prepare(mesh_root, tmp_path / "data", num_points=32, labels=str(tmp_path / "labels.csv"))
    meta, _ = read_split(tmp_path / "data", "train")
    assert meta["labels"] == {"person_0": 0, "person_1": 1}
    assert {(s["subject_id"], s["source"][:10]) for s in meta["samples"]} <= {
        ("person_0", "subject_00"),
        ("person_0", "subject_02"),
        ("person_1", "subject_01"),
        ("person_1", "subject_03"),
    }


# -- bad input ----------------------------------------------------------------------------------------------


def flat_mesh(root, name):
    """A file whose every face has zero area (all vertices on one line)."""
    line = trimesh.Trimesh(
        [[0, 0, 0], [1, 0, 0], [2, 0, 0], [3, 0, 0]], [[0, 1, 2], [1, 2, 3]], process=False
    )
    line.export(root / name)


@pytest.fixture
def good_root(tmp_path):
    return write_subjects(tmp_path / "meshes", 2, 3)


def test_unusable_files_are_all_named_in_one_error(good_root, tmp_path):
    (good_root / "subject_00" / "garbage.ply").write_bytes(b"this is not a mesh")
    trimesh.PointCloud(np.random.default_rng(0).random((20, 3))).export(
        good_root / "subject_01" / "cloud.ply"
    )
    flat_mesh(good_root / "subject_01", "flat.obj")
    with pytest.raises(DataError) as refused:
        prepare(good_root, tmp_path / "data", num_points=32)
    message = str(refused.value)
    assert "3 of 9 mesh files cannot be used" in message
    assert "subject_00/garbage.ply: cannot read it as PLY" in message
    assert "subject_01/cloud.ply: mesh has 0 faces; need a surface to sample" in message
    assert "subject_01/flat.obj: all 2 faces have zero area" in message
    assert not (tmp_path / "data").exists()  # nothing written before everything was checked
    report = prepare(good_root, tmp_path / "data", num_points=32, skip_bad=True)
    assert sorted(name for name, _ in report.skipped) == [
        "subject_00/garbage.ply",
        "subject_01/cloud.ply",
        "subject_01/flat.obj",
    ]
    assert sum(meshes for meshes, _ in report.split_sizes.values()) == 6


def test_surface_defects_are_kept_with_a_note(good_root, tmp_path):
    box = trimesh.creation.box()
    midpoint = (box.vertices[0] + box.vertices[1]) / 2  # a face through it and both ends is a line
    sliver = trimesh.Trimesh(
        np.vstack([box.vertices, midpoint]), np.vstack([box.faces, [[0, 8, 1]]]), process=False
    )
    sliver.export(good_root / "subject_00" / "with_degenerate.ply")
    fin = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1]], float)
    trimesh.Trimesh(fin, [[0, 1, 2], [0, 1, 3], [0, 1, 4]], process=False).export(
        good_root / "subject_01" / "fin.off"
    )
    report = prepare(good_root, tmp_path / "data", num_points=32)
    notes = dict(report.notes)
    assert "faces have zero area (never sampled)" in notes["subject_00/with_degenerate.ply"]
    assert "1 edges shared by more than two faces" in notes["subject_01/fin.off"]


def test_too_few_subjects_or_meshes_for_the_split(good_root, tmp_path):
    with pytest.raises(DataError, match="--split-by subject .* needs at least 6 subjects .* found 2"):
        prepare(good_root, tmp_path / "a", num_points=32, split_by="subject")
    next((good_root / "subject_01").glob("scan_2.*")).unlink()
    with pytest.raises(DataError, match=r"each needs at least 3 meshes; too few in: subject_01 \(2\)"):
        prepare(good_root, tmp_path / "b", num_points=32)
    prepare(good_root, tmp_path / "c", num_points=32, split="0.5,0.5,0")  # no test split: 2 meshes suffice
    assert not (tmp_path / "c" / "test_metadata.json").exists()


def test_label_table_errors_name_the_line(good_root, tmp_path):
    table = tmp_path / "labels.csv"
    table.write_text("path,label\nsubject_00/scan_0.obj,a\nsubject_00/scan_9.stl,a\n")
    with pytest.raises(DataError, match="subject_00/scan_9.stl: no such file"):
        prepare(good_root, tmp_path / "a", num_points=32, labels=str(table))
    (good_root / "subject_00" / "readme.txt").write_text("not a mesh")
    table.write_text("path,label\nsubject_00/readme.txt,a\n")
    with pytest.raises(DataError, match="subject_00/readme.txt: unknown mesh extension '.txt'"):
        prepare(good_root, tmp_path / "b", num_points=32, labels=str(table))
    table.write_text("file,who\nx.obj,a\n")
    with pytest.raises(DataError, match="needs a header row with the columns 'path,label'"):
        prepare(good_root, tmp_path / "c", num_points=32, labels=str(table))


def test_cli_refuses_bad_input_in_one_paragraph_and_keeps_existing_data(good_root, tmp_path):
    flat_mesh(good_root / "subject_00", "flat.stl")
    command = [sys.executable, "-m", "dtgcnn.prepare", str(good_root), "--output", str(tmp_path / "data")]
    proc = subprocess.run([*command, "--num-points", "32"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: 1 of 7 mesh files cannot be used: subject_00/flat.stl: all")
    (good_root / "subject_00" / "flat.stl").unlink()
    prepare(good_root, tmp_path / "data", num_points=32)
    with pytest.raises(DataError, match="already holds a dataset .* pass --overwrite"):
        prepare(good_root, tmp_path / "data", num_points=32)
    prepare(good_root, tmp_path / "data", num_points=32, split="0.5,0.5,0", overwrite=True)
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [
        "train_data.h5",
        "train_metadata.json",
        "val_data.h5",
        "val_metadata.json",
    ]  # the old test split is gone with the dataset it belonged to
