import json

import pytest

from dnpo.cli import main
from dnpo.configbase import ConfigError
from dnpo.outputs import check_output_location, check_output_settings, settings_path

UNCREATABLE = "/proc/nope/out.jsonl"


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def test_location_inside_file_rejected(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x", encoding="utf-8")
    with pytest.raises(ConfigError, match=f"is inside {blocker}, which is a file, not a folder"):
        check_output_location(blocker / "sub" / "out.jsonl")


def test_location_uncreatable_parent_named(tmp_path):
    with pytest.raises(ConfigError) as error:
        check_output_location(UNCREATABLE)
    message = str(error.value)
    assert "cannot create the folder /proc/nope for --output /proc/nope/out.jsonl" in message
    assert "create the parent folder or choose another --output" in message


def test_location_kind_mismatch_rejected(tmp_path):
    existing_file = tmp_path / "pairs.jsonl"
    existing_file.write_text("", encoding="utf-8")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        check_output_location(existing_file, "--output-dir", folder=True)
    with pytest.raises(ConfigError, match="is a folder, not a file"):
        check_output_location(tmp_path)


def test_location_creates_missing_parents(tmp_path):
    path = check_output_location(tmp_path / "a" / "b" / "out.jsonl")
    assert path.parent.is_dir()
    assert not path.exists()


def test_settings_recorded_then_compared(tmp_path):
    output = tmp_path / "out.jsonl"
    check_output_settings(output, {"model": "m1", "generation.seed": 1})
    assert json.loads(settings_path(output).read_text()) == {"model": "m1", "generation.seed": 1}

    write_jsonl(output, [{"id": "a"}])
    check_output_settings(output, {"model": "m1", "generation.seed": 1})  # same settings resume
    with pytest.raises(ConfigError) as error:
        check_output_settings(output, {"model": "m2", "generation.seed": 1})
    message = str(error.value)
    assert "model: 'm1' -> 'm2'" in message
    assert "generation.seed" not in message
    assert f"pass another --output, or delete {output}" in message


def test_settings_replaced_after_output_deleted(tmp_path):
    output = tmp_path / "out.jsonl"
    check_output_settings(output, {"model": "m1"})
    write_jsonl(output, [{"id": "a"}])
    output.unlink()
    check_output_settings(output, {"model": "m2"})
    assert json.loads(settings_path(output).read_text()) == {"model": "m2"}


def test_output_without_record_adopted(tmp_path):
    output = tmp_path / "out.jsonl"
    write_jsonl(output, [{"id": "a"}])
    check_output_settings(output, {"model": "m1"})
    assert json.loads(settings_path(output).read_text()) == {"model": "m1"}


@pytest.mark.parametrize(
    ("command", "option"),
    [
        (["generate", "--data", "DATA", "--model", "MISSING"], "--output"),
        (["judge", "--generations", "DATA"], "--output"),
        (["train", "--pairs", "DATA", "--model", "MISSING"], "--output"),
        (["label", "--generations", "DATA", "--iteration", "0"], "--output-dir"),
    ],
)
def test_cli_output_inside_file_one_line(tmp_path, capsys, command, option):
    data = tmp_path / "data.jsonl"
    write_jsonl(data, [{"prompt": "1+1?", "response": "2"}])
    blocker = tmp_path / "file.txt"
    blocker.write_text("x", encoding="utf-8")
    placeholders = {"DATA": str(data), "MISSING": str(tmp_path / "none")}
    argv = [placeholders.get(arg, arg) for arg in command]
    code = main([*argv, option, str(blocker / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert f"which is a file, not a folder; choose another {option}" in err
    assert len(err.strip().splitlines()) == 1


def test_cli_uncreatable_output_one_line(tmp_path, capsys):
    data = tmp_path / "data.jsonl"
    write_jsonl(data, [{"prompt": "1+1?", "response": "2"}])
    code = main(["generate", "--data", str(data), "--model", str(tmp_path / "none"),
                 "--output", UNCREATABLE])
    err = capsys.readouterr().err
    assert code == 2
    assert "cannot create the folder /proc/nope" in err
    assert "create the parent folder or choose another --output" in err


@pytest.mark.parametrize(
    ("command", "option", "output"),
    [
        (["generate", "--data", "DATA", "--model", "MISSING"], "--output", "/proc/out.jsonl"),
        (["judge", "--generations", "DATA"], "--output", "/proc/out.jsonl"),
        (["train", "--pairs", "DATA", "--model", "MISSING"], "--output", "/proc/nope"),
        (["label", "--generations", "DATA", "--iteration", "0"], "--output-dir", "/proc/nope"),
        (["prepare-model"], "--output", "/proc/nope"),
    ],
)
def test_cli_unwritable_output_one_line(tmp_path, capsys, command, option, output):
    data = tmp_path / "data.jsonl"
    write_jsonl(data, [{"prompt": "1+1?", "response": "2"}])
    placeholders = {"DATA": str(data), "MISSING": str(tmp_path / "none")}
    argv = [placeholders.get(arg, arg) for arg in command]
    code = main([*argv, option, output])
    err = capsys.readouterr().err
    assert code == 2
    assert f"{option} {output}" in err
    assert f"choose another {option}" in err
    assert "Errno" not in err
    assert len(err.strip().splitlines()) == 1


def test_location_virtual_folder_rejected():
    with pytest.raises(ConfigError, match="choose another --output-dir") as error:
        check_output_location("/proc/nope", "--output-dir", folder=True)
    assert "--output-dir /proc/nope" in str(error.value)
    with pytest.raises(ConfigError, match="choose another --output") as error:
        check_output_location("/proc/out.jsonl")
    assert "the folder /proc for --output /proc/out.jsonl" in str(error.value)


def test_train_noise_head_not_safetensors(tmp_path, capsys):
    pairs = tmp_path / "pairs.jsonl"
    write_jsonl(pairs, [{"id": "a", "prompt": "q", "chosen": "x", "rejected": "y"}])
    head = tmp_path / "head.bin"
    head.write_text("not a tensor file", encoding="utf-8")
    code = main(["train", "--pairs", str(pairs), "--model", str(tmp_path / "none"),
                 "--output", str(tmp_path / "out"), "--noise-head-init", str(head)])
    err = capsys.readouterr().err
    assert code == 2
    assert f"noise head file {head} is not a readable safetensors file" in err
    assert len(err.strip().splitlines()) == 1
