"""`dnpo compare RUN_A RUN_B`: judge two runs' answers head to head, per iteration.

By default the compared answers are each trained model's greedy answers to the
held-out prompts (`eval_generations.jsonl`): iteration K compares M_{K+1}, the model
that iteration K trained, so the last iteration of two finished runs compares their
final models. `--source generations` compares the sampled answers to the training
prompts instead (`generations.jsonl`, written by iteration K's start model M_K). For
two runs that differ only in the method, those come from the same models at iterations
0 and 1, because M_0 is the configured model and iteration 0 trains plain SPIN in every
method.

Design: each answer is scored on its own by the pointwise judge (the run's judge,
or an override), and A wins a prompt when its score is higher. This is how the
DNPO paper builds its DNPO-vs-SPIN win rates (from GPT-4o-mini scores). It also
works with every judge type, including the verifier and reward models, which
cannot compare two answers in one call. Before scoring, the answers of both runs
are put in one list shuffled with a seeded RNG, so neither run is always scored
first or in the same batch position. That matters for API judges whose behaviour
drifts over a session and for batched local judges.

Only prompts present in both runs with the same prompt messages are compared, and
runs that share none raise ConfigError.
A prompt where either score is missing counts as `failed`, not as a tie.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
from pathlib import Path
from typing import Any

from dnpo.configbase import ConfigError, apply_overrides, read_yaml
from dnpo.evaluation import plots
from dnpo.evaluation.metrics import win_tie_loss
from dnpo.evaluation.runfiles import (
    check_run_dir,
    generated_answers,
    iteration_dir,
    iterations,
    run_config,
    run_name,
)
from dnpo.io import atomic_write_json, atomic_write_text
from dnpo.outputs import check_output_location

logger = logging.getLogger(__name__)

SOURCES = {"generations": "generations.jsonl", "eval_generations": "eval_generations.jsonl"}
DEFAULT_SOURCE = "eval_generations"
FALLBACK_SOURCE = "generations"

# What each source's answers are, for compare.md and the log.
SOURCE_DESCRIPTIONS = {
    "eval_generations": (
        "greedy answers to the held-out prompts (eval_generations.jsonl) of the model that "
        "each iteration trained: iteration K compares M_{K+1} of both runs, so the last "
        "iteration compares the final models when both runs have finished it"
    ),
    "generations": (
        "sampled answers to the training prompts (generations.jsonl) of each iteration's "
        "start model: iteration K compares M_K of both runs, and the final models are not "
        "compared"
    ),
}
SOURCE_NOTES = {
    "eval_generations": (
        "Iteration 0 trains plain SPIN in every method, so for runs that differ only in "
        "the method iteration 0 compares the same model."
    ),
    "generations": (
        "M_0 is the configured model and iteration 0 trains plain SPIN in every method, so "
        "for runs that differ only in the method iterations 0 and 1 compare the same models."
    ),
}


def paired_records(
    records_a: dict[str, dict[str, Any]], records_b: dict[str, dict[str, Any]]
) -> tuple[list[str], int]:
    """Return the ids both runs answered for the same prompt, and the count of mismatches."""
    common = sorted(set(records_a) & set(records_b))
    ids = [i for i in common if records_a[i].get("prompt") == records_b[i].get("prompt")]
    return ids, len(common) - len(ids)


def judge_iteration(
    judge: Any,
    records_a: dict[str, dict[str, Any]],
    records_b: dict[str, dict[str, Any]],
    seed: int,
    limit: int = 0,
) -> dict[str, Any]:
    """Score both runs' answers to the shared prompts and count A's wins, ties and losses."""
    ids, mismatched = paired_records(records_a, records_b)
    rng = random.Random(seed)
    if limit and len(ids) > limit:
        ids = sorted(rng.sample(ids, limit))

    # Score every answer of both runs in one seeded random order.
    items = [(i, side) for i in ids for side in ("a", "b")]
    rng.shuffle(items)
    records = {"a": records_a, "b": records_b}
    results = judge.score(
        [records[side][i]["prompt"] for i, side in items],
        [records[side][i]["generated"] for i, side in items],
        [records[side][i].get("gold_answer") for i, side in items],
    )
    if len(results) != len(items):
        raise RuntimeError(f"judge returned {len(results)} results for {len(items)} scored answers")
    by_item = dict(zip(items, results, strict=True))

    # Pair the two scores of each prompt.
    scores_a, scores_b, rows = [], [], []
    for i in ids:
        result_a, result_b = by_item[(i, "a")], by_item[(i, "b")]
        rows.append(
            {
                "id": i,
                "score_a": result_a.score,
                "score_b": result_b.score,
                "error_a": result_a.error,
                "error_b": result_b.error,
            }
        )
        if result_a.score is not None and result_b.score is not None:
            scores_a.append(result_a.score)
            scores_b.append(result_b.score)

    summary = win_tie_loss(scores_a, scores_b)
    summary.update(
        {
            "prompts": len(ids),
            "judged": len(scores_a),
            "failed": len(ids) - len(scores_a),
            "prompt_mismatch": mismatched,
            "mean_score_a": sum(scores_a) / len(scores_a) if scores_a else None,
            "mean_score_b": sum(scores_b) / len(scores_b) if scores_b else None,
        }
    )
    return {"summary": summary, "items": rows}


def compare_runs(
    run_a: str | Path,
    run_b: str | Path,
    judge: Any,
    out_dir: str | Path,
    seed: int = 0,
    only_iterations: list[int] | None = None,
    limit: int = 0,
    source: str | None = None,
) -> dict[str, Any]:
    """Judge both runs' answers per iteration; write compare.json, compare.md and compare.png.

    `source` None picks the default source, see `resolve_source`.
    """
    run_a, run_b = check_run_dir(run_a), check_run_dir(run_b)
    source = resolve_source(run_a, run_b, source, only_iterations)
    filename = SOURCES[source]
    shared = shared_iterations(run_a, run_b, filename, only_iterations)
    check_comparable(run_a, run_b, filename, shared)
    name_a, name_b = run_name(run_a), run_name(run_b)
    if name_a == name_b:
        name_a, name_b = str(run_a), str(run_b)
    answers = {
        k: (
            generated_answers(iteration_dir(run_a, k) / filename),
            generated_answers(iteration_dir(run_b, k) / filename),
        )
        for k in shared
    }

    report: dict[str, Any] = {
        "run_a": str(run_a),
        "run_b": str(run_b),
        "name_a": name_a,
        "name_b": name_b,
        "source": source,
        "seed": seed,
        "limit": limit or None,
        "coverage": coverage(run_a, run_b, filename, answers),
        "iterations": {},
    }
    logger.info("Comparing %s", SOURCE_DESCRIPTIONS[source])
    logger.info("%s", describe_coverage(report))
    items = []
    for k in shared:
        records_a, records_b = answers[k]
        result = judge_iteration(judge, records_a, records_b, seed=seed + k, limit=limit)
        report["iterations"][str(k)] = result["summary"]
        items.extend({"iteration": k, **row} for row in result["items"])
        summary = result["summary"]
        logger.info(
            "Iteration %d: %s wins %s, ties %s, loses %s of %d judged prompts",
            k,
            name_a,
            summary["wins"],
            summary["ties"],
            summary["losses"],
            summary["judged"],
        )
    write_outputs(Path(out_dir), report, items)
    return report


def resolve_source(
    run_a: Path, run_b: Path, source: str | None, only_iterations: list[int] | None
) -> str:
    """Return `source`, or the default source when it is None.

    The default is eval_generations when both runs have eval_generations.jsonl in every
    iteration of `only_iterations`, or in some iteration when `only_iterations` is None.
    Otherwise it is generations, and a warning is logged.
    Raises ValueError for a source outside SOURCES.
    """
    if source is not None:
        if source not in SOURCES:
            raise ValueError(f"invalid source {source!r}; expected one of {list(SOURCES)}")
        return source
    found = set(iterations_with(run_a, SOURCES[DEFAULT_SOURCE])) & set(
        iterations_with(run_b, SOURCES[DEFAULT_SOURCE])
    )
    if found and (only_iterations is None or set(only_iterations) <= found):
        return DEFAULT_SOURCE
    requested = ""
    if only_iterations is not None:
        requested = f" for each of iterations {_list(only_iterations)}"
    logger.warning(
        "%s and %s do not both have %s%s, so the training answers (%s) of each "
        "iteration's start model are compared instead",
        run_a,
        run_b,
        SOURCES[DEFAULT_SOURCE],
        requested,
        SOURCES[FALLBACK_SOURCE],
    )
    return FALLBACK_SOURCE


def default_out_dir(run_a: Path, run_b: Path, source: str) -> Path:
    """Return RUN_A/compare_vs_<RUN_B name>, with the source appended unless it is the default."""
    suffix = "" if source == DEFAULT_SOURCE else f"_{source}"
    return run_a / f"compare_vs_{run_name(run_b)}{suffix}"


def iterations_with(run_dir: Path, filename: str) -> list[int]:
    """Return the iterations of `run_dir` whose folder contains `filename`, ascending."""
    return [k for k in iterations(run_dir) if (iteration_dir(run_dir, k) / filename).is_file()]


def coverage(
    run_a: Path,
    run_b: Path,
    filename: str,
    answers: dict[int, tuple[dict[str, Any], dict[str, Any]]],
) -> dict[str, Any]:
    """Count what each run has in `filename` against what both share.

    Returns the iterations with `filename` in each run, the compared iterations, and
    per compared iteration the prompt counts of each run and of the shared prompts.
    """
    prompts = {}
    for k, (records_a, records_b) in answers.items():
        ids, _ = paired_records(records_a, records_b)
        prompts[str(k)] = {"a": len(records_a), "b": len(records_b), "shared": len(ids)}
    return {
        "iterations_a": iterations_with(run_a, filename),
        "iterations_b": iterations_with(run_b, filename),
        "iterations": sorted(answers),
        "prompts": prompts,
    }


def describe_coverage(report: dict[str, Any]) -> str:
    """Describe in one line which iterations and how many prompts of each run are compared."""
    name_a, name_b = report["name_a"], report["name_b"]
    cover = report["coverage"]
    text = (
        f"Iterations compared: {_list(cover['iterations'])} of {name_a}'s "
        f"{_list(cover['iterations_a'])} and {name_b}'s {_list(cover['iterations_b'])}. "
    )
    counts = list(cover["prompts"].values())
    if counts and all(c == counts[0] for c in counts):
        text += (
            f"Prompts compared per iteration: the {counts[0]['shared']} shared of {name_a}'s "
            f"{counts[0]['a']} and {name_b}'s {counts[0]['b']}."
        )
    else:
        per_iteration = ", ".join(
            f"iteration {k}: {c['shared']} of {c['a']} and {c['b']}"
            for k, c in cover["prompts"].items()
        )
        text += f"Prompts compared, shared of {name_a}'s and {name_b}'s: {per_iteration}."
    if report.get("limit"):
        text += f" --limit {report['limit']} judges at most that many of them per iteration."
    return text


def _list(values: list[int]) -> str:
    return ",".join(map(str, values)) or "none"


def check_comparable(run_a: Path, run_b: Path, filename: str, shared: list[int]) -> None:
    """Raise ConfigError when both paths are one run or the runs share no prompt.

    A prompt is shared when, in some iteration of `shared`, both runs' `filename`
    contains its id with the same prompt messages. Only shared prompts are judged.
    """
    if run_a.resolve() == run_b.resolve():
        raise ConfigError(
            f"{run_a} and {run_b} are the same run; pass two different run directories"
        )
    for k in shared:
        ids, _ = paired_records(
            generated_answers(iteration_dir(run_a, k) / filename),
            generated_answers(iteration_dir(run_b, k) / filename),
        )
        if ids:
            return
    raise ConfigError(
        f"runs {run_a} and {run_b} share no prompt in {filename} of iterations "
        f"{','.join(map(str, shared))}; the two runs must answer the same prompts "
        "(the same data, or the same task settings)"
    )


def shared_iterations(
    run_a: Path, run_b: Path, filename: str, only_iterations: list[int] | None
) -> list[int]:
    """Return the iterations where both runs have `filename`, limited to `only_iterations`.

    Raises ConfigError naming an iteration of `only_iterations` that is not shared.
    """
    shared = [
        k
        for k in sorted(set(iterations(run_a)) & set(iterations(run_b)))
        if (iteration_dir(run_a, k) / filename).is_file()
        and (iteration_dir(run_b, k) / filename).is_file()
    ]
    if not shared:
        raise FileNotFoundError(
            f"no iteration has {filename} in both {run_a} and {run_b}; "
            "compare runs that have generated data for the same iterations"
        )
    if only_iterations is None:
        return shared
    for k in only_iterations:
        if k not in shared:
            raise ConfigError(
                f"--iterations: iteration {k} does not have {filename} in both {run_a} and "
                f"{run_b}; the iterations present in both are {','.join(map(str, shared))}"
            )
    return [k for k in shared if k in only_iterations]


def write_outputs(out_dir: Path, report: dict[str, Any], items: list[dict[str, Any]]) -> None:
    """Write compare.json, compare_items.jsonl, compare.md and, if any score exists, compare.png."""
    name_a, name_b = report["name_a"], report["name_b"]
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "compare.json", report)
    atomic_write_text(out_dir / "compare_items.jsonl", "".join(_json_line(row) for row in items))
    plot_rows = [
        (f"iter {k}", s["win_rate"], s["tie_rate"], s["loss_rate"])
        for k, s in ((int(k), s) for k, s in report["iterations"].items())
        if s["judged"]
    ]
    if plot_rows:
        plots.plot_win_tie_loss(
            plot_rows,
            f"{name_a} vs {name_b}: judge win/tie/loss",
            out_dir / "compare.png",
            labels=(f"{name_a} wins", "tie", f"{name_b} wins"),
        )
    atomic_write_text(out_dir / "compare.md", format_markdown(report))


def format_markdown(report: dict[str, Any]) -> str:
    """Markdown table of win/tie/loss per iteration, from A's side."""
    name_a, name_b = report["name_a"], report["name_b"]
    source = report["source"]
    lines = [
        f"# {name_a} vs {name_b}",
        "",
        f"Compared answers: {SOURCE_DESCRIPTIONS[source]}. {SOURCE_NOTES[source]}",
        "",
        f"The judge scores each answer on its own, and a win means {name_a}'s answer to a "
        "prompt scored higher.",
    ]
    lines += [
        "",
        describe_coverage(report),
        "",
        f"| Iteration | Model | {name_a} wins | Ties | {name_b} wins | Judged | Failed "
        f"| Mean score {name_a} | Mean score {name_b} |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    # eval_generations of iteration K come from the model it trained, M_{K+1}.
    model_offset = 1 if source == "eval_generations" else 0
    for k, s in report["iterations"].items():
        lines.append(
            f"| {k} | M_{int(k) + model_offset} | {_pct(s['win_rate'])} | {_pct(s['tie_rate'])} "
            f"| {_pct(s['loss_rate'])} "
            f"| {s['judged']} | {s['failed']} | {_num(s['mean_score_a'])} "
            f"| {_num(s['mean_score_b'])} |"
        )
    if any(s["judged"] for s in report["iterations"].values()):
        lines += ["", "![win/tie/loss per iteration](compare.png)"]
    return "\n".join(lines) + "\n"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _json_line(row: dict[str, Any]) -> str:
    return json.dumps(row, ensure_ascii=False) + "\n"


def load_judge_config(run_a: Path, run_b: Path, config_file: str | None, overrides: list[str]):
    """Return the JudgeConfig to use: --judge-config, else run A's judge section, plus overrides."""
    from dnpo.judges.config import JudgeConfig

    if config_file:
        data = read_yaml(config_file)
        data = data.get("judge", data) if isinstance(data.get("judge"), dict) else data
    else:
        data = run_config(run_a).get("judge") or {}
        other = run_config(run_b).get("judge") or {}
        if other and other != data:
            logger.warning(
                "Runs %s and %s used different judges; scoring both with %s's", run_a, run_b, run_a
            )
    data = apply_overrides(data, overrides)
    return JudgeConfig.from_dict(data, prefix="judge.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_a", help="first run directory (wins are counted for this run)")
    parser.add_argument("run_b", help="second run directory")
    parser.add_argument(
        "--judge-config",
        default=None,
        metavar="FILE",
        help="YAML judge section (or a run config with a judge section); default: RUN_A's judge",
    )
    parser.add_argument(
        "--judge",
        dest="judge_overrides",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a judge field, e.g. --judge model=gpt-4o-mini (repeatable)",
    )
    parser.add_argument(
        "--iterations",
        default=None,
        metavar="K,K,...",
        help="compare only these iterations (default: all shared ones)",
    )
    parser.add_argument(
        "--limit",
        type=int,
        default=0,
        help="judge at most this many prompts per iteration, sampled with the "
        "seed; 0 judges all (default: 0)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the scoring order and the --limit sample (default: 0)",
    )
    parser.add_argument(
        "--source",
        default=None,
        choices=sorted(SOURCES),
        help="answers to compare. eval_generations: greedy answers to the held-out prompts "
        "of the model each iteration trained (M_{K+1}), so the last iteration compares the "
        "final models. generations: sampled answers to the training prompts of each "
        "iteration's start model (M_K); for runs that differ only in the method, these "
        "come from the same models at iterations 0 and 1. Default: eval_generations when "
        "both runs have it, else generations",
    )
    parser.add_argument(
        "--out",
        default=None,
        help="output folder (default: RUN_A/compare_vs_<RUN_B name> for eval_generations, "
        "RUN_A/compare_vs_<RUN_B name>_generations for generations)",
    )


def main(args: argparse.Namespace) -> int:
    from dnpo.judges import make_judge

    run_a, run_b = check_run_dir(args.run_a), check_run_dir(args.run_b)
    if args.limit < 0:
        raise ConfigError(f"--limit must be >= 0, got {args.limit}")
    only = None
    if args.iterations:
        try:
            only = [int(part) for part in args.iterations.split(",") if part.strip()]
        except ValueError:
            raise ConfigError(
                f"invalid --iterations {args.iterations!r}; write iteration numbers as 1,2,3"
            ) from None
    # A bad --iterations value, runs without shared prompts or an unwritable --out
    # fail here, before a model judge is loaded.
    source = resolve_source(run_a, run_b, args.source, only)
    shared = shared_iterations(run_a, run_b, SOURCES[source], only)
    check_comparable(run_a, run_b, SOURCES[source], shared)
    out_dir = Path(args.out) if args.out else default_out_dir(run_a, run_b, source)
    check_output_location(out_dir, "--out", folder=True)
    judge = make_judge(load_judge_config(run_a, run_b, args.judge_config, args.judge_overrides))
    try:
        report = compare_runs(
            run_a,
            run_b,
            judge,
            out_dir,
            seed=args.seed,
            only_iterations=only,
            limit=args.limit,
            source=source,
        )
    finally:
        close = getattr(judge, "close", None)
        if close:
            close()
    print(format_markdown(report))
    print(f"Wrote {out_dir}/compare.json, compare.md and compare.png")
    return 0
