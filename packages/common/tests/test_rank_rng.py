"""Every process's RNG state in a multi-process run: each rank draws its own stream, rank 0's checkpoint holds
all of them, and a SIGKILL-style stop + resume continues every rank's draws exactly (a real 2-process gloo
group); on another number of processes the ranks re-seed from the checkpoint by a documented rule."""

from __future__ import annotations

import json

import numpy as np

from common import loop as loop_module
from common.seeding import capture_rng_state, restore_rng_state, seed_everything, split_rank_streams
from common.testing import assert_trees_equal, run_process_group

# Each rank trains common's regression task with input dropout drawn from numpy's global RNG, its gradients
# averaged over the group: a full run, a run stopped at step 3 (mid-epoch, checkpoint written), its resume.
WORKER = """
import json, sys
from pathlib import Path
import numpy as np
from common import distributed as d
from common.callbacks import ModelCheckpoint
from common.checkpoint import load_checkpoint
from common.demo import DemoConfig, RegressionTask
from common.loop import Loop, Plan
from common.sampler import ResumableSampler
from common.schedules import ConstantSchedule
from common.seeding import seed_everything

assert d.init_distributed("cpu")
rank, world, out = d.get_rank(), d.get_world_size(), Path(sys.argv[1])


class ShardedRegression(RegressionTask):
    def __init__(self, cfg):
        super().__init__(cfg)
        self.sampler = ResumableSampler(len(self.x), cfg.batch_size, seed=cfg.seed, rank=rank, world_size=world)
        self.draws = []

    def micro_step(self, batch, scale):
        state = np.random.get_state()
        self.draws.append(float(np.random.random_sample()))
        np.random.set_state(state)  # the dropout mask below draws the same numbers
        return super().micro_step(batch, scale)

    def optimizer_step(self):
        mean = d.all_reduce_mean({str(i): g for i, g in enumerate(self.grad)})
        self.grad = np.array([mean[str(i)] for i in range(len(self.grad))])
        return super().optimizer_step()

    def reduce_metrics(self, metrics):
        return d.all_reduce_mean(metrics)


def run(folder, max_steps=None, resume=None):
    cfg = DemoConfig(samples=32, features=4, batch_size=4, dropout=0.3)
    seed_everything(cfg.seed)
    task = ShardedRegression(cfg)
    savers = [ModelCheckpoint(out / folder, save_last="last.npz", every_n_steps=2, step_file="step.npz")]
    plan = Plan(max_epochs=2, max_steps=max_steps, log_every_n_steps=0)
    loop = Loop(task, plan, callbacks=savers if rank == 0 else [], schedule=ConstantSchedule([0.05]),
                resume=resume)
    loop.fit()
    d.barrier()  # rank 0's files are complete before anyone reads them
    return task


full = run("full")
stopped = run("stopped", max_steps=3)
resumed = run("resumed", resume=out / "stopped" / "step.npz")
ckpt = load_checkpoint(out / "stopped" / "step.npz")
print(json.dumps({"rank": rank, "w_full": full.w.tolist(), "w_resumed": resumed.w.tolist(),
                  "draws_full": full.draws, "draws_split": stopped.draws + resumed.draws,
                  "rng_ranks": len(ckpt.get("rng_ranks", [])), "step": int(ckpt["global_step"])}))
d.cleanup_distributed()
"""


def test_two_ranks_draw_apart_and_a_stopped_run_resumes_every_rank_exactly(tmp_path):
    results = [json.loads(lines[-1]) for lines in run_process_group(WORKER, str(tmp_path))]
    for r in results:
        assert r["step"] == 3 and r["rng_ranks"] == 2  # rank 0's step file holds both processes' states
        assert len(r["draws_full"]) == 8  # 2 epochs x 4 micro-batches of this rank's shard
        assert r["draws_split"] == r["draws_full"]  # every draw after the resume is the one never stopped
        assert r["w_resumed"] == r["w_full"]  # bit-identical weights
    assert results[0]["w_full"] == results[1]["w_full"]  # averaged gradients: one model
    assert not set(results[0]["draws_full"]) & set(results[1]["draws_full"])  # each rank its own dropout


def test_another_number_of_processes_resplits_the_ranks_from_the_checkpoint(monkeypatch):
    seed_everything(7)
    rank0 = capture_rng_state()
    split_rank_streams(1)
    rank1 = capture_rng_state()
    assert not np.array_equal(rank0["numpy"]["keys"], rank1["numpy"]["keys"])
    state = {"rng": rank0, "rng_ranks": [rank0, rank1]}

    def resumed_state(rank: int, world: int, saved_world: int) -> dict:
        monkeypatch.setattr(loop_module, "get_rank", lambda: rank)
        monkeypatch.setattr(loop_module, "get_world_size", lambda: world)
        seed_everything(123)  # whatever the process held before: the checkpoint decides
        loop_module._restore_rank_rng(state, saved_world)
        return capture_rng_state()

    # same number of processes: each rank its own saved state
    assert_trees_equal(resumed_state(0, 2, 2), rank0)
    assert_trees_equal(resumed_state(1, 2, 2), rank1)
    # three processes from a two-process checkpoint: rank 0 takes rank 0's state, ranks 1 and 2 split off it
    assert_trees_equal(resumed_state(0, 3, 2), rank0)
    third = [resumed_state(r, 3, 2) for r in (1, 2)]
    restore_rng_state(rank0)
    split_rank_streams(2)
    assert_trees_equal(third[1], capture_rng_state())  # a pure function of the checkpoint and the rank
    assert not np.array_equal(third[0]["numpy"]["keys"], third[1]["numpy"]["keys"])
