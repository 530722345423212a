import json

import pytest

from dnpo.cli import main
from dnpo.errors import DataError
from dnpo.io import read_json, read_jsonl
from dnpo.judges import JudgeConfig, judge_generations, make_judge
from dnpo.judges.runner import judge_settings
from dnpo.outputs import settings_path


def record(i, **changes):
    row = {"id": f"p{i}", "prompt": [{"role": "user", "content": f"{i}+{i}?"}],
           "reference": f"The answer is {2 * i}.", "gold_answer": str(2 * i),
           "generated": f"The answer is {i}.", "finish_reason": "stop"}
    row.update(changes)
    return row


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def judge(generations, output, *options):
    return main(["judge", "--generations", str(generations), "--output", str(output), *options])


def test_rerun_with_same_judge_resumes(tmp_path, capsys):
    generations = write_jsonl(tmp_path / "generations.jsonl", [record(1), record(2)])
    output = tmp_path / "judgments.jsonl"
    assert judge(generations, output, "--type", "verifier") == 0
    capsys.readouterr()
    assert judge(generations, output, "--type", "verifier") == 0
    assert json.loads(capsys.readouterr().out)["already_done"] == 2
    assert read_json(settings_path(output)) == {"judge.type": "verifier"}


def test_rerun_with_other_type_stops(tmp_path, capsys):
    generations = write_jsonl(tmp_path / "generations.jsonl", [record(1), record(2)])
    output = tmp_path / "judgments.jsonl"
    assert judge(generations, output, "--type", "verifier") == 0
    before = read_jsonl(output)
    capsys.readouterr()
    # Port 9 on 127.0.0.1 is never contacted: the check runs before the judge is built.
    code = judge(generations, output, "--type", "openai", "--model", "m",
                 "--base-url", "http://127.0.0.1:9/v1")
    err = capsys.readouterr().err
    assert code == 2
    assert "judge.type: 'verifier' -> 'openai'" in err
    assert f"pass another --output, or delete {output}" in err
    assert read_jsonl(output) == before


def test_settings_follow_judge_type():
    assert judge_settings(JudgeConfig(type="verifier", model="ignored")) == {"judge.type": "verifier"}
    openai = judge_settings(JudgeConfig(type="openai", model="m", base_url="http://127.0.0.1:1/v1"))
    assert openai["judge.model"] == "m"
    assert openai["judge.base_url"] == "http://127.0.0.1:1/v1"
    assert len(openai["judge.template_sha256"]) == 64
    reward = judge_settings(JudgeConfig(type="reward-model", model="r", reward_scale=2.0))
    assert reward["judge.reward_scale"] == 2.0
    assert "judge.template_sha256" not in reward


def test_empty_generations_file_named(tmp_path):
    generations = write_jsonl(tmp_path / "generations.jsonl", [])
    with pytest.raises(DataError, match=f"generations file {generations} has no records"):
        judge_generations(make_judge(JudgeConfig()), generations, tmp_path / "judgments.jsonl")


def test_record_missing_fields_named(tmp_path):
    row = record(2)
    del row["generated"]
    generations = write_jsonl(tmp_path / "generations.jsonl", [record(1), row])
    with pytest.raises(DataError, match=f"{generations}: record 2 lacks generated"):
        judge_generations(make_judge(JudgeConfig()), generations, tmp_path / "judgments.jsonl")


def test_empty_file_cli_message(tmp_path, capsys):
    generations = write_jsonl(tmp_path / "generations.jsonl", [])
    assert judge(generations, tmp_path / "judgments.jsonl") == 2
    err = capsys.readouterr().err
    assert "has no records" in err
    assert "gold answers" not in err


@pytest.mark.parametrize("option", ["--on-tie", "--on-failure"])
def test_label_options_not_accepted(tmp_path, capsys, option):
    generations = write_jsonl(tmp_path / "generations.jsonl", [record(1)])
    with pytest.raises(SystemExit) as exit_info:
        judge(generations, tmp_path / "judgments.jsonl", option, "drop")
    assert exit_info.value.code == 2
    assert f"unrecognized arguments: {option} drop" in capsys.readouterr().err
    assert not (tmp_path / "judgments.jsonl").exists()
