"""`dnpo run`: iterative DNPO with resume at stage and record level.

Iteration k starts from model M_k (M_0 = the configured model) and produces M_{k+1}:

    generate  M_k answers every training prompt (sampled)     generations.jsonl
    judge     the judge scores reference and generated answer  judgments.jsonl
    label     the better answer is chosen (DSL)                pairs.jsonl, labels.json
    train     NPO with reference model M_k                     train/
    evaluate  M_{k+1} answers the held-out prompts (greedy)    eval_generations.jsonl, eval.json

Iteration 0 is plain SPIN for every method: no judge, the human reference is chosen
and the loss has no noise. Each stage is marked done in iter_K/manifest.json only
after its output is complete, so a rerun of the same command skips finished stages
and continues unfinished ones from their last written record.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import logging
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml

from dnpo.config import BUNDLED_TASK, LoopConfig, RunConfig
from dnpo.configbase import ConfigError, apply_overrides, parse_override, read_yaml
from dnpo.errors import DataError
from dnpo.io import atomic_write_text, read_json
from dnpo.models import (
    checkpoint_checksum,
    load_tokenizer,
    require_safetensors,
    resolve_model_path,
)
from dnpo.rundir import (
    Manifest,
    git_commit,
    open_run_dir,
    package_versions,
    write_summary,
)

logger = logging.getLogger(__name__)

STAGES = ("generate", "judge", "label", "train", "evaluate")


def run(config: RunConfig, new_run: bool = False) -> tuple[Path, list[dict[str, Any]]]:
    """Run or resume every iteration of a run; return the run directory and summary rows."""
    model_path = check_inputs(config)
    run_dir, config = open_run_dir(config, new_run=new_run)
    logger.info("Run directory: %s", run_dir)
    train_data, _ = resolve_data(config, run_dir)
    rows: list[dict[str, Any]] = []
    noise_head: Path | None = None
    for iteration in range(config.loop.iterations):
        row, model_path, noise_head = run_iteration(
            config, run_dir, iteration, model_path, noise_head, train_data
        )
        rows.append(row)
        table = write_summary(run_dir, rows)
        print(f"\nAfter iteration {iteration}:\n{table}\n", flush=True)
        if config.loop.report:
            write_report_safely(run_dir)
    return run_dir, rows


def check_inputs(config: RunConfig) -> str:
    """Check the model and data sources before the run directory is touched; return the model path.

    A mistake found here leaves an existing run's files as they are.
    """
    from dnpo.data import empty_local_file, missing_local_file

    for name, data in (("data", config.data), ("eval_data", config.eval_data)):
        if not data.path:
            raise ConfigError(
                f"{name}.path is empty; set it to a JSONL/JSON/Parquet file, a dataset folder, "
                f"a hub dataset name or {BUNDLED_TASK}"
            )
        if missing_local_file(data.path):
            raise ConfigError(f"{name}.path {data.path} not found; pass an existing file")
        if empty_local_file(data.path):
            raise ConfigError(f"{name}.path {data.path} is empty; pass a file with SFT rows")
    check_accelerate(config.loop.accelerate_config)
    if config.eval.lm_eval_tasks:
        from dnpo.evaluation.lm_eval import require_harness

        require_harness()
    model_path = resolve_model_path(config.model.name_or_path)
    require_safetensors(model_path)
    load_tokenizer(model_path, trust_remote_code=config.model.trust_remote_code)
    return model_path


def check_accelerate(config_file: str) -> None:
    """Check that `accelerate launch` can run with `config_file`; an empty value skips it."""
    if not config_file:
        return
    if not Path(config_file).is_file():
        raise ConfigError(
            f"loop.accelerate_config {config_file} not found; pass an existing accelerate "
            "config file, or set it to '' to train in this process"
        )
    if shutil.which("accelerate") is None:
        raise ConfigError(
            f"loop.accelerate_config is set to {config_file}, but the accelerate executable is "
            "not on PATH; activate the environment where dnpo is installed, or set "
            "loop.accelerate_config to '' to train in this process"
        )


def run_iteration(
    config: RunConfig,
    run_dir: Path,
    iteration: int,
    model_path: str,
    noise_head: Path | None,
    train_data: Any,
) -> tuple[dict[str, Any], str, Path | None]:
    """Run the five stages of one iteration; return its summary row and M_{k+1}."""
    from dnpo.data import load_sft_examples
    from dnpo.evaluation.cli import evaluate_run_iteration
    from dnpo.generation import generate_to_file, make_generator
    from dnpo.judges import judge_generations, make_judge
    from dnpo.judges.runner import raise_if_all_failed
    from dnpo.labeling import label_to_files

    iter_dir = run_dir / f"iter_{iteration}"
    iter_dir.mkdir(parents=True, exist_ok=True)
    mode = config.train_mode(iteration)
    manifest = Manifest(iter_dir / "manifest.json", iteration_manifest(config, iteration, model_path, mode))
    started = time.monotonic()
    logger.info("Iteration %d (%s, train mode %s) starts from %s", iteration, config.loop.method, mode, model_path)
    done_at_start = done_stages(manifest)
    if done_at_start:
        logger.info(
            "Iteration %d: stages already done, skipped: %s", iteration, ", ".join(done_at_start)
        )

    # Generate: M_k samples an answer for every training prompt.
    generations = iter_dir / "generations.jsonl"
    if not manifest.done("generate"):
        with manifest.stage("generate"):
            examples, skipped = load_sft_examples(train_data)
            manifest.update(data_skipped=skipped, prompts=len(examples))
            generation_config = config.generation.replace(seed=config.iteration_seed(config.generation.seed, iteration))
            generator = make_generator(generation_config, model_path, precision=config.model.precision,
                                       trust_remote_code=config.model.trust_remote_code)
            generate_to_file(generator, examples, generations)
            del generator
            gc.collect()

    # Judge: score the human reference and the generated answer (not at iteration 0).
    judgments = iter_dir / "judgments.jsonl"
    if config.judges(iteration) and not manifest.done("judge"):
        with manifest.stage("judge"):
            judge = make_judge(config.judge)
            stats = judge_generations(judge, generations, judgments)
            manifest.update(judge_stats=stats)
            close = getattr(judge, "close", None)
            if close:
                close()
            del judge
            gc.collect()
            # Training on all-SPIN fallback labels would hide a broken judge.
            raise_if_all_failed(stats, judgments)

    # Label: the better answer is chosen; SPIN labels keep the human reference chosen.
    pairs = iter_dir / "pairs.jsonl"
    if not manifest.done("label"):
        with manifest.stage("label"):
            label_to_files(
                generations,
                judgments if config.judges(iteration) else None,
                iteration,
                iter_dir,
                on_judge_failure=config.judge.on_failure,
                on_tie=config.judge.on_tie,
            )

    # Train: NPO (or SPIN) from M_k with M_k as the frozen reference gives M_{k+1}.
    train_dir = iter_dir / "train"
    if not manifest.done("train"):
        require_pairs(iter_dir, iteration)
        with manifest.stage("train"):
            train_config = config.train.replace(mode=mode, seed=config.iteration_seed(config.train.seed, iteration))
            head_init = noise_head if (config.train.noise_carry_over and mode == "dnpo") else None
            result = train_stage(config, pairs, model_path, train_dir, train_config, head_init)
            manifest.update(train_result=result.summary())
            del result
            gc.collect()
    train_result = manifest.data.get("train_result", {})
    next_model = str(train_dir)
    next_noise = Path(train_result["noise_head"]) if train_result.get("noise_head") else noise_head

    # Evaluate: greedy held-out accuracy of M_{k+1} plus judge and similarity statistics.
    if not manifest.done("evaluate"):
        with manifest.stage("evaluate"):
            evaluate_run_iteration(run_dir, iteration, config.eval)

    # A rerun that found every stage done keeps the wall time of the run that did the work.
    if pending_stages(config, iteration, done_at_start):
        manifest.update(wall_seconds=round(time.monotonic() - started, 1))
    manifest.update(output_model=next_model)
    return summary_row(config, iter_dir, iteration), next_model, next_noise


def require_pairs(iter_dir: Path, iteration: int) -> None:
    """Raise DataError naming the skip counts when the label stage left no pair to train on."""
    labels_path = iter_dir / "labels.json"
    labels = read_json(labels_path) if labels_path.exists() else {}
    if labels.get("pairs") != 0:
        return
    raise DataError(
        f"iteration {iteration} has no pairs to train on, because labeling skipped every prompt "
        f"(skipped: {labels.get('skipped') or {}}; see {labels_path}). Use more prompts, or "
        "start a new run with --new-run and judge.on_tie=reference or judge.on_failure=spin "
        "so that tied or unjudged prompts keep their pair"
    )


def done_stages(manifest: Manifest) -> list[str]:
    """Return the stages that an iteration's manifest marks done, in run order."""
    return [stage for stage in STAGES if manifest.done(stage)]


