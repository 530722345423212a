import math

import pytest

from dnpo.cli import main as cli_main
from dnpo.config import METHODS, RunConfig
from dnpo.configbase import ConfigError, apply_overrides
from dnpo.generation.config import GenerationConfig
from dnpo.judges.config import JudgeConfig
from dnpo.training.config import TrainConfig

NON_FINITE = [
    ("train.beta", "nan"),
    ("train.learning_rate", "nan"),
    ("train.alpha", "nan"),
    ("train.max_grad_norm", "nan"),
    ("train.eps_max", "inf"),
    ("train.eps_max", ".inf"),
    ("train.warmup_ratio", "-inf"),
    ("generation.temperature", "nan"),
    ("generation.top_p", ".nan"),
    ("judge.timeout", "nan"),
    ("eval.stagnation_threshold", "nan"),
    ("task.flawed_share", "nan"),
]


def run_config(*overrides):
    return RunConfig.from_dict(apply_overrides({}, list(overrides)))


@pytest.mark.parametrize(("field", "text"), NON_FINITE)
def test_non_finite_float_rejected(field, text):
    value = float(text.lstrip("."))
    expected = f"{field} must be a finite number, got {value}"
    with pytest.raises(ConfigError, match=expected):
        run_config(f"{field}={text}")


@pytest.mark.parametrize(
    ("section", "field", "name"),
    [
        (TrainConfig, "beta", "train.beta"),
        (TrainConfig, "eps_max", "train.eps_max"),
        (GenerationConfig, "temperature", "generation.temperature"),
        (JudgeConfig, "timeout", "judge.timeout"),
    ],
)
def test_section_built_directly_names_field(section, field, name):
    with pytest.raises(ConfigError, match=f"{name} must be a finite number, got nan"):
        section(**{field: math.nan})


def test_finite_values_still_accepted():
    config = run_config("train.beta=0.2", "generation.temperature=0", "judge.timeout=5")
    assert config.train.beta == 0.2
    assert config.generation.temperature == 0.0
    assert config.judge.timeout == 5.0


def test_run_cli_rejects_nan_before_work(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = cli_main(["run", "--set", "train.beta=nan", "--set", "loop.output_dir=runs"])
    assert code == 2
    assert "train.beta must be a finite number, got nan" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("method", ["spin", "spin+dsl"])
@pytest.mark.parametrize("mode", ["fixed-noise", "dpo"])
def test_ignored_train_mode_rejected(method, mode):
    with pytest.raises(ConfigError) as error:
        run_config(f"loop.method={method}", f"train.mode={mode}")
    message = str(error.value)
    assert f"train.mode={mode}" in message
    assert f"loop.method={method}" in message
    assert "dnpo and spin+npo use noise" in message


@pytest.mark.parametrize("method", METHODS)
def test_default_train_mode_accepted(method):
    config = run_config(f"loop.method={method}")
    assert config.train.mode == "dnpo"


@pytest.mark.parametrize("method", ["spin", "spin+dsl"])
def test_spin_mode_accepted_without_noise(method):
    config = run_config(f"loop.method={method}", "train.mode=spin")
    assert config.train_mode(1) == "spin"


@pytest.mark.parametrize("method", ["dnpo", "spin+npo"])
def test_fixed_noise_accepted_with_noise(method):
    config = run_config(f"loop.method={method}", "train.mode=fixed-noise")
    assert config.train_mode(1) == "fixed-noise"


@pytest.mark.parametrize("value", ["''", "' '"])
def test_empty_output_dir_rejected(value):
    with pytest.raises(ConfigError, match="loop.output_dir is empty; set it to the parent folder"):
        run_config(f"loop.output_dir={value}")


@pytest.mark.parametrize(
    ("flag", "value", "override"),
    [
        ("--name", "x", "loop.name=y"),
        ("--method", "spin", "loop.method=dnpo"),
        ("--iterations", "2", "loop.iterations=3"),
    ],
)
def test_run_shortcut_conflicting_set_rejected(tmp_path, monkeypatch, capsys, flag, value, override):
    monkeypatch.chdir(tmp_path)
    code = cli_main(["run", flag, value, "--set", override])
    err = capsys.readouterr().err
    assert code == 2
    assert f"{flag} {value} conflicts with --set {override}" in err
    assert f"{flag} is a shortcut for --set {override.split('=')[0]}" in err
    assert not (tmp_path / "runs").exists()


def test_run_shortcut_same_value_accepted():
    from argparse import Namespace

    from dnpo.loop import shortcut_overrides

    args = Namespace(
        overrides=["loop.name=x", "loop.iterations=3"], method=None, iterations=3, name="x"
    )
    assert shortcut_overrides(args) == ["loop.iterations=3", "loop.name=x"]


def test_run_shortcut_uses_last_set_value():
    from argparse import Namespace

    from dnpo.loop import shortcut_overrides

    args = Namespace(overrides=["loop.name=y", "loop.name=x"], method=None, iterations=None, name="x")
    assert shortcut_overrides(args) == ["loop.name=x"]


def test_run_help_names_shortcut_defaults(capsys):
    with pytest.raises(SystemExit):
        cli_main(["run", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "(default: loop.method of --config, else dnpo)" in help_text
    assert "(default: loop.iterations of --config, else 4)" in help_text
    assert "(default: loop.name of --config, else 'default')" in help_text
