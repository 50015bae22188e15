"""`python -m dtgcnn.train --mode triplets ...`: the triplet-text branch of dtgcnn's training command.

python -m dtgcnn.train --mode triplets --data data/triplets.json --output-dir experiments/text1
python -m dtgcnn.train --mode triplets --data sentences.csv --encoder minilm mining_strategy=semi_hard
python -m dtgcnn.train --mode triplets --output-dir experiments/text1 --resume last
python -m dtgcnn.train --mode triplets --demo
"""

from __future__ import annotations

from pathlib import Path

import click

from common.cli import follow_up_command, typed_options
from common.config import dump_config, load_config
from common.errors import ConfigError
from common.logs import setup_logging
from common.resume import find_checkpoint, read_training_checkpoint, run_folder_of, saved_config
from dtgcnn.config import DTGCNNConfig, triplet_config_source
from dtgcnn.ensemble import is_ensemble_run, resume_arguments

# click parameter -> DTGCNNConfig key, applied only when typed
OPTION_KEYS = {
    "batch_size": "batch_size",
    "learning_rate": "learning_rate",
    "num_epochs": "num_epochs",
    "embedding_dim": "output_dim",
    "device": "device",
    "seed": "seed",
    "gradient_accumulation_steps": "gradient_accumulation_steps",
    "jit_compile": "jit_compile",
    "encoder": "encoder",
}


def train_triplets_command(
    ctx,
    data,
    output_dir,
    config,
    resume,
    encoder,
    demo,
    stop_after_steps,
    print_config,
    verbose,
    overrides,
    *,
    fast_dev_run: int | None = None,
) -> int:
    """The triplets mode of `dtgcnn.train`; `fast_dev_run` N: N steps, one validation, its summary line (the
    caller hands a scratch `output_dir` that it removes afterwards).

    Under `mlx.launch` every process runs this; rank 0 alone claims the run folder, writes the log file and
    the demo data, and prints the summary."""
    from common import mlx_support
    from common.distributed import is_main_process

    mlx_support.init_distributed()  # joins the group when mlx.launch started this process; else nothing
    main_process = is_main_process()
    if demo:
        root = Path(output_dir or "dtgcnn_text_demo")
        output_dir = str(root / "run")
        data = data or str(root / "data" / "sentences.csv")  # labelled: P x K mining, label retrieval
    config, overrides = triplet_config_source(config, overrides)  # --config small | config=small
    checkpoint = state = None
    ensemble_dir = output_dir if resume in ("last", "auto") else resume
    if resume and ensemble_dir and is_ensemble_run(ensemble_dir):
        output_dir = str(ensemble_dir)
        config, data = resume_arguments(output_dir, data)  # members resume one by one (dtgcnn.ensemble)
        checkpoint = Path(output_dir)
    elif resume:
        checkpoint = find_checkpoint(resume, output_dir)
        state = read_training_checkpoint(checkpoint)
        output_dir = output_dir or str(run_folder_of(Path(checkpoint).resolve()))
        data = data or state.get("data_path")
    source = config or (
        saved_config(state, DTGCNNConfig)
        if state is not None
        else ("triplet_demo" if demo else "triplet_config")
    )
    cli = typed_options(ctx, OPTION_KEYS)
    cfg = load_config(DTGCNNConfig, source, package="dtgcnn", cli=cli, overrides=overrides)
    if print_config:
        click.echo(dump_config(cfg))
        return 0
    if not data:
        raise ConfigError("--data is required in triplets mode (a .json or .csv file), or use --demo.")
    if output_dir is None:
        from dtgcnn.train import shared_timestamp

        output_dir = f"experiments/run_{shared_timestamp()}"
    from common.runs import RunFolder

    run = None
    if main_process:
        run = RunFolder(Path(output_dir).resolve(), resume=checkpoint is not None)  # claimed before the log
        setup_logging(run.logs, filename="training_{timestamp}.log", level="DEBUG" if verbose else "INFO")
        if demo and not Path(data).exists():
            from dtgcnn.synthetic import generate_text

            generate_text(Path(data).parent, seed=0)
    else:  # the other processes write no files; their console shows warnings and errors only
        setup_logging(None, level="WARNING")
    if mlx_support.GROUP is not None:  # the others wait for rank 0's folder and demo data (an all-reduce)
        mlx_support.all_reduce_mean({"ready": 1.0})
    from dtgcnn.text_trainer import fit_triplets

    if fast_dev_run:  # N steps, one validation, its summary line (common.fast_dev_run)
        from common.fast_dev_run import FastDevRun

        callbacks = [FastDevRun(fast_dev_run)]
        return fit_triplets(
            cfg, output_dir, data=data, callbacks=callbacks, max_steps=fast_dev_run, run=run
        ).exit_code
    result = fit_triplets(
        cfg, output_dir, data=data, resume=checkpoint, resume_state=state, max_steps=stop_after_steps, run=run
    )
    if not main_process:
        return result.exit_code
    out = result.run_dir
    click.echo(f"\noutputs in {out}:")
    for rel in (
        "metrics_history.json",
        "checkpoints",
        "plots",
        "retrieval_metrics.json",
        "config.yaml",
        "logs",
    ):
        if (out / rel).exists():
            click.echo(f"  {out / rel}")
    v = result.metrics
    if "val/map_at_r" in v:
        click.echo(
            f"last validation: MAP@R {v['val/map_at_r']:.3f}, precision@1 {v['val/precision_at_1']:.3f} "
            f"(encoder vectors alone: MAP@R {v['val/encoder_map_at_r']:.3f}, "
            f"precision@1 {v['val/encoder_precision_at_1']:.3f})"
        )
    if result.checkpoint is not None and (result.interrupted or stop_after_steps):
        command = follow_up_command("python -m dtgcnn.train --mode triplets")
        click.echo(f"resume with {command} --resume {result.checkpoint}")
    return result.exit_code
