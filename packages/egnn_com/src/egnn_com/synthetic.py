"""Deterministic molecule-like graphs for demos, tests and benchmarks.

Each graph is grown atom by atom: a new atom bonds to a random heavy atom already placed, at the sum of the two
covalent radii (plus a little noise), in a random direction that keeps it clear of the other atoms. The
molecule is then randomly rotated and translated, edges join atoms closer than a cutoff radius, and the target
is the mass-weighted mean position (the centre of mass). Graph i depends only on (seed, i).

    python -m egnn_com.synthetic data/processed_sh --num_graphs 500 --min_nodes 10 --max_nodes 40
"""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np

from common.cli import run_cli
from common.errors import DataError

ATOM_TYPES = ("H", "C", "N", "O", "S")
ATOM_MASSES = np.array([1.008, 12.011, 14.007, 15.999, 32.06])
COVALENT_RADII = np.array([0.31, 0.76, 0.71, 0.66, 1.05])  # Angstrom; bond length ~ r_a + r_b
ATOM_PROBS = np.array([0.45, 0.35, 0.08, 0.10, 0.02])
VALENCE = np.array([1, 4, 3, 2, 2])  # bonds an atom can take; keeps molecules chain- and tree-like
MIN_SEPARATION = 0.9  # Angstrom: non-bonded atoms never closer than this
SIZE_PRESETS = {
    "small": (10, 60),
    "medium": (100, 300),
    "large": (500, 700),
}  # node ranges of the benchmark size classes


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """Uniform random proper rotation [3, 3] (QR of a Gaussian matrix, signs fixed, det = +1)."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _grow_positions(rng: np.random.Generator, types: np.ndarray) -> np.ndarray:
    """3D positions [N, 3] for atom types [N]: each atom bonds to an earlier atom with a free valence."""
    n = len(types)
    pos = np.zeros((n, 3))
    free = np.zeros(n, dtype=np.int64)  # remaining valence per placed atom
    free[0] = VALENCE[types[0]]
    for k in range(1, n):
        open_atoms = np.flatnonzero(free[:k] > 0)
        # a saturated molecule (rare: too many hydrogens drawn) grows from any atom rather than stopping
        parent = int(rng.choice(open_atoms)) if len(open_atoms) else int(rng.integers(k))
        bond = COVALENT_RADII[types[parent]] + COVALENT_RADII[types[k]] + rng.normal(0.0, 0.02)
        best, best_gap = None, -1.0
        for _ in range(30):  # a few tries to find a direction clear of the other atoms; keep the clearest
            direction = rng.normal(size=3)
            candidate = pos[parent] + bond * direction / np.linalg.norm(direction)
            gap = np.min(np.linalg.norm(pos[:k] - candidate, axis=1))
            if gap > best_gap:
                best, best_gap = candidate, gap
            if gap >= MIN_SEPARATION:
                break
        pos[k] = best
        free[parent] -= 1
        free[k] = VALENCE[types[k]] - 1
    return pos


def radius_edges(pos: np.ndarray, cutoff: float) -> np.ndarray:
    """Directed edges [2, E] (both directions, no self loops) between atoms closer than `cutoff`."""
    dist = np.linalg.norm(pos[:, None, :] - pos[None, :, :], axis=-1)  # [N, N]
    src, dst = np.nonzero((dist < cutoff) & ~np.eye(len(pos), dtype=bool))
    return np.stack([src, dst]).astype(np.int64)


def make_graph(
    seed: int,
    index: int,
    *,
    min_nodes: int = 10,
    max_nodes: int = 40,
    translation: float = 10.0,
    cutoff: float = 2.0,
) -> dict[str, np.ndarray]:
    """One graph as numpy arrays: x [N, 5] one-hot atom type, pos [N, 3], edge_index [2, E], mass [N], y [1, 3]."""
    rng = np.random.default_rng([seed, index])
    n = int(rng.integers(min_nodes, max_nodes + 1))
    types = rng.choice(len(ATOM_TYPES), size=n, p=ATOM_PROBS)
    types[0] = 1  # start from a carbon so the molecule can grow
    pos = _grow_positions(rng, types)
    pos = pos @ random_rotation(rng).T + rng.uniform(-translation, translation, size=3)
    mass = ATOM_MASSES[types]
    centre = (mass[:, None] * pos).sum(0) / mass.sum()  # [3] mass-weighted mean position
    return {
        "x": np.eye(len(ATOM_TYPES), dtype=np.float32)[types],
        "pos": pos.astype(np.float32),
        "edge_index": radius_edges(pos, cutoff),
        "mass": mass.astype(np.float32),
        "y": centre[None, :].astype(np.float32),
    }


def write_graph(path: Path, graph: dict[str, np.ndarray]) -> None:
    """Write one graph as a torch tensor dict (.pt, loads with weights_only=True) or an .npz archive."""
    if path.suffix == ".npz":
        np.savez(path, **graph)
    else:
        import torch

        torch.save({k: torch.from_numpy(v) for k, v in graph.items()}, path)


def generate_dataset(
    out_dir: str | Path,
    *,
    num_graphs: int = 500,
    seed: int = 0,
    min_nodes: int = 10,
    max_nodes: int = 40,
    translation: float = 10.0,
    cutoff: float = 2.0,
    fmt: str = "pt",
) -> Path:
    """Write `num_graphs` graph files into out_dir (graph_00000.pt, ...) plus dataset_info.json."""
    if num_graphs < 1 or min_nodes < 2 or max_nodes < min_nodes:
        raise DataError(
            f"synthetic: need num_graphs >= 1 and 2 <= min_nodes <= max_nodes, got num_graphs="
            f"{num_graphs}, min_nodes={min_nodes}, max_nodes={max_nodes}."
        )
    if fmt not in ("pt", "npz"):
        raise DataError(f"synthetic: format must be 'pt' or 'npz', got {fmt!r}.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for i in range(num_graphs):
        graph = make_graph(
            seed, i, min_nodes=min_nodes, max_nodes=max_nodes, translation=translation, cutoff=cutoff
        )
        write_graph(out / f"graph_{i:05d}.{fmt}", graph)
    info = {
        "num_graphs": num_graphs,
        "seed": seed,
        "min_nodes": min_nodes,
        "max_nodes": max_nodes,
        "translation": translation,
        "cutoff": cutoff,
        "format": fmt,
        "atom_types": list(ATOM_TYPES),
        "atom_masses": ATOM_MASSES.tolist(),
    }
    (out / "dataset_info.json").write_text(json.dumps(info, indent=2))
    return out


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--num_graphs", "--num-graphs", "num_graphs", default=500, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option(
    "--size",
    type=click.Choice(sorted(SIZE_PRESETS)),
    default=None,
    help="Node-count preset of a benchmark size class (overrides --min_nodes/--max_nodes).",
)
@click.option("--min_nodes", "--min-nodes", "min_nodes", default=10, show_default=True)
@click.option("--max_nodes", "--max-nodes", "max_nodes", default=40, show_default=True)
@click.option(
    "--translation", default=10.0, show_default=True, help="Random shift range per axis (Angstrom)."
)
@click.option("--cutoff", default=2.0, show_default=True, help="Edge radius (Angstrom).")
@click.option("--format", "fmt", type=click.Choice(["pt", "npz"]), default="pt", show_default=True)
def main(out_dir, num_graphs, seed, size, min_nodes, max_nodes, translation, cutoff, fmt):
    """Write deterministic molecule-like graphs (target: centre of mass) to OUT_DIR."""
    if size is not None:
        min_nodes, max_nodes = SIZE_PRESETS[size]
    out = generate_dataset(
        out_dir,
        num_graphs=num_graphs,
        seed=seed,
        min_nodes=min_nodes,
        max_nodes=max_nodes,
        translation=translation,
        cutoff=cutoff,
        fmt=fmt,
    )
    click.echo(f"wrote {num_graphs} graphs ({min_nodes}-{max_nodes} nodes, .{fmt}) to {out}")


if __name__ == "__main__":
    run_cli(main)
