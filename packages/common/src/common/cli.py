"""Command-line plumbing shared by every package's click commands.

`run_cli` turns user-facing errors into one clear paragraph and an exit status instead of a traceback;
`typed_options` tells which click options the user actually typed, so click's defaults never override a
value from the YAML config.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Sequence

import click
from click.core import ParameterSource

from common.errors import TrainyardError
from common.precision import PRECISION_CHOICES
from common.runs import discard_unused_run_folders

EXIT_USAGE = 2  # bad input: the same status click uses for usage errors
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C

# Set to 1 to see the full traceback of a TrainyardError (for debugging Trainyard itself).
TRACEBACK_ENV = "TRAINYARD_TRACEBACK"

_USER_SOURCES = (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT, ParameterSource.PROMPT)


def run_cli(command: click.Command, args: Sequence[str] | None = None) -> None:
    """Run a click command the Trainyard way; use as `if __name__ == "__main__": run_cli(main)`.

    - a TrainyardError or click usage error (bad option, bad value) prints one paragraph "error: <message>"
      on stderr, with no traceback, and exits 2;
    - other click errors print the same way and exit with their own status (1 for a file error);
    - Ctrl-C (KeyboardInterrupt, click's Abort) exits 130 with a one-line note;
    - `-h` / `--help` prints the help and exits 0; a command that returns a non-zero int exits with it;
    - `--multirun` / `-m` with `key=v1,v2` overrides runs a sweep of a command that has `multirun_option`.
    Returns normally when the command succeeds (so tests can call it in-process).
    Any other exception is a bug in Trainyard and keeps its traceback.
    """
    # `-h` as well as `--help`, in every command (a command that sets its own help options keeps them)
    command.context_settings.setdefault("help_option_names", ["-h", "--help"])
    argv = _with_optional_values(command, list(args) if args is not None else sys.argv[1:])
    try:
        if _is_sweep(command, argv):
            from common.sweeps import run_sweep

            result = run_sweep(command, argv)
        else:
            result = command.main(argv, standalone_mode=False)
    except TrainyardError as exc:
        discard_unused_run_folders()  # a refused run leaves no empty run folder behind
        if os.environ.get(TRACEBACK_ENV) == "1":
            raise
        _fail(str(exc) or type(exc).__name__, EXIT_USAGE)
    except click.UsageError as exc:
        hint = ""
        if exc.ctx is not None:
            hint = f" (see '{exc.ctx.command_path} --help')"
        _fail(exc.format_message() + hint, EXIT_USAGE)
    except click.ClickException as exc:
        _fail(exc.format_message(), exc.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):
        print("interrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    # click returns the exit code of an explicit ctx.exit(n) (or --help's 0) as the result.
    if isinstance(result, int) and not isinstance(result, bool) and result != 0:
        sys.exit(result)


def follow_up_command(command: str) -> str:
    """A command line printed for the user to run next (resume, evaluate), spelled as they started this one:
    with `uv run ` in front when this process runs under `uv run` (which sets UV_RUN_RECURSION_DEPTH in the
    processes it starts), since outside the project's environment a bare `python -m` finds no package."""
    if os.environ.get("UV_RUN_RECURSION_DEPTH") and not command.startswith("uv run "):
        return f"uv run {command}"
    return command


def _with_optional_values(command: click.Command, argv: list[str]) -> list[str]:
    """`--fast-dev-run` takes an optional N; click would read a `key=value` override after the bare flag as
    that N, so a bare flag gets its default written out (`--fast-dev-run k=10` -> `--fast-dev-run 1 k=10`)."""
    optional = {
        name: str(p.flag_value)
        for p in command.params
        if p.name == "fast_dev_run" and isinstance(p, click.Option) and not p.is_flag
        for name in p.opts
    }
    out: list[str] = []
    for i, arg in enumerate(argv):
        out.append(arg)
        following = argv[i + 1] if i + 1 < len(argv) else "-"
        if arg in optional and not following.startswith("-") and not following.isdigit():
            out.append(optional[arg])
    return out


def _is_sweep(command: click.Command, argv: list[str]) -> bool:
    """A command line of a command with `multirun_option` asking for a sweep (and not for --help)."""
    from common.sweeps import wants_multirun

    if not any(p.name == "multirun" for p in command.params):
        return False
    help_names = command.context_settings.get("help_option_names", ["--help"])
    return wants_multirun(argv) and not set(argv) & set(help_names)


def console_script(command: click.Command) -> Callable[[], None]:
    """The entry point a package's `[project.scripts]` names: `command` run through `run_cli`, so the installed
    command behaves exactly like `python -m <pkg>.<module>` (one-paragraph errors, exit 2, 130 / 143)."""

    def entry() -> None:
        run_cli(command)

    entry.__doc__ = f"Console script for {command.name}."
    return entry


def forward_to(module: str, command_module: str):
    """A module-level `__getattr__` for a light command module whose work lives in `module`.

    A command line must answer `--help` without importing torch or timm, so its module holds only the click
    command and imports the work when it runs; names that callers import from the command module (`from
    pkg.train import train`) are forwarded to `module`, which is imported on their first use.

        __getattr__ = forward_to("cabruca.training", __name__)
    """

    def __getattr__(name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        import importlib

        try:
            return getattr(importlib.import_module(module), name)
        except AttributeError:
            raise AttributeError(f"module {command_module!r} has no attribute {name!r}") from None

    return __getattr__


def typed_options(ctx: click.Context, mapping: dict[str, str]) -> dict[str, object]:
    """`{dotted_config_key: value}` for the params in `mapping` (click param name -> dotted config key) that
    the user actually gave (command line, environment variable or prompt), never click's defaults.

    Tuples from `multiple=True`/`nargs` options become lists, the shape config list fields expect.
    """
    chosen: dict[str, object] = {}
    for param_name, dotted_key in mapping.items():
        if param_name not in ctx.params:
            # A typo in the mapping is a bug in the calling package, not bad user input.
            raise ValueError(
                f"typed_options: command {ctx.command.name!r} has no parameter {param_name!r} "
                f"(its parameters: {', '.join(sorted(ctx.params))})"
            )
        if ctx.get_parameter_source(param_name) in _USER_SOURCES:
            value = ctx.params[param_name]
            chosen[dotted_key] = list(value) if isinstance(value, tuple) else value
    return chosen


def _fail(message: str, code: int) -> None:
    # One paragraph: blank lines inside a message would split it, so squeeze them out.
    text = re.sub(r"\n\s*\n", "\n", message.strip())
    print(f"error: {text}", file=sys.stderr)
    sys.exit(code)


# -- the options every package spells alike ------------------------------------------------------------------
# Each takes click.option's keyword arguments (help, required, type, default...) to adapt it; both the dashed
# and the underscored spelling are accepted, so seed command lines (`--data_dir`) and ours (`--data-dir`) work.


def option(*decls: str, **kw):
    """`click.option` answering to both spellings of each multi-word long name: `--batch-size` and
    `--batch_size` (also in on/off pairs: `--jit-compile/--no-jit-compile`). Give the parameter name last,
    as with click, when it should differ from the first name's."""
    names: list[str] = []
    for decl in decls:
        names.append(decl)
        if decl.startswith("--"):
            other = "/".join(
                "--" + part[2:].replace("-", "_") if "-" in part[2:] else "--" + part[2:].replace("_", "-")
                for part in decl.split("/")
            )
            if other != decl:
                names.append(other)
    return click.option(*names, **kw)


def _option(dashed: str, dest: str, help_text: str, kw: dict):
    underscored = "--" + dashed[2:].replace("-", "_")
    names = (dashed, underscored) if underscored != dashed else (dashed,)
    kw.setdefault("help", help_text)
    return click.option(*names, dest, **kw)


def config_option(package: str, **kw):
    """--config: a YAML path or the name of a config bundled with `package`."""
    return _option(
        "--config", "config", f"YAML config file, or the name of a config bundled in {package}/configs.", kw
    )


def data_dir_option(**kw):
    """--data-dir / --data_dir: the dataset folder."""
    return _option("--data-dir", "data_dir", "Dataset folder.", kw)


def output_dir_option(*, run_folder: bool = False, **kw):
    """--output-dir / --output_dir: the run folder (`run_folder=True`, also spelled --run-dir), or, in a
    package whose seed names a parent folder (`run_folder=False`), the folder its runs are created in; such a
    package adds `run_dir_option` for the run folder itself."""
    kw.setdefault("help", "Run folder: config, checkpoints, logs, plots, history.")
    names = ["--output-dir", "--output_dir"] + (["--run-dir", "--run_dir"] if run_folder else [])
    return click.option(*names, "output_dir", **kw)


def run_dir_option(**kw):
    """--run-dir / --run_dir: the run folder itself, in every package (where --output-dir is its parent)."""
    text = "The run folder itself (config, checkpoints, logs, plots, history), instead of a new folder under --output-dir."
    return _option("--run-dir", "run_dir", text, kw)


def resume_option(**kw):
    """--resume last | RUN_FOLDER | CHECKPOINT (see common.resume.find_checkpoint)."""
    text = (
        "Continue a run exactly: 'last' (the newest checkpoint of --output-dir), a run folder, or a checkpoint "
        "file. The run's saved config is used; options typed beside it override it."
    )
    return _option("--resume", "resume", text, kw)


def overwrite_option(**kw):
    """--overwrite: let a new run replace the run already in its output folder (refused otherwise)."""
    kw.setdefault("is_flag", True)
    kw.setdefault("default", None)
    text = "Replace the run already in the output folder (without it, a non-empty run folder is refused)."
    return _option("--overwrite", "overwrite", text, kw)


def device_option(choices: str = "auto | cpu | cuda | cuda:N | mps", **kw):
    """--device: where to train (`common.devices` resolves and validates it)."""
    return _option("--device", "device", f"Device: {choices}.", kw)


def precision_option(choices: str = PRECISION_CHOICES, **kw):
    """--precision: numeric precision, validated where it is used (`common.torch_support.parse_precision`
    for torch, which also takes aliases such as 32-true or fp16), so a refusal can say what the device lacks."""
    return _option("--precision", "precision", f"Numeric precision: {choices}.", kw)


def seed_option(**kw):
    """--seed: the run's random seed."""
    kw.setdefault("type", int)
    return _option("--seed", "seed", "Random seed (data order, initialisation, augmentation).", kw)


def multirun_option(**kw):
    """--multirun / -m: a train command runs every combination of its `key=v1,v2` overrides, one run folder each
    (`common.sweeps`; `run_cli` starts the sweep before click reads the options, so the flag is never parsed
    by the command itself)."""
    kw.setdefault(
        "help",
        "Sweep: run every combination of the comma-separated key=value overrides (e.g. `-m lr=1e-3,1e-4 "
        "model=a,b`) one after the other, one run folder each under --output-dir, then print and write "
        "sweep_summary.csv / .md. Exits 1 when any run failed.",
    )
    return click.option("-m", "--multirun", "multirun", is_flag=True, expose_value=False, **kw)


def fast_dev_run_option(**kw):
    """--fast-dev-run / --fast_dev_run [N]: N train and N validation batches, nothing written (bare flag: 1)."""
    kw.setdefault(
        "help",
        "Quick check: N batches of training and N of validation (bare flag: 1), then a one-line summary; "
        "writes nothing (no run folder, checkpoints or tracker files).",
    )
    return click.option(
        "--fast-dev-run",
        "--fast_dev_run",
        "fast_dev_run",
        type=click.IntRange(min=1),
        is_flag=False,
        flag_value=1,
        default=None,
        **kw,
    )
