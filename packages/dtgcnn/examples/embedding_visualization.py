"""The guide's "Embedding Visualization": a 2-D t-SNE map of embeddings coloured by label, with a legend of
the labels (UMAP too, with `embeddings_umap`, when the `umap` extra is installed).

    python examples/embedding_visualization.py   # writes example_outputs/embedding_visualization/
"""

from pathlib import Path

import numpy as np

from dtgcnn.encoders import get_encoder
from dtgcnn.text_plots import embeddings_tsne
from dtgcnn.textsets import load_text_set

out = Path("example_outputs/embedding_visualization")

# Six intents, 12 sentences each; with a trained model use model.encode(sentences) instead of the encoder.
sentences, labels = load_text_set("ha-intents-en", max_per_label=12)
intents = sorted(set(labels))[:6]
keep = [i for i, label in enumerate(labels) if label in intents]
embeddings = get_encoder("hashing").encode([sentences[i] for i in keep])
path = embeddings_tsne(
    embeddings,
    np.array([labels[i] for i in keep]),
    out / "embeddings_tsne.png",
    seed=0,
    what="sentence vectors",
)
print(f"wrote {path}")
