"""The `dnpo` command line: one subcommand per stage, each in its own module.

Subcommand modules are imported only when chosen, so `dnpo --help` stays fast.
Each module provides `add_arguments(parser)` and `main(args) -> int`.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from dnpo.errors import USER_ERRORS

COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("dnpo.loop", "run iterative DNPO: generate, judge, label, train, evaluate"),
    "train": ("dnpo.training.cli", "train on a pairs file with NPO, fixed noise, SPIN or DPO"),
    "generate": ("dnpo.generation.cli", "answer the prompts of an SFT dataset with a model"),
    "judge": ("dnpo.judges.cli", "score references and generations with a judge"),
    "label": ("dnpo.labeling", "build chosen/rejected pairs from judge scores"),
    "evaluate": ("dnpo.evaluation.cli", "evaluate the iterations of a run directory"),
    "report": ("dnpo.report", "write report.md with plots for a run directory"),
    "compare": ("dnpo.compare", "judge two runs' answers head to head, per iteration"),
    "prepare-model": ("dnpo.models", "convert the bundled SmolLM2-135M-Instruct to a checkpoint"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dnpo",
        description="Dynamic Noise Preference Optimization for LLM self-improvement.",
    )
    parser.add_argument("--log-level", default="INFO", help="logging level (default: INFO)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        if name == command:
            importlib.import_module(module_name).add_arguments(sub)
    return parser


# Library loggers that log INFO only at --log-level DEBUG. rouge-score logs
# "Using default tokenizer." through absl each time a ROUGE scorer is built.
QUIET_LIBRARY_LOGGERS = ("absl",)


def configure_logging(level_name: str) -> None:
    """Set up logging to stderr at `level_name`, with QUIET_LIBRARY_LOGGERS at WARNING or above."""
    level = getattr(logging, str(level_name).upper(), logging.INFO)
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    # Records of a child logger reach the root handler without a check of the root
    # level, so the library level is kept at or above `level`.
    library_level = level if level <= logging.DEBUG else max(level, logging.WARNING)
    for name in QUIET_LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(library_level)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((arg for arg in argv if arg in COMMANDS), None)
    parser = build_parser(command)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    configure_logging(args.log_level)
    module = importlib.import_module(COMMANDS[args.command][0])
    try:
        return int(module.main(args) or 0)
    except USER_ERRORS as error:
        if os.environ.get("DNPO_DEBUG"):
            raise
        print(f"dnpo {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dnpo {args.command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
