"""Shared fixtures: a tiny synthetic dataset (20x20 pixels, 10 bands) and a matching tiny config; one small
scene written as ENVI, GeoTIFF and MATLAB files by their reference libraries."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from spectral_mae import config as config_module
from spectral_mae.synthetic import SyntheticSpec, write_dataset

torch.set_num_threads(1)

# 20x20x10 cubes cut in 5x5x5 tokens: 2 spectral groups x 4 x 4 = 32 tokens; a two-block model.
TINY_MODEL = [
    "model.name=test_tiny",
    "model.img_size=20",
    "model.patch_size=[5,5]",
    "model.in_chans=10",
    "model.embed_dim=32",
    "model.encoder_depth=2",
    "model.encoder_num_heads=2",
    "model.decoder_embed_dim=16",
    "model.decoder_depth=1",
    "model.decoder_num_heads=2",
    "model.mask_ratio=0.75",
]


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """CSV path of 8 synthetic cubes (6 train, 2 val), written once per session."""
    out = tmp_path_factory.mktemp("tiny_data")
    return write_dataset(
        out, SyntheticSpec(num_images=8, size=20, bands=10, val_fraction=0.25, num_vessels=2)
    )


@pytest.fixture(scope="session")
def config_factory(tiny_data):
    """config_factory(out_dir, *overrides), for fixtures wider than one test."""
    return lambda out_dir, *extra: tiny_config(tiny_data, out_dir, *extra)


@pytest.fixture
def make_config(tiny_data, tmp_path):
    """make_config(*overrides): the tiny config on the bundled default; MLflow off unless turned on."""

    def build(*extra: str, out_dir=None):
        return tiny_config(tiny_data, out_dir or tmp_path / "runs", *extra)

    return build


@pytest.fixture(scope="session")
def override_factory(tiny_data):
    """override_factory(out_dir, *overrides): the tiny config as command-line overrides (for subprocesses)."""
    return lambda out_dir, *extra: tiny_overrides(tiny_data, out_dir, *extra)


def tiny_config(csv_file, out_dir, *extra: str):
    return config_module.load("config", overrides=tiny_overrides(csv_file, out_dir, *extra))


def tiny_overrides(csv_file, out_dir, *extra: str) -> list[str]:
    return [
        *TINY_MODEL,
        f"dataset.csv_file={csv_file}",
        f"general.output_dir={out_dir}",
        "general.num_workers=0",
        "general.log_every_n_steps=1",
        "hparams.epochs=2",
        "hparams.batch_size=2",
        "hparams.valid_interval=1",
        "optimizer.lr=1e-3",
        "show_prediction.nb_to_plot=2",
        "show_prediction.dpi=40",
        "mlflow.enabled=false",
        *extra,
    ]


def _assert_weights_close(expected: dict, actual: dict, *, rtol: float, atol: float, lr: float) -> None:
    """Same parameters to tolerance, except attention key biases, which are only checked to stay bounded.

    The key bias has an exactly-zero gradient (softmax ignores a shift of all scores), so what it gets is float
    round-off, which Adam normalises into steps of up to lr: bounded, not reproducible across summation orders.
    """
    assert expected.keys() == actual.keys()
    for name, want in expected.items():
        got = actual[name]
        if name.endswith(
            "qkv.bias"
        ):  # every attention: encoder, joint or divided (spectral and spatial) decoder
            (q, k, v), (q_got, k_got, v_got) = np.split(want, 3), np.split(got, 3)
            assert np.abs(k_got - k).max() <= 2 * lr * 2, name
            want, got = np.concatenate([q, v]), np.concatenate([q_got, v_got])
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=name)


@pytest.fixture(scope="session")
def assert_weights_close():
    """assert_weights_close(expected_state, actual_state, rtol=, atol=, lr=): see _assert_weights_close."""
    return _assert_weights_close


# -- real-format scenes (prepare / embed tests) ---------------------------------------------------------------
SCENE_WAVELENGTHS_NM = np.linspace(450.0, 900.0, 12)


def two_material_scene(rows: int = 60, cols: int = 40, bands: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols, bands) float32 reflectance and its (rows, cols) int label map: two materials (labels 1
    and 2) either side of a wavy boundary, under a smooth illumination field, with sensor noise; they differ
    in spectral shape, and brightness alone does not tell them apart."""
    rng = np.random.default_rng(7)
    lam = np.linspace(0.0, 1.0, bands)
    first_spectrum = 0.25 + 0.3 * lam  # rising, vegetation-like
    second_spectrum = (
        0.55 - 0.35 * lam + 0.1 * np.exp(-0.5 * ((lam - 0.3) / 0.1) ** 2)
    )  # falling, with a bump
    yy, xx = np.mgrid[0:rows, 0:cols]
    labels = np.where(xx > cols / 2 + 6 * np.sin(yy / 8.0), 2, 1)
    spectra = np.where((labels == 2)[..., None], second_spectrum, first_spectrum)  # (rows, cols, bands)
    illumination = 0.85 + 0.15 * np.sin(yy / 9.0)[..., None] * np.cos(xx / 7.0)[..., None]
    scene = spectra * illumination + rng.normal(0, 0.01, (rows, cols, bands))
    return scene.astype(np.float32), labels.astype(np.uint8)


