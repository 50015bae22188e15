"""The guide's "Common Issues": Overfitting (regularisation, augmentation, early stopping, ensembles) and
Memory Issues (gradient accumulation, batch-size reduction when memory runs out, offloading to the CPU),
each a short run on synthetic sentences. The runs are tiny: their figures show that each option works,
not how much it helps (`examples/techniques_table.py --full` measures that on a real intent set).

    python examples/overfitting_and_memory.py       # writes example_outputs/overfitting_and_memory/
    # the same from the command line:
    python -m dtgcnn.train --mode triplets --data sentences.csv dropout_rate=0.3 weight_decay=1e-4 \
        early_stopping_patience=5 min_delta=0.001 ensemble_size=3
    python -m dtgcnn.train --mode triplets --data sentences.csv gradient_accumulation_steps=4 \
        auto_batch_halving=true

Offload to CPU has no counterpart: MLX arrays live in unified memory, which the CPU and the GPU both address
(on Apple silicon one physical memory), so optimizer state "on the GPU" is not a copy that could move to the
CPU to free room: the same bytes would stay where they are. What lowers memory in MLX is a smaller
per-forward batch (accumulation, halving), `gradient_checkpointing`, and `mx.clear_cache()`
(`examples/memory_management.py`).
"""

import dtgcnn  # noqa: F401  # isort: skip  (MKL under MLX: import dtgcnn before mlx)
import contextlib
import json
import logging
from dataclasses import replace
from pathlib import Path

import mlx.core as mx
import numpy as np

from common.checkpoint import load_checkpoint
from common.errors import TrainyardError
from common.runs import timestamp
from dtgcnn import DTGCNNConfig, EarlyStopping, TripletAugmenter, TripletDataset, fit_ensemble, save_triplets
from dtgcnn.engine import Stepper
from dtgcnn.synthetic import generate_text
from dtgcnn.text_data import TextLoader
from dtgcnn.text_prep import load_triplets
from dtgcnn.text_trainer import fit_triplets

out = Path("example_outputs/overfitting_and_memory")
data = generate_text(out / "data", num_labels=6, per_label=12, seed=0)
base = DTGCNNConfig(
    hidden_dims=[32, 32],
    num_gcn_layers=2,
    output_dim=16,
    batch_size=16,
    num_epochs=2,
    learning_rate=1e-3,
    warmup_epochs=0,
    graph_bank_size=32,
    encoder_cache_dir=str(out / "vector_cache"),
    plot_every=0,
    tsne_plot=False,
)


STAMP, runs = timestamp(), []


def train(name: str, config: DTGCNNConfig, **kwargs):
    """One run in its own folder (numbered: several start within the same second)."""
    runs.append(name)
    return fit_triplets(config, out / f"{STAMP}_{len(runs):02d}_{name}", **kwargs)


def losses(result) -> str:
    m = result.metrics
    return (
        f"train loss {m['train/loss']:.4f}, val loss {m['val/loss']:.4f}, val MAP@R {m['val/map_at_r']:.3f}"
    )


# --- 1. regularisation: dropout and (AdamW's decoupled) weight decay; use_batch_norm=True is the default
plain = replace(base, dropout_rate=0.0, weight_decay=0.0)
regularised = replace(base, dropout_rate=0.3, weight_decay=1e-4)
for name, config in (("no regularisation", plain), ("dropout 0.3, decay 1e-4", regularised)):
    reference = train("regularisation", config, data=data / "sentences.csv")
    print(f"{name:>24}: {losses(reference)}")

# --- 2. augmentation: more training triplets from word-level edits; validation keeps the original triplets
triplets = load_triplets(data / "triplets.json")
cut = int(0.75 * len(triplets))
augmenter = TripletAugmenter(["random_deletion", "random_swap"], augmentation_prob=0.2, seed=0)
save_triplets(augmenter.augment_dataset(triplets[:cut], num_augmentations=2), out / "train_augmented.json")
save_triplets(triplets[:cut], out / "train.json")
save_triplets(triplets[cut:], out / "val.json")
cache = base.encoder_cache_dir
val_set = TripletDataset(out / "val.json", cache_dir=cache)
for name in ("train", "train_augmented"):
    train_set = TripletDataset(out / f"{name}.json", cache_dir=cache)
    loaders = dict(
        train_loader=TextLoader(train_set, np.arange(len(train_set)), base.batch_size, base.seed, train=True),
        val_loader=TextLoader(val_set, np.arange(len(val_set)), base.batch_size, base.seed, train=False),
    )
    result = train(name, regularised, **loaders)
    print(f"{len(train_set):>4} training triplets ({name}): {losses(result)}")
