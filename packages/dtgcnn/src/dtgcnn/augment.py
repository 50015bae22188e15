"""Triplet augmentation: `TripletAugmenter(strategies, augmentation_prob, seed)`.

    augmenter = TripletAugmenter(["synonym_replacement", "random_swap"], augmentation_prob=0.2, seed=0)
    augmented = augmenter.augment_dataset(triplets, num_augmentations=2)    # originals + 2 copies each

Text strategies change the words of each text of a triplet; `augmentation_prob` is the share of its words a
strategy touches (at least one):

  synonym_replacement  words replaced by a WordNet 3.0 synonym (`dtgcnn.wordnet`; the `lexicon` extra);
                       function words ("the", "on", "off", ...) are never replaced, since they often carry
                       the meaning of a short command ("turn on" vs "turn off")
  random_deletion      each word dropped with probability augmentation_prob (one word always stays)
  random_swap          that many swaps of two random word positions
  paraphrase           `paraphraser(text) -> text`, a model the user supplies
  back_translation     `back_translator(text) -> text`, a round trip through another language with the
                       user's translation model (e.g. en -> de -> en)

`noise_injection` works in embedding space: on an array of encoded vectors ([N, D], or triplets [N, 3, D])
it adds Gaussian noise of `noise_std` per dimension and re-normalises rows that were unit length.

Each copy of each item draws from its own generator, seeded by (seed, copy, item index), so results do not
depend on how many items came before or on anything else drawing random numbers.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from common.errors import ConfigError, DataError
from common.seeding import sample_rng
from dtgcnn.text_data import TRIPLET_FIELDS

TEXT_STRATEGIES = ("synonym_replacement", "random_deletion", "random_swap", "paraphrase", "back_translation")
VECTOR_STRATEGIES = ("noise_injection",)
STRATEGIES = TEXT_STRATEGIES + VECTOR_STRATEGIES
_FUNCTION_WORDS = """a an the and or but if of at by for with about against between into through during before
after above below to from up down in out on off over under again then once here there when where why how all
any both each few more most other some such no nor not only own same so than too very can will just don should
now i me my we our you your he him his she her it its they them their what which who whom this that these
those am is are was were be been being have has had do does did please"""
FUNCTION_WORDS = frozenset(_FUNCTION_WORDS.split())
_WORD = re.compile(r"^(\W*)([\w'-]+)(\W*)$")  # leading punctuation, the word, trailing punctuation


class TripletAugmenter:
    """See the module docstring. `strategies`: names from STRATEGIES; each text of a copy gets one of the
    text strategies, drawn at random."""

    def __init__(
        self,
        strategies: Sequence[str] = ("synonym_replacement",),
        augmentation_prob: float = 0.1,
        seed: int = 0,
        *,
        noise_std: float = 0.05,
        paraphraser: Callable[[str], str] | None = None,
        back_translator: Callable[[str], str] | None = None,
    ) -> None:
        strategies = [strategies] if isinstance(strategies, str) else list(strategies)
        unknown = [s for s in strategies if s not in STRATEGIES]
        if unknown or not strategies:
            raise ConfigError(
                f"TripletAugmenter: unknown strategies {unknown or '(none given)'}; choose from "
                f"{', '.join(STRATEGIES)}."
            )
        if not 0.0 < augmentation_prob <= 1.0:
            raise ConfigError(
                f"TripletAugmenter: augmentation_prob must be in (0, 1], got {augmentation_prob}."
            )
        if "paraphrase" in strategies and paraphraser is None:
            raise ConfigError(
                "TripletAugmenter: 'paraphrase' needs a paraphrase model: pass paraphraser=f, where f(text) "
                "returns a paraphrase (e.g. a seq2seq paraphrasing model's generate). dtgcnn ships none, "
                "since it trains offline."
            )
        if "back_translation" in strategies and back_translator is None:
            raise ConfigError(
                "TripletAugmenter: 'back_translation' needs a translation model: pass back_translator=f, "
                "where f(text) translates the text into another language and back (e.g. two MarianMT "
                "models, en->de then de->en). dtgcnn ships none, since it trains offline."
            )
        if "synonym_replacement" in strategies:
            from dtgcnn.wordnet import wordnet_dir

            wordnet_dir()  # refuse now, not halfway through a data set, when the lexicon is missing
        self.strategies = strategies
        self.text_strategies = [s for s in strategies if s in TEXT_STRATEGIES]
        self.augmentation_prob, self.seed, self.noise_std = (
            float(augmentation_prob),
            int(seed),
            float(noise_std),
        )
        self.paraphraser, self.back_translator = paraphraser, back_translator

    # -- data sets -----------------------------------------------------------------------------------------
    def augment_dataset(self, dataset, num_augmentations: int = 1):
        """The originals followed by `num_augmentations` augmented copies of every item.

        Triplets (dicts with anchor/positive/negative, or 3-item sequences) -> a list of triplet dicts;
        vectors (an array [N, D] or [N, 3, D]) -> an array [(1 + num_augmentations) * N, ...]."""
        if num_augmentations < 0:
            raise ConfigError(f"num_augmentations must be >= 0, got {num_augmentations}.")
        if isinstance(dataset, np.ndarray):
            return self._augment_vectors(dataset, num_augmentations)
        return self._augment_triplets(list(dataset), num_augmentations)

    def _augment_triplets(self, triplets: list, copies: int) -> list[dict[str, str]]:
        if not self.text_strategies:
            raise ConfigError(
                "TripletAugmenter: noise_injection perturbs encoded vectors, not texts; pass the vectors "
                "(e.g. get_encoder('hashing').encode(texts)) to augment_dataset, or add a text strategy."
            )
        if any(s in VECTOR_STRATEGIES for s in self.strategies):
            raise ConfigError(
                "TripletAugmenter: noise_injection applies to encoded vectors and these are texts; use one "
                "augmenter for the texts and another (strategies=['noise_injection']) for their vectors."
            )
        rows = [_triplet(t, i) for i, t in enumerate(triplets)]
        out = list(rows)
        for copy in range(1, copies + 1):
            for i, row in enumerate(rows):
                rng = sample_rng(self.seed, copy, i)
                out.append({f: self.augment_text(row[f], rng) for f in TRIPLET_FIELDS})
        return out

    def _augment_vectors(self, vectors: np.ndarray, copies: int) -> np.ndarray:
        if self.strategies != ["noise_injection"]:
            raise ConfigError(
                "TripletAugmenter: an array of vectors takes only noise_injection; "
                f"{[s for s in self.strategies if s != 'noise_injection']} work on texts."
            )
        vectors = np.asarray(vectors, dtype=np.float32)
        out = [vectors]
        for copy in range(1, copies + 1):
            noisy = np.stack([self.noise(v, sample_rng(self.seed, copy, i)) for i, v in enumerate(vectors)])
            out.append(noisy)
        return np.concatenate(out)

    # -- one item ------------------------------------------------------------------------------------------
    def noise(self, vectors: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """vectors [..., D] + N(0, noise_std^2); rows of unit length stay unit length (cosine space)."""
        noisy = vectors + rng.normal(0.0, self.noise_std, size=vectors.shape).astype(np.float32)
        norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
        unit = np.isclose(norms, 1.0, atol=1e-3)
        return np.where(unit, noisy / np.maximum(np.linalg.norm(noisy, axis=-1, keepdims=True), 1e-12), noisy)

    def augment_text(self, text: str, rng: np.random.Generator, strategy: str | None = None) -> str:
        """`text` changed by `strategy` (default: one of the text strategies drawn from `rng`)."""
        strategy = strategy or self.text_strategies[int(rng.integers(len(self.text_strategies)))]
        if strategy == "paraphrase":
            return _model_output(self.paraphraser(text), "paraphraser", text)
        if strategy == "back_translation":
            return _model_output(self.back_translator(text), "back_translator", text)
        words = text.split()
        if strategy == "synonym_replacement":
            words = self.replace_synonyms(words, rng)
        elif strategy == "random_deletion":
            words = self.delete_words(words, rng)
        elif strategy == "random_swap":
            words = self.swap_words(words, rng)
        else:
            raise ConfigError(
                f"augment_text: {strategy!r} is not a text strategy ({', '.join(TEXT_STRATEGIES)})."
            )
        return " ".join(words)

    def _count(self, n: int) -> int:
        return max(1, round(self.augmentation_prob * n))

    def replace_synonyms(self, words: list[str], rng: np.random.Generator) -> list[str]:
        """Up to augmentation_prob x len(words) (at least 1) content words replaced by a WordNet synonym."""
        from dtgcnn.wordnet import synonyms

        candidates = []
        for i, token in enumerate(words):
            m = _WORD.match(token)
            if m and m.group(2).casefold() not in FUNCTION_WORDS and not m.group(2).isdigit():
                options = synonyms(m.group(2))
                if options:
                    candidates.append((i, m, options))
        out = list(words)
        for k in rng.permutation(len(candidates))[: self._count(len(words))]:
            i, m, options = candidates[k]
            choice = options[int(rng.integers(len(options)))]
            if m.group(2)[:1].isupper():
                choice = choice[:1].upper() + choice[1:]
            out[i] = m.group(1) + choice + m.group(3)
        return out

    def delete_words(self, words: list[str], rng: np.random.Generator) -> list[str]:
        """Each word dropped with probability augmentation_prob; one random word kept if all would go."""
        if len(words) <= 1:
            return list(words)
        keep = rng.random(len(words)) >= self.augmentation_prob
        if not keep.any():
            keep[int(rng.integers(len(words)))] = True
        return [w for w, k in zip(words, keep, strict=True) if k]

    def swap_words(self, words: list[str], rng: np.random.Generator) -> list[str]:
        """augmentation_prob x len(words) (at least 1) swaps of two distinct random positions."""
        out = list(words)
        if len(out) < 2:
            return out
        for _ in range(self._count(len(words))):
            i, j = rng.choice(len(out), size=2, replace=False)
            out[i], out[j] = out[j], out[i]
        return out


def _triplet(item, index: int) -> dict[str, str]:
    if isinstance(item, Mapping) and all(isinstance(item.get(f), str) for f in TRIPLET_FIELDS):
        return {f: item[f] for f in TRIPLET_FIELDS}
    is_sequence = isinstance(item, Sequence) and not isinstance(item, str) and len(item) == 3
    if is_sequence and all(isinstance(v, str) for v in item):
        return dict(zip(TRIPLET_FIELDS, item, strict=True))
    raise DataError(
        f"augment_dataset: item {index} is not a triplet (a mapping with string anchor, positive, negative, "
        "or three strings); vectors go in as one numpy array."
    )


def _model_output(value, name: str, text: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise DataError(
            f"TripletAugmenter: {name} returned {value!r} for {text!r}; it must return a non-empty text."
        )
    return value
