"""Real labelled sentences for tests, demos and evaluation: Home Assistant's voice-command intents.

The `home-assistant-intents` package ships, for some sixty languages, the sentence templates that Home
Assistant's voice assistant matches spoken commands against, grouped by intent ("HassTurnOn",
"HassStartTimer", "HassGetWeather", ...). Intents are natural labels for sentence embeddings: sentences of an
intent share purpose but not always words ("turn off the lights" / "deactivate the lamps"), and different
intents can differ by a single word ("turn on" / "turn off"), so the set rewards embeddings that capture
meaning and shows where bag-of-words vectors fail.

A template is written in the package's small grammar: `[optional]`, `(alternative|choice)`, `<rule>` (an
expansion rule of the language), `{list}` or `{list:slot}` (a slot filled from a value list, a number range,
or, for the user's own areas, devices and free text, a wildcard). `render` draws concrete sentences from a
template with a seeded RNG. Wildcard slots have no values in the package (they are the user's own device
and room names), so they are filled from the small, intent-neutral lists `WILDCARD_FILLERS` below: the same
fillers for every intent, so they carry no label signal (they are English in every language).

    sentences, labels = load_text_set("ha-intents-en")
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.errors import ConfigError, DataError

PACKAGE = "home_assistant_intents"
DISTRIBUTION = "home-assistant-intents"
DEFAULT_SET = "ha-intents-en"

# Values for slots the package leaves to the user's own installation. Kept generic and shared by all intents.
WILDCARD_FILLERS: dict[str, tuple[str, ...]] = {
    "area": ("kitchen", "living room", "bedroom", "office", "garage", "bathroom", "hallway", "garden"),
    "floor": ("ground floor", "first floor", "upstairs", "downstairs", "basement", "attic"),
    "name": ("ceiling lamp", "desk light", "front door", "thermostat", "speaker", "patio", "heater", "tv"),
    "zone": ("home", "work", "school", "the gym"),
    "message": ("dinner is ready", "the car is here", "time to leave", "the package arrived"),
    "search_query": ("jazz for studying", "the beatles", "rain sounds", "the morning news"),
    "shopping_list_item": ("milk", "eggs", "bread", "apples", "coffee"),
    "todo_list_item": ("call mom", "water the plants", "pay the bills", "book tickets"),
    "timer_name": ("pizza", "laundry", "tea", "pasta"),
    "timer_command": ("turn off the oven", "lock the door", "start the dishwasher"),
}
_GENERIC_FILLERS = ("thing", "item", "device")


@dataclass(frozen=True)
class _Text:
    value: str


@dataclass(frozen=True)
class _Choice:  # (a|b|c), or [a|b] with optional=True
    options: tuple
    optional: bool = False


@dataclass(frozen=True)
class _Permutation:  # (a;b): the parts in any order
    parts: tuple


@dataclass(frozen=True)
class _Rule:  # <name>
    name: str


@dataclass(frozen=True)
class _Slot:  # {list} or {list:slot}
    list_name: str


# ------------------------------------------------------------------------------------------- template grammar


class _Parser:
    """Recursive-descent parser of one template into a tree of the dataclasses above."""

    def __init__(self, template: str) -> None:
        self.s = template
        self.i = 0

    def parse(self):
        node = self._alternatives(closing="")
        if self.i != len(self.s):
            raise ValueError(f"unexpected {self.s[self.i]!r} at offset {self.i}")
        return node

    def _alternatives(self, closing: str):
        options, parts = [], [[]]
        while self.i < len(self.s) and self.s[self.i] != closing:
            ch = self.s[self.i]
            if ch in "|;":
                self.i += 1
                if ch == "|":
                    options.append(parts)
                    parts = [[]]
                else:
                    parts.append([])
            else:
                parts[-1].append(self._item())
        if closing:
            if self.i >= len(self.s):
                raise ValueError(f"missing {closing!r}")
            self.i += 1
        options.append(parts)
        built = []
        for option in options:
            seqs = tuple(tuple(p) for p in option)
            built.append(seqs[0] if len(seqs) == 1 else (_Permutation(seqs),))
        return built

    def _item(self):
        ch = self.s[self.i]
        if ch in "([":
            self.i += 1
            options = self._alternatives(")" if ch == "(" else "]")
            return _Choice(tuple(options), optional=ch == "[")
        if ch in "<{":
            end = self.s.find(">" if ch == "<" else "}", self.i)
            if end < 0:
                raise ValueError(f"unclosed {ch!r} at offset {self.i}")
            inner = self.s[self.i + 1 : end]
            self.i = end + 1
            return _Rule(inner) if ch == "<" else _Slot(inner.split(":", 1)[0])
        if ch in ")]>}":
            raise ValueError(f"unbalanced {ch!r} at offset {self.i}")
        start = self.i
        while self.i < len(self.s) and self.s[self.i] not in "()[]<>{}|;":
            self.i += 1
        return _Text(self.s[start : self.i])


class _Renderer:
    """Draws one concrete sentence from a parsed template."""

    def __init__(self, language: dict, rng: np.random.Generator) -> None:
        self.rules = language.get("expansion_rules", {})
        self.lists = language.get("lists", {})
        self.rng = rng
        self._parsed: dict[str, list] = {}

    def parsed(self, template: str):
        if template not in self._parsed:
            self._parsed[template] = _Parser(template).parse()
        return self._parsed[template]

    def sentence(self, template: str) -> str:
        return " ".join("".join(self._options(self.parsed(template))).split())

    def _options(self, options) -> Iterator[str]:
        yield from self._sequence(options[int(self.rng.integers(len(options)))])

    def _sequence(self, seq) -> Iterator[str]:
        for node in seq:
            yield from self._node(node)

    def _node(self, node) -> Iterator[str]:
        if isinstance(node, _Text):
            yield node.value
        elif isinstance(node, _Choice):
            # An optional part is left out half the time; otherwise one of its options, uniformly.
            if not (node.optional and self.rng.random() < 0.5):
                yield from self._options(node.options)
        elif isinstance(node, _Permutation):
            for k in self.rng.permutation(len(node.parts)):
                yield " "
                yield from self._sequence(node.parts[k])
                yield " "
        elif isinstance(node, _Rule):
            if node.name not in self.rules:
                raise ValueError(f"unknown expansion rule <{node.name}>")
            yield from self._options(self.parsed(self.rules[node.name]))
        elif isinstance(node, _Slot):
            yield self._slot_value(node.list_name)

    def _slot_value(self, name: str) -> str:
        spec = self.lists.get(name, {"wildcard": True})
        if "values" in spec:
            value = spec["values"][int(self.rng.integers(len(spec["values"])))]
            text = value["in"] if isinstance(value, dict) else str(value)
            return "".join(self._options(self.parsed(text)))
        if "range" in spec:
            lo, hi = int(spec["range"].get("from", 0)), int(spec["range"].get("to", 100))
            step = max(1, int(spec["range"].get("step", 1)))
            return str(lo + step * int(self.rng.integers((hi - lo) // step + 1)))
        fillers = WILDCARD_FILLERS.get(name, _GENERIC_FILLERS)
        return fillers[int(self.rng.integers(len(fillers)))]


# ------------------------------------------------------------------------------------------------- loader


def intents_data_dir() -> Path:
    """The folder of per-language JSON files the `home-assistant-intents` package ships."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"the real text set needs the {DISTRIBUTION} package, which is not installed "
            f"(pip install {DISTRIBUTION})"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def available_languages() -> list[str]:
    return sorted(p.stem for p in intents_data_dir().glob("*.json"))


