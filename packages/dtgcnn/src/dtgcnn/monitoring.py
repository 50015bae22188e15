"""Monitoring and debugging a triplet-text run: `MetricsTracker` (the guide's key metrics and their 2x3
plot) and `DebugCallback` (NaN, exploding gradients and embedding collapse, with the offending batch saved).

Both are `common.callbacks.Callback`s: pass them to `Trainer.train(callbacks=[...])`,
`AdvancedTrainer.train(..., callbacks=[...])` or name them in the config's `callbacks:` list.

    tracker = MetricsTracker()
    Trainer(model, train_loader, val_loader, epochs=5).train(callbacks=[tracker, DebugCallback()])
    tracker.plot_metrics("plots/metrics.png")
    MetricsTracker.from_history("experiments/run1").plot_metrics("metrics.png")   # any finished run
"""

from __future__ import annotations

import io
import json
import logging
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from common.callbacks import Callback
from common.errors import DataError, NonFiniteError
from common.runs import atomic_write_bytes, atomic_writer

log = logging.getLogger("trainyard.dtgcnn")

# The guide's tracked metrics; "gradient_norm" is the loop's "grad_norm".
GUIDE_METRICS = (
    "loss",
    "triplet_accuracy",
    "mean_positive_distance",
    "mean_negative_distance",
    "hard_negative_ratio",
    "gradient_norm",
)
ALIASES = {"grad_norm": "gradient_norm"}
# The 2x3 plot: (panel title, y label, the series drawn on it).
PANELS = (
    ("loss", "triplet loss", ("loss",)),
    ("triplet accuracy", "share of triplets with d(a,p) < d(a,n)", ("triplet_accuracy",)),
    ("anchor distances", "Euclidean distance", ("mean_positive_distance", "mean_negative_distance")),
    ("hard-negative ratio", "share with d(a,n) < d(a,p)", ("hard_negative_ratio",)),
    ("gradient norm", "global L2 norm (before clipping)", ("gradient_norm",)),
    ("learning rate", "learning rate", ("lr",)),
)


class MetricsTracker(Callback):
    """Records the guide's metrics (and the learning rate) at every optimizer step of a run, or from a
    run's metrics_history.json. `metrics[name]` is the list of values, as in the guide; `series[name]` the
    (step, value) pairs. Names prefixed "val/" hold the validation values (per epoch) when read from a
    history or recorded by `on_validation_end`."""

    def __init__(self) -> None:
        self.series: dict[str, list[tuple[int, float]]] = {name: [] for name in (*GUIDE_METRICS, "lr")}
        self._run = None

    @property
    def metrics(self) -> dict[str, list[float]]:
        return {name: [v for _, v in points] for name, points in self.series.items()}

    def update(self, batch_metrics: Mapping[str, float], step: int | None = None) -> None:
        """Add one row of metrics (step: default the next index of the loss series)."""
        if step is None:
            step = len(self.series["loss"])
        for key, value in batch_metrics.items():
            name = ALIASES.get(key, key)
            self.series.setdefault(name, []).append((int(step), float(value)))

    # -- as a training-loop callback -----------------------------------------------------------------------
    def bind_run(self, run, resume_step: int | None) -> None:
        self._run = run

    def on_fit_start(self, loop) -> None:
        # A resumed run: the steps before the checkpoint are in the run's history, not in this process.
        if loop.pos.step > 0 and self._run is not None and self._run.path("metrics_history.json").is_file():
            earlier = MetricsTracker.from_history(self._run.path("metrics_history.json"))
            self.series = {
                name: [(s, v) for s, v in points if s <= loop.pos.step]
                for name, points in earlier.series.items()
            }

    def on_train_batch_end(self, loop, outputs: dict[str, float]) -> None:
        lrs = getattr(loop, "lrs_used", None)
        self.update({**outputs, **({"lr": lrs[0]} if lrs else {})}, step=loop.pos.step)

    def on_validation_end(self, loop, metrics: dict[str, float]) -> None:
        named = {k if k.startswith("val/") else f"val/{k}": v for k, v in metrics.items()}
        self.update(named, step=loop.pos.step)

    # -- from a finished (or running) run ------------------------------------------------------------------
    @classmethod
    def from_history(cls, path: str | Path) -> MetricsTracker:
        """The tracker of a run's metrics_history.json (a run folder or the file): per-step
        `train/<name>_step` rows when the run logged them (log_interval > 0), else the epoch means."""
        path = Path(path)
        if path.is_dir():
            path = path / "metrics_history.json"
        try:
            metrics = json.loads(path.read_text(encoding="utf-8"))["metrics"]
        except FileNotFoundError:
            raise DataError(f"{path} does not exist; a run writes it into its output folder.") from None
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise DataError(f"{path} is not a metrics history ({exc}).") from None
        tracker = cls()
        for name in (*GUIDE_METRICS, "grad_norm"):
            key = ALIASES.get(name, name)
            for target, source in (
                (key, metrics.get(f"train/{name}_step") or metrics.get(f"train/{name}")),
                (f"val/{key}", metrics.get(f"val/{name}")),
            ):
                if source:
                    tracker.series[target] = [(int(p["step"]), float(p["value"])) for p in source]
        tracker.series["lr"] = [(int(p["step"]), float(p["value"])) for p in metrics.get("lr", [])]
        return tracker

    # -- the plot ------------------------------------------------------------------------------------------
    def plot_metrics(self, path: str | Path, title: str = "DT-GCNN triplet training") -> Path:
        """A 2x3 PNG: loss, triplet accuracy, positive and negative distances, hard-negative ratio, gradient
        norm and learning rate against the optimizer step (validation values beside the training ones)."""
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator

        fig = Figure(figsize=(15, 9))
        axes = fig.subplots(2, 3)
        for ax, (panel, ylabel, names) in zip(axes.flat, PANELS, strict=True):
            drawn = 0
            for name in names:
                for key, style in ((name, "-"), (f"val/{name}", "--")):
                    points = [(s, v) for s, v in self.series.get(key, []) if math.isfinite(v)]
                    if points:
                        steps, values = zip(*points, strict=True)
                        label = key.replace("mean_", "").replace("_", " ")
                        marker = "o" if len(points) < 30 else None
                        ax.plot(steps, values, style, marker=marker, markersize=3, label=label)
                        drawn += 1
            ax.set_title(panel)
            ax.set_xlabel("optimizer step")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylabel(ylabel)
            ax.grid(True, alpha=0.3)
            if drawn > 1:
                ax.legend(fontsize="small")
            elif drawn == 0:
                ax.text(0.5, 0.5, "not recorded", ha="center", va="center", transform=ax.transAxes)
        fig.suptitle(title)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=100)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, buffer.getvalue())
        return path


