"""The trainer-overhead measurement: the shared loop and a hand-written loop alternate step by step, and they
do exactly the same work, so both models end with the same weights (checked, never the speed)."""

from __future__ import annotations

import copy

import torch

from cabruca.benchmark import overhead_config, train_interleaved
from cabruca.engine import CabrucaTask
from cabruca.optim import backward_and_step

from .conftest import make_cfg


def test_trainer_and_bare_loop_alternate_and_end_with_the_same_weights(tiny_data, tmp_path):
    cfg = overhead_config(make_cfg(tiny_data, tmp_path / "out"), tiny_data, 64, 2, steps=3, warmup=1)
    timer, task, bare_task = train_interleaved(cfg, torch.device("cpu"), warmup=1)
    assert len(timer.trainer) == len(timer.bare) == 3  # 4 steps each, the first untimed
    assert all(t > 0 for t in timer.trainer + timer.bare)
    trained, bare = task.model.state_dict(), bare_task.model.state_dict()
    assert trained.keys() == bare.keys()
    for name, value in trained.items():
        torch.testing.assert_close(bare[name], value, rtol=0, atol=0, msg=name)
    first = next(iter(task.model.parameters()))
    assert not torch.equal(first, next(iter(type(task)(cfg, torch.device("cpu")).model.parameters())))


def test_the_benches_step_is_the_trainers_optimizer_step(tiny_data, tmp_path):
    """`backward_and_step` (the bench's training rows and peer pair) moves the weights exactly as the trainer's
    task does: the config's optimizer, its learning rate and the gradient clipping (tight here, so it acts)."""
    cfg = make_cfg(tiny_data, tmp_path / "out", **{"training.gradient_clip": 0.01})
    device = torch.device("cpu")
    task = CabrucaTask(cfg, device)
    twin = copy.deepcopy(task.model)
    batch = next(iter(task.batches(0, 0)))
    torch.manual_seed(1)
    task.micro_step(batch, 1.0)
    task.stepper.step()
    torch.manual_seed(1)
    backward_and_step(twin, cfg, device)(task.loss_fn(twin(batch["image"]), batch)["loss"])
    before = CabrucaTask(cfg, device).model.state_dict()  # the same seeded initial weights
    trained = task.model.state_dict()
    for name, value in twin.state_dict().items():
        torch.testing.assert_close(value, trained[name], rtol=0, atol=0, msg=name)
    assert any(not torch.equal(trained[name], before[name]) for name in before)  # the step moved the weights
    assert all(p.grad is None for p in twin.parameters())  # the step zeroes the gradients, as the trainer's
