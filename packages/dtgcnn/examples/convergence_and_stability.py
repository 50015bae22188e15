"""The guide's "Training Instability" and "Poor Convergence" remedies as config options: gradient clipping
by global norm, warm-up, one-cycle and cosine schedules, Xavier initialisation, AdamW weight decay and
gradient accumulation.

    python examples/convergence_and_stability.py
    # the same from the command line:
    python -m dtgcnn.train --mode triplets --data sentences.csv scheduler=onecycle pct_start=0.3 \
        weight_init=xavier_uniform gradient_clip_val=1.0 weight_decay=1e-4 gradient_accumulation_steps=2
"""

from pathlib import Path

from common.runs import timestamp
from dtgcnn import DTGCNNConfig
from dtgcnn.synthetic import generate_text
from dtgcnn.text_trainer import fit_triplets

out = Path("example_outputs/convergence_and_stability")
data = generate_text(out / "data", num_labels=4, per_label=16, seed=0)
base = dict(hidden_dims=[32, 32], num_gcn_layers=2, output_dim=16, batch_size=16, num_epochs=2)
base.update(learning_rate=1e-3, weight_decay=1e-4, gradient_clip_val=1.0, plot_every=0, tsne_plot=False)
runs = {
    "cosine + warm-up": dict(scheduler="cosine", warmup_epochs=1),
    "one-cycle + Xavier": dict(
        scheduler="onecycle", pct_start=0.3, warmup_epochs=0, weight_init="xavier_uniform"
    ),
    "accumulate 2": dict(scheduler="cosine", warmup_epochs=0, gradient_accumulation_steps=2),
}
for i, (name, options) in enumerate(runs.items()):
    config = DTGCNNConfig(**base, **options)
    result = fit_triplets(config, out / f"run_{timestamp()}_{i}", data=data / "sentences.csv")
    print(f"{name:>20}: {result.global_step} steps, train loss {result.metrics['train/loss']:.4f}")
