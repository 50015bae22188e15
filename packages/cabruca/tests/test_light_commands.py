"""The command lines answer `--help` without importing torch, timm or torchvision (their import is most of a
slow start), and `--demo` takes the options typed beside it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from cabruca.train import main
from common.cli import run_cli

HEAVY = ("torch", "timm", "torchvision")
ENTRIES = ("cabruca.train", "cabruca.evaluate", "cabruca.predict", "cabruca.bench", "cabruca.monitor")

# Runs the module as `python -m` would, with --help, then prints which heavy modules were imported.
PROBE = """
import json, runpy, sys
sys.argv = [{module!r}, "--help"]
code = 0
try:
    runpy.run_module({module!r}, run_name="__main__", alter_sys=True)
except SystemExit as exc:
    code = exc.code or 0
print(json.dumps({{"code": code, "heavy": [m for m in {heavy!r} if m in sys.modules]}}))
"""


@pytest.mark.parametrize("module", ENTRIES)
def test_help_imports_no_framework(module):
    probe = PROBE.format(module=module, heavy=HEAVY)
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    *help_text, last = result.stdout.strip().splitlines()
    report = json.loads(last)
    assert report == {"code": 0, "heavy": []}, f"{module} --help imported {report['heavy']}"
    assert "Usage:" in "\n".join(help_text)


def test_demo_takes_the_options_beside_it(tmp_path, capsys):
    run_cli(
        main,
        ["--demo", "--epochs", "2", "--output-dir", str(tmp_path), "--lr", "0.01", "--print-config"]
        + ["training.max_steps_per_epoch=3"],
    )
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["training"]["num_epochs"] == 2 and cfg["training"]["max_steps_per_epoch"] == 3
    assert cfg["optimizer"]["lr"] == 0.01 and cfg["output_dir"] == str(tmp_path)
    assert cfg["data"]["data_dir"] == str(tmp_path / "demo_data") and cfg["experiment_name"] == "demo"
    assert cfg["scheduler"]["type"] == "onecycle"  # the demo's own settings stay where nothing was typed
    assert not any(tmp_path.iterdir())  # printing the config writes nothing


def test_demo_refuses_resume(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        run_cli(main, ["--demo", "--resume", "last", "--output-dir", str(tmp_path)])
    assert exc.value.code == 2 and "--demo starts a new run" in capsys.readouterr().err
