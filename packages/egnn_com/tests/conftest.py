"""Shared fixtures: tiny synthetic datasets made in tmp_path (a few dozen graphs of a handful of atoms)."""

import pytest
import torch

from egnn_com.synthetic import generate_dataset


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)  # the test machine is small and shared


@pytest.fixture
def tiny_data(tmp_path):
    """40 graphs of 6-12 atoms as .pt files."""
    return generate_dataset(tmp_path / "graphs", num_graphs=40, seed=3, min_nodes=6, max_nodes=12)
