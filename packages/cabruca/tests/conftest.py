"""Shared fixtures: tiny synthetic datasets and a small, fast config."""

from __future__ import annotations

import pytest
import torch

from cabruca import config as config_mod
from cabruca.synthetic import generate

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """3 training scenes and 1 validation scene of 128 px (tiled into 64 px tiles in `tiny_cfg`)."""
    return generate(tmp_path_factory.mktemp("cabruca_data"), num_train=3, num_val=1, image_size=128, seed=0)


def make_cfg(data_dir, out_dir, **cli):
    """Light config shrunk for tests: timm's test_resnet (0.4M parameters), 64 px tiles, no TensorBoard, no periodic step checkpoints."""
    base = {
        "data.data_dir": str(data_dir),
        "output_dir": str(out_dir),
        "device": "cpu",
        "model.backbone": "test_resnet",
        "model.fpn_channels": 32,
        "model.head_channels": 16,
        "data.tile_size": 64,
        "data.tile_overlap": 0,
        "data.batch_size": 2,
        "data.num_workers": 0,
        "training.num_epochs": 2,
        "training.save_every_n_steps": 0,
        "training.log_every_n_steps": 1,
        "tracking.tensorboard": False,
        "optimizer.lr": 0.003,
    }
    base.update(cli)
    return config_mod.load("training_config_light", cli=base)


@pytest.fixture
def tiny_cfg(tiny_data, tmp_path):
    return make_cfg(tiny_data, tmp_path / "outputs")
