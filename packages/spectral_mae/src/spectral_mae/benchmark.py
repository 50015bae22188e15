"""The training-step benchmark's work (`python -m spectral_mae.bench`, whose docstring describes it),
imported when the command runs so that its --help needs neither torch nor timm."""

from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import click
import torch
from torch.utils.flop_counter import FlopCounterMode

from common.allocator import tune_malloc
from common.benchmarking import (
    count_flops,
    measure_scaling,
    time_interleaved,
    torch_matmul_peak_gflops,
    torch_sync,
    torchrun_part,
)
from common.devices import describe_device, peak_memory_mb, torch_device
from common.distributed import get_world_size
from spectral_mae.factory import adamw
from spectral_mae.losses import MAESpectralLoss
from spectral_mae.model import DECODER_ATTENTION, MaskedAutoencoderSpectral, build_model

YARDSTICK = "mae_vit_base_patch16_224"
YARDSTICK_ARCH = dict(
    img_size=224,
    patch_size=(16, 3),
    in_chans=3,
    embed_dim=768,
    encoder_depth=12,
    encoder_num_heads=12,
    decoder_embed_dim=512,
    decoder_depth=8,
    decoder_num_heads=16,
    mask_ratio=0.75,
    decoder_attention="joint",
)


@dataclass
class BenchResult:
    model: str
    shape: str  # C x H x W
    tokens: int  # tokens per sample (encoder sees (1 - mask_ratio) of them)
    batch_size: int  # per process
    step_s: float  # median training step (forward + backward + AdamW)
    forward_ms: float  # median forward of one batch (no grad)
    samples_per_s: float  # every process's samples
    tokens_per_s: float
    gflop_per_sample: float  # forward + backward
    achieved_gflops: float
    share_of_peak: float
    peak_memory_mb: float


def bench_model(
    name: str,
    model: MaskedAutoencoderSpectral,
    batch_size: int,
    steps: int,
    warmup: int,
    device: torch.device,
    peak_gflops: float,
    amp: bool,
    use_compile: bool = False,
) -> BenchResult:
    model = model.to(device).train()
    forward: torch.nn.Module = model
    world = get_world_size()
    if world > 1:  # as spectral_mae.trainer wraps it under torchrun: each backward all-reduces the gradients
        forward = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    imgs = torch.randn(batch_size, model.in_chans, model.img_size, model.img_size, device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp)
    forward_holder = [forward]  # --compile swaps in the compiled module after the FLOPs are counted
    train_step = make_train_step(model, lambda x: forward_holder[0](x), imgs, device, amp)

    counter = FlopCounterMode(display=False)
    with counter:  # the first warm-up step also counts the FLOPs
        train_step()
    flops_per_sample = counter.get_total_flops() / batch_size
    if use_compile:  # FLOPs were counted eagerly above; the next (untimed) step compiles, as in the trainer
        forward_holder[0] = torch.compile(forward)
        train_step()
    for _ in range(max(warmup - 1, 0)):
        train_step()
    step_times, forward_times = [], []
    for _ in range(steps):
        torch_sync(device)
        start = time.perf_counter()
        train_step()
        torch_sync(device)
        step_times.append(time.perf_counter() - start)
        with torch.no_grad(), autocast:
            start = time.perf_counter()
            model(imgs)
            torch_sync(device)
            forward_times.append(time.perf_counter() - start)
    step = statistics.median(step_times)
    samples_per_s = batch_size * world / step  # the processes step together (the all-reduce waits for all)
    achieved = flops_per_sample * samples_per_s / 1e9
    memory = peak_memory_mb(device)
    return BenchResult(
        model=name,
        shape=f"{model.in_chans}x{model.img_size}x{model.img_size}",
        tokens=model.num_patches,
        batch_size=batch_size,
        step_s=step,
        forward_ms=1000 * statistics.median(forward_times),
        samples_per_s=samples_per_s,
        tokens_per_s=samples_per_s * model.num_patches,
        gflop_per_sample=flops_per_sample / 1e9,
        achieved_gflops=achieved,
        share_of_peak=achieved / peak_gflops,
        peak_memory_mb=memory.get("cuda_peak_mb", memory.get("rss_peak_mb", float("nan"))),
    )


def make_train_step(model, forward, imgs: torch.Tensor, device: torch.device, amp: bool):
    """One training step per call (forward, loss, backward, AdamW) of `model` on the fixed batch `imgs`."""
    loss_fn = MAESpectralLoss(model.groups, model.t)
    optimizer = adamw(model.parameters(), device, lr=1e-4)  # the trainer's optimizer
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp)

    def train_step() -> None:
        with autocast:
            pred, mask = forward(imgs)
            loss = loss_fn(pred, model.patchify(imgs), mask)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return train_step


