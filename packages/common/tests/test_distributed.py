from __future__ import annotations

import json
import subprocess
import sys

import pytest

from common import distributed as d
from common.errors import ConfigError
from common.testing import run_process_group

# What each of the two ranks runs: join the gloo group from the env, average rank-specific values.
WORKER = """
import json, sys
from common import distributed as d

@d.rank_zero_only
def say(text):
    print(text)
    return "said"

assert d.init_distributed("cpu")
rank = d.get_rank()
mean = d.all_reduce_mean({"loss": 1.0 + rank, "count": 10.0 * rank, "big": 1e15 + rank})
d.barrier()
said = say("hello from rank zero")
print(json.dumps({"rank": rank, "world": d.get_world_size(), "main": d.is_main_process(), "mean": mean,
                  "said": said}))
d.cleanup_distributed()
"""


def test_two_processes_average_their_values():
    outputs = run_process_group(WORKER, timeout=120)
    results = [json.loads(lines[-1]) for lines in outputs]
    for rank, r in enumerate(results):
        assert (r["rank"], r["world"], r["main"]) == (rank, 2, rank == 0)
        assert r["mean"] == {"loss": 1.5, "count": 5.0, "big": 1e15 + 0.5}
        assert list(r["mean"]) == ["loss", "count", "big"]  # input order kept
    assert outputs[0][:-1] == ["hello from rank zero"] and results[0]["said"] == "said"
    assert outputs[1][:-1] == [] and results[1]["said"] is None


def test_single_process_defaults(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    assert (d.get_rank(), d.get_world_size(), d.get_local_rank(), d.is_main_process()) == (0, 1, 0, True)
    assert d.init_distributed("cpu") is False
    values = {"a": 1, "b": 2.5}
    assert d.all_reduce_mean(values) == {"a": 1.0, "b": 2.5}
    d.barrier()
    d.cleanup_distributed()
    assert d.rank_zero_only(lambda: 42)() == 42


def test_env_ranks_and_clear_errors(monkeypatch):
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert (d.get_rank(), d.get_world_size(), d.get_local_rank(), d.is_main_process()) == (3, 4, 1, False)
    assert d.rank_zero_only(lambda: 42)() is None
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(ConfigError, match="MASTER_ADDR.*torchrun"):
        d.init_distributed("cpu")
    monkeypatch.setenv("RANK", "zero")
    with pytest.raises(ConfigError, match="RANK"):
        d.get_rank()


def test_module_does_not_import_torch():
    code = "import sys, common.distributed as d; d.is_main_process(); sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
