import argparse
from dataclasses import dataclass

import pytest

from dnpo.configbase import (
    ConfigError,
    Section,
    apply_overrides,
    load_config,
    option,
    parse_override,
    section_from_args,
)


@dataclass
class Inner(Section):
    rate: float = option(0.1, "a rate")
    kind: str = option("a", "a kind", ("a", "b"))


@dataclass
class Outer(Section):
    inner: Inner = option(Inner, "nested section")
    steps: int = option(3, "steps")
    flag: bool = option(False, "a flag")
    names: list[str] = option([], "names")


def test_defaults_and_nested_from_dict():
    config = Outer.from_dict({"inner": {"rate": "0.5"}, "steps": "7", "flag": "true"})
    assert config.inner.rate == 0.5
    assert config.steps == 7
    assert config.flag is True
    assert config.inner.kind == "a"


def test_unknown_key_suggests_close_match():
    with pytest.raises(ConfigError, match=r"unknown config key inner\.rat; did you mean inner\.rate"):
        Outer.from_dict({"inner": {"rat": 1}})


def test_invalid_choice_names_allowed_values():
    with pytest.raises(ConfigError, match=r"inner\.kind: invalid value 'c'; expected one of \['a', 'b'\]"):
        Outer.from_dict({"inner": {"kind": "c"}})


@pytest.mark.parametrize(
    "data, message",
    [
        ({"steps": "many"}, "steps: expected an integer"),
        ({"steps": True}, "steps: expected an integer"),
        ({"flag": "maybe"}, "flag: expected true or false"),
        ({"inner": 5}, "inner: expected a mapping"),
        ({"names": 3}, "names: expected a list"),
        ({"inner": {"rate": [1]}}, "inner.rate: expected a number"),
    ],
)
def test_wrong_types_raise_config_error(data, message):
    with pytest.raises(ConfigError, match=message):
        Outer.from_dict(data)


def test_overrides_parse_yaml_values():
    assert parse_override("inner.rate=0.25") == (["inner", "rate"], 0.25)
    data = apply_overrides({"inner": {"rate": 1.0}}, ["inner.kind=b", "steps=2", "names=[x, y]"])
    config = Outer.from_dict(data)
    assert config.inner.kind == "b"
    assert config.inner.rate == 1.0
    assert config.names == ["x", "y"]


def test_override_without_equals_is_rejected():
    with pytest.raises(ConfigError, match="section.field=value"):
        parse_override("inner.rate")


def test_load_config_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(Outer, tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("inner: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Outer, bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(ConfigError, match="mapping at the top level, got int"):
        load_config(Outer, scalar)


def test_to_dict_round_trips():
    config = Outer.from_dict({"inner": {"rate": 2.0, "kind": "b"}, "names": ["n"]})
    assert Outer.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    "options, message",
    [
        ({"steps": "many"}, "--steps: expected an integer, got 'many'"),
        ({"flag": "maybe"}, "--flag: expected true or false, got 'maybe'"),
        ({"names": "{a: 1}"}, "--names: expected a list"),
    ],
)
def test_cli_value_errors_name_flag(options, message):
    args = argparse.Namespace(**{"steps": None, "flag": None, "names": None, **options})
    with pytest.raises(ConfigError, match=message):
        section_from_args(Outer, args)


def test_cli_value_outside_choices_names_flag():
    args = argparse.Namespace(rate=None, kind="c")
    with pytest.raises(ConfigError, match=r"--kind: invalid value 'c'; expected one of \['a', 'b'\]"):
        section_from_args(Inner, args)


def test_cli_value_invalid_yaml_kept_as_text():
    @dataclass
    class Named(Section):
        label: str = option("", "a label")

    assert section_from_args(Named, argparse.Namespace(label="[x")).label == "[x"
