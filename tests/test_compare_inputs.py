import json

import pytest
import yaml

from dnpo.cli import main
from dnpo.compare import compare_runs
from dnpo.configbase import ConfigError


class NeverCalledJudge:
    def score(self, prompts, responses, gold_answers=None):
        raise AssertionError("the judge must not be called")


def write_run(path, prompts_by_id):
    """A run dir whose iter_0/generations.jsonl answers the given prompts, keyed by id."""
    (path / "iter_0").mkdir(parents=True)
    (path / "config.yaml").write_text(yaml.safe_dump({"loop": {"method": "dnpo"}}))
    rows = [
        {"id": pid, "prompt": [{"role": "user", "content": text}], "reference": "r",
         "gold_answer": None, "generated": "SCORE=5", "finish_reason": "stop"}
        for pid, text in prompts_by_id.items()
    ]
    (path / "iter_0" / "generations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_runs_without_shared_ids_rejected(tmp_path):
    run_a = write_run(tmp_path / "a", {"1": "q1", "2": "q2"})
    run_b = write_run(tmp_path / "b", {"3": "q3"})
    with pytest.raises(ConfigError) as error:
        compare_runs(run_a, run_b, NeverCalledJudge(), tmp_path / "out")
    message = str(error.value)
    assert f"runs {run_a} and {run_b} share no prompt in generations.jsonl" in message
    assert "must answer the same prompts" in message
    assert not (tmp_path / "out").exists()


def test_same_ids_other_prompts_rejected(tmp_path):
    run_a = write_run(tmp_path / "a", {"1": "q1"})
    run_b = write_run(tmp_path / "b", {"1": "another question"})
    with pytest.raises(ConfigError, match="share no prompt"):
        compare_runs(run_a, run_b, NeverCalledJudge(), tmp_path / "out")


def test_run_compared_with_itself_rejected(tmp_path):
    run_a = write_run(tmp_path / "a", {"1": "q1"})
    (tmp_path / "x").mkdir()
    with pytest.raises(ConfigError, match="are the same run"):
        compare_runs(run_a, tmp_path / "x" / ".." / "a", NeverCalledJudge(), tmp_path / "out")


def test_cli_no_shared_prompts_one_line(tmp_path, capsys):
    run_a = write_run(tmp_path / "a", {"1": "q1"})
    run_b = write_run(tmp_path / "b", {"2": "q2"})
    code = main(["compare", str(run_a), str(run_b), "--judge", "type=verifier"])
    err = capsys.readouterr().err
    assert code == 2
    assert "share no prompt" in err
    assert len(err.strip().splitlines()) == 1
    assert not list(run_a.glob("compare_vs_b*"))


def test_cli_same_run_one_line(tmp_path, capsys):
    run_a = write_run(tmp_path / "a", {"1": "q1"})
    code = main(["compare", str(run_a), str(run_a), "--judge", "type=verifier"])
    assert code == 2
    assert "are the same run; pass two different run directories" in capsys.readouterr().err


def test_cli_unwritable_out_one_line(tmp_path, capsys):
    run_a = write_run(tmp_path / "a", {"1": "q1"})
    run_b = write_run(tmp_path / "b", {"1": "q1"})
    code = main(["compare", str(run_a), str(run_b), "--judge", "type=verifier",
                 "--out", "/proc/nope"])
    err = capsys.readouterr().err
    assert code == 2
    assert "--out /proc/nope" in err
    assert "choose another --out" in err
    assert "Errno" not in err
    assert len(err.strip().splitlines()) == 1
