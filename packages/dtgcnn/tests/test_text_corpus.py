"""Text corpora: the synthetic labelled-sentence generator (`python -m dtgcnn.synthetic --text`) and the
real intent sentences rendered from the `home-assistant-intents` package."""

from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import dtgcnn  # noqa: F401  (fast BLAS before anything imports mlx)
from common.errors import ConfigError
from dtgcnn.encoders import get_encoder
from dtgcnn.synthetic import generate_text

HAVE_INTENTS = importlib.util.find_spec("home_assistant_intents") is not None
needs_intents = pytest.mark.skipif(not HAVE_INTENTS, reason="home-assistant-intents is not installed")
FILES = ("sentences.csv", "triplets.json", "triplets.csv")


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def precision_at_1(vectors: np.ndarray, labels) -> float:
    labels = np.asarray(labels)
    sim = vectors @ vectors.T
    np.fill_diagonal(sim, -np.inf)
    return float(np.mean(labels[sim.argmax(axis=1)] == labels))


# ----------------------------------------------------------------------------------------------- synthetic


def test_synthetic_text_cli_is_byte_for_byte_deterministic(tmp_path):
    cmd = [sys.executable, "-m", "dtgcnn.synthetic", "--text"]
    subprocess.run([*cmd, str(tmp_path / "a"), "--num-labels", "5", "--per-label", "12"], check=True)
    generate_text(tmp_path / "b", num_labels=5, per_label=12)
    generate_text(tmp_path / "c", num_labels=5, per_label=12, seed=1)
    for name in FILES:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
        assert (tmp_path / "a" / name).read_bytes() != (tmp_path / "c" / name).read_bytes()


def test_synthetic_text_files_agree_and_triplets_follow_labels(tmp_path):
    out = generate_text(tmp_path, num_labels=6, per_label=15, seed=4)
    rows = _read_csv(out / "sentences.csv")
    label_of = {r["text"]: r["label"] for r in rows}
    assert len(rows) == len(label_of) == 90  # distinct sentences
    assert Counter(label_of.values()) == {f"topic_{j:02d}": 15 for j in range(6)}
    triplets = json.loads((out / "triplets.json").read_text())["triplets"]
    assert triplets == _read_csv(out / "triplets.csv")
    assert len(triplets) == 90
    for t in triplets:
        assert t["anchor"] != t["positive"]
        assert label_of[t["anchor"]] == label_of[t["positive"]] != label_of[t["negative"]]


def test_synthetic_text_has_lexical_signal_but_no_deciding_word(tmp_path):
    rows = _read_csv(generate_text(tmp_path, num_labels=8, per_label=30) / "sentences.csv")
    texts, labels = [r["text"] for r in rows], [r["label"] for r in rows]
    p1 = precision_at_1(get_encoder("hashing").encode(texts), labels)
    assert 0.35 < p1 < 0.95, p1  # far above the 1/8 chance, far from trivially separable
    # No word marks a label by itself: none is in most of one label's sentences and absent from the others.
    words_of = [set(t.lower().rstrip(".").split()) for t in texts]
    for word in set().union(*words_of):
        inside = Counter(lab for lab, ws in zip(labels, words_of, strict=True) if word in ws)
        best_label, hits = inside.most_common(1)[0]
        purity = hits / sum(inside.values())
        assert not (hits >= 0.5 * 30 and purity > 0.95), (word, inside)


def test_synthetic_cli_still_makes_meshes_and_needs_an_output(tmp_path, capsys):
    from common.cli import run_cli
    from dtgcnn.synthetic import main

    counts = ["--train-per-subject", "1", "--val-per-subject", "1", "--test-per-subject", "1"]
    run_cli(main, [str(tmp_path / "m"), "--num-subjects", "2", *counts, "--num-vertices", "32"])
    assert json.loads((tmp_path / "m" / "train_metadata.json").read_text())["num_classes"] == 2
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, [])
    assert exit_info.value.code == 2 and "--text OUT" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- real text set


@needs_intents
def test_real_text_set_is_rendered_deterministically_with_enough_labels():
    from dtgcnn.textsets import load_text_set

    sentences, labels = load_text_set("ha-intents-en")
    assert (sentences, labels) == load_text_set("ha-intents-en")
    counts = Counter(labels)
    assert len(sentences) >= 200 and len(counts) >= 5 and min(counts.values()) >= 2
    assert len(set(sentences)) == len(sentences)
    assert {"HassTurnOn", "HassTurnOff", "HassStartTimer", "HassGetWeather"} <= set(counts)
    # Fully rendered: no template syntax is left in any sentence.
    assert not [s for s in sentences if set(s) & set("[]()<>{}|;")]
    capped, capped_labels = load_text_set("ha-intents-en", max_per_label=5)
    assert max(Counter(capped_labels).values()) == 5
    assert load_text_set("ha-intents-en", seed=1)[0] != sentences


@needs_intents
def test_template_rendering_covers_the_grammar():
    from dtgcnn.textsets import _Renderer

    language = {
        "expansion_rules": {"the": "(the|my)"},
        "lists": {"state": {"values": [{"in": "on", "out": 1}, {"in": "off", "out": 0}]}},
    }
    renderer = _Renderer(language, np.random.default_rng(0))
    drawn = {renderer.sentence("turn [<the>] fan[s] {state}") for _ in range(200)}
    expected = {
        f"turn {the}fan{s} {state}"
        for the in ("", "the ", "my ")
        for s in ("", "s")
        for state in ("on", "off")
    }
    assert drawn == expected
    orders = {renderer.sentence("(pause;[the] {area})") for _ in range(100)}
    assert any(o.startswith("pause") for o in orders) and any(o.endswith("pause") for o in orders)


@needs_intents
def test_unknown_text_sets_are_refused_with_the_choices():
    from dtgcnn.textsets import load_text_set

    with pytest.raises(ConfigError, match="ha-intents-<language>"):
        load_text_set("imdb")
    with pytest.raises(ConfigError, match="available: .*en"):
        load_text_set("ha-intents-xx")


def test_missing_intents_package_is_a_clear_error(monkeypatch):
    import dtgcnn.textsets as textsets

    real = importlib.util.find_spec
    monkeypatch.setattr(
        textsets.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "home_assistant_intents" else real(name, *a),
    )
    with pytest.raises(ConfigError, match="home-assistant-intents"):
        textsets.load_text_set()
