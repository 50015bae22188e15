"""The guide's "Configuration Templates": small (< 10k samples), medium (10k-100k) and large (> 100k) data
sets, bundled with dtgcnn and chosen by name.

    python examples/configuration_templates.py
    # the same from the command line (any key can still be overridden after it):
    python -m dtgcnn.train --mode triplets --data sentences.csv --config small
    python -m dtgcnn.train --mode triplets --data sentences.csv config=large num_epochs=10
"""

from pathlib import Path

from common.config import load_config, save_config
from dtgcnn import DTGCNNConfig
from dtgcnn.config import TRIPLET_TEMPLATES

out = Path("example_outputs/configuration_templates")
keys = ("batch_size", "learning_rate", "num_epochs", "dropout_rate", "weight_decay", "graph_k_neighbors")
keys += ("gradient_accumulation_steps", "mixed_precision", "early_stopping_patience")
for name, bundled in TRIPLET_TEMPLATES.items():
    config = load_config(DTGCNNConfig, bundled, package="dtgcnn", overrides=["seed=0"])
    save_config(config, out / f"{name}_config.yaml")  # the resolved template, every key
    print(f"{name:>6}: " + ", ".join(f"{k}={getattr(config, k)}" for k in keys))
print(f"resolved templates in {out}")
