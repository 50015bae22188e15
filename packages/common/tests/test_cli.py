"""common.cli.run_cli: one-paragraph errors and exit codes; typed_options: only what the user typed."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import click
import pytest

from common.cli import run_cli, typed_options
from common.errors import ConfigError, DataError


@click.command()
@click.option("--mode", type=click.Choice(["ok", "data", "interrupt", "exit3", "bug"]), default="ok")
@click.option("--count", type=int, default=1)
def tool(mode, count):
    """A tiny command exercising every exit path."""
    if mode == "data":
        raise DataError("dataset /data/x.h5: sample 3 has NaN in 'positions'\n\nfix the file and rerun")
    if mode == "interrupt":
        raise KeyboardInterrupt
    if mode == "exit3":
        click.get_current_context().exit(3)
    if mode == "bug":
        raise RuntimeError("a real bug")
    click.echo(f"count={count}")


def run(args, capsys):
    """(exit code or None, stdout, stderr) of run_cli(tool, args)."""
    code = None
    try:
        run_cli(tool, args)
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_success_returns_normally(capsys):
    assert run(["--count", "4"], capsys) == (None, "count=4\n", "")


def test_trainyard_error_is_one_paragraph_exit_2(capsys):
    code, _, err = run(["--mode", "data"], capsys)
    assert code == 2
    assert err == "error: dataset /data/x.h5: sample 3 has NaN in 'positions'\nfix the file and rerun\n"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--count", "many"], "'many' is not a valid integer"),  # click.BadParameter
        (["--nope"], "--nope"),  # click.NoSuchOption (a UsageError)
        (["--mode", "wrong"], "'wrong' is not one of"),
    ],
)
def test_click_usage_errors_exit_2_with_help_hint(capsys, args, expected):
    code, _, err = run(args, capsys)
    assert code == 2
    assert err.startswith("error: ") and expected in err and "--help" in err
    assert "\n\n" not in err and "Traceback" not in err


def test_help_still_works(capsys):
    code, out, _ = run(["--help"], capsys)
    assert code is None
    assert "A tiny command exercising every exit path." in out and "--count" in out


def test_keyboard_interrupt_exits_130(capsys):
    code, _, err = run(["--mode", "interrupt"], capsys)
    assert code == 130 and "interrupted" in err


def test_explicit_exit_code_is_kept(capsys):
    assert run(["--mode", "exit3"], capsys)[0] == 3


def test_other_exceptions_are_bugs_and_keep_their_traceback():
    with pytest.raises(RuntimeError, match="a real bug"):
        run_cli(tool, ["--mode", "bug"])


def test_real_process_prints_no_traceback(tmp_path):
    script = tmp_path / "prog.py"
    script.write_text(
        textwrap.dedent(
            """\
            import click
            from common.cli import run_cli
            from common.errors import ConfigError

            @click.command()
            def main():
                raise ConfigError("unknown config key 'optim.lrr'; closest valid keys: optim.lr")

            if __name__ == "__main__":
                run_cli(main)
            """
        )
    )
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr == "error: unknown config key 'optim.lrr'; closest valid keys: optim.lr\n"
    assert proc.stdout == ""


@click.command()
@click.option("--lr", type=float, default=0.1, envvar="TY_CLI_LR")
@click.option("--tag", "tags", multiple=True)
@click.option("--fast/--no-fast", default=False)
@click.pass_context
def typed(ctx, lr, tags, fast):
    click.echo(repr(typed_options(ctx, {"lr": "optim.lr", "tags": "run.tags", "fast": "debug.fast"})))


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        ([], {}, {}),
        (["--lr", "0.5"], {}, {"optim.lr": 0.5}),
        ([], {"TY_CLI_LR": "0.25"}, {"optim.lr": 0.25}),
        (["--tag", "a", "--tag", "b", "--no-fast"], {}, {"run.tags": ["a", "b"], "debug.fast": False}),
    ],
)
def test_typed_options_only_reports_what_the_user_gave(args, env, expected):
    from click.testing import CliRunner

    result = CliRunner().invoke(typed, args, env=env)
    assert result.exit_code == 0, result.output
    assert eval(result.output) == expected  # repr of a dict of plain values


def test_typed_options_rejects_a_mapping_typo():
    ctx = click.Context(typed)
    ctx.params = {"lr": 0.1}
    with pytest.raises(ValueError, match="no parameter 'lrr'"):
        typed_options(ctx, {"lrr": "optim.lr"})


def test_shared_options_accept_both_spellings_and_click_keywords():
    import click

    from common.cli import data_dir_option, device_option, output_dir_option, resume_option, seed_option

    @click.command()
    @data_dir_option(required=True)
    @output_dir_option()
    @resume_option()
    @device_option()
    @seed_option()
    def command(data_dir, output_dir, resume, device, seed):
        return (data_dir, output_dir, resume, device, seed)

    args = ["--data_dir", "d", "--output-dir", "o", "--resume", "last", "--device", "cpu", "--seed", "3"]
    assert command.main(args, standalone_mode=False) == ("d", "o", "last", "cpu", 3)
    assert command.main(["--data-dir", "d"], standalone_mode=False) == ("d", None, None, None, None)
    with pytest.raises(click.MissingParameter):
        command.main([], standalone_mode=False)


def test_console_script_behaves_like_run_cli(capsys, monkeypatch):
    import click

    from common.cli import console_script

    @click.command()
    @click.option("--fail", is_flag=True)
    def command(fail):
        if fail:
            raise ConfigError("bad value for x")
        return 143

    entry = console_script(command)
    with pytest.raises(SystemExit) as stopped:
        monkeypatch.setattr(sys, "argv", ["prog", "--fail"])
        entry()
    assert stopped.value.code == 2 and "error: bad value for x" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stopped:
        monkeypatch.setattr(sys, "argv", ["prog"])
        entry()
    assert stopped.value.code == 143  # an interrupted run's status reaches the shell
