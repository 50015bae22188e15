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
    assert set(logged) <= {"model", "config", "num_classes", "mode", "input_dim"}  # no optimizer, RNG, loop

    model, loaded_cfg = dtgcnn.load_mlflow_model(f"runs:/{run_id}/model", tracking_uri=store)
    expected_model, _ = load_from_checkpoint(result.best_checkpoint)
    assert loaded_cfg == cfg
    x, _ = make_batch(load_splits(cfg, tiny_data)["val"], np.arange(4), None, 0, 0, 0)
    got, expected = model(mx.array(x)), expected_model(mx.array(x))
    assert got.keys() == expected.keys()
    for key in expected:
        np.testing.assert_array_equal(np.array(got[key]), np.array(expected[key]), err_msg=key)


def test_a_text_run_logs_a_model_that_encodes_like_its_best_checkpoint(text_corpus, tmp_path, monkeypatch):
    from dataclasses import replace

    from dtgcnn.config import DTGCNNConfig
    from dtgcnn.text_trainer import fit_triplets, load_text_model

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.chdir(tmp_path)
    small = {"hidden_dims": [32], "num_gcn_layers": 1, "output_dim": 16, "batch_size": 16, "num_epochs": 2}
    cfg = replace(DTGCNNConfig(), **small, graph_bank_size=32, plot_every=0, tsne_plot=False, mlflow=True)
    result = fit_triplets(cfg, tmp_path / "run", data=text_corpus / "sentences.csv")

    run_id = (tmp_path / "run" / ".mlflow_run_id").read_text().strip()
    model, loaded_cfg = dtgcnn.load_mlflow_model(run_id, tracking_uri=store)
    expected, _ = load_text_model(result.best_checkpoint)
    texts = ["turn on the kitchen lights", "what is the weather tomorrow"]
    assert loaded_cfg.mlflow and loaded_cfg.output_dim == 16
    np.testing.assert_array_equal(np.array(model.encode(texts)), np.array(expected.encode(texts)))
