"""Click helpers: every option answers to its underscore spelling (`--data_dir`) and its dashed one (`--data-dir`)."""

from __future__ import annotations

import click


def option(name: str, *extra: str, **kw):
    """`--data_dir` and `--data-dir` for parameter `data_dir` (plus any `extra` spellings)."""
    names = [f"--{name}"]
    if "_" in name:
        names.append(f"--{name.replace('_', '-')}")
    return click.option(*names, *extra, name, **kw)
