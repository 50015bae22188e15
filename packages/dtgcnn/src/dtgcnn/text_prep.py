"""Text preparation: a trained subword tokenizer (`DataPreprocessor`) and the triplet file writer/reader.

The tokenizer turns sentences into padded token-id arrays for a model that learns its own token embeddings
(an embedding table indexed by these ids). It is trained on the training texts with the `tokenizers`
library (BPE, or the unigram model SentencePiece uses) and saved beside its settings in a folder, so the
ids a trained model saw are the ids it is served with.

    prep = DataPreprocessor(tokenizer="unigram", max_length=32, vocab_size=2000).fit(train_texts)
    ids = prep.encode(texts)                    # [N, 32] int32, 0 = padding
    prep.save("runs/tok"); DataPreprocessor.load("runs/tok").encode(texts)   # the same ids
    prep.save_triplets(triplets, "data/processed_triplets.json")            # the training data format
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from common.errors import ConfigError, DataError
from common.runs import atomic_write_text
from dtgcnn.text_data import TRIPLET_FIELDS, read_triplet_file

PAD, UNK = "[PAD]", "[UNK]"  # ids 0 and 1 in every vocabulary this module trains
SETTINGS_FILE, TOKENIZER_FILE = "preprocessor.json", "tokenizer.json"
# The guide's name for the unigram model, and SentencePiece's own spelling of it.
TOKENIZER_ALIASES = {
    "sentence-piece": "unigram",
    "sentencepiece": "unigram",
    "unigram": "unigram",
    "bpe": "bpe",
}


class DataPreprocessor:
    """A subword tokenizer trained on the training texts; `encode` gives [N, max_length] padded ids.

    tokenizer: "bpe" (byte-pair merges) or "unigram" (SentencePiece's unigram language model; "sentence-piece"
    is accepted for it), both over words that keep their leading space as "▁", so decoding is lossless.
    vocab_size is an upper bound: a small corpus yields fewer pieces (`vocab_size_` tells the real size).
    Texts are NFKC-normalised and lower-cased when `lowercase`."""

    def __init__(
        self,
        tokenizer: str = "bpe",
        max_length: int = 128,
        vocab_size: int = 32000,
        *,
        lowercase: bool = True,
        min_frequency: int = 2,
    ) -> None:
        kind = TOKENIZER_ALIASES.get(str(tokenizer).lower())
        if kind is None:
            raise ConfigError(
                f"DataPreprocessor: unknown tokenizer {tokenizer!r}; choose 'bpe' or 'unigram' "
                "('sentence-piece' is the unigram model)."
            )
        if max_length < 1 or vocab_size < 3:
            raise ConfigError(
                f"DataPreprocessor: max_length must be >= 1 and vocab_size >= 3 "
                f"(got {max_length}, {vocab_size})."
            )
        self.kind, self.max_length, self.vocab_size = kind, int(max_length), int(vocab_size)
        self.lowercase, self.min_frequency = bool(lowercase), int(min_frequency)
        self.tokenizer = None  # a tokenizers.Tokenizer once fitted or loaded

    # -- training ------------------------------------------------------------------------------------------
    def fit(self, texts: Iterable[str]) -> DataPreprocessor:
        """Train the vocabulary on `texts` (the training split only, so no test text shapes it)."""
        from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

        texts = [t for t in texts if isinstance(t, str) and t.strip()]
        if not texts:
            raise DataError("DataPreprocessor.fit: no non-empty texts to train the tokenizer on.")
        steps = [normalizers.NFKC()] + ([normalizers.Lowercase()] if self.lowercase else [])
        if self.kind == "bpe":
            tok = Tokenizer(models.BPE(unk_token=UNK))
            trainer = trainers.BpeTrainer(
                vocab_size=self.vocab_size,
                min_frequency=self.min_frequency,
                special_tokens=[PAD, UNK],
                show_progress=False,
            )
        else:
            tok = Tokenizer(models.Unigram())
            trainer = trainers.UnigramTrainer(
                vocab_size=self.vocab_size, special_tokens=[PAD, UNK], unk_token=UNK, show_progress=False
            )
        # Spaces kept as the "▁" word-start mark (as SentencePiece does), so decoding restores the text exactly.
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        tok.normalizer = normalizers.Sequence(steps)
        tok.train_from_iterator(texts, trainer=trainer)
        self._set_tokenizer(tok)
        return self

    def _set_tokenizer(self, tok) -> None:
        if tok.token_to_id(PAD) != 0:
            raise DataError(f"DataPreprocessor: the vocabulary must have {PAD} at id 0.")
        tok.enable_padding(pad_id=0, pad_token=PAD, length=self.max_length)
        tok.enable_truncation(max_length=self.max_length)
        self.tokenizer = tok

    @property
    def vocab_size_(self) -> int:
        """The trained vocabulary's real size (ids are 0 .. vocab_size_ - 1)."""
        return self._fitted().get_vocab_size()

    @property
    def pad_id(self) -> int:
        return 0

    # -- encoding ------------------------------------------------------------------------------------------
    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """[N, max_length] int32 token ids, right-padded with 0 and truncated to max_length."""
        return self.encode_with_mask(texts)[0]

    def encode_with_mask(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(ids [N, max_length] int32, mask [N, max_length] bool: True on real tokens, False on padding)."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.max_length), np.int32), np.zeros((0, self.max_length), bool)
        encodings = self._fitted().encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int32)
        mask = np.array([e.attention_mask for e in encodings], dtype=bool)
        return ids, mask

    def decode(self, ids: np.ndarray) -> list[str]:
        """The texts of id rows (padding dropped): normalised, so lower-case when `lowercase`."""
        return self._fitted().decode_batch([[int(i) for i in row] for row in np.asarray(ids)])

    def tokens(self, text: str) -> list[str]:
        """The subword pieces of one text, without padding."""
        enc = self._fitted().encode(text)
        return [t for t, m in zip(enc.tokens, enc.attention_mask, strict=True) if m]

    def _fitted(self):
        if self.tokenizer is None:
            raise ConfigError(
                "DataPreprocessor: no tokenizer yet; call fit(train_texts) or DataPreprocessor.load(folder)."
            )
        return self.tokenizer

    # -- persistence ---------------------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        """Write tokenizer.json (the `tokenizers` format) and preprocessor.json (the settings) into `folder`."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / TOKENIZER_FILE, self._fitted().to_str())
        settings = {
            "tokenizer": self.kind,
            "max_length": self.max_length,
            "vocab_size": self.vocab_size,
            "lowercase": self.lowercase,
            "min_frequency": self.min_frequency,
        }
        atomic_write_text(folder / SETTINGS_FILE, json.dumps(settings, indent=2))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> DataPreprocessor:
        """The preprocessor `save` wrote: same vocabulary, same ids."""
        from tokenizers import Tokenizer

        folder = Path(folder)
        missing = [n for n in (SETTINGS_FILE, TOKENIZER_FILE) if not (folder / n).is_file()]
        if missing:
            raise DataError(
                f"{folder}: not a saved DataPreprocessor (missing {', '.join(missing)}); "
                "make one with DataPreprocessor(...).fit(texts).save(folder)."
            )
        try:
            settings = json.loads((folder / SETTINGS_FILE).read_text(encoding="utf-8"))
            tok = Tokenizer.from_file(str(folder / TOKENIZER_FILE))
        except (json.JSONDecodeError, Exception) as exc:  # tokenizers raises its own Exception type
            raise DataError(f"{folder}: the saved tokenizer cannot be read ({exc}).") from None
        prep = cls(
            settings["tokenizer"],
            settings["max_length"],
            settings["vocab_size"],
            lowercase=settings.get("lowercase", True),
            min_frequency=settings.get("min_frequency", 2),
        )
        tok.no_padding()
        prep._set_tokenizer(tok)
        return prep

    # the guide calls these on the preprocessor
    @staticmethod
    def save_triplets(triplets, path: str | Path) -> Path:
        return save_triplets(triplets, path)

    @staticmethod
    def load_triplets(path: str | Path) -> list[dict[str, str]]:
        return load_triplets(path)


