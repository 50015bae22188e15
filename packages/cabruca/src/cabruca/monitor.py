"""`python -m cabruca.monitor`: launch the Trainyard dashboard (`streamlit run` on cabruca's app).

python -m cabruca.monitor [--runs-dir outputs] [--port 8501] [--host 127.0.0.1] [--open-browser]
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from common.cli import run_cli

APP = Path(__file__).resolve().parent / "dashboard" / "app.py"


def streamlit_command(runs_dir: str, port: int, host: str, open_browser: bool) -> list[str]:
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
        "--",
        "--runs-dir",
        str(runs_dir),
    ]


@click.command()
@click.option(
    "--runs-dir", default="outputs", show_default=True, help="Folder holding run folders (any package)."
)
@click.option("--port", default=8501, show_default=True, help="HTTP port.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--open-browser", is_flag=True, help="Open a browser tab (default: headless server only).")
@click.option("--print-command", is_flag=True, help="Print the streamlit command instead of running it.")
def main(runs_dir, port, host, open_browser, print_command):
    """Serve the monitoring dashboard over Trainyard run folders."""
    cmd = streamlit_command(runs_dir, port, host, open_browser)
    if print_command:
        click.echo(" ".join(cmd))
        return
    click.echo(f"dashboard on http://{host}:{port} (runs from {Path(runs_dir).resolve()}); Ctrl+C stops it")
    sys.stdout.flush()
    # Become the streamlit process (no parent left behind): signals sent to this PID reach the server itself.
    os.execv(cmd[0], cmd)


def cli() -> None:
    """Console-script entry point: errors as one paragraph, never a traceback."""
    run_cli(main)


if __name__ == "__main__":
    cli()
