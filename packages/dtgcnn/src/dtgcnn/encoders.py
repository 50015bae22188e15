"""Text to vectors: the encoders that turn sentences into the `input_dim`-wide features a DT-GCNN trains on.

Three kinds, chosen by a spec string (`get_encoder`):

  "hashing" | "hashing:DIM"   hashed word uni/bigrams + character 3-5-grams; no download, no model, instant
  "minilm"                    the pretrained all-MiniLM-L6-v2 sentence encoder run in MLX (384 wide), from the
                              weights the optional `trainyard-dtgcnn[minilm]` extra ships
  "precomputed:PATH"          vectors the user computed elsewhere: PATH.npy with its texts beside it, or an
                              HDF5 file with datasets `texts` and `vectors`

Every encoder maps one text to one vector regardless of which other texts share the call, so a cached vector
(`encode_cached`) is exactly the vector a fresh call would give.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from common.errors import ConfigError, DataError
from common.runs import atomic_writer


@runtime_checkable
class TextEncoder(Protocol):
    name: str  # stable id used in cache keys; changes whenever the vectors it produces would change
    dim: int  # output width; the model's input_dim follows it

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(N, dim) float32, one row per text, each row independent of the other texts."""
        ...


# ----------------------------------------------------------------------------------------------- hashing

_WORD = re.compile(r"\w+")


