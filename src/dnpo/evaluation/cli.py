"""`dnpo evaluate RUN_DIR`: recompute the eval.json of a run's iterations.

Parts that need no model are recomputed from the files present: judge summary,
held-out accuracy from existing greedy answers, similarity and the stagnation
statistic. Parts that need a model load the checkpoint they describe: greedy
held-out answers when missing (M_{K+1}, iter_K/train), log-probs of iteration K's
generations under M_{K-1}, and lm-evaluation-harness scores of M_{K+1} (and of
M_0 as `start_lm_eval` at iteration 0).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dnpo.configbase import ConfigError, add_section_arguments, section_from_args
from dnpo.errors import DataError
from dnpo.evaluation import metrics, pieces
from dnpo.evaluation.config import EvalConfig
from dnpo.evaluation.runfiles import (
    check_run_dir,
    iteration_dir,
    iterations,
    load_json,
    load_jsonl,
    model_path,
    run_config,
)
from dnpo.io import atomic_write_json

logger = logging.getLogger(__name__)


def evaluate_run_iteration(
    run_dir: Path,
    iteration: int,
    config: EvalConfig,
    use_model: bool = True,
    extract: Callable[[str], Any] | None = None,
) -> dict[str, Any]:
    """Recompute iter_K/eval.json and write it; keys that cannot be recomputed are kept."""
    iter_dir = iteration_dir(run_dir, iteration)
    eval_path = iter_dir / "eval.json"
    result = load_json(eval_path) or {}
    model_settings = run_config(run_dir).get("model") or {}
    precision = str(model_settings.get("precision", "fp32"))
    trust_remote_code = bool(model_settings.get("trust_remote_code", False))

    # Judge view of this iteration's training data.
    judge = pieces.judge_piece(run_dir, iteration)
    if judge is not None:
        result["judge"] = judge

    # Held-out accuracy of M_{K+1}, and of M_0 at iteration 0.
    extract = extract or _default_extractor()
    outputs = [("eval_generations.jsonl", iteration + 1)]
    if iteration == 0:
        outputs.append(("start_eval_generations.jsonl", 0))
    for filename, model_index in outputs:
        scores = _held_out_accuracy(run_dir, iter_dir / filename, model_index, extract, use_model)
        if scores is None:
            continue
        if model_index == 0:
            result["start_accuracy"] = scores["accuracy"]
            result["start"] = scores
        else:
            result.update(scores)

    # Similarity to the previous iteration's chosen answers.
    if config.similarity:
        similarity = pieces.similarity_piece(run_dir, iteration, config)
        if similarity is not None:
            result["similarity"] = similarity

    # Log-probs of this iteration's generations under M_{K-1}, and the stagnation check.
    if use_model and config.next_generation_logps and iteration > 0:
        logps = pieces.next_generation_logps(
            run_dir,
            iteration,
            model_path(run_dir, iteration - 1),
            config,
            precision,
            trust_remote_code,
        )
        if logps is not None:
            result["next_generation_logps"] = logps
    stagnation = pieces.stagnation_piece(
        run_dir, iteration, result.get("next_generation_logps"), config.stagnation_threshold
    )
    if stagnation is not None:
        result["stagnation"] = stagnation

    # lm-evaluation-harness on M_{K+1}, and on M_0 at iteration 0 for the baseline row.
    if use_model and config.lm_eval_tasks:
        from dnpo.evaluation.lm_eval import run_lm_eval

        if (iter_dir / "train").is_dir():
            result["lm_eval"] = run_lm_eval(str(iter_dir / "train"), config, precision=precision)
        if iteration == 0:
            start = model_path(run_dir, 0)
            result["start_lm_eval"] = run_lm_eval(start, config, precision=precision)

    atomic_write_json(eval_path, result)
    return result


def _held_out_accuracy(
    run_dir: Path,
    output: Path,
    model_index: int,
    extract: Callable[[str], Any] | None,
    use_model: bool,
) -> dict[str, Any] | None:
    """Score a file of greedy held-out answers of M_m, first generating missing answers.

    Generation resumes a partly written file, so an evaluation stopped halfway
    is finished rather than scored on part of the held-out set.
    """
    if extract is None:
        return None
    if use_model and _held_out_missing(run_dir, output):
        try:
            path = model_path(run_dir, model_index)
        except FileNotFoundError as error:
            logger.info("Held-out accuracy of M_%d skipped: %s", model_index, error)
            return pieces.accuracy_piece(output, extract)
        logger.info("Generating held-out answers of %s into %s", path, output)
        config, eval_data = _held_out_data(run_dir)
        from dnpo.eval_stage import held_out_accuracy

        held_out_accuracy(config, path, eval_data, output)
    return pieces.accuracy_piece(output, extract)


def _held_out_data(run_dir: Path) -> tuple[Any, Any]:
    """Return the run's RunConfig and its resolved held-out DataConfig."""
    from dnpo.config import RunConfig
    from dnpo.loop import resolve_data

    config = RunConfig.from_dict(run_config(run_dir))
    _, eval_data = resolve_data(config, run_dir)
    return config, eval_data


