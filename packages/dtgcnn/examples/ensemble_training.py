"""The guide's "Ensemble training" against overfitting: members trained with different seeds, their
L2-normalised embeddings averaged; the ensemble's retrieval metrics beside each member's.

    python examples/ensemble_training.py         # writes example_outputs/ensemble_training/
    python -m dtgcnn.train --mode triplets --data sentences.csv --output-dir ens ensemble_size=3
"""

import json
from pathlib import Path

from common.runs import timestamp
from dtgcnn import DTGCNNConfig, fit_ensemble, load_text_model
from dtgcnn.encoders import get_encoder
from dtgcnn.ensemble import ensemble_embeddings
from dtgcnn.synthetic import generate_text

out = Path("example_outputs/ensemble_training")
data = generate_text(out / "data", num_labels=4, per_label=16, seed=0)

config = DTGCNNConfig(
    hidden_dims=[32, 32],
    num_gcn_layers=2,
    output_dim=16,
    batch_size=16,
    num_epochs=2,
    warmup_epochs=0,
    ensemble_size=3,  # seeds 42, 43, 44
    plot_every=0,
    tsne_plot=False,
)
result = fit_ensemble(config, out / f"run_{timestamp()}", data=data / "sentences.csv")
report = json.loads((result.run_dir / "ensemble_metrics.json").read_text())
for member in report["members"]:
    print(f"member seed {member['seed']}: MAP@R {member['map_at_r']:.3f} P@1 {member['precision_at_1']:.3f}")
print(f"ensemble: MAP@R {report['ensemble']['map_at_r']:.3f} P@1 {report['ensemble']['precision_at_1']:.3f}")

models = [load_text_model(Path(m["run_dir"]) / "checkpoints" / "last.npz")[0] for m in report["members"]]
texts = ["turn on the kitchen light", "what is the weather"]
vectors = get_encoder(config.encoder).encode(texts)  # the members share the encoder: encode once
print("ensemble embeddings", ensemble_embeddings(models, vectors).shape)
