"""From real-format files to answers: an ENVI scene written by `spectral` -> prepare -> a short training ->
embed. Embeddings have the scene's patch grid, are deterministic and finite, separate the scene's two
materials, equal the encoder's output on each tile (stitching) and, per pixel, the bilinear upsampling of
the patch grid; reconstructions come with metrics in the scene's units that match a numpy recomputation."""

from __future__ import annotations

import json
import logging

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from common.cli import run_cli
from common.runs import RunFolder
from spectral_mae import config as config_module
from spectral_mae.embed import main
from spectral_mae.inference import encode_scene, load_trained_model, model_bands, read_standardised
from spectral_mae.prepare import prepare
from spectral_mae.scenes import open_scene
from spectral_mae.trainer import train

BANDS = "0-3,5,7-11"  # 10 of the scene's 12 bands
BAND_LIST = [0, 1, 2, 3, 5, 7, 8, 9, 10, 11]
PATCH = 5


@pytest.fixture(scope="module")
def trained(scene_files, tmp_path_factory):
    """Checkpoint of a few steps on the ENVI scene's cubes (20x20, 10 bands, 5x5x5 tokens)."""
    out = tmp_path_factory.mktemp("embed")
    prepare([scene_files["dir"] / "scene.hdr"], out / "data", cube_size=20, bands=BANDS, val_fraction=0.25)
    cfg = config_module.load(
        "config",
        overrides=[
            "model=mae_tiny",
            "model.img_size=20",
            f"model.patch_size=[{PATCH},5]",
            "model.in_chans=10",
            "model.embed_dim=32",
            "model.encoder_depth=2",
            "model.encoder_num_heads=2",
            "model.decoder_embed_dim=16",
            "model.decoder_depth=1",
            "model.decoder_num_heads=2",
            f"dataset.csv_file={out / 'data' / 'dataset.csv'}",
            "hparams.epochs=3",
            "hparams.batch_size=2",
            "hparams.valid_interval=3",
            "optimizer.lr=1e-3",
            "show_prediction.enabled=false",
            "mlflow.enabled=false",
            "general.num_workers=0",
        ],
    )
    result = train(
        cfg, RunFolder(out / "run"), device=torch.device("cpu"), logger=logging.getLogger("embed_test")
    )
    return {"checkpoint": result.best_checkpoint, "dir": out}


def embed(*args) -> None:
    run_cli(main, [str(a) for a in args] + ["--device", "cpu"])


