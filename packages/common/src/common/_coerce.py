"""Coercion of config values to dataclass field types (private helper of `common.config`).

The declared type decides what a value means. YAML 1.1 (PyYAML) reads `1e-3` as text and `no` as False, and
click hands over already-typed values, so every value goes through one recursive function over the type:
int, float, bool, str, Path, Optional/Union, list[X], tuple[X, ...], tuple[X, Y], dict[str, X], Literal, Enum,
nested dataclasses, and Any (left as parsed).
"""

from __future__ import annotations

import dataclasses
import functools
import sys
import types
import typing
from collections.abc import Mapping
from enum import Enum
from pathlib import PurePath
from typing import Any, Literal, Union

_TRUE = {"true", "yes", "y", "on", "1"}
_FALSE = {"false", "no", "n", "off", "0"}
_NULL = {"null", "none", "~", ""}


@dataclasses.dataclass(frozen=True)
class Scalar:
    """A parsed YAML/override value together with the text it was written as.

    A `str` field takes `text` (so `no` stays "no" and `1.10` stays "1.10"); every other type takes `value`.
    """

    value: Any
    text: str


class CoercionError(ValueError):
    """A value that does not fit its field; the message names the dotted key."""


def unwrap(value: Any) -> Any:
    """Strip `Scalar` wrappers recursively, leaving plain parsed python values (for `Any` fields)."""
    if isinstance(value, Scalar):
        return unwrap(value.value)
    if isinstance(value, Mapping):
        return {k: unwrap(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unwrap(v) for v in value]
    return value


@functools.cache
def dataclass_fields(cls: type) -> dict[str, Any]:
    """{field name: resolved type} of a dataclass's init fields (string annotations resolved)."""
    try:
        hints = typing.get_type_hints(cls, globalns=vars(sys.modules[cls.__module__]))
    except NameError as exc:  # a schema bug (e.g. a class defined inside a function), not bad user input
        raise TypeError(f"cannot resolve the field types of config schema {cls.__qualname__}: {exc}") from exc
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def section_class(tp: Any) -> type | None:
    """The dataclass behind a field typed `SomeConfig` or `SomeConfig | None`, else None."""
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return tp
    if _is_union(tp):
        members = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(members) == 1 and dataclasses.is_dataclass(members[0]):
            return members[0]
    return None


def type_name(tp: Any) -> str:
    """Readable name of a field type for error messages."""
    if tp is Any:
        return "any value"
    if _is_union(tp):
        return " or ".join("null" if a is type(None) else type_name(a) for a in typing.get_args(tp))
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if isinstance(tp, type) and issubclass(tp, Enum):
        return "one of " + ", ".join(repr(m.value) for m in tp)
    if dataclasses.is_dataclass(tp):
        return "a mapping with keys " + ", ".join(dataclass_fields(tp))
    if origin is not None:
        args = ", ".join("..." if a is Ellipsis else type_name(a) for a in typing.get_args(tp))
        return f"{origin.__name__}[{args}]"
    return getattr(tp, "__name__", str(tp))


def coerce(value: Any, tp: Any, key: str) -> Any:
    """`value` converted to type `tp`; CoercionError naming `key` when it does not fit."""
    if tp is Any or tp is object:
        return unwrap(value)
    if _is_union(tp):
        return _coerce_union(value, tp, key)
    origin = typing.get_origin(tp)
    if origin is Literal:
        return _coerce_literal(value, tp, key)
    if tp is str:
        return _coerce_str(value, key)
    raw = value.value if isinstance(value, Scalar) else value
    if origin in (list, tuple, dict) or tp in (list, tuple, dict):
        return _coerce_container(raw, tp, origin or tp, key)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _coerce_dataclass(raw, tp, key)
    if isinstance(tp, type) and issubclass(tp, Enum):
        return _coerce_enum(value, tp, key)
    if tp is bool:
        return _coerce_bool(raw, key)
    if tp is int:
        return _coerce_int(raw, key)
    if tp is float:
        return _coerce_float(raw, key)
    if isinstance(tp, type) and issubclass(tp, PurePath):
        if isinstance(raw, (str, PurePath)):
            return tp(raw)
        raise _mismatch(key, tp, value)
    if isinstance(tp, type) and isinstance(raw, tp):
        return raw
    raise _mismatch(key, tp, value)


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType)


def _mismatch(key: str, tp: Any, value: Any) -> CoercionError:
    shown = value.text if isinstance(value, Scalar) else value
    return CoercionError(f"{key}: expected {type_name(tp)}, got {shown!r}")


def _coerce_union(value: Any, tp: Any, key: str) -> Any:
    members = typing.get_args(tp)
    raw = value.value if isinstance(value, Scalar) else value
    if type(None) in members:
        if raw is None:
            return None
        # "none"/"null" typed on a command line means None, except where the text itself is a valid value.
        text = value.text if isinstance(value, Scalar) else raw if isinstance(raw, str) else None
        if text is not None and text.strip().lower() in _NULL and str not in members:
            return None
    for member in members:
        if member is type(None):
            continue
        try:
            return coerce(value, member, key)
        except CoercionError:
            continue
    raise _mismatch(key, tp, value)


