"""Dynamic sample labeling: turn generations and judge scores into chosen/rejected pairs.

Rules, per prompt:
- Iteration 0 is plain SPIN, and so is any iteration without judgments: the human
  reference is chosen and the generated answer rejected.
- Otherwise the answer with the higher score is chosen; a tie keeps the reference, or
  drops the pair when `on_tie` is `drop`.
- A generated answer equal to the reference (after stripping whitespace) gives no pair.
- A prompt whose reference is empty or whitespace-only gives no pair (`empty_reference`).
- An empty or whitespace-only generated answer is a real model output (the model
  stopped at once), so it stays as the rejected answer and is counted in
  `empty_generated`. It is never chosen: a pair where the judge prefers it is skipped
  (`empty_chosen`).
- A generated answer that hit the length limit (`finish_reason` `length`) is never
  chosen, even with the higher score.
- A prompt without a usable score on either side gets the SPIN label
  (`label_source` `judge_failed`) or is dropped, as `on_judge_failure` says. That
  covers a missing judgment, a failed judge call, and an invalid judgment record (no
  result for a side, no score, or a score that is not an integer in 0-100).
  labels.json counts these prompts by kind in `judge_failed_by_kind`.
- Judgments whose id matches no generation are ignored and counted
  (`judgments_unmatched`).

`label_to_files` writes pairs.jsonl and labels.json (counts, the generated answers'
win/tie/loss rates against the references, mean scores and judge usage).
"""

from __future__ import annotations

import argparse
import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

from dnpo.configbase import ConfigError
from dnpo.io import atomic_write_json, atomic_write_text
from dnpo.judges.runner import SIDES, error_kind, load_judgments, read_generations
from dnpo.messages import format_count
from dnpo.outputs import check_output_location

logger = logging.getLogger(__name__)

ON_JUDGE_FAILURE = ("spin", "drop")
ON_TIE = ("reference", "drop")
PERCENTILES = (50, 90, 99)
# Kinds of judgment results that `dnpo judge` never writes, as opposed to judge-call
# failures, whose kind is the prefix of their `error` (parse, api, timeout, ...).
INVALID_RESULT_KINDS = ("missing_result", "missing_score", "invalid_score")