def pending_stages(config: RunConfig, iteration: int, done: list[str]) -> list[str]:
    """Return the stages of an iteration that are not in `done`, with judge only where it runs."""
    return [
        stage
        for stage in STAGES
        if stage not in done and (stage != "judge" or config.judges(iteration))
    ]


def iteration_manifest(config: RunConfig, iteration: int, model_path: str, mode: str) -> dict[str, Any]:
    tokenizer = load_tokenizer(model_path, trust_remote_code=config.model.trust_remote_code)
    return {
        "iteration": iteration,
        "method": config.loop.method,
        "train_mode": mode,
        "judged": config.judges(iteration),
        "start_model": model_path,
        "start_model_sha256": checkpoint_checksum(model_path),
        "chat_template_sha256": hashlib.sha256(
            (getattr(tokenizer, "chat_template", None) or "").encode("utf-8")
        ).hexdigest(),
        "seed": config.loop.seed,
        "generation": config.generation.replace(seed=config.iteration_seed(config.generation.seed, iteration)).to_dict(),
        "judge": {k: v for k, v in config.judge.to_dict().items() if k != "api_key_env"}
        | {"api_key_env": config.judge.api_key_env},
        "versions": package_versions(),
        "git_commit": git_commit(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def train_stage(
    config: RunConfig,
    pairs: Path,
    model_path: str,
    train_dir: Path,
    train_config: Any,
    noise_head_init: Path | None,
) -> Any:
    """Train in this process, or under `accelerate launch` when loop.accelerate_config is set."""
    from dnpo.training import train
    from dnpo.training.api import load_result

    if not config.loop.accelerate_config:
        return train(pairs, model_path, train_dir, train_config, noise_head_init=noise_head_init,
                     trust_remote_code=config.model.trust_remote_code)
    config_file = train_dir.parent / "train_config.yaml"
    atomic_write_text(config_file, yaml.safe_dump(train_config.to_dict(), sort_keys=False))
    command = [
        "accelerate", "launch", "--config_file", config.loop.accelerate_config,
        "-m", "dnpo.cli", "train", "--pairs", str(pairs), "--model", model_path,
        "--output", str(train_dir), "--config", str(config_file),
    ]
    if noise_head_init is not None:
        command += ["--noise-head-init", str(noise_head_init)]
    if config.model.trust_remote_code:
        command.append("--trust-remote-code")
    logger.info("Training with: %s", " ".join(command))
    completed = subprocess.run(command, check=False)
    if completed.returncode != 0:
        raise RuntimeError(
            f"accelerate launch exited with status {completed.returncode}; its output is above. "
            "Rerun the same command to resume training from the last checkpoint."
        )
    return load_result(train_dir)


def summary_row(config: RunConfig, iter_dir: Path, iteration: int) -> dict[str, Any]:
    manifest = read_json(iter_dir / "manifest.json")
    labels = read_json(iter_dir / "labels.json") if (iter_dir / "labels.json").exists() else {}
    evaluation = read_json(iter_dir / "eval.json") if (iter_dir / "eval.json").exists() else {}
    train_result = manifest.get("train_result", {})
    seconds = sum(stage.get("seconds", 0.0) for stage in manifest["stages"].values())
    return {
        "iteration": iteration,
        "method": method_label(config, iteration),
        "accuracy": evaluation.get("accuracy"),
        "start_accuracy": evaluation.get("start_accuracy"),
        "generated_win_rate": labels.get("generated_win_rate") if config.judges(iteration) else None,
        # Prompts whose judgment failed or is missing; they got the SPIN label or were dropped.
        "judge_failed": labels.get("judge_failed") if config.judges(iteration) else None,
        "pairs": labels.get("pairs"),
        "mean_margin": train_result.get("mean_margin"),
        "mean_noise_std": train_result.get("mean_noise_std"),
        "minutes": round(seconds / 60, 2),
    }


def method_label(config: RunConfig, iteration: int) -> str:
    """The method that trained this iteration: spin at iteration 0, fixed noise marked."""
    if iteration == 0:
        return "spin"
    if config.train_mode(iteration) == "fixed-noise":
        return f"{config.loop.method} (fixed noise)"
    return config.loop.method


def resolve_data(config: RunConfig, run_dir: Path) -> tuple[Any, Any]:
    """Return the train and eval DataConfigs, writing the bundled task's files when used."""
    from dnpo.tasks.arithmetic import write_task

    train_data, eval_data = config.data, config.eval_data
    if train_data.path == BUNDLED_TASK or eval_data.path == BUNDLED_TASK:
        task = config.task
        train_path, eval_path = write_task(
            run_dir / "task", task.train_size, task.eval_size, task.flawed_share, task.seed
        )
        if train_data.path == BUNDLED_TASK:
            train_data = train_data.replace(path=str(train_path), format="gsm8k")
        if eval_data.path == BUNDLED_TASK:
            eval_data = eval_data.replace(path=str(eval_path), format="gsm8k")
    return train_data, eval_data


def write_report_safely(run_dir: Path) -> None:
    """Write the report; a plotting failure is logged and never stops the run."""
    try:
        from dnpo.report import write_report

        write_report(run_dir)
    except Exception:  # the report is a view of finished files; the run goes on without it
        logger.exception("Writing the report for %s failed; rerun `dnpo report %s`", run_dir, run_dir)


def load_run_config(path: str | None, overrides: list[str]) -> RunConfig:
    data = read_yaml(path) if path else {}
    return RunConfig.from_dict(apply_overrides(data, overrides))


# Flags of `dnpo run` that are shortcuts for a --set of a loop field.
SHORTCUTS = (("--method", "method"), ("--iterations", "iterations"), ("--name", "name"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = LoopConfig()
    parser.add_argument("--config", help="YAML run config (sections: model, data, eval_data, task, "
                        "generation, judge, train, eval, loop)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set train.beta=0.2 (repeatable)")
    parser.add_argument("--method", help="shortcut for --set loop.method=METHOD: dnpo, spin, spin+dsl, "
                        f"spin+npo (default: loop.method of --config, else {defaults.method})")
    parser.add_argument("--iterations", type=int, metavar="N", help="shortcut for --set loop.iterations=N "
                        f"(default: loop.iterations of --config, else {defaults.iterations})")
    parser.add_argument("--name", help="shortcut for --set loop.name=NAME; the run directory is "
                        f"loop.output_dir/NAME (default: loop.name of --config, else {defaults.name!r})")
    parser.add_argument("--new-run", action="store_true",
                        help="if the run exists, start a new one named NAME-N instead of resuming")


def shortcut_overrides(args: argparse.Namespace) -> list[str]:
    """Return the --set overrides that --method, --iterations and --name stand for.

    Raises ConfigError when a shortcut and a --set of the same field give different values.
    """
    loop_overrides = apply_overrides({}, args.overrides).get("loop")
    if not isinstance(loop_overrides, dict):
        loop_overrides = {}
    overrides = []
    for flag, field in SHORTCUTS:
        value = getattr(args, flag.lstrip("-"))
        if value is None:
            continue
        override = f"loop.{field}={value}"
        # Parse the flag's value as --set parses its value, so 3 and "3" compare equal.
        _, parsed = parse_override(override)
        if field in loop_overrides and loop_overrides[field] != parsed:
            raise ConfigError(
                f"{flag} {value} conflicts with --set loop.{field}={loop_overrides[field]}; "
                f"{flag} is a shortcut for --set loop.{field}, so pass only one of them or the "
                "same value in both"
            )
        overrides.append(override)
    return overrides


def main(args: argparse.Namespace) -> int:
    overrides = list(args.overrides) + shortcut_overrides(args)
    config = load_run_config(args.config, overrides)
    run_dir, rows = run(config, new_run=args.new_run)
    print(f"Finished {len(rows)} iterations; summary in {run_dir / 'summary.md'}")
    return 0
