"""`dnpo generate`: answer the prompts of an SFT dataset, resumably."""

from __future__ import annotations

import argparse
import json

from dnpo.configbase import add_section_arguments, section_from_args
from dnpo.data import add_data_arguments, data_config_from_args, load_sft_examples
from dnpo.generation.config import GenerationConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_data_arguments(parser)
    parser.add_argument(
        "--model",
        required=True,
        help="checkpoint folder, hub name or bundled:smollm2-135m-instruct",
    )
    parser.add_argument(
        "--output",
        required=True,
        help="generations.jsonl to write; a rerun skips the prompt ids it holds",
    )
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="allow custom modeling code from the model repository",
    )
    add_section_arguments(parser, GenerationConfig)


def main(args: argparse.Namespace) -> int:
    from dnpo.generation import generate_to_file, make_generator

    config = section_from_args(GenerationConfig, args)
    examples, skipped = load_sft_examples(data_config_from_args(args))
    generator = make_generator(config, args.model, trust_remote_code=args.trust_remote_code)
    try:
        stats = generate_to_file(generator, examples, args.output)
    finally:
        generator.close()
    print(json.dumps({"output": args.output, "skipped_rows": skipped, **stats}, indent=2))
    return 0
