"""Evaluation: loss parts and reconstruction metrics over a dataloader, metrics JSON and figures.

from spectral_mae import evaluate_model_dataloader, load_trained_model
model = load_trained_model(checkpoint_path)
results = evaluate_model_dataloader(model=model, dataloader=test_loader, output_folder="results/")

python -m spectral_mae.evaluate RUN_DIR/checkpoints/best_model.ckpt --split val --output-dir results/
"""

from __future__ import annotations

import click

from common.cli import console_script, data_dir_option, device_option, forward_to, output_dir_option, run_cli

# `from spectral_mae.evaluate import run_evaluation` (and the other names of `spectral_mae.evaluation`) keeps
# working; the module, with torch and timm, is imported on first use, not when the command line starts.
__getattr__ = forward_to("spectral_mae.evaluation", __name__)


@click.command()
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False))
@click.argument("overrides", nargs=-1)
@data_dir_option(default=None, help="Folder holding dataset.csv (else the config's CSV).")
@click.option("--split", default=None, help="CSV split to evaluate (default: the config's val split).")
@output_dir_option(
    default=None, help="Where metrics.json and figures go (default: <run folder>/evaluation_<split>)."
)
@click.option("--batch-size", type=int, default=None, help="Default: hparams.batch_size.")
@device_option(default="auto", show_default=True)
def main(checkpoint, overrides, data_dir, split, output_dir, batch_size, device):
    """Evaluate a spectral_mae checkpoint: metrics JSON (loss parts, MSE, SAM, PSNR, SSIM) and figures."""
    from spectral_mae.evaluation import evaluate_checkpoint

    metrics, out = evaluate_checkpoint(checkpoint, overrides, data_dir, split, output_dir, batch_size, device)
    click.echo(" ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
    click.echo(f"metrics and figures written to {out}")


cli = console_script(main)  # the installed command

if __name__ == "__main__":
    run_cli(main)
