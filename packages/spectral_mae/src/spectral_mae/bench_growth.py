"""`python -m spectral_mae.bench --scaling`: time per epoch and peak memory as the images per epoch, the batch
and the model's depth double, over a few points each, to show which costs grow linearly.

An epoch is the bench's training step (`benchmark.make_train_step`: forward, the fused loss, backward, the
trainer's AdamW) over every image of the epoch once; the images are made in memory beforehand (random cubes,
as the bench's), so the epoch holds no file reading. Doubling the batch doubles the images per epoch with
it, so an epoch keeps its number of steps. The model is mae_tiny at a small image size with fewer blocks:
the depth is the encoder's, and the decoder keeps mae_tiny's proportion (8 decoder blocks to 12), so the
last point of the default table is mae_tiny itself. Every point has the same tokens per image.

Each point trains in a fresh process (`python -m spectral_mae.bench_growth`): a process's peak resident
memory only ever grows. Memory is the growth of the peak over the process's memory before the images were
made (torch and timm excluded), or the CUDA allocator's peak on a GPU.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import click

from common.errors import ConfigError
from common.growth import (
    growth_report,
    measure_growth,
    memory_baseline_mb,
    peak_rss_growth_mb,
    timed_epochs,
)

VARIANT = "mae_tiny"
VARIANT_DEPTHS = (12, 8)  # mae_tiny's encoder and decoder blocks: the decoder keeps this proportion
# the base point: small enough that the whole table takes about a minute on an idle 2-core machine
BASE = {"images": 16, "batch_size": 4, "depth": 3, "img_size": 100, "epochs": 2}
# what doubles: the images per epoch, the batch (with the images, so an epoch keeps its steps), the depth
AXES = {"images": (), "batch_size": ("images",), "depth": ()}


def check_base(base: dict) -> None:
    """A base whose points can be trained: whole epochs of batches, whole patches."""
    from spectral_mae.model import MaskedAutoencoderSpectral

    patch = inspect.signature(MaskedAutoencoderSpectral).parameters["patch_size"].default[0]  # spatial
    if base["batch_size"] < 1 or base["images"] % base["batch_size"]:
        raise ConfigError(
            f"the scaling table's {base['images']} images per epoch do not split into batches of "
            f"{base['batch_size']}."
        )
    if base["img_size"] < patch or base["img_size"] % patch:
        raise ConfigError(f"--img-size {base['img_size']} is not a multiple of the {patch}-pixel patches.")
    if base["depth"] < 1:
        raise ConfigError(f"the scaling table's depth {base['depth']} must be at least 1.")


def decoder_depth(depth: int) -> int:
    encoder, decoder = VARIANT_DEPTHS
    return max(1, depth * decoder // encoder)


def measure_point(
    images: int, batch_size: int, depth: int, img_size: int, epochs: int, device: str = "auto"
) -> dict:
    """One point in this process: the median of `epochs` timed epochs (wall and CPU time) after one untimed
    step, and peak memory in MiB."""
    import torch

    from common.devices import torch_device
    from spectral_mae.benchmark import make_train_step
    from spectral_mae.model import build_model

    dev = torch_device(device)
    before_mb = memory_baseline_mb()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    torch.manual_seed(0)
    model = build_model(
        VARIANT, img_size=img_size, encoder_depth=depth, decoder_depth=decoder_depth(depth)
    ).to(dev)
    model.train()
    data = torch.randn(images, model.in_chans, img_size, img_size)
    batch = torch.empty(batch_size, *data.shape[1:], device=dev)  # the step reads its batch from here
    train_step = make_train_step(model, model, batch, dev, amp=False)
    sync = torch.cuda.synchronize if dev.type == "cuda" else lambda: None

    def epoch() -> None:
        for i in range(0, images - batch_size + 1, batch_size):
            batch.copy_(data[i : i + batch_size])
            train_step()
        sync()

    batch.copy_(data[:batch_size])
    train_step()  # warm-up: the allocator's first buffers, the kernels' first calls
    timing = timed_epochs(epoch, epochs)
    peak_mb = (
        torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else peak_rss_growth_mb(before_mb)
    )
    return {
        **timing,
        "peak_mb": peak_mb,
        "tokens": model.num_patches,
    }


def growth(
    base: dict, points: int, threads: int | None = None, device: str = "auto", in_process: bool = False
) -> dict[str, list[dict]]:
    """For each axis, `points` measurements doubling it from `base`, each in a fresh process (`in_process`:
    all in this one, for a test's tiny points)."""
    check_base(base)
    measure = (lambda point: measure_point(**point, device=device)) if in_process else None
    args = [f"--device={device}"] + ([f"--threads={threads}"] if threads else [])
    return measure_growth("spectral_mae.bench_growth", base, AXES, points, args=args, measure=measure)


def report(tables: dict[str, list[dict]], base: dict) -> str:
    tokens = tables[next(iter(tables))][0]["tokens"]
    title = (
        f"scaling ({VARIANT} at {base['img_size']}x{base['img_size']}, {tokens} tokens per image; base: "
        f"{base['images']} images, batch {base['batch_size']}, depth {base['depth']} (decoder "
        f"{decoder_depth(base['depth'])}); each point a fresh process; doubling the batch doubles the images "
        f"per epoch)"
    )
    return growth_report(title, tables)


@click.command(
    help="One point of `python -m spectral_mae.bench --scaling` (run by the bench in a fresh process)."
)
@click.option("--images", type=int, required=True)
@click.option("--batch_size", type=int, required=True)
@click.option("--depth", type=int, required=True)
@click.option("--img_size", type=int, required=True)
@click.option("--epochs", type=int, required=True)
@click.option("--device", default="auto")
@click.option("--threads", type=int, default=0)
@click.option("--json", "json_out", required=True)
def main(images, batch_size, depth, img_size, epochs, device, threads, json_out):
    if threads > 0:
        import torch

        torch.set_num_threads(threads)
    figures = measure_point(images, batch_size, depth, img_size, epochs, device)
    Path(json_out).write_text(json.dumps(figures))


if __name__ == "__main__":
    from common.cli import run_cli

    run_cli(main)
