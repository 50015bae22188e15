"""Every installed command answers `--help` without importing a framework (torch, timm, torchvision, PyG,
MLX): their import is most of a slow start, and help should be instant."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "timm", "torchvision", "torch_geometric", "mlx")

# Runs the command's module as `python -m` does, with --help, then prints which heavy modules were imported.
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


def console_scripts() -> list[tuple[str, str]]:
    """(command, module) for every `[project.scripts]` entry of the workspace's packages."""
    scripts = []
    for pyproject in sorted(ROOT.glob("packages/*/pyproject.toml")):
        for name, target in tomllib.loads(pyproject.read_text())["project"].get("scripts", {}).items():
            scripts.append((name, target.split(":")[0]))
    return scripts


@pytest.mark.parametrize(("command", "module"), console_scripts(), ids=[c for c, _ in console_scripts()])
def test_help_imports_no_framework(command, module):
    probe = PROBE.format(module=module, heavy=HEAVY)
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    *help_text, last = result.stdout.strip().splitlines()
    report = json.loads(last)
    assert report == {"code": 0, "heavy": []}, f"{command} --help imported {report['heavy']}"
    assert "Usage:" in "\n".join(help_text)
    short = subprocess.run([sys.executable, "-m", module, "-h"], capture_output=True, text=True, timeout=120)
    assert short.returncode == 0 and "Usage:" in short.stdout, f"{command} -h: {short.stderr[-500:]}"
