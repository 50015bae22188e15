"""Per-component metrics against a hand-computed case, exact epoch aggregation and state round trip."""

import math

import pytest
import torch

from egnn_com.metrics import RegressionMetrics, mae_loss


def test_metrics_hand_computed():
    pred = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    target = torch.tensor([[0.0, 2.0, 1.0], [1.0, -3.0, 0.0]])
    # errors: [[1, 0, 2], [-1, 3, 0]]
    m = RegressionMetrics().update(pred, target)
    assert (
        m["mae_x"] == pytest.approx(1.0)
        and m["mae_y"] == pytest.approx(1.5)
        and m["mae_z"] == pytest.approx(1.0)
    )
    assert (
        m["mse_x"] == pytest.approx(1.0)
        and m["mse_y"] == pytest.approx(4.5)
        and m["mse_z"] == pytest.approx(2.0)
    )
    assert m["mae"] == pytest.approx(7 / 6) and m["mse"] == pytest.approx(15 / 6) and m["loss"] == m["mae"]
    assert mae_loss(pred, target).item() == pytest.approx(7 / 6)


def test_epoch_metrics_are_exact_over_uneven_batches_and_survive_state_round_trip():
    acc = RegressionMetrics()
    acc.update(torch.zeros(3, 3), torch.ones(3, 3))  # 3 graphs with error 1
    state = acc.state_dict()
    resumed = RegressionMetrics()
    resumed.load_state_dict(state)
    for a in (acc, resumed):
        a.update(torch.zeros(1, 3), torch.full((1, 3), 5.0))  # 1 graph with error 5
    for a in (acc, resumed):
        assert a.compute()["mae"] == pytest.approx((3 * 1 + 5) / 4)  # not the mean of batch means (3.0)
        assert a.compute()["mse_z"] == pytest.approx((3 + 25) / 4)
    acc.reset()
    assert math.isnan(acc.compute()["mae"])
