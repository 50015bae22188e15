"""`${...}` references in config values, resolved by `common.config` after the layers are merged.

    model: {hidden_dim: 128}
    head: {in_dim: "${model.hidden_dim}"}          # the referenced value, with its own type
    run_name: "mae_${model.name}_${optim.lr}"      # text around a reference: the result is text
    data_dir: "${env:DATA_ROOT,/data}/cubes"       # an environment variable, with a default after the comma

A value that is exactly one reference takes the referenced value as it is (a number stays a number, a mapping
stays a mapping), so the schema's coercion still decides its type afterwards. `\\${` writes a literal `${`.

Why our own resolver and not OmegaConf's: OmegaConf is not a dependency, and these few rules (dotted keys,
`env:`, cycles, unknown keys) sit on the raw merged tree that `common.config` already builds, before its own
typed coercion, returning plain dataclasses.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from typing import Any

from common._coerce import Scalar
from common.errors import ConfigError

_REFERENCE = re.compile(r"(?<!\\)\$\{([^${}]*)\}")
_ESCAPED = "\\${"
_ENV_PREFIXES = ("env:", "oc.env:")


def has_reference(value: Any) -> bool:
    """True for a text value holding `${` (a reference, or an escaped one to unescape)."""
    text = _text_of(value)
    return text is not None and "${" in text


def resolve_tree(
    tree: Any, lookup: Callable[[str], Any], where: str, path: str = "", stack: tuple[str, ...] = ()
) -> Any:
    """`tree` with every `${...}` in its text values replaced; `lookup(dotted_key)` returns the raw merged value
    of a key (raising KeyError when there is none). `stack` holds the keys being resolved, to refuse cycles."""
    if isinstance(tree, Mapping):
        return {k: resolve_tree(v, lookup, where, f"{path}{k}.", stack) for k, v in tree.items()}
    if isinstance(tree, list):
        return [resolve_tree(v, lookup, where, path, stack) for v in tree]
    text = _text_of(tree)
    if text is None or "${" not in text:
        return tree
    return _resolve_text(text, tree, lookup, where, path.rstrip("."), stack)


def _text_of(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, Scalar) and isinstance(value.value, str):
        return value.text
    return None


def _resolve_text(text: str, original: Any, lookup, where: str, key: str, stack: tuple[str, ...]) -> Any:
    if not stack or stack[-1] != key:
        stack = (*stack, key)  # the keys being resolved, outermost first
    whole = _REFERENCE.fullmatch(text)
    if whole:  # the value is one reference: keep the referenced value's own type
        return _reference_value(whole.group(1), lookup, where, key, stack)

    def substitute(match: re.Match) -> str:
        value = _reference_value(match.group(1), lookup, where, key, stack)
        if isinstance(value, (Mapping, list)):
            raise ConfigError(
                f"{where}: {key} = {text!r}: ${{{match.group(1)}}} is a section or list, which cannot be "
                "part of a text; give the reference alone as the value."
            )
        return value.text if isinstance(value, Scalar) else str(value)

    resolved = _REFERENCE.sub(substitute, text).replace(_ESCAPED, "${")
    if resolved == text:
        return original
    return Scalar(resolved, resolved) if isinstance(original, Scalar) else resolved


def _reference_value(expr: str, lookup, where: str, key: str, stack: tuple[str, ...]) -> Any:
    expr = expr.strip()
    for prefix in _ENV_PREFIXES:
        if expr.startswith(prefix):
            return _environment(expr[len(prefix) :], where, key)
    if not expr or ":" in expr:
        raise ConfigError(
            f"{where}: {key} refers to ${{{expr}}}; a reference is a dotted config key (${{model.hidden_dim}}) "
            "or an environment variable (${env:NAME} or ${env:NAME,default})."
        )
    if expr in stack:
        cycle = " -> ".join((*stack[stack.index(expr) :], expr))
        raise ConfigError(f"{where}: the config references form a cycle: {cycle}")
    try:
        value = lookup(expr)
    except KeyError as exc:
        hint = exc.args[0] if exc.args and isinstance(exc.args[0], str) else ""
        raise ConfigError(f"{where}: {key} refers to ${{{expr}}}, which is not a config key{hint}") from None
    # The referenced value may hold references itself: resolve them with the keys in progress on the stack.
    return resolve_tree(value, lookup, where, f"{expr}.", stack)


def _environment(spec: str, where: str, key: str) -> Any:
    name, comma, default = spec.partition(",")
    name = name.strip()
    if name in os.environ:
        text = os.environ[name]
    elif comma:
        text = default.strip()
    else:
        raise ConfigError(
            f"{where}: {key} refers to the environment variable {name}, which is not set "
            f"(give a default: ${{env:{name},value}})."
        )
    return Scalar(text, text)