def running_statistics_note(steps: int) -> str:
    """Why eval-mode embeddings of a young BatchNorm model collapse while its training batches look fine."""
    left = 0.9**steps  # BatchNorm momentum 0.1: the share of the initial statistics still in the running ones
    return (
        " (expected with BatchNorm early in a run: eval mode normalises with running statistics that start at "
        f"mean 0 / variance 1 and move 10% per training batch, so {left:.0%} of them is still that start "
        "while the layers' real variances are far smaller; the features shrink and every text lands near "
        "the same point. It heals within a few dozen steps; for very short runs set use_batch_norm=false)"
    )


class DebugCallback(Callback):
    """After every optimizer step, checks the step's metrics for the guide's three failure signs:

    - a NaN/inf loss (or any NaN/inf metric): saved, and the run stops when `stop_on_nan` (weights that
      took a NaN step are lost anyway; dtgcnn's own step already refuses a NaN loss or gradient before the
      update, and then this callback saves the batch's texts beside the vectors the step saved);
    - a gradient norm above `grad_norm_threshold` (before clipping);
    - embedding collapse: the batch embeddings' per-dimension standard deviation, averaged over dimensions,
      below `collapse_threshold` (every text mapped to nearly one point).

    After each validation it also checks the eval-mode validation embeddings for collapse
    (`debug/collapse_val_step<NNNNNNN>.npz`: their `embeddings`, `labels`, `embedding_std`).

    Each finding writes `debug/<kind>_step<NNNNNNN>.npz` in the run folder (or `debug_dir`) with the step's
    last micro-batch: `text_ids`, `texts`, `vectors` (encoder), `labels` (in-batch classes), `triplets`
    when the data are triplets, `embeddings` (the model's, in eval mode), `embedding_std` (per dimension)
    and `metrics` (JSON), and logs a warning naming the file. At most `max_saves` files per run; later
    findings are only logged."""

    def __init__(
        self,
        grad_norm_threshold: float = 100.0,
        collapse_threshold: float = 0.01,
        *,
        debug_dir: str | Path | None = None,
        stop_on_nan: bool = True,
        max_saves: int = 10,
    ) -> None:
        self.grad_norm_threshold = float(grad_norm_threshold)
        self.collapse_threshold = float(collapse_threshold)
        self.debug_dir = Path(debug_dir) if debug_dir is not None else None
        self.stop_on_nan, self.max_saves = stop_on_nan, int(max_saves)
        self.saved: list[str] = []

    def bind_run(self, run, resume_step: int | None) -> None:
        if self.debug_dir is None:
            self.debug_dir = run.path("debug")

    def state_dict(self) -> dict:
        return {"saved": list(self.saved)}

    def load_state_dict(self, state: dict) -> None:
        self.saved = [str(s) for s in state.get("saved", [])]

    def findings(self, outputs: Mapping[str, float], spread: float | None) -> list[str]:
        """The failure signs in one step's metrics: "nan", "grad_norm", "collapse"."""
        found = []
        if any(not math.isfinite(float(v)) for v in outputs.values()):
            found.append("nan")
        grad = outputs.get("grad_norm")
        if grad is not None and math.isfinite(grad) and grad > self.grad_norm_threshold:
            found.append("grad_norm")
        if spread is not None and math.isfinite(spread) and spread < self.collapse_threshold:
            found.append("collapse")
        return found

    def on_train_batch_end(self, loop, outputs: dict[str, float]) -> None:
        batch = getattr(loop.task, "last_batch", None)
        spread = outputs.get("embedding_spread")
        embeddings = None
        if spread is None and batch is not None:  # a task that does not report it: measure it here
            embeddings = _embeddings(loop.task, batch)
            spread = float(np.std(embeddings, axis=0).mean()) if embeddings is not None else None
        found = self.findings(outputs, spread)
        if not found:
            return
        messages = {
            "nan": f"NaN/inf in the step's metrics (loss {outputs.get('loss')})",
            "grad_norm": f"gradient norm {outputs.get('grad_norm', math.nan):.4g} > {self.grad_norm_threshold:g}",
            "collapse": f"embedding collapse: per-dimension std {spread:.4g} < {self.collapse_threshold:g}",
        }
        for kind in found:
            self.save(loop, kind, messages[kind], outputs, embeddings)
        if "nan" in found and self.stop_on_nan:
            loop.should_stop, loop.stop_reason = True, "DebugCallback: NaN/inf in the training metrics"

    def on_validation_end(self, loop, metrics: dict[str, float]) -> None:
        """Collapse of the eval-mode embeddings (BatchNorm running statistics and no dropout can collapse
        them while the training batches look healthy): saved as debug/collapse_val_step<N>.npz with the
        validation embeddings and labels."""
        spread = metrics.get("val/embedding_spread", metrics.get("embedding_spread"))
        if spread is None or not math.isfinite(spread) or spread >= self.collapse_threshold:
            return
        message = (
            f"validation embedding collapse: per-dimension std {spread:.4g} < {self.collapse_threshold:g}"
        )
        if getattr(getattr(loop.task, "model", None), "norms", None):
            message += running_statistics_note(loop.pos.step)
        validated = getattr(loop.task, "val_embeddings", None)
        arrays = {}
        if validated is not None:
            arrays = {
                "embeddings": validated[0],
                "labels": validated[1],
                "embedding_std": validated[0].std(axis=0),
            }
        self._write(loop, "collapse_val", message, metrics, arrays, "validation embeddings")

    def on_exception(self, loop, exception: BaseException) -> None:
        if isinstance(exception, NonFiniteError):
            self.save(loop, "nan", str(exception).split(";")[0], {}, None)

    def save(self, loop, kind: str, message: str, outputs: Mapping[str, float], embeddings) -> Path | None:
        """Write the step's batch for `kind` and log where; None once max_saves files exist."""
        batch = getattr(loop.task, "last_batch", None)
        arrays = _batch_arrays(loop.task, batch, embeddings) if batch is not None else {}
        what = "batch" if batch is not None else "metrics (the task keeps no last_batch)"
        return self._write(loop, kind, message, outputs, arrays, what)

    def _write(self, loop, kind: str, message: str, metrics, arrays: dict, what: str) -> Path | None:
        step = int(loop.pos.step)
        if len(self.saved) >= self.max_saves or self.debug_dir is None:
            reason = "no debug folder (pass debug_dir)" if self.debug_dir is None else "max_saves reached"
            log.warning("debug: %s at step %d (not saved: %s)", message, step, reason)
            return None
        arrays = {"metrics": np.array(json.dumps({k: float(v) for k, v in metrics.items()})), **arrays}
        self.debug_dir.mkdir(parents=True, exist_ok=True)
        path = self.debug_dir / f"{kind}_step{step:07d}.npz"
        with atomic_writer(path) as fh:
            np.savez(fh, **arrays)
        self.saved.append(path.name)
        log.warning("debug: %s at step %d; %s saved to %s", message, step, what, path)
        return path


def _embeddings(task, batch) -> np.ndarray | None:
    """Eval-mode embeddings of the batch's vectors (no dropout draw, no BatchNorm update: training state
    and the random stream stay exactly as they were, so resume stays exact)."""
    embed = getattr(getattr(task, "model", None), "embed_vectors", None)
    if embed is None or batch.vectors is None or not np.isfinite(batch.vectors).all():
        return None
    return embed(batch.vectors)


def _batch_arrays(task, batch, embeddings) -> dict[str, np.ndarray]:
    arrays = {"text_ids": np.asarray(batch.text_ids), "vectors": batch.vectors, "labels": batch.labels}
    dataset = getattr(getattr(task, "train_loader", None), "dataset", None)
    if dataset is not None and getattr(dataset, "texts", None) is not None:
        arrays["texts"] = np.array([dataset.texts[int(i)] for i in batch.text_ids], dtype=str)
    if batch.triplets is not None:
        arrays["triplets"] = batch.triplets
    if embeddings is None:
        embeddings = _embeddings(task, batch)
    if embeddings is not None:
        arrays["embeddings"] = embeddings
        arrays["embedding_std"] = np.std(embeddings, axis=0)
    return arrays
