from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from common.errors import CheckpointError, ConfigError, DeviceError, NonFiniteError
from common.torch_support import (
    OptimizerStepper,
    Precision,
    apply_lrs,
    from_numpy_state,
    parse_precision,
    restore_training_state,
    to_numpy_state,
    training_state,
    unwrap,
)


def _data(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [0.0], [3.0]]) + 0.1 * torch.randn(n, 1, generator=g)
    return x, y


def _model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))


def _fp32():
    return parse_precision("32", "cpu")


# ------------------------------------------------------------------------------------------------ precision


@pytest.mark.parametrize(
    "name, canonical, autocast, param",
    [
        ("32", "32", None, torch.float32),
        (32, "32", None, torch.float32),
        ("32-true", "32", None, torch.float32),
        ("float32", "32", None, torch.float32),
        ("16-true", "16-true", None, torch.float16),
        ("bf16-true", "bf16-true", None, torch.bfloat16),
        # as in Lightning, a bare "bf16" means mixed precision: float32 weights, bfloat16 compute
        ("bf16", "bf16-mixed", torch.bfloat16, torch.float32),
        ("bf16-mixed", "bf16-mixed", torch.bfloat16, torch.float32),
    ],
)
def test_parse_precision_on_cpu(name, canonical, autocast, param):
    p = parse_precision(name, torch.device("cpu"))
    assert (p.name, p.autocast_dtype, p.param_dtype, p.scaler, p.device_type) == (
        canonical,
        autocast,
        param,
        None,
        "cpu",
    )


@pytest.mark.parametrize("name", ["16-mixed", "16", 16, "fp16"])
def test_cpu_refuses_float16_mixed_precision_in_every_spelling(name):
    # "16" used to cast the weights themselves to float16, which gave NaN within two steps
    with pytest.raises(DeviceError, match="bf16-mixed"):
        parse_precision(name, "cpu")


def test_unknown_precision_names_are_refused_with_the_choices():
    with pytest.raises(ConfigError, match="bf16-mixed"):
        parse_precision("fp8", "cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal when CUDA is absent")
def test_cuda_precision_without_cuda_is_refused():
    with pytest.raises(DeviceError, match="CUDA is not available"):
        parse_precision("16-mixed", "cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_16_mixed_on_cuda_has_a_scaler_and_trains():
    p = parse_precision("16-mixed", "cuda")
    assert p.autocast_dtype == torch.float16 and p.scaler is not None
    model, (x, y) = _model().cuda(), _data()
    stepper = OptimizerStepper(torch.optim.SGD(model.parameters(), lr=0.05), precision=p)
    losses = []
    for _ in range(30):
        with p.autocast():
            out = model(x.cuda())
            assert out.dtype == torch.float16
            loss = torch.nn.functional.mse_loss(out.float(), y.cuda())
        stepper.backward(loss)
        stepper.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_bf16_mixed_trains_a_tiny_model_on_cpu():
    p = parse_precision("bf16-mixed", "cpu")
    model, (x, y) = _model(), _data(64)
    stepper = OptimizerStepper(torch.optim.Adam(model.parameters(), lr=0.02), precision=p)
    losses = []
    for _ in range(60):
        with p.autocast():
            out = model(x)
        assert out.dtype == torch.bfloat16  # autocast really ran the linear layers in bf16
        loss = torch.nn.functional.mse_loss(out.float(), y)
        stepper.backward(loss)
        assert stepper.step() is not None
        losses.append(loss.item())
    assert all(prm.dtype == torch.float32 for prm in model.parameters())  # master weights stay fp32
    assert losses[-1] < 0.1 * losses[0]


def test_pure_half_precision_casts_the_model():
    model = parse_precision("bf16-true", "cpu").cast_model(_model())
    assert {prm.dtype for prm in model.parameters()} == {torch.bfloat16}


# ------------------------------------------------------------------------------------------ optimizer stepper


def test_accumulating_four_micro_batches_equals_one_big_batch():
    x, y = _data(16)
    big, acc = _model(), _model()
    opt_big = torch.optim.SGD(big.parameters(), lr=0.1, momentum=0.9)
    opt_acc = torch.optim.SGD(acc.parameters(), lr=0.1, momentum=0.9)
    s_big = OptimizerStepper(opt_big, precision=_fp32())
    s_acc = OptimizerStepper(opt_acc, precision=_fp32())
    for _ in range(3):
        s_big.backward(torch.nn.functional.mse_loss(big(x), y))
        norm_big = s_big.step()
        for xb, yb in zip(x.chunk(4), y.chunk(4), strict=True):
            s_acc.backward(torch.nn.functional.mse_loss(acc(xb), yb), 0.25)  # mean over 4 rows, scaled once
        assert s_acc.step() == pytest.approx(norm_big, rel=1e-5)
    for a, b in zip(big.parameters(), acc.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_clipping_caps_the_update_and_returns_the_raw_norm():
    model, (x, y) = _model(), _data()
    loss_fn = lambda: 100.0 * torch.nn.functional.mse_loss(model(x), y)  # noqa: E731 (large gradients)
    raw = torch.autograd.grad(loss_fn(), list(model.parameters()))
    raw_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in raw])).item()
    assert raw_norm > 1.0
    before = torch.nn.utils.parameters_to_vector(model.parameters()).clone()
    stepper = OptimizerStepper(
        torch.optim.SGD(model.parameters(), lr=1.0), precision=_fp32(), clip_grad_norm=0.5
    )
    stepper.backward(loss_fn())
    assert stepper.step() == pytest.approx(raw_norm, rel=1e-5)
    moved = torch.nn.utils.parameters_to_vector(model.parameters()) - before  # = -lr * clipped grad
    assert torch.linalg.vector_norm(moved).item() == pytest.approx(0.5, rel=1e-4)
    assert all(p.grad is None for p in model.parameters())  # zeroed for the next step


