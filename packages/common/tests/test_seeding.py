"""common.seeding: capture/restore of every global RNG, and order-independent derived generators."""

from __future__ import annotations

import json
import multiprocessing
import random
import subprocess
import sys

import mlx.core as mx
import numpy as np
import pytest
import torch

from common.seeding import (
    capture_rng_state,
    epoch_permutation,
    restore_rng_state,
    sample_rng,
    seed_everything,
)

torch.set_num_threads(1)


def draw_all() -> dict:
    """One draw from every global RNG."""
    return {
        "python": [random.random() for _ in range(3)] + [random.gauss(0, 1)],
        "numpy": np.random.rand(4).tolist() + [np.random.standard_normal()],
        "torch": torch.rand(4).tolist(),
        "mlx": np.array(mx.random.uniform(shape=(4,))).tolist(),
    }


def test_capture_draw_restore_draw_is_identical():
    seed_everything(123)
    draw_all()  # move away from the seeded state; python/numpy also hold a cached gaussian now
    state = capture_rng_state()
    first = draw_all()
    restore_rng_state(state)
    second = draw_all()
    assert first == second
    assert set(state) >= {"python", "numpy", "torch", "mlx"}


def test_restore_after_json_and_array_round_trip():
    """A state made of numpy arrays + JSON-able values survives a checkpoint-like trip (arrays -> npz bytes)."""
    seed_everything(7)
    state = capture_rng_state()
    expected = draw_all()

    arrays = {}

    def split(value, path):
        # numpy arrays out (as a checkpoint stores them), everything else must be JSON-able
        if isinstance(value, np.ndarray):
            arrays[path] = value
            return {"__array__": path}
        if isinstance(value, dict):
            return {k: split(v, f"{path}/{k}") for k, v in value.items()}
        if isinstance(value, list):
            return [split(v, f"{path}/{i}") for i, v in enumerate(value)]
        assert value is None or isinstance(value, (bool, int, float, str)), (path, type(value))
        return value

    skeleton = json.loads(json.dumps(split(state, "")))

    def join(value):
        if isinstance(value, dict) and "__array__" in value:
            return np.array(arrays[value["__array__"]])
        if isinstance(value, dict):
            return {k: join(v) for k, v in value.items()}
        if isinstance(value, list):
            return [join(v) for v in value]
        return value

    draw_all()
    restore_rng_state(join(skeleton))
    assert draw_all() == expected


def test_seed_everything_is_reproducible_and_seed_dependent():
    seed_everything(5)
    a = draw_all()
    seed_everything(5)
    assert draw_all() == a
    seed_everything(6)
    assert draw_all() != a


def test_seed_everything_accepts_large_and_negative_seeds():
    seed_everything(2**40 + 3)
    seed_everything(-1)
    assert epoch_permutation(5, -1, 0).tolist() == epoch_permutation(5, -1, 0).tolist()


def test_restore_ignores_absent_framework_keys():
    state = capture_rng_state()
    state["torch_cuda"] = [np.zeros(16, dtype=np.uint8)]  # from a GPU machine; ignored without CUDA
    state.pop("mlx")
    if not torch.cuda.is_available():
        restore_rng_state(state)  # no error
    restore_rng_state({})  # nothing to restore is fine


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_state_round_trip():
    torch.cuda.manual_seed_all(3)
    state = capture_rng_state()
    a = torch.rand(8, device="cuda").cpu()
    restore_rng_state(state)
    assert torch.equal(torch.rand(8, device="cuda").cpu(), a)


def test_sample_rng_is_pure_function_of_seed_epoch_index():
    a = sample_rng(1, 2, 3).random(5)
    np.random.seed(0)
    random.seed(0)
    np.random.rand(100)  # global state must not matter
    assert np.array_equal(sample_rng(1, 2, 3).random(5), a)
    others = [sample_rng(1, 2, 4), sample_rng(1, 3, 3), sample_rng(2, 2, 3)]
    assert all(not np.array_equal(g.random(5), a) for g in others)


def test_epoch_permutation_is_a_deterministic_permutation():
    p = epoch_permutation(50, seed=3, epoch=1)
    assert p.dtype == np.int64 and sorted(p.tolist()) == list(range(50))
    assert np.array_equal(p, epoch_permutation(50, seed=3, epoch=1))
    assert not np.array_equal(p, epoch_permutation(50, seed=3, epoch=2))
    assert not np.array_equal(p, epoch_permutation(50, seed=4, epoch=1))
    assert epoch_permutation(0, 1, 1).shape == (0,)


def _augment(index: int) -> list[float]:
    return sample_rng(11, 0, index).normal(size=3).tolist()


def test_per_sample_randomness_does_not_depend_on_worker_count():
    serial = [_augment(i) for i in range(8)]
    ctx = multiprocessing.get_context("fork")
    for workers in (1, 2):
        with ctx.Pool(workers) as pool:
            # chunksize 1 + reversed order: samples land on workers in an arbitrary interleaving
            parallel = pool.map(_augment, list(reversed(range(8))), chunksize=1)
        assert list(reversed(parallel)) == serial


def test_import_does_not_pull_frameworks():
    code = (
        "import sys, common, common.seeding, common.config, common.cli, common.runs, common.logs, "
        "common.signals, common.progress, common.errors\n"
        "common.seeding.seed_everything(1); state = common.seeding.capture_rng_state()\n"
        "assert set(state) == {'python', 'numpy'}, set(state)\n"
        "heavy = [m for m in ('torch', 'mlx', 'mlx.core', 'matplotlib', 'tqdm') if m in sys.modules]\n"
        "assert not heavy, heavy"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
