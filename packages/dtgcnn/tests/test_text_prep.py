"""DataPreprocessor (BPE / unigram subword tokenizers from `tokenizers`) and the triplet file writer."""

import json

import numpy as np
import pytest

import dtgcnn  # noqa: F401  (fast BLAS before mlx)
from common.errors import ConfigError, DataError
from dtgcnn.text_data import TripletDataset
from dtgcnn.text_prep import DataPreprocessor, load_triplets, save_triplets
from dtgcnn.textsets import load_text_set


@pytest.fixture(scope="module")
def intents():
    return load_text_set("ha-intents-en", max_per_label=12)


@pytest.mark.parametrize("kind", ["bpe", "sentence-piece"])
def test_tokenizer_round_trips_pads_and_reloads(kind, intents, tmp_path):
    sentences, _ = intents
    prep = DataPreprocessor(tokenizer=kind, max_length=20, vocab_size=600).fit(sentences)
    assert 2 < prep.vocab_size_ <= 600
    ids, mask = prep.encode_with_mask(sentences)
    assert ids.shape == (len(sentences), 20) and ids.dtype == np.int32
    assert ((ids == 0) == ~mask).all()  # 0 is padding and only padding
    assert (ids < prep.vocab_size_).all()
    # lossless up to the normaliser's lower-casing (for the texts that fit in max_length)
    whole = ~mask[:, -1]
    assert whole.mean() > 0.9
    assert prep.decode(ids[whole]) == [s.lower() for s, w in zip(sentences, whole, strict=True) if w]
    # subwords: a word never seen is split into known pieces, not mapped to one unknown id
    pieces = prep.tokens("bathroomtimers")
    assert len(pieces) > 1 and "[UNK]" not in pieces
    # truncation to max_length
    long_ids = prep.encode([" ".join(sentences[:10])])
    assert long_ids.shape == (1, 20) and (long_ids != 0).all()
    loaded = DataPreprocessor.load(prep.save(tmp_path / "tok"))
    np.testing.assert_array_equal(loaded.encode(sentences), ids)
    assert (loaded.kind, loaded.max_length) == (prep.kind, 20)


def test_bad_settings_and_unfitted_use_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="unknown tokenizer 'wordpiece'"):
        DataPreprocessor(tokenizer="wordpiece")
    with pytest.raises(ConfigError, match="fit"):
        DataPreprocessor().encode(["hello"])
    with pytest.raises(DataError, match="missing preprocessor.json, tokenizer.json"):
        DataPreprocessor.load(tmp_path)


def test_save_triplets_writes_the_training_format_atomically(tmp_path, text_corpus):
    triplets = load_triplets(text_corpus / "triplets.json")
    path = save_triplets([tuple(t.values()) for t in triplets], tmp_path / "t.json")
    assert json.loads(path.read_text()) == {"triplets": triplets}
    assert load_triplets(path) == triplets
    assert len(TripletDataset(path)) == len(triplets)  # the trainer's reader takes it as it is
    before = path.read_bytes()
    bad = [*triplets, {"anchor": "a", "positive": "b", "negative": "a"}]
    with pytest.raises(DataError, match=r"triplets\[144\] has a negative equal to its anchor"):
        save_triplets(bad, path)
    assert path.read_bytes() == before  # a refused save leaves the old file intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.json"]  # and no temporary file
