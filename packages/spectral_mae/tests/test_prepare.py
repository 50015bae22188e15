"""prepare on files written by the reference libraries (spectral's ENVI writer, rasterio, scipy.io, h5py as
MATLAB 7.3): the cubes equal numpy slices of the array written, the same from every format; band selection,
labels, no-data tiles; bad input is one clear error naming the file."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from common.cli import run_cli
from common.errors import DataError
from spectral_mae.bands import format_band_spec, parse_band_spec
from spectral_mae.data import load_band_stats, read_index
from spectral_mae.prepare import main, prepare

BANDS = "0-3,5,7-11"  # 10 bands: two groups of 5
BAND_LIST = [0, 1, 2, 3, 5, 7, 8, 9, 10, 11]


def cubes_by_origin(folder):
    """{(row, col): (cube, split)} of a prepared dataset."""
    out = {}
    for row in read_index(folder / "dataset.csv"):
        with h5py.File(row.path, "r") as f:
            out[(int(f.attrs["row"]), int(f.attrs["col"]))] = (f["cube"][()], row.split)
    return out


def test_every_format_gives_the_scene_cut_into_cubes(scene_files, scene_writers, tmp_path):
    SCENE_WAVELENGTHS_NM = scene_writers.wavelengths
    scene, files = scene_files["array"], scene_files["dir"]
    results = {}
    for name in ("scene.hdr", "scene.tif", "scene.mat", "scene_v73.mat"):
        out = tmp_path / name.replace(".", "_")
        summary = prepare([files / name], out, cube_size=20, bands=BANDS, val_fraction=0.25, variable=None)
        results[name] = cubes_by_origin(out)
        assert summary["band_indices"] == BAND_LIST and summary["bands"] == BANDS
    # 60 rows, a quarter (15) rounded up to one cube (20) for validation: rows 0-39 train, 40-59 val; 2 columns.
    expected = {(r, c): "train" if r < 40 else "val" for r in (0, 20, 40) for c in (0, 20)}
    for name, cubes in results.items():
        assert {k: split for k, (_, split) in cubes.items()} == expected, name
        for (r, c), (cube, _) in cubes.items():
            assert cube.dtype == np.float32 and cube.shape == (10, 20, 20)
            np.testing.assert_array_equal(cube, scene[r : r + 20, c : c + 20, BAND_LIST].transpose(2, 0, 1))

    envi_dir = tmp_path / "scene_hdr"
    record = json.loads((envi_dir / "prepare.json").read_text())
    np.testing.assert_allclose(record["wavelengths_nm"], SCENE_WAVELENGTHS_NM[BAND_LIST])
    with h5py.File(envi_dir / "cubes" / "scene_r00000_c00000.h5", "r") as f:
        np.testing.assert_allclose(f.attrs["wavelengths_nm"], SCENE_WAVELENGTHS_NM[BAND_LIST])
        assert list(f.attrs["band_indices"]) == BAND_LIST and f["rgb"].shape == (20, 20, 3)
    # GeoTIFF band descriptions "450.0 nm" give the wavelengths too (to their one decimal).
    tif_record = json.loads((tmp_path / "scene_tif" / "prepare.json").read_text())
    np.testing.assert_allclose(tif_record["wavelengths_nm"], SCENE_WAVELENGTHS_NM[BAND_LIST], atol=0.05)
    # Normalisation statistics: per band over the train pixels (rows 0-39), what the trainer reads.
    mean, std = load_band_stats(envi_dir / "band_stats.json", 10)
    train_pixels = scene[:40, :, BAND_LIST].reshape(-1, 10).astype(np.float64)
    np.testing.assert_allclose(mean, train_pixels.mean(0), rtol=1e-5)
    np.testing.assert_allclose(std, train_pixels.std(0), rtol=1e-4)


def test_labels_num_bands_and_stride(scene_files, tmp_path):
    files, labels = scene_files["dir"], scene_files["labels"]
    out = tmp_path / "labelled"
    summary = prepare(
        [files / "scene.mat"],
        out,
        cube_size=20,
        stride=10,
        num_bands=4,
        val_fraction=0.0,
        labels_from=[files / "scene_v73.mat"],
        labels_variable="scene_gt",
    )
    assert summary["band_indices"] == [0, 4, 7, 11]  # evenly spaced over 12 bands
    assert summary["cubes_train"] == 5 * 3 and summary["cubes_val"] == 0  # origins 0..40 x 0..20, step 10
    with h5py.File(out / "cubes" / "scene_r00030_c00010.h5", "r") as f:
        np.testing.assert_array_equal(f["labels"][()], labels[30:50, 10:30])


def test_nodata_and_nan_tiles_are_skipped_and_counted(scene_files, scene_writers, tmp_path, capsys):
    scene = scene_files["array"].copy()
    scene[5, 25, 3] = np.nan  # in tile (0, 20)
    scene[45, 5, :] = -9999.0  # ENVI 'data ignore value': in tile (40, 0)
    scene_writers.envi(tmp_path / "holes.hdr", scene, **{"data ignore value": -9999})
    run_cli(
        main,
        [
            str(tmp_path / "holes.hdr"),
            "--output",
            str(tmp_path / "out"),
            "--cube-size",
            "20",
            "--val-fraction",
            "0.3",
        ],
    )
    printed = capsys.readouterr().out
    assert "3 train + 1 val cubes; 2 skipped for NaN/inf/no-data" in printed
    assert "model.img_size=20 model.in_chans=12" in printed
    cubes = cubes_by_origin(tmp_path / "out")
    assert set(cubes) == {(0, 0), (20, 0), (20, 20), (40, 20)}


def test_band_spec_round_trip():
    assert parse_band_spec("10-12, 55", 60, "s") == [10, 11, 12, 55]
    assert format_band_spec([10, 11, 12, 55]) == "10-12,55"
    with pytest.raises(DataError, match="range 5-3 runs backwards"):
        parse_band_spec("5-3", 60, "s")


def fails(args, capsys) -> str:
    """Run the CLI expecting a user error: exit status 2 and one paragraph on stderr, no traceback."""
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, [str(a) for a in args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    return err


def test_bad_scenes_are_refused_naming_the_file(scene_files, scene_writers, tmp_path, capsys):
    scene = scene_files["array"]
    scene_writers.envi(tmp_path / "cut.hdr", scene)
    size = (tmp_path / "cut.img").stat().st_size
    with open(tmp_path / "cut.img", "r+b") as f:
        f.truncate(size - 4 * 60 * 40)  # one band's worth short
    err = fails([tmp_path / "cut.hdr", "--output", tmp_path / "o1", "--cube-size", "20"], capsys)
    assert "cut.hdr: 'lines = 60, samples = 40, bands = 12'" in err and "cut.img holds" in err
    assert "11.00 bands' worth" in err

    err = fails([scene_files["dir"] / "scene.tif", "--output", tmp_path / "o2", "--bands", "0-12"], capsys)
    assert "scene.tif: --bands '0-12' asks for band 12, but the scene has 12 bands" in err

    scene_writers.envi(tmp_path / "dark.hdr", np.full_like(scene, np.nan))
    err = fails([tmp_path / "dark.hdr", "--output", tmp_path / "o3", "--cube-size", "20"], capsys)
    assert "dark.hdr: 100.0% of the values in the selected bands are NaN" in err

    import scipy.io

    scipy.io.savemat(tmp_path / "two.mat", {"a": scene, "b": scene})
    err = fails([tmp_path / "two.mat", "--output", tmp_path / "o4"], capsys)
    assert "two.mat: several 3-D variables" in err and "--variable" in err

    err = fails([scene_files["dir"] / "scene.mat", "--output", tmp_path / "o5", "--cube-size", "80"], capsys)
    assert "scene.mat: the scene is 60x40 pixels, smaller than one 80x80 cube" in err

    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("")
    err = fails([scene_files["dir"] / "scene.mat", "--output", tmp_path / "taken"], capsys)
    assert "already exists and is not empty" in err
    # Nothing half-written is left behind by the refused runs.
    assert not [p for p in tmp_path.iterdir() if p.name.startswith((".o", "o"))]
