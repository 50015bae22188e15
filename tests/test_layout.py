"""The workspace's shape: members, names, versions, owners, shared settings."""

import re
import tomllib
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["common", "dtgcnn", "egnn_com", "spectral_mae", "cabruca", "dashboard"]


def pyproject(path: Path) -> dict:
    return tomllib.loads(path.read_text())


def test_root_is_a_virtual_workspace_with_shared_settings():
    root = pyproject(ROOT / "pyproject.toml")
    assert root["tool"]["uv"]["package"] is False
    assert root["tool"]["uv"]["workspace"]["members"] == ["packages/*"]
    assert root["tool"]["pytest"]["ini_options"]["testpaths"] == ["tests", "packages"]
    assert "--import-mode=importlib" in root["tool"]["pytest"]["ini_options"]["addopts"]
    assert "ruff" in root["tool"]
    assert (ROOT / "uv.lock").is_file()
    assert (ROOT / ".ci" / "run").stat().st_mode & 0o111


@pytest.mark.parametrize("name", PACKAGES)
def test_member_layout(name: str):
    folder = ROOT / "packages" / name
    project = pyproject(folder / "pyproject.toml")["project"]
    assert project["name"] == "trainyard-" + name.replace("_", "-")
    assert re.fullmatch(r"\d+\.\d+\.\d+", project["version"])
    assert SpecifierSet(project["requires-python"]).contains("3.11.7")  # uv must use the machine's 3.11
    for required in ("README.md", "CHANGELOG.md", f"src/{name}/__init__.py", "tests"):
        assert (folder / required).exists(), f"packages/{name}/{required} is missing"
    assert f"## {project['version']}" in (folder / "CHANGELOG.md").read_text()


def test_every_package_has_an_owner():
    owned = {
        line.split()[0]
        for line in (ROOT / "CODEOWNERS").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for name in PACKAGES:
        assert f"/packages/{name}/" in owned


def test_readme_names_every_package_and_the_two_commands():
    readme = (ROOT / "README.md").read_text()
    for name in PACKAGES:
        assert f"packages/{name}" in readme
    assert "uv run pytest" in readme
