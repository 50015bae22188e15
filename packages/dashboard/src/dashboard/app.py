"""The Trainyard dashboard (streamlit): the runs of every package under one runs root.

    trainyard-dashboard --runs-root outputs          # or: streamlit run .../dashboard/app.py -- --runs-root outputs

Tabs: the runs table, live curves of one run, one metric compared across runs (of any package: they share
metric names), the run's checkpoints by step, its system metrics, the images it wrote, its config and
provenance. The page refreshes itself every few seconds; everything it shows comes from the data layer
(`dashboard.runs`, `history`, `checkpoints`, `images`, `views`), which is plain Python.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import pandas as pd
import streamlit as st
import yaml

from dashboard import views
from dashboard.checkpoints import checkpoint_table
from dashboard.history import wide
from dashboard.images import run_images
from dashboard.runs import RunsRootError, find_runs, read_config, read_provenance

TABS = ["Runs", "Live curves", "Compare", "Checkpoints", "System", "Images", "Config"]
ROOT_ENV = "TRAINYARD_RUNS_ROOT"
MAX_COMPARED = 12  # runs compared by default: more lines than this make a chart unreadable
MAX_IMAGES = 24


def app_arguments(argv: list[str]) -> tuple[str, float]:
    """(runs root, refresh seconds) from the arguments after `--`, else $TRAINYARD_RUNS_ROOT, else outputs."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--runs-root", "--runs-dir", dest="runs_root", default=None)
    parser.add_argument("--refresh", type=float, default=3.0)
    known, _ = parser.parse_known_args(argv)
    return known.runs_root or os.environ.get(ROOT_ENV) or "outputs", max(known.refresh, 1.0)


def shown(table: pd.DataFrame) -> pd.DataFrame:
    """Numbers as people read them (4 significant digits), empty cells blank, for a static table."""
    out = table.copy()
    for column in out.columns:
        if pd.api.types.is_float_dtype(out[column]) or out[column].dtype == object:
            out[column] = [_cell(v) for v in out[column]]
    return out


def _cell(value: object) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def runs_tab(runs: list[views.RunData]) -> None:
    st.table(shown(views.runs_table(runs)).set_index("run"))


def curves_tab(data: views.RunData) -> None:
    history = data.history
    if history.empty:
        st.info(f"{data.run.name} has logged no metrics yet.")
        return
    names = sorted(history["metric"].unique())
    default = [n for n in views.HEADLINE_METRICS if n in names] or names[:2]
    chosen = st.multiselect("Metrics", names, default=default, key="curve_metrics")
    columns = st.columns(2)
    for i, name in enumerate(chosen):
        with columns[i % 2]:
            st.caption(name)
            st.line_chart(wide(history, [name]), height=240)
    st.caption(f"last step {int(history['step'].max())}, {len(history)} values logged")


def compare_tab(runs: list[views.RunData]) -> None:
    labels = [data.label for data in runs]
    chosen = st.multiselect("Runs", labels, default=labels[:MAX_COMPARED], key="compare_runs")
    picked = [data for data in runs if data.label in chosen]
    metrics = views.shared_metrics(picked)
    if not metrics:
        st.info("The chosen runs share no metric name: pick runs that have logged metrics.")
        return
    metric = st.selectbox("Metric (logged by every chosen run)", metrics, key="compare_metric")
    chart, table = views.compare(picked, metric)
    st.caption(f"{metric} by optimizer step, {len(table)} runs")
    st.line_chart(chart, height=320)
    st.table(shown(table).set_index("run"))


def checkpoints_tab(data: views.RunData) -> None:
    table = checkpoint_table(data.run.path / "checkpoints", data.history)
    if table.empty:
        st.info(f"{data.run.name} has no checkpoints yet.")
        return
    st.table(shown(table).set_index("file"))


def system_tab(data: views.RunData) -> None:
    names = views.system_metrics(data.history)
    if not names:
        st.info(f"{data.run.name} logged no system metrics (names starting with system/).")
        return
    columns = st.columns(2)
    for i, name in enumerate(names):
        with columns[i % 2]:
            st.caption(name)
            st.line_chart(wide(data.history, [name]), height=200)


def images_tab(data: views.RunData) -> None:
    found = run_images(data.run.path, limit=MAX_IMAGES)
    if not found:
        st.info(f"{data.run.name} has written no images yet.")
        return
    columns = st.columns(2)
    for i, path in enumerate(found):
        with columns[i % 2]:
            st.image(str(path), caption=path.relative_to(data.run.path).as_posix())


def config_tab(data: views.RunData) -> None:
    config = read_config(data.run.path)
    if config:
        st.code(yaml.safe_dump(config, sort_keys=False), language="yaml")
    elif data.params:
        st.caption("no config.yaml: the params the run logged")
        st.code(json.dumps(data.params, indent=2, default=str), language="json")
    else:
        st.info(f"{data.run.name} has no config.yaml and logged no params.")
    provenance = read_provenance(data.run.path)
    if provenance:
        st.caption("provenance.json")
        st.code(json.dumps(provenance, indent=2), language="json")


def page(root: str) -> None:
    try:
        runs = [views.RunData(run) for run in find_runs(root)]
    except RunsRootError as exc:
        st.error(str(exc))
        return
    if not runs:
        st.warning(
            f"No run folders under {Path(root).resolve()} yet. Train something there first, e.g. "
            "`uv run python -m cabruca.train --demo --output-dir <runs root>`."
        )
        return
    names = [data.run.name for data in runs]
    name = st.selectbox(
        "Run", names, key="run", help="The run the curves, checkpoints, system and images show."
    )
    selected = runs[names.index(name)] if name in names else runs[0]
    panels = st.tabs(TABS)
    with panels[0]:
        runs_tab(runs)
    with panels[1]:
        curves_tab(selected)
    with panels[2]:
        compare_tab(runs)
    with panels[3]:
        checkpoints_tab(selected)
    with panels[4]:
        system_tab(selected)
    with panels[5]:
        images_tab(selected)
    with panels[6]:
        config_tab(selected)


def main() -> None:
    st.set_page_config(page_title="Trainyard dashboard", layout="wide")
    default_root, refresh_s = app_arguments(sys.argv[1:])
    st.sidebar.title("Trainyard dashboard")
    root = st.sidebar.text_input("Runs root", value=default_root, key="runs_root")
    live = st.sidebar.toggle(f"Refresh every {refresh_s:g} s", value=True, key="live")

    @st.fragment(run_every=refresh_s if live else None)
    def refreshed() -> None:
        page(root)

    refreshed()


if __name__ == "__main__":
    main()
