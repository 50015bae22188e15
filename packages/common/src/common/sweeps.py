"""Sweeps: `--multirun lr=1e-3,1e-4 model=a,b` (or `-m`) trains every combination, one after the other.

Every package's train command gets this through `common.cli.run_cli`, which hands a command line holding
`--multirun` / `-m` to `run_sweep` before click reads it. Each `key=v1,v2,...` override is a swept key; the
cartesian product of the swept keys gives the runs, in the order the keys and values were typed. Commas inside
brackets or quotes do not separate values (`callbacks=[A,B]`, `tags.note="a,b"`).

Each combination runs as its own process (the same command without `--multirun`, plus its overrides), so a
failing or crashing run never takes the others down, and each gets a fresh framework state. It writes into
`<sweep folder>/<key=value,...>/` (the sweep folder: `--output-dir`, default `multirun/<timestamp>`).
Afterwards `sweep_summary.csv` and `sweep_summary.md` in the sweep folder hold each run's status and the final
and best value of every `val/` metric in its JSON history; the markdown table is printed too. The sweep exits
1 when any run failed, and with the run's own status (130 / 143) when a signal stopped a run, skipping the rest.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import re
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import click

from common.errors import ConfigError
from common.runs import atomic_write_text, timestamp

MULTIRUN_FLAGS = ("--multirun", "-m")
OUTPUT_DIR_FLAGS = ("--output-dir", "--output_dir", "--run-dir", "--run_dir")
SUMMARY_CSV = "sweep_summary.csv"
SUMMARY_MD = "sweep_summary.md"
INTERRUPTED = (130, 143)  # a signal stopped the run: the user wants the sweep to stop too
_LOWER_IS_BETTER = ("loss", "mse", "mae", "rmse", "error", "err", "distance")
_NAME_LIMIT = 120  # longer folder names become run_<index>


@dataclass
class SweepRun:
    """One combination of the sweep: its overrides, folder, exit status and `val/` metrics."""

    index: int
    overrides: list[str]
    folder: Path
    exit_code: int | None = None  # None: not run (the sweep was stopped before it)
    metrics: dict[str, tuple[float, float]] = field(default_factory=dict)  # name -> (final, best)


def wants_multirun(args: Sequence[str]) -> bool:
    return any(arg in MULTIRUN_FLAGS for arg in args)


def split_values(text: str) -> list[str]:
    """`a,b,[1,2],"x,y"` -> ['a', 'b', '[1,2]', '"x,y"']: commas at bracket depth 0 outside quotes."""
    values, current, depth, quote = [], [], 0, ""
    for char in text:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{(":
            depth += 1
        elif char in "]})":
            depth -= 1
        elif char == "," and depth == 0:
            values.append("".join(current))
            current = []
            continue
        current.append(char)
    values.append("".join(current))
    return values


def plan_sweep(args: Sequence[str]) -> tuple[list[str], Path, list[SweepRun]]:
    """(the arguments every run shares, the sweep folder, the runs) for a `--multirun` command line."""
    shared: list[str] = []
    root: Path | None = None
    swept: list[tuple[str, list[str]]] = []
    items = iter(args)
    for arg in items:
        if arg in MULTIRUN_FLAGS:
            continue
        if arg in OUTPUT_DIR_FLAGS:
            folder = next(items, "")
            if not folder:
                raise ConfigError(f"{arg} needs a folder: the sweep's runs go into it.")
            root = Path(folder)
            continue
        if arg.split("=", 1)[0] in OUTPUT_DIR_FLAGS:
            root = Path(arg.split("=", 1)[1])
            continue
        key, sep, value = arg.partition("=")
        if sep and not arg.startswith("-"):
            choices = split_values(value)
            if len(choices) > 1:
                if any(not c.strip() for c in choices):
                    raise ConfigError(f"sweep override {arg!r} has an empty value between its commas.")
                swept.append((key, choices))
                continue
        shared.append(arg)
    if not swept:
        raise ConfigError(
            "--multirun needs at least one swept override with comma-separated values, "
            "e.g. `--multirun lr=1e-3,1e-4 model=a,b`."
        )
    root = root or Path("multirun") / timestamp()
    keys = [key for key, _ in swept]
    runs, names = [], set()
    for index, values in enumerate(itertools.product(*(choices for _, choices in swept))):
        overrides = [f"{k}={v}" for k, v in zip(keys, values, strict=True)]
        name = _folder_name(overrides, index, names)
        names.add(name)
        runs.append(SweepRun(index, overrides, root / name))
    return shared, root, runs


def run_sweep(command: click.Command, args: Sequence[str]) -> int:
    """Run every combination of a `--multirun` command line, write the summary, return the exit status.

    Each run is `python -m <the command's module>` with the shared arguments, `--run-dir <its folder>` (the
    run folder in every package's train command) and its own overrides.
    """
    shared, root, runs = plan_sweep(args)
    _refuse_existing(root, runs)
    launcher = _launcher(command)
    root.mkdir(parents=True, exist_ok=True)
    click.echo(f"sweep: {len(runs)} runs into {root}", err=True)
    for run in runs:
        argv = [*launcher, "--run-dir", str(run.folder), *shared, *run.overrides]
        click.echo(f"sweep run {run.index + 1}/{len(runs)}: {' '.join(run.overrides)}", err=True)
        run.exit_code = subprocess.call(argv)
        run.metrics = final_and_best(run.folder)
        if run.exit_code in INTERRUPTED:
            break
    table = write_summary(root, runs)
    click.echo(table)
    stopped = next((r.exit_code for r in runs if r.exit_code in INTERRUPTED), None)
    if stopped is not None:
        return stopped
    return 0 if all(r.exit_code == 0 for r in runs) else 1


def final_and_best(folder: Path) -> dict[str, tuple[float, float]]:
    """{val metric: (final, best)} from the JSON history the run wrote under `folder` (empty if none).
    Best is the lowest for loss- and error-like names and the highest for the others (accuracy, mAP, AUC)."""
    histories = sorted(folder.rglob("*history.json")) if folder.is_dir() else []
    if not histories:
        return {}
    try:
        metrics = json.loads(histories[0].read_text(encoding="utf-8")).get("metrics", {})
    except (OSError, ValueError, AttributeError):
        return {}
    out = {}
    for name, points in sorted(metrics.items()):
        values = [p["value"] for p in points if isinstance(p, dict) and _is_number(p.get("value"))]
        if not name.startswith(("val/", "val_")) or not values:
            continue
        finite = [v for v in values if v == v] or values
        lower = any(word in name.rsplit("/", 1)[-1].lower() for word in _LOWER_IS_BETTER)
        out[name] = (values[-1], min(finite) if lower else max(finite))
    return out


def write_summary(root: Path, runs: Sequence[SweepRun]) -> str:
    """Write `sweep_summary.csv` and `sweep_summary.md` into `root`; return the markdown table."""
    names = sorted({name for run in runs for name in run.metrics})
    header = ["run", "status", "overrides", "folder"]
    for name in names:
        header += [f"{name} final", f"{name} best"]
    rows = []
    for run in runs:
        status = (
            "not run"
            if run.exit_code is None
            else ("ok" if run.exit_code == 0 else f"failed ({run.exit_code})")
        )
        row = [str(run.index), status, " ".join(run.overrides), run.folder.name]
        for name in names:
            final, best = run.metrics.get(name, (None, None))
            row += [_format(final), _format(best)]
        rows.append(row)
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows([header, *rows])
    atomic_write_text(root / SUMMARY_CSV, text.getvalue())
    table = "\n".join("| " + " | ".join(cells) + " |" for cells in [header, ["---"] * len(header), *rows])
    atomic_write_text(root / SUMMARY_MD, table + "\n")
    return table


def _launcher(command: click.Command) -> list[str]:
    """`python -m <the command's module>`: the module defining the command, or the one `python -m` ran when
    that is `__main__`; a script started by its path is started the same way."""
    module = command.callback.__module__
    if module == "__main__":
        spec = getattr(sys.modules["__main__"], "__spec__", None)
        if spec is None:
            return [sys.executable, sys.argv[0]]
        module = spec.name
    return [sys.executable, "-m", module]


def _folder_name(overrides: list[str], index: int, taken: set[str]) -> str:
    """`lr=1e-3,model=a`: the overrides as one safe folder name (path separators and odd characters become
    `_`); too long or already taken: `run_<index>` (the summary lists every run's overrides)."""
    name = re.sub(r"[^A-Za-z0-9._=,+\-]", "_", ",".join(overrides))
    if len(name) > _NAME_LIMIT or name in taken or name in (".", ".."):
        name = f"run_{index:03d}"
    return name


def _refuse_existing(root: Path, runs: Sequence[SweepRun]) -> None:
    """A sweep never writes into another sweep's folders: refuse before any run starts."""
    taken = [run.folder.name for run in runs if run.folder.exists() and any(run.folder.iterdir())]
    if (root / SUMMARY_CSV).exists() or taken:
        listed = f" ({', '.join(taken[:3])}{', ...' if len(taken) > 3 else ''})" if taken else ""
        raise ConfigError(
            f"sweep folder {root} already holds a sweep{listed}; give another --output-dir "
            "(or leave it out for multirun/<timestamp>)."
        )


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _format(value: float | None) -> str:
    return "" if value is None else f"{value:.6g}"
