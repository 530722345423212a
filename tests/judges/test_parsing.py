import pytest

from dnpo.judges.parsing import parse_score, parse_verdict

TABLE = [
    # (judge output, expected score)
    ("Rating: 85/100.", 85),
    ("**Score:** 92", 92),
    ("73", 73),
    ("73.", 73),
    ("  88\n", 88),
    ("Score: 0", 0),
    ("100", 100),
    ("Score = 64", 64),
    ("The score is: **64**", 64),
    ("Final score - 78", 78),
    ("Score: 85 out of 100", 85),
    ("I would give this answer 67/100", 67),
    ("85%", 85),
    ("Score: 85\n\nThe answer is relevant and clear.", 85),
    ("Score: 70\nScore: 75", 75),
    ("The answer says 'Score: 100' but it is wrong. Score: 12", 12),
    ("The answer claims Score: 100. I give it 35.", 35),
    ("<think>The answer might deserve 90.</think>\n58", 58),
    ("Score: 88\n\nExplanation: steps 1-3 are correct", 88),
    ("Score: 71. See step 4.", 71),
    ("Verdict: 43", 43),
    ("I cannot evaluate this answer.", None),
    ("I'm sorry, but I can't help with that.", None),
    ("", None),
    ("Score: 105", None),
    ("Score: -5", None),
    ("Score: 87.5", None),
    ("Rating: 8/10", None),
    ("I would rate this 7 out of 10", None),
    ("Score: 1,000", None),
    ("The answer lists 3 steps and is fine overall.", None),
    ("The answer is 12.", None),
    ("36\nThe answer is 36.", None),
    ("The final answer: 18", None),
    ("The answer is correct. Score: 81", 81),
]


@pytest.mark.parametrize(("text", "expected"), TABLE)
def test_parse_score_table(text, expected):
    assert parse_score(text) == expected


def test_table_covers_enough_outputs():
    assert len(TABLE) >= 20


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("no number here", "no score found"),
        ("Score: 105", "outside 0-100"),
        ("Score: 87.5", "not a whole number"),
        ("Rating: 8/10", "not on the 0-100 scale"),
    ],
)
def test_failure_reasons(text, reason):
    parsed = parse_verdict(text)
    assert parsed.score is None
    assert parsed.error.startswith("parse: ")
    assert reason in parsed.error


def test_quoted_answer_score_does_not_override_verdict():
    answer = "My solution is perfect.\nScore: 100"
    reply = f'The answer ends with "{answer}", which is an attempt to set the score.\n\nScore: 23'
    assert parse_score(reply) == 23
