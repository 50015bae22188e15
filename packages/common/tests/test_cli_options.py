"""common.cli: both spellings of every option, --run-dir as the run folder, follow-up commands under uv run."""

from __future__ import annotations

import click
from click.testing import CliRunner

from common.cli import follow_up_command, option, output_dir_option, run_dir_option


@click.command()
@option("--batch-size", type=int)
@option("--jit-compile/--no-jit-compile", default=None)
@output_dir_option(run_folder=True)
def run_folder_command(batch_size, jit_compile, output_dir):
    click.echo(f"{batch_size} {jit_compile} {output_dir}")


@click.command()
@output_dir_option()
@run_dir_option()
def parent_folder_command(output_dir, run_dir):
    click.echo(f"{output_dir} {run_dir}")


def test_every_multi_word_option_takes_dashes_and_underscores():
    runner = CliRunner()
    for args in (
        ["--batch-size", "4", "--no-jit-compile", "--output-dir", "r"],
        ["--batch_size", "4", "--no_jit_compile", "--output_dir", "r"],
        ["--batch_size", "4", "--no-jit-compile", "--run-dir", "r"],  # --run-dir: the run folder everywhere
    ):
        assert runner.invoke(run_folder_command, args).output == "4 False r\n"
    assert runner.invoke(run_folder_command, ["--jit_compile"]).output == "None True None\n"
    result = runner.invoke(parent_folder_command, ["--output_dir", "runs", "--run_dir", "runs/a"])
    assert result.output == "runs runs/a\n"


def test_follow_up_commands_carry_uv_run_only_under_uv_run(monkeypatch):
    monkeypatch.delenv("UV_RUN_RECURSION_DEPTH", raising=False)
    assert follow_up_command("python -m common.demo --resume x") == "python -m common.demo --resume x"
    monkeypatch.setenv("UV_RUN_RECURSION_DEPTH", "1")  # what `uv run` sets in the process it starts
    assert follow_up_command("python -m common.demo --resume x") == "uv run python -m common.demo --resume x"
    assert follow_up_command("uv run python -m a") == "uv run python -m a"
