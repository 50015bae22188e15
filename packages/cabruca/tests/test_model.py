"""Model shapes, loss components, parameter-group learning rates, local pretrained weights."""

from __future__ import annotations

import pytest
import torch

from cabruca import config as config_mod
from cabruca.losses import MultiTaskLoss
from cabruca.model import build_model, load_pretrained
from cabruca.optim import build_lr_schedule, build_optimizer
from common.checkpoint import save_checkpoint
from common.errors import CheckpointError, ConfigError
from common.torch_support import apply_lrs, training_state


def small(**cli):
    return config_mod.load(
        "training_config_light",
        cli={"model.backbone": "test_resnet", "model.fpn_channels": 16, "model.head_channels": 8, **cli},
    )


def test_heads_shapes_and_loss_components():
    cfg = small()
    model = build_model(cfg.model)
    x = torch.rand(2, 3, 64, 64)  # (B, 3, H, W)
    out = model(x)
    assert out["semantic"].shape == (2, 6, 64, 64) and out["heatmap"].shape == (2, 3, 64, 64)
    assert (
        out["offsets"].shape == (2, 2, 64, 64) and out["crown"].shape == (2, 64, 64) == out["density"].shape
    )
    assert model(torch.rand(1, 3, 72, 88))["semantic"].shape == (1, 6, 72, 88)  # not a multiple of 32
    batch = {
        "semantic": torch.randint(0, 6, (2, 64, 64)),
        "heatmap": torch.rand(2, 3, 64, 64),
        "offsets": torch.randn(2, 2, 64, 64),
        "offset_weight": (torch.rand(2, 64, 64) > 0.5).float(),
        "crown": (torch.rand(2, 64, 64) > 0.9).float(),
        "density": torch.rand(2, 64, 64),
    }
    losses = MultiTaskLoss(cfg.loss)(out, batch)
    c = cfg.loss
    expected = (
        c.semantic_weight * losses["semantic"]
        + c.centre_weight * losses["centre"]
        + c.offset_weight * losses["offset"]
        + c.crown_weight * losses["crown"]
        + c.density_weight * losses["density"]
    )
    assert torch.allclose(losses["loss"], expected)
    assert torch.allclose(
        losses["instance"], c.centre_weight * losses["centre"] + c.offset_weight * losses["offset"]
    )
    losses["loss"].backward()
    assert next(model.backbone.parameters()).grad is not None


def test_unknown_backbone_is_a_config_error():
    with pytest.raises(ConfigError, match="no_such_net"):
        build_model(small(**{"model.backbone": "no_such_net"}).model)


def test_param_groups_have_their_own_learning_rates_under_the_schedule():
    """Transfer learning: backbone 1e-5, heads (and decoder) 1e-4, scaled by the schedule."""
    cfg = small(
        **{
            "optimizer.param_groups": [{"name": "backbone", "lr": 1e-5}, {"name": "heads", "lr": 1e-4}],
            "scheduler.type": "cosine",
            "training.num_epochs": 4,
        }
    )
    model = build_model(cfg.model)
    opt, names = build_optimizer(model, cfg)
    assert names == ["backbone", "heads"]
    ids = [{id(p) for p in g["params"]} for g in opt.param_groups]
    assert ids[0] == {id(p) for p in model.backbone.parameters()}
    assert ids[1] == {id(p) for p in [*model.decoder.parameters(), *model.heads.parameters()]}
    schedule, interval = build_lr_schedule(cfg, [g["lr"] for g in opt.param_groups], steps_per_epoch=5)
    assert interval == "epoch"
    apply_lrs(opt, schedule.step())
    ref = torch.optim.lr_scheduler.CosineAnnealingLR(
        torch.optim.SGD([{"params": [torch.zeros(1)], "lr": 1e-5}, {"params": [torch.zeros(1)], "lr": 1e-4}]),
        T_max=4,
        eta_min=cfg.scheduler.eta_min,
    )
    ref.optimizer.step()
    ref.step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx(ref.get_last_lr())


def test_onecycle_steps_per_optimizer_step_and_bad_group_name():
    cfg = small(**{"scheduler.type": "onecycle", "scheduler.max_lr": 0.01, "training.num_epochs": 2})
    opt, _ = build_optimizer(build_model(cfg.model), cfg)
    schedule, interval = build_lr_schedule(cfg, [g["lr"] for g in opt.param_groups], steps_per_epoch=10)
    assert interval == "step" and schedule.lr == pytest.approx(0.01 / 25)
    bad = small(**{"optimizer.param_groups": [{"name": "neck", "lr": 1e-3}]})
    with pytest.raises(ConfigError, match="neck"):
        build_optimizer(build_model(bad.model), bad)


def test_pretrained_checkpoint_loads_local_weights(tmp_path):
    cfg = small()
    src = build_model(cfg.model)
    # 1. a cabruca checkpoint: every weight is taken
    save_checkpoint(tmp_path / "full.pth", training_state(src, None))
    dst = build_model(small(**{"model.pretrained_checkpoint": str(tmp_path / "full.pth")}).model)
    assert all(
        torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values(), strict=True)
    )
    # 2. a plain backbone state_dict (e.g. converted timm weights): only the backbone is taken
    torch.save(src.backbone.state_dict(), tmp_path / "backbone.pt")
    fresh = build_model(cfg.model)
    report = load_pretrained(
        fresh, small(**{"model.pretrained_checkpoint": str(tmp_path / "backbone.pt")}).model
    )
    assert report.target == "backbone" and report.missing == [] and report.backbone_match == 1.0
    assert torch.equal(next(fresh.backbone.parameters()), next(src.backbone.parameters()))
    (tmp_path / "junk.pth").write_bytes(b"not weights")
    with pytest.raises(CheckpointError, match="neither a cabruca checkpoint nor a torch state_dict"):
        load_pretrained(fresh, small(**{"model.pretrained_checkpoint": str(tmp_path / "junk.pth")}).model)


def test_config_cross_checks_name_the_keys():
    with pytest.raises(ConfigError, match="semantic_class_weights has 2 values for 6"):
        small(**{"loss.semantic_class_weights": [1.0, 2.0]})
    with pytest.raises(ConfigError, match="tile_size"):
        small(**{"data.tile_size": 64, "data.tile_overlap": 64})
    with pytest.raises(ConfigError, match="scheduler.type 'linear'"):
        small(**{"scheduler.type": "linear"})
