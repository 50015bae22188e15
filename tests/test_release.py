"""tools/release.py on a throwaway copy of the workspace holding only `common`."""

import datetime as dt
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

from tools import release

ROOT = Path(__file__).resolve().parents[1]


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """A one-member uv workspace under git, with common copied from this checkout."""
    root = tmp_path / "ws"
    shutil.copytree(
        ROOT / "packages" / "common",
        root / "packages" / "common",
        ignore=shutil.ignore_patterns("tests", "__pycache__", "*.egg-info"),
    )
    # a changelog of its own: the real one may hold an Unreleased section, which a release would use instead
    (root / "packages" / "common" / "CHANGELOG.md").write_text(
        "# Changelog\n\n## 0.1.0 - 2026-11-22\n\n- First.\n"
    )
    (root / "pyproject.toml").write_text(
        textwrap.dedent("""
        [project]
        name = "ws"
        version = "0"
        requires-python = ">=3.11"
        [tool.uv]
        package = false
        [tool.uv.workspace]
        members = ["packages/*"]
    """)
    )
    subprocess.run([release.UV, "lock", "--quiet"], cwd=root, check=True)
    git(root, "init", "--quiet", "--initial-branch=main")
    git(root, "-c", "user.name=t", "-c", "user.email=t@t", "add", ".")
    git(
        root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "--quiet", "-m", "Add the common toolkit"
    )
    git(root, "config", "user.name", "Release Bot")
    git(root, "config", "user.email", "bot@example.com")
    return root


def test_bump_follows_semver():
    assert release.bump("0.1.0", "patch") == "0.1.1"
    assert release.bump("0.1.9", "minor") == "0.2.0"
    assert release.bump("1.4.2", "major") == "2.0.0"
    with pytest.raises(release.ReleaseError, match="MAJOR.MINOR.PATCH"):
        release.bump("1.0", "patch")


OLDER = "## 0.1.0 - 2026-01-01\n\n- First.\n"


@pytest.mark.parametrize(
    ("before", "notes"),
    [
        ("", "- Second.\n"),  # no curated notes: the generated lines go above the newest entry
        ("## Unreleased\n\n- Curated note.\n\n", "- Curated note.\n"),  # curated notes become the entry
    ],
)
def test_changelog_entry_goes_above_the_newest(tmp_path: Path, before: str, notes: str):
    changelog = tmp_path / "CHANGELOG.md"
    changelog.write_text(f"# Changelog\n\n{before}{OLDER}")
    release.prepend_changelog(changelog, release.changelog_entry("0.2.0", ["Second."], dt.date(2026, 2, 2)))
    assert changelog.read_text() == f"# Changelog\n\n## 0.2.0 - 2026-02-02\n\n{notes}\n{OLDER}"


def test_workspace_dependencies_are_built_alongside():
    egnn = release.find_package(ROOT, "egnn_com")
    assert [p.name for p in release.workspace_dependencies(ROOT, egnn)] == ["common"]


def test_unknown_package_names_the_known_ones():
    with pytest.raises(release.ReleaseError, match="known packages: .*common"):
        release.find_package(ROOT, "nope")


def test_dry_run_builds_and_verifies_but_changes_nothing(workspace: Path):
    before = {p: p.read_text() for p in workspace.rglob("*") if p.is_file() and ".git" not in p.parts}
    lines: list[str] = []
    tag = release.release(workspace, "common", "minor", dry_run=True, log=lines.append)
    assert tag == "common/v0.2.0"
    assert any(line.startswith("verified:") for line in lines)
    after = {p: p.read_text() for p in workspace.rglob("*") if p.is_file() and ".git" not in p.parts}
    assert after == before
    assert git(workspace, "tag", "--list").strip() == ""


def test_release_bumps_changelog_builds_verifies_commits_and_tags(workspace: Path):
    lines: list[str] = []
    release.release(workspace, "common", "patch", today=dt.date(2026, 11, 22), log=lines.append)

    package = release.find_package(workspace, "common")
    assert package.version == "0.1.1"
    changelog = package.changelog.read_text()
    assert "## 0.1.1 - 2026-11-22\n\n- Add the common toolkit\n" in changelog
    assert changelog.index("0.1.1") < changelog.index("0.1.0")
    assert git(workspace, "tag", "--list").split() == ["common/v0.1.1"]
    assert git(workspace, "log", "-1", "--format=%s").strip() == "Release trainyard-common 0.1.1"
    assert git(workspace, "status", "--porcelain").strip() == ""  # uv.lock was updated and committed too
    with pytest.raises(release.ReleaseError, match="already exists"):
        git(workspace, "tag", "common/v0.1.2")
        release.release(workspace, "common", "patch", log=lines.append)
