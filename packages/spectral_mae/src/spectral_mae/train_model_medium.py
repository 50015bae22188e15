"""`python -m spectral_mae.train_model_medium [OPTIONS] [group=name ...] [a.b=value ...]`: the original
project's `train_model_medium.py`, training pre-configured for mae_medium.

It is `python -m spectral_mae.train model=mae_medium ...`: the model group is chosen first, so every option
and override typed after it still applies (`model.img_size=100`, `hparams.batch_size=2`, even another
`model=`). With `--resume` the run's saved config is kept as it is: the run goes on with the model it was
started with.
"""

from __future__ import annotations

import click

from common.cli import console_script, run_cli
from spectral_mae.train import options, run_training

MODEL_CHOICE = "model=mae_medium"


@click.command()
@options
@click.pass_context
def main(ctx, overrides, resume, **options):
    """Train the spectral masked autoencoder with the mae_medium model (16 x 512 encoder, 8 x 256 decoder).

    Same options, overrides and exit statuses as `python -m spectral_mae.train`.
    """
    if not resume:
        overrides = (MODEL_CHOICE, *overrides)
    return run_training(ctx, overrides=overrides, resume=resume, **options)


cli = console_script(main)  # an installed command would use this


if __name__ == "__main__":
    run_cli(main)
