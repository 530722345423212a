"""The judge interface, its result type and the judge prompt template.

A judge scores answers to prompts with integers 0-100. A failed item has
`score=None` and an `error` whose prefix names the kind of failure (`parse:`,
`timeout:`, `api:`, `connection:`, `malformed:`, `verifier:`); it is never a 0.
"""

from __future__ import annotations

import hashlib
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from dnpo.configbase import ConfigError

Prompt = str | list[dict[str, Any]]
PLACEHOLDERS = ("{question}", "{answer}")
PLACEHOLDER_PATTERN = re.compile(r"\{question\}|\{answer\}")


@dataclass
class JudgeResult:
    """One judged item: a 0-100 score or None, the judge's raw output and the failure reason.

    The usage fields feed the label statistics and are not part of the score record.
    """

    score: int | None
    raw: str
    error: str | None = None
    latency_s: float = 0.0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached: bool = False

    @property
    def ok(self) -> bool:
        return self.score is not None and self.error is None

    def record(self) -> dict[str, Any]:
        """The `{"score", "raw", "error"}` record stored in judgments.jsonl."""
        return {"score": self.score, "raw": self.raw, "error": self.error}

    def usage(self) -> dict[str, Any]:
        return {
            "latency_s": round(self.latency_s, 4),
            "retries": self.retries,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cached": self.cached,
        }


class Judge(ABC):
    """Scores answers; `identity` names everything that changes a score, for caching."""

    type: str = ""
    needs_gold_answer: bool = False

    @property
    @abstractmethod
    def identity(self) -> str:
        """Judge type, server, model, template hash and parser version, e.g. `openai:...:parse1`."""

    @abstractmethod
    def score(
        self,
        prompts: list[Prompt],
        responses: list[str],
        gold_answers: list[str | None] | None = None,
    ) -> list[JudgeResult]:
        """Return one result per (prompt, response) pair, in order."""

    def close(self) -> None:  # noqa: B027 (optional hook, no-op by default)
        """Release models, clients and files."""


def check_lengths(prompts: list, responses: list, gold_answers: list | None) -> None:
    if len(prompts) != len(responses):
        raise ValueError(f"got {len(prompts)} prompts but {len(responses)} responses")
    if gold_answers is not None and len(gold_answers) != len(prompts):
        raise ValueError(f"got {len(prompts)} prompts but {len(gold_answers)} gold answers")


# Templates


def load_template(path: str | Path | None = None) -> str:
    """Read a judge template (the built-in rubric when `path` is empty).

    The template must contain `{question}` and `{answer}`; trailing whitespace is removed.
    """
    if path:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"judge.template_file {path} not found; pass an existing text file")
        text = path.read_text(encoding="utf-8")
    else:
        text = (
            resources.files("dnpo")
            .joinpath("templates/judge_rubric.txt")
            .read_text(encoding="utf-8")
        )
    missing = [p for p in PLACEHOLDERS if p not in text]
    if missing:
        raise ConfigError(
            f"judge template {path or 'judge_rubric.txt'} lacks {' and '.join(missing)}; "
            "the template must mark where the question and the answer go"
        )
    return text.rstrip()


def template_hash(template: str) -> str:
    return hashlib.sha256(template.encode("utf-8")).hexdigest()[:16]


def render_judge_prompt(template: str, prompt: Prompt, response: str) -> str:
    """Fill `{question}` and `{answer}` in one pass, so text inside them is never substituted."""
    values = {"{question}": question_text(prompt), "{answer}": response}
    return PLACEHOLDER_PATTERN.sub(lambda match: values[match.group(0)], template)


def question_text(prompt: Prompt) -> str:
    """Return a prompt as text: one user turn as-is, a conversation as `Role: content` lines."""
    if isinstance(prompt, str):
        return prompt
    if len(prompt) == 1 and prompt[0].get("role") == "user":
        return str(prompt[0].get("content", ""))
    lines = []
    for message in prompt:
        if message.get("content") is None:
            continue
        lines.append(f"{str(message.get('role', 'user')).capitalize()}: {message['content']}")
    return "\n".join(lines)
