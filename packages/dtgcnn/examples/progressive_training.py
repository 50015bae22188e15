"""The guide's "Progressive Training": stage 1 trains the embedding (input) layer, stage 2 the GCN layers
with the embedding frozen, stage 3 everything, each stage with its own epochs and learning rate.

    python examples/progressive_training.py      # writes example_outputs/progressive_training/
    # the same from the command line:
    python -m dtgcnn.train --mode triplets --data sentences.csv progressive=true \
        'progressive_epochs=[5,10]' 'progressive_lrs=[0.001,0.0005]' num_epochs=20
"""

from pathlib import Path

from common.runs import timestamp
from dtgcnn import DTGCNNConfig, ProgressiveTrainer, TripletDataset, create_model
from dtgcnn.synthetic import generate_text

out = Path("example_outputs/progressive_training")
data = generate_text(out / "data", num_labels=4, per_label=16, seed=0)  # labelled sentences, 4 topics

config = DTGCNNConfig(
    hidden_dims=[32, 32],
    num_gcn_layers=2,
    output_dim=16,
    batch_size=16,
    num_epochs=2,  # stage 3, at learning_rate
    learning_rate=1e-3,
    warmup_epochs=0,
    progressive_epochs=[1, 1],  # stages 1 and 2 (the guide: 5 and 10)
    progressive_lrs=[1e-3, 5e-4],
    plot_every=0,
    tsne_plot=False,
)
train_loader, val_loader = TripletDataset(data / "sentences.csv").create_dataloaders(
    batch_size=16, train_split=0.75
)
model = create_model(config)
trainer = ProgressiveTrainer(model, config, output_dir=out / f"run_{timestamp()}")
result = trainer.train_progressive(train_loader, val_loader)
print(f"{result.epochs_done} epochs (1 + 1 + 2), val MAP@R {result.metrics['val/map_at_r']:.3f}")
print(f"learning rates and stages in {result.run_dir / 'metrics_history.json'}")
