"""The max over neighbours (running max + custom VJP) against the formulation it replaced: the dense
[B,N,k,C] gather, its argmax, and a flat gather of each channel's winner (kept here as the oracle)."""

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

import dtgcnn.model as model_module
from dtgcnn.cpu_kernels import KERNELS_ENV
from dtgcnn.model import DTGCNN, ModelSpec, gather_neighbours, knn_scores, smallest_k
from dtgcnn.neighbour_max import max_over_neighbours


def argmax_then_gather(values: mx.array, idx: mx.array) -> mx.array:
    """The previous formulation: argmax over the gathered [B,N,k,C], then a flat gather of the winners."""
    b, n, c = values.shape
    winner = mx.argmax(mx.stop_gradient(gather_neighbours(values, idx)), axis=2)  # [B,N,C] in 0..k-1
    neighbour = mx.stop_gradient(mx.take_along_axis(idx, winner, axis=2))  # [B,N,C] point ids
    flat = (neighbour + (mx.arange(b) * n)[:, None, None]) * c + mx.arange(c)
    return values.reshape(-1)[flat]


def previous_neighbour_max(values: mx.array, features: mx.array, k: int) -> mx.array:
    return argmax_then_gather(values, mx.stop_gradient(smallest_k(knn_scores(features), k)))


def value_and_vjp(fn, values, idx, cotangent):
    out, (grad,) = mx.vjp(lambda v: fn(v, idx), [values], [cotangent])
    return np.array(out[0]), np.array(grad)


def test_equals_argmax_formulation_with_ties():
    """Same maxima and the same gradient, ties included: duplicated points give equal values, and the
    gradient must go to the first tied neighbour only, as argmax picks it. (Eager: under `mx.compile` the
    running max becomes fused kernels, each a C++ build on a cold cache; the jit training tests run that.)"""
    rng = np.random.default_rng(0)
    base = rng.standard_normal((2, 20, 8)).astype(np.float32)
    values = mx.array(np.concatenate([base, base], axis=1))  # [2,40,8]: point p and p+20 are equal
    idx = mx.array(rng.permuted(np.tile(np.arange(40), (2, 40, 1)), axis=-1)[:, :, :20].astype(np.uint32))
    cot = mx.array(rng.standard_normal((2, 40, 8)).astype(np.float32))
    out_new, grad_new = value_and_vjp(max_over_neighbours, values, idx, cot)
    out_old, grad_old = value_and_vjp(argmax_then_gather, values, idx, cot)
    np.testing.assert_array_equal(out_new, out_old)
    np.testing.assert_array_equal(grad_new, grad_old)
    assert np.abs(grad_new).sum() > 0


@pytest.mark.parametrize("kernels", ["1", "0"])
def test_model_outputs_and_gradients_equal_the_previous_formulation(monkeypatch, kernels):
    """Seeded DT-GCNN at the blocked k-NN path (k=5 over 96 points), with the CPU kernels (as training runs
    it) and with the MLX ops: the loss and every parameter gradient equal the argmax formulation's."""
    monkeypatch.setenv(KERNELS_ENV, kernels)
    spec = ModelSpec(
        in_channels=6,
        num_classes=3,
        k=5,
        edge_conv_dims=(8, 16),
        fusion_dim=32,
        hidden_dim=16,
        embedding_dim=8,
    )
    x = mx.random.normal((3, 96, 6), key=mx.random.key(4))
    target = mx.random.normal((3, 8), key=mx.random.key(5))

    def run():
        mx.random.seed(7)
        model = DTGCNN(spec)
        loss, grads = nn.value_and_grad(model, lambda m, x: (m(x)["raw"] * target).sum())(model, x)
        return loss.item(), dict(tree_flatten(grads))

    loss_new, grads_new = run()
    monkeypatch.setattr(model_module, "neighbour_max", previous_neighbour_max)
    loss_old, grads_old = run()
    assert loss_new == pytest.approx(loss_old, rel=1e-6)
    assert grads_new.keys() == grads_old.keys()
    for name, g in grads_new.items():
        np.testing.assert_allclose(np.array(g), np.array(grads_old[name]), rtol=1e-5, atol=1e-6, err_msg=name)
