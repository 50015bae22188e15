"""evaluate_model_dataloader, load_from_checkpoint and the evaluate CLI on a trained checkpoint; the bench's
FLOP count."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch.utils.data import DataLoader

from common.checkpoint import load_checkpoint
from common.runs import RunFolder
from common.sampler import ResumableSampler
from spectral_mae.bench import bench_model
from spectral_mae.evaluate import evaluate_model_dataloader
from spectral_mae.evaluate import main as evaluate_main
from spectral_mae.factory import (
    Denormalizer,
    build_dataset,
    build_loss_from_config,
    build_model_from_config,
    load_from_checkpoint,
)
from spectral_mae.model import build_model
from spectral_mae.trainer import train


def test_evaluate_model_dataloader_writes_metrics_and_figures(make_config, tmp_path):
    cfg = make_config()
    model = build_model_from_config(cfg)
    dataset = build_dataset(cfg, "val", augment=False)
    loader = DataLoader(
        dataset, batch_sampler=ResumableSampler(len(dataset), 2, shuffle=False, drop_last=False)
    )
    out = tmp_path / "eval"
    denorm = Denormalizer(dataset, torch.device("cpu"))
    metrics = evaluate_model_dataloader(
        model, loader, out, loss_fn=build_loss_from_config(cfg), denorm=denorm, nb_to_plot=2, dpi=40
    )
    assert set(metrics) >= {"loss", "mse", "sam", "recon_mse", "sam_deg", "psnr", "ssim"}
    assert json.loads((out / "metrics.json").read_text()) == pytest.approx(metrics)
    for kind in ("rgb_reconstruction", "mse_per_wavelength", "spectral_comparison"):
        assert (out / f"{kind}_eval.png").is_file()
    # Masks come from the items' noise: evaluating twice gives the same numbers.
    again = evaluate_model_dataloader(model, loader, tmp_path / "eval2", denorm=denorm, nb_to_plot=0)
    assert again["psnr"] == pytest.approx(metrics["psnr"])


def test_evaluate_cli_on_a_trained_checkpoint(make_config, tmp_path):
    cfg = make_config("hparams.epochs=1")
    result = train(
        cfg, RunFolder(tmp_path / "run"), device=torch.device("cpu"), logger=logging.getLogger("t")
    )
    out = tmp_path / "cli_eval"
    cli = CliRunner().invoke(
        evaluate_main, [str(result.best_checkpoint), "--output-dir", str(out), "--device", "cpu"]
    )
    assert cli.exit_code == 0, cli.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["loss"] == pytest.approx(result.metrics["val/loss"])


def test_load_from_checkpoint_gives_the_trained_model_ready_for_inference(make_config, tmp_path):
    cfg = make_config("hparams.epochs=1", "show_prediction.enabled=false")
    run = RunFolder(tmp_path / "run")
    result = train(cfg, run, device=torch.device("cpu"), logger=logging.getLogger("t"))
    trained = load_checkpoint(result.best_checkpoint)["model"]
    for path in (result.best_checkpoint, run.path("best_model_weights.ckpt"), run.checkpoints / "last.ckpt"):
        model, loaded_cfg = load_from_checkpoint(path)
        assert not model.training and loaded_cfg.model.name == "test_tiny"
        assert next(model.parameters()).device == torch.device("cpu")
        for name, value in model.state_dict().items():
            assert np.array_equal(value.numpy(), trained[name]), name
        cube = torch.zeros(1, 10, 20, 20)
        pred, mask = model(cube, torch.rand(1, model.num_patches))
        assert pred.shape == (1, 32, 125) and mask.shape == (1, 32)


def test_bench_counts_the_training_step_flops():
    model = build_model(
        img_size=20,
        patch_size=(5, 5),
        in_chans=10,
        embed_dim=32,
        encoder_depth=1,
        encoder_num_heads=2,
        decoder_embed_dim=16,
        decoder_depth=1,
        decoder_num_heads=2,
    )
    r = bench_model(
        "tiny",
        model,
        batch_size=2,
        steps=1,
        warmup=1,
        device=torch.device("cpu"),
        peak_gflops=10.0,
        amp=False,
    )
    # Forward matmul FLOPs of the patch embedding alone: 2 * visible tokens * 125 * 32; fwd+bwd is ~3x that.
    visible = int(32 * (1 - model.mask_ratio))
    assert r.gflop_per_sample * 1e9 > 3 * 2 * visible * 125 * 32
    assert (
        r.samples_per_s > 0 and r.tokens == 32 and r.share_of_peak == pytest.approx(r.achieved_gflops / 10.0)
    )
