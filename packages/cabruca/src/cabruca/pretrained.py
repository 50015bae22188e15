"""`model.pretrained_checkpoint`: local weights loaded into a new model, with a report of what fitted.

A pretrained file is matched key by key: a tensor loads when the model has that name with the same shape.
Everything else is reported, never dropped silently: model keys left at their initial values (missing),
checkpoint keys the model lacks (unexpected) and same-named tensors of another shape (mismatched). The
report goes to the log and, as `pretrained.*` params and `pretrained/*` metrics, to the run's trackers.

A file that fills less than `model.pretrained_min_match` of the backbone's parameter values is refused (it
is most likely the weights of another backbone, and training would start from random weights without a
word) unless the user allows it with `model.pretrained_strict: false` or a threshold of 0.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from common.errors import CheckpointError

from .config import ModelConfig

# Parts of a whole-model state_dict; a file without any of these prefixes is read as a backbone's.
MODEL_PARTS = ("backbone.", "decoder.", "heads.")
SHOWN_KEYS = 8  # key names shown per list in a log line or error (the counts are always complete)


@dataclass
class PretrainedReport:
    """What `load_pretrained` took from a file. Keys are named as in the part loaded into (`target`)."""

    path: str
    target: str  # "model" (a whole-model state_dict or cabruca checkpoint) or "backbone" (a bare backbone)
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # model keys left at their initial values
    unexpected: list[str] = field(default_factory=list)  # checkpoint keys the model does not have
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)  # (key, file shape, model shape)
    backbone_values_loaded: int = 0  # backbone parameter values (elements) taken from the file
    backbone_values_total: int = 0

    @property
    def backbone_match(self) -> float:
        """Share of the backbone's parameter values the file filled, 0..1."""
        return self.backbone_values_loaded / max(self.backbone_values_total, 1)

    def summary(self) -> str:
        return (
            f"model.pretrained_checkpoint {self.path} ({self.target} weights): {len(self.loaded)} tensors "
            f"loaded, {self.backbone_match:.1%} of the backbone's parameter values; {len(self.missing)} model "
            f"keys missing from the file (left at their initial values), {len(self.unexpected)} unexpected "
            f"file keys, {len(self.mismatched)} shape mismatches"
        )

    def details(self) -> str:
        """The names behind the counts (the first few of each list)."""
        parts = []
        if self.mismatched:
            shown = ", ".join(f"{k} {tuple(a)} vs {tuple(b)}" for k, a, b in self.mismatched[:SHOWN_KEYS])
            parts.append(f"shape mismatches (file vs model): {shown}{_more(self.mismatched)}")
        if self.missing:
            parts.append(f"missing: {', '.join(self.missing[:SHOWN_KEYS])}{_more(self.missing)}")
        if self.unexpected:
            parts.append(f"unexpected: {', '.join(self.unexpected[:SHOWN_KEYS])}{_more(self.unexpected)}")
        return "; ".join(parts)

    def params(self) -> dict:
        """Tracker params (nested under `pretrained`; MLflow shows them as pretrained.<name>)."""
        return {
            "pretrained": {
                "path": self.path,
                "target": self.target,
                "missing_keys": _names(self.missing),
                "unexpected_keys": _names(self.unexpected),
                "mismatched_keys": _names([k for k, _, _ in self.mismatched]),
            }
        }

    def metrics(self) -> dict[str, float]:
        """Tracker metrics, logged at step 0 of the run."""
        return {
            "pretrained/loaded_keys": len(self.loaded),
            "pretrained/missing_keys": len(self.missing),
            "pretrained/unexpected_keys": len(self.unexpected),
            "pretrained/mismatched_keys": len(self.mismatched),
            "pretrained/backbone_match": self.backbone_match,
        }


def _more(items: list) -> str:
    return f" ... ({len(items) - SHOWN_KEYS} more)" if len(items) > SHOWN_KEYS else ""


def _names(keys: list[str]) -> str:
    # Tracker params are short strings (MLflow caps a value at a few hundred characters): the first few names.
    return ", ".join(keys[:SHOWN_KEYS]) + _more(keys)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a cabruca checkpoint ("model" tree) or of a torch state_dict file (whole model or
    backbone only, possibly under "state_dict"/"model", possibly saved from DistributedDataParallel)."""
    from common.checkpoint import load_checkpoint
    from common.torch_support import from_numpy_state

    if not path.is_file():
        raise CheckpointError(f"model.pretrained_checkpoint {path} does not exist.")
    try:
        return from_numpy_state(load_checkpoint(path)["model"])
    except (CheckpointError, KeyError):
        pass
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # neither a zip nor a pickle torch file
        raise CheckpointError(
            f"model.pretrained_checkpoint {path} is neither a cabruca checkpoint nor a torch state_dict ({exc})."
        ) from None
    if isinstance(state, dict):
        state = state.get("state_dict", state.get("model", state))
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise CheckpointError(f"model.pretrained_checkpoint {path} holds no state_dict of tensors.")
    if state and all(k.startswith("module.") for k in state):  # saved from DistributedDataParallel
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def load_pretrained(model: nn.Module, cfg: ModelConfig) -> PretrainedReport:
    """Load `cfg.pretrained_checkpoint` into `model` (a CabrucaNet) where names and shapes match; refuse a
    file that fills less than `cfg.pretrained_min_match` of the backbone unless `cfg.pretrained_strict` is off."""
    path = Path(cfg.pretrained_checkpoint)
    state = read_state_dict(path)
    whole = any(k.startswith(MODEL_PARTS) for k in state)
    target: nn.Module = model if whole else model.backbone
    own = target.state_dict()
    report = PretrainedReport(str(path), "model" if whole else "backbone")
    usable = {}
    for key, value in state.items():
        if key not in own:
            report.unexpected.append(key)
        elif own[key].shape != value.shape:
            report.mismatched.append((key, tuple(value.shape), tuple(own[key].shape)))
        else:
            usable[key] = value
    report.loaded = list(usable)
    report.missing = [k for k in own if k not in usable]
    prefix = "backbone." if whole else ""
    for name, param in model.backbone.named_parameters():
        report.backbone_values_total += param.numel()
        if prefix + name in usable:
            report.backbone_values_loaded += param.numel()
    threshold = cfg.pretrained_min_match
    if cfg.pretrained_strict and report.backbone_match < threshold:
        raise CheckpointError(
            f"model.pretrained_checkpoint {path} fills only {report.backbone_match:.1%} of model.backbone "
            f"{cfg.backbone!r}'s parameter values ({report.backbone_values_loaded:,} of "
            f"{report.backbone_values_total:,}), below model.pretrained_min_match {threshold:g}: it is probably "
            f"the weights of another backbone. {report.summary()}. {report.details()}. Choose the weights of "
            "this backbone, or set model.pretrained_strict=false (or model.pretrained_min_match=0) to train "
            "from what fits."
        )
    target.load_state_dict(usable, strict=False)
    return report


def log_pretrained_report(report: PretrainedReport, log: logging.Logger, trackers, *, step: int = 0) -> None:
    """The report in the run's log (a warning when anything was left out) and trackers."""
    complete = not (report.missing or report.unexpected or report.mismatched)
    if complete:
        log.info("%s", report.summary())
    else:
        log.warning("%s. %s", report.summary(), report.details())
    trackers.log_params(report.params())
    trackers.log_metrics(report.metrics(), step=step)