def test_nan_loss_and_nan_grads_leave_weights_unchanged():
    model, (x, y) = _model(), _data()
    before = copy.deepcopy(model.state_dict())
    stepper = OptimizerStepper(torch.optim.SGD(model.parameters(), lr=0.1), precision=_fp32())
    with pytest.raises(NonFiniteError, match="weights are unchanged"):
        stepper.backward(torch.nn.functional.mse_loss(model(x), y) * math.nan)
    # finite loss, NaN gradient (a hook poisons one parameter's grad)
    handle = model[0].weight.register_hook(lambda g: g * math.nan)
    stepper.backward(torch.nn.functional.mse_loss(model(x), y))
    with pytest.raises(NonFiniteError, match="gradient norm is nan"):
        stepper.step()
    handle.remove()
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in model.parameters())


def test_scaler_skips_overflow_steps_and_round_trips_its_state():
    # the float16 path needs CUDA; its logic is device-independent, so drive it with a CPU GradScaler
    precision = Precision(
        "16-mixed", torch.bfloat16, torch.float32, torch.amp.GradScaler("cpu", init_scale=2.0**10), "cpu"
    )
    model, (x, y) = _model(), _data()
    stepper = OptimizerStepper(
        torch.optim.SGD(model.parameters(), lr=0.05), precision=precision, max_consecutive_skips=3
    )
    stepper.backward(torch.nn.functional.mse_loss(model(x), y))
    assert stepper.step() is not None
    before = copy.deepcopy(model.state_dict())
    handle = model[0].weight.register_hook(lambda g: g * math.inf)  # an "overflow"
    for _ in (1, 2):
        stepper.backward(torch.nn.functional.mse_loss(model(x), y))
        assert stepper.step() is None  # skipped, as torch's GradScaler intends
    assert stepper.skipped_steps == 2 and precision.scaler.get_scale() == 2.0**8
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    state = stepper.state_dict()
    stepper.backward(torch.nn.functional.mse_loss(model(x), y))
    with pytest.raises(NonFiniteError, match="3 optimizer steps in a row"):
        stepper.step()
    handle.remove()
    fresh = OptimizerStepper(
        torch.optim.SGD(model.parameters(), lr=0.05),
        max_consecutive_skips=3,
        precision=Precision("16-mixed", torch.bfloat16, torch.float32, torch.amp.GradScaler("cpu"), "cpu"),
    )
    fresh.load_state_dict(state)
    assert fresh.scaler.get_scale() == 2.0**8 and fresh.skipped_steps == 2


def test_apply_lrs():
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [a]}, {"params": [b]}], lr=1.0)
    apply_lrs(opt, [0.5, 0.25])
    assert [g["lr"] for g in opt.param_groups] == [0.5, 0.25]
    with pytest.raises(ConfigError, match="2 parameter groups"):
        apply_lrs(opt, [0.1])


# ------------------------------------------------------------------------------------------------ state trees


class _Mixed(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3, 2)
        self.register_buffer("bf", torch.tensor([1.5, -2.25, 3.0e10], dtype=torch.bfloat16))
        self.register_buffer("count", torch.tensor(7, dtype=torch.int64))


