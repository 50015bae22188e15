"""EdgeConv's CPU kernels (`dtgcnn.cpu_neighbours`) against the MLX ops they replace on the CPU: the same
neighbours, the same maxima and the same gradients, ties included; and the step that runs them uncompiled."""

from concurrent.futures import ThreadPoolExecutor

import mlx.core as mx
import numba
import numpy as np
import pytest

from common.errors import ConfigError
from dtgcnn import cpu_kernels, cpu_neighbours
from dtgcnn.config import TrainConfig
from dtgcnn.engine import runs_cpu_kernels
from dtgcnn.model import DTGCNN, ModelSpec, knn, knn_scores
from dtgcnn.neighbour_max import max_over_neighbours
from dtgcnn.text_model import TextDTGCNN


def tripled_points(n: int = 60, dims: int = 3) -> np.ndarray:
    """[1, 3n, dims] points, each one three times: many exact ties in every row's distances."""
    base = np.random.default_rng(0).standard_normal((1, n, dims)).astype(np.float32)
    return np.concatenate([base, base, base], axis=1)


def test_selection_takes_the_k_nearest_nearest_first_lowest_ids_among_ties():
    pts = mx.array(tripled_points())
    idx = np.array(cpu_neighbours.nearest(pts, 5))
    scores = np.array(knn_scores(pts))  # [1,180,180], the ranking both selections use
    np.testing.assert_array_equal(
        np.take_along_axis(scores, idx, axis=-1), np.sort(scores, axis=-1)[:, :, :5]
    )
    # point i's copies (i, i+60, i+120) tie as its nearest: the lowest two ids are kept
    np.testing.assert_array_equal(idx[0, 7, :2], [7, 67])
    assert all(len(set(row)) == 5 for row in idx.reshape(-1, 5))


@pytest.mark.parametrize(("points", "dims"), [(200, 16), (203, 3)])  # 203: columns beyond the 8 groups
def test_selection_matches_the_mlx_selection(points, dims):
    x = mx.random.normal((3, points, dims), key=mx.random.key(1))
    ours = np.sort(np.array(cpu_neighbours.nearest(x, 20)), axis=-1)
    np.testing.assert_array_equal(ours, np.sort(np.array(knn(x, 20)), axis=-1))


def test_selection_refuses_more_neighbours_than_points():
    with pytest.raises(ValueError, match="k=9 nearest neighbours asked among 8 points"):
        cpu_neighbours.nearest(mx.zeros((1, 8, 3)), 9)
    # a training config says so before any data is read
    with pytest.raises(ConfigError, match="k=300 neighbours per point, but a mesh has num_vertices=256"):
        TrainConfig(k=300, num_vertices=256)


def ties_case(dtype):
    """values [2,40,8] where point p and p+20 are equal, shuffled neighbour lists, and a cotangent."""
    rng = np.random.default_rng(0)
    values = mx.array(np.concatenate([rng.standard_normal((2, 20, 8))] * 2, axis=1)).astype(dtype)
    idx = mx.array(rng.permuted(np.tile(np.arange(40), (2, 40, 1)), axis=-1)[:, :, :20].astype(np.int32))
    return values, idx, mx.array(rng.standard_normal((2, 40, 8))).astype(dtype)


def max_and_grad(fn, values, idx, cotangent):
    (out,), (grad,) = mx.vjp(lambda v: fn(v, idx), [values], [cotangent])
    assert out.dtype == grad.dtype == values.dtype
    return out, grad


def test_max_and_gradient_equal_the_mlx_running_max_with_ties():
    """Equal maxima and gradients, bit for bit: duplicated points tie, and the gradient goes to the first
    tied neighbour in idx order only."""
    case = ties_case(mx.float32)
    out, grad = max_and_grad(cpu_neighbours.max_over_neighbours, *case)
    out_mlx, grad_mlx = max_and_grad(max_over_neighbours, *case)
    np.testing.assert_array_equal(np.array(out), np.array(out_mlx))
    np.testing.assert_array_equal(np.array(grad), np.array(grad_mlx))
    assert np.abs(np.array(grad)).sum() > 0


def test_bfloat16_takes_the_same_max_and_sums_its_gradient_in_float32():
    """bf16 values: the max is exact, and the gradient is the float32 sum rounded once to bf16 (MLX's own
    bf16 scatter rounds after every add)."""
    values, idx, cotangent = ties_case(mx.bfloat16)
    out, grad = max_and_grad(cpu_neighbours.max_over_neighbours, values, idx, cotangent)
    out_mlx, _ = max_and_grad(max_over_neighbours, values, idx, cotangent)
    _, grad32 = max_and_grad(
        max_over_neighbours, values.astype(mx.float32), idx, cotangent.astype(mx.float32)
    )
    assert mx.array_equal(out, out_mlx).item()
    assert mx.array_equal(grad, grad32.astype(mx.bfloat16)).item()


def test_results_do_not_depend_on_the_thread_count():
    x = mx.random.normal((4, 64, 8), key=mx.random.key(2))
    cotangent = mx.random.normal((4, 64, 8), key=mx.random.key(3))

    def run():
        idx = cpu_neighbours.nearest(x, 6)
        (out,), (grad,) = mx.vjp(lambda v: cpu_neighbours.max_over_neighbours(v, idx), [x], [cotangent])
        return np.array(idx), np.array(out), np.array(grad)

    threads = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = run()
    finally:
        numba.set_num_threads(threads)
    for a, b in zip(one, run(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_the_step_runs_uncompiled_only_where_the_kernels_run(monkeypatch):
    mesh = DTGCNN(ModelSpec(k=4, edge_conv_dims=(8,), fusion_dim=16, hidden_dim=8, embedding_dim=4))
    assert runs_cpu_kernels(mesh)
    assert not runs_cpu_kernels(TextDTGCNN(input_dim=8, hidden_dim=8, output_dim=4, num_gcn_layers=1))
    monkeypatch.setenv(cpu_kernels.KERNELS_ENV, "0")
    assert not runs_cpu_kernels(mesh)
    assert "MLX ops" in cpu_kernels.describe()


def test_launches_leave_openmp_alone_and_take_turns_across_threads():
    """Numba's work-queue layer runs the kernels (its OpenMP layer resets at every launch the OpenMP thread
    count that torch and MKL in the same process follow), and two Python threads launching at once take
    turns (the work queue would abort the process)."""
    x = np.random.default_rng(5).standard_normal((2, 64, 8)).astype(np.float32)
    gram, sq = np.einsum("bic,bjc->bij", x, x), np.einsum("bic,bic->bi", x, x)
    expected = cpu_neighbours._nearest_rows(gram, sq, 6)
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: cpu_neighbours._nearest_rows(gram, sq, 6), range(8)))
    assert numba.threading_layer() == "workqueue"
    for ids in results:
        np.testing.assert_array_equal(ids, expected)
