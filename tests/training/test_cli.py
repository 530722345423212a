import dataclasses
import json

import pytest

from dnpo.cli import main
from dnpo.testing import save_tiny_model
from dnpo.training.config import TrainConfig


def write_pairs(path, count=4):
    rows = [{"id": str(i), "prompt": f"Count to {i}", "chosen": " ".join(map(str, range(i + 1))),
             "rejected": "no"} for i in range(count)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def test_help_lists_every_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for name in ("--pairs", "--model", "--output", "--config", "--noise-head-init", "--trust-remote-code"):
        assert name in text
    for field in dataclasses.fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        assert flag in text
        assert " ".join(field.metadata["help"].split()[:4]) in text


def test_train_command_runs(tmp_path, capsys):
    model = save_tiny_model(tmp_path / "model")
    pairs = write_pairs(tmp_path / "pairs.jsonl")
    config = tmp_path / "train.yaml"
    config.write_text("train:\n  mode: dnpo\n  max_length: 64\n  max_prompt_length: 40\n", encoding="utf-8")
    code = main([
        "train", "--pairs", str(pairs), "--model", str(model), "--output", str(tmp_path / "out"),
        "--config", str(config), "--max-steps", "2", "--per-device-batch-size", "2",
        "--noise-chunk-size", "8", "--mode", "fixed-noise",
    ])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 2
    assert summary["noise_head"] is None  # --mode overrides the YAML file
    saved = json.loads((tmp_path / "out" / "dnpo_train_config.json").read_text(encoding="utf-8"))
    assert saved["max_length"] == 64
    assert saved["mode"] == "fixed-noise"


@pytest.mark.parametrize("flag, value, message", [
    ("--beta", "0", "train.beta must be > 0"),
    ("--mode", "ppo", "expected one of"),
    ("--eps-max", "-1", "train.eps_max must be > 0"),
    ("--alpha", "-0.1", "train.alpha must be >= 0"),
])
def test_invalid_option_prints_one_line_error(tmp_path, capsys, flag, value, message):
    pairs = write_pairs(tmp_path / "pairs.jsonl")
    code = main(["train", "--pairs", str(pairs), "--model", "unused", "--output", str(tmp_path / "o"),
                 flag, value])
    assert code == 2
    error = capsys.readouterr().err
    assert message in error
    assert "Traceback" not in error


def test_changed_config_names_fields(tmp_path, capsys, monkeypatch):
    from dnpo.training.trainer import NPOTrainer

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(NPOTrainer, "train", interrupt)
    model = save_tiny_model(tmp_path / "model")
    pairs = write_pairs(tmp_path / "pairs.jsonl")
    command = ["train", "--pairs", str(pairs), "--model", str(model), "--output", str(tmp_path / "out"),
               "--mode", "spin", "--max-length", "64", "--max-prompt-length", "40"]
    assert main(command) == 130
    capsys.readouterr()
    assert main([*command, "--beta", "0.2", "--max-steps", "5"]) == 2
    error = capsys.readouterr().err
    assert "started with a different config" in error
    assert "train.beta: 0.1 -> 0.2" in error
    assert "train.max_steps: -1 -> 5" in error
    assert "pairs:" not in error
    assert "model_path" not in error
    assert len(error.strip().splitlines()) == 1


@pytest.mark.parametrize("row, message", [
    ({"id": "b", "prompt": "Hi", "chosen": "x"}, "record 3 (id 'b') lacks rejected"),
    ({"prompt": "Hi"}, "record 3 lacks chosen, rejected"),
    ({"id": "b", "prompt": 5, "chosen": "x", "rejected": "y"}, "record 3 (id 'b'): prompt must be"),
    (["Hi", "x", "y"], "record 3 is not a JSON object (got list)"),
    ({"id": "0", "prompt": "Hi", "chosen": "x", "rejected": "y"}, "record 3 repeats the id '0' of record 1"),
])
def test_invalid_pair_numbered_from_one(tmp_path, capsys, row, message):
    model = save_tiny_model(tmp_path / "model")
    pairs = write_pairs(tmp_path / "pairs.jsonl", count=2)
    with pairs.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(row) + "\n")
    capsys.readouterr()
    code = main(["train", "--pairs", str(pairs), "--model", str(model), "--output", str(tmp_path / "out")])
    assert code == 2
    error = capsys.readouterr().err
    assert error.startswith(f"dnpo train: error: pairs file {pairs}: {message}")
    assert len(error.strip().splitlines()) == 1
