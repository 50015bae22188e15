"""common.config: `${...}` references (keys, environment, cycles) and group choices given as file paths."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from common.config import load_config
from common.errors import ConfigError


@dataclass
class Model:
    name: str = "small"  # variant
    hidden_dim: int = 64  # width
    depth: int = 2  # blocks


@dataclass
class Head:
    in_dim: int = 0  # input width
    label: str = ""  # free text


@dataclass
class Config:
    lr: float = 1e-3  # learning rate
    data_dir: str = "data"  # dataset folder
    run_name: str = "run"  # run folder name
    model: Model = field(default_factory=Model)  # model section
    head: Head = field(default_factory=Head)  # head section
    widths: list[int] = field(default_factory=list)  # per-stage widths


def write(tmp_path: Path, text: str, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_reference_takes_the_referenced_value_with_the_fields_type(tmp_path):
    path = write(
        tmp_path,
        """\
        model: {hidden_dim: 128}
        head: {in_dim: "${model.hidden_dim}", label: "w${model.hidden_dim}-d${model.depth}"}
        widths: ["${head.in_dim}", 3]
        """,
    )
    cfg = load_config(Config, path)
    assert cfg.head.in_dim == 128 and isinstance(cfg.head.in_dim, int)
    assert cfg.head.label == "w128-d2"  # depth from the schema default
    assert cfg.widths == [128, 3]  # a chain of references


def test_references_resolve_after_merging_so_a_later_override_is_seen(tmp_path):
    path = write(tmp_path, "run_name: mae_${model.name}_${lr}\n")
    cfg = load_config(Config, path, overrides=["model.name=large", "lr=3e-4"])
    assert cfg.run_name == "mae_large_3e-4"
    # and a reference typed in an override
    cfg = load_config(Config, None, overrides=["head.in_dim=${model.depth}", "model.depth=5"])
    assert cfg.head.in_dim == 5


def test_environment_variables_with_and_without_default(tmp_path, monkeypatch):
    path = write(tmp_path, 'data_dir: "${env:TY_DATA_ROOT,/data}/cubes"\nrun_name: ${env:TY_RUN}\n')
    monkeypatch.setenv("TY_RUN", "nightly")
    monkeypatch.delenv("TY_DATA_ROOT", raising=False)
    cfg = load_config(Config, path)
    assert (cfg.data_dir, cfg.run_name) == ("/data/cubes", "nightly")
    monkeypatch.setenv("TY_DATA_ROOT", "/mnt/x")
    assert load_config(Config, path).data_dir == "/mnt/x/cubes"
    monkeypatch.delenv("TY_RUN")
    with pytest.raises(
        ConfigError, match=r"run_name refers to the environment variable TY_RUN, which is not set"
    ):
        load_config(Config, path)


def test_escaped_reference_stays_literal(tmp_path):
    cfg = load_config(Config, write(tmp_path, 'run_name: "cost_\\\\${lr}"\n'))
    assert cfg.run_name == "cost_${lr}"


@pytest.mark.parametrize(
    "text, pattern",
    [
        (
            "head: {in_dim: '${model.hidden}'}\n",
            r"head.in_dim refers to \$\{model.hidden\}, which is not a "
            r"config key; closest valid keys: model.hidden_dim",
        ),
        ("lr: ${lr}\n", r"cycle: lr -> lr"),
        ("model: {depth: '${head.in_dim}'}\nhead: {in_dim: '${model.depth}'}\n", r"cycle: .*model.depth"),
        ("head: {label: 'x${model}'}\n", r"is a section or list"),
        ("run_name: ${foo:bar}\n", r"a reference is a dotted config key"),
        ("model: {depth: '${run_name}'}\n", r"model.depth"),  # text where an int belongs: coercion error
    ],
)
def test_bad_references_are_config_errors_naming_the_key(tmp_path, text, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(Config, write(tmp_path, text))


def test_group_choice_by_path_replaces_the_section(tmp_path, monkeypatch):
    own = write(tmp_path, "name: mine\nhidden_dim: 96\n", "my_model.yaml")
    cfg = load_config(Config, write(tmp_path, "model: {depth: 7}\n"), overrides=[f"model={own}"])
    assert (cfg.model.name, cfg.model.hidden_dim, cfg.model.depth) == ("mine", 96, 2)  # depth: schema default
    monkeypatch.chdir(tmp_path)
    cfg = load_config(Config, None, overrides=["model=./my_model.yaml", "model.depth=3"])
    assert (cfg.model.hidden_dim, cfg.model.depth) == (96, 3)  # a dotted override applies on top
    with pytest.raises(ConfigError, match=r"config group file ./missing.yaml does not exist"):
        load_config(Config, None, overrides=["model=./missing.yaml"])
    bad = write(tmp_path, "hiden_dim: 1\n", "bad.yaml")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown config key 'model.hiden_dim'"):
        load_config(Config, None, overrides=[f"model={bad}"])