def write_envi(path, scene: np.ndarray, **metadata) -> None:
    import spectral.io.envi as envi

    meta = {"wavelength": list(SCENE_WAVELENGTHS_NM[: scene.shape[2]]), "wavelength units": "nm", **metadata}
    envi.save_image(str(path), scene, metadata=meta, force=True)


def write_geotiff(path, scene: np.ndarray) -> None:
    import rasterio
    from affine import Affine

    rows, cols, bands = scene.shape
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        height=rows,
        width=cols,
        count=bands,
        dtype=scene.dtype.name,
        crs="EPSG:32633",
        transform=Affine(1.0, 0.0, 500000.0, 0.0, -1.0, 4000000.0),
    ) as dst:
        dst.write(np.moveaxis(scene, -1, 0))  # rasterio: bands first
        for band in range(bands):
            dst.set_band_description(band + 1, f"{SCENE_WAVELENGTHS_NM[band]:.1f} nm")


def write_mat(path, scene: np.ndarray, labels: np.ndarray) -> None:
    import scipy.io

    scipy.io.savemat(path, {"scene_corrected": scene.astype(np.float64), "scene_gt": labels})


def write_mat_v73(path, scene: np.ndarray, labels: np.ndarray) -> None:
    """A MATLAB 7.3 file as MATLAB writes one: HDF5 behind a 512-byte text header, arrays column-major."""
    import h5py

    with h5py.File(path, "w", userblock_size=512) as f:
        f.create_dataset("scene_corrected", data=scene.astype(np.float64).T)
        f.create_dataset("scene_gt", data=labels.T)
    text = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2026 HDF5 schema 1.00 ."
    with open(path, "r+b") as f:  # 116 bytes of text, 8 of subsystem offset, version 0x0200, endian "IM"
        f.write(text.ljust(116) + b" " * 8 + b"\x00\x02" + b"IM")


@pytest.fixture(scope="session")
def scene_files(tmp_path_factory):
    """The same two-material scene as ENVI, GeoTIFF, .mat and v7.3 .mat, with the array and labels."""
    out = tmp_path_factory.mktemp("scenes")
    scene, labels = two_material_scene()
    write_envi(out / "scene.hdr", scene)
    write_geotiff(out / "scene.tif", scene)
    write_mat(out / "scene.mat", scene, labels)
    write_mat_v73(out / "scene_v73.mat", scene, labels)
    return {"dir": out, "array": scene, "labels": labels}


@pytest.fixture(scope="session")
def scene_writers():
    """The writers above for tests that make their own scene files (test modules cannot import conftest)."""
    return SimpleNamespace(
        envi=write_envi,
        geotiff=write_geotiff,
        mat=write_mat,
        mat_v73=write_mat_v73,
        wavelengths=SCENE_WAVELENGTHS_NM,
    )
