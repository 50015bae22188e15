"""The guide's "Memory Management" and "Memory Issues": gradient checkpointing of the GCN layers (lower
peak memory, same loss and gradients), clearing MLX's buffer cache every N steps, and automatic batch-size
halving when an allocation fails (on by default).

    python examples/memory_management.py
    # the same options in a run:
    python -m dtgcnn.train --mode triplets --data sentences.csv gradient_checkpointing=true \
        clear_cache_every_steps=10 auto_batch_halving=true
"""

import dtgcnn  # noqa: F401  # isort: skip  (MKL under MLX: import dtgcnn before mlx)
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from common.runs import timestamp
from dtgcnn import DTGCNN, DTGCNNConfig
from dtgcnn.losses import triplet_loss
from dtgcnn.memory import peak_memory_mb
from dtgcnn.synthetic import generate_text
from dtgcnn.text_trainer import fit_triplets

rng = np.random.default_rng(0)
x = mx.array(rng.standard_normal((256, 64)).astype(np.float32))  # 256 encoder vectors
labels = mx.array(rng.integers(0, 8, 256).astype(np.int32))
bank = rng.standard_normal((256, 64)).astype(np.float32)
for checkpointing in (False, True):
    mx.random.seed(0)
    model = DTGCNN(64, hidden_dims=[256] * 4, num_gcn_layers=4, gradient_checkpointing=checkpointing)
    model.set_bank(bank)
    mx.eval(model.parameters())
    step = nn.value_and_grad(model, lambda m, x, y: triplet_loss(m(x), y, 0.2))
    result = {}
    peak = peak_memory_mb(lambda: result.setdefault("out", step(model, x, labels)))  # noqa: B023
    print(f"gradient_checkpointing={checkpointing}: loss {result['out'][0].item():.6f}, peak {peak:.1f} MiB")

out = Path("example_outputs/memory_management")
data = generate_text(out / "data", num_labels=4, per_label=16, seed=0)
config = DTGCNNConfig(
    hidden_dims=[32, 32],
    num_gcn_layers=2,
    output_dim=16,
    batch_size=16,
    num_epochs=2,
    learning_rate=1e-3,
    warmup_epochs=0,
    gradient_checkpointing=True,
    clear_cache_every_steps=2,
    auto_batch_halving=True,
    plot_every=0,
    tsne_plot=False,
)
result = fit_triplets(config, out / f"run_{timestamp()}", data=data / "sentences.csv")
print(f"{result.global_step} steps with checkpointing and cache clearing; outputs in {result.run_dir}")
