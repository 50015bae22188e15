"""Shared fixtures: a tiny synthetic dataset (20x20 pixels, 10 bands) and a matching tiny config."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spectral_mae import config as config_module
from spectral_mae.synthetic import SyntheticSpec, write_dataset

torch.set_num_threads(1)

# 20x20x10 cubes cut in 5x5x5 tokens: 2 spectral groups x 4 x 4 = 32 tokens; a two-block model.
TINY_MODEL = [
    "model.name=test_tiny",
    "model.img_size=20",
    "model.patch_size=[5,5]",
    "model.in_chans=10",
    "model.embed_dim=32",
    "model.encoder_depth=2",
    "model.encoder_num_heads=2",
    "model.decoder_embed_dim=16",
    "model.decoder_depth=1",
    "model.decoder_num_heads=2",
    "model.mask_ratio=0.75",
]


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """CSV path of 8 synthetic cubes (6 train, 2 val), written once per session."""
    out = tmp_path_factory.mktemp("tiny_data")
    return write_dataset(
        out, SyntheticSpec(num_images=8, size=20, bands=10, val_fraction=0.25, num_vessels=2)
    )


@pytest.fixture(scope="session")
def config_factory(tiny_data):
    """config_factory(out_dir, *overrides), for fixtures wider than one test."""
    return lambda out_dir, *extra: tiny_config(tiny_data, out_dir, *extra)


@pytest.fixture
def make_config(tiny_data, tmp_path):
    """make_config(*overrides): the tiny config on the bundled default; MLflow off unless turned on."""

    def build(*extra: str, out_dir=None):
        return tiny_config(tiny_data, out_dir or tmp_path / "runs", *extra)

    return build


@pytest.fixture(scope="session")
def override_factory(tiny_data):
    """override_factory(out_dir, *overrides): the tiny config as command-line overrides (for subprocesses)."""
    return lambda out_dir, *extra: tiny_overrides(tiny_data, out_dir, *extra)


def tiny_config(csv_file, out_dir, *extra: str):
    return config_module.load("config", overrides=tiny_overrides(csv_file, out_dir, *extra))


def tiny_overrides(csv_file, out_dir, *extra: str) -> list[str]:
    return [
        *TINY_MODEL,
        f"dataset.csv_file={csv_file}",
        f"general.output_dir={out_dir}",
        "general.num_workers=0",
        "general.log_every_n_steps=1",
        "hparams.epochs=2",
        "hparams.batch_size=2",
        "hparams.valid_interval=1",
        "optimizer.lr=1e-3",
        "show_prediction.nb_to_plot=2",
        "show_prediction.dpi=40",
        "mlflow.enabled=false",
        *extra,
    ]


def _assert_weights_close(expected: dict, actual: dict, *, rtol: float, atol: float, lr: float) -> None:
    """Same parameters to tolerance, except attention key biases, which are only checked to stay bounded.

    The key bias has an exactly-zero gradient (softmax ignores a shift of all scores), so what it gets is float
    round-off, which Adam normalises into steps of up to lr: bounded, not reproducible across summation orders.
    """
    assert expected.keys() == actual.keys()
    for name, want in expected.items():
        got = actual[name]
        if name.endswith(
            "qkv.bias"
        ):  # every attention: encoder, joint or divided (spectral and spatial) decoder
            (q, k, v), (q_got, k_got, v_got) = np.split(want, 3), np.split(got, 3)
            assert np.abs(k_got - k).max() <= 2 * lr * 2, name
            want, got = np.concatenate([q, v]), np.concatenate([q_got, v_got])
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=name)


@pytest.fixture(scope="session")
def assert_weights_close():
    """assert_weights_close(expected_state, actual_state, rtol=, atol=, lr=): see _assert_weights_close."""
    return _assert_weights_close
