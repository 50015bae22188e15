"""Typed configuration: dataclass schemas filled from YAML, config groups, CLI options and `a.b=value` overrides.

Precedence, low to high:
    schema defaults < YAML `source` < `group=name` selections < typed CLI options < `a.b=value` overrides

Every layer is validated against the schema as it is applied, so an error names the layer it came from, the
full dotted key, and the closest valid keys. Values are coerced to the declared field types (see
`common._coerce`): YAML 1.1 reads `1e-3` as text and `no` as False, so the field type decides, and a `str` field
keeps the text exactly as written.

Why not Hydra: it owns the command line and the working directory, so it cannot sit under click with "only
typed options override"; what the packages need from it (group files, dotted overrides) is small enough to
keep here, next to the typed coercion and close-key suggestions, returning plain dataclass instances.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import importlib.resources
from collections.abc import Mapping, Sequence
from enum import Enum
from pathlib import Path, PurePath
from typing import Any, TypeVar

import yaml

from common._coerce import (
    CoercionError,
    Scalar,
    coerce,
    dataclass_fields,
    section_class,
    unwrap,
)
from common.errors import ConfigError
from common.interpolation import has_reference, resolve_tree
from common.runs import atomic_write_text

T = TypeVar("T")

_YAML_SUFFIXES = (".yaml", ".yml")


# ----------------------------------------------------------------------------------------------- public API


def load_config(
    schema: type[T],
    source: str | Path | Mapping[str, Any] | None = None,
    *,
    package: str | None = None,
    cli: Mapping[str, object] | None = None,
    overrides: Sequence[str] = (),
) -> T:
    """Build a `schema` instance from defaults, a YAML file or bundled config, groups, CLI options, overrides.

    `source`: a YAML path, or the name of a config bundled in `<package>/configs/` ("default_config" or
    "default_config.yaml"), or an already-parsed mapping such as the config stored in a checkpoint (validated
    and coerced exactly like a file). `cli`: {dotted key: value} of options the user typed (`common.cli.typed_options`).
    `overrides`: "a.b=value" (value parsed as YAML, then coerced to the field type) or "group=name" choosing
    `<package>/configs/<group>/<name>.yaml` as section `group`. A leading "+" is ignored (Hydra habit).
    A YAML config may start with a Hydra-style `defaults: [{group: name}, ...]` list: those group files are
    applied first and the rest of the file on top of them.
    """
    if not dataclasses.is_dataclass(schema) or not isinstance(schema, type):
        raise TypeError(f"load_config needs a dataclass type as schema, got {schema!r}")
    groups, dotted = _split_overrides(overrides, package, schema)
    # (where, raw tree, replaces its sections): every layer is read first, so `${...}` references resolve
    # against the merged result of all of them, and only then validated and coerced one by one.
    raw_layers: list[tuple[str, dict[str, Any], bool]] = []

    if isinstance(source, Mapping):
        data, where = dict(source), "the given config mapping"
    elif source is not None:
        text, where = _read_source(source, package)
        data = _parse_yaml(text, where)
    if source is not None:
        for group, name in _defaults_list(schema, data, where):
            raw_layers.append((*_group_file(package, group, name, where), False))
        raw_layers.append((where, data, False))

    for group, name in groups:
        # A selected group replaces the whole section: keys the group file omits fall back to schema defaults,
        # not to whatever the YAML source said for the previous choice.
        raw_layers.append((*_group_file(package, group, name, f"override '{group}={name}'"), True))

    if cli:
        raw_layers.append(("command-line options", _expand_dotted(cli, "command-line options"), False))

    for key, text, item in dotted:
        where = f"override '{item}'"
        raw_layers.append((where, _expand_dotted({key: _parse_override_value(text)}, where), False))

    lookup = _reference_lookup(schema, raw_layers)
    layers: dict[str, Any] = {}
    for where, tree, replaces in raw_layers:
        if _holds_reference(tree):
            tree = resolve_tree(tree, lookup, where)
        validated = _validated(schema, tree, where)
        if replaces:
            layers.update(validated)
        else:
            _merge_into(layers, validated)

    return _build(schema, layers, base=None, key="")


def require_at_least(cfg: Any, minimum: float, *names: str, prefix: str = "") -> None:
    """ConfigError naming the first of `names` whose value in `cfg` is below `minimum` (a batch size of 0 or
    -2 epochs is nonsense that would otherwise fail much later, or not at all)."""
    for name in names:
        value = getattr(cfg, name)
        if value < minimum:
            raise ConfigError(f"{prefix}{name} must be >= {minimum}, got {value}.")


def config_to_dict(cfg: Any) -> dict:
    """A plain nested dict of the config (YAML- and JSON-safe: enums -> values, paths -> str, tuples -> lists)."""
    if not dataclasses.is_dataclass(cfg) or isinstance(cfg, type):
        raise TypeError(f"config_to_dict needs a dataclass instance, got {cfg!r}")
    return _plain(cfg)


def dump_config(cfg: Any) -> str:
    """YAML text of the config, keys in declaration order; `load_config(type(cfg), <that file>)` gives it back."""
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=False, allow_unicode=True)


def save_config(cfg: Any, path: str | Path) -> Path:
    """Atomically write `dump_config(cfg)` to `path` (e.g. the run folder's config.yaml)."""
    path = Path(path)
    atomic_write_text(path, dump_config(cfg))
    return path


def bundled_configs(package: str) -> list[str]:
    """Names (without .yaml) of the configs bundled in `<package>/configs/`, for --help texts."""
    folder = _configs_dir(package)
    if not folder.is_dir():
        return []
    return sorted(
        _yaml_stem(entry.name) for entry in folder.iterdir() if entry.is_file() and _is_yaml(entry.name)
    )


def bundled_groups(package: str) -> dict[str, list[str]]:
    """{group: [choice names]} for every `<package>/configs/<group>/` folder holding YAML files."""
    folder = _configs_dir(package)
    if not folder.is_dir():
        return {}
    groups = {}
    for entry in folder.iterdir():
        if entry.is_dir():
            names = sorted(_yaml_stem(f.name) for f in entry.iterdir() if f.is_file() and _is_yaml(f.name))
            if names:
                groups[entry.name] = names
    return dict(sorted(groups.items()))


# ------------------------------------------------------------------------------------------- sources, YAML


def _configs_dir(package: str):
    return importlib.resources.files(package) / "configs"


def _is_yaml(name: str) -> bool:
    return name.endswith(_YAML_SUFFIXES)


def _yaml_stem(name: str) -> str:
    for suffix in _YAML_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _bundled_file(folder, name: str):
    """The bundled `<name>.yaml`/`.yml` (or `name` itself if it has the suffix) in `folder`, or None."""
    candidates = [name] if _is_yaml(name) else [name + suffix for suffix in _YAML_SUFFIXES]
    for candidate in candidates:
        entry = folder / candidate
        if entry.is_file():
            return entry
    return None


def _read_source(source: str | Path, package: str | None) -> tuple[str, str]:
    """(YAML text, description for messages) of a config path or bundled config name."""
    path = Path(source)
    if path.is_file():
        return path.read_text(encoding="utf-8"), str(path)
    if package is not None and not isinstance(source, PurePath) and "/" not in str(source):
        entry = _bundled_file(_configs_dir(package), str(source))
        if entry is not None:
            return entry.read_text(encoding="utf-8"), f"bundled config {package}/configs/{entry.name}"
    known = bundled_configs(package) if package is not None else []
    hint = f"; bundled configs of {package}: {', '.join(known)}" if known else ""
    if path.exists():
        raise ConfigError(f"config {source} is not a file{hint}")
    raise ConfigError(f"config file {source} does not exist and is not the name of a bundled config{hint}")


def _parse_yaml(text: str, where: str) -> dict[str, Any]:
    """Parse YAML into dicts/lists whose non-text scalars are `Scalar(value, text)`: the field type decides later
    whether `no` means False (bool field) or "no" (str field)."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        tree = {} if node is None else _from_node(node, loader, where)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where} is not valid YAML: {exc}") from None
    finally:
        loader.dispose()
    if tree is None:
        return {}
    if not isinstance(tree, dict):
        raise ConfigError(
            f"{where} must hold a mapping of config keys at the top level, not {type(tree).__name__}"
        )
    return tree


def _from_node(node: yaml.Node, loader: yaml.SafeLoader, where: str) -> Any:
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_object(node, deep=True)
        return value if isinstance(value, str) else Scalar(value, node.value)
    if isinstance(node, yaml.SequenceNode):
        return [_from_node(child, loader, where) for child in node.value]
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)  # resolves `<<: *anchor` merge keys
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise ConfigError(
                    f"{where}: mapping keys must be plain names (line {key_node.start_mark.line + 1})"
                )
            # The key as written: `no:` stays "no" (SafeLoader would make it False).
            out[key_node.value] = _from_node(value_node, loader, where)
        return out
    raise ConfigError(f"{where}: unsupported YAML node {node!r}")


def _parse_override_value(text: str) -> Scalar:
    """An override's value: parsed as YAML ("[1, 2]" -> list, "1e-3" -> 1e-3) but keeping the raw text, which a
    `str` field uses unchanged when the parse is not text (`name=no`, `version=1.10`, `title=a: b`)."""
    try:
        parsed = _parse_yaml(f"v: {text}", "override").get("v") if text.strip() else ""
    except ConfigError:
        return Scalar(text, text)  # not YAML: plain text, fine for str fields, a clear error for others
    value = parsed.value if isinstance(parsed, Scalar) else parsed
    stripped = text.strip()
    quoted = len(stripped) >= 2 and stripped[0] == stripped[-1] and stripped[0] in "'\""
    if isinstance(value, str) and not quoted:
        value = text  # plain text stays exactly as typed (YAML would drop a trailing "# ..." as a comment)
    return Scalar(value, text)


def _defaults_list(schema: type, data: dict[str, Any], where: str) -> list[tuple[str, str]]:
    """Pop a Hydra-style `defaults:` list (when `defaults` is not a schema field) into (group, name) pairs."""
    if "defaults" in dataclass_fields(schema) or "defaults" not in data:
        return []
    items = data.pop("defaults")
    pairs = []
    for item in items if isinstance(items, list) else [items]:
        if item == "_self_":
            continue
        if not (isinstance(item, dict) and len(item) == 1):
            raise ConfigError(f"{where}: each `defaults` entry must be `- group: name`, got {unwrap(item)!r}")
        ((group, name),) = item.items()
        pairs.append((group, str(unwrap(name))))
    return pairs


def _group_file(package: str | None, group: str, name: str, where: str) -> tuple[str, dict[str, Any]]:
    """(description, {group: raw section}) from `<package>/configs/<group>/<name>.yaml`, or from the YAML file
    `name` names when it is a path (`model=./my_model.yaml`): a team's own variant of a bundled group."""
    if _is_path_choice(name):
        path = Path(name).expanduser()
        if not path.is_file():
            raise ConfigError(f"{where}: config group file {name} does not exist")
        file_where = f"config group file {path}"
        return file_where, {group: _parse_yaml(path.read_text(encoding="utf-8"), file_where)}
    if package is None:
        raise ConfigError(f"{where}: config groups need a package with bundled configs (or a YAML file path)")
    folder = _configs_dir(package) / group
    entry = _bundled_file(folder, name) if folder.is_dir() else None
    if entry is None:
        choices = bundled_groups(package).get(group, [])
        listed = f"; available: {', '.join(choices)}" if choices else ""
        raise ConfigError(
            f"{where}: config group {group!r} has no choice {name!r}{listed} (or give a YAML file path)"
        )
    file_where = f"bundled config {package}/configs/{group}/{entry.name}"
    return file_where, {group: _parse_yaml(entry.read_text(encoding="utf-8"), file_where)}


def _is_path_choice(name: str) -> bool:
    """A group choice written as a file path rather than a bundled name: it has a folder part, or it is a YAML
    file that exists where the command runs."""
    return "/" in name or "\\" in name or (_is_yaml(name) and Path(name).is_file())


def _split_overrides(overrides: Sequence[str], package: str | None, schema: type):
    """Separate `group=name` selections from `a.b=value` overrides (groups apply first, whatever the order).

    A group is a folder of bundled choices, or any top-level section of the schema given a YAML file path
    (`model=./my_model.yaml`), so every package has config groups for its sections."""
    group_names = set(bundled_groups(package)) if package is not None else set()
    sections = {name for name, tp in dataclass_fields(schema).items() if section_class(tp) is not None}
    groups: list[tuple[str, str]] = []
    dotted: list[tuple[str, str, str]] = []
    for item in overrides:
        stripped = item.lstrip("+")
        key, sep, value = stripped.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. training.lr=1e-3)")
        if key in group_names or (key in sections and _is_yaml(value.strip())):
            groups.append((key, value.strip()))
        else:
            dotted.append((key, value, item))
    return groups, dotted


