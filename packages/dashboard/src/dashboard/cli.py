"""`trainyard-dashboard --runs-root DIR [--port N]`: serve the dashboard over the runs under DIR.

Starts `streamlit run` on `dashboard/app.py`. Neither streamlit nor any framework is imported here, so
`--help` and a bad `--runs-root` answer at once.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from common.cli import run_cli
from dashboard.runs import checked_runs_root

APP = Path(__file__).resolve().parent / "app.py"
DEFAULT_REFRESH_S = 3


def streamlit_command(
    runs_root: Path, port: int, host: str, refresh_s: float, open_browser: bool
) -> list[str]:
    """The `python -m streamlit run` command line that serves the app (headless unless asked to open a tab)."""
    return [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(APP),
        "--server.port",
        str(port),
        "--server.address",
        host,
        "--server.headless",
        "false" if open_browser else "true",
        "--browser.gatherUsageStats",
        "false",
        # The app is installed code, not a script being edited: no file watcher (it also spares the
        # machine's inotify instances, whose exhaustion stops a streamlit server at start).
        "--server.fileWatcherType",
        "none",
        "--",
        "--runs-root",
        str(runs_root),
        "--refresh",
        str(refresh_s),
    ]


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--runs-root",
    "--runs-dir",
    "runs_root",
    type=click.Path(path_type=Path),
    default=Path("outputs"),
    show_default=True,
    help="Folder searched (recursively) for the run folders of every Trainyard package.",
)
@click.option("--port", type=click.IntRange(1, 65535), default=8501, show_default=True, help="HTTP port.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--refresh",
    "refresh_s",
    type=click.FloatRange(min=1.0),
    default=DEFAULT_REFRESH_S,
    show_default=True,
    help="Seconds between two refreshes of the open page (live runs).",
)
@click.option("--open-browser", is_flag=True, help="Open a browser tab (default: serve only).")
@click.option("--print-command", is_flag=True, help="Print the streamlit command instead of running it.")
def main(
    runs_root: Path, port: int, host: str, refresh_s: float, open_browser: bool, print_command: bool
) -> None:
    """Serve the Trainyard dashboard: runs, live curves, comparisons, checkpoints, system metrics, images."""
    runs_root = checked_runs_root(runs_root)
    command = streamlit_command(runs_root, port, host, refresh_s, open_browser)
    if print_command:
        click.echo(" ".join(command))
        return
    click.echo(f"dashboard on http://{host}:{port} (runs under {runs_root}); Ctrl+C stops it")
    sys.stdout.flush()
    # Become the streamlit server (no parent process left behind): a signal to this PID reaches the server.
    os.execv(command[0], command)


def cli() -> None:
    """Console-script entry point: errors as one paragraph (exit 2), never a traceback."""
    run_cli(main)


if __name__ == "__main__":
    cli()
