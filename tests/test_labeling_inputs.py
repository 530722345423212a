import json
import logging

import pytest

from dnpo.cli import main
from dnpo.errors import DataError
from dnpo.labeling import label_to_files


def generation(i, **changes):
    row = {"id": f"p{i}", "prompt": [{"role": "user", "content": f"{i}+{i}?"}],
           "reference": f"{2 * i}", "generated": f"maybe {i}", "finish_reason": "stop"}
    row.update(changes)
    return row


def side(score, error=None):
    return {"score": score, "raw": "", "error": error}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_empty_judgments_reported_as_missing(tmp_path, caplog):
    generations = write_jsonl(tmp_path / "generations.jsonl", [generation(1), generation(2)])
    judgments = write_jsonl(tmp_path / "judgments.jsonl", [])
    with caplog.at_level(logging.WARNING, logger="dnpo.labeling"):
        stats = label_to_files(generations, judgments, 1, tmp_path / "out")
    assert stats["judgment_missing"] == 2
    messages = warnings(caplog)
    assert any(m.startswith(f"2 of 2 prompts have no judgment in {judgments}") for m in messages)
    assert not any("failed judge call" in m for m in messages)


def test_failed_and_missing_counted_apart(tmp_path, caplog):
    generations = write_jsonl(tmp_path / "generations.jsonl", [generation(i) for i in range(3)])
    judgments = write_jsonl(tmp_path / "judgments.jsonl", [
        {"id": "p0", "reference": side(90), "generated": side(10)},
        {"id": "p1", "reference": side(90), "generated": side(None, "timeout: no reply")},
    ])
    with caplog.at_level(logging.WARNING, logger="dnpo.labeling"):
        label_to_files(generations, judgments, 1, tmp_path / "out")
    messages = warnings(caplog)
    assert any(m.startswith("1 of 3 prompts have no judgment") for m in messages)
    assert "1 prompt had a failed judge call (on_judge_failure=spin)" in messages


def test_label_cli_counts_empty_answers(tmp_path, caplog, capsys):
    generations = write_jsonl(tmp_path / "generations.jsonl", [
        generation(1, generated=""),
        generation(2, generated="   "),
        generation(3, reference=""),
        generation(4),
    ])
    with caplog.at_level(logging.WARNING, logger="dnpo.labeling"):
        code = main(["label", "--generations", str(generations), "--iteration", "0",
                     "--output-dir", str(tmp_path / "out")])
    assert code == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["skipped"] == {"empty_reference": 1}
    assert stats["empty_generated"] == 2
    assert stats["pairs"] == 3
    pairs = [json.loads(line) for line in (tmp_path / "out" / "pairs.jsonl").read_text().splitlines()]
    assert all(pair["chosen"].strip() for pair in pairs)
    messages = warnings(caplog)
    assert any(m.startswith(f"Skipped 1 prompt of {generations} with an empty") for m in messages)
    assert any(
        m.startswith(f"Empty or whitespace-only generated answers in {generations}: 2 of 4")
        for m in messages
    )


def test_invalid_scores_counted_by_kind(tmp_path, caplog):
    generations = write_jsonl(tmp_path / "generations.jsonl", [generation(i) for i in range(4)])
    judgments = tmp_path / "judgments.jsonl"
    judgments.write_text("".join(
        json.dumps({"id": f"p{i}", "reference": side(90), "generated": side(score)}) + "\n"
        for i, score in enumerate(["high", None, float("nan"), 1e9])
    ), encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="dnpo.labeling"):
        stats = label_to_files(generations, judgments, 1, tmp_path / "out")
    assert stats["judge_failed"] == 4
    assert stats["judgment_invalid"] == 4
    assert stats["judge_failed_by_kind"] == {"invalid_score": 3, "missing_score": 1}
    assert stats["judge"]["failed_calls"] == 0
    assert stats["judge"]["failed_calls_by_kind"] == {}
    assert stats["judge"]["invalid_results"] == 4
    assert stats["judge"]["invalid_results_by_kind"] == {"invalid_score": 3, "missing_score": 1}
    assert stats["first_invalid_judgment"] == (
        "id 'p0': the generated score 'high' is not an integer in 0-100"
    )
    messages = warnings(caplog)
    assert not any("failed judge call" in m for m in messages)
    invalid = [m for m in messages if m.startswith("Prompts with an invalid judgment record")]
    assert len(invalid) == 1
    assert f"in {judgments}: 4 (invalid_score: 3, missing_score: 1)" in invalid[0]
    assert "The first is id 'p0': the generated score 'high' is not an integer" in invalid[0]


def test_judgment_wrong_keys_not_failed_call(tmp_path, caplog):
    generations = write_jsonl(tmp_path / "generations.jsonl", [generation(1), generation(2)])
    judgments = write_jsonl(tmp_path / "judgments.jsonl", [
        {"id": "p1", "ref": side(90), "gen": side(10)},
        {"id": "p2", "reference": side(90), "generated": side(None, "api: HTTP 500")},
    ])
    with caplog.at_level(logging.WARNING, logger="dnpo.labeling"):
        stats = label_to_files(generations, judgments, 1, tmp_path / "out")
    assert stats["judge_failed"] == 2
    assert stats["judge_failed_by_kind"] == {"api": 1, "missing_result": 1}
    assert stats["judgment_invalid"] == 1
    assert stats["judge"]["failed_calls_by_kind"] == {"api": 1}
    assert stats["judge"]["invalid_results_by_kind"] == {"missing_result": 2}
    assert stats["first_invalid_judgment"] == (
        "id 'p1': the record has no reference result (its keys: id, ref, gen)"
    )
    messages = warnings(caplog)
    assert "1 prompt had a failed judge call (on_judge_failure=spin)" in messages
    assert any("invalid judgment record" in m and "(missing_result: 1)" in m for m in messages)