def load_text_set(
    name: str = DEFAULT_SET,
    *,
    per_template: int = 2,
    min_templates: int = 2,
    max_per_label: int | None = None,
    seed: int = 0,
) -> tuple[list[str], list[str]]:
    """(sentences, labels) rendered from the intent templates of one language, in a deterministic order.

    `name` is "ha-intents-<language>" (e.g. "ha-intents-en", "ha-intents-de"). Each template yields up to
    `per_template` distinct sentences; intents with fewer than `min_templates` templates are dropped (too few
    to have a positive for every anchor); `max_per_label` caps the sentences per intent (the first ones
    rendered are kept). Duplicate sentences are kept once, under the first intent that produced them.
    """
    prefix = "ha-intents-"
    if not name.startswith(prefix):
        raise ConfigError(
            f"unknown text set {name!r}; the sets are ha-intents-<language>, e.g. {DEFAULT_SET}"
        )
    language = name[len(prefix) :]
    path = intents_data_dir() / f"{language}.json"
    if not path.is_file():
        raise ConfigError(
            f"text set {name!r}: {DISTRIBUTION} has no language {language!r}; "
            f"available: {', '.join(available_languages())}"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"text set {name!r}: {path} is not valid JSON ({exc})") from exc
    sentences: list[str] = []
    labels: list[str] = []
    seen: set[str] = set()
    for intent in sorted(data.get("intents", {})):
        templates = [
            t for block in data["intents"][intent].get("data", []) for t in block.get("sentences", [])
        ]
        if len(templates) < min_templates:
            continue
        # One RNG per intent, so adding or dropping an intent in a package update changes no other intent.
        renderer = _Renderer(data, np.random.default_rng([seed, _stable_int(intent)]))
        kept = 0
        for index, template in enumerate(templates):
            try:
                drawn = [renderer.sentence(template) for _ in range(per_template * 3)]
            except ValueError as exc:
                raise DataError(
                    f"text set {name!r}: {path}, intent {intent}, template {index}: {exc}"
                ) from exc
            fresh = [s for s in dict.fromkeys(drawn) if s and s not in seen][:per_template]
            for sentence in fresh:
                if max_per_label is not None and kept >= max_per_label:
                    break
                seen.add(sentence)
                sentences.append(sentence)
                labels.append(intent)
                kept += 1
    return sentences, labels


def _stable_int(text: str) -> int:
    import hashlib

    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


__all__ = ["DEFAULT_SET", "WILDCARD_FILLERS", "available_languages", "load_text_set"]
