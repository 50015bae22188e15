"""One workbench for the four packages: a short real training of each, into one runs root and one MLflow store,
then found together by MLflow, by the dashboard's data layer and, in headless Chromium, on the dashboard itself.

The trainings run in this process through each package's command line (`run_cli(main, args)`), on the tiny
synthetic data and the cheapest settings their own tests use.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from common.cli import run_cli
from common.trackers import JsonHistory
from dashboard.checkpoints import checkpoint_table
from dashboard.images import run_images
from dashboard.runs import find_runs
from dashboard.views import RunData, compare, shared_metrics

PACKAGES = ("dtgcnn", "egnn_com", "spectral_mae", "cabruca")
# The names every package logs (common's scheme): what a comparison across packages joins on.
SHARED_METRICS = ("train/loss", "val/loss", "lr")

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def train_dtgcnn(data_root: Path, runs_root: Path) -> None:
    from dtgcnn.synthetic import SyntheticSpec, generate
    from dtgcnn.train import main

    spec = SyntheticSpec(num_subjects=4, per_subject=(6, 2, 2), num_vertices=48, seed=3)
    data = generate(data_root / "meshes", spec)
    tiny = ["num_vertices=48", "k=4", "edge_conv_dims=[8,8,16]", "fusion_dim=32", "hidden_dim=16"]
    tiny += ["embedding_dim=8", "samples_per_label=4", "warmup_epochs=0", "prefetch_batches=1"]
    tiny += ["log_interval=1", "plot_every=1", "checkpoint_every=1", "mlflow=true"]
    args = ["--data-dir", str(data), "--output-dir", str(runs_root / "dtgcnn" / "run"), "--num-epochs", "2"]
    run_cli(main, [*args, "--batch-size", "8", "--no-jit-compile", *tiny])


def train_egnn_com(data_root: Path, runs_root: Path) -> None:
    from egnn_com.synthetic import generate_dataset
    from egnn_com.train import main

    data = generate_dataset(data_root / "graphs", num_graphs=40, seed=3, min_nodes=6, max_nodes=12)
    args = ["--data_dir", str(data), "--output_dir", str(runs_root / "egnn_com" / "run"), "--max_epochs", "2"]
    tiny = ["--num_workers", "0", "--hidden_dim", "16", "--num_layers", "2", "--batch_size", "8"]
    run_cli(main, [*args, *tiny, "logging.use_mlflow=true", "logging.mlflow_log_model=false"])


def train_spectral_mae(data_root: Path, runs_root: Path) -> None:
    from spectral_mae.synthetic import SyntheticSpec, write_dataset
    from spectral_mae.train import main

    spec = SyntheticSpec(num_images=4, size=20, bands=10, val_fraction=0.25)
    csv = write_dataset(data_root / "cubes", spec)
    model = ["model.name=test_tiny", "model.img_size=20", "model.patch_size=[5,5]", "model.in_chans=10"]
    model += ["model.embed_dim=32", "model.encoder_depth=2", "model.encoder_num_heads=2"]
    model += ["model.decoder_embed_dim=16", "model.decoder_depth=1", "model.decoder_num_heads=2"]
    run = [f"dataset.csv_file={csv}", f"general.run_dir={runs_root / 'spectral_mae' / 'run'}"]
    run += ["general.num_workers=0", "general.log_every_n_steps=1", "hparams.epochs=2"]
    run += ["hparams.batch_size=2"]
    run += ["hparams.valid_interval=1", "show_prediction.nb_to_plot=1", "show_prediction.dpi=40"]
    run_cli(main, ["--device", "cpu", *model, *run, "mlflow.enabled=true"])


def train_cabruca(data_root: Path, runs_root: Path) -> None:
    from cabruca.synthetic import generate
    from cabruca.train import main

    data = generate(data_root / "tiles", num_train=2, num_val=1, image_size=64, seed=0)
    args = ["--config", "training_config_light", "--device", "cpu", "--data-dir", str(data), "--use-mlflow"]
    args += ["--output-dir", str(runs_root / "cabruca"), "--experiment-name", "run", "--epochs", "2"]
    tiny = ["model.backbone=test_resnet", "model.fpn_channels=32", "model.head_channels=16"]
    tiny += ["data.tile_size=64", "data.tile_overlap=0", "data.batch_size=2", "data.num_workers=0"]
    tiny += ["training.save_every_n_steps=0", "training.log_every_n_steps=1", "tracking.tensorboard=false"]
    run_cli(main, [*args, *tiny])


TRAININGS = {
    "dtgcnn": train_dtgcnn,
    "egnn_com": train_egnn_com,
    "spectral_mae": train_spectral_mae,
    "cabruca": train_cabruca,
}


@pytest.fixture(scope="module")
def workbench(tmp_path_factory):
    """(runs root, MLflow tracking URI) after one short training of each package, in PACKAGES order (so the
    cabruca run is the newest)."""
    base = tmp_path_factory.mktemp("workbench")
    runs_root, data_root = base / "runs", base / "data"
    uri = f"sqlite:///{base / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.chdir(base)  # anything a package writes beside its run stays in the temporary folder
        for package in PACKAGES:
            TRAININGS[package](data_root, runs_root)
    return runs_root, uri


@pytest.fixture(scope="module")
def mlflow_runs(workbench):
    """Every run of the shared store, from one search over all experiments."""
    import mlflow

    _, uri = workbench
    mlflow.set_tracking_uri(uri)
    try:
        return mlflow.search_runs(search_all_experiments=True)
    finally:
        mlflow.set_tracking_uri(None)


@pytest.mark.parametrize("package", PACKAGES)
def test_one_mlflow_search_finds_every_package_with_the_same_metric_names(workbench, mlflow_runs, package):
    runs_root, _ = workbench
    assert len(mlflow_runs) == len(PACKAGES)
    (run,) = [r for r in find_runs(runs_root) if r.package == package]
    id_file = run.path / ".mlflow_run_id"
    assert id_file.is_file(), f"{package} wrote no MLflow run into the shared store"
    found = mlflow_runs[mlflow_runs["run_id"] == id_file.read_text().strip()]
    assert len(found) == 1
    for metric in SHARED_METRICS:
        assert found[f"metrics.{metric}"].notna().all(), f"{package} logged no {metric} to MLflow"


def test_the_data_layer_lists_and_compares_the_runs_of_all_four_packages(workbench):
    runs_root, _ = workbench
    runs = [RunData(run) for run in find_runs(runs_root)]
    assert sorted(data.run.package for data in runs) == sorted(PACKAGES)
    assert runs[0].run.package == "cabruca"  # newest first
    assert set(SHARED_METRICS) <= set(shared_metrics(runs))
    chart, table = compare(runs, "train/loss")
    assert sorted(table["package"]) == sorted(PACKAGES)
    assert chart.shape[1] == 4 and chart.notna().sum().min() >= 2  # two epochs of each run
    for data in runs:  # every run checkpointed and plotted
        steps = checkpoint_table(data.run.path / "checkpoints", data.history)["step"].tolist()
        assert steps and None not in steps and steps == sorted(steps), data.run.name
        assert run_images(data.run.path), data.run.name


def test_the_workspace_launcher_serves_the_same_app(workbench, monkeypatch):
    from streamlit.testing.v1 import AppTest

    runs_root, _ = workbench
    monkeypatch.setenv("TRAINYARD_RUNS_ROOT", str(runs_root))
    at = AppTest.from_file(str(ROOT / "tools" / "dashboard" / "app.py"), default_timeout=60).run()
    assert not at.exception
    assert sorted(at.table[0].value["package"]) == sorted(PACKAGES)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serving(port: int, server: subprocess.Popen, log: Path) -> bool:
    """The dashboard's server accepts connections (a server that exited fails the test at once)."""
    assert server.poll() is None, (
        f"the dashboard server exited ({server.returncode}): {log.read_text()[-2000:]}"
    )
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _browser():
    """Headless Debian Chromium through Selenium; skipped only outside CI when Chromium is not installed."""
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        if os.environ.get("CI"):
            pytest.fail(
                f"{CHROMIUM} and {CHROMEDRIVER} are needed in CI: apt-get install chromium chromium-driver"
            )
        pytest.skip("Chromium is not installed (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1400,1100",
    ):
        options.add_argument(flag)
    return webdriver, options, Service(CHROMEDRIVER)


