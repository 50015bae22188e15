"""MLX model + optimizer state through a checkpoint file: resumed training matches uninterrupted training."""

from __future__ import annotations

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")
nn = pytest.importorskip("mlx.nn")
optim = pytest.importorskip("mlx.optimizers")

from mlx.utils import tree_flatten  # noqa: E402

from common.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from common.errors import CheckpointError  # noqa: E402
from common.mlx_support import (  # noqa: E402
    from_numpy_tree,
    load_model_state,
    load_optimizer_state,
    model_state,
    optimizer_state,
    to_numpy_tree,
)


def _data(seed: int):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((16, 5)).astype(np.float32)
    y = (x @ rng.standard_normal((5, 3)) + 0.1).astype(np.float32)
    return mx.array(x), mx.array(y)


def _train(model, optimizer, steps: int, seed: int) -> None:
    def loss_fn(m, x, y):
        return mx.mean((m(x) - y) ** 2)

    step = nn.value_and_grad(model, loss_fn)
    for i in range(steps):
        x, y = _data(seed + i)
        _, grads = step(model, x, y)
        optimizer.update(model, grads)
        mx.eval(model.parameters(), optimizer.state)


def _assert_trees_identical(a, b):
    flat_a, flat_b = tree_flatten(a), tree_flatten(b)
    assert [k for k, _ in flat_a] == [k for k, _ in flat_b]
    for (key, x), (_, y) in zip(flat_a, flat_b, strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape, key
        assert np.array_equal(np.array(x.astype(mx.float32)), np.array(y.astype(mx.float32))), key


def _resume_matches(make_model, make_optimizer, tmp_path):
    mx.random.seed(0)
    model, optimizer = make_model(), make_optimizer()
    _train(model, optimizer, steps=3, seed=100)
    path = save_checkpoint(
        tmp_path / "mlx.npz",
        {"model": model_state(model), "optimizer": optimizer_state(optimizer), "epoch": 1},
    )

    mx.random.seed(1)  # the fresh model starts from different weights: loading must overwrite all of them
    restored_model, restored_optimizer = make_model(), make_optimizer()
    state = load_checkpoint(path)
    load_model_state(restored_model, state["model"])
    load_optimizer_state(restored_optimizer, state["optimizer"])
    _assert_trees_identical(model.parameters(), restored_model.parameters())
    _assert_trees_identical(optimizer.state, restored_optimizer.state)

    _train(model, optimizer, steps=2, seed=200)
    _train(restored_model, restored_optimizer, steps=2, seed=200)
    _assert_trees_identical(model.parameters(), restored_model.parameters())
    _assert_trees_identical(optimizer.state, restored_optimizer.state)
    assert restored_optimizer.step.item() == 5


def test_linear_adamw_resume_gives_identical_weights(tmp_path):
    _resume_matches(
        lambda: nn.Linear(5, 3), lambda: optim.AdamW(learning_rate=1e-2, weight_decay=0.1), tmp_path
    )


def test_bf16_sequential_with_scheduled_lr_resumes_exactly(tmp_path):
    # Lists in the parameter tree (Sequential.layers), bf16 weights, and an LR that is a function of the step.
    def make_model():
        model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))
        model.set_dtype(mx.bfloat16)
        return model

    def make_optimizer():
        return optim.AdamW(learning_rate=optim.cosine_decay(1e-2, 10), weight_decay=0.01)

    _resume_matches(make_model, make_optimizer, tmp_path)


def test_bfloat16_round_trip_keeps_dtype_and_bits(tmp_path):
    original = {"w": mx.array([1.0, -2.5, 3.140625, 1e-3], dtype=mx.bfloat16), "n": [mx.array(7, mx.uint64)]}
    numpy_tree = to_numpy_tree(original)
    assert numpy_tree["w"]["array"].dtype == np.float32 and numpy_tree["n"][0].dtype == np.uint64
    save_checkpoint(tmp_path / "bf16.npz", numpy_tree)
    back = from_numpy_tree(load_checkpoint(tmp_path / "bf16.npz"))
    assert back["w"].dtype == mx.bfloat16 and back["n"][0].dtype == mx.uint64
    assert mx.array_equal(back["w"], original["w"]).item()


def test_loading_weights_of_another_shape_is_a_checkpoint_error():
    state = model_state(nn.Linear(5, 3))
    with pytest.raises(CheckpointError, match=r"do not fit this Linear.*shape"):
        load_model_state(nn.Linear(4, 3), state)
    with pytest.raises(CheckpointError, match="Missing"):
        load_model_state(nn.Sequential(nn.Linear(5, 3), nn.Linear(3, 3)), {"layers": [state]})
    with pytest.raises(CheckpointError, match="not an MLX optimizer state"):
        load_optimizer_state(optim.SGD(learning_rate=0.1), {"state": {}, "param_groups": []})