try:  # paraphrase needs a model you supply; dtgcnn ships none and says so
    TripletAugmenter(["paraphrase", "random_swap"])
except TrainyardError as exc:
    print("paraphrase without a model:", exc)

# --- 3. early stopping on val/loss (the guide's monitor='val_loss' is named val/loss here)
stopper = EarlyStopping(monitor="val/loss", patience=1, min_delta=0.01)
result = train(
    "early_stopping", replace(regularised, num_epochs=20), data=data / "sentences.csv", callbacks=[stopper]
)
print(f"stopped after {result.epochs_done} of 20 epochs; {result.stop_reason}")

# --- 4. ensemble: members with seeds 42, 43; their unit embeddings averaged
result = fit_ensemble(
    replace(regularised, ensemble_size=2), out / f"{STAMP}_ensemble", data=data / "sentences.csv"
)
report = json.loads((result.run_dir / "ensemble_metrics.json").read_text())
members = ", ".join(f"{m['map_at_r']:.3f}" for m in report["members"])
print(f"ensemble of 2: val MAP@R {report['ensemble']['map_at_r']:.3f} (members {members})")

# --- 5. gradient accumulation: 2 micro-batches of 8 per optimizer step = the global batch of 16
result = train(
    "accumulation",
    replace(regularised, batch_size=8, gradient_accumulation_steps=2),
    data=data / "sentences.csv",
)
print(f"accumulation 2 x batch 8: {result.global_step} optimizer steps, {losses(result)}")


# --- 6. batch-size reduction when memory runs out (auto_batch_halving, on by default)
@contextlib.contextmanager
def device_with_room_for(rows: int):
    """A device on which a forward of more than `rows` texts fails to allocate, as MLX's allocator raises
    it (simulated: this machine has room for the whole batch). Restored on exit."""
    original = Stepper.micro_step

    def micro_step(self, *inputs, scale=1.0):
        if len(inputs[0]) > rows:
            raise MemoryError("std::bad_alloc")
        return original(self, *inputs, scale=scale)

    Stepper.micro_step = micro_step
    try:
        yield
    finally:
        Stepper.micro_step = original


logging.getLogger("trainyard.dtgcnn").addHandler(handler := logging.StreamHandler())
handler.setLevel(logging.WARNING)
try:
    with device_with_room_for(8):
        result = train(
            "batch_halving", replace(regularised, auto_batch_halving=True), data=data / "sentences.csv"
        )
finally:
    logging.getLogger("trainyard.dtgcnn").removeHandler(handler)
splits = int(load_checkpoint(result.checkpoint)["micro_splits"])  # kept in every checkpoint for resume
assert result.global_step == reference.global_step  # the optimizer steps and global batch are unchanged
print(
    f"batch 16 on a device with room for 8: every batch ran as {splits} micro-batches of "
    f"{base.batch_size // splits}; {result.global_step} optimizer steps, as without halving; {losses(result)}"
)

# --- 7. offload to CPU: nothing to move; one array, used by work on the CPU (and on the GPU where there is
# one) with no transfer between them
x = mx.random.normal((256, 64))
has_gpu = mx.metal.is_available() or (hasattr(mx, "cuda") and mx.cuda.is_available())
devices = {"CPU": mx.cpu, **({"GPU": mx.gpu} if has_gpu else {})}
sums = [mx.sum(mx.matmul(x, x.T, stream=d), stream=d).item() for d in devices.values()]
assert np.allclose(sums, sums[0], rtol=1e-4)
print(
    f"offload to CPU: not needed in MLX; one array fed {' and '.join(devices)} work with no copy "
    f"(sums {', '.join(f'{v:.1f}' for v in sums)}); see this file's docstring"
)
