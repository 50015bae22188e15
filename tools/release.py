"""Release one workspace package on its own.

    uv run python tools/release.py dtgcnn minor -m "Text-triplet data mode"
    uv run python tools/release.py common patch --dry-run

Steps, in order, stopping at the first failure:
1. bump the version in packages/<name>/pyproject.toml (semver: major | minor | patch);
2. prepend a CHANGELOG.md entry (the -m message, else the subjects of the commits that touched the package
   since its last tag);
3. `uv build --package trainyard-<name>`, plus the workspace packages it depends on, into one folder;
4. install the wheel into a fresh virtual environment (local wheels first) and check that the package imports
   and that its command line answers `--help`;
5. commit the bump and tag it `<name>/v<version>`.

--dry-run builds and verifies the current tree but writes nothing, commits nothing and tags nothing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("major", "minor", "patch")
# What proves an installed package works: its main command line answers --help.
CLI_MODULE = {"common": "common.demo"}
SEMVER = re.compile(r"^(\d+)\.(\d+)\.(\d+)$")
# `uv run` tells its children where uv is; fall back to PATH.
UV = os.environ.get("UV") or "uv"


class ReleaseError(Exception):
    """A release step failed; the message says which and why."""


@dataclass(frozen=True)
class Package:
    name: str  # folder and import name, e.g. "egnn_com"
    folder: Path

    @property
    def pyproject(self) -> Path:
        return self.folder / "pyproject.toml"

    @property
    def changelog(self) -> Path:
        return self.folder / "CHANGELOG.md"

    @property
    def metadata(self) -> dict:
        return tomllib.loads(self.pyproject.read_text())["project"]

    @property
    def distribution(self) -> str:
        return self.metadata["name"]

    @property
    def version(self) -> str:
        return self.metadata["version"]

    @property
    def cli_module(self) -> str:
        return CLI_MODULE.get(self.name, f"{self.name}.train")


def find_package(root: Path, name: str) -> Package:
    folder = root / "packages" / name
    if not (folder / "pyproject.toml").is_file():
        known = sorted(p.parent.name for p in (root / "packages").glob("*/pyproject.toml"))
        raise ReleaseError(
            f"no package '{name}' under {root / 'packages'}; known packages: {', '.join(known)}"
        )
    return Package(name, folder)


def bump(version: str, part: str) -> str:
    match = SEMVER.match(version)
    if not match:
        raise ReleaseError(f"version '{version}' is not MAJOR.MINOR.PATCH")
    major, minor, patch = map(int, match.groups())
    if part == "major":
        return f"{major + 1}.0.0"
    if part == "minor":
        return f"{major}.{minor + 1}.0"
    return f"{major}.{minor}.{patch + 1}"


def set_version(pyproject: Path, old: str, new: str) -> None:
    """Rewrite the [project] version line only, keeping the rest of the file byte for byte."""
    text = pyproject.read_text()
    pattern = re.compile(rf'^(version\s*=\s*")({re.escape(old)})(")', re.MULTILINE)
    if len(pattern.findall(text)) != 1:
        raise ReleaseError(f"{pyproject}: expected exactly one 'version = \"{old}\"' line")
    pyproject.write_text(pattern.sub(rf"\g<1>{new}\g<3>", text))


def workspace_dependencies(root: Path, package: Package) -> list[Package]:
    """Workspace members `package` depends on (directly or not), so their wheels are built alongside."""
    by_distribution = {
        p.distribution: p
        for p in (find_package(root, f.parent.name) for f in root.glob("packages/*/pyproject.toml"))
    }
    found: dict[str, Package] = {}
    pending = [package]
    while pending:
        for requirement in pending.pop().metadata.get("dependencies", []):
            distribution = re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0]
            member = by_distribution.get(distribution)
            if member and member.name not in found:
                found[member.name] = member
                pending.append(member)
    return list(found.values())


def run(command: list[str], cwd: Path, what: str) -> str:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-15:]
        raise ReleaseError(f"{what} failed ({' '.join(command)}):\n" + "\n".join(tail))
    return result.stdout


def changes_since_last_tag(root: Path, package: Package) -> list[str]:
    tags = run(["git", "tag", "--list", f"{package.name}/v*", "--sort=-v:refname"], root, "git tag").split()
    span = f"{tags[0]}..HEAD" if tags else "HEAD"
    log = subprocess.run(
        ["git", "log", "--format=%s", span, "--", str(package.folder.relative_to(root))],
        cwd=root,
        capture_output=True,
        text=True,
    )
    return [line for line in log.stdout.splitlines() if line.strip()] if log.returncode == 0 else []


def changelog_entry(version: str, changes: list[str], today: dt.date) -> str:
    lines = changes or ["Maintenance release."]
    return f"## {version} - {today.isoformat()}\n\n" + "".join(f"- {line}\n" for line in lines) + "\n"


UNRELEASED = re.compile(r"^## Unreleased[^\n]*$", re.MULTILINE)


def prepend_changelog(changelog: Path, entry: str) -> None:
    """Insert the entry above the newest existing one (after the title, if the file has one).

    A curated `## Unreleased` section (Keep a Changelog) becomes the release's entry instead: its heading is
    replaced by the entry's, its notes are kept, and the generated lines are not added.
    """
    text = changelog.read_text() if changelog.exists() else "# Changelog\n\n"
    unreleased = UNRELEASED.search(text)
    if unreleased:
        changelog.write_text(text[: unreleased.start()] + entry.splitlines()[0] + text[unreleased.end() :])
        return
    first_entry = text.find("\n## ")
    if first_entry == -1:
        text = text.rstrip("\n") + "\n\n" + entry
    else:
        text = text[: first_entry + 1] + entry + text[first_entry + 1 :]
    changelog.write_text(text)


def build(root: Path, packages: list[Package], out_dir: Path) -> list[Path]:
    for package in packages:
        run(
            [UV, "build", "--package", package.distribution, "--out-dir", str(out_dir)],
            root,
            f"building {package.distribution}",
        )
    return sorted(out_dir.glob("*.whl"))


def verify(package: Package, wheel_dir: Path, work: Path) -> None:
    """Install the wheel into a brand-new environment and check the import and the CLI."""
    venv = work / "venv"
    run([UV, "venv", str(venv), "--python", sys.executable, "--quiet"], work, "creating a clean venv")
    python = str(venv / "bin" / "python")
    wheel = next(wheel_dir.glob(f"{package.distribution.replace('-', '_')}-{package.version}-*.whl"), None)
    if wheel is None:
        raise ReleaseError(f"no wheel for {package.distribution} {package.version} in {wheel_dir}")
    run(
        [UV, "pip", "install", "--python", python, "--find-links", str(wheel_dir), str(wheel)],
        work,
        f"installing {wheel.name} into a clean venv",
    )
    run([python, "-c", f"import {package.name}"], work, f"importing {package.name}")
    run([python, "-m", package.cli_module, "--help"], work, f"python -m {package.cli_module} --help")


def release(
    root: Path,
    name: str,
    part: str,
    *,
    message: str | None = None,
    dry_run: bool = False,
    today: dt.date | None = None,
    log=print,
) -> str:
    package = find_package(root, name)
    old = package.version
    new = bump(old, part)
    tag = f"{name}/v{new}"
    if run(["git", "tag", "--list", tag], root, "git tag").strip():
        raise ReleaseError(f"tag {tag} already exists")
    entry = changelog_entry(
        new, [message] if message else changes_since_last_tag(root, package), today or dt.date.today()
    )
    log(f"{package.distribution}: {old} -> {new} (tag {tag}){' [dry run]' if dry_run else ''}")
    log(entry.rstrip())

    originals = {
        path: path.read_text()
        for path in (package.pyproject, package.changelog, root / "uv.lock")
        if path.exists()
    }
    try:
        if not dry_run:
            set_version(package.pyproject, old, new)
            prepend_changelog(package.changelog, entry)
            run([UV, "lock"], root, "updating uv.lock for the new version")
        with tempfile.TemporaryDirectory(prefix=f"release-{name}-") as tmp:
            work = Path(tmp)
            wheels = build(root, [package, *workspace_dependencies(root, package)], work / "dist")
            log("built: " + ", ".join(w.name for w in wheels))
            verify(package, work / "dist", work)
            log(f"verified: clean install imports {name} and `python -m {package.cli_module} --help` answers")
    except ReleaseError:
        for path, text in originals.items():  # a failed release leaves the tree as it found it
            path.write_text(text)
        raise
    if dry_run:
        log("dry run: nothing written, committed or tagged")
        return tag
    run(["git", "add", str(package.pyproject), str(package.changelog), "uv.lock"], root, "git add")
    run(["git", "commit", "-m", f"Release {package.distribution} {new}"], root, "git commit")
    run(["git", "tag", "-a", tag, "-m", f"{package.distribution} {new}"], root, "git tag")
    log(f"tagged {tag}; push with: git push origin main {tag}")
    return tag


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("package", help="folder name under packages/, e.g. dtgcnn")
    parser.add_argument("part", choices=PARTS, help="which part of the version to bump")
    parser.add_argument(
        "-m", "--message", help="changelog line (default: commit subjects since the last tag)"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="build and verify only; write, commit, tag nothing"
    )
    parser.add_argument("--root", type=Path, default=ROOT, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        release(args.root, args.package, args.part, message=args.message, dry_run=args.dry_run)
    except ReleaseError as error:
        print(f"release: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
