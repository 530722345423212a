import json

import pytest

from dnpo.cli import main
from dnpo.generation import GenerationConfig, generate_to_file
from dnpo.generation.hf import HFGenerator
from dnpo.io import read_json, read_jsonl
from dnpo.outputs import settings_path
from dnpo.testing import save_tiny_model


@pytest.fixture
def files(tmp_path):
    data = tmp_path / "data.jsonl"
    rows = [{"prompt": f"What is {i} plus {i}?", "response": str(2 * i)} for i in range(2)]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return data, save_tiny_model(tmp_path / "model"), tmp_path / "generations.jsonl"


def generate(data, model, output, *options):
    return main(["generate", "--data", str(data), "--model", str(model), "--output", str(output),
                 "--temperature", "0", *options])


def test_rerun_with_same_settings_resumes(files, capsys):
    data, model, output = files
    assert generate(data, model, output, "--max-new-tokens", "4") == 0
    capsys.readouterr()
    assert generate(data, model, output, "--max-new-tokens", "4", "--batch-size", "1") == 0
    assert json.loads(capsys.readouterr().out)["already_done"] == 2
    settings = read_json(settings_path(output))
    assert settings["model"] == str(model)
    assert settings["generation.max_new_tokens"] == 4


def test_rerun_with_other_max_new_tokens_stops(files, capsys):
    data, model, output = files
    assert generate(data, model, output, "--max-new-tokens", "4") == 0
    before = output.read_text(encoding="utf-8")
    capsys.readouterr()
    assert generate(data, model, output, "--max-new-tokens", "6") == 2
    err = capsys.readouterr().err
    assert "generation.max_new_tokens: 4 -> 6" in err
    assert f"pass another --output, or delete {output}" in err
    assert len(err.strip().splitlines()) == 1
    assert output.read_text(encoding="utf-8") == before


def test_rerun_with_other_model_stops(files, tmp_path, capsys):
    data, model, output = files
    other = save_tiny_model(tmp_path / "other")
    assert generate(data, model, output, "--max-new-tokens", "4") == 0
    capsys.readouterr()
    assert generate(data, other, output, "--max-new-tokens", "4") == 2
    assert f"model: '{model}' -> '{other}'" in capsys.readouterr().err


def test_deleted_output_starts_over(files, capsys):
    data, model, output = files
    assert generate(data, model, output, "--max-new-tokens", "4") == 0
    output.unlink()
    capsys.readouterr()
    assert generate(data, model, output, "--max-new-tokens", "6") == 0
    assert json.loads(capsys.readouterr().out)["generated"] == 2
    assert read_json(settings_path(output))["generation.max_new_tokens"] == 6


def test_library_call_without_settings_writes_no_record(tiny_model, tiny_tokenizer, tmp_path):
    # `dnpo run` calls generate_to_file without settings: its run config fixes them.
    output = tmp_path / "generations.jsonl"
    generator = HFGenerator(tiny_model, tiny_tokenizer, GenerationConfig(max_new_tokens=4))
    examples = [{"id": "a", "prompt": "Hi?", "reference": "Hello."}]
    generate_to_file(generator, examples, output)
    assert len(read_jsonl(output)) == 1
    assert not settings_path(output).exists()


@pytest.mark.parametrize("flag, value, message", [
    ("--batch-size", "abc", "--batch-size: expected an integer, got 'abc'"),
    ("--batch-size", "1.5", "--batch-size: expected an integer, got 1.5"),
    ("--top-p", "high", "--top-p: expected a number, got 'high'"),
    ("--precision", "fp8", "--precision: invalid value 'fp8'; expected one of"),
])
def test_invalid_option_value_names_flag(files, capsys, flag, value, message):
    data, model, output = files
    assert generate(data, model, output, flag, value) == 2
    error = capsys.readouterr().err
    assert message in error
    assert len(error.strip().splitlines()) == 1
    assert not output.exists()
