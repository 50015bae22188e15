"""The trained model in the trackers, so a run's result can be loaded back from MLflow alone.

- torch: an MLflow model folder (`MLmodel`, the pickled module, its pip requirements), written to
  `<run>/model/` and logged as artifact `model`: `mlflow.pytorch.load_model("runs:/<run_id>/model")` (or
  the local folder) brings it back in a fresh process where the package is installed. The module is pickled
  by reference to its class (the package's own code), weights included; graph-tracing formats
  (`torch.export`) cannot follow the variable-size inputs the packages feed their models.
- anything else (MLX): a file or folder (weights + config) logged as is; the package's loader reads it back
  (`dtgcnn.load_mlflow_model`).

`LogFinalModel` is the callback that does it when a run ends, on the training thread (writing the model
folder is local work; only the upload runs on the tracker's worker thread, where a slow server cannot hold
the run). Nothing happens after an interruption (that model is not the run's result) or when no tracker
stores models (MLflow's `log_models=True` opts in), so no time or disk is spent on a model nobody keeps.
"""

from __future__ import annotations

import copy
import logging
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.callbacks import Callback
from common.provenance import package_versions

if TYPE_CHECKING:
    from common.loop import FitResult, Loop
    from common.trackers.base import Trackers

MODEL_ARTIFACT = "model"  # the artifact folder a run's model is logged under
_log = logging.getLogger("trainyard.trackers")


def is_torch_module(model: object) -> bool:
    """True for a torch.nn.Module; never imports torch (a package that has not imported it has no module)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(model, torch.nn.Module)


def save_torch_model(model, folder: str | Path) -> Path:
    """Write `model` (unwrapped from DDP / torch.compile, copied to the CPU in eval mode so it loads on a
    machine without a GPU) as an MLflow pytorch model folder, replacing an older one, and return it.

    The pip requirements are the installed versions of torch and the workspace packages: MLflow would
    otherwise infer them by loading the model again in a subprocess, which costs seconds per run."""
    import mlflow.pytorch

    from common.torch_support import unwrap

    folder = Path(folder)
    requirements = [f"{name}=={version}" for name, version in package_versions().items()]
    staging = folder.with_name(f".{folder.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    # "pickle": a whole-module pickle, loadable without an example input; MLflow warns that unpickling runs
    # code, which is the package's own code here.
    mlflow.pytorch.save_model(
        copy.deepcopy(unwrap(model)).cpu().eval(),
        str(staging),
        serialization_format="pickle",
        pip_requirements=requirements,
    )
    shutil.rmtree(folder, ignore_errors=True)  # a resumed run's model replaces the one its first part wrote
    staging.rename(folder)
    return folder


class LogFinalModel(Callback):
    """At the end of a run, log `model_of(loop, result)` to the trackers as the run's model.

    `model_of` returns a torch module (written to `folder` as an MLflow model, then logged), a file or folder
    path (logged as is) or None (nothing to log). Give it the best weights where the run keeps them: a
    package's `load_from_checkpoint(result.best_checkpoint)`, or the weights-only best file itself."""

    def __init__(
        self,
        trackers: Trackers,
        model_of: Callable[[Loop, FitResult], Any],
        folder: str | Path | None = None,
        name: str = MODEL_ARTIFACT,
    ) -> None:
        self.trackers, self.model_of, self.name = trackers, model_of, name
        self.folder = Path(folder) if folder is not None else None

    def on_fit_end(self, loop: Loop, result: FitResult) -> None:
        if result.interrupted or not self.trackers.stores_models:
            return
        try:
            model = self.model_of(loop, result)
            if is_torch_module(model):
                if self.folder is None:
                    raise ValueError("LogFinalModel needs `folder` to write a torch model to")
                model = save_torch_model(model, self.folder)
        except Exception as exc:  # the run's outputs are written; a model that cannot be saved is a warning
            _log.warning("the final model was not logged: %s: %s", type(exc).__name__, exc)
            return
        if model is not None:
            self.trackers.log_model(model, self.name)
