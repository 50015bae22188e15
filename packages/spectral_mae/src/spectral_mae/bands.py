"""Band selection for real scenes: `--bands 10-40,55` (explicit indices and inclusive ranges) or
`--num-bands N` (N bands evenly spaced over the spectrum). Indices count from 0, as numpy does; ENVI and
GDAL viewers count bands from 1, so band "1" there is index 0 here."""

from __future__ import annotations

import re

import numpy as np

from common.errors import DataError

_TERM = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$")


def parse_band_spec(spec: str, num_bands: int, source: str) -> list[int]:
    """ "10-40,55" -> [10, ..., 40, 55] (ranges inclusive, order kept, duplicates refused); every index must
    exist in a scene of `num_bands` bands. `source` names the scene in errors."""
    indices: list[int] = []
    for term in spec.split(","):
        match = _TERM.match(term)
        if not match:
            raise DataError(
                f"--bands '{spec}': '{term.strip()}' is not a band index or a range such as 10-40 "
                "(indices count from 0)."
            )
        first, last = int(match.group(1)), int(match.group(2) or match.group(1))
        if last < first:
            raise DataError(f"--bands '{spec}': range {first}-{last} runs backwards.")
        indices.extend(range(first, last + 1))
    out_of_range = [i for i in indices if i >= num_bands]
    if out_of_range:
        raise DataError(
            f"{source}: --bands '{spec}' asks for band {out_of_range[0]}, but the scene has {num_bands} bands "
            f"(indices 0-{num_bands - 1})."
        )
    if len(set(indices)) != len(indices):
        repeated = sorted({i for i in indices if indices.count(i) > 1})
        raise DataError(f"--bands '{spec}' lists band(s) {repeated} more than once.")
    return indices


def evenly_spaced(count: int, num_bands: int, source: str) -> list[int]:
    """`count` band indices spread evenly from the first to the last band."""
    if not 1 <= count <= num_bands:
        raise DataError(f"{source}: --num-bands {count} must be between 1 and the scene's {num_bands} bands.")
    return [int(i) for i in np.round(np.linspace(0, num_bands - 1, count))]


def select_bands(spec: str | None, count: int | None, num_bands: int, source: str) -> list[int]:
    """The band indices `--bands` / `--num-bands` ask for (every band when neither is given)."""
    if spec and count:
        raise DataError("Give --bands or --num-bands, not both.")
    if spec:
        return parse_band_spec(spec, num_bands, source)
    if count:
        return evenly_spaced(count, num_bands, source)
    return list(range(num_bands))


def format_band_spec(indices: list[int]) -> str:
    """[10, 11, 12, 55] -> "10-12,55": the shortest `--bands` value selecting exactly `indices`."""
    terms, start = [], 0
    for k in range(1, len(indices) + 1):
        if k == len(indices) or indices[k] != indices[k - 1] + 1:
            first, last = indices[start], indices[k - 1]
            terms.append(str(first) if first == last else f"{first}-{last}")
            start = k
    return ",".join(terms)