def test_unmatched_judgments_counted(tmp_path, caplog):
    generations = write_jsonl(tmp_path / "generations.jsonl", [generation(1)])
    judgments = write_jsonl(tmp_path / "judgments.jsonl", [
        {"id": "other", "reference": side(90), "generated": side(10)},
        {"id": "p1", "reference": side(90), "generated": side(10)},
        {"id": "stale", "reference": side(90), "generated": side(10)},
    ])
    with caplog.at_level(logging.WARNING, logger="dnpo.labeling"):
        stats = label_to_files(generations, judgments, 1, tmp_path / "out")
    assert stats["pairs"] == 1
    assert stats["judge_failed"] == 0
    assert stats["judgments_unmatched"] == 2
    assert stats["first_unmatched_judgment_id"] == "other"
    assert stats["judge"]["calls"] == 2
    messages = warnings(caplog)
    expected = (
        f"Judgments in {judgments} whose id matches no generation in {generations}: 2, "
        "ignored (the first is id 'other')"
    )
    assert any(m.startswith(expected) for m in messages)


def test_judgment_without_id_names_file(tmp_path):
    generations = write_jsonl(tmp_path / "generations.jsonl", [generation(1)])
    judgments = write_jsonl(tmp_path / "judgments.jsonl", [{"reference": side(1)}])
    with pytest.raises(DataError, match=f"judgments file {judgments}: record 1 lacks id"):
        label_to_files(generations, judgments, 1, tmp_path / "out")


def test_generation_without_generated_names_file(tmp_path):
    row = generation(2)
    del row["generated"]
    generations = write_jsonl(tmp_path / "generations.jsonl", [generation(1), row])
    with pytest.raises(DataError, match=f"generations file {generations}: record 2 lacks generated"):
        label_to_files(generations, None, 0, tmp_path / "out")


@pytest.mark.parametrize("field", ["reference", "generated"])
def test_generation_null_text_names_record(tmp_path, field):
    generations = write_jsonl(tmp_path / "generations.jsonl",
                              [generation(1), generation(2, **{field: None})])
    with pytest.raises(DataError, match=f"record 2 has {field} None, not a string"):
        label_to_files(generations, None, 0, tmp_path / "out")


def test_label_cli_bad_judgments_one_line(tmp_path, capsys):
    generations = write_jsonl(tmp_path / "generations.jsonl", [generation(1)])
    judgments = write_jsonl(tmp_path / "judgments.jsonl", [{"score": 3}])
    code = main(["label", "--generations", str(generations), "--judgments", str(judgments),
                 "--iteration", "1", "--output-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert "record 1 lacks id" in err
    assert len(err.strip().splitlines()) == 1


def test_generations_passed_as_judgments_rejected(tmp_path, capsys):
    generations = write_jsonl(tmp_path / "generations.jsonl", [generation(1)])
    code = main(["label", "--generations", str(generations), "--judgments", str(generations),
                 "--iteration", "1", "--output-dir", str(tmp_path / "out")])
    error = capsys.readouterr().err
    assert code == 2
    assert error.startswith(f"dnpo label: error: judgments file {generations}: record 1 has reference '2'")
    assert "pass a judgments file written by `dnpo judge`" in error
    assert len(error.strip().splitlines()) == 1
    assert not (tmp_path / "out" / "pairs.jsonl").exists()


def test_judgment_side_number_rejected(tmp_path):
    generations = write_jsonl(tmp_path / "generations.jsonl", [generation(1)])
    judgments = write_jsonl(tmp_path / "judgments.jsonl",
                            [{"id": "p1", "reference": side(90), "generated": 5}])
    with pytest.raises(DataError, match="record 1 has generated 5, not a judge result"):
        label_to_files(generations, judgments, 1, tmp_path / "out")


def test_judgment_usage_not_mapping_counted(tmp_path):
    generations = write_jsonl(tmp_path / "generations.jsonl", [generation(1)])
    judgments = write_jsonl(tmp_path / "judgments.jsonl", [
        {"id": "p1", "reference": side(90), "generated": side(10), "usage": ["bad"]},
    ])
    stats = label_to_files(generations, judgments, 1, tmp_path / "out")
    assert stats["pairs"] == 1
    assert stats["judge"]["calls"] == 2
    assert stats["judge"]["failed_calls"] == 0


def test_label_cli_empty_generations_rejected(tmp_path, capsys):
    generations = write_jsonl(tmp_path / "generations.jsonl", [])
    code = main(["label", "--generations", str(generations), "--iteration", "0",
                 "--output-dir", str(tmp_path / "out")])
    error = capsys.readouterr().err
    assert code == 2
    assert error.startswith(f"dnpo label: error: generations file {generations} has no records")
    assert "pass the output of `dnpo generate`" in error
    assert len(error.strip().splitlines()) == 1
    assert not (tmp_path / "out" / "pairs.jsonl").exists()
