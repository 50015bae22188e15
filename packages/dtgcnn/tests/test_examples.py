"""Every script in packages/dtgcnn/examples/ runs to the end (in-process, in a temporary folder)."""

import runpy
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.py"))


@pytest.mark.parametrize("script", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs(script, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", [str(script)])
    runpy.run_path(str(script), run_name="__main__")
    written = [p for p in (tmp_path / "example_outputs").rglob("*") if p.is_file()]
    for png in (p for p in written if p.suffix == ".png"):
        assert png.stat().st_size > 10_000, png  # a labelled figure, not an empty canvas
