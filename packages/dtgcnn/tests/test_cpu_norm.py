"""The fused BatchNorm + LeakyReLU kernels against the MLX expressions they replace,
`nn.leaky_relu(nn.BatchNorm(...)(x), slope)` and the fusion block's max and mean over points of it:
outputs, running statistics and gradients; the fallbacks to those expressions; and bit-identical results
whatever the thread count."""

import mlx.core as mx
import mlx.nn as nn
import numba
import numpy as np
import pytest
from mlx.utils import tree_flatten

from dtgcnn import cpu_norm
from dtgcnn.cpu_kernels import KERNELS_ENV
from dtgcnn.cpu_norm import batch_norm_leaky, batch_norm_leaky_pool, runs_kernels


def reference(norm: nn.BatchNorm, x: mx.array, slope: float = 0.2) -> mx.array:
    return nn.leaky_relu(norm(x), slope)


def reference_pool(norm: nn.BatchNorm, x: mx.array, slope: float = 0.2) -> mx.array:
    y = reference(norm, x, slope)
    return mx.concatenate([mx.max(y, axis=1), mx.mean(y, axis=1)], axis=-1)


VARIANTS = {"rows": (batch_norm_leaky, reference), "pool": (batch_norm_leaky_pool, reference_pool)}


def inputs(shape, seed=0, pooled=False):
    """Random x with one channel of a constant value and, for [B,N,C], two equal points per sample holding
    its largest values (ties at the max in every channel), and a cotangent for the output. The constant is
    a power of two so that MLX's float32 mean of it is exact too: an ulp off, 1/sqrt(eps) would magnify it
    ~300-fold."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 3 + 5).astype(np.float32)
    if x.ndim == 3 and shape[1] > 7:
        x[:, 3] = x[:, 7] = x.max(axis=1) + 1
    x[..., 1] = 2.0
    out_shape = (shape[0], 2 * shape[-1]) if pooled else shape
    return mx.array(x), mx.array(rng.standard_normal(out_shape).astype(np.float32))


def twin_norms(channels, seed=0, **kwargs):
    """Two BatchNorms with the same random affine weights (not 1 and 0, so the slope's kink is not hit)."""
    rng = np.random.default_rng(seed + 100)
    first, second = nn.BatchNorm(channels, **kwargs), nn.BatchNorm(channels, **kwargs)
    if "weight" in first:
        weights = {
            "weight": mx.array(
                rng.uniform(0.5, 2.0, channels).astype(np.float32) * rng.choice([-1, 1], channels)
            ),
            "bias": mx.array(rng.standard_normal(channels).astype(np.float32)),
        }
        first.update(weights)
        second.update(weights)
    return first, second


def gradients(fn, norm, x, cotangent):
    """Parameter gradients (nn.value_and_grad) and input gradient (mx.grad) of sum(fn(x) * cotangent)."""

    def loss(model, x):
        return (fn(model, x) * cotangent).sum()

    _, grads = nn.value_and_grad(norm, loss)(norm, x)
    grad_x = mx.grad(lambda x: loss(norm, x))(x)
    return {k: np.array(v) for k, v in tree_flatten(grads)}, np.array(grad_x)


def close(actual, expected, scale=1.0):
    np.testing.assert_allclose(np.array(actual), np.array(expected), rtol=2e-5, atol=2e-5 * scale)


@pytest.mark.parametrize(
    ("variant", "shape", "block_bytes", "slope"),
    [
        ("rows", (3, 40, 8), cpu_norm.BLOCK_BYTES, 0.2),
        ("rows", (3, 40, 8), 4 * 8 * 7, 0.2),
        ("rows", (50, 6), 4 * 6 * 3, 0.1),
        ("pool", (3, 40, 8), cpu_norm.BLOCK_BYTES, 0.2),
        ("pool", (3, 40, 8), 4 * 8 * 7, 0.1),
    ],
    ids=["BNC-one-block", "BNC-blocks-of-7-rows", "RC-blocks-of-3-rows", "pool", "pool-blocks-of-7-rows"],
)
def test_values_running_stats_and_gradients_equal_mlx(monkeypatch, variant, shape, block_bytes, slope):
    """Two training steps (so momentum meets non-initial running stats): same outputs, running mean and
    ddof-1 running variance, and gradients w.r.t. x, weight and bias, also with many row blocks (which
    straddle samples); pooled, with the max's gradient split over tied points as MLX splits it."""
    monkeypatch.setattr(cpu_norm, "BLOCK_BYTES", block_bytes)
    fused_fn, reference_fn = VARIANTS[variant]
    fused, plain = twin_norms(shape[-1])
    assert runs_kernels(fused, inputs(shape)[0])
    for step in range(2):
        x, cotangent = inputs(shape, seed=step, pooled=variant == "pool")
        close(fused_fn(fused, x, slope), reference_fn(plain, x, slope), scale=10)
        close(fused.running_mean, plain.running_mean)
        close(fused.running_var, plain.running_var)
        grads, grad_x = gradients(lambda m, x: fused_fn(m, x, slope), fused, x, cotangent)
        grads_ref, grad_x_ref = gradients(lambda m, x: reference_fn(m, x, slope), plain, x, cotangent)
        assert grads.keys() == grads_ref.keys() == {"weight", "bias"}
        for name in grads:
            close(grads[name], grads_ref[name], scale=np.abs(grads_ref[name]).max())
        # the constant channel's gradient is scaled by 1/sqrt(eps); compare relative to the largest entry
        close(grad_x, grad_x_ref, scale=np.abs(grad_x_ref).max())
        assert np.abs(grad_x[..., 0]).sum() > 0


@pytest.mark.parametrize(
    "case", ["eval", "kernels-off", "no-affine", "no-running-stats", "float16", "one-row"]
)
def test_falls_back_to_the_mlx_expression(monkeypatch, case):
    """Outside CPU training of a float32, affine, tracking norm, the result is the MLX expression's, bit
    for bit, running statistics included, for both the activation and its pooled form."""
    kwargs = {"no-affine": {"affine": False}, "no-running-stats": {"track_running_stats": False}}
    x, _ = inputs((1, 1, 8) if case == "one-row" else (2, 12, 8))
    if case == "kernels-off":
        monkeypatch.setenv(KERNELS_ENV, "0")
    if case == "float16":
        x = x.astype(mx.float16)
    for fused_fn, reference_fn in VARIANTS.values():
        fused, plain = twin_norms(8, **kwargs.get(case, {}))
        if case == "eval":  # with running statistics that are not the initial ones
            stats = {"running_mean": x.mean(axis=(0, 1)), "running_var": x.var(axis=(0, 1)) + 1}
            fused.update(stats), plain.update(stats)
            fused.eval(), plain.eval()
        assert not runs_kernels(fused, x)
        if case == "one-row":  # MLX refuses to normalise a single value per channel; so does the fallback
            with pytest.raises(ValueError, match="more than one value"):
                fused_fn(fused, x)
            continue
        np.testing.assert_array_equal(np.array(fused_fn(fused, x)), np.array(reference_fn(plain, x)))
        for name in ("running_mean", "running_var"):
            if name in plain:
                np.testing.assert_array_equal(np.array(fused[name]), np.array(plain[name]))


@pytest.mark.parametrize("variant", VARIANTS)
def test_bit_identical_whatever_the_thread_count(monkeypatch, variant):
    """Outputs, running statistics and gradients on 1 and 2 Numba threads are equal bit for bit (exact
    resume relies on it), with the rows split into many blocks."""
    monkeypatch.setattr(cpu_norm, "BLOCK_BYTES", 4 * 8 * 5)
    fused_fn = VARIANTS[variant][0]
    x, cotangent = inputs((2, 48, 8), pooled=variant == "pool")
    threads = numba.get_num_threads()
    runs = []
    try:
        for count in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
            numba.set_num_threads(count)
            norm, _ = twin_norms(8)
            arrays = {"out": np.array(fused_fn(norm, x))}
            arrays |= {name: np.array(norm[name]) for name in ("running_mean", "running_var")}
            grads, arrays["grad_x"] = gradients(fused_fn, norm, x, cotangent)
            runs.append(arrays | grads)
    finally:
        numba.set_num_threads(threads)
    first, second = runs
    assert first.keys() == second.keys()
    for name in first:
        np.testing.assert_array_equal(first[name], second[name], err_msg=name)
