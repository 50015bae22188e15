from __future__ import annotations

import json
import math

import pytest

from common.early_stopping import EarlyStopping
from common.errors import CheckpointError, ConfigError


def _stop_epoch(es: EarlyStopping, values, start: int = 0) -> int | None:
    for epoch, v in enumerate(values[start:], start=start):
        if es.update({"val_loss": v, "other": 0.0}):
            return epoch
    return None


def test_min_mode_counts_patience_and_min_delta():
    es = EarlyStopping(patience=3, min_delta=0.05)
    # 1.0 best; 0.97 is not better by > 0.05 (wait 1); 0.9 improves; then 3 non-improving -> stop at epoch 5
    assert _stop_epoch(es, [1.0, 0.97, 0.9, 0.86, 0.9, 0.88, 0.1]) == 5
    assert es.best == 0.9 and es.wait == 3 and es.should_stop
    assert "val_loss" in es.reason and "patience 3" in es.reason
    assert es.update({"val_loss": 0.0}) is True  # stays stopped


def test_max_mode_and_zero_patience():
    es = EarlyStopping(monitor="acc", mode="max", patience=0)
    # patience 0: the first value sets the best, the first non-improvement stops
    assert [es.update({"acc": a}) for a in (0.5, 0.6, 0.6)] == [False, False, True]
    es = EarlyStopping(monitor="acc", mode="max", patience=1)
    assert [es.update({"acc": a}) for a in (0.5, 0.6, 0.7, 0.7)] == [False, False, False, True]
    assert es.best == 0.7


def test_non_finite_stops_at_once_when_checked():
    es = EarlyStopping(patience=10)
    assert not es.update({"val_loss": 1.0})
    assert es.update({"val_loss": math.nan})
    assert "not finite" in es.reason and es.best == 1.0
    unchecked = EarlyStopping(patience=2, check_finite=False)
    assert [unchecked.update({"val_loss": v}) for v in (math.nan, 1.0, math.inf, math.nan)] == [
        False,
        False,
        False,
        True,
    ]
    assert unchecked.best == 1.0


def test_resumed_instance_stops_at_the_same_epoch():
    values = [1.0, 0.8, 0.81, 0.7, 0.75, 0.72, 0.71, 0.69, 0.7, 0.7, 0.7, 0.7, 0.2]
    whole = EarlyStopping(patience=4, min_delta=0.005)
    expected = _stop_epoch(whole, values)
    assert expected == 11
    for cut in range(1, expected):
        first = EarlyStopping(patience=4, min_delta=0.005)
        _stop_epoch(first, values[:cut])
        state = json.loads(json.dumps(first.state_dict()))
        resumed = EarlyStopping(patience=4, min_delta=0.005)
        resumed.load_state_dict(state)
        assert _stop_epoch(resumed, values, start=cut) == expected
        assert resumed.state_dict() == whole.state_dict()


def test_bad_input_is_a_clear_error():
    with pytest.raises(ConfigError, match="val_los.*other"):
        EarlyStopping(monitor="val_los").update({"val_loss": 1.0, "other": 2.0})
    with pytest.raises(ConfigError, match="mode"):
        EarlyStopping(mode="lowest")
    with pytest.raises(ConfigError, match="min_delta"):
        EarlyStopping(min_delta=-1)
    with pytest.raises(CheckpointError, match="val_acc"):
        EarlyStopping().load_state_dict(EarlyStopping(monitor="val_acc", mode="max").state_dict())
