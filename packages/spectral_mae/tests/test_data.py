"""Synthetic generator, CSV/HDF5 reading, up-front validation, augmentation, batch layout of the loaders."""

from __future__ import annotations

import csv
import json

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from common.errors import DataError
from common.sampler import ResumableSampler
from spectral_mae.data import EpochKeyedBatches, SegmentationDataset, keyed_loader, read_cube
from spectral_mae.stats import main as stats_main
from spectral_mae.synthetic import SyntheticSpec, make_cube, write_dataset


def dataset(csv_file, **kw):
    args = dict(bands=10, img_size=20, patch_size=5)
    return SegmentationDataset(csv_file, **{**args, **kw})


def test_generator_is_deterministic_and_structured(tiny_data):
    spec = SyntheticSpec(num_images=8, size=20, bands=10, val_fraction=0.25, num_vessels=2)
    cube = read_cube(tiny_data.parent / "cubes" / "cube_0000.h5")
    assert cube.shape == (10, 20, 20) and np.array_equal(cube, make_cube(spec, 0))
    assert not np.array_equal(cube, make_cube(spec, 1))
    # Real structure: neighbouring bands and neighbouring pixels are far more alike than random pairs.
    band_diff = np.abs(np.diff(cube, axis=0)).mean()
    pixel_diff = np.abs(np.diff(cube, axis=2)).mean()
    shuffled = np.random.default_rng(0).permutation(cube.reshape(-1)).reshape(cube.shape)
    assert band_diff < 0.5 * np.abs(np.diff(shuffled, axis=0)).mean()
    assert pixel_diff < 0.5 * np.abs(np.diff(shuffled, axis=2)).mean()
    rows = list(csv.DictReader(tiny_data.read_text().splitlines()))
    assert [r["split"] for r in rows].count("val") == 2
    assert (tiny_data.parent / "previews" / "cube_0000.png").is_file()
    stats = json.loads((tiny_data.parent / "band_stats.json").read_text())
    assert len(stats["mean"]) == 10 and min(stats["std"]) > 0


def test_dataset_items_normalised_with_noise_and_rgb(tiny_data):
    ds = dataset(tiny_data, num_tokens=32, load_rgb=True)
    item = ds[(0, 1)]
    assert (
        item["cube"].shape == (10, 20, 20)
        and item["noise"].shape == (32,)
        and item["rgb"].shape == (20, 20, 3)
    )
    all_train = torch.stack([ds[i]["cube"] for i in range(len(ds))])
    assert abs(all_train.mean().item()) < 0.05 and abs(all_train.std().item() - 1) < 0.05
    # same (epoch, index) -> same sample; another epoch -> another mask noise
    assert torch.equal(ds[(3, 1)]["noise"], ds[(3, 1)]["noise"])
    assert not torch.equal(ds[(3, 1)]["noise"], ds[(4, 1)]["noise"])


def test_augmentation_moves_cube_and_rgb_together(tiny_data):
    plain = dataset(tiny_data, load_rgb=True, normalize=False)
    aug = dataset(tiny_data, load_rgb=True, normalize=False, transform_type="augment_basic")
    changed = 0
    for epoch in range(6):
        a, p = aug[(epoch, 0)], plain[(epoch, 0)]
        # Find the flip/rotation that maps the plain cube onto the augmented one; the RGB follows it.
        for k in range(4):
            for flip in (False, True):
                c, r = p["cube"].numpy(), p["rgb"].numpy()
                if flip:
                    c, r = c[:, :, ::-1], r[:, ::-1]
                c, r = np.rot90(c, k, axes=(1, 2)), np.rot90(r, k, axes=(0, 1))
                if np.array_equal(c, a["cube"].numpy()):
                    assert np.array_equal(r, a["rgb"].numpy())
                    changed += (k, flip) != (0, False)
                    break
            else:
                continue
            break
        else:
            pytest.fail("augmented cube is not a flip/rotation of the original")
    assert changed > 0


def _write_cube(path, cube):
    with h5py.File(path, "w") as f:
        f.create_dataset("cube", data=cube)


@pytest.mark.parametrize(
    "problem, fragment",
    [
        ("missing", "does not exist"),
        ("bands", "10 bands"),
        ("nan", "NaN"),
        ("indivisible", "not divisible"),
    ],
)
def test_validation_names_the_bad_file(tmp_path, problem, fragment):
    cube = np.random.default_rng(0).random((10, 20, 20), dtype=np.float32)
    bad = tmp_path / "bad.h5"
    if problem == "bands":
        _write_cube(bad, cube[:7])
    elif problem == "nan":
        cube[3, 4, 5] = np.nan
        _write_cube(bad, cube)
    elif problem == "indivisible":
        _write_cube(bad, np.zeros((10, 22, 22), np.float32))
    (tmp_path / "index.csv").write_text("path,split\nbad.h5,train\n")
    with pytest.raises(DataError, match=fragment) as info:
        dataset(tmp_path / "index.csv", normalize=False)
    assert "bad.h5" in str(info.value)


def test_missing_stats_file_explains_the_command(tmp_path):
    csv_file = write_dataset(tmp_path, SyntheticSpec(num_images=2, size=20, bands=10))
    (tmp_path / "band_stats.json").unlink()
    with pytest.raises(DataError, match="spectral_mae.stats"):
        dataset(csv_file)
    result = CliRunner().invoke(stats_main, [str(csv_file)])
    assert result.exit_code == 0, result.output
    assert dataset(csv_file).mean.shape == (10,)


def test_batches_of_the_ranks_share_the_single_process_global_batches():
    n, per_rank, world = 11, 2, 2

    def keys(batch_size, rank=0, world_size=1, epoch=3, start=0):
        sampler = ResumableSampler(n, batch_size, seed=3, rank=rank, world_size=world_size)
        sampler.set_epoch(epoch, start)
        return list(EpochKeyedBatches(sampler))

    single = keys(per_rank * world)
    ranks = [keys(per_rank, r, world) for r in range(world)]
    assert len(single) == 2 and all(len(r) == 2 for r in ranks)  # drop_last: 2 global batches of 4
    assert all(epoch == 3 for batch in single for epoch, _ in batch)  # keys carry the epoch for the masks
    for i in range(2):
        assert {k for r in ranks for k in r[i]} == set(single[i])
    assert keys(per_rank * world, start=1) == single[1:]  # a resumed epoch starts at its batch index


def test_loader_reads_each_epochs_samples_and_leaves_the_global_rng_alone(tiny_data):
    ds = dataset(tiny_data, num_tokens=32, transform_type="augment_basic")
    sampler = ResumableSampler(len(ds), 3, seed=0)
    loader = keyed_loader(ds, sampler)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    sampler.set_epoch(2)
    (first, second) = list(loader)
    assert torch.equal(torch.get_rng_state(), before)
    index = int(second["index"][1])
    assert torch.equal(second["noise"][1], ds[(2, index)]["noise"])
    assert torch.equal(second["cube"][1], ds[(2, index)]["cube"])
