"""The guide's "Mixed Precision Training", in MLX: the step computes in bfloat16 (or float16) while the
weights, the optimizer state and the loss stay float32. No gradient scaler is needed for bfloat16 (its
range is float32's); dtgcnn runs BatchNorm and the unit-length normalisation in float32 for float16.

    python examples/mixed_precision.py
    # the same from the command line:
    python -m dtgcnn.train --mode triplets --data sentences.csv mixed_precision=true mixed_precision_dtype=bfloat16
"""

from pathlib import Path

from common.runs import timestamp
from dtgcnn import DTGCNNConfig
from dtgcnn.synthetic import generate_text
from dtgcnn.text_trainer import fit_triplets

out = Path("example_outputs/mixed_precision")
data = generate_text(out / "data", num_labels=4, per_label=16, seed=0)
base = dict(hidden_dims=[32, 32], num_gcn_layers=2, output_dim=16, batch_size=16, num_epochs=2)
base.update(learning_rate=1e-3, warmup_epochs=0, plot_every=0, tsne_plot=False)
for mixed in (False, True):
    config = DTGCNNConfig(**base, mixed_precision=mixed, mixed_precision_dtype="bfloat16")
    result = fit_triplets(config, out / f"{config.precision}_{timestamp()}", data=data / "sentences.csv")
    m = result.metrics
    print(f"{config.precision:>8}: train loss {m['train/loss']:.4f}, val loss {m['val/loss']:.4f}")
