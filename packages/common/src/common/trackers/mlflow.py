"""`MlflowTracker`: params, metric histories and artifacts in an MLflow run.

Store: the MLFLOW_TRACKING_URI environment variable when set (it wins, so one export redirects every package
to a shared server), else the `tracking_uri` argument, else an SQLite store in `store_dir`, else the store
every run shares: `mlflow.db` and `mlartifacts/` where the command runs, MLflow's own default, so

    mlflow ui      # in that folder: the runs of all four packages side by side

MLflow 3 refuses the plain folder store (`file:` URIs) unless MLFLOW_ALLOW_FILE_STORE=true; a user who names
one asks for it, so it is allowed. At the end of a run the trained model is logged too (`log_model`).

MLflow is imported here only when a tracker is built: importing it takes seconds.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

from common.trackers.base import flatten_params

_log = logging.getLogger("trainyard.trackers")

# MLflow's own limits (mlflow.utils.validation): values are strings of at most 6000 characters, keys at most
# 250; a batch holds at most 100 params and 1000 metrics. Repeated here so params can be fitted, not rejected.
MAX_PARAM_VALUE = 6000
MAX_KEY = 250
_PARAMS_PER_BATCH = 100
_METRICS_PER_BATCH = 1000
_TRUNCATED = "... [truncated from {n} characters]"
_INVALID_KEY_CHARS = re.compile(r"[^\w\-./ :]")  # MLflow allows alphanumerics, _ - . space / :
_CONNECT_TIMEOUT_S = 2.0


def local_store(store_dir: str | Path) -> tuple[str, str]:
    """(tracking URI, artifact location URI) of the SQLite store kept in `store_dir` (`mlflow.db`, and the
    artifacts in `mlartifacts/`, the names `mlflow ui` and `mlflow server` use there by default)."""
    store_dir = Path(store_dir).resolve()
    store_dir.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{store_dir / 'mlflow.db'}", (store_dir / "mlartifacts").as_uri()


def tracking_store(
    tracking_uri: str | None = None, store_dir: str | Path | None = None
) -> tuple[str, str | None]:
    """(tracking URI, artifact location or None) a run logs to: MLFLOW_TRACKING_URI when set, else
    `tracking_uri`, else a SQLite store in `store_dir`, else the store every run shares: `mlflow.db` where the
    command runs (MLflow's own default), so `mlflow ui` started there shows all runs side by side."""
    tracking_uri = os.environ.get("MLFLOW_TRACKING_URI") or tracking_uri
    if tracking_uri is not None:
        return tracking_uri, None
    return local_store(store_dir if store_dir is not None else Path.cwd())


class MlflowTracker:
    """One MLflow run; `run_id` continues an existing run (a resumed training run) instead of starting one."""

    def __init__(
        self,
        experiment: str,
        run_name: str | None = None,
        tracking_uri: str | None = None,
        tags: dict | None = None,
        *,
        store_dir: str | Path | None = None,
        run_id: str | None = None,
        log_models: bool = True,
    ) -> None:
        tracking_uri, artifact_location = tracking_store(tracking_uri, store_dir)
        if tracking_uri.startswith("file:") or "://" not in tracking_uri:
            # MLflow 3 keeps its folder store but refuses it unless asked; a user who names one asks.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        _check_reachable(tracking_uri)

        from mlflow.tracking import MlflowClient

        self.tracking_uri = tracking_uri
        self.log_models = log_models  # False: `log_model` is skipped (models too big to store per run)
        self._client = MlflowClient(tracking_uri=tracking_uri)
        self._logged_params: dict[str, str] = {}
        if run_id is not None:
            self._client.update_run(run_id, status="RUNNING")
            self.run_id = run_id
            # The first session's params are already there: a resumed session only adds new ones.
            self._logged_params.update(self._client.get_run(run_id).data.params)
        else:
            experiment_id = self._experiment_id(experiment, artifact_location)
            run = self._client.create_run(
                experiment_id, run_name=run_name, tags={str(k): str(v) for k, v in (tags or {}).items()}
            )
            self.run_id = run.info.run_id
        if tracking_uri.startswith("sqlite:"):
            _log.info(
                "MLflow run %s; browse with: mlflow ui --backend-store-uri %s", self.run_id, tracking_uri
            )

    def _experiment_id(self, name: str, artifact_location: str | None) -> str:
        experiment = self._client.get_experiment_by_name(name)
        if experiment is None:
            return self._client.create_experiment(name, artifact_location=artifact_location)
        if experiment.lifecycle_stage == "deleted":  # a deleted name cannot be re-created, only restored
            self._client.restore_experiment(experiment.experiment_id)
        return experiment.experiment_id

    def log_params(self, params: dict) -> None:
        from mlflow.entities import Param

        new = []
        for key, value in flatten_params(params).items():
            key = _fit(_clean_key(key), MAX_KEY, "param name")
            text = _fit(str(value), MAX_PARAM_VALUE, f"param {key}")
            previous = self._logged_params.get(key)
            if previous == text:
                continue
            if previous is not None:
                # MLflow params are write-once: a changed value would make the whole batch fail.
                _log.warning(
                    "MLflow param %s already logged as %r; new value %r not recorded", key, previous, text
                )
                continue
            self._logged_params[key] = text
            new.append(Param(key, text))
        for start in range(0, len(new), _PARAMS_PER_BATCH):
            self._client.log_batch(self.run_id, params=new[start : start + _PARAMS_PER_BATCH])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now_ms = int(time.time() * 1000)
        batch = [Metric(_clean_key(name), float(value), now_ms, int(step)) for name, value in metrics.items()]
        for start in range(0, len(batch), _METRICS_PER_BATCH):
            self._client.log_batch(self.run_id, metrics=batch[start : start + _METRICS_PER_BATCH])

    def log_artifact(self, path: str | Path, name: str | None = None) -> None:
        """A file or folder; `name` may hold sub-folders ("plots/curves.png") and renames the file."""
        path = Path(path)
        target = Path(name) if name else Path(path.name)
        folder = None if str(target.parent) == "." else target.parent.as_posix()
        if path.is_dir():
            self._client.log_artifacts(self.run_id, str(path), artifact_path=target.as_posix())
        elif target.name == path.name:
            self._client.log_artifact(self.run_id, str(path), artifact_path=folder)
        else:
            with (
                tempfile.TemporaryDirectory() as tmp
            ):  # MLflow names an artifact after its file: copy, rename
                renamed = Path(tmp) / target.name
                shutil.copyfile(path, renamed)
                self._client.log_artifact(self.run_id, str(renamed), artifact_path=folder)

    def log_model(self, path: str | Path, name: str = "model") -> None:
        """The run's model (a file or folder) under artifact folder `name`; an MLflow model folder then loads
        with `mlflow.<flavor>.load_model("runs:/<run_id>/<name>")`."""
        if not self.log_models:
            return
        path = Path(path)
        if path.is_dir():
            self._client.log_artifacts(self.run_id, str(path), artifact_path=name)
        else:
            self._client.log_artifact(self.run_id, str(path), artifact_path=name)
        _log.info("MLflow run %s: model logged as runs:/%s/%s", self.run_id, self.run_id, name)

    def close(self) -> None:
        if self.run_id is not None:
            self._client.set_terminated(self.run_id, status="FINISHED")
            self.run_id = None


def _check_reachable(tracking_uri: str) -> None:
    """Fail in seconds, not after MLflow's minutes of HTTP retries, when a tracking server is down."""
    url = urlparse(tracking_uri)
    if url.scheme not in ("http", "https") or not url.hostname:
        return
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=_CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise ConnectionError(f"MLflow tracking server {tracking_uri} is unreachable ({exc})") from None


def _clean_key(key: str) -> str:
    return _INVALID_KEY_CHARS.sub("_", str(key))


def _fit(text: str, limit: int, what: str) -> str:
    if len(text) <= limit:
        return text
    note = _TRUNCATED.format(n=len(text))
    _log.warning("MLflow %s is %d characters long (limit %d): truncated", what, len(text), limit)
    return text[: limit - len(note)] + note