def _expand_dotted(flat: Mapping[str, object], where: str) -> dict[str, Any]:
    """{"a.b": v, "c": w} -> {"a": {"b": v}, "c": w}."""
    tree: dict[str, Any] = {}
    for dotted_key, value in flat.items():
        parts = str(dotted_key).split(".")
        if any(not p for p in parts):
            raise ConfigError(f"{where}: {dotted_key!r} is not a valid dotted config key")
        node = tree
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{where}: {dotted_key!r} conflicts with a value set for {part!r}")
        node[parts[-1]] = value
    return tree


# ------------------------------------------------------------------------------------------ ${...} references


def _holds_reference(tree: Any) -> bool:
    if isinstance(tree, Mapping):
        return any(_holds_reference(v) for v in tree.values())
    if isinstance(tree, list):
        return any(_holds_reference(v) for v in tree)
    return has_reference(tree)


def _reference_lookup(schema: type, raw_layers: list[tuple[str, dict[str, Any], bool]]):
    """`lookup(dotted_key)` over the schema defaults merged with every raw layer (built on first use)."""
    merged: dict[str, Any] = {}

    def lookup(dotted_key: str) -> Any:
        if not merged:
            merged.update(_defaults_tree(schema))
            for _, tree, replaces in raw_layers:
                for name, value in tree.items():
                    if replaces:  # a group choice: its file on top of the section's schema defaults
                        merged[name] = _deep_merge(_defaults_tree(schema).get(name) or {}, value)
                    elif isinstance(value, dict) and isinstance(merged.get(name), dict):
                        _merge_into(merged[name], value)
                    else:
                        merged[name] = copy.deepcopy(value)
        node: Any = merged
        for part in dotted_key.split("."):
            if not isinstance(node, Mapping) or part not in node:
                close = difflib.get_close_matches(dotted_key, _dotted_keys(schema), n=3, cutoff=0.6)
                raise KeyError(f"; closest valid keys: {', '.join(close)}" if close else "")
            node = node[part]
        return node

    return lookup