def _coerce_literal(value: Any, tp: Any, key: str) -> Any:
    raw = value.value if isinstance(value, Scalar) else value
    text = value.text if isinstance(value, Scalar) else (raw if isinstance(raw, str) else None)
    for option in typing.get_args(tp):
        if isinstance(option, str):
            if text == option or raw == option:
                return option
        elif type(raw) is type(option) and raw == option:  # type check: True must not match 1
            return option
        elif isinstance(raw, str):  # '16' for Literal[16, 32]
            try:
                if coerce(raw, type(option), key) == option:
                    return option
            except CoercionError:
                pass
    raise _mismatch(key, tp, value)


def _coerce_str(value: Any, key: str) -> str:
    if isinstance(value, Scalar):
        return value.value if isinstance(value.value, str) else value.text
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float, PurePath)) and not isinstance(value, bool):
        return str(value)
    raise _mismatch(key, str, value)


def _coerce_bool(raw: Any, key: str) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, int) and raw in (0, 1):
        return bool(raw)
    if isinstance(raw, str):
        if raw.strip().lower() in _TRUE:
            return True
        if raw.strip().lower() in _FALSE:
            return False
    raise CoercionError(f"{key}: expected a boolean (true/false, yes/no, on/off, 1/0), got {raw!r}")


def _coerce_int(raw: Any, key: str) -> int:
    if isinstance(raw, bool):
        raise _mismatch(key, int, raw)
    if isinstance(raw, int):
        return raw
    if isinstance(raw, float) and raw.is_integer():
        return int(raw)
    if isinstance(raw, str):
        text = raw.strip()
        for parse in (int, lambda s: int(s, 0)):  # "1_000", then "0x10"
            try:
                return parse(text)
            except ValueError:
                pass
        try:
            number = float(text)  # "1e3" -> 1000
        except ValueError:
            number = None
        if number is not None and number.is_integer():
            return int(number)
    raise _mismatch(key, int, raw)


def _coerce_float(raw: Any, key: str) -> float:
    if isinstance(raw, bool):
        raise _mismatch(key, float, raw)
    if isinstance(raw, (int, float)):
        return float(raw)
    if isinstance(raw, str):
        try:
            return float(raw.strip())  # handles "1e-3", which YAML 1.1 leaves as text
        except ValueError:
            pass
    raise _mismatch(key, float, raw)


def _coerce_enum(value: Any, tp: type[Enum], key: str) -> Enum:
    raw = value.value if isinstance(value, Scalar) else value
    if isinstance(raw, tp):
        return raw
    texts = {raw, value.text} if isinstance(value, Scalar) else {raw}
    for member in tp:
        for candidate in texts:
            if candidate == member.value or (
                isinstance(candidate, str) and candidate.lower() == member.name.lower()
            ):
                return member
    raise _mismatch(key, tp, value)


def _coerce_container(raw: Any, tp: Any, origin: Any, key: str) -> Any:
    args = typing.get_args(tp)
    if origin is dict:
        if not isinstance(raw, Mapping):
            raise _mismatch(key, tp, raw)
        key_type, value_type = args if args else (Any, Any)
        return {
            coerce(k, key_type, f"{key}.{k}"): coerce(v, value_type, f"{key}.{k}") for k, v in raw.items()
        }
    if not isinstance(raw, (list, tuple)):
        raise _mismatch(key, tp, raw)
    if origin is list:
        item_type = args[0] if args else Any
        return [coerce(v, item_type, f"{key}[{i}]") for i, v in enumerate(raw)]
    # tuple: tuple[X, ...] (any length) or tuple[X, Y, Z] (exactly that length)
    if not args or (len(args) == 2 and args[1] is Ellipsis):
        item_type = args[0] if args else Any
        return tuple(coerce(v, item_type, f"{key}[{i}]") for i, v in enumerate(raw))
    if len(raw) != len(args):
        raise CoercionError(
            f"{key}: expected {len(args)} values ({type_name(tp)}), got {len(raw)}: {unwrap(raw)!r}"
        )
    return tuple(coerce(v, t, f"{key}[{i}]") for i, (v, t) in enumerate(zip(raw, args, strict=True)))


def _coerce_dataclass(raw: Any, cls: type, key: str) -> Any:
    """A complete instance (for dataclasses inside lists/dicts; top-level sections are merged in config.py)."""
    if isinstance(raw, cls):
        return raw
    if not isinstance(raw, Mapping):
        raise _mismatch(key, cls, raw)
    fields = dataclass_fields(cls)
    unknown = [k for k in raw if k not in fields]
    if unknown:
        raise CoercionError(f"unknown config key {key + '.' + unknown[0]!r}; valid keys: {', '.join(fields)}")
    try:
        return cls(**{name: coerce(v, fields[name], f"{key}.{name}") for name, v in raw.items()})
    except TypeError as exc:  # a required field without a default is missing
        raise CoercionError(f"{key}: {exc}") from None


__all__ = ["CoercionError", "Scalar", "coerce", "dataclass_fields", "section_class", "type_name", "unwrap"]
