"""`dnpo judge`: score the references and generations of a generations.jsonl file."""

from __future__ import annotations

import argparse
import json

from dnpo.configbase import ConfigError, add_section_arguments, section_from_args
from dnpo.judges.config import JudgeConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--generations", required=True, help="generations.jsonl from `dnpo generate`"
    )
    parser.add_argument(
        "--output",
        required=True,
        help="judgments.jsonl to write; a rerun with the same judge settings skips ids "
        "already judged and retries the failed ones (settings in OUTPUT.settings.json)",
    )
    parser.add_argument(
        "--chunk-size",
        type=int,
        default=64,
        help="items judged between two writes to the output (default: 64)",
    )
    # Failed calls and ties are handled when pairs are built, by `dnpo label`.
    add_section_arguments(parser, JudgeConfig, exclude=("on_failure", "on_tie"))


def main(args: argparse.Namespace) -> int:
    """Judge the file and print the counts; exit nonzero when every judged item failed."""
    from dnpo.judges import judge_generations, make_judge
    from dnpo.judges.runner import judge_settings, raise_if_all_failed
    from dnpo.outputs import check_output_location, check_output_settings

    if args.chunk_size < 1:
        raise ConfigError(f"--chunk-size must be >= 1, got {args.chunk_size}")
    config = section_from_args(JudgeConfig, args)
    # Output mistakes stop here, before a model judge is loaded.
    check_output_location(args.output)
    settings = judge_settings(config)
    check_output_settings(args.output, settings)
    judge = make_judge(config)
    try:
        stats = judge_generations(
            judge, args.generations, args.output, batch_size=args.chunk_size, settings=settings
        )
    finally:
        judge.close()
    print(json.dumps({"output": args.output, "judge": judge.identity, **stats}, indent=2))
    raise_if_all_failed(stats, args.output)
    return 0
