"""Shared fixtures: tiny synthetic datasets made in tmp_path (a few dozen graphs of a handful of atoms), and
a factory of training tasks on them."""

import pytest
import torch

from common.config import load_config
from common.torch_support import parse_precision
from egnn_com.config import EgnnComConfig
from egnn_com.data import load_dataset, make_loader
from egnn_com.model import build_model
from egnn_com.synthetic import generate_dataset
from egnn_com.task import CentreOfMassTask, make_optimizer


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)  # the test machine is small and shared


@pytest.fixture
def tiny_data(tmp_path):
    """40 graphs of 6-12 atoms as .pt files."""
    return generate_dataset(tmp_path / "graphs", num_graphs=40, seed=3, min_nodes=6, max_nodes=12)


@pytest.fixture
def make_task(tiny_data):
    """make_task(*overrides) -> a CPU CentreOfMassTask training on all 40 tiny graphs (validating on 8),
    with weights initialised from torch seed 0."""
    graphs = load_dataset(tiny_data).graphs

    def make(*overrides: str) -> CentreOfMassTask:
        cfg = load_config(
            EgnnComConfig,
            overrides=["data.num_workers=0", "model.hidden_dim=16", "model.num_layers=2", *overrides],
        )
        device = torch.device("cpu")
        torch.manual_seed(0)
        model = build_model(cfg.model, graphs[0].num_node_features)
        kw = {"batch_size": cfg.data.batch_size, "seed": cfg.train.seed}
        return CentreOfMassTask(
            cfg,
            model=model,
            optimizer=make_optimizer(cfg, model),
            precision=parse_precision("32", device),
            device=device,
            train_loader=make_loader(graphs, train=True, **kw),
            val_loader=make_loader(graphs[:8], train=False, **kw),
            num_features=graphs[0].num_node_features,
        )

    return make