class _Compiled(torch.nn.Module):
    """Stands in for torch.compile's OptimizedModule (same `_orig_mod` layout) without importing dynamo,
    which alone takes tens of seconds on a busy 2-core machine."""

    def __init__(self, module):
        super().__init__()
        self._orig_mod = module


def _assert_same_tree(a, b):
    assert type(a) is type(b), (a, b)
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            _assert_same_tree(a[k], b[k])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for u, v in zip(a, b, strict=True):
            _assert_same_tree(u, v)
    else:
        assert a == b


def _leaves(tree):
    if isinstance(tree, dict):
        return [leaf for v in tree.values() for leaf in _leaves(v)]
    if isinstance(tree, list | tuple):
        return [leaf for v in tree for leaf in _leaves(v)]
    return [tree]


def test_numpy_state_round_trip_keeps_dtypes_int_keys_and_groups(tmp_path):
    model = _Mixed()
    opt = torch.optim.AdamW(
        [{"params": [model.lin.weight], "lr": 0.1}, {"params": [model.lin.bias]}], lr=0.01
    )
    model.lin(torch.ones(4, 3)).sum().backward()
    opt.step()
    checkpoint = pytest.importorskip("common.checkpoint")
    for original in (dict(model.state_dict()), opt.state_dict()):
        tree = to_numpy_state(original)
        assert not any(isinstance(v, torch.Tensor) for v in _leaves(tree))
        _assert_same_tree(from_numpy_state(tree, like=original), original)
        # and through a real checkpoint file (int keys, tuples, bf16 note, 0-d arrays)
        loaded = checkpoint.load_checkpoint(checkpoint.save_checkpoint(tmp_path / "t.ckpt", {"s": tree}))["s"]
        _assert_same_tree(from_numpy_state(loaded, like=original), original)
    tree = to_numpy_state(opt.state_dict())
    assert set(tree["state"]) == {0, 1} and isinstance(tree["state"][0]["exp_avg"], np.ndarray)
    assert tree["param_groups"][0]["betas"] == (0.9, 0.999)
    bf = to_numpy_state(model.state_dict())["bf"]
    assert bf["__torch_dtype__"] == "bfloat16" and bf["data"].dtype == np.float32
    assert from_numpy_state(bf).dtype == torch.bfloat16  # the dtype note alone restores it


def test_to_numpy_state_copies_and_rejects_unknown_objects():
    model = _model()
    tree = to_numpy_state(model.state_dict())
    with torch.no_grad():
        model[0].weight.add_(1.0)
    assert not np.allclose(tree["0.weight"], model[0].weight.detach().numpy())
    with pytest.raises(CheckpointError, match=r"state\.fn"):
        to_numpy_state({"fn": object()})


def _train(model, opt, stepper, x, y, steps):
    for _ in range(steps):
        stepper.backward(torch.nn.functional.mse_loss(model(x), y))
        stepper.step()


def test_checkpoint_save_load_continues_identically(tmp_path):
    checkpoint = pytest.importorskip("common.checkpoint")
    x, y = _data(32)

    def fresh():
        model = _model(seed=1)
        opt = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.1)
        return model, opt, OptimizerStepper(opt, precision=_fp32(), clip_grad_norm=1.0)

    m0, o0, s0 = fresh()
    _train(m0, o0, s0, x, y, 8)

    m1, o1, s1 = fresh()
    _train(m1, o1, s1, x, y, 5)
    path = checkpoint.save_checkpoint(
        tmp_path / "last.ckpt", training_state(_Compiled(m1), o1, stepper=s1.state_dict(), epoch=5)
    )
    m2, o2, s2 = fresh()
    rest = restore_training_state(checkpoint.load_checkpoint(path), m2, o2)
    s2.load_state_dict(rest["stepper"])
    assert rest["epoch"] == 5
    _train(m2, o2, s2, x, y, 3)
    for k, v in m0.state_dict().items():
        assert torch.equal(v, m2.state_dict()[k]), k
    assert o0.state_dict()["state"][0]["step"] == o2.state_dict()["state"][0]["step"] == 8


def test_restore_refuses_a_different_model():
    state = training_state(_model(), None)
    with pytest.raises(CheckpointError, match="do not fit this model"):
        restore_training_state(state, torch.nn.Linear(5, 1), None)


def test_unwrap_and_wrapped_weights():
    model = _model()
    assert unwrap(torch.nn.DataParallel(_Compiled(model))) is model
    wrapped = {f"module.{k}": v for k, v in to_numpy_state(model.state_dict()).items()}
    other = _model(seed=3)
    restore_training_state({"model": wrapped}, other, None)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in other.state_dict().items())
