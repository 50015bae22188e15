"""`python -m egnn_com.evaluate`: a checkpoint and graph data -> metrics JSON (with per-component errors).

python -m egnn_com.evaluate --checkpoint runs/x/checkpoints/last.ckpt              # its validation split
python -m egnn_com.evaluate --checkpoint best.ckpt --data_dir data/test --output test_metrics.json
python -m egnn_com.evaluate --checkpoint runs/x                                    # the run's best checkpoint
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from common.cli import console_script, run_cli
from common.devices import torch_device
from common.errors import ConfigError
from common.runs import atomic_write_text
from egnn_com.cliopts import option


def evaluate(
    checkpoint: str | Path,
    data_dir: str | None = None,
    split: str | None = None,
    batch_size: int = 64,
    device: str = "auto",
) -> dict:
    """Metrics of the checkpoint's model on `split` ('val', 'train' or 'all') of `data_dir`.

    Without data_dir: the training data and, by default, the same seeded validation split as training.
    """
    # torch and the model code load here, not at import: `--help` answers without them
    import torch

    from egnn_com.data import load_dataset
    from egnn_com.inference import check_features, load_from_checkpoint, predict, resolve_checkpoint
    from egnn_com.metrics import RegressionMetrics
    from egnn_com.splits import split_dataset

    split = split or ("val" if data_dir is None else "all")
    if split not in ("val", "train", "all"):
        raise ConfigError(f"--split must be val, train or all, got {split!r}.")
    dev = torch_device(device)
    checkpoint = resolve_checkpoint(checkpoint)
    model, cfg = load_from_checkpoint(checkpoint, map_location=dev)
    dataset = load_dataset(data_dir or cfg.data.data_dir, strict=cfg.data.strict)
    check_features(model, dataset.num_features, str(data_dir or cfg.data.data_dir))
    graphs = dataset.graphs
    if split != "all":
        train_idx, val_idx = split_dataset(
            dataset.files, cfg.data.split_by, cfg.data.val_fraction, cfg.train.seed
        )
        graphs = [graphs[i] for i in (val_idx if split == "val" else train_idx)]
    pred = predict(model, graphs, dev, batch_size)
    acc = RegressionMetrics()
    acc.update(pred, torch.cat([g.y for g in graphs]))
    return {
        "checkpoint": str(checkpoint),
        "model": cfg.model.name,
        "data_dir": str(data_dir or cfg.data.data_dir),
        "split": split,
        "num_graphs": len(graphs),
        "files_failed": len(dataset.failed),
        "metrics": acc.compute(),
    }


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@option(
    "checkpoint",
    "--ckpt_path",
    required=True,
    help="egnn_com checkpoint (.ckpt), or a run folder / checkpoint folder: its best checkpoint.",
)
@option("data_dir", help="Graph folder (default: the training data).")
@option(
    "split",
    type=click.Choice(["val", "train", "all"]),
    help="Graphs to score (default: val without --data_dir, all with it).",
)
@option("output", help="Also write the JSON here.")
@option("batch_size", type=int, default=64, show_default=True)
@option("device", default="auto", show_default=True)
def main(checkpoint, data_dir, split, output, batch_size, device):
    """Score a checkpoint: MAE, MSE and per-component (x, y, z) errors as JSON."""
    result = evaluate(checkpoint, data_dir, split, batch_size, device)
    text = json.dumps(result, indent=2)
    if output:
        atomic_write_text(Path(output), text + "\n")
    click.echo(text)


cli = console_script(main)  # the installed command

if __name__ == "__main__":
    run_cli(main)
