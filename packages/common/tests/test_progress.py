"""common.progress: log lines when stderr is not a terminal, a tqdm bar when it is."""

from __future__ import annotations

import logging

import pytest

from common import progress as progress_module
from common.progress import progress


@pytest.fixture
def logger(caplog):
    log = logging.getLogger("trainyard.test_progress")
    caplog.set_level(logging.INFO, logger=log.name)
    return log


def messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "trainyard.test_progress"]


def test_not_a_terminal_logs_every_tenth(logger, caplog):
    items = list(progress(range(100), desc="epoch 1", logger=logger))
    assert items == list(range(100))
    lines = messages(caplog)
    assert len(lines) == 10
    assert lines[0].startswith("epoch 1: 10/100 (10%)") and lines[-1].startswith("epoch 1: 100/100 (100%)")
    assert all("it/s" in line for line in lines)


def test_uneven_total_still_logs_the_end(logger, caplog):
    list(progress(range(7), total=7, logger=logger, log_every=0.5))
    assert [line.split()[0] for line in messages(caplog)] == ["4/7", "7/7"]


def test_generator_without_total(logger, caplog):
    items = list(progress((i * i for i in range(10)), logger=logger, log_every=0.25))
    assert items == [i * i for i in range(10)]
    assert [line.split()[0] for line in messages(caplog)] == ["4", "8"]


def test_early_break_stops_quietly(logger, caplog):
    for i in progress(range(100), logger=logger):
        if i == 14:
            break
    assert [line.split()[0] for line in messages(caplog)] == ["10/100"]


def test_terminal_draws_a_tqdm_bar(monkeypatch, capsys, logger, caplog):
    monkeypatch.setattr(progress_module, "stderr_is_terminal", lambda: True)
    items = list(progress(range(5), desc="train", logger=logger))
    assert items == list(range(5))
    err = capsys.readouterr().err
    assert "train:" in err and "0/5" in err and "it/s" in err  # tqdm's bar on stderr (cleared at the end)
    assert messages(caplog) == []