def _as_triplet(item, index: int) -> dict[str, str]:
    if isinstance(item, Mapping):
        values = [item.get(f) for f in TRIPLET_FIELDS]
    elif isinstance(item, Sequence) and not isinstance(item, str) and len(item) == 3:
        values = list(item)
    else:
        raise DataError(
            f"save_triplets: triplets[{index}] is neither a mapping with anchor, positive, negative "
            "nor a 3-item sequence."
        )
    for field, value in zip(TRIPLET_FIELDS, values, strict=True):
        if not isinstance(value, str) or not value.strip():
            raise DataError(f"save_triplets: triplets[{index}] field '{field}' must be a non-empty string.")
    if values[2] in values[:2]:
        raise DataError(f"save_triplets: triplets[{index}] has a negative equal to its anchor or positive.")
    return dict(zip(TRIPLET_FIELDS, values, strict=True))


def save_triplets(triplets, path: str | Path) -> Path:
    """Write `{"triplets": [{"anchor", "positive", "negative"}, ...]}` atomically (the file the trainer
    reads). Every triplet is checked before anything is written, so a bad one never replaces a good file."""
    rows = [_as_triplet(t, i) for i, t in enumerate(triplets)]
    if not rows:
        raise DataError("save_triplets: no triplets to save.")
    path = Path(path)
    if path.suffix.lower() != ".json":
        raise DataError(f"save_triplets: {path} must end in .json (the triplet JSON format).")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps({"triplets": rows}, indent=2, ensure_ascii=False))
    return path


def load_triplets(path: str | Path) -> list[dict[str, str]]:
    """The triplets of a JSON or CSV triplet file, checked as the trainer checks them."""
    kind, rows = read_triplet_file(path)
    if kind != "triplets":
        raise DataError(f"{path}: holds labelled sentences (text,label), not triplets.")
    return [dict(zip(TRIPLET_FIELDS, row, strict=True)) for row in rows]
