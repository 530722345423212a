"""Read a 0-100 score from a judge model's free-text reply.

Rules:
- A number counts as a verdict when a label precedes it (`Score:`, `**Rating:**`,
  `score is`), when a `/100`, `out of 100` or `%` follows it, or when nothing but
  punctuation and markdown follows it at the end of the reply (`73`, `I give it 73.`).
- The last verdict in the reply wins, so a reply that ends with its own verdict is
  not changed by numbers it quoted earlier, such as a `Score: 100` copied from the
  judged answer.
- No verdict, a number outside 0-100, a decimal, or a scale other than 100 (`8/10`)
  gives no score; the reason says which.

Known limit: an explanation that ends with an unlabeled number (`... costs 40`) is
read as the verdict, so judges should be asked for the score alone. Numbers that end a
range (`1-3`) or follow words such as `step`, `page` or `answer is` are not read that
way, because a judge that restates the judged answer (`The answer is 12.`) gives no score.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

NUMBER = re.compile(r"(?<![\w.,])(-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?)(?![\w]|[.,]\d)")
LABEL = re.compile(
    r"\b(?:score|rating|rated|grade|verdict|evaluation)\b"
    r"(?:\s+(?:is|of|would be|will be|=))?$",
    re.IGNORECASE,
)
# Markdown, separators and quotes allowed between a label and its number.
LABEL_GAP = re.compile(r"[\s*_`#:=\-–—>\[\](\"']+$")
SCALE = re.compile(r"\s*(?:/|out of\b)\s*(\d+)", re.IGNORECASE)
PERCENT = re.compile(r"\s*%")
DENOMINATOR_BEFORE = re.compile(r"(?:/|\bout of)\s*$", re.IGNORECASE)
# An unlabeled number at the end is no verdict when it ends a range or names a part.
NOT_A_VERDICT_BEFORE = re.compile(
    r"(?:\d\s*[-–—]|\b(?:steps?|points?|lines?|items?|questions?|pages?|sections?|parts?|"
    r"chapters?|options?|and|or|to|answer\s+is|answer\s*[:=]))\s*$",
    re.IGNORECASE,
)
TRAILER = re.compile(r"[\s*_`.!)\]\"'”’]*")
THINKING = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
CONTEXT = 40
# Part of the judge identity, so cached scores are not reused after the rules change.
PARSER_VERSION = 1


@dataclass
class ParsedScore:
    """A parsed verdict: `score` is an int in 0-100, or None with `error` saying why."""

    score: int | None
    error: str | None


def parse_score(text: str) -> int | None:
    """Return the judge's final 0-100 score in `text`, or None."""
    return parse_verdict(text).score


def parse_verdict(text: str) -> ParsedScore:
    """Find the last verdict in a judge reply and validate it."""
    text = THINKING.sub(" ", text or "")
    verdict = None
    for match in NUMBER.finditer(text):
        before = text[max(0, match.start() - CONTEXT) : match.start()]
        if DENOMINATOR_BEFORE.search(before):
            continue
        after = text[match.end() :]
        scale = SCALE.match(after)
        rest = after[scale.end() :] if scale else after
        labeled = LABEL.search(LABEL_GAP.sub("", before)) is not None
        percent = PERCENT.match(after) is not None
        at_end = TRAILER.fullmatch(rest) is not None and not NOT_A_VERDICT_BEFORE.search(before)
        if labeled or scale or percent or at_end:
            verdict = (match.group(1), scale.group(1) if scale else None)
    if verdict is None:
        return ParsedScore(None, "parse: no score found in the judge output")
    return validate_verdict(*verdict)


def validate_verdict(number: str, denominator: str | None) -> ParsedScore:
    if denominator is not None and int(denominator) != 100:
        return ParsedScore(None, f"parse: score {number}/{denominator} is not on the 0-100 scale")
    if "." in number:
        return ParsedScore(None, f"parse: score {number} is not a whole number")
    value = int(number.replace(",", ""))
    if not 0 <= value <= 100:
        return ParsedScore(None, f"parse: score {value} is outside 0-100")
    return ParsedScore(value, None)