def _defaults_tree(cls: type) -> dict[str, Any]:
    """The schema's default values as a plain nested dict (fields without a default are left out)."""
    tree: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            tree[f.name] = _plain(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            tree[f.name] = _plain(f.default_factory())
        elif section_class(dataclass_fields(cls).get(f.name)) is not None:
            tree[f.name] = _defaults_tree(section_class(dataclass_fields(cls)[f.name]))
    return tree


# --------------------------------------------------------------------------------- validation and building


def _validated(schema: type, data: Any, where: str) -> dict[str, Any]:
    """Check one layer against the schema and coerce its values; raise ConfigError naming `where`."""
    try:
        return _section(data, schema, "", schema)
    except CoercionError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _section(data: Any, cls: type, prefix: str, root: type) -> dict[str, Any]:
    """A partial, coerced {field: value} for dataclass section `cls`; sub-sections stay partial dicts so later
    layers and the schema defaults fill in what this layer leaves out."""
    data = unwrap(data) if isinstance(data, Scalar) else data
    if not isinstance(data, Mapping):
        keys = ", ".join(dataclass_fields(cls))
        raise CoercionError(f"{prefix or 'the config'} must be a mapping (keys: {keys}), got {data!r}")
    fields = dataclass_fields(cls)
    out: dict[str, Any] = {}
    for name, value in data.items():
        key = f"{prefix}{name}"
        if name not in fields:
            raise CoercionError(_unknown_key_message(key, list(fields), prefix, root))
        sub = section_class(fields[name])
        if sub is not None and isinstance(value, Mapping):
            out[name] = _section(value, sub, f"{key}.", root)
        else:
            out[name] = coerce(value, fields[name], key)
    return out


def _build(cls: type[T], layer: dict[str, Any], base: Any, key: str) -> T:
    """Instantiate `cls` from the merged layers, taking missing values from `base` (an instance) or defaults."""
    kwargs = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if base is not None:
            default = copy.deepcopy(getattr(base, f.name))
        elif f.default is not dataclasses.MISSING:
            default = copy.deepcopy(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = dataclasses.MISSING
        if f.name not in layer:
            if default is dataclasses.MISSING:
                raise ConfigError(f"config key {key}{f.name} is required and has no default")
            kwargs[f.name] = default
            continue
        value = layer[f.name]
        sub = section_class(dataclass_fields(cls)[f.name])
        if sub is not None and isinstance(value, dict):
            sub_base = default if dataclasses.is_dataclass(default) else None
            kwargs[f.name] = _build(sub, value, sub_base, f"{key}{f.name}.")
        elif isinstance(value, dict) and isinstance(default, dict):
            kwargs[f.name] = _deep_merge(default, value)
        else:
            kwargs[f.name] = value
    try:
        return cls(**kwargs)
    except ValueError as exc:  # a schema's __post_init__ rejecting a combination of values
        raise ConfigError(f"invalid config{' section ' + repr(key[:-1]) if key else ''}: {exc}") from None


def _merge_into(target: dict[str, Any], layer: dict[str, Any]) -> None:
    """Deep-merge `layer` into `target` in place: mappings merge key by key, anything else replaces."""
    for name, value in layer.items():
        if isinstance(value, dict) and isinstance(target.get(name), dict):
            _merge_into(target[name], value)
        else:
            target[name] = copy.deepcopy(value)


def _deep_merge(base: dict, update: dict) -> dict:
    merged = copy.deepcopy(base)
    _merge_into(merged, update)
    return merged


def _unknown_key_message(key: str, siblings: list[str], prefix: str, root: type) -> str:
    """ "unknown config key 'a.lrr'; closest valid keys: a.lr, ..." using both sibling and full dotted names."""
    name = key[len(prefix) :]
    all_keys = _dotted_keys(root)
    # Same leaf name elsewhere first (the user wrote `lr` for `optim.lr`), then close siblings, then close paths.
    candidates = [k for k in all_keys if k.rsplit(".", 1)[-1] == name]
    candidates += [prefix + s for s in difflib.get_close_matches(name, siblings, n=3, cutoff=0.6)]
    # Keys elsewhere in the tree (a wrong section: `optimizer.lr` for `optim.lr`). Siblings were compared above
    # by their own names; comparing full paths that share this prefix would only measure the shared prefix.
    elsewhere = [k for k in all_keys if not k.startswith(prefix) and not prefix.startswith(k + ".")]
    candidates += difflib.get_close_matches(key, elsewhere, n=3, cutoff=0.7)
    closest = list(dict.fromkeys(candidates))[:3]
    if closest:
        return f"unknown config key {key!r}; closest valid keys: {', '.join(closest)}"
    where = f"in section {prefix[:-1]!r}" if prefix else "at the top level"
    return f"unknown config key {key!r}; valid keys {where}: {', '.join(siblings)}"


def _dotted_keys(cls: type, prefix: str = "") -> list[str]:
    keys = []
    for name, tp in dataclass_fields(cls).items():
        keys.append(prefix + name)
        sub = section_class(tp)
        if sub is not None:
            keys += _dotted_keys(sub, f"{prefix}{name}.")
    return keys


def _plain(value: Any) -> Any:
    """Dataclass/enum/path/tuple tree -> plain YAML-safe python values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Enum):
        return _plain(value.value)
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalar
        return value.item()
    return value
