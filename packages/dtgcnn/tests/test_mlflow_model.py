"""The trained model in MLflow: MLflow has no MLX flavor, so a run logs its best weights (weights-only) as the
`model` artifact, and `dtgcnn.load_mlflow_model` brings back a model that embeds exactly as the best
checkpoint does."""

import mlx.core as mx
import numpy as np
import pytest

pytest.importorskip("mlflow")  # an extra of trainyard-common: absent from a package-alone install

from mlflow.tracking import MlflowClient  # noqa: E402

import dtgcnn  # noqa: E402
from common.checkpoint import load_checkpoint  # noqa: E402
from dtgcnn.checkpoints import load_from_checkpoint  # noqa: E402
from dtgcnn.data import make_batch  # noqa: E402
from dtgcnn.trainer import load_splits, train  # noqa: E402


def test_best_weights_logged_to_mlflow_load_back_with_the_same_embeddings(
    tiny_data, tiny_config, tmp_path, monkeypatch
):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.chdir(tmp_path)  # an SQLite store keeps its artifacts in ./mlruns where the run starts
    cfg = tiny_config(num_epochs=2, mlflow=True, plot_every=0)
    result = train(cfg, tiny_data, tmp_path / "run")

    run_id = (tmp_path / "run" / ".mlflow_run_id").read_text().strip()
    client = MlflowClient(store)
    assert client.get_run(run_id).info.status == "FINISHED"
    assert [a.path for a in client.list_artifacts(run_id, "model")] == ["model/model.npz"]
    logged = load_checkpoint(tmp_path / "run" / "model" / "model.npz")
    assert set(logged) <= {"model", "config", "num_classes"}  # weights only: no optimizer, RNG or loop

    model, loaded_cfg = dtgcnn.load_mlflow_model(f"runs:/{run_id}/model", tracking_uri=store)
    expected_model, _ = load_from_checkpoint(result.best_checkpoint)
    assert loaded_cfg == cfg
    x, _ = make_batch(load_splits(cfg, tiny_data)["val"], np.arange(4), None, 0, 0, 0)
    got, expected = model(mx.array(x)), expected_model(mx.array(x))
    assert got.keys() == expected.keys()
    for key in expected:
        np.testing.assert_array_equal(np.array(got[key]), np.array(expected[key]), err_msg=key)
