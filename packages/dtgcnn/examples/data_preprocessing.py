"""The guide's "Data Preprocessing": triplets generated from labelled sentences, a subword tokenizer trained
on them, and the triplets saved in the training format.

    python examples/data_preprocessing.py        # writes example_outputs/data_preprocessing/
"""

from pathlib import Path

from dtgcnn import DataPreprocessor, TripletGenerator, load_triplets
from dtgcnn.textsets import load_text_set

out = Path("example_outputs/data_preprocessing")

# Labelled sentences: Home Assistant voice commands, labelled by intent (10 per intent keeps it quick).
raw_sentences, labels = load_text_set("ha-intents-en", max_per_label=10)

# A subword tokenizer trained on the sentences (SentencePiece's unigram model), for a model with its own
# token embeddings: padded id arrays of max_length.
preprocessor = DataPreprocessor(tokenizer="sentence-piece", max_length=24, vocab_size=800)
preprocessor.fit(raw_sentences)
ids = preprocessor.encode(raw_sentences[:2])
print(
    f"vocabulary {preprocessor.vocab_size_} pieces; {raw_sentences[0]!r} -> {preprocessor.tokens(raw_sentences[0])}"
)
print(f"ids {ids.shape}: {ids[0].tolist()}")
preprocessor.save(out / "tokenizer")

# Triplets: positives of the same intent at cosine similarity >= 0.3 (hashing encoder), hard negatives.
generator = TripletGenerator(similarity_threshold=0.3, negative_sampling_strategy="hard", seed=0)
triplets = generator.generate_triplets(sentences=raw_sentences, labels=labels, num_triplets_per_anchor=5)
print(f"{len(triplets)} triplets, e.g. {triplets[0]}")

# Save processed data (the JSON the trainer reads: python -m dtgcnn.train --mode triplets --data ...)
path = preprocessor.save_triplets(triplets, out / "processed_triplets.json")
assert load_triplets(path) == triplets
assert (DataPreprocessor.load(out / "tokenizer").encode(raw_sentences[:2]) == ids).all()
print(f"wrote {path}")
