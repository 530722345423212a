"""SQLite cache of judge scores, so that no item is paid for twice.

The key is a SHA-256 over the judge identity, the template hash, the prompt, the
response and the gold answer. Only successful scores are stored: a failed call is
retried the next time the item is judged. One connection is shared by threads
behind a lock; WAL mode lets several processes share the file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
from pathlib import Path

from dnpo.judges.base import Judge, JudgeResult, Prompt, check_lengths

logger = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS judgments (
    key TEXT PRIMARY KEY,
    identity TEXT NOT NULL,
    prompt TEXT NOT NULL,
    response TEXT NOT NULL,
    score INTEGER NOT NULL,
    raw TEXT NOT NULL,
    created REAL NOT NULL
)
"""


def default_cache_path() -> Path:
    """$DNPO_CACHE/judge_cache.sqlite, else under $XDG_CACHE_HOME/dnpo or ~/.cache/dnpo."""
    if os.environ.get("DNPO_CACHE"):
        return Path(os.environ["DNPO_CACHE"]) / "judge_cache.sqlite"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "dnpo" / "judge_cache.sqlite"


def cache_key(
    identity: str, template_sha: str, prompt: Prompt, response: str, gold_answer: str | None
) -> str:
    payload = json.dumps(
        [identity, template_sha, prompt, response, gold_answer], ensure_ascii=False, sort_keys=True
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class JudgeCache:
    """Thread-safe SQLite store of (score, raw) by cache key."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._connection = sqlite3.connect(self.path, timeout=60, check_same_thread=False)
        with self._lock:
            self._connection.execute("PRAGMA journal_mode=WAL")
            self._connection.execute(SCHEMA)
            self._connection.commit()

    def get(self, key: str) -> tuple[int, str] | None:
        with self._lock:
            row = self._connection.execute(
                "SELECT score, raw FROM judgments WHERE key = ?", (key,)
            ).fetchone()
        return (int(row[0]), row[1]) if row else None

    def put(
        self, key: str, identity: str, prompt: Prompt, response: str, score: int, raw: str
    ) -> None:
        prompt_text = json.dumps(prompt, ensure_ascii=False)
        with self._lock:
            self._connection.execute(
                "INSERT OR REPLACE INTO judgments VALUES (?, ?, ?, ?, ?, ?, ?)",
                (key, identity, prompt_text, response, score, raw, time.time()),
            )
            self._connection.commit()

    def __len__(self) -> int:
        with self._lock:
            return self._connection.execute("SELECT COUNT(*) FROM judgments").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._connection.close()


class CachedJudge(Judge):
    """Wraps a judge: cached items are served from SQLite, successes are stored."""

    def __init__(self, judge: Judge, cache: JudgeCache, template_sha: str = "") -> None:
        self.judge = judge
        self.cache = cache
        self.template_sha = template_sha
        self.type = judge.type
        self.needs_gold_answer = judge.needs_gold_answer

    @property
    def identity(self) -> str:
        return self.judge.identity

    def score(
        self,
        prompts: list[Prompt],
        responses: list[str],
        gold_answers: list[str | None] | None = None,
    ) -> list[JudgeResult]:
        check_lengths(prompts, responses, gold_answers)
        golds = gold_answers or [None] * len(prompts)
        keys = [
            cache_key(self.identity, self.template_sha, prompt, response, gold)
            for prompt, response, gold in zip(prompts, responses, golds, strict=True)
        ]
        results: list[JudgeResult | None] = [None] * len(prompts)
        misses = []
        for i, key in enumerate(keys):
            hit = self.cache.get(key)
            if hit is None:
                misses.append(i)
            else:
                results[i] = JudgeResult(score=hit[0], raw=hit[1], cached=True)
        if misses:
            fresh = self.judge.score(
                [prompts[i] for i in misses],
                [responses[i] for i in misses],
                [golds[i] for i in misses] if gold_answers is not None else None,
            )
            for i, result in zip(misses, fresh, strict=True):
                results[i] = result
                if result.ok:
                    self.cache.put(
                        keys[i], self.identity, prompts[i], responses[i], result.score, result.raw
                    )
        return results  # type: ignore[return-value]

    def close(self) -> None:
        self.judge.close()
        self.cache.close()
