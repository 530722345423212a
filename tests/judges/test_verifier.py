import json
import re

import pytest

from dnpo.data import DataConfig, load_sft_examples
from dnpo.judges import JudgeConfig, make_judge
from dnpo.judges.verifier import VerifierJudge, extract_final_answer


@pytest.fixture
def gsm8k_rows(shared_dir):
    examples, _ = load_sft_examples(DataConfig(path=str(shared_dir / "data/gsm8k/test.jsonl")))
    return examples[:50]


def corrupt(reference: str) -> str:
    """Add 1 to the number after `####`."""
    head, tail = reference.rsplit("####", 1)
    number = int(tail.strip().replace(",", ""))
    return f"{head}#### {number + 1}"


def test_gold_references_score_100(gsm8k_rows):
    judge = VerifierJudge()
    results = judge.score(
        [row["prompt"] for row in gsm8k_rows],
        [row["reference"] for row in gsm8k_rows],
        [row["gold_answer"] for row in gsm8k_rows],
    )
    assert len(results) == 50
    assert [r.score for r in results] == [100] * 50
    assert all(r.error is None for r in results)


def test_corrupted_numbers_score_0(gsm8k_rows):
    judge = VerifierJudge()
    results = judge.score(
        [row["prompt"] for row in gsm8k_rows],
        [corrupt(row["reference"]) for row in gsm8k_rows],
        [row["gold_answer"] for row in gsm8k_rows],
    )
    assert [r.score for r in results] == [0] * 50


def test_raw_gsm8k_answers_with_calculator_notes(shared_dir):
    rows = (shared_dir / "data/gsm8k/test.jsonl").read_text(encoding="utf-8").splitlines()[:5]
    assert any("<<" in row for row in rows)
    judge = VerifierJudge()
    for line in rows:
        row = json.loads(line)
        gold = row["answer"].rsplit("####", 1)[1].strip()
        assert judge.score_one(row["answer"], gold).score == 100


@pytest.mark.parametrize(
    ("response", "gold", "score"),
    [
        ("So she makes $18 every day.", "18", 100),
        ("The total is 1,234 dollars.", "1234", 100),
        ("Answer: \\boxed{42}", "42", 100),
        ("\\boxed{\\frac{1}{2}} no wait, \\boxed{7}", "7", 100),
        ("#### 18\nThe answer is 20", "18", 100),
        ("It costs 18.00.", "18", 100),
        ("The temperature drops to -5 degrees.", "-5", 100),
        ("She eats 3/4 of it", "0.75", 100),
        ("He walks 12 km, then 5 km, so 17km.", "17", 100),
        ("The answer is 19.", "18", 0),
        ("#### 1,000,001", "1000001", 100),
        ("50% of them", "50", 100),
    ],
)
def test_answer_extraction(response, gold, score):
    assert VerifierJudge().score_one(response, gold).score == score


def test_no_answer_is_score_0_not_failure():
    result = VerifierJudge().score_one("I don't know.", "18")
    assert result.score == 0
    assert result.error is None
    assert "no final answer" in result.raw


def test_missing_gold_is_failure():
    result = VerifierJudge().score_one("#### 18", None)
    assert result.score is None
    assert result.error.startswith("verifier:")


def test_extract_prefers_marker_then_boxed():
    assert extract_final_answer("7 then \\boxed{8} #### 9") == ("9", "####")
    assert extract_final_answer("7 then \\boxed{8}") == ("8", "boxed")
    assert extract_final_answer("7 then 8") == ("8", "last number")
    assert extract_final_answer("none") == (None, "none")


def test_make_judge_verifier_has_no_cache():
    judge = make_judge(JudgeConfig(type="verifier"))
    assert isinstance(judge, VerifierJudge)
    assert re.fullmatch(r"verifier:v\d+", judge.identity)
