"""Ensembles: `ensemble_size` members trained with seeds seed, seed + 1, ... (initial weights, batch order,
reference bank) on the same train / val split, each a full run in `member_NN/` of the ensemble's folder.

The ensemble embeds a text as the mean of its members' unit embeddings, made unit again (cosine retrieval
on the mean). `ensemble_metrics.json` holds the retrieval metrics of the val texts (MAP@R, precision@1,
R-precision) of every member, of the ensemble and of the encoder vectors alone.

Resumable member by member: running again with resume keeps the members that finished (their
`retrieval_metrics.json` is written last), resumes an unfinished one from its newest checkpoint, and
trains the rest.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

import dtgcnn  # noqa: F401  (fast BLAS before mlx)
from common.config import save_config
from common.distributed import is_main_process
from common.errors import ConfigError
from common.loop import FitResult
from common.resume import latest_checkpoint
from common.runs import RunFolder, atomic_write_text
from dtgcnn.config import DTGCNNConfig
from dtgcnn.text_data import TextLoader

log = logging.getLogger("trainyard.dtgcnn")
METRICS = ("map_at_r", "precision_at_1", "r_precision")
MARKER = "ensemble_run.json"  # {"data", "ensemble_size"}: what a resumed ensemble continues with


def ensemble_embeddings(models: Sequence, vectors: np.ndarray) -> np.ndarray:
    """Mean of the members' L2-normalised embeddings [N, output_dim], L2-normalised."""
    total = 0.0
    for model in models:
        emb = model.embed_vectors(vectors)
        total = total + emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    mean = total / len(models)
    return mean / np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12)


def _retrieval(emb: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    from dtgcnn.metrics import precision_at_r_metrics  # MLX: not at import (the CLI's --help stays light)

    found = precision_at_r_metrics(emb, labels)
    return {k: found[k] for k in METRICS}


def is_ensemble_run(folder: str | Path) -> bool:
    return (Path(folder) / MARKER).is_file()


def resume_arguments(folder: str | Path, data: str | None) -> tuple[str, str]:
    """(config, data) that `--resume` of an ensemble folder continues with: its own config and data."""
    saved = json.loads((Path(folder) / MARKER).read_text())
    return str(Path(folder) / "config.yaml"), data or saved["data"]


def fit_member(cfg: DTGCNNConfig, folder: Path, train_loader, val_loader, resume: bool, callbacks):
    """(model, result) of one member: reused when finished, resumed when started, else trained."""
    from common.seeding import seed_everything
    from dtgcnn import strategies
    from dtgcnn.text_trainer import create_model, fit_triplets, load_text_model

    last = folder / "checkpoints" / "last.npz"
    if resume and (folder / "retrieval_metrics.json").is_file() and last.is_file():
        log.info("ensemble member %s: finished before, reused", folder.name)
        return load_text_model(last)[0], None
    checkpoint = latest_checkpoint(folder / "checkpoints") if resume else None
    seed_everything(cfg.seed)  # as fit_triplets would before building its model
    model = create_model(strategies.resolve(cfg, train_loader), train_loader.dataset.input_dim)
    result = fit_triplets(
        cfg,
        folder,
        model=model,
        train_loader=train_loader,
        val_loader=val_loader,
        resume=checkpoint,
        callbacks=callbacks,
        # a member killed before its first checkpoint starts again
        run=RunFolder(folder, resume=checkpoint is not None, overwrite=resume),
    )
    return model, result


def fit_ensemble(
    cfg: DTGCNNConfig,
    output_dir: str | Path,
    *,
    data: str | Path | None = None,
    resume: bool = False,
    callbacks: Sequence = (),
    run: RunFolder | None = None,
) -> FitResult:
    """Train the members into `output_dir/member_NN/` and write `output_dir/ensemble_metrics.json`.

    Returns a FitResult whose metrics are the ensemble's (val/map_at_r, ...) and each member's
    (val/member_NN_map_at_r, ...)."""
    from dtgcnn.text_trainer import loaders_for

    if cfg.ensemble_size < 2:
        raise ConfigError(f"an ensemble needs ensemble_size >= 2 members, got {cfg.ensemble_size}.")
    root = Path(output_dir).resolve()
    run = run or RunFolder(root, resume=resume)
    if data is None:
        raise ConfigError("an ensemble run needs its data file (--data).")
    if is_main_process():
        save_config(cfg, run.path("config.yaml"))
        marker = {"data": str(Path(data).resolve()), "ensemble_size": cfg.ensemble_size}
        atomic_write_text(run.path(MARKER), json.dumps(marker, indent=2))
    train_loader, val_loader = loaders_for(cfg, data)  # one split (cfg.seed) for every member
    dataset = train_loader.dataset
    ids, labels = val_loader.retrieval_set()
    vectors = dataset.vectors[ids]
    models, steps, report = [], 0, {"data": str(Path(data).resolve()), "members": []}
    for i in range(cfg.ensemble_size):
        seed = cfg.seed + i
        member_cfg = replace(cfg, ensemble_size=1, seed=seed)
        shard = dict(rank=train_loader.sampler.rank, world_size=train_loader.sampler.world_size)
        loader = TextLoader(dataset, train_loader.items, cfg.batch_size, seed, train=True, **shard)
        folder = root / f"member_{i:02d}"
        model, result = fit_member(member_cfg, folder, loader, val_loader, resume, callbacks)
        if result is not None and result.interrupted:
            result.checkpoint = result.run_dir = root  # `--resume ROOT` continues the ensemble
            return result
        models.append(model)
        steps += 0 if result is None else result.global_step
        emb = model.embed_vectors(vectors)
        report["members"].append({"seed": seed, "run_dir": str(folder), **_retrieval(emb, labels)})
    report["ensemble"] = _retrieval(ensemble_embeddings(models, vectors), labels)
    report["encoder"] = _retrieval(vectors, labels)
    if is_main_process():
        atomic_write_text(run.path("ensemble_metrics.json"), json.dumps(report, indent=2))
    log.info(
        "ensemble of %d: val MAP@R %.3f P@1 %.3f (members: MAP@R %s)",
        len(models),
        report["ensemble"]["map_at_r"],
        report["ensemble"]["precision_at_1"],
        ", ".join(f"{m['map_at_r']:.3f}" for m in report["members"]),
    )
    metrics = {f"val/{k}": v for k, v in report["ensemble"].items()}
    metrics |= {f"val/encoder_{k}": v for k, v in report["encoder"].items()}
    for i, member in enumerate(report["members"]):
        metrics |= {f"val/member_{i:02d}_{k}": member[k] for k in METRICS}
    return FitResult(epochs_done=cfg.num_epochs, global_step=steps, metrics=metrics, run_dir=root)
