"""Text helpers for log and error messages."""

from __future__ import annotations


def format_count(count: int, noun: str, plural: str | None = None) -> str:
    """Format `count` with the singular or plural noun: `1 row`, `0 rows`, `2 entries`.

    `plural` defaults to `noun + "s"`; pass it for irregular plurals.
    """
    word = noun if count == 1 else (plural or f"{noun}s")
    return f"{count} {word}"
