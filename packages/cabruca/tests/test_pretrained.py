"""`model.pretrained_checkpoint` with the README's transfer-learning config: what was loaded is reported
(log, tracker params and metrics), the optimizer's groups carry the config's learning rates, and a file that
fits too little of the backbone is refused unless the user allows it."""

from __future__ import annotations

import json

import pytest
import timm
import torch

from cabruca import config as config_mod
from cabruca.engine import HISTORY_FILE
from cabruca.model import build_model
from cabruca.pretrained import load_pretrained
from cabruca.train import main
from cabruca.training import train
from common.callbacks import Callback
from common.cli import run_cli
from common.errors import CheckpointError
from common.testing import history_series

# The transfer-learning example of the README, verbatim but for the file's path.
SEED_YAML = """
model:
  pretrained_checkpoint: "{path}"

optimizer:
  param_groups:
    - name: "backbone"
      lr: 0.00001  # Smaller LR for pretrained backbone
    - name: "heads"
      lr: 0.0001   # Normal LR for new heads
"""

TINY = {
    "device": "cpu",
    "model.backbone": "test_resnet",
    "model.fpn_channels": 32,
    "model.head_channels": 16,
    "data.tile_size": 64,
    "data.tile_overlap": 0,
    "data.batch_size": 2,
    "data.num_workers": 0,
    "training.num_epochs": 1,
    "training.max_steps_per_epoch": 1,
    "training.log_every_n_steps": 1,
    "training.save_every_n_steps": 0,
    "tracking.tensorboard": False,
}


@pytest.fixture(scope="module")
def imagenet_style_weights(tmp_path_factory):
    """What a user downloads: the whole timm classifier's state_dict (its `fc` head is not a backbone part)."""
    torch.manual_seed(0)
    state = timm.create_model("test_resnet").state_dict()
    path = tmp_path_factory.mktemp("weights") / "pretrained_model.pth"
    torch.save(state, path)
    return path, state


class GroupsAtStart(Callback):
    """Records the optimizer's groups as training starts (after the weights were loaded)."""

    def on_fit_start(self, loop) -> None:
        opt = loop.task.optimizer
        self.lrs = [g["lr"] for g in opt.param_groups]
        self.names = list(loop.task.group_names)
        self.backbone_ids = {id(p) for p in opt.param_groups[0]["params"]}
        self.backbone_ids_of_model = {id(p) for p in loop.task.model.backbone.parameters()}
        self.stem = loop.task.model.backbone.state_dict()["conv1.0.weight"].clone()


def test_seed_transfer_config_reports_what_loaded_and_keeps_its_learning_rates(
    imagenet_style_weights, tiny_data, tmp_path
):
    path, state = imagenet_style_weights
    yaml_file = tmp_path / "transfer.yaml"
    yaml_file.write_text(SEED_YAML.format(path=path))
    cfg = config_mod.load(
        str(yaml_file), cli={**TINY, "data.data_dir": str(tiny_data), "output_dir": str(tmp_path / "out")}
    )
    seen = GroupsAtStart()
    result = train(cfg, callbacks=[seen])

    # the optimizer's groups have the seed's learning rates, the backbone's group holds the loaded backbone
    assert seen.names == ["backbone", "heads"] and seen.lrs == pytest.approx([1e-5, 1e-4])
    assert seen.backbone_ids == seen.backbone_ids_of_model
    assert torch.equal(seen.stem, state["conv1.0.weight"])
    h = history_series(result.run_dir / HISTORY_FILE)
    assert h["lr/backbone"][0] == (1, pytest.approx(1e-5)) and h["lr/heads"][0] == (1, pytest.approx(1e-4))

    # the report: counts as metrics at step 0, names as params, and the log
    assert h["pretrained/backbone_match"] == [(0, 1.0)] and h["pretrained/mismatched_keys"] == [(0, 0.0)]
    assert h["pretrained/unexpected_keys"] == [(0, 2.0)] and h["pretrained/missing_keys"] == [(0, 0.0)]
    assert h["pretrained/loaded_keys"] == [(0, float(len(state) - 2))]
    params = json.loads((result.run_dir / HISTORY_FILE).read_text())["params"]["pretrained"]
    assert params["target"] == "backbone" and params["unexpected_keys"] == "fc.weight, fc.bias"
    log = "".join(p.read_text() for p in (result.run_dir / "logs").iterdir())
    assert "100.0% of the backbone's parameter values" in log and "unexpected: fc.weight, fc.bias" in log


def test_weights_of_another_backbone_are_refused_unless_allowed(
    imagenet_style_weights, tiny_data, tmp_path, capsys
):
    _, state = imagenet_style_weights
    # another network: same names, but every stage after the stem is wider
    other = {
        k: (torch.zeros(v.shape[0] + 1, *v.shape[1:]) if k.startswith("layer") and v.dim() else v)
        for k, v in state.items()
    }
    torch.save(other, tmp_path / "other.pth")
    small = {k: v for k, v in TINY.items() if k.startswith("model.")}
    # through the command line: one error paragraph, exit 2, and no run folder left behind
    out = tmp_path / "outputs"
    with pytest.raises(SystemExit) as exc:
        run_cli(
            main,
            ["--config", "training_config_light", "--device", "cpu", "--data-dir", str(tiny_data)]
            + ["--output-dir", str(out), *(f"{k}={v}" for k, v in TINY.items() if k != "device")]
            + [f"model.pretrained_checkpoint={tmp_path / 'other.pth'}"],
        )
    err = capsys.readouterr().err
    assert (
        exc.value.code == 2
        and err[err.rfind("error: ") :].startswith("error: model.pretrained_checkpoint")
        and "Traceback" not in err
    )
    assert not out.exists() or not any(out.iterdir())

    cfg = config_mod.load(
        "training_config_light", cli={**small, "model.pretrained_checkpoint": str(tmp_path / "other.pth")}
    )
    with pytest.raises(CheckpointError) as refused:
        build_model(cfg.model)
    message = str(refused.value)
    assert "below model.pretrained_min_match 0.5" in message and "model.pretrained_strict=false" in message
    assert "shape mismatches (file vs model): layer1.0.conv1.weight" in message

    for allow in ({"model.pretrained_strict": False}, {"model.pretrained_min_match": 0.0}):
        allowed = config_mod.load(
            "training_config_light",
            cli={**small, "model.pretrained_checkpoint": str(tmp_path / "other.pth"), **allow},
        )
        model = build_model(allowed.model)
        report = load_pretrained(model, allowed.model)
        assert (
            0 < report.backbone_match < 0.5
            and report.mismatched
            and report.unexpected == ["fc.weight", "fc.bias"]
        )
        assert torch.equal(model.backbone.state_dict()["conv1.0.weight"], state["conv1.0.weight"])
