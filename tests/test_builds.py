"""Every member builds a wheel and an sdist on its own, and the wheel ships its bundled configs."""

import os
import subprocess
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["common", "dtgcnn", "egnn_com", "spectral_mae", "cabruca", "dashboard"]
UV = os.environ.get("UV") or "uv"


@pytest.mark.parametrize("name", PACKAGES)
def test_member_builds_wheel_and_sdist(name: str, tmp_path: Path):
    distribution = "trainyard-" + name.replace("_", "-")
    subprocess.run(
        [UV, "build", "--package", distribution, "--out-dir", str(tmp_path), "--quiet"], cwd=ROOT, check=True
    )
    wheels = list(tmp_path.glob("*.whl"))
    sdists = list(tmp_path.glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1
    members = zipfile.ZipFile(wheels[0]).namelist()
    assert f"{name}/__init__.py" in members
    bundled = [
        p.relative_to(ROOT / "packages" / name / "src").as_posix()
        for p in (ROOT / "packages" / name / "src" / name).rglob("configs/**/*.yaml")
    ]
    assert sorted(set(bundled) - set(members)) == []
