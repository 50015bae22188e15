"""`CentreOfMassModule`: a centre-of-mass network together with its optimizer settings, for `egnn_com.trainer`.

It is what a LightningModule is to Lightning's Trainer: the model to train and how to optimise it, in one
object that `Trainer.fit` takes. Its hyperparameters are the `model` and `optim` sections of egnn_com's
config, so every checkpoint the trainer writes records them and `egnn_com.inference.load_from_checkpoint`,
`python -m egnn_com.evaluate` and `predict` read those checkpoints like any other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from common.config import config_to_dict, load_config
from egnn_com.config import EgnnComConfig
from egnn_com.model import build_model
from egnn_com.task import make_optimizer


class CentreOfMassModule(nn.Module):
    """The network (`gcn` or `egnn`, see `egnn_com.model`) for graphs of `input_dim` node features, and its
    optimizer (AdamW or Adam) and LR schedule (`schedule`: a `common.schedules.ScheduleConfig` or its mapping;
    default ReduceLROnPlateau on val_loss, patience 10, factor 0.5, min lr 1e-6).

    Values are checked and coerced like a config file's (a bad model name is a clear error). Draws its
    initial weights from the global torch RNG: seed it first (`common.seeding.seed_everything`) for
    reproducible runs.
    """

    def __init__(
        self,
        input_dim: int,
        *,
        model: str = "gcn",
        hidden_dim: int = 128,
        num_layers: int = 4,
        dropout: float = 0.1,
        pooling: str = "mean",
        use_mass: bool = True,
        optimizer: str = "adamw",
        lr: float = 1e-3,
        weight_decay: float = 1e-5,
        schedule: Any = None,
    ) -> None:
        super().__init__()
        sections: dict[str, Any] = {
            "model": {
                "name": model,
                "hidden_dim": hidden_dim,
                "num_layers": num_layers,
                "dropout": dropout,
                "pooling": pooling,
                "use_mass": use_mass,
            },
            "optim": {"optimizer": optimizer, "lr": lr, "weight_decay": weight_decay},
        }
        if schedule is not None:
            sections["optim"]["schedule"] = (
                schedule if isinstance(schedule, dict) else config_to_dict(schedule)
            )
        self.config: EgnnComConfig = load_config(EgnnComConfig, sections, package="egnn_com")
        self.input_dim = int(input_dim)
        self.net = build_model(self.config.model, self.input_dim)  # checkpoints store this module's weights

    @property
    def hparams(self) -> dict[str, Any]:
        """The hyperparameters, as the checkpoints record them: the config's `model` and `optim` sections."""
        saved = config_to_dict(self.config)
        return {"input_dim": self.input_dim, "model": saved["model"], "optim": saved["optim"]}

    def forward(self, batch) -> Tensor:
        return self.net(batch)  # [B, 3]

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """The optimizer over the network's parameters; the trainer builds the LR schedule from `optim.schedule`
        (its length depends on the run's epochs and steps, which only the trainer knows)."""
        return make_optimizer(self.config, self.net)

    @classmethod
    def load_from_checkpoint(
        cls, checkpoint_path: str | Path, map_location: str | torch.device | None = None
    ) -> CentreOfMassModule:
        """The module a checkpoint (or a run folder: its best checkpoint) holds, weights loaded, in eval mode."""
        from egnn_com.inference import load_from_checkpoint

        net, cfg = load_from_checkpoint(checkpoint_path, map_location)
        with torch.random.fork_rng(
            devices=[]
        ):  # the throw-away initial weights leave the caller's RNG as it was
            module = cls(
                net.in_features,
                model=cfg.model.name,
                hidden_dim=cfg.model.hidden_dim,
                num_layers=cfg.model.num_layers,
                dropout=cfg.model.dropout,
                pooling=cfg.model.pooling,
                use_mass=cfg.model.use_mass,
                optimizer=cfg.optim.optimizer,
                lr=cfg.optim.lr,
                weight_decay=cfg.optim.weight_decay,
                schedule=cfg.optim.schedule,
            )
        module.net = net
        return module.eval()
