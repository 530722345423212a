"""Judge a generations.jsonl file into judgments.jsonl, resumably.

judgments.jsonl contains one record per prompt id whose reference and generated answer
both got a score: `{"id", "reference": {"score", "raw", "error"}, "generated": {...},
"usage": {"reference": {...}, "generated": {...}}}`. Items with a failed side go to
the sibling file judgments.failed.jsonl instead, so a rerun judges them again. With the
cache on, the side that succeeded is not sent again. `load_judgments` merges both files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from dnpo.errors import DataError, JudgeStageError
from dnpo.io import JsonlWriter, atomic_write_text, read_jsonl
from dnpo.judges.base import Judge, JudgeResult, load_template
from dnpo.judges.config import JudgeConfig
from dnpo.outputs import check_output_settings

logger = logging.getLogger(__name__)

SIDES = ("reference", "generated")
# Keys of a generations.jsonl record that judging and labeling read.
GENERATION_FIELDS = ("id", "prompt", "reference", "generated")


def failures_path(output_path: str | Path) -> Path:
    """judgments.jsonl → judgments.failed.jsonl."""
    output_path = Path(output_path)
    return output_path.with_name(f"{output_path.stem}.failed.jsonl")


def read_records(path: str | Path, description: str) -> list[dict[str, Any]]:
    try:
        return read_jsonl(path)
    except (ValueError, UnicodeDecodeError) as error:
        raise DataError(f"{description} {path} is unreadable: {error}") from None


def require_fields(
    rows: list[Any], fields: tuple[str, ...], path: str | Path, description: str
) -> None:
    """Raise DataError naming the first record of `path` that is not a mapping with `fields`."""
    for number, row in enumerate(rows, start=1):
        missing = [field for field in fields if field not in row] if isinstance(row, dict) else fields
        if missing:
            raise DataError(
                f"{description} {path}: record {number} lacks {', '.join(missing)}; each record "
                f"needs the keys {', '.join(fields)}. Pass a file written by the matching dnpo command"
            )


def read_generations(path: str | Path) -> list[dict[str, Any]]:
    """Read a generations.jsonl file for judging or labeling.

    Raises FileNotFoundError for a missing file, and DataError for a file without
    records or with a record that lacks the needed keys or has a non-string text field.
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"generations file {path} not found; run `dnpo generate` first")
    rows = read_records(path, "generations file")
    if not rows:
        raise DataError(
            f"generations file {path} has no records; pass the output of `dnpo generate`"
        )
    require_fields(rows, GENERATION_FIELDS, path, "generations file")
    for number, row in enumerate(rows, start=1):
        for field in ("reference", "generated"):
            if not isinstance(row[field], str):
                raise DataError(
                    f"generations file {path}: record {number} has {field} {row[field]!r:.40}, "
                    "not a string; pass a file written by `dnpo generate`"
                )
    return rows


def require_side_results(rows: list[dict[str, Any]], path: str | Path, description: str) -> None:
    """Raise DataError naming the first record whose reference or generated side is not a mapping.

    A missing or null side counts as a failed judgment. A string or number there means
    the file is not a judgments file, for example a generations file passed by mistake.
    """
    for number, row in enumerate(rows, start=1):
        for side in SIDES:
            value = row.get(side)
            if value is not None and not isinstance(value, dict):
                value_repr = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
                raise DataError(
                    f"{description} {path}: record {number} has {side} {value_repr}, not a judge "
                    "result with a score; pass a judgments file written by `dnpo judge`"
                )


def load_judgments(path: str | Path) -> dict[str, dict[str, Any]]:
    """Return judgment records by id: complete ones, then failed ones for the other ids."""
    complete = read_records(path, "judgments file")
    require_fields(complete, ("id",), path, "judgments file")
    require_side_results(complete, path, "judgments file")
    failed = read_records(failures_path(path), "judgment failures file")
    require_fields(failed, ("id",), failures_path(path), "judgment failures file")
    require_side_results(failed, failures_path(path), "judgment failures file")
    records = {row["id"]: row for row in complete}
    for row in failed:
        records.setdefault(row["id"], row)
    return records


def judge_settings(config: JudgeConfig) -> dict[str, Any]:
    """Return the judge settings that decide a judgments file's scores, by judge type."""
    fields = {
        "verifier": (),
        "openai": ("base_url", "model", "max_new_tokens"),
        "hf": ("model", "max_new_tokens", "precision"),
        "reward-model": ("model", "reward_scale", "precision"),
    }[config.type]
    settings: dict[str, Any] = {"judge.type": config.type}
    for name in fields:
        settings[f"judge.{name}"] = getattr(config, name)
    if config.type in ("openai", "hf"):
        template = load_template(config.template_file)
        settings["judge.template_sha256"] = hashlib.sha256(template.encode("utf-8")).hexdigest()
    return settings


