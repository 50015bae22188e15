"""Distributed Data Parallel training, one process per GPU or CPU slot:

    torchrun --nproc_per_node=2 -m spectral_mae.train_ddp model=mae_base hparams.batch_size=6
    torchrun --nproc_per_node=2 -m spectral_mae.train_ddp --device cpu --demo      # Gloo on CPU

NCCL on CUDA, Gloo on CPU (common.distributed). `hparams.batch_size` is per process, so the global batch is
batch_size x processes; each rank reads its contiguous slice of the same global batches a single process
would (common.sampler.ResumableSampler), micro-batches that do not end an optimizer step skip the gradient
all-reduce, metrics are all-reduced, and only rank 0 writes checkpoints, logs and artifacts. Rank
`LOCAL_RANK` uses GPU `general.device_ids[LOCAL_RANK]` when that list is long enough. Without torchrun
(WORLD_SIZE unset) this is an ordinary single-process run. Same options, overrides, `--resume` and exit
statuses as `spectral_mae.train`.
"""

from __future__ import annotations

import click
import torch

from common.cli import run_cli
from common.config import dump_config
from common.devices import torch_device
from common.distributed import (
    barrier,
    broadcast_object,
    cleanup_distributed,
    get_local_rank,
    get_world_size,
    init_distributed,
    is_main_process,
)
from common.errors import ConfigError
from common.logs import setup_logging
from spectral_mae.train import load_run_config, make_demo_data, options, prepare_run, report


def rank_device(requested: str, device_ids: list[int]) -> torch.device:
    """This rank's device: its own GPU on CUDA, the CPU otherwise."""
    device = torch_device(requested)
    if device.type != "cuda":
        return device
    local = get_local_rank()
    return torch.device("cuda", device_ids[local] if local < len(device_ids) else local)


@click.command()
@options
@click.pass_context
def main(
    ctx,
    overrides,
    config,
    data_dir,
    output_dir,
    resume,
    device,
    seed,
    overwrite,
    precision,
    print_cfg,
    demo,
    fast_dev_run,
    run_dir,
):
    """Train the spectral masked autoencoder with DistributedDataParallel (launch with torchrun)."""
    if fast_dev_run:
        raise ConfigError(
            "--fast-dev-run checks the training step in one process: run it with python -m spectral_mae.train."
        )
    cfg, checkpoint, state = load_run_config(ctx, config, data_dir, resume, demo, overrides)
    if print_cfg:
        if is_main_process():
            click.echo(dump_config(cfg), nl=False)
        return 0
    dev = rank_device(cfg.general.device, cfg.general.device_ids)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    init_distributed(dev.type)
    try:
        # Rank 0 names the run folder (a timestamp) and every rank uses that name.
        run = broadcast_object(prepare_run(cfg, checkpoint) if is_main_process() else None)
        logger = setup_logging(
            run.logs if is_main_process() else None,
            level=("DEBUG" if cfg.general.debug else "INFO") if is_main_process() else "WARNING",
        )
        if demo and is_main_process():
            make_demo_data(cfg.dataset.csv_file, logger)
        barrier()  # the demo data exists before any rank reads it
        command = f"torchrun --nproc_per_node={get_world_size()} -m spectral_mae.train_ddp"
        from spectral_mae.trainer import train  # after the options: --help stays fast

        result = train(
            cfg, run, device=dev, logger=logger, resume=state, resume_path=checkpoint, command=command
        )
        if is_main_process():
            report(result, cfg, logger, command)
    finally:
        cleanup_distributed()
    return result.exit_code


if __name__ == "__main__":
    run_cli(main)