def test_patch_embeddings_grid_determinism_and_content(trained, scene_files, tmp_path):
    scene_hdr, labels = scene_files["dir"] / "scene.hdr", scene_files["labels"]
    embed("--checkpoint", trained["checkpoint"], "--input", scene_hdr, "--output", tmp_path / "a.h5")
    embed("--checkpoint", trained["checkpoint"], "--input", scene_hdr, "--output", tmp_path / "b.h5")
    with h5py.File(tmp_path / "a.h5", "r") as f, h5py.File(tmp_path / "b.h5", "r") as g:
        emb = f["embeddings"][()]
        np.testing.assert_array_equal(emb, g["embeddings"][()])  # deterministic: no random mask, no dropout
        assert emb.shape == (60 // PATCH, 40 // PATCH, 32) and np.isfinite(emb).all()
        assert f["valid"].shape == (12, 8) and (f["valid"][()] == 1).all()
        # The band selection came from the training data's prepare.json; metadata says what was used.
        assert list(f.attrs["band_indices"]) == BAND_LIST and list(f.attrs["patch_size"]) == [PATCH, 5]
        assert f.attrs["checkpoint"] == str(trained["checkpoint"].resolve()) and f.attrs["level"] == "patch"
        np.testing.assert_allclose(f.attrs["wavelengths_nm"], np.linspace(450, 900, 12)[BAND_LIST])
    # Content: the patches wholly of one material are told apart by their embeddings. The model has seen six
    # steps only, so the test is the usual one for self-supervised features, a linear probe: ridge regression
    # fitted on the even patch columns classifies the odd ones (chance: 55%); nearest material centroid too.
    patch_labels = labels.reshape(12, PATCH, 8, PATCH).transpose(0, 2, 1, 3).reshape(12, 8, -1)
    pure = (patch_labels == patch_labels[..., :1]).all(-1)
    x, y = emb[pure], patch_labels[pure][:, 0]
    assert min((y == 1).sum(), (y == 2).sum()) >= 30
    features, target = np.c_[x, np.ones(len(x))], np.where(y == 2, 1.0, -1.0)
    fit = np.argwhere(pure)[:, 1] % 2 == 0
    weights = np.linalg.solve(
        features[fit].T @ features[fit] + 0.1 * np.eye(features.shape[1]), features[fit].T @ target[fit]
    )
    assert (np.sign(features[~fit] @ weights) == target[~fit]).mean() >= 0.95
    centroids = np.stack([x[y == k].mean(0) for k in (1, 2)])
    nearest_centroid = 1 + np.argmin(((x[:, None] - centroids[None]) ** 2).sum(-1), axis=1)
    assert (nearest_centroid == y).mean() >= 0.8


def test_stitched_scene_equals_the_encoder_on_each_tile(trained, scene_files, scene_writers, tmp_path):
    """A 45x33 GeoTIFF (not whole tiles): the grid is ceil(45/5) x ceil(33/5); every full tile's patches are
    exactly the encoder's tokens for that tile, averaged over the spectral groups."""
    scene_writers.geotiff(tmp_path / "odd.tif", scene_files["array"][:45, :33])
    model = load_trained_model(trained["checkpoint"], torch.device("cpu"))
    scene = open_scene(tmp_path / "odd.tif")
    cube, valid = read_standardised(model, scene, model_bands(model, scene, None, None))
    grid = encode_scene(model, cube)
    assert grid.shape == (9, 7, 32) and valid.all()
    with torch.no_grad():
        tile = torch.from_numpy(cube[None, :, 20:40, 0:20])
        tokens = model.model.forward_features(tile).reshape(2, 4, 4, 32).mean(0).numpy()
    np.testing.assert_allclose(grid[4:8, 0:4], tokens, atol=1e-5)


def test_pixel_embeddings_are_the_upsampled_patch_grid(trained, scene_files, tmp_path):
    scene_mat = scene_files["dir"] / "scene.mat"
    embed("--checkpoint", trained["checkpoint"], "--input", scene_mat, "--output", tmp_path / "p.npy")
    embed(
        "--checkpoint",
        trained["checkpoint"],
        "--input",
        scene_mat,
        "--output",
        tmp_path / "px.npy",
        "--level",
        "pixel",
    )
    patches, pixels = np.load(tmp_path / "p.npy"), np.load(tmp_path / "px.npy")
    assert patches.shape == (12, 8, 32) and pixels.shape == (60, 40, 32)
    expected = F.interpolate(
        torch.from_numpy(patches).permute(2, 0, 1)[None],
        scale_factor=PATCH,
        mode="bilinear",
        align_corners=False,
    )[0].permute(1, 2, 0)
    np.testing.assert_allclose(pixels, expected.numpy(), atol=1e-6)  # strips stitched = one whole upsampling
    meta = json.loads((tmp_path / "px.json").read_text())
    assert meta["level"] == "pixel" and meta["shape"] == [60, 40, 32] and meta["band_indices"] == BAND_LIST


def test_reconstruction_images_and_metrics_in_scene_units(trained, scene_files, tmp_path):
    out = tmp_path / "recon"
    embed(
        "--checkpoint",
        trained["checkpoint"],
        "--input",
        scene_files["dir"] / "scene.hdr",
        "--reconstruct",
        out,
    )
    for name in ("comparison.png", "band_error.png"):
        assert (out / name).stat().st_size > 5000
    metrics = json.loads((out / "metrics.json").read_text())
    with h5py.File(out / "reconstruction.h5", "r") as f:
        recon, original = f["cube"][()], f["original"][()]
    # The original is the scene itself (bands as trained), in the file's units, not standardised.
    np.testing.assert_allclose(original, scene_files["array"][:, :, BAND_LIST].transpose(2, 0, 1), atol=1e-5)
    err = recon.astype(np.float64) - original
    assert metrics["units"] == "file units" and metrics["rmse_units"] == "file units"
    assert metrics["rmse"] == pytest.approx(np.sqrt((err**2).mean()), rel=1e-6)
    np.testing.assert_allclose(metrics["band_rmse"], np.sqrt((err**2).mean((1, 2))), rtol=1e-6)
    assert "not physical" in metrics["mse_standardised_units"]
    assert np.isfinite(recon).all() and not np.allclose(recon, original)  # predicted, not copied
    bands_csv = (out / "band_errors.csv").read_text().splitlines()
    assert bands_csv[0].startswith("band,wavelength_nm,rmse (file units)") and len(bands_csv) == 11


def test_bad_embed_inputs(trained, scene_files, tmp_path, capsys):
    def fails(*args) -> str:
        with pytest.raises(SystemExit) as exit_info:
            embed("--checkpoint", trained["checkpoint"], *args)
        assert exit_info.value.code == 2
        return capsys.readouterr().err

    err = fails(
        "--input", scene_files["dir"] / "scene.tif", "--output", tmp_path / "e.h5", "--num-bands", "6"
    )
    assert "scene.tif: 6 bands selected, but best_model.ckpt reads 10 (model.in_chans)" in err
    err = fails("--input", scene_files["dir"] / "scene.tif", "--output", tmp_path / "e.csv")
    assert "write embeddings to a .h5 or .npy file" in err
    (tmp_path / "taken.h5").write_text("")
    err = fails("--input", scene_files["dir"] / "scene.tif", "--output", tmp_path / "taken.h5")
    assert "already exists" in err and "--overwrite" in err