def test_the_dashboard_shows_every_package_in_headless_chromium(workbench, tmp_path):
    runs_root, _ = workbench
    webdriver, options, service = _browser()
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    runs = find_runs(runs_root)
    newest = RunData(runs[0])
    checkpoints = checkpoint_table(newest.run.path / "checkpoints", newest.history)["file"].tolist()
    port = _free_port()
    env = {**os.environ, "HOME": str(tmp_path), "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false"}
    server_log = tmp_path / "server.log"
    log_file = server_log.open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "dashboard.cli", "--runs-root", str(runs_root), "--port", str(port)],
        stdout=log_file,
        stderr=subprocess.STDOUT,
        env=env,
    )
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium'}")
    driver = live = None
    try:
        driver = webdriver.Chrome(service=service, options=options)
        wait = WebDriverWait(
            driver, 120, poll_frequency=0.5, ignored_exceptions=[StaleElementReferenceException]
        )

        wait.until(lambda _: _serving(port, server, server_log))
        driver.get(f"http://127.0.0.1:{port}")

        def shown_panel(d):
            panels = [p for p in d.find_elements(By.CSS_SELECTOR, '[role="tabpanel"]') if p.is_displayed()]
            return panels[0] if panels else None

        def open_tab(label: str) -> None:
            xpath = f'//*[@role="tab"][.//p[normalize-space()="{label}"]]'
            wait.until(lambda d: d.find_element(By.XPATH, xpath)).click()
            wait.until(lambda d: d.find_element(By.XPATH, xpath).get_attribute("aria-selected") == "true")

        # Runs table: every run by name, with its package.
        wait.until(lambda d: shown_panel(d) is not None and all(r.name in shown_panel(d).text for r in runs))
        assert all(p in shown_panel(driver).text for p in PACKAGES)

        # Compare: a chart and a table with a row from each package, on train/loss.
        open_tab("Compare")
        wait.until(
            lambda d: all(p in shown_panel(d).text for p in PACKAGES) and "train/loss" in shown_panel(d).text
        )
        assert shown_panel(driver).find_elements(By.CSS_SELECTOR, '[data-testid="stVegaLiteChart"]')
        rows = shown_panel(driver).find_elements(By.CSS_SELECTOR, "table tbody tr")
        assert len(rows) == 4

        # Checkpoints of the newest run, in step order.
        open_tab("Checkpoints")
        wait.until(lambda d: all(name in shown_panel(d).text for name in checkpoints))
        text = shown_panel(driver).text
        assert [text.index(name) for name in checkpoints] == sorted(text.index(name) for name in checkpoints)

        # Images: the run's plots, loaded by the browser.
        open_tab("Images")
        wait.until(
            lambda d: any(
                d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img) > 100
                for img in shown_panel(d).find_elements(By.TAG_NAME, "img")
            )
        )
        assert "plots/" in shown_panel(driver).text

        # Auto-refresh: a run that starts logging now shows up, live and current, without reloading the page.
        open_tab("Runs")
        live = JsonHistory(runs_root / "live_run" / "metrics_history.json")
        for step in range(1, 8):  # fewer calls than a rewrite: the rows are in the journal only
            live.log_metrics({"train/loss": 1.0 / step}, step=step)

        def live_row(d) -> list[str]:
            rows = shown_panel(d).find_elements(By.CSS_SELECTOR, "table tbody tr")
            return next((r.text.split() for r in rows if r.text.startswith("live_run")), [])

        wait.until(lambda d: live_row(d)[:4] == ["live_run", "unknown", "live", "7"])
    finally:
        if live is not None:
            live.close()
            shutil.rmtree(runs_root / "live_run")
        if driver is not None:
            driver.quit()
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log_file.close()
    shutil.rmtree(tmp_path / "chromium", ignore_errors=True)
