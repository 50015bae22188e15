"""egnn_com's training task on the shared loop: accumulation gives the gradients of one big batch, resumed
epochs start at their saved batch, and the CUDA warm-up leaves no trace."""

import torch

from common.loop import Loop, Plan
from egnn_com.task import cuda_warmup


def first_step_gradients(task, accumulate: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(gradients the first optimizer step applies, weights after it), trained through the loop."""
    captured = []
    step = task.optimizer_step

    def capture():
        captured.extend(p.grad.clone() for p in task.model.parameters())
        return step()

    task.optimizer_step = capture
    Loop(task, Plan(max_epochs=1, max_steps=1, accumulate=accumulate, log_every_n_steps=0)).fit()
    return captured, [p.detach().clone() for p in task.model.parameters()]


def test_k_micro_batches_give_the_gradients_of_one_batch_k_times_larger(make_task):
    # Batch i of an epoch is positions [i*b, (i+1)*b) of the same seeded order, so 4 micro-batches of 4
    # graphs hold exactly the 16 graphs of one batch of 16. egnn: no dropout, so both see the same function.
    small = make_task("model.name=egnn", "data.batch_size=4")
    big = make_task("model.name=egnn", "data.batch_size=16")
    grads_small, weights_small = first_step_gradients(small, accumulate=4)
    grads_big, weights_big = first_step_gradients(big, accumulate=1)
    assert len(grads_small) == len(grads_big) > 0
    assert any(g.abs().max() > 0 for g in grads_big)
    for a, b in zip(grads_small, grads_big, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    for a, b in zip(weights_small, weights_big, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_a_resumed_epoch_yields_the_same_batches_from_its_saved_index(make_task):
    task = make_task("data.batch_size=8")
    assert task.num_batches(0) == 5  # 40 graphs, training drops nothing here
    full = [b.y for b in task.batches(2, 0)]
    tail = [b.y for b in task.batches(2, 3)]
    assert len(full) == 5 and len(tail) == 2
    assert all(torch.equal(a, b) for a, b in zip(full[3:], tail, strict=True))
    assert not torch.equal(full[0], next(iter(task.batches(1, 0))).y)  # another epoch, another order


def test_cuda_warmup_leaves_training_unchanged(make_task):
    task = make_task("model.name=gcn")  # dropout: the warm-up draws from the torch RNG
    before = {k: v.clone() for k, v in task.model.state_dict().items()}
    rng = torch.get_rng_state()
    cuda_warmup(task, steps=2)  # runs on CPU too: the logic is device-independent
    assert all(torch.equal(before[k], v) for k, v in task.model.state_dict().items())
    assert torch.equal(rng, torch.get_rng_state())
    assert not task.optimizer.state and task.wait_s == task.compute_s == 0.0
