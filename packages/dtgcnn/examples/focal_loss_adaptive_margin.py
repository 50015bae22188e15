"""The guide's "Custom Loss Functions" and "Adaptive Margin": a focal triplet loss that weights each
triplet's loss l by (1 - exp(-l))**gamma, and a margin that moves from an initial to a target value over
training; both also as config options of a training run.

    python examples/focal_loss_adaptive_margin.py
    # the same from the command line:
    python -m dtgcnn.train --mode triplets --data sentences.csv focal_gamma=2 triplet_margin=0.2 target_margin=0.5
"""

import dtgcnn  # noqa: F401  # isort: skip  (MKL under MLX: import dtgcnn before mlx)
from pathlib import Path

import mlx.core as mx

from common.runs import timestamp
from dtgcnn import DTGCNNConfig, create_model
from dtgcnn.losses import AdaptiveMarginScheduler, FocalTripletLoss
from dtgcnn.synthetic import generate_text
from dtgcnn.text_trainer import fit_triplets

mx.random.seed(0)
anchor, positive, negative = (mx.random.normal((8, 16)) for _ in range(3))
for gamma in (0.0, 2.0):
    loss = FocalTripletLoss(margin=0.2, gamma=gamma)(anchor, positive, negative)
    print(f"focal triplet loss, gamma={gamma}: {loss.item():.4f}")
schedule = AdaptiveMarginScheduler(initial_margin=0.2, target_margin=0.5)
print("margins by epoch:", [round(schedule.step(epoch, total_epochs=4), 3) for epoch in range(4)])

out = Path("example_outputs/focal_loss_adaptive_margin")
data = generate_text(out / "data", num_labels=4, per_label=16, seed=0)
config = DTGCNNConfig(
    hidden_dims=[32, 32],
    num_gcn_layers=2,
    output_dim=16,
    batch_size=16,
    num_epochs=3,
    learning_rate=1e-3,
    warmup_epochs=0,
    focal_gamma=2.0,
    triplet_margin=0.2,
    target_margin=0.5,
    plot_every=0,
    tsne_plot=False,
)
result = fit_triplets(
    config, out / f"run_{timestamp()}", data=data / "sentences.csv", model=create_model(config)
)
print(
    f"{result.global_step} steps, train loss {result.metrics['train/loss']:.4f}, outputs in {result.run_dir}"
)
