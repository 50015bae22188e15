"""Dependency rules between packages (DESIGN.md): checked statically and in fresh interpreters."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOMAIN = ["dtgcnn", "egnn_com", "spectral_mae", "cabruca"]
# Modules of common that must import without any ML framework (the adapters are the exceptions).
FRAMEWORK_ADAPTERS = {"torch_support", "mlx_support"}


def imported_top_level_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("name", DOMAIN)
def test_domain_package_never_imports_another(name: str):
    others = set(DOMAIN) - {name}
    offenders = {
        str(path.relative_to(ROOT)): sorted(imported_top_level_modules(path) & (others | {"tools"}))
        for path in (ROOT / "packages" / name).rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_common_never_imports_a_domain_package_or_tools():
    for path in (ROOT / "packages" / "common" / "src").rglob("*.py"):
        assert not imported_top_level_modules(path) & (set(DOMAIN) | {"tools"}), path


def run_fresh(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)


def test_import_common_pulls_in_no_framework():
    modules = sorted(
        p.stem
        for p in (ROOT / "packages/common/src/common").glob("*.py")
        if p.stem not in FRAMEWORK_ADAPTERS | {"__main__"}
    ) + ["trackers"]
    imports = "; ".join(f"import common.{m}" for m in modules if m != "__init__")
    code = (
        f"import sys, common; {imports}; "
        "bad = sorted(m for m in ('torch', 'mlx', 'tensorboard', 'mlflow', 'wandb') if m in sys.modules); "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = run_fresh(code)
    assert result.returncode == 0, result.stdout + result.stderr