def _held_out_missing(run_dir: Path, output: Path) -> bool:
    """Return True when `output` lacks an answer to some held-out prompt of the run."""
    if not output.is_file():
        return True
    from dnpo.data import load_sft_examples

    try:
        examples, _ = load_sft_examples(_held_out_data(run_dir)[1])
    except (ConfigError, DataError, FileNotFoundError) as error:
        logger.warning(
            "Cannot check %s against the held-out set (%s); scoring it as it is", output, error
        )
        return False
    answered = {str(row.get("id")) for row in load_jsonl(output)}
    return any(str(example["id"]) not in answered for example in examples)


def _default_extractor() -> Callable[[str], Any] | None:
    """Return the verifier judge's final-answer extraction, or None without dnpo.judges."""
    try:
        import dnpo.judges.verifier  # noqa: F401
    except ImportError as error:
        logger.warning(
            "Held-out accuracy skipped: the verifier judge cannot be imported (%s)", error
        )
        return None
    from dnpo.evaluation.metrics import verifier_answer

    return verifier_answer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="run directory written by `dnpo run`")
    parser.add_argument(
        "--iteration",
        type=int,
        default=None,
        metavar="K",
        help="evaluate only iteration K (default: every iteration present)",
    )
    parser.add_argument(
        "--no-model",
        action="store_true",
        help="recompute only the parts that need no model (judge, accuracy from existing "
        "answers, similarity, stagnation)",
    )
    group = parser.add_argument_group("evaluation settings (default: the run's eval section)")
    add_section_arguments(group, EvalConfig)


def main(args: argparse.Namespace) -> int:
    run_dir = check_run_dir(args.run_dir)
    base = EvalConfig.from_dict(run_config(run_dir).get("eval") or {}, prefix="eval.")
    config = section_from_args(EvalConfig, args, base=base)
    found = iterations(run_dir)
    if args.iteration is not None:
        if args.iteration not in found:
            raise FileNotFoundError(
                f"{iteration_dir(run_dir, args.iteration)} not found; "
                f"this run has iterations {found or 'none'}"
            )
        found = [args.iteration]
    for iteration in found:
        result = evaluate_run_iteration(run_dir, iteration, config, use_model=not args.no_model)
        print(f"iteration {iteration}: {_summary_line(result)}")
    if (run_dir / "report.md").is_file():
        print(f"eval.json updated; report.md is not rewritten: run `dnpo report {run_dir}` "
              "to refresh it")
    return 0


def _summary_line(result: dict[str, Any]) -> str:
    parts = []
    if result.get("accuracy") is not None:
        parts.append(f"accuracy {result['accuracy']:.3f} ({result['correct']}/{result['total']})")
    judge = result.get("judge") or {}
    if judge.get("generated_win_rate") is not None:
        parts.append(f"generated win rate {judge['generated_win_rate']:.3f}")
    similarity = result.get("similarity") or {}
    if similarity.get("bleu") is not None:
        parts.append(f"BLEU {similarity['bleu']:.2f}")
    stagnation = result.get("stagnation") or {}
    if stagnation.get("distance") is not None:
        flag = {
            metrics.STAGNANT: " (stagnant)",
            metrics.INCONCLUSIVE: " (stagnation inconclusive)",
        }.get(metrics.stagnation_verdict(stagnation), "")
        parts.append(f"log-prob KS distance {stagnation['distance']:.3f}{flag}")
    lm_eval = result.get("lm_eval") or {}
    if lm_eval.get("average") is not None:
        parts.append(f"lm-eval average {lm_eval['average']:.3f}")
    return ", ".join(parts) or "nothing to evaluate yet"
