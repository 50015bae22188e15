"""`python -m egnn_com.train --demo`: synthetic molecules, a short gcn and egnn run each, and the comparison.

The egnn predicts the centre of mass exactly equivariantly, so it only has to learn the atom masses; the gcn,
fed raw coordinates, has to learn rotations and translations from data. The table shows the difference.
"""

from __future__ import annotations

import time
from pathlib import Path

import click

from common.cli import follow_up_command
from common.config import load_config
from common.runs import RunFolder
from egnn_com.config import EgnnComConfig
from egnn_com.synthetic import generate_dataset

DEMO_GRAPHS = 200  # 160 train / 40 val
DEMO_NODES = (8, 24)


def demo_data(root: Path) -> Path:
    """The demo's synthetic molecules in `root`/data, generated once and reused."""
    data = root / "data"
    if not (data / "dataset_info.json").exists():
        generate_dataset(
            data, num_graphs=DEMO_GRAPHS, seed=0, min_nodes=DEMO_NODES[0], max_nodes=DEMO_NODES[1]
        )
        click.echo(f"generated {DEMO_GRAPHS} synthetic molecules in {data}")
    return data


def run_demo(
    output_dir: str | None = None,
    num_workers: int | None = None,
    *,
    cli: dict | None = None,
    overrides: tuple[str, ...] = (),
) -> dict:
    """Train both models on the demo data under output_dir (default runs/demo); returns their TrainingResults.

    `cli` (typed options, dotted keys) and `overrides` (`key=value`) apply on top of the demo config, as in
    training; each run keeps its own model. A run stopped by SIGINT/SIGTERM ends the demo there (its result's
    exit_code is 130/143)."""
    started = time.perf_counter()
    root = Path(output_dir or "runs/demo")
    data = demo_data(root)
    from egnn_com.pipeline import run_training  # imports torch and torch_geometric

    results, outcomes = {}, {}
    for name in ("gcn", "egnn"):
        cfg = load_config(
            EgnnComConfig,
            "demo",
            package="egnn_com",
            cli=cli,
            overrides=[*overrides, f"model.name={name}"],
        )
        cfg.data.data_dir = str(data)
        cfg.train.output_dir = str(RunFolder.timestamped(root, name).root)
        if num_workers is not None:
            cfg.data.num_workers = num_workers
        click.echo(f"training {name} ...")
        outcomes[name] = run_training(cfg)
        if outcomes[name].interrupted:
            return outcomes
        results[name] = {k: v for k, v in outcomes[name].metrics.items() if k.startswith("val/")}
    _print_summary(results, outcomes, data, time.perf_counter() - started)
    return outcomes


def _print_summary(results: dict, outcomes: dict, data: Path, seconds: float) -> None:
    click.echo("\nvalidation error of the predicted centre of mass (Angstrom):")
    click.echo(f"  {'model':<6} {'MAE':>8} {'MAE x':>8} {'MAE y':>8} {'MAE z':>8} {'MSE':>9}")
    for name, m in results.items():
        click.echo(
            f"  {name:<6} {m['val/mae']:8.4f} {m['val/mae_x']:8.4f} {m['val/mae_y']:8.4f} "
            f"{m['val/mae_z']:8.4f} {m['val/mse']:9.5f}"
        )
    ratio = results["egnn"]["val/mae"] / results["gcn"]["val/mae"]
    click.echo(f"  egnn MAE = {ratio:.1%} of gcn MAE (the egnn is E(3)-equivariant by construction)")
    click.echo(f"\ndemo finished in {seconds:.0f}s. Outputs:")
    click.echo(f"  data          {data}")
    for name, out in outcomes.items():
        click.echo(
            f"  {name:<13} {out.run_dir}  (best: {out.best_checkpoint.name if out.best_checkpoint else '-'}; "
            f"curves: plots/training_curves.png; history: metrics_history.json; tensorboard/)"
        )
    best = outcomes["egnn"].best_checkpoint
    commands = [
        f"python -m egnn_com.evaluate --checkpoint {best}",
        f"python -m egnn_com.predict --checkpoint {best} {data} --output predictions.csv",
        f"python -m egnn_com.train --data_dir {data} --model egnn --max_epochs 50",
    ]
    click.echo("next:\n" + "\n".join(f"  {follow_up_command(c)}" for c in commands))
