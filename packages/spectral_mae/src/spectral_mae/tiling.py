"""Where the cubes of a scene lie: a grid of square tiles, and a train/val split by image rows.

The split gives the bottom `val_fraction` of each scene's rows (at least one cube's height) to validation and the rows above to training,
and each part is tiled on its own (tiles of `size` pixels every `stride` pixels from the part's first row),
so no pixel is in both splits: overlapping tiles assigned at random would put the same pixels on both sides
and flatter the validation loss. Pixels past the last full tile of a part are left out (counted).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common.errors import DataError


@dataclass(frozen=True)
class Tile:
    row: int  # top-left pixel
    col: int
    split: str  # "train" or "val"


@dataclass(frozen=True)
class TilePlan:
    tiles: list[Tile]
    val_from_row: int  # first row of the validation part (== scene rows: no validation part)
    pixels_uncovered: int  # pixels no tile reaches (edges narrower than a tile)


def tile_origins(start: int, stop: int, size: int, stride: int) -> list[int]:
    """Origins of the full tiles in [start, stop)."""
    return list(range(start, stop - size + 1, stride))


def plan_tiles(rows: int, cols: int, *, size: int, stride: int, val_fraction: float, source: str) -> TilePlan:
    if size < 1 or stride < 1:
        raise DataError(f"--cube-size ({size}) and --stride ({stride}) must be positive.")
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"--val-fraction {val_fraction} must be in [0, 1).")
    if rows < size or cols < size:
        raise DataError(f"{source}: the scene is {rows}x{cols} pixels, smaller than one {size}x{size} cube.")
    # At least one cube's height of validation rows, so a small scene still gives a validation cube.
    val_rows = max(round(rows * val_fraction), size) if val_fraction > 0 else 0
    val_from = rows - val_rows
    col_starts = tile_origins(0, cols, size, stride)
    tiles = [
        Tile(row, col, split)
        for split, start, stop in (("train", 0, val_from), ("val", val_from, rows))
        for row in tile_origins(start, stop, size, stride)
        for col in col_starts
    ]
    row_covered, col_covered = np.zeros(rows, bool), np.zeros(cols, bool)
    for tile in tiles:
        row_covered[tile.row : tile.row + size] = True
        col_covered[tile.col : tile.col + size] = True
    return TilePlan(tiles, val_from, rows * cols - int(row_covered.sum()) * int(col_covered.sum()))
