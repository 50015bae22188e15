"""The Python entry with Lightning's shape (`egnn_com.trainer`): the README's example runs as written, a fit
stopped by Ctrl-C and continued with `ckpt_path="last"` ends bit-identical to an uninterrupted fit, and
Lightning arguments without a meaning here are refused with a reason."""

import re
from pathlib import Path

import pytest
import torch
from torch_geometric.loader import DataLoader

from common.checkpoint import load_checkpoint
from common.errors import CheckpointError, ConfigError
from common.runs import RunFolderError
from common.seeding import seed_everything
from common.testing import SignalAt, assert_trees_equal, history_series
from egnn_com.data import load_dataset
from egnn_com.inference import load_from_checkpoint
from egnn_com.trainer import CentreOfMassModule, EarlyStopping, LearningRateMonitor, Trainer

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example() -> str:
    """The Python block of the README's 'Training from Python' section."""
    section = README.read_text(encoding="utf-8").split("## Training from Python", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_example_trains_then_resumes_from_its_best_checkpoint(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)  # the example writes data/, checkpoints/ and runs/ where it runs, as the seed
    namespace: dict = {}
    exec(compile(readme_example(), str(README), "exec"), namespace)
    trainer, first_best = namespace["trainer"], Path(namespace["best"])

    assert first_best.parent == Path("checkpoints") and first_best.name.startswith("best-model-0")
    assert f"resumed at epoch {int(first_best.name[11:13]) + 1}, batch 0" in caplog.text
    assert f"from {first_best}" in caplog.text
    assert (trainer.current_epoch, trainer.global_step) == (5, 15)  # 48 graphs / 16 = 3 steps per epoch
    assert "val/loss" in trainer.callback_metrics
    ckpt = trainer.checkpoint_callback
    assert Path(ckpt.last_model_path) == Path("checkpoints/last.ckpt")
    assert [p.name for p in ckpt.kept] == [Path(ckpt.best_model_path).name]  # top 1 kept across the resume
    assert load_checkpoint("checkpoints/last.ckpt")["global_step"] == 15
    history = history_series(tmp_path / "runs/python/metrics_history.json")
    assert [step for step, _ in history["val/loss"]] == [3, 6, 9, 12, 15]  # one history over both fits
    assert (tmp_path / "runs/python/config.yaml").is_file()

    # the checkpoints are egnn_com's own: inference and the module's load_from_checkpoint read them
    model = namespace["model"].eval()
    batch = next(iter(namespace["val_loader"]))
    net, cfg = load_from_checkpoint("checkpoints/last.ckpt")
    assert cfg.model.name == "egnn" and cfg.model.hidden_dim == 32
    reloaded = CentreOfMassModule.load_from_checkpoint("checkpoints/last.ckpt")
    with torch.no_grad():
        torch.testing.assert_close(net(batch), model(batch), rtol=0, atol=0)
        torch.testing.assert_close(reloaded(batch), model(batch), rtol=0, atol=0)

    # a new fit into the run's folder is refused (also in the process that wrote it), naming the way out
    with pytest.raises(RunFolderError, match="ckpt_path='last'"):
        Trainer(max_epochs=1, default_root_dir="runs/python").fit(
            model, namespace["train_loader"], namespace["val_loader"]
        )
    # a checkpoint of another network is refused before anything is written
    other = CentreOfMassModule(input_dim=model.input_dim, model="gcn", hidden_dim=16, num_layers=2)
    with pytest.raises(CheckpointError, match="trained with model"):
        Trainer(max_epochs=6, default_root_dir="runs/python").fit(
            other, namespace["train_loader"], namespace["val_loader"], ckpt_path="last"
        )


def fit_gcn(root: Path, graphs, *extra_callbacks, ckpt_path=None):
    """3 epochs of a gcn (dropout: the RNG state matters) on plain PyG loaders: 32 training graphs in
    batches of 8, 2 accumulated per optimizer step, 2 steps per epoch."""
    seed_everything(0 if ckpt_path is None else 1)  # a resumed fit must not depend on the initial weights
    module = CentreOfMassModule(
        graphs[0].num_node_features, model="gcn", hidden_dim=16, num_layers=2, lr=0.01
    )
    trainer = Trainer(
        max_epochs=3,
        accumulate_grad_batches=2,
        gradient_clip_val=1.0,
        log_every_n_steps=1,
        callbacks=[
            EarlyStopping(patience=5),
            LearningRateMonitor(logging_interval="epoch"),
            *extra_callbacks,
        ],
        default_root_dir=root,
        logger=False,
        enable_progress_bar=False,
    )
    train = DataLoader(graphs[:32], batch_size=8, shuffle=True)
    val = DataLoader(graphs[32:], batch_size=8)
    return trainer.fit(module, train, val, ckpt_path=ckpt_path)


def test_a_fit_stopped_by_ctrl_c_and_resumed_from_last_equals_an_uninterrupted_fit(tmp_path, tiny_data):
    graphs = load_dataset(tiny_data).graphs
    reference = fit_gcn(tmp_path / "reference", graphs)
    assert reference.global_step == 6

    stopped = fit_gcn(tmp_path / "run", graphs, SignalAt(step=3, signal="SIGINT"))
    assert stopped.interrupted == "SIGINT" and stopped.global_step == 3  # inside epoch 2
    assert stopped.checkpoint.name == "last-step.ckpt"
    resumed = fit_gcn(tmp_path / "run", graphs, ckpt_path="last")
    assert resumed.global_step == 6 and resumed.interrupted is None

    final = load_checkpoint(tmp_path / "reference/checkpoints/last.ckpt")
    assert_trees_equal(
        final, load_checkpoint(tmp_path / "run/checkpoints/last.ckpt"), skip=("config", "manager")
    )
    assert history_series(tmp_path / "reference/metrics_history.json") == history_series(
        tmp_path / "run/metrics_history.json"
    )


def test_lightning_arguments_without_a_meaning_here_are_refused_with_the_reason(tmp_path):
    with pytest.raises(ConfigError) as refused:
        Trainer(strategy="ddp", fast_dev_run=True, limit_train_batches=0.1, no_such_option=1)
    message = str(refused.value)
    assert "strategy: egnn_com trains on several devices" in message and "torchrun" in message
    assert "fast_dev_run: the quick check is `python -m egnn_com.train --fast_dev_run N`" in message
    assert "limit_train_batches: build the loader with fewer batches" in message
    assert "no_such_option: not an argument of this Trainer" in message
    with pytest.raises(ConfigError, match="torchrun"):
        Trainer(accelerator="cpu", devices=2)
    with pytest.raises(ConfigError, match="--use_wandb"):
        Trainer(logger=object())
    with pytest.raises(ConfigError, match="clips the global gradient norm"):
        Trainer(gradient_clip_algorithm="value")
    with pytest.raises(CheckpointError, match="ckpt_path='last'"):
        Trainer(default_root_dir=tmp_path / "empty")._find_checkpoint("last")
    assert not (tmp_path / "empty").exists()  # refused before anything was created