def beside_yardstick(
    label: str,
    model: MaskedAutoencoderSpectral,
    batch_size: int,
    device: torch.device,
    amp: bool,
    peak_gflops: float,
    min_steps: int,
    min_seconds: float,
    yardstick_arch: dict = YARDSTICK_ARCH,
    yardstick_batch: int = 8,
) -> dict:
    """`model`'s training step and the MAE yardstick's (batch 8), eager, interleaved step by step.

    Returns each one's samples/s, FLOPs per sample and share of the peak, and the ratio of the two shares
    as the median over step pairs of (model's GFLOP/s / yardstick's GFLOP/s)."""
    yardstick = MaskedAutoencoderSpectral(**yardstick_arch).to(device).train()
    model = model.to(device).train()
    sides = {}
    for name, m, batch in ((label, model, batch_size), (YARDSTICK, yardstick, yardstick_batch)):
        imgs = torch.randn(batch, m.in_chans, m.img_size, m.img_size, device=device)
        step = make_train_step(m, m, imgs, device, amp)
        sides[name] = (step, count_flops(step) / batch, batch)
    (step_a, flops_a, batch_a), (step_b, flops_b, batch_b) = sides.values()
    pairs = time_interleaved(
        step_a,
        step_b,
        warmup=1,
        min_steps=min_steps,
        min_seconds=min_seconds,
        sync=lambda: torch_sync(device),
    )
    out = {"model": label, "yardstick": YARDSTICK, "steps": len(pairs.a.times)}
    for key, timing, flops, batch in (
        ("model_side", pairs.a, flops_a, batch_a),
        ("yardstick_side", pairs.b, flops_b, batch_b),
    ):
        samples_per_s = timing.per_s(batch)
        out[key] = {
            "samples_per_s": samples_per_s,
            "gflop_per_sample": flops / 1e9,
            "share_of_peak": flops * samples_per_s / 1e9 / peak_gflops,
            "timing": timing.summary("s", 1.0),
        }
    # GFLOP/s ratio per pair: (flops_a * batch_a / t_a) / (flops_b * batch_b / t_b)
    work = (flops_a * batch_a) / (flops_b * batch_b)
    out["share_ratio"] = work * pairs.speedup
    return out


def format_side_by_side(r: dict) -> str:
    m, y = r["model_side"], r["yardstick_side"]
    return "\n".join(
        [
            f"{r['model']} beside the {r['yardstick']} yardstick, eager, steps interleaved "
            f"({r['steps']} pairs):",
            f"  {'model':<10}{m['samples_per_s']:8.2f} img/s, {m['gflop_per_sample']:8.1f} GFLOP/img, "
            f"{100 * m['share_of_peak']:5.1f}% of peak; {m['timing']}",
            f"  {'yardstick':<10}{y['samples_per_s']:8.2f} img/s, {y['gflop_per_sample']:8.1f} GFLOP/img, "
            f"{100 * y['share_of_peak']:5.1f}% of peak; {y['timing']}",
            f"  share of peak, model / yardstick: {r['share_ratio']:.2f} (median over step pairs)",
        ]
    )


def format_table(results: list[BenchResult], peak: float) -> str:
    header = (
        f"{'model':<30}{'shape':>12}{'tokens':>8}{'batch':>6}{'step s':>9}{'fwd ms':>9}{'img/s':>8}"
        f"{'tok/s':>9}{'GFLOP/img':>10}{'GFLOP/s':>9}{'peak%':>7}{'mem MB':>9}"
    )
    lines = [f"matmul peak (fp32, same run): {peak:.1f} GFLOP/s", header]
    for r in results:
        lines.append(
            f"{r.model:<30}{r.shape:>12}{r.tokens:>8}{r.batch_size:>6}{r.step_s:>9.2f}{r.forward_ms:>9.0f}"
            f"{r.samples_per_s:>8.2f}{r.tokens_per_s:>9.0f}{r.gflop_per_sample:>10.1f}"
            f"{r.achieved_gflops:>9.1f}{100 * r.share_of_peak:>6.0f}%{r.peak_memory_mb:>9.0f}"
        )
    return "\n".join(lines)


