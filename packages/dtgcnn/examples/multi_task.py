"""The guide's "Multi-Task Learning": the DT-GCNN's embeddings feed a triplet loss, a classification head
(the sentence's label) and a regression head (the sentence's length in words), trained together.

    python examples/multi_task.py                # writes example_outputs/multi_task/
    python -m dtgcnn.train --mode triplets --data sentences.csv multitask=true 'multitask_weights=[1,0.5,0.1]'
"""

from pathlib import Path

import numpy as np

from common.runs import timestamp
from dtgcnn import AdvancedTrainer, DTGCNNConfig, MultiTaskDTGCNN, TripletDataset
from dtgcnn.synthetic import generate_text

out = Path("example_outputs/multi_task")
data = generate_text(out / "data", num_labels=4, per_label=16, seed=0)
dataset = TripletDataset(data / "sentences.csv")

config = DTGCNNConfig(
    input_dim=512,  # the hashing encoder
    hidden_dims=[32, 32],
    num_gcn_layers=2,
    output_dim=16,
    batch_size=16,
    num_epochs=3,
    warmup_epochs=0,
    multitask=True,
    num_classes=len(dataset.label_names),
    multitask_weights=[1.0, 0.5, 0.5],  # triplet, classification, regression
    plot_every=0,
    tsne_plot=False,
)
model = MultiTaskDTGCNN(config)
train_loader, val_loader = dataset.create_dataloaders(batch_size=16, train_split=0.75)
result = AdvancedTrainer(model, config, output_dir=out / f"run_{timestamp()}").train(train_loader, val_loader)
for task in ("map_at_r", "classification_accuracy", "regression_mae"):
    print(f"val/{task}: {result.metrics[f'val/{task}']:.3f}")

texts = dataset.texts[:2]
print("embeddings", model.predict(texts, task="triplet").shape)
print("labels", [dataset.label_names[i] for i in model.predict(texts, task="classification").argmax(axis=1)])
print("words", np.round(model.predict(texts, task="regression"), 1), [len(t.split()) for t in texts])
