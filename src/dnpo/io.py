"""Crash-safe file writes: atomic replace for whole files, append-only JSONL for records.

A process killed at any point leaves either the old or the new version of a whole
file, and a JSONL file whose only possible damage is a torn last line, which
`JsonlWriter` removes when it reopens the file.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# Test hook for crash tests: `SUFFIX:N` or `SUFFIX:N:before` makes the process SIGKILL
# itself at its N-th write to a file whose path ends with SUFFIX. By default it dies
# after the write. With `before` it dies with the write half done, so a JSONL line is
# half written, or an atomic write's temporary file exists but is not yet renamed.
KILL_AT_ENV = "DNPO_TEST_KILL_AT"
_kill_writes = 0


def _kill_mode(path: Path) -> str | None:
    """Count a write to `path` against $DNPO_TEST_KILL_AT; return `after`/`before` at the N-th."""
    spec = os.environ.get(KILL_AT_ENV)
    if not spec:
        return None
    suffix, count, *mode = spec.split(":")
    if not str(path).endswith(suffix):
        return None
    global _kill_writes
    _kill_writes += 1
    if _kill_writes != int(count):
        return None
    return mode[0] if mode else "after"


def _kill_self() -> None:
    os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write `text` to `path` through a temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    kill = _kill_mode(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        if kill == "before":
            _kill_self()
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    if kill == "after":
        _kill_self()


def atomic_write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


def read_json(path: str | Path) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def repair_jsonl(path: str | Path) -> int:
    """Cut a torn (unterminated or unparsable) last line; return the bytes removed."""
    path = Path(path)
    if not path.exists():
        return 0
    with open(path, "rb+") as handle:
        data = handle.read()
        if not data:
            return 0
        keep = len(data)
        if not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1
        else:
            last_start = data.rfind(b"\n", 0, len(data) - 1) + 1
            try:
                json.loads(data[last_start:].decode("utf-8"))
            except (ValueError, UnicodeDecodeError):
                keep = last_start
        if keep < len(data):
            handle.truncate(keep)
            logger.warning("Removed a torn last line (%d bytes) from %s", len(data) - keep, path)
        return len(data) - keep


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read every record of a JSONL file, skipping a torn last line."""
    return list(iter_jsonl(path))


def iter_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    path = Path(path)
    if not path.exists():
        return
    with open(path, encoding="utf-8") as handle:
        lines = handle.readlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines) and not line.endswith("\n"):
                return
            raise ValueError(f"{path}:{number}: invalid JSON line; fix or delete it") from None


class JsonlWriter:
    """Append-only JSONL writer keyed by record id, safe to reopen after a crash.

    Reopening repairs a torn last line and loads the ids already written, so a
    rerun skips finished records (`done`) and never writes one twice.
    """

    def __init__(self, path: str | Path, key: str = "id") -> None:
        self.path = Path(path)
        self.key = key
        self.path.parent.mkdir(parents=True, exist_ok=True)
        repair_jsonl(self.path)
        self.done: set[Any] = {row[key] for row in iter_jsonl(self.path) if key in row}
        self._handle = open(self.path, "a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> bool:
        """Append one record and flush it to disk; return False for an id already written."""
        record_id = record.get(self.key)
        if record_id in self.done:
            return False
        line = json.dumps(record, ensure_ascii=False, default=str) + "\n"
        kill = _kill_mode(self.path)
        if kill == "before":
            line = line[: len(line) // 2]
        self._handle.write(line)
        self._handle.flush()
        os.fsync(self._handle.fileno())
        if kill:
            _kill_self()
        self.done.add(record_id)
        return True

    def write_many(self, records: Iterable[dict[str, Any]]) -> int:
        return sum(self.write(record) for record in records)

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
