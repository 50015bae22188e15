"""Evaluation: loss parts and reconstruction metrics over a dataloader, metrics JSON and figures (the work
behind `python -m spectral_mae.evaluate`, imported when it runs).

from spectral_mae import evaluate_model_dataloader, load_trained_model
model = load_trained_model(checkpoint_path)
results = evaluate_model_dataloader(model=model, dataloader=test_loader, output_folder="results/")

python -m spectral_mae.evaluate RUN_DIR/checkpoints/best_model.ckpt --split val --output-dir results/
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from common.devices import torch_device
from common.runs import atomic_write_text
from common.sampler import ResumableSampler
from common.torch_support import unwrap
from spectral_mae.config import METRIC_NAMES
from spectral_mae.factory import (
    Denormalizer,
    accuracy_threshold,
    build_dataset,
    build_loss_from_config,
    config_from_checkpoint,
    load_from_checkpoint,
    load_trained_model,
)
from spectral_mae.losses import MAESpectralLoss
from spectral_mae.metrics import mse_per_band, reconstruction_metrics, spectral_angle_accuracy
from spectral_mae.visualize import write_prediction_figures

__all__ = [
    "config_from_checkpoint",
    "evaluate_model_dataloader",
    "load_from_checkpoint",
    "evaluate_checkpoint",
    "load_trained_model",
    "mean_baseline_mse",
    "run_evaluation",
]


def mean_baseline_mse(target: torch.Tensor, mask: torch.Tensor) -> float:
    """Masked-token MSE of predicting 0 everywhere, on (B, L, t*p*p) normalised tokens and the (B, L) mask.

    With the bands standardised by the train split's statistics, 0 is the per-band train mean: this is the
    figure a model that learned only the mean reaches, the yardstick for the loss part `mse` (same tokens).
    """
    return float(((target.float() ** 2).mean(-1) * mask).sum() / mask.sum().clamp_min(1))


@torch.no_grad()
def run_evaluation(
    model,
    loader,
    *,
    device,
    loss_fn: MAESpectralLoss | None = None,
    denorm=None,
    autocast=contextlib.nullcontext,
    keep: int = 0,
    metric_names: tuple[str, ...] | list[str] = METRIC_NAMES,
    accuracy_threshold_deg: float | None = None,
):
    """Means over the loader of the loss parts (when loss_fn) and reconstruction metrics (physical units):
    `metric_names` (config `metric.names`), and `accuracy` (the share of pixels within
    `accuracy_threshold_deg` of their spectrum, config `accuracy=spectral_angle`) when a threshold is given.

    Returns (metrics, examples): examples holds the first `keep` samples' original/reconstruction/mask
    cubes, per-band MSE and RGB images for the figures (None when keep == 0).
    """
    net = unwrap(model).eval()
    denorm = denorm or (lambda x: x)
    sums: dict[str, float] = {}
    band_err = None
    seen = 0
    examples = None
    for batch in loader:
        cube = batch["cube"].to(device)  # (B, C, H, W), normalised
        noise = batch["noise"].to(device) if "noise" in batch else None
        with autocast():
            pred, mask = net(cube, noise)  # (B, L, t*p*p), (B, L)
        pred = pred.float()
        target = net.patchify(cube)  # (B, L, t*p*p), normalised units
        values = {k: float(v) for k, v in loss_fn(pred, target, mask).items()} if loss_fn else {}
        values["mean_baseline_mse"] = mean_baseline_mse(target, mask)
        original, recon = denorm(cube), denorm(net.reconstruct(cube, pred, mask))  # physical units
        voxel_mask = net.mask_to_cube(mask)
        values.update(reconstruction_metrics(recon, original, voxel_mask, metric_names))
        if accuracy_threshold_deg is not None:
            values["accuracy"] = spectral_angle_accuracy(recon, original, accuracy_threshold_deg)
        n = cube.shape[0]
        for name, value in values.items():
            sums[name] = sums.get(name, 0.0) + value * n
        band = mse_per_band(recon, original, voxel_mask) * n
        band_err = band if band_err is None else band_err + band
        seen += n
        if keep and examples is None:
            examples = {
                "original": original[:keep].cpu(),
                "recon": recon[:keep].cpu(),
                "mask": voxel_mask[:keep].cpu(),
                "rgb": batch["rgb"][:keep] if "rgb" in batch else None,
            }
    if not seen:
        raise ValueError("evaluation dataloader yielded no batches")
    if examples is not None:
        examples["mse_per_band"] = (band_err / seen).cpu()
    return {name: total / seen for name, total in sums.items()}, examples


def evaluate_model_dataloader(
    model,
    dataloader,
    output_folder,
    *,
    device=None,
    loss_fn=None,
    denorm=None,
    nb_to_plot: int = 4,
    save_format: str = "png",
    dpi: int = 150,
    metric_names: tuple[str, ...] | list[str] = METRIC_NAMES,
    accuracy_threshold_deg: float | None = None,
) -> dict[str, float]:
    """Evaluate `model` on `dataloader`; write `metrics.json` and the figures into `output_folder`.

    Batches are dicts with "cube" (B, C, H, W) and optionally "noise" (B, L) for reproducible masks and "rgb".
    Metrics are computed on `denorm(cube)` (physical units) when a de-normaliser is given.
    """
    device = device or next(unwrap(model).parameters()).device
    out = Path(output_folder)
    out.mkdir(parents=True, exist_ok=True)
    metrics, examples = run_evaluation(
        model,
        dataloader,
        device=device,
        loss_fn=loss_fn,
        denorm=denorm,
        keep=nb_to_plot,
        metric_names=metric_names,
        accuracy_threshold_deg=accuracy_threshold_deg,
    )
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2))
    if examples is not None:
        write_prediction_figures(
            out,
            "eval",
            examples["original"],
            examples["recon"],
            examples["mask"],
            examples["mse_per_band"],
            reference_rgb=examples["rgb"],
            fmt=save_format,
            dpi=dpi,
        )
    return metrics


def evaluate_checkpoint(
    checkpoint, overrides=(), data_dir=None, split=None, output_dir=None, batch_size=None, device="auto"
):
    """`python -m spectral_mae.evaluate`'s work: (metrics, output folder) of a checkpoint on a split."""
    dev = torch_device(device)
    model, cfg = load_from_checkpoint(checkpoint, dev, overrides=overrides)
    split = split or cfg.dataset.val_split
    csv_file = Path(data_dir) / "dataset.csv" if data_dir else None
    dataset = build_dataset(cfg, split, augment=False, csv_file=csv_file)
    batch = batch_size or cfg.hparams.batch_size
    sampler = ResumableSampler(len(dataset), batch, shuffle=False, drop_last=False)
    # Its own generator: evaluating leaves torch's global RNG alone.
    loader = DataLoader(
        dataset, batch_sampler=sampler, num_workers=cfg.general.num_workers, generator=torch.Generator()
    )
    out = Path(output_dir) if output_dir else Path(checkpoint).resolve().parent.parent / f"evaluation_{split}"
    sp = cfg.show_prediction
    metrics = evaluate_model_dataloader(
        model,
        loader,
        out,
        device=dev,
        loss_fn=build_loss_from_config(cfg),
        denorm=Denormalizer(dataset, dev),
        nb_to_plot=sp.nb_to_plot,
        save_format=sp.save_format,
        dpi=sp.dpi,
        metric_names=cfg.metric.names,
        accuracy_threshold_deg=accuracy_threshold(cfg),
    )
    return metrics, out
