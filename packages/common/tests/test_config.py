"""common.config: precedence, coercion, groups, error messages, round trip, click integration."""

from __future__ import annotations

import enum
import importlib
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import click
import pytest
from click.testing import CliRunner

from common.cli import typed_options
from common.config import (
    bundled_configs,
    bundled_groups,
    config_to_dict,
    dump_config,
    load_config,
    save_config,
)
from common.errors import ConfigError


class Norm(enum.Enum):
    BATCH = "batch"
    LAYER = "layer"


@dataclass
class ModelConfig:
    depth: int = 2  # number of blocks
    width: int = 16  # hidden size
    norm: Norm = Norm.BATCH  # normalisation layer
    patch_size: tuple[int, int] = (4, 4)  # (spatial, spectral)


@dataclass
class OptimConfig:
    lr: float = 1e-3  # learning rate
    weight_decay: float = 0.0  # AdamW decay
    betas: tuple[float, ...] = (0.9, 0.999)  # Adam betas


@dataclass
class Stage:
    name: str = "stage"  # stage label
    epochs: int = 1  # epochs in the stage


@dataclass
class TrainConfig:
    seed: int = 0  # global seed
    epochs: int = 10  # training epochs
    name: str = "run"  # run name
    debug: bool = False  # verbose logging
    mode: Literal["min", "max"] = "min"  # monitored direction
    data_dir: Path | None = None  # dataset folder
    max_steps: int | None = None  # stop early
    model: ModelConfig = field(default_factory=ModelConfig)  # model section
    optim: OptimConfig = field(default_factory=OptimConfig)  # optimizer section
    tags: dict[str, str] = field(default_factory=dict)  # tracker tags
    extra: dict[str, Any] = field(default_factory=dict)  # free-form
    stages: list[Stage] = field(default_factory=list)  # progressive stages
    devices: list[int] = field(default_factory=lambda: [0])  # device ids
    precision: Literal[16, 32, "bf16"] = 32  # numeric precision


@dataclass
class Checked:
    low: int = 0  # lower bound
    high: int = 1  # upper bound

    def __post_init__(self):
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must not exceed high ({self.high})")


@dataclass
class Required:
    path: str  # no default
    n: int = 1  # count


PKG = "trainyard_cfgtest_pkg"


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> str:
    """A throwaway importable package with bundled configs and a `model` group."""
    root = tmp_path_factory.mktemp("pkgroot")
    configs = root / PKG / "configs"
    (configs / "model").mkdir(parents=True)
    (root / PKG / "__init__.py").write_text("")
    (configs / "default_config.yaml").write_text(
        textwrap.dedent(
            """\
            epochs: 20
            model:
              depth: 3
              width: 32
            optim:
              lr: 5e-4
            """
        )
    )
    (configs / "composed.yaml").write_text(
        textwrap.dedent(
            """\
            defaults:
              - model: large
              - _self_
            model:
              depth: 7
            """
        )
    )
    (configs / "model" / "small.yaml").write_text("depth: 1\n")
    (configs / "model" / "large.yaml").write_text("depth: 12\nwidth: 256\nnorm: layer\n")
    sys.path.insert(0, str(root))
    importlib.invalidate_caches()
    yield PKG
    sys.path.remove(str(root))
    sys.modules.pop(PKG, None)


