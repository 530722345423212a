import json

import pytest

from dnpo.configbase import ConfigError
from dnpo.io import read_json, read_jsonl
from dnpo.labeling import build_pairs, label_to_files, percentiles

PROMPT = [{"role": "user", "content": "Q"}]


def generation(item_id, reference="human answer", generated="model answer", finish_reason="stop"):
    return {
        "id": item_id,
        "prompt": PROMPT,
        "reference": reference,
        "gold_answer": None,
        "generated": generated,
        "finish_reason": finish_reason,
        "prompt_tokens": 3,
        "completion_tokens": 4,
    }


def judgment(item_id, reference_score, generated_score, error=None, usage=None):
    def side(score):
        failed = score is None
        return {
            "score": score,
            "raw": "" if failed else str(score),
            "error": (error or "parse: no score found in the judge output") if failed else None,
        }

    record = {"id": item_id, "reference": side(reference_score), "generated": side(generated_score)}
    if usage is not None:
        record["usage"] = {"reference": usage, "generated": usage}
    return record


def test_higher_score_is_chosen_and_tie_keeps_reference():
    generations = [generation("win"), generation("tie"), generation("loss")]
    judgments = [judgment("win", 40, 90), judgment("tie", 70, 70), judgment("loss", 80, 20)]
    pairs, stats = build_pairs(generations, judgments, iteration=1)
    by_id = {p["id"]: p for p in pairs}
    assert by_id["win"]["chosen"] == "model answer"
    assert by_id["win"]["rejected"] == "human answer"
    assert by_id["win"]["chosen_source"] == "generated"
    assert by_id["tie"]["chosen"] == "human answer"
    assert by_id["tie"]["chosen_source"] == "reference"
    assert by_id["loss"]["chosen"] == "human answer"
    assert all(p["label_source"] == "judge" for p in pairs)
    assert (by_id["win"]["reference_score"], by_id["win"]["generated_score"]) == (40, 90)
    assert set(by_id["win"]) == {
        "id",
        "prompt",
        "chosen",
        "rejected",
        "chosen_source",
        "reference_score",
        "generated_score",
        "label_source",
    }
    assert stats["generated_wins"] == 1
    assert stats["ties"] == 1
    assert stats["generated_losses"] == 1
    assert stats["generated_win_rate"] == pytest.approx(1 / 3, abs=1e-4)
    assert stats["mean_reference_score"] == pytest.approx(190 / 3, abs=1e-3)
    assert stats["mean_generated_score"] == pytest.approx(180 / 3, abs=1e-3)
    assert stats["chosen_source"] == {"generated": 1, "reference": 2}


def test_iteration_zero_is_spin_without_judging():
    generations = [generation("a"), generation("b")]
    pairs, stats = build_pairs(generations, [judgment("a", 10, 90)], iteration=0)
    assert [p["chosen"] for p in pairs] == ["human answer", "human answer"]
    assert [p["label_source"] for p in pairs] == ["spin", "spin"]
    assert stats["label_source"] == {"spin": 2}
    assert stats["judged_labels"] is False
    assert stats["judge_failed"] == 0


def test_no_judgments_gives_spin_labels_at_later_iterations():
    pairs, stats = build_pairs([generation("a")], None, iteration=2)
    assert pairs[0]["label_source"] == "spin"
    assert pairs[0]["reference_score"] is None
    assert stats["generated_win_rate"] is None


def test_identical_answer_gives_no_pair():
    generations = [
        generation("same", reference="The answer is 4.", generated="  The answer is 4.\n"),
        generation("other"),
    ]
    pairs, stats = build_pairs(
        generations, [judgment("same", 50, 50), judgment("other", 50, 60)], 1
    )
    assert [p["id"] for p in pairs] == ["other"]
    assert stats["skipped"] == {"identical_to_reference": 1}
    assert stats["pairs"] == 1


@pytest.mark.parametrize("reference", ["", "   \n"])
def test_empty_reference_gives_no_pair(reference):
    generations = [generation("empty", reference=reference), generation("ok")]
    for iteration, judgments in ((0, None), (1, [judgment("empty", 0, 90), judgment("ok", 1, 2)])):
        pairs, stats = build_pairs(generations, judgments, iteration)
        assert [p["id"] for p in pairs] == ["ok"]
        assert stats["skipped"] == {"empty_reference": 1}
        assert stats["pairs"] == 1
    # The skipped prompt's judgment (reference 0, generated 90) counts in no rate.
    assert stats["judged"] == 1
    assert stats["mean_generated_score"] == 2


@pytest.mark.parametrize("generated", ["", "   "])
def test_empty_generated_is_rejected_and_counted(generated):
    generations = [generation("empty", generated=generated), generation("ok")]
    pairs, stats = build_pairs(generations, None, 0)
    assert [p["rejected"] for p in pairs] == [generated, "model answer"]
    assert [p["chosen"] for p in pairs] == ["human answer", "human answer"]
    assert stats["empty_generated"] == 1
    assert stats["skipped"] == {}


def test_empty_generated_never_chosen():
    generations = [generation("win", generated=""), generation("loss", generated=" ")]
    judgments = [judgment("win", 10, 90), judgment("loss", 90, 10)]
    pairs, stats = build_pairs(generations, judgments, 1)
    assert [p["id"] for p in pairs] == ["loss"]
    assert pairs[0]["chosen"] == "human answer"
    assert pairs[0]["rejected"] == " "
    assert stats["skipped"] == {"empty_chosen": 1}
    assert stats["empty_generated"] == 2
    assert stats["generated_wins"] == 1


