"""The guide's "Data Augmentation": more triplets from the ones you have, by WordNet synonyms, word deletion
and swaps (texts), and noise in embedding space (vectors). Paraphrase and back-translation take your own
model (a function text -> text).

    python examples/data_augmentation.py
"""

from dtgcnn import TripletAugmenter
from dtgcnn.encoders import get_encoder

original_dataset = [
    {
        "anchor": "The cat sat on the mat",
        "positive": "A feline rested on the rug",
        "negative": "The stock market crashed today",
    },
    {
        "anchor": "Machine learning is fascinating",
        "positive": "AI and deep learning are exciting fields",
        "negative": "I enjoy cooking Italian food",
    },
]

augmenter = TripletAugmenter(
    strategies=["synonym_replacement", "random_deletion", "random_swap"], augmentation_prob=0.3, seed=0
)
augmented_dataset = augmenter.augment_dataset(original_dataset, num_augmentations=2)
for triplet in augmented_dataset[len(original_dataset) :]:
    print(triplet)

# Paraphrase with a model you supply (here a stand-in rule; in practice a seq2seq paraphraser's generate).
paraphraser = TripletAugmenter(["paraphrase"], paraphraser=lambda text: f"In other words, {text.lower()}")
print(paraphraser.augment_dataset(original_dataset[:1], num_augmentations=1)[-1])

# Noise injection works on encoded vectors: [N, 3, D] triplet vectors -> originals + noisy copies.
texts = [t[f] for t in original_dataset for f in ("anchor", "positive", "negative")]
vectors = get_encoder("hashing").encode(texts).reshape(len(original_dataset), 3, -1)
noisy = TripletAugmenter(["noise_injection"], noise_std=0.02, seed=0).augment_dataset(
    vectors, num_augmentations=3
)
print(f"vectors {vectors.shape} -> {noisy.shape}")
