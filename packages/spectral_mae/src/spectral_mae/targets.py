"""The `_target_` registry: the dotted names a config section may name, mapped onto this package's own code.

Config files in Hydra's style say what to build with `_target_: models.spectral_gpt.mae_spectral.MAESpectral`.
Hydra imports whatever such a line names, so a config file from elsewhere could run any code. Here a
`_target_` is only ever looked up in the fixed table below: the original project's dotted names (its
`models/`, `losses/`, `dataset/`, `plots/` folders), this package's own dotted names, and torch's optimizers.
A name outside the table is refused before anything is imported; a name in it imports only the module the
table itself names.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from common.errors import ConfigError


@dataclass(frozen=True)
class Target:
    section: str  # config section that may name it: model, loss, dataset, show_prediction, optimizer
    module: str  # module the table names (never one taken from a config file)
    attribute: str  # class or function in that module
    choice: str | None = None  # the implementation it selects where a section has several (optimizer)


_MODEL = Target("model", "spectral_mae.model", "MaskedAutoencoderSpectral")
_LOSS = Target("loss", "spectral_mae.losses", "MAESpectralLoss")
_DATASET = Target("dataset", "spectral_mae.data", "SegmentationDataset")
_FIGURES = Target("show_prediction", "spectral_mae.visualize", "write_prediction_figures")
_ADAMW = Target("optimizer", "spectral_mae.factory", "adamw", choice="adamw")  # fused where torch has it
_ADAM = Target("optimizer", "torch.optim", "Adam", choice="adam")
_SGD = Target("optimizer", "torch.optim", "SGD", choice="sgd")

# The original project's dotted names first: they are what its config files (and the bundled ones) say.
SEED_TARGETS: dict[str, Target] = {
    "models.spectral_gpt.mae_spectral.MAESpectral": _MODEL,
    "losses.mae_spectral.MAESpectralLoss": _LOSS,
    "dataset.segmentation_dataset.SegmentationDataset": _DATASET,
    "plots.plot_bottleneck.display_rgb": _FIGURES,
}
TARGETS: dict[str, Target] = {
    **SEED_TARGETS,
    **{f"{t.module}.{t.attribute}": t for t in (_MODEL, _LOSS, _DATASET, _FIGURES, _ADAMW)},
    "torch.optim.AdamW": _ADAMW,
    "torch.optim.Adam": _ADAM,
    "torch.optim.SGD": _SGD,
}


def known_targets(section: str) -> list[str]:
    """The dotted names section `section` accepts as `_target_`, in the table's order."""
    return [name for name, target in TARGETS.items() if target.section == section]


def lookup_target(section: str, name: str) -> Target:
    """The registry entry for `section._target_: name`; ConfigError listing the accepted names otherwise.

    A plain dictionary look-up: nothing is imported, whatever `name` says.
    """
    target = TARGETS.get(name)
    if target is None or target.section != section:
        where = "" if target is None else f" (it belongs in section {target.section!r})"
        raise ConfigError(
            f"{section}._target_: {name!r} is not a known target{where}. Config files may only name this "
            f"package's own code; {section}._target_ accepts: {', '.join(known_targets(section))}."
        )
    return target


def choice_of(section: str, name: str) -> str | None:
    """The implementation `section._target_: name` selects (None where the section has only one)."""
    return lookup_target(section, name).choice


def resolve_target(section: str, name: str) -> Any:
    """The class or function `section._target_: name` stands for (imports only the table's own module)."""
    target = lookup_target(section, name)
    return getattr(importlib.import_module(target.module), target.attribute)
