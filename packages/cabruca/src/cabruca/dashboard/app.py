"""Trainyard monitor: a Streamlit app over the run folders of every Trainyard package.

    python -m cabruca.monitor --runs-dir outputs        # or
    streamlit run tools/dashboard/app.py -- --runs-dir outputs

Tabs: live training curves, system resources, checkpoints with their metrics, comparison across runs,
config viewer. The runs folder comes from `--runs-dir` after `--`, else $TRAINYARD_RUNS_DIR, else ./outputs,
and can be changed in the sidebar.
"""

from __future__ import annotations

import argparse
import os
import sys

import pandas as pd
import streamlit as st

from cabruca.dashboard import runs as R

# Default curves, in order: losses, then detection, accuracy and overlap scores (per-class IoUs left out).
DEFAULT_METRIC_HINTS = ("loss", "mAP", "acc", "mIoU", "canopy_IoU")


def default_runs_dir(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--runs-dir", default=None)
    known, _ = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    return known.runs_dir or os.environ.get("TRAINYARD_RUNS_DIR") or "outputs"


def _default_metrics(names: list[str]) -> list[str]:
    # per-epoch curves first: not the per-step rows, the LRs, system/ figures or the loop's epoch counter
    epoch_level = [
        n for n in names if not n.endswith("_step") and not n.startswith(("lr", "system")) and n != "epoch"
    ]
    picks = []
    for hint in DEFAULT_METRIC_HINTS:
        picks += [n for n in epoch_level if n.split("/")[-1].startswith(hint) and n not in picks]
    return (picks or epoch_level or names)[:6]


def curves_tab(run: R.Run, history: pd.DataFrame) -> None:
    if history.empty:
        st.info(f"No metrics logged yet in {run.path} (looking for {', '.join(R.HISTORY_FILES)}).")
        return
    names = sorted(history["metric"].unique())
    chosen = st.multiselect("Metrics", names, default=_default_metrics(names), key="curve_metrics")
    separate = st.toggle("One chart per metric", value=True, key="curve_separate")
    if not chosen:
        return
    if separate:
        cols = st.columns(2)
        for i, name in enumerate(chosen):
            with cols[i % 2]:
                st.caption(name)
                st.line_chart(R.wide(history, [name]), height=220)
    else:
        st.line_chart(R.wide(history, chosen))
    st.dataframe(
        R.summary(history[history["metric"].isin(chosen)]), hide_index=True, use_container_width=True
    )


def system_tab(history: pd.DataFrame) -> None:
    snap = R.system_snapshot()
    cols = st.columns(4)
    cols[0].metric("CPU", f"{snap['cpu_percent']:.0f} %", help=f"{snap['cpu_count']} logical cores")
    cols[1].metric("Memory", f"{snap['memory_used_gb']:.1f} / {snap['memory_total_gb']:.1f} GB")
    cols[2].metric("Memory use", f"{snap['memory_percent']:.0f} %")
    if "cuda_memory_allocated_gb" in snap:
        cols[3].metric("CUDA memory", f"{snap['cuda_memory_allocated_gb']:.2f} GB")
    system = (
        sorted(m for m in history["metric"].unique() if m.startswith(("system", "memory", "time")))
        if not history.empty
        else []
    )
    if system:
        st.subheader("Logged by the run")
        st.line_chart(R.wide(history, system), height=260)
        st.dataframe(
            R.summary(history[history["metric"].isin(system)]), hide_index=True, use_container_width=True
        )
    else:
        st.caption("The run logged no system metrics (names starting with system/).")


def checkpoints_tab(run: R.Run, history: pd.DataFrame) -> None:
    table = R.checkpoints(run, history)
    if table.empty:
        st.info(f"No checkpoints in {run.path / 'checkpoints'} yet.")
        return
    st.dataframe(table, hide_index=True, use_container_width=True)


def compare_tab(all_runs: list[R.Run]) -> None:
    labels = {str(r.path): r for r in all_runs}
    default = list(labels)[: min(3, len(labels))]
    chosen = st.multiselect(
        "Runs", list(labels), default=default, format_func=lambda p: labels[p].name, key="compare_runs"
    )
    histories = {labels[p].name: R.load_history(labels[p]) for p in chosen}
    names = sorted(set().union(*[set(h["metric"].unique()) for h in histories.values()])) if histories else []
    if not names:
        st.info("Pick runs that have logged metrics.")
        return
    metric = st.selectbox(
        "Metric", names, index=names.index(_default_metrics(names)[0]), key="compare_metric"
    )
    series = {name: h[h["metric"] == metric].set_index("step")["value"] for name, h in histories.items()}
    series = {k: v[~v.index.duplicated(keep="last")] for k, v in series.items() if not v.empty}
    if series:
        st.line_chart(pd.DataFrame(series).sort_index())
    rows = [
        {
            "run": k,
            "last": v.iloc[-1],
            "best (min)": v.min(),
            "best (max)": v.max(),
            "steps": int(v.index.max()),
        }
        for k, v in series.items()
    ]
    st.dataframe(pd.DataFrame(rows), hide_index=True, use_container_width=True)


def config_tab(run: R.Run) -> None:
    if run.config_path is not None:
        st.code(run.config_path.read_text(), language="yaml")
    else:
        params = R.params(run)
        if params:
            st.json(params)
        else:
            st.info("This run has no config.yaml and logged no params.")


def main() -> None:
    st.set_page_config(page_title="Trainyard monitor", layout="wide")
    st.sidebar.title("Trainyard monitor")
    runs_dir = st.sidebar.text_input("Runs folder", value=default_runs_dir(), key="runs_dir")
    all_runs = R.find_runs(runs_dir)
    if not all_runs:
        st.title("Trainyard monitor")
        st.warning(
            f"No run folders found under {os.path.abspath(runs_dir)}. Train something first, e.g. "
            "`python -m cabruca.train --demo`, or point the sidebar at another folder."
        )
        return
    names = [str(r.path) for r in all_runs]
    picked = st.sidebar.selectbox("Run", names, format_func=lambda p: os.path.relpath(p, runs_dir), key="run")
    run = all_runs[names.index(picked)]
    live = st.sidebar.toggle("Live refresh", value=False, key="live")
    every = st.sidebar.slider("Refresh every (s)", 2, 60, 5, key="every", disabled=not live)

    @st.fragment(run_every=every if live else None)
    def body() -> None:
        history = R.load_history(run)
        st.title(run.name)
        st.caption(
            f"{run.path}  ·  {history['metric'].nunique() if not history.empty else 0} metrics  ·  "
            f"last step {int(history['step'].max()) if not history.empty else '-'}"
        )
        tabs = st.tabs(["Training curves", "System", "Checkpoints", "Compare runs", "Config"])
        with tabs[0]:
            curves_tab(run, history)
        with tabs[1]:
            system_tab(history)
        with tabs[2]:
            checkpoints_tab(run, history)
        with tabs[3]:
            compare_tab(all_runs)
        with tabs[4]:
            config_tab(run)

    body()


if __name__ == "__main__":
    main()