def test_truncated_generation_is_never_chosen():
    generations = [
        generation("cut", finish_reason="length"),
        generation("cut-loses", finish_reason="length"),
    ]
    pairs, stats = build_pairs(
        generations, [judgment("cut", 10, 95), judgment("cut-loses", 90, 10)], 1
    )
    assert [p["chosen_source"] for p in pairs] == ["reference", "reference"]
    assert pairs[0]["label_source"] == "judge"
    assert stats["generated_truncated"] == 2
    assert stats["truncated_not_chosen"] == 1
    assert stats["generated_wins"] == 1


def test_truncated_generation_is_rejected_at_iteration_zero():
    pairs, stats = build_pairs([generation("cut", finish_reason="length")], None, 0)
    assert pairs[0]["rejected"] == "model answer"
    assert stats["generated_truncated"] == 1


def test_failed_judge_falls_back_to_spin_label():
    generations = [generation("fail"), generation("missing"), generation("ok")]
    judgments = [
        judgment("fail", 70, None, error="timeout: no response within 60 s"),
        judgment("ok", 1, 2),
    ]
    pairs, stats = build_pairs(generations, judgments, 1, on_judge_failure="spin")
    by_id = {p["id"]: p for p in pairs}
    assert by_id["fail"]["label_source"] == "judge_failed"
    assert by_id["fail"]["chosen"] == "human answer"
    assert by_id["fail"]["reference_score"] == 70
    assert by_id["fail"]["generated_score"] is None
    assert by_id["missing"]["label_source"] == "judge_failed"
    assert stats["judge_failed"] == 2
    assert stats["judgment_missing"] == 1
    assert stats["judged"] == 1
    assert stats["label_source"] == {"judge": 1, "judge_failed": 2}


def test_failed_judge_can_drop_the_pair():
    generations = [generation("fail"), generation("ok")]
    pairs, stats = build_pairs(
        generations, [judgment("fail", None, 50), judgment("ok", 1, 2)], 1, "drop"
    )
    assert [p["id"] for p in pairs] == ["ok"]
    assert stats["skipped"] == {"judge_failed": 1}
    assert stats["judge_failed"] == 1


def test_tie_can_drop_the_pair():
    generations = [generation("tie"), generation("win"), generation("failed")]
    judgments = [judgment("tie", 100, 100), judgment("win", 0, 100), judgment("failed", None, 100)]
    pairs, stats = build_pairs(generations, judgments, 1, on_tie="drop")
    assert [p["id"] for p in pairs] == ["win", "failed"]
    assert stats["skipped"] == {"tie": 1}
    assert stats["ties"] == 1
    assert stats["on_tie"] == "drop"


def test_tie_drop_leaves_iteration_zero_alone():
    pairs, _ = build_pairs([generation("tie")], [judgment("tie", 100, 100)], 0, on_tie="drop")
    assert [p["id"] for p in pairs] == ["tie"]


def test_invalid_tie_policy_rejected():
    with pytest.raises(ConfigError, match="on_tie must be one of"):
        build_pairs([], None, 1, on_tie="generated")


def test_invalid_failure_policy_rejected():
    with pytest.raises(ConfigError, match="on_judge_failure"):
        build_pairs([], None, 1, on_judge_failure="zero")


def test_label_to_files_writes_pairs_and_stats(tmp_path):
    generations = [generation("a", generated="Réponse 🙂"), generation("b"), generation("c")]
    usage = {
        "latency_s": 0.5,
        "retries": 1,
        "prompt_tokens": 100,
        "completion_tokens": 2,
        "cached": False,
    }
    judgments = [judgment("a", 10, 90, usage=usage), judgment("b", 90, 10, usage=usage)]
    failed = [judgment("c", None, None, error="api: HTTP 500: boom")]
    (tmp_path / "generations.jsonl").write_text(
        "".join(json.dumps(g, ensure_ascii=False) + "\n" for g in generations), encoding="utf-8"
    )
    (tmp_path / "judgments.jsonl").write_text("".join(json.dumps(j) + "\n" for j in judgments))
    (tmp_path / "judgments.failed.jsonl").write_text("".join(json.dumps(j) + "\n" for j in failed))
    stats = label_to_files(
        tmp_path / "generations.jsonl", tmp_path / "judgments.jsonl", 1, tmp_path / "out"
    )
    pairs = read_jsonl(tmp_path / "out" / "pairs.jsonl")
    assert [p["chosen"] for p in pairs] == ["Réponse 🙂", "human answer", "human answer"]
    assert read_json(tmp_path / "out" / "labels.json") == stats
    judge = stats["judge"]
    assert judge["calls"] == 6
    assert judge["failed_calls"] == 2
    assert judge["failed_calls_by_kind"] == {"api": 2}
    assert judge["retries"] == 4
    assert judge["prompt_tokens"] == 400
    assert judge["latency_s"]["p50"] == 0.5
    assert stats["judge_failed"] == 1


def test_label_cli_iteration_zero(tmp_path, capsys):
    from dnpo.cli import main

    (tmp_path / "generations.jsonl").write_text(json.dumps(generation("a")) + "\n")
    code = main(
        [
            "label",
            "--generations",
            str(tmp_path / "generations.jsonl"),
            "--iteration",
            "0",
            "--output-dir",
            str(tmp_path),
        ]
    )
    assert code == 0
    assert json.loads(capsys.readouterr().out)["pairs"] == 1
    assert read_jsonl(tmp_path / "pairs.jsonl")[0]["label_source"] == "spin"


def test_percentiles_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert percentiles(values) == {"p50": 50.0, "p90": 90.0, "p99": 99.0, "max": 100.0}
    assert percentiles([]) == {"p50": None, "p90": None, "p99": None, "max": None}
