"""`dnpo train`: train a model on a pairs file with NPO, fixed noise, SPIN or DPO."""

from __future__ import annotations

import argparse
import json

from dnpo.configbase import ConfigError, add_section_arguments, read_yaml, section_from_args
from dnpo.training.config import TrainConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pairs", required=True, metavar="FILE",
                        help="pairs JSONL file: one {id, prompt, chosen, rejected} object per line")
    parser.add_argument("--model", required=True, metavar="PATH_OR_NAME",
                        help="starting model: a checkpoint directory with safetensors weights, a hub "
                             "name, or bundled:smollm2-135m-instruct; it is also the frozen reference")
    parser.add_argument("--output", required=True, metavar="DIR",
                        help="output directory for the trained model, logs and resumable checkpoints; "
                             "rerunning with the same DIR resumes or returns the finished result")
    parser.add_argument("--config", metavar="YAML",
                        help="YAML file with TrainConfig fields, at the top level or under 'train:'; "
                             "the options below override it")
    parser.add_argument("--noise-head-init", metavar="FILE",
                        help="noise_head.safetensors of a previous run to start the noise head from "
                             "(dnpo mode only; default: W=0, b=ln(noise_init_std))")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="allow custom modeling code from the model repository (default: off)")
    group = parser.add_argument_group("training options (TrainConfig fields)")
    add_section_arguments(group, TrainConfig)


def load_train_config(path: str | None) -> TrainConfig:
    """Read TrainConfig from a YAML file holding its fields at the top level or under `train`."""
    if not path:
        return TrainConfig()
    data = read_yaml(path)
    if "train" in data:
        if not isinstance(data["train"], dict):
            raise ConfigError(
                f"{path}: 'train' must be a mapping of TrainConfig fields, got {data['train']!r}"
            )
        return TrainConfig.from_dict(data["train"], prefix="train.")
    return TrainConfig.from_dict(data, prefix="train.")


def main(args: argparse.Namespace) -> int:
    from dnpo.outputs import check_output_location
    from dnpo.training.api import train
    from dnpo.training.noise import read_noise_head_file

    config = section_from_args(TrainConfig, args, load_train_config(args.config))
    # Output and noise head mistakes stop here, before the model is loaded.
    check_output_location(args.output, folder=True)
    if args.noise_head_init:
        read_noise_head_file(args.noise_head_init)
    result = train(
        args.pairs,
        args.model,
        args.output,
        config,
        noise_head_init=args.noise_head_init,
        trust_remote_code=args.trust_remote_code,
    )
    summary = result.summary()
    summary.pop("metrics")
    print(json.dumps(summary, indent=2))
    return 0
