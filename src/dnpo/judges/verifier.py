"""Exact-answer judge for tasks with known answers (GSM8K style): 100 if right, else 0.

The final answer of a response is, in order of preference: the text after the last
`####`, the content of the last `\\boxed{...}`, or the last number in the response.
Thousands separators, `$`, `%`, units and a trailing period are ignored; `3/4` is a
fraction. The answer is compared to the gold answer as an exact rational number, so
`18`, `18.00` and `$18` all match gold `18`. A response without any number is a valid
score of 0 (its reason is in `raw`), not a failed call.
"""

from __future__ import annotations

import re
from fractions import Fraction

from dnpo.judges.base import Judge, JudgeResult, Prompt, check_lengths

# An optional attached minus sign and `$`, digits with optional thousands separators and
# decimals, and an optional `/denominator`.
NUMBER = re.compile(
    r"(?<![\w.])(-)?\$?((?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?)(?:\s?/\s?(\d+)(?![\d.]))?"
)
MARKER = "####"


def find_boxed(text: str) -> str | None:
    """Return the content of the last `\\boxed{...}`, with nested braces, or None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, begin = 0, start + len("\\boxed{")
    for i in range(begin, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            if depth == 0:
                return text[begin:i]
            depth -= 1
    return None


def extract_final_answer(text: str) -> tuple[str | None, str]:
    """Return (the final answer's number as text or None, where it came from)."""
    if MARKER in text:
        segment = text.rsplit(MARKER, 1)[1].strip().split("\n", 1)[0]
        number = first_number(segment)
        if number is not None:
            return number, MARKER
    boxed = find_boxed(text)
    if boxed is not None:
        number = first_number(boxed)
        if number is not None:
            return number, "boxed"
    matches = list(NUMBER.finditer(text))
    if matches:
        return number_text(matches[-1]), "last number"
    return None, "none"


def first_number(text: str) -> str | None:
    match = NUMBER.search(text)
    return number_text(match) if match else None


def number_text(match: re.Match) -> str:
    sign, digits, denominator = (
        match.group(1) or "",
        match.group(2).replace(",", ""),
        match.group(3),
    )
    return f"{sign}{digits}/{denominator}" if denominator else f"{sign}{digits}"


def to_number(text: str | None) -> Fraction | None:
    """Parse `-1,234.50`, `$18`, `3/4` or `18.` as an exact number; None if not a number."""
    number = first_number(text.strip()) if text else None
    if number is None:
        return None
    try:
        return Fraction(number)
    except (ValueError, ZeroDivisionError):
        return None


class VerifierJudge(Judge):
    """Scores 100 when the response's final answer equals the gold answer, else 0."""

    type = "verifier"
    needs_gold_answer = True

    @property
    def identity(self) -> str:
        return "verifier:v1"

    def score(
        self,
        prompts: list[Prompt],
        responses: list[str],
        gold_answers: list[str | None] | None = None,
    ) -> list[JudgeResult]:
        check_lengths(prompts, responses, gold_answers)
        golds = gold_answers or [None] * len(responses)
        return [
            self.score_one(response, gold) for response, gold in zip(responses, golds, strict=True)
        ]

    def score_one(self, response: str, gold_answer: str | None) -> JudgeResult:
        if gold_answer is None:
            return JudgeResult(None, "", "verifier: the item has no gold answer; use another judge")
        gold = to_number(str(gold_answer))
        if gold is None:
            return JudgeResult(None, "", f"verifier: gold answer {gold_answer!r} is not a number")
        answer, source = extract_final_answer(response)
        value = to_number(answer)
        if value is None:
            return JudgeResult(0, f"no final answer found; gold {gold_answer}")
        correct = value == gold
        raw = f"final answer {answer} (from {source}); gold {gold_answer}"
        return JudgeResult(100 if correct else 0, raw)
