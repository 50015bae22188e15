import json
import shutil

import h5py
import numpy as np
import pytest

from common.errors import DataError
from common.sampler import ResumableSampler
from dtgcnn.data import MeshAugmentation, MeshSplit, PKOrder, make_batch, pk_sampler, prefetch
from dtgcnn.synthetic import generate, template_sphere, vertex_normals


def split(path, name="train", **kw):
    return MeshSplit(path, name, num_vertices=48, **kw)


@pytest.fixture
def data_copy(tiny_data, tmp_path):
    return shutil.copytree(tiny_data, tmp_path / "data")


def test_reads_the_seed_format(tiny_data):
    s = split(tiny_data)
    assert len(s) == 24 and s.num_classes == 4 and s.in_channels == 6
    coords, normals = s.mesh(0)
    assert coords.shape == normals.shape == (48, 3)
    np.testing.assert_allclose(coords.mean(axis=0), 0, atol=1e-5)  # centred
    np.testing.assert_allclose(np.linalg.norm(normals, axis=1), 1, atol=1e-5)


def test_missing_file_is_named(data_copy):
    (data_copy / "val_data.h5").unlink()
    with pytest.raises(DataError, match="val_data.h5"):
        split(data_copy, "val")


def test_missing_metadata_key_names_the_sample(data_copy):
    meta = json.loads((data_copy / "train_metadata.json").read_text())
    del meta["samples"][3]["label"]
    (data_copy / "train_metadata.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=r"train_metadata.json: sample #3 lacks key\(s\) label"):
        split(data_copy)


def test_shape_mismatch_names_file_and_sample(data_copy):
    with h5py.File(data_copy / "train_data.h5", "r+") as h5:
        del h5["subject_0002/mesh_000008/normals"]
        h5["subject_0002/mesh_000008/normals"] = np.zeros((40, 3), np.float32)
    with pytest.raises(
        DataError, match=r"train_data.h5 sample #7 \(subject_0002/mesh_000008\): normals has shape \[40, 3\]"
    ):
        split(data_copy)


def test_num_vertices_mismatch(tiny_data):
    with pytest.raises(DataError, match="num_vertices=48"):
        MeshSplit(tiny_data, "train", num_vertices=1723)


def test_nan_is_refused(data_copy):
    with h5py.File(data_copy / "train_data.h5", "r+") as h5:
        h5["subject_0001/mesh_000002/coordinates"][5, 1] = np.nan
    with pytest.raises(DataError, match=r"sample #1 \(subject_0001/mesh_000002\): coordinates contains NaN"):
        split(data_copy)


def test_label_out_of_range(tiny_data):
    with pytest.raises(
        DataError,
        match=r"sample #12 \(subject_0003/mesh_000013\) has label 2, out of range for num_classes=2",
    ):
        split(tiny_data, num_classes=2)


def test_synthetic_is_deterministic_and_normals_consistent(tiny_data, tiny_spec, tmp_path):
    again = generate(tmp_path / "again", tiny_spec)
    with h5py.File(tiny_data / "test_data.h5") as a, h5py.File(again / "test_data.h5") as b:
        for path in ("subject_0003/mesh_000037/coordinates", "subject_0003/mesh_000037/normals"):
            np.testing.assert_array_equal(a[path][:], b[path][:])
    # Normals of the outward-oriented template sphere point away from its centre.
    dirs, faces = template_sphere(200)
    assert (np.einsum("ij,ij->i", vertex_normals(dirs, faces), dirs) > 0.95).all()


def test_rotation_preserves_norms_and_flip_is_a_reflection():
    rng = np.random.default_rng(0)
    coords = rng.standard_normal((30, 3)).astype(np.float32)
    normals = coords / np.linalg.norm(coords, axis=1, keepdims=True)
    rotate = MeshAugmentation(rotation_range=90, scale_range=(1, 1), noise_std=0, flip_probability=0)
    c2, n2 = rotate(coords, normals, np.random.default_rng(1))
    np.testing.assert_allclose(np.linalg.norm(c2, axis=1), np.linalg.norm(coords, axis=1), rtol=1e-5)
    np.testing.assert_allclose(c2 @ c2.T, coords @ coords.T, atol=1e-4)  # all angles kept: a rotation
    np.testing.assert_allclose(np.linalg.norm(n2, axis=1), 1, atol=1e-5)
    flip = MeshAugmentation(rotation_range=0, scale_range=(1, 1), noise_std=0, flip_probability=1)
    c3, n3 = flip(coords, normals, np.random.default_rng(2))
    np.testing.assert_allclose(c3, coords * [-1, 1, 1], atol=1e-6)  # x -> -x, an improper isometry
    np.testing.assert_allclose(n3, normals * [-1, 1, 1], atol=1e-6)
    scale = MeshAugmentation(rotation_range=0, scale_range=(2, 2), noise_std=0)
    c4, n4 = scale(coords, normals, np.random.default_rng(3))
    np.testing.assert_allclose(c4, 2 * coords, rtol=1e-5)
    np.testing.assert_allclose(n4, normals, atol=1e-6)  # normals are directions: never scaled


def epoch_batches(sampler: ResumableSampler, epoch: int, start: int = 0) -> list[np.ndarray]:
    sampler.set_epoch(epoch, start)
    return [np.asarray(b) for b in sampler]


def test_pk_sampler_composition_and_determinism():
    labels = np.repeat(np.arange(5), [6, 6, 3, 6, 6])
    sampler = pk_sampler(labels, batch_size=8, samples_per_label=4, seed=1)
    batches = epoch_batches(sampler, epoch=1)
    assert len(batches) == sampler.batches_per_epoch() == len(labels) // 8
    for b in batches:
        values, counts = np.unique(labels[b], return_counts=True)
        assert len(values) == 2 and (counts == 4).all()  # P=2 labels x K=4 meshes: positives and negatives
    assert all((a == b).all() for a, b in zip(batches, epoch_batches(sampler, epoch=1), strict=True))
    assert any((a != b).any() for a, b in zip(batches, epoch_batches(sampler, epoch=2), strict=True))
    # a resumed epoch starts at a batch index and gets exactly the remaining batches
    assert all((a == b).all() for a, b in zip(batches[2:], epoch_batches(sampler, 1, start=2), strict=True))
    # the order is the epoch's P x K groups concatenated, a pure function of (seed, epoch)
    order = PKOrder(labels, batch_size=8, samples_per_label=4, seed=1)
    np.testing.assert_array_equal(np.concatenate(batches), order(1))
    with pytest.raises(DataError, match="P >= 2 and K >= 2"):
        pk_sampler(labels, batch_size=4, samples_per_label=4, seed=1)


def test_prefetch_matches_direct_batches_from_any_start(tiny_data):
    s = split(tiny_data, cache=True)
    batches = epoch_batches(pk_sampler(s.labels, 8, 4, seed=0), epoch=1)
    aug = MeshAugmentation()
    direct = [make_batch(s, b, aug, 0, 1, i * 8) for i, b in enumerate(batches)]
    threaded = list(prefetch(s, batches, augmentation=aug, seed=0, epoch=1, start=1, depth=2))
    assert [t[0] for t in threaded] == [1, 2]
    for (_, x, y), (dx, dy) in zip(threaded, direct[1:], strict=True):
        np.testing.assert_array_equal(x, dx)
        np.testing.assert_array_equal(y, dy)
