"""`dnpo generate`: answer the prompts of an SFT dataset, resumably."""

from __future__ import annotations

import argparse
import json

from dnpo.configbase import add_section_arguments, section_from_args
from dnpo.data import DATA_FLAGS, add_data_arguments, data_config_from_args, load_sft_examples
from dnpo.generation.config import GenerationConfig
from dnpo.outputs import check_output_location, check_output_settings


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
        help="generations.jsonl to write; a rerun with the same model and sampling "
        "settings skips the prompt ids it contains (settings in OUTPUT.settings.json)",
    )
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="allow custom modeling code from the model repository",
    )
    add_section_arguments(parser, GenerationConfig)


def main(args: argparse.Namespace) -> int:
    from dnpo.generation import generate_to_file, make_generator
    from dnpo.generation.base import generation_settings
    from dnpo.models import resolve_model_path

    config = section_from_args(GenerationConfig, args)
    # Output mistakes stop here, before the model is loaded.
    check_output_location(args.output)
    examples, skipped = load_sft_examples(data_config_from_args(args), DATA_FLAGS)
    settings = generation_settings(config, resolve_model_path(args.model))
    check_output_settings(args.output, settings)
    generator = make_generator(config, args.model, trust_remote_code=args.trust_remote_code)
    try:
        stats = generate_to_file(generator, examples, args.output, settings=settings)
    finally:
        generator.close()
    print(json.dumps({"output": args.output, "skipped_rows": skipped, **stats}, indent=2))
    return 0
