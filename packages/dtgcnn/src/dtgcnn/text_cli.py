"""`python -m dtgcnn.train --mode triplets ...`: the triplet-text branch of dtgcnn's training command.

python -m dtgcnn.train --mode triplets --data data/triplets.json --output-dir experiments/text1
python -m dtgcnn.train --mode triplets --data sentences.csv --encoder minilm mining_strategy=semi_hard
python -m dtgcnn.train --mode triplets --output-dir experiments/text1 --resume last
python -m dtgcnn.train --mode triplets --demo
"""

from __future__ import annotations

from pathlib import Path

import click

from common.cli import typed_options
from common.config import dump_config, load_config
from common.errors import ConfigError
from common.logs import setup_logging
from common.resume import find_checkpoint, read_training_checkpoint, run_folder_of, saved_config
from dtgcnn.config import DTGCNNConfig

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
    ctx, data, output_dir, config, resume, encoder, demo, stop_after_steps, print_config, verbose, overrides
) -> int:
    if demo:
        root = Path(output_dir or "dtgcnn_text_demo")
        output_dir = str(root / "run")
        data = data or str(root / "data" / "sentences.csv")  # labelled: P x K mining, label retrieval
    checkpoint = state = None
    if resume:
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
        from common.runs import timestamp

        output_dir = f"experiments/run_{timestamp()}"
    from common.runs import RunFolder

    run = RunFolder(
        Path(output_dir).resolve(), resume=checkpoint is not None
    )  # claimed before the log exists
    setup_logging(run.logs, filename="training_{timestamp}.log", level="DEBUG" if verbose else "INFO")
    if demo and not Path(data).exists():
        from dtgcnn.synthetic import generate_text

        generate_text(Path(data).parent, seed=0)
    from dtgcnn.text_trainer import fit_triplets

    result = fit_triplets(
        cfg, output_dir, data=data, resume=checkpoint, resume_state=state, max_steps=stop_after_steps, run=run
    )
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
        click.echo(f"resume with python -m dtgcnn.train --mode triplets --resume {result.checkpoint}")
    return result.exit_code
