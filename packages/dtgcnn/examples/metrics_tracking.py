"""The guide's "Training Metrics" and "Debugging Tools": a short triplet-text run with the metrics tracker
and the debug callback, then the tracker's 2x3 plot (also rebuilt from the run's metrics_history.json).

    python examples/metrics_tracking.py          # writes example_outputs/metrics_tracking/
"""

from pathlib import Path

from dtgcnn import DTGCNN, DebugCallback, MetricsTracker, Trainer, TripletDataset
from dtgcnn.synthetic import generate_text

out = Path("example_outputs/metrics_tracking")
data = generate_text(out / "data", num_labels=4, per_label=16, seed=0)  # labelled sentences, 4 topics

train_loader, val_loader = TripletDataset(data / "sentences.csv", samples_per_label=4).create_dataloaders(
    batch_size=16, train_split=0.75
)
model = DTGCNN(input_dim=512, hidden_dim=32, output_dim=16, num_gcn_layers=2)

tracker = MetricsTracker()
# Thresholds as in the guide: NaN loss, gradient norm above 100, per-dimension std below 0.01.
debug = DebugCallback(grad_norm_threshold=100.0, collapse_threshold=0.01)
trainer = Trainer(
    model=model, train_loader=train_loader, val_loader=val_loader, epochs=3, output_dir=out / "run"
)
result = trainer.train(callbacks=[tracker, debug])

print({name: [round(v, 3) for v in values[-3:]] for name, values in tracker.metrics.items()})
print(f"debug findings saved: {debug.saved or 'none'}")
print(f"wrote {tracker.plot_metrics(out / 'metrics.png')}")
print(f"wrote {MetricsTracker.from_history(result.run_dir).plot_metrics(out / 'metrics_from_history.png')}")