def build_pairs(
    generations: list[dict[str, Any]],
    judgments: dict[str, dict[str, Any]] | list[dict[str, Any]] | None,
    iteration: int,
    on_judge_failure: str = "spin",
    on_tie: str = "reference",
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Label every generation record; return the pairs and the label statistics."""
    if on_judge_failure not in ON_JUDGE_FAILURE:
        raise ConfigError(
            f"on_judge_failure must be one of {list(ON_JUDGE_FAILURE)}, got {on_judge_failure!r}"
        )
    if on_tie not in ON_TIE:
        raise ConfigError(f"on_tie must be one of {list(ON_TIE)}, got {on_tie!r}")
    if isinstance(judgments, list):
        judgments = {row["id"]: row for row in judgments}
    use_judge = iteration > 0 and judgments is not None
    counts: Counter[str] = Counter()
    pairs = []
    first_invalid = None
    for row in generations:
        # A prompt without a reference gives no pair, so its judgment counts in no rate.
        if not row["reference"].strip():
            counts["skipped/empty_reference"] += 1
            continue
        judgment = (judgments or {}).get(row["id"])
        reference_score, generated_score = scores_of(judgment)
        count_outcome(counts, reference_score, generated_score)
        truncated = row.get("finish_reason") == "length"
        counts["generated_truncated"] += truncated
        generated_empty = not row["generated"].strip()
        counts["empty_generated"] += generated_empty
        if row["generated"].strip() == row["reference"].strip():
            counts["skipped/identical_to_reference"] += 1
            continue
        if not use_judge:
            label_source, generated_chosen = "spin", False
        elif reference_score is None or generated_score is None:
            invalid = count_judge_failure(counts, row["id"], judgment)
            first_invalid = first_invalid or invalid
            if on_judge_failure == "drop":
                counts["skipped/judge_failed"] += 1
                continue
            label_source, generated_chosen = "judge_failed", False
        else:
            if generated_score == reference_score and on_tie == "drop":
                counts["skipped/tie"] += 1
                continue
            label_source = "judge"
            generated_chosen = generated_score > reference_score
            if generated_chosen and truncated:
                counts["truncated_not_chosen"] += 1
                generated_chosen = False
        if generated_chosen and generated_empty:
            counts["skipped/empty_chosen"] += 1
            continue
        pair = make_pair(row, generated_chosen, reference_score, generated_score, label_source)
        counts[f"label_source/{label_source}"] += 1
        counts[f"chosen_source/{pair['chosen_source']}"] += 1
        pairs.append(pair)
    stats = label_stats(counts, generations, judgments, iteration, on_judge_failure, len(pairs))
    stats["on_tie"] = on_tie
    stats["first_invalid_judgment"] = first_invalid
    return pairs, stats


def scores_of(judgment: dict[str, Any] | None) -> tuple[int | None, int | None]:
    if judgment is None:
        return None, None
    scores = [
        None if side_problem(judgment, side) else judgment[side]["score"] for side in SIDES
    ]
    return scores[0], scores[1]


def side_problem(judgment: dict[str, Any], side: str) -> tuple[str, str] | None:
    """Return the kind and a description of why a judgment side has no usable score, or None.

    A judge-call failure has the kind of its error (`parse`, `api`, ...). The kinds in
    INVALID_RESULT_KINDS are for records that `dnpo judge` never writes: no result for
    the side, a result with neither score nor error, or a score that is not an integer
    in 0-100.
    """
    result = judgment.get(side)
    if result is None:
        keys = ", ".join(str(key) for key in judgment)
        return "missing_result", f"the record has no {side} result (its keys: {keys})"
    error = result.get("error")
    if error:
        return error_kind(str(error)), f"the {side} judge call failed: {error}"
    score = result.get("score")
    if score is None:
        keys = ", ".join(str(key) for key in result)
        return "missing_score", f"the {side} result has no score and no error (its keys: {keys})"
    if isinstance(score, bool) or not isinstance(score, int) or not 0 <= score <= 100:
        return "invalid_score", f"the {side} score {score!r} is not an integer in 0-100"
    return None


def count_judge_failure(
    counts: Counter[str], item_id: str, judgment: dict[str, Any] | None
) -> str | None:
    """Count a prompt without usable judge scores under one kind.

    The kind is `judgment_missing`, else the first invalid-record kind of its sides,
    else the first judge error kind. Returns a description naming the id when the
    record is invalid, and None otherwise.
    """
    counts["judge_failed"] += 1
    if judgment is None:
        counts["judgment_missing"] += 1
        counts["judge_failed_by_kind/judgment_missing"] += 1
        return None
    problems = [problem for side in SIDES if (problem := side_problem(judgment, side))]
    invalid = [problem for problem in problems if problem[0] in INVALID_RESULT_KINDS]
    kind, description = (invalid or problems)[0]
    counts[f"judge_failed_by_kind/{kind}"] += 1
    if not invalid:
        return None
    counts["judgment_invalid"] += 1
    return f"id {item_id!r}: {description}"


def count_outcome(
    counts: Counter[str], reference_score: int | None, generated_score: int | None
) -> None:
    """Count the generated answer's win, tie or loss against the reference (Figure 1 of DNPO)."""
    if reference_score is None or generated_score is None:
        return
    counts["judged"] += 1
    counts["reference_score_sum"] += reference_score
    counts["generated_score_sum"] += generated_score
    if generated_score > reference_score:
        counts["generated_wins"] += 1
    elif generated_score == reference_score:
        counts["ties"] += 1
    else:
        counts["generated_losses"] += 1


def make_pair(
    row: dict[str, Any],
    generated_chosen: bool,
    reference_score: int | None,
    generated_score: int | None,
    label_source: str,
) -> dict[str, Any]:
    reference, generated = row["reference"], row["generated"]
    return {
        "id": row["id"],
        "prompt": row["prompt"],
        "chosen": generated if generated_chosen else reference,
        "rejected": reference if generated_chosen else generated,
        "chosen_source": "generated" if generated_chosen else "reference",
        "reference_score": reference_score,
        "generated_score": generated_score,
        "label_source": label_source,
    }


def label_stats(
    counts: Counter[str],
    generations: list[dict[str, Any]],
    judgments: dict[str, dict[str, Any]] | None,
    iteration: int,
    on_judge_failure: str,
    pairs: int,
) -> dict[str, Any]:
    judged = counts["judged"]
    stats: dict[str, Any] = {
        "iteration": iteration,
        "judged_labels": iteration > 0 and judgments is not None,
        "on_judge_failure": on_judge_failure,
        "generations": len(generations),
        "pairs": pairs,
        "chosen_source": prefixed(counts, "chosen_source/"),
        "label_source": prefixed(counts, "label_source/"),
        "skipped": prefixed(counts, "skipped/"),
        "generated_truncated": counts["generated_truncated"],
        "truncated_not_chosen": counts["truncated_not_chosen"],
        "empty_generated": counts["empty_generated"],
        "judge_failed": counts["judge_failed"],
        "judge_failed_by_kind": prefixed(counts, "judge_failed_by_kind/"),
        "judgment_missing": counts["judgment_missing"],
        "judgment_invalid": counts["judgment_invalid"],
        "judged": judged,
        "generated_wins": counts["generated_wins"],
        "ties": counts["ties"],
        "generated_losses": counts["generated_losses"],
        "generated_win_rate": rate(counts["generated_wins"], judged),
        "tie_rate": rate(counts["ties"], judged),
        "generated_loss_rate": rate(counts["generated_losses"], judged),
        "mean_reference_score": rate(counts["reference_score_sum"], judged),
        "mean_generated_score": rate(counts["generated_score_sum"], judged),
    }
    ids = {row["id"] for row in generations}
    unmatched = [i for i in judgments or {} if i not in ids]
    stats["judgments_unmatched"] = len(unmatched)
    stats["first_unmatched_judgment_id"] = unmatched[0] if unmatched else None
    if judgments is not None:
        stats["judge"] = judge_usage([judgments[i] for i in ids if i in judgments])
    return stats


def judge_usage(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Sum the judge's calls, failures and invalid results by kind, retries and tokens.

    Adds latency percentiles in seconds. A side of a record counts as one call, and
    a side without a usable score as a failed call or, for the kinds in
    INVALID_RESULT_KINDS, an invalid result.
    """
    totals: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    invalid: Counter[str] = Counter()
    latencies = []
    for record in records:
        usage_by_side = record.get("usage")
        if not isinstance(usage_by_side, dict):
            usage_by_side = {}
        for side in SIDES:
            usage = usage_by_side.get(side)
            if not isinstance(usage, dict):
                usage = {}
            totals["calls"] += 1
            problem = side_problem(record, side)
            if problem and problem[0] in INVALID_RESULT_KINDS:
                invalid[problem[0]] += 1
            elif problem:
                errors[problem[0]] += 1
            totals["cached"] += bool(usage.get("cached"))
            totals["retries"] += int(usage.get("retries") or 0)
            totals["prompt_tokens"] += int(usage.get("prompt_tokens") or 0)
            totals["completion_tokens"] += int(usage.get("completion_tokens") or 0)
            if usage and not usage.get("cached"):
                latencies.append(float(usage.get("latency_s") or 0.0))
    return {
        **{
            key: totals[key]
            for key in ("calls", "cached", "retries", "prompt_tokens", "completion_tokens")
        },
        "failed_calls": sum(errors.values()),
        "parse_failures": errors["parse"],
        "failed_calls_by_kind": dict(sorted(errors.items())),
        "invalid_results": sum(invalid.values()),
        "invalid_results_by_kind": dict(sorted(invalid.items())),
        "latency_s": percentiles(latencies),
    }


def percentiles(values: list[float]) -> dict[str, float | None]:
    """Nearest-rank percentiles p50/p90/p99 and the max; None when there are no values."""
    ordered = sorted(values)
    out: dict[str, float | None] = {}
    for p in PERCENTILES:
        out[f"p{p}"] = (
            round(ordered[max(0, -(-p * len(ordered) // 100) - 1)], 4) if ordered else None
        )
    out["max"] = round(ordered[-1], 4) if ordered else None
    return out


def prefixed(counts: Counter[str], prefix: str) -> dict[str, int]:
    return {
        key[len(prefix) :]: value for key, value in sorted(counts.items()) if key.startswith(prefix)
    }


def rate(numerator: float, denominator: int) -> float | None:
    return round(numerator / denominator, 4) if denominator else None


def label_to_files(
    generations_path: str | Path,
    judgments_path: str | Path | None,
    iteration: int,
    output_dir: str | Path,
    on_judge_failure: str = "spin",
    on_tie: str = "reference",
) -> dict[str, Any]:
    """Write output_dir/pairs.jsonl and output_dir/labels.json; return the statistics.

    Without `judgments_path` every pair gets the SPIN label.
    """
    generations_path, output_dir = Path(generations_path), Path(output_dir)
    generations = read_generations(generations_path)
    judgments = None
    if judgments_path is not None:
        if not Path(judgments_path).is_file():
            raise FileNotFoundError(
                f"judgments file {judgments_path} not found; run `dnpo judge` first"
            )
        judgments = load_judgments(judgments_path)
    pairs, stats = build_pairs(generations, judgments, iteration, on_judge_failure, on_tie)
    lines = "".join(json.dumps(pair, ensure_ascii=False) + "\n" for pair in pairs)
    atomic_write_text(output_dir / "pairs.jsonl", lines)
    atomic_write_json(output_dir / "labels.json", stats)
    if not pairs:
        logger.warning("No pairs for iteration %d; labels.json lists the skip counts", iteration)
    warn_empty_answers(stats, generations_path)
    if judgments_path is not None:
        warn_judge_problems(stats, generations_path, Path(judgments_path))
    win_rate = stats["generated_win_rate"]
    logger.info(
        "Wrote %s to %s (%s)",
        format_count(len(pairs), "pair"),
        output_dir / "pairs.jsonl",
        "no judge, so no generated win rate" if win_rate is None
        else f"generated win rate {win_rate:.3f}",
    )
    return stats


def warn_judge_problems(
    stats: dict[str, Any], generations_path: Path, judgments_path: Path
) -> None:
    """Log the prompts labeled without the judge, by cause, and the unmatched judgments."""
    on_judge_failure = stats["on_judge_failure"]
    missing = stats["judgment_missing"]
    invalid = stats["judgment_invalid"]
    failed = stats["judge_failed"] - missing - invalid
    if missing:
        logger.warning(
            "%d of %d prompts have no judgment in %s, so they were labeled without the judge "
            "(on_judge_failure=%s); run `dnpo judge` on %s to judge them",
            missing,
            stats["generations"],
            judgments_path,
            on_judge_failure,
            generations_path,
        )
    if failed:
        logger.warning(
            "%s had a failed judge call (on_judge_failure=%s)",
            format_count(failed, "prompt"),
            on_judge_failure,
        )
    if invalid:
        kinds = ", ".join(
            f"{kind}: {count}"
            for kind, count in stats["judge_failed_by_kind"].items()
            if kind in INVALID_RESULT_KINDS
        )
        logger.warning(
            "Prompts with an invalid judgment record in %s: %d (%s), labeled without the "
            "judge (on_judge_failure=%s). The first is %s. Each record needs reference and "
            "generated results with an integer score in 0-100 or an error. Fix these records, "
            "or delete them and rerun `dnpo judge` to judge those prompts again",
            judgments_path,
            invalid,
            kinds,
            on_judge_failure,
            stats["first_invalid_judgment"],
        )
    if stats["judgments_unmatched"]:
        logger.warning(
            "Judgments in %s whose id matches no generation in %s: %d, ignored (the first is "
            "id %r). Check that both files belong to the same iteration",
            judgments_path,
            generations_path,
            stats["judgments_unmatched"],
            stats["first_unmatched_judgment_id"],
        )


def warn_empty_answers(stats: dict[str, Any], generations_path: Path) -> None:
    """Log the empty references and generated answers that labeling counted."""
    skipped = stats["skipped"]
    if skipped.get("empty_reference"):
        logger.warning(
            "Skipped %s of %s with an empty or whitespace-only reference (labels.json "
            "skipped.empty_reference); fill in the references in the dataset",
            format_count(skipped["empty_reference"], "prompt"),
            generations_path,
        )
    if stats["empty_generated"]:
        logger.warning(
            "Empty or whitespace-only generated answers in %s: %d of %d (labels.json "
            "empty_generated). They stay as rejected answers because the model output them; "
            "pairs where the judge preferred one were skipped (skipped.empty_chosen: %d)",
            generations_path,
            stats["empty_generated"],
            stats["generations"],
            skipped.get("empty_chosen", 0),
        )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--generations", required=True, help="generations.jsonl from `dnpo generate`"
    )
    parser.add_argument(
        "--judgments",
        default=None,
        help="judgments.jsonl from `dnpo judge`; without it every pair gets the SPIN label",
    )
    parser.add_argument(
        "--iteration",
        type=int,
        required=True,
        help="iteration number; iteration 0 always gets SPIN labels",
    )
    parser.add_argument(
        "--output-dir", required=True, help="folder for pairs.jsonl and labels.json"
    )
    parser.add_argument(
        "--on-judge-failure",
        default="spin",
        choices=ON_JUDGE_FAILURE,
        help="a failed judge call: spin (reference chosen) or drop the pair (default: spin)",
    )
    parser.add_argument(
        "--on-tie",
        default="reference",
        choices=ON_TIE,
        help="equal judge scores: reference (reference chosen) or drop the pair "
        "(default: reference)",
    )


def main(args: argparse.Namespace) -> int:
    if args.iteration < 0:
        raise ConfigError(f"--iteration must be >= 0, got {args.iteration}")
    check_output_location(args.output_dir, "--output-dir", folder=True)
    stats = label_to_files(
        args.generations,
        args.judgments,
        args.iteration,
        args.output_dir,
        args.on_judge_failure,
        args.on_tie,
    )
    print(json.dumps(stats, indent=2))
    return 0