def write(tmp_path: Path, text: str, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


# ------------------------------------------------------------------------------------------------ precedence


def test_schema_defaults_when_nothing_given():
    assert load_config(TrainConfig) == TrainConfig()


def test_each_precedence_level_overrides_the_one_below(package):
    # defaults: depth 2 < YAML: 3 < group large: 12 < cli: 20 < override: 30
    assert load_config(TrainConfig).model.depth == 2
    assert load_config(TrainConfig, "default_config", package=package).model.depth == 3
    assert (
        load_config(TrainConfig, "default_config", package=package, overrides=["model=large"]).model.depth
        == 12
    )
    cfg = load_config(
        TrainConfig, "default_config", package=package, cli={"model.depth": 20}, overrides=["model=large"]
    )
    assert cfg.model.depth == 20
    cfg = load_config(
        TrainConfig,
        "default_config",
        package=package,
        cli={"model.depth": 20},
        # the dotted override comes first in the list but still wins over the group and the cli
        overrides=["model.depth=30", "model=large"],
    )
    assert cfg.model.depth == 30
    assert cfg.model.width == 256  # from the group file
    assert cfg.epochs == 20 and cfg.optim.lr == pytest.approx(5e-4)  # YAML values outside the group survive


def test_yaml_path_and_bundled_name_with_or_without_suffix(package, tmp_path):
    path = write(tmp_path, "epochs: 4\n")
    assert load_config(TrainConfig, path).epochs == 4
    assert load_config(TrainConfig, str(path)).epochs == 4
    assert load_config(TrainConfig, "default_config.yaml", package=package).epochs == 20


def test_group_replaces_section_and_falls_back_to_schema_defaults(package):
    # default_config sets model.width=32; choosing model=small must not keep it (section replaced).
    cfg = load_config(TrainConfig, "default_config", package=package, overrides=["+model=small"])
    assert cfg.model == ModelConfig(depth=1)


def test_defaults_list_in_yaml_then_file_body_on_top(package):
    cfg = load_config(TrainConfig, "composed", package=package)
    assert (cfg.model.depth, cfg.model.width, cfg.model.norm) == (7, 256, Norm.LAYER)
    # a group chosen on the command line replaces the section, including the file's own model keys
    cfg = load_config(TrainConfig, "composed", package=package, overrides=["model=small"])
    assert cfg.model == ModelConfig(depth=1)


def test_later_overrides_win_and_merge_dicts(tmp_path):
    path = write(tmp_path, "extra: {a: 1, nested: {x: 1}}\ntags: {team: red}\n")
    cfg = load_config(
        TrainConfig, path, overrides=["seed=1", "seed=2", "extra.nested.y=2", "tags.version=v1.0"]
    )
    assert cfg.seed == 2
    assert cfg.extra == {"a": 1, "nested": {"x": 1, "y": 2}}
    assert cfg.tags == {"team": "red", "version": "v1.0"}


# ------------------------------------------------------------------------------------------------ coercion


@pytest.mark.parametrize(
    ("yaml_text", "attr", "expected"),
    [
        ("optim: {lr: 1e-3}", ("optim", "lr"), 0.001),  # YAML 1.1 text -> float
        ("optim: {lr: 2}", ("optim", "lr"), 2.0),  # int -> float
        ("optim: {lr: .inf}", ("optim", "lr"), float("inf")),
        ("epochs: 1e3", ("epochs",), 1000),  # integral float text -> int
        ("epochs: '7'", ("epochs",), 7),
        ("epochs: 0x10", ("epochs",), 16),
        ("debug: yes", ("debug",), True),
        ("debug: 'off'", ("debug",), False),
        ("debug: 1", ("debug",), True),
        ("name: no", ("name",), "no"),  # str field keeps the text, not False
        ("name: 1.10", ("name",), "1.10"),  # not 1.1
        ("name: 42", ("name",), "42"),
        ("name: null", ("name",), "null"),
        ("mode: max", ("mode",), "max"),
        ("precision: '32'", ("precision",), 32),
        ("max_steps: null", ("max_steps",), None),
        ("max_steps: '5'", ("max_steps",), 5),
        ("data_dir: /data/x", ("data_dir",), Path("/data/x")),
        ("model: {norm: layer}", ("model", "norm"), Norm.LAYER),
        ("model: {norm: BATCH}", ("model", "norm"), Norm.BATCH),  # enum by name
        ("model: {patch_size: [25, 5]}", ("model", "patch_size"), (25, 5)),
        ("optim: {betas: [0.5, '0.6', 7e-1]}", ("optim", "betas"), (0.5, 0.6, 0.7)),
        ("devices: ['1', 2]", ("devices",), [1, 2]),
        ("tags: {on: yes}", ("tags",), {"on": "yes"}),  # keys and str values as written
        ("extra: {a: {b: [1, no]}}", ("extra",), {"a": {"b": [1, False]}}),  # Any: as parsed
        (
            "stages: [{name: warm, epochs: 2}, {epochs: 3}]",
            ("stages",),
            [Stage("warm", 2), Stage("stage", 3)],
        ),
    ],
)
def test_coercion_table(tmp_path, yaml_text, attr, expected):
    cfg = load_config(TrainConfig, write(tmp_path, yaml_text + "\n"))
    value = cfg
    for name in attr:
        value = getattr(value, name)
    assert value == expected
    assert type(value) is type(expected)


@pytest.mark.parametrize(
    ("override", "attr", "expected"),
    [
        ("optim.lr=1e-3", ("optim", "lr"), 0.001),
        ("name=no", ("name",), "no"),
        ("name=1.10", ("name",), "1.10"),
        ("name=a: b", ("name",), "a: b"),  # not YAML-parsable as a scalar: raw text for str
        ("name=run #3", ("name",), "run #3"),  # not a YAML comment
        ("name='yes'", ("name",), "yes"),  # quotes are YAML quoting
        ("precision=16", ("precision",), 16),
        ("precision=bf16", ("precision",), "bf16"),
        ('name="quoted text"', ("name",), "quoted text"),
        ("debug=true", ("debug",), True),
        ("max_steps=null", ("max_steps",), None),
        ("max_steps=None", ("max_steps",), None),
        ("devices=[0,1]", ("devices",), [0, 1]),
        ("model.patch_size=[8, 2]", ("model", "patch_size"), (8, 2)),
        ("extra.k=[1, 2]", ("extra",), {"k": [1, 2]}),
    ],
)
def test_override_coercion(override, attr, expected):
    value = load_config(TrainConfig, overrides=[override])
    for name in attr:
        value = getattr(value, name)
    assert value == expected


def test_cli_values_are_coerced_too():
    cfg = load_config(TrainConfig, cli={"optim.lr": "0.5", "devices": (2, 3), "seed": 3})
    assert (cfg.optim.lr, cfg.devices, cfg.seed) == (0.5, [2, 3], 3)


# ------------------------------------------------------------------------------------------------ errors


def test_unknown_nested_key_names_dotted_key_and_closest(tmp_path):
    path = write(tmp_path, "optim:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError) as err:
        load_config(TrainConfig, path)
    message = str(err.value)
    assert str(path) in message and "'optim.lrr'" in message and "optim.lr" in message


def test_unknown_key_suggests_same_leaf_in_another_section():
    with pytest.raises(ConfigError, match=r"unknown config key 'lr'; closest valid keys: optim\.lr"):
        load_config(TrainConfig, overrides=["lr=0.1"])


def test_unknown_key_without_close_match_lists_siblings():
    with pytest.raises(ConfigError, match=r"'model\.zzz'.*valid keys in section 'model': depth, width"):
        load_config(TrainConfig, overrides=["model.zzz=1"])


@pytest.mark.parametrize(
    ("override", "pattern"),
    [
        ("epochs=ten", r"override 'epochs=ten': epochs: expected int, got 'ten'"),
        ("optim.lr=fast", r"optim\.lr: expected float, got 'fast'"),
        ("debug=maybe", r"debug: expected a boolean"),
        ("mode=avg", r"mode: expected one of 'min', 'max', got 'avg'"),
        ("model.patch_size=[1, 2, 3]", r"model\.patch_size: expected 2 values"),
        ("model.norm=group", r"model\.norm: expected one of 'batch', 'layer'"),
        ("stages=[{nme: x}]", r"unknown config key 'stages\[0\]\.nme'"),
        ("model=3", r"model: expected a mapping with keys depth, width, norm, patch_size, got 3"),
        ("epochs", r"not of the form key=value"),
        ("a..b=1", r"not a valid dotted config key"),
    ],
)
def test_bad_values_are_clear_errors(override, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(TrainConfig, overrides=[override])


def test_unknown_group_choice_lists_available(package):
    with pytest.raises(ConfigError, match=r"group 'model' has no choice 'huge'; available: large, small"):
        load_config(TrainConfig, package=package, overrides=["model=huge"])


def test_missing_config_lists_bundled(package):
    with pytest.raises(ConfigError, match=r"does not exist.*bundled configs of .*composed, default_config"):
        load_config(TrainConfig, "nope", package=package)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(TrainConfig, "/no/such/file.yaml")


def test_invalid_yaml_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(TrainConfig, write(tmp_path, "a: [1, 2\n"))
    with pytest.raises(ConfigError, match="mapping of config keys"):
        load_config(TrainConfig, write(tmp_path, "- 1\n- 2\n", "list.yaml"))


def test_required_field_without_default():
    with pytest.raises(ConfigError, match="path is required"):
        load_config(Required)
    assert load_config(Required, overrides=["path=/x"]) == Required(path="/x")


def test_post_init_validation_becomes_config_error():
    with pytest.raises(ConfigError, match=r"invalid config: low \(5\) must not exceed high \(1\)"):
        load_config(Checked, overrides=["low=5"])


def test_empty_yaml_gives_defaults(tmp_path):
    assert load_config(TrainConfig, write(tmp_path, "# nothing\n")) == TrainConfig()


# ------------------------------------------------------------------------------------------------ output


def test_round_trip_dump_then_load(tmp_path):
    cfg = load_config(
        TrainConfig,
        overrides=[
            "name=no",
            "optim.lr=1e-10",
            "model.norm=layer",
            "data_dir=/d",
            "stages=[{name: a, epochs: 2}]",
            "tags.on=yes",
            "extra.x={y: [1, 2.5, null]}",
        ],
    )
    path = save_config(cfg, tmp_path / "run" / "config.yaml")
    assert load_config(TrainConfig, path) == cfg
    plain = config_to_dict(cfg)
    assert (
        plain["model"]["norm"] == "layer"
        and plain["data_dir"] == "/d"
        and plain["model"]["patch_size"] == [4, 4]
    )
    assert list(plain) == [f for f in TrainConfig.__dataclass_fields__]  # declaration order
    assert dump_config(cfg).startswith("seed: 0\n")


def test_bundled_listing(package):
    assert bundled_configs(package) == ["composed", "default_config"]
    assert bundled_groups(package) == {"model": ["large", "small"]}


# ------------------------------------------------------------------------------------------------ click


@click.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False))
@click.option("--lr", type=float, default=0.1, show_default=True, envvar="TY_TEST_LR")
@click.option("--epochs", type=int, default=99)
@click.argument("overrides", nargs=-1)
@click.pass_context
def train_command(ctx, config_path, lr, epochs, overrides):
    cli = typed_options(ctx, {"lr": "optim.lr", "epochs": "epochs"})
    cfg = load_config(TrainConfig, config_path, cli=cli, overrides=overrides)
    click.echo(f"lr={cfg.optim.lr} epochs={cfg.epochs}")


def test_click_defaults_never_override_yaml(tmp_path):
    path = write(tmp_path, "epochs: 5\noptim: {lr: 0.5}\n")
    runner = CliRunner()
    result = runner.invoke(train_command, ["--config", str(path)])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "lr=0.5 epochs=5"  # not click's 0.1 / 99
    result = runner.invoke(train_command, ["--config", str(path), "--lr", "0.2"])
    assert result.output.strip() == "lr=0.2 epochs=5"
    result = runner.invoke(train_command, ["--config", str(path)], env={"TY_TEST_LR": "0.3"})
    assert result.output.strip() == "lr=0.3 epochs=5"
    # a trailing dotted override beats the typed option
    result = runner.invoke(train_command, ["--config", str(path), "--lr", "0.2", "optim.lr=0.7"])
    assert result.output.strip() == "lr=0.7 epochs=5"


def test_a_mapping_source_is_validated_and_coerced_like_a_file():
    """The config stored in a checkpoint comes back as a dict: same coercion, same errors, then overrides."""
    from dataclasses import dataclass as _dataclass

    @_dataclass
    class Small:
        lr: float = 0.1
        name: str = "x"

    assert load_config(Small, {"lr": "1e-3", "name": "run"}, overrides=["name=other"]) == Small(
        0.001, "other"
    )
    with pytest.raises(ConfigError, match="the given config mapping"):
        load_config(Small, {"lrr": 1})