def run(
    models,
    decoders,
    img_size,
    batch_size,
    steps,
    warmup,
    yardstick,
    device,
    amp,
    compile_,
    threads,
    json_path,
    nproc,
    launched_part,
    pairs=5,
    pair_seconds=30.0,
    quick=False,
):
    """Benchmark the spectral MAE training step (see the module docstring)."""
    if quick:
        steps, warmup, pairs, pair_seconds = 1, 1, 2, 0.0
    patterns = [d.strip() for d in decoders.split(",") if d.strip()]
    unknown = sorted(set(patterns) - set(DECODER_ATTENTION))
    if unknown or not patterns:
        raise click.BadParameter(
            f"{unknown or decoders!r}: expected a comma-separated subset of {', '.join(DECODER_ATTENTION)}",
            param_hint="--decoders",
        )
    if nproc > 0 and not launched_part:
        args = [f"--models={models}", f"--decoders={decoders}", f"--img-size={img_size}"]
        args += [f"--batch-size={batch_size}", f"--steps={steps}", f"--warmup={warmup}", f"--device={device}"]
        args += ["--amp"] * amp + ["--compile"] * compile_
        figures = bench_scaling(nproc, args)
        if json_path:
            Path(json_path).write_text(json.dumps({"scaling": figures}, indent=2))
        return
    if threads:
        torch.set_num_threads(threads)
    malloc = tune_malloc()  # as the trainer runs: large buffers recycled from the heap (both models alike)
    dev = torch_device(device)
    if launched_part:
        measure_this_process(
            models, patterns, img_size, batch_size, steps, warmup, dev, amp, compile_, json_path
        )
        return
    torch.manual_seed(0)
    click.echo(f"device: {describe_device(dev)}, torch threads: {torch.get_num_threads()}; {malloc}")
    peak = torch_matmul_peak_gflops(dev, repeats=8)
    results = []
    if yardstick:
        results.append(
            bench_model(
                YARDSTICK, MaskedAutoencoderSpectral(**YARDSTICK_ARCH), 8, steps, warmup, dev, peak, amp
            )
        )
    for name in [m.strip() for m in models.split(",") if m.strip()]:
        for pattern in patterns:
            model = build_model(name, img_size=img_size, decoder_attention=pattern)
            label = f"{name} ({pattern}{', compiled' if compile_ else ''})"
            results.append(bench_model(label, model, batch_size, steps, warmup, dev, peak, amp, compile_))
            del model
    # Timed again after the models, keeping the higher figure: a peak caught while the shared CPU was busy
    # would flatter every share.
    peak = max(peak, torch_matmul_peak_gflops(dev, repeats=8))
    for r in results:
        r.share_of_peak = r.achieved_gflops / peak
    click.echo(format_table(results, peak))
    side_by_side = []
    if yardstick:  # each model at the first decoder pattern, eager, beside the yardstick
        for name in [m.strip() for m in models.split(",") if m.strip()]:
            model = build_model(name, img_size=img_size, decoder_attention=patterns[0])
            label = f"{name} ({patterns[0]})"
            side_by_side.append(
                beside_yardstick(label, model, batch_size, dev, amp, peak, pairs, pair_seconds)
            )
            click.echo(format_side_by_side(side_by_side[-1]))
            del model
    click.echo(
        "peak memory is the process's peak RSS so far on CPU (cumulative), the CUDA allocator peak on GPU."
    )
    if json_path:
        Path(json_path).write_text(
            json.dumps(
                {
                    "matmul_peak_gflops": peak,
                    "results": [asdict(r) for r in results],
                    "beside_yardstick": side_by_side,
                },
                indent=2,
            )
        )


def measure_this_process(
    models, patterns, img_size, batch_size, steps, warmup, dev, amp, compile_, json_path
):
    """The models' steps as one process of a torchrun run (or alone); rank 0 writes the rows to `json_path`.

    What `--nproc` times on both sides: no yardstick and no matmul peak (the share of the peak is left out
    of the scaling figures)."""
    with torchrun_part(dev, json_path, key="results") as (dev, rows):
        torch.manual_seed(0)
        for name in [m.strip() for m in models.split(",") if m.strip()]:
            for pattern in patterns:
                model = build_model(name, img_size=img_size, decoder_attention=pattern)
                label = f"{name} ({pattern}{', compiled' if compile_ else ''})"
                row = bench_model(label, model, batch_size, steps, warmup, dev, math.nan, amp, compile_)
                rows.append(asdict(row))


def bench_scaling(nproc: int, measurement_args: list[str]) -> dict:
    """The models' steps alone and as `nproc` torchrun processes; global samples/s and scaling efficiency."""
    run = measure_scaling(
        "spectral_mae.bench",
        ["--launched-part", *measurement_args],
        nproc,
        launcher="torchrun",
        json_flag="--json",
    )
    rows = []
    for one, other in run.pairs(lambda r: r["model"], rows="results"):
        row = run.compare(one["model"], one["samples_per_s"], other["samples_per_s"])
        # the work of one step: `batch_size` samples per process, every process's counted
        row |= {"model": one["model"], "batch_per_process": one["batch_size"]}
        row |= {
            "samples_per_step_1": one["batch_size"],
            f"samples_per_step_{nproc}": other["batch_size"] * nproc,
        }
        rows.append(row)
    click.echo(run.table(rows, unit="samples/s"))
    return run.as_json(rows)
