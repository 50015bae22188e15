"""Tiny synthetic datasets and a tiny model config shared by the dtgcnn tests."""

from __future__ import annotations

import pytest

import dtgcnn  # noqa: F401  (fast BLAS before anything imports mlx)
from dtgcnn.config import TrainConfig
from dtgcnn.synthetic import SyntheticSpec, generate

TINY_SPEC = SyntheticSpec(num_subjects=4, per_subject=(6, 2, 2), num_vertices=48, seed=3)


def tiny_config(**kw) -> TrainConfig:
    base = dict(
        num_vertices=48,
        k=4,
        edge_conv_dims=[8, 8, 16],
        fusion_dim=32,
        hidden_dim=16,
        embedding_dim=8,
        dropout=0.1,
        batch_size=8,
        samples_per_label=4,
        learning_rate=0.01,
        num_epochs=2,
        warmup_epochs=0,
        scheduler_type="cosine",
        prefetch_batches=1,
        log_interval=1,
        plot_every=1,
        checkpoint_every=1,
        jit_compile=False,
        seed=5,
    )
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(name="tiny_config")
def tiny_config_fixture():
    """Factory: a tiny-model TrainConfig for the tiny data, with keyword overrides."""
    return tiny_config


@pytest.fixture(name="tiny_spec")
def tiny_spec_fixture():
    return TINY_SPEC


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """train 24 / val 8 / test 8 meshes of 48 vertices, 4 identities (made once per test session)."""
    return generate(tmp_path_factory.mktemp("tiny_meshes"), TINY_SPEC)