class HashingEncoder:
    """Signed feature hashing of word unigrams/bigrams and character 3-5-grams, with sublinear tf.

    Words carry topic, character n-grams carry morphology and survive typos and inflection (`train`,
    `training`, `trains` share most of them). The two families are hashed into the same `dim` buckets but
    each is L2-normalised first and weighted equally, so the hundreds of character n-grams of a sentence do
    not drown its ten words. The bucket and sign of a feature come from blake2b of the feature string, which
    (unlike Python's salted `hash`) is the same in every process, so vectors are reproducible across runs and
    machines. tf is sublinear (1 + log count) so a repeated word does not dominate; the result is
    L2-normalised, so cosine similarity is a dot product.
    """

    VERSION = 1  # bump when the feature set or weighting changes: it is part of the cache key

    def __init__(self, dim: int = 512, *, word_ngrams=(1, 2), char_ngrams=(3, 5)) -> None:
        if dim < 8:
            raise ConfigError(f"hashing encoder: dim must be at least 8, got {dim}")
        self.dim = int(dim)
        self.word_ngrams = tuple(word_ngrams)
        self.char_ngrams = tuple(char_ngrams)
        self.name = f"hashing-{self.dim}-v{self.VERSION}"
        self._bucket_cache: dict[str, tuple[int, float]] = {}

    # Tokens are runs of word characters (letters, digits, underscore) after case folding; punctuation splits.
    @staticmethod
    def words(text: str) -> list[str]:
        return _WORD.findall(text.casefold())

    def _word_features(self, words: list[str]) -> list[str]:
        lo, hi = self.word_ngrams
        feats = []
        for n in range(lo, hi + 1):
            feats.extend("w:" + " ".join(words[i : i + n]) for i in range(len(words) - n + 1))
        return feats

    def _char_features(self, words: list[str]) -> list[str]:
        # Character n-grams inside each padded word (like scikit-learn's "char_wb"): n-grams that straddle
        # two words add nothing the word bigrams do not already say.
        lo, hi = self.char_ngrams
        feats = []
        for word in words:
            padded = f" {word} "
            for n in range(lo, hi + 1):
                feats.extend("c:" + padded[i : i + n] for i in range(len(padded) - n + 1))
        return feats

    def _bucket(self, feature: str) -> tuple[int, float]:
        hit = self._bucket_cache.get(feature)
        if hit is None:
            digest = hashlib.blake2b(feature.encode("utf-8"), digest_size=8).digest()
            value = struct.unpack("<Q", digest)[0]
            hit = (value % self.dim, 1.0 if (value >> 63) & 1 else -1.0)
            if len(self._bucket_cache) < 1_000_000:  # bounded memo: the same n-grams recur across texts
                self._bucket_cache[feature] = hit
        return hit

    def _hashed(self, features: list[str]) -> np.ndarray:
        counts: dict[str, int] = {}
        for f in features:
            counts[f] = counts.get(f, 0) + 1
        vec = np.zeros(self.dim, dtype=np.float64)
        for f, c in counts.items():
            bucket, sign = self._bucket(f)
            vec[bucket] += sign * (1.0 + np.log(c))
        norm = np.linalg.norm(vec)
        return vec / norm if norm > 0 else vec

    def encode_one(self, text: str) -> np.ndarray:
        words = self.words(text)
        vec = self._hashed(self._word_features(words)) + self._hashed(self._char_features(words))
        norm = np.linalg.norm(vec)
        return (vec / norm if norm > 0 else vec).astype(np.float32)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        texts = _as_text_list(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            out[i] = self.encode_one(text)
        return out

    def __repr__(self) -> str:
        return f"HashingEncoder(dim={self.dim})"


# ------------------------------------------------------------------------------------------- precomputed


class PrecomputedEncoder:
    """Vectors computed outside dtgcnn, looked up by exact text.

    Accepted layouts:
      vectors.npy (N, dim) + a texts file beside it: vectors.txt (one text per line) or vectors.json (a list)
      file.h5 / file.hdf5 with datasets `texts` (N strings) and `vectors` (N, dim)
    A text that is not in the file is an error naming it: silently inventing a vector would train on noise.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        texts, vectors = _read_precomputed(self.path)
        self.dim = int(vectors.shape[1])
        self._vectors = vectors
        self._index = {t: i for i, t in enumerate(texts)}
        content = hashlib.sha256(vectors.tobytes())
        for t in texts:
            content.update(t.encode("utf-8") + b"\0")
        # The content digest, not the path, names the cache entry: editing the file must invalidate it.
        self.name = f"precomputed-{content.hexdigest()[:16]}"

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        texts = _as_text_list(texts)
        rows = []
        for i, text in enumerate(texts):
            row = self._index.get(text)
            if row is None:
                shown = text if len(text) <= 120 else text[:117] + "..."
                raise DataError(
                    f"precomputed vectors {self.path}: no vector for text #{i} {shown!r}. "
                    f"The file holds {len(self._index)} texts; every text of the data set must be among them "
                    "(exact match, including case and whitespace)."
                )
            rows.append(row)
        return self._vectors[np.asarray(rows, dtype=np.int64)].reshape(len(rows), self.dim)

    def __repr__(self) -> str:
        return f"PrecomputedEncoder({str(self.path)!r}, dim={self.dim})"


def _texts_beside(npy: Path) -> Path:
    for suffix in (".txt", ".json"):
        candidate = npy.with_suffix(suffix)
        if candidate.exists():
            return candidate
    raise DataError(
        f"precomputed vectors {npy}: no texts file beside it. Put the N texts, in row order, in "
        f"{npy.with_suffix('.txt')} (one per line) or {npy.with_suffix('.json')} (a JSON list of strings)."
    )


def _read_precomputed(path: Path) -> tuple[list[str], np.ndarray]:
    if not path.exists():
        raise DataError(f"precomputed vectors: file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            vectors = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise DataError(f"precomputed vectors {path}: not a readable .npy array ({exc})") from exc
        texts_path = _texts_beside(path)
        if texts_path.suffix == ".json":
            try:
                texts = json.loads(texts_path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise DataError(f"precomputed texts {texts_path}: invalid JSON ({exc})") from exc
            if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
                raise DataError(f"precomputed texts {texts_path}: must be a JSON list of strings")
        else:
            texts = texts_path.read_text(encoding="utf-8").split("\n")
            if texts and texts[-1] == "":
                texts.pop()  # the final newline ends the last line, it does not start an empty text
        source = texts_path
    elif suffix in (".h5", ".hdf5"):
        import h5py

        try:
            with h5py.File(path, "r") as h5:
                missing = [k for k in ("texts", "vectors") if k not in h5]
                if missing:
                    raise DataError(
                        f"precomputed vectors {path}: missing dataset(s) {', '.join(missing)}; the file needs "
                        "`texts` (N strings) and `vectors` (N, dim)"
                    )
                vectors = np.asarray(h5["vectors"][()])
                texts = [t.decode("utf-8") if isinstance(t, bytes) else str(t) for t in h5["texts"][()]]
        except OSError as exc:
            raise DataError(f"precomputed vectors {path}: not a readable HDF5 file ({exc})") from exc
        source = path
    else:
        raise ConfigError(
            f"precomputed vectors {path}: unsupported file type {suffix!r}; use .npy (+ .txt/.json texts) "
            "or .h5/.hdf5 (datasets `texts` and `vectors`)"
        )
    if vectors.ndim != 2 or vectors.shape[1] == 0:
        raise DataError(
            f"precomputed vectors {path}: expected a 2-D (N, dim) array, got shape {vectors.shape}"
        )
    if len(texts) != vectors.shape[0]:
        raise DataError(
            f"precomputed vectors {path}: {vectors.shape[0]} vectors but {len(texts)} texts in {source}; "
            "they must pair up row by row"
        )
    if not np.issubdtype(vectors.dtype, np.number):
        raise DataError(f"precomputed vectors {path}: vectors have non-numeric dtype {vectors.dtype}")
    vectors = vectors.astype(np.float32, copy=False)
    bad = np.flatnonzero(~np.isfinite(vectors).all(axis=1))
    if bad.size:
        raise DataError(
            f"precomputed vectors {path}: row {int(bad[0])} (text {texts[int(bad[0])]!r}) holds NaN or inf "
            f"({bad.size} such rows)"
        )
    return texts, vectors


# ---------------------------------------------------------------------------------------------- factory

ENCODER_SPECS = "hashing | hashing:DIM | minilm | precomputed:PATH"


def get_encoder(spec: str) -> TextEncoder:
    """The encoder named by `spec` (see the module docstring)."""
    kind, _, arg = str(spec).strip().partition(":")
    kind = kind.lower()
    if kind == "hashing":
        if not arg:
            return HashingEncoder()
        try:
            dim = int(arg)
        except ValueError:
            raise ConfigError(
                f"encoder {spec!r}: the hashing width must be an integer, e.g. hashing:512"
            ) from None
        return HashingEncoder(dim)
    if kind == "minilm":
        if arg:
            raise ConfigError(f"encoder {spec!r}: minilm takes no argument")
        from dtgcnn.minilm import MiniLMEncoder

        return MiniLMEncoder()
    if kind == "precomputed":
        if not arg:
            raise ConfigError(f"encoder {spec!r}: give the file, e.g. precomputed:vectors.npy")
        return PrecomputedEncoder(arg)
    raise ConfigError(f"unknown encoder {spec!r}; choose one of {ENCODER_SPECS}")


# ------------------------------------------------------------------------------------------------ cache

CACHE_ENV = "TRAINYARD_CACHE"
_CACHE_MAGIC = b"DTGCENC1"
_HEADER = struct.Struct("<8sII32s")  # magic, count, dim, sha256 of everything after the header
_CACHE_SUFFIX = ".vecs"


def default_cache_dir() -> Path:
    """$TRAINYARD_CACHE/dtgcnn/encoders, else ~/.cache/trainyard/dtgcnn/encoders."""
    root = os.environ.get(CACHE_ENV)
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "trainyard"
    return base / "dtgcnn" / "encoders"


def text_key(text: str) -> bytes:
    """The cache key of a text: the sha256 of its UTF-8 bytes."""
    return hashlib.sha256(text.encode("utf-8")).digest()


def _pack_chunk(keys: list[bytes], vectors: np.ndarray) -> bytes:
    body = b"".join(keys) + np.ascontiguousarray(vectors, dtype="<f4").tobytes()
    return _HEADER.pack(_CACHE_MAGIC, len(keys), vectors.shape[1], hashlib.sha256(body).digest()) + body


def _read_chunk(path: Path, dim: int) -> tuple[list[bytes], np.ndarray] | None:
    """The keys and vectors of one cache file, or None when it is torn, truncated, edited or of another width."""
    try:
        blob = path.read_bytes()
    except OSError:
        return None
    if len(blob) < _HEADER.size:
        return None
    magic, count, stored_dim, digest = _HEADER.unpack_from(blob)
    body = blob[_HEADER.size :]
    if (
        magic != _CACHE_MAGIC
        or stored_dim != dim
        or len(body) != count * (32 + 4 * dim)
        or hashlib.sha256(body).digest() != digest
    ):
        return None
    keys = [body[i * 32 : (i + 1) * 32] for i in range(count)]
    vectors = np.frombuffer(body, dtype="<f4", offset=32 * count).reshape(count, dim).astype(np.float32)
    if not np.isfinite(vectors).all():
        return None
    return keys, vectors


def encode_cached(
    encoder: TextEncoder,
    texts: Sequence[str],
    cache_dir: str | os.PathLike | None = None,
    *,
    chunk_size: int = 1024,
) -> np.ndarray:
    """`encoder.encode(texts)`, reading the vectors already on disk and encoding (then storing) only the rest.

    The cache of an encoder is the folder `cache_dir/<encoder.name>/` of chunk files, each holding up to
    `chunk_size` (sha256(text), vector) pairs and a checksum of its content. A chunk is named by the digest of
    its content and written atomically, so a writer killed mid-way leaves no chunk (only the chunks finished
    before are kept, and a rerun resumes from them), and two processes caching the same texts write the same
    file. A damaged chunk fails its checksum: it is deleted and its texts are encoded again, never used.
    Returns (len(texts), dim) float32 in the order of `texts`; a text repeated in `texts` is encoded once.
    """
    texts = _as_text_list(texts)
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    folder = root / _safe(encoder.name)
    out = np.zeros((len(texts), encoder.dim), dtype=np.float32)
    rows_of: dict[bytes, list[int]] = {}
    first_text: dict[bytes, str] = {}
    for i, text in enumerate(texts):
        key = text_key(text)
        rows_of.setdefault(key, []).append(i)
        first_text.setdefault(key, text)
    wanted = set(rows_of)
    if folder.is_dir():
        for path in sorted(folder.glob(f"*{_CACHE_SUFFIX}")):
            if not wanted:
                break
            chunk = _read_chunk(path, encoder.dim)
            if chunk is None:
                # Damaged (or written by an incompatible version): drop it so it is rebuilt, never trusted.
                path.unlink(missing_ok=True)
                continue
            for key, vector in zip(*chunk, strict=True):
                if key in wanted:
                    out[rows_of[key]] = vector
                    wanted.discard(key)
    missing = [key for key in rows_of if key in wanted]  # in first-appearance order: deterministic chunks
    for start in range(0, len(missing), chunk_size):
        keys = missing[start : start + chunk_size]
        vectors = np.asarray(encoder.encode([first_text[k] for k in keys]), dtype=np.float32)
        if vectors.shape != (len(keys), encoder.dim):
            raise DataError(
                f"encoder {encoder.name} returned shape {vectors.shape} for {len(keys)} texts; "
                f"expected ({len(keys)}, {encoder.dim})"
            )
        blob = _pack_chunk(keys, vectors)
        name = hashlib.sha256(blob).hexdigest()[:32] + _CACHE_SUFFIX
        with atomic_writer(folder / name) as fh:
            fh.write(blob)
        for key, vector in zip(keys, vectors, strict=True):
            out[rows_of[key]] = vector
    return out


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


def _as_text_list(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise TypeError("encode() takes a sequence of texts, not one string: wrap it in a list")
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise DataError(f"text #{i} is a {type(t).__name__}, not a string: {t!r}")
    return texts


__all__ = [
    "ENCODER_SPECS",
    "HashingEncoder",
    "PrecomputedEncoder",
    "TextEncoder",
    "default_cache_dir",
    "encode_cached",
    "get_encoder",
]
