"""The trained model in MLflow: a tiny run logs its best weights as an MLflow model, which
`mlflow.pytorch.load_model` brings back and which predicts what the best checkpoint does."""

import pytest

pytest.importorskip("mlflow")  # an extra of trainyard-common: absent from a package-alone install

import mlflow.artifacts  # noqa: E402
import mlflow.pytorch  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from torch_geometric.data import Batch  # noqa: E402

from common.config import load_config  # noqa: E402
from egnn_com.config import EgnnComConfig  # noqa: E402
from egnn_com.data import load_dataset  # noqa: E402
from egnn_com.inference import load_from_checkpoint  # noqa: E402
from egnn_com.pipeline import run_training  # noqa: E402
from egnn_com.synthetic import generate_dataset  # noqa: E402


def test_best_model_logged_to_mlflow_loads_back_and_predicts_alike(tmp_path, monkeypatch):
    data = generate_dataset(tmp_path / "graphs", num_graphs=24, seed=3, min_nodes=6, max_nodes=10)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.chdir(tmp_path)  # an SQLite store keeps its artifacts in ./mlruns where the run starts
    cfg = load_config(
        EgnnComConfig,
        overrides=[
            "data.batch_size=8",
            "data.num_workers=0",
            "model.hidden_dim=8",
            "model.num_layers=2",
            "logging.tensorboard=false",
            "logging.use_mlflow=true",
            "train.save_every_n_steps=0",
            "train.max_epochs=2",
        ],
    )
    cfg.data.data_dir, cfg.train.output_dir = str(data), str(tmp_path / "run")
    out = run_training(cfg)

    run_id = (out.run_dir / ".mlflow_run_id").read_text().strip()
    client = MlflowClient(store)
    assert client.get_run(run_id).info.status == "FINISHED"
    assert {"model/MLmodel", "model/data"} <= {a.path for a in client.list_artifacts(run_id, "model")}

    # What a user does: the model from the store alone (downloaded, unpickled from the package's classes).
    local = mlflow.artifacts.download_artifacts(
        f"runs:/{run_id}/model", tracking_uri=store, dst_path=tmp_path
    )
    model = mlflow.pytorch.load_model(local)
    expected_model, _ = load_from_checkpoint(out.best_checkpoint)
    batch = Batch.from_data_list(load_dataset(data).graphs[:5])
    with torch.no_grad():
        np.testing.assert_array_equal(model(batch).numpy(), expected_model(batch).numpy())
