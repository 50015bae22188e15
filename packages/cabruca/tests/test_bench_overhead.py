"""The trainer-overhead measurement: the shared loop and a hand-written loop alternate step by step, and they
do exactly the same work, so both models end with the same weights (checked, never the speed)."""

from __future__ import annotations

import torch

from cabruca.benchmark import overhead_config, train_interleaved

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