def judge_generations(
    judge: Judge,
    generations_path: str | Path,
    output_path: str | Path,
    batch_size: int = 64,
    settings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Score the reference and the generated answer of every record not yet judged.

    `batch_size` items (2 * batch_size answers) go to the judge per call, and their
    records are written before the next call. With `settings` (see `judge_settings`),
    an output written with other settings raises ConfigError instead of being resumed.
    Returns counts for this run.
    """
    generations_path, output_path = Path(generations_path), Path(output_path)
    generations = read_generations(generations_path)
    if settings is not None:
        check_output_settings(output_path, settings)
    if judge.needs_gold_answer and not any(
        row.get("gold_answer") is not None for row in generations
    ):
        raise DataError(
            f"{generations_path}: judge {judge.type} needs gold answers and no record has one; "
            "use a dataset with gold answers or another judge"
        )
    started = time.monotonic()
    stats: Counter[str] = Counter()
    with JsonlWriter(output_path) as writer:
        todo, seen = [], set(writer.done)
        for row in generations:
            if row["id"] not in seen:
                seen.add(row["id"])
                todo.append(row)
        stats["items"] = len(generations)
        stats["already_done"] = len(generations) - len(todo)
        failures = {
            row["id"]: row
            for row in read_records(failures_path(output_path), "judgment failures file")
            if row["id"] not in writer.done
        }
        with tqdm(
            total=len(todo), desc=f"judge ({judge.type})", unit="item", disable=not todo
        ) as bar:
            for start in range(0, len(todo), batch_size):
                chunk = todo[start : start + batch_size]
                for row, results in zip(chunk, score_chunk(judge, chunk), strict=True):
                    record = judgment_record(row["id"], results)
                    count_results(stats, results)
                    if all(result.ok for result in results):
                        writer.write(record)
                        failures.pop(row["id"], None)
                    else:
                        failures[row["id"]] = record
                write_failures(output_path, failures)
                bar.update(len(chunk))
    stats["failed_items"] = len(failures)
    stats["seconds"] = round(time.monotonic() - started, 2)
    summary = dict(stats)
    if failures:
        logger.warning(
            "%d of %d items have a failed judge call (listed in %s); rerun to retry them",
            len(failures),
            len(generations),
            failures_path(output_path),
        )
    logger.info("Judged %d items with %s: %s", len(todo), judge.identity, summary)
    return summary


def raise_if_all_failed(stats: dict[str, Any], output_path: str | Path) -> None:
    """Raise JudgeStageError when no item of the generations file has a complete judgment.

    `stats` are the counts `judge_generations` returns. An item judged by an earlier
    run counts as complete, so a resumed run whose retried items fail again raises
    nothing once any item was judged.
    """
    items = stats.get("items", 0)
    failed = stats.get("failed_items", 0)
    if items == 0 or failed < items:
        return
    kinds = Counter(
        {
            key.split("/", 1)[1]: count
            for key, count in stats.items()
            if key.startswith("failed_calls/")
        }
    )
    kind, count = kinds.most_common(1)[0] if kinds else ("unknown", 0)
    raise JudgeStageError(
        f"all {failed} judged items failed; the most common error kind is {kind} "
        f"({count} of {stats.get('failed_calls', 0)} failed calls). The failed items are "
        f"listed in {failures_path(output_path)}. Failures are not cached, so rerunning the "
        "same command retries them."
    )


def score_chunk(judge: Judge, rows: list[dict[str, Any]]) -> list[tuple[JudgeResult, JudgeResult]]:
    """Judge the reference and generated answers of `rows` in one call."""
    prompts = [row["prompt"] for row in rows]
    responses = [row["reference"] for row in rows] + [row["generated"] for row in rows]
    golds = [row.get("gold_answer") for row in rows]
    results = judge.score(prompts + prompts, responses, golds + golds)
    return list(zip(results[: len(rows)], results[len(rows) :], strict=True))


def judgment_record(item_id: str, results: tuple[JudgeResult, JudgeResult]) -> dict[str, Any]:
    record: dict[str, Any] = {"id": item_id}
    for side, result in zip(SIDES, results, strict=True):
        record[side] = result.record()
    record["usage"] = {side: result.usage() for side, result in zip(SIDES, results, strict=True)}
    return record


def count_results(stats: Counter[str], results: tuple[JudgeResult, JudgeResult]) -> None:
    for result in results:
        stats["calls"] += 1
        stats["cached"] += result.cached
        stats["retries"] += result.retries
        stats["prompt_tokens"] += result.prompt_tokens
        stats["completion_tokens"] += result.completion_tokens
        if not result.ok:
            stats["failed_calls"] += 1
            stats[f"failed_calls/{error_kind(result.error)}"] += 1


def error_kind(error: str | None) -> str:
    """`parse: no score found` → `parse`."""
    if not error:
        return "no_score"
    return error.split(":", 1)[0].strip() or "unknown"


def write_failures(output_path: Path, failures: dict[str, dict[str, Any]]) -> None:
    path = failures_path(output_path)
    if not failures:
        path.unlink(missing_ok=True)
        return
    lines = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in failures.values())
    atomic_write_text(path, lines)
