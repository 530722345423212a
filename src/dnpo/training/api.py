"""`train()`: one NPO/SPIN/DPO training run from a pairs file, resumable.

Layout of `output_dir` after a finished run:

    config.json, model.safetensors, tokenizer files   the trained policy (from_pretrained loads it)
    noise_head.safetensors                            dnpo mode only
    train_log.jsonl                                   one record per logged optimizer step
    logps.jsonl                                       reference log-probs per pair id
    train_result.json                                 written last: marks the run finished

A rerun with the same arguments returns the stored result when `train_result.json`
exists, and otherwise resumes from the newest complete `checkpoint-N` directory
(written every `save_steps` steps, see `last_complete_checkpoint`). Besides the policy
and noise head, a `checkpoint-N` contains Trainer's optimizer, scheduler and RNG state
in torch.save files, which Trainer loads with weights_only=True. The `checkpoint-N`
directories are deleted once the run is done.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dnpo.configbase import ConfigError
from dnpo.errors import DataError
from dnpo.io import atomic_write_json, atomic_write_text, read_json, read_jsonl
from dnpo.rundir import config_differences, join_differences
from dnpo.training.collator import DataCounts, PairDataset, tokenize_pairs
from dnpo.training.config import TrainConfig
from dnpo.training.noise import NOISE_HEAD_FILE

logger = logging.getLogger(__name__)

RESULT_FILE = "train_result.json"
RUN_FILE = "dnpo_train_run.json"
LOGPS_FILE = "logps.jsonl"
LOG_FILE = "train_log.jsonl"


@dataclass
class TrainResult:
    """Outcome of a training run. `checkpoint` is the directory of the trained policy."""

    checkpoint: Path
    noise_head: Path | None
    steps: int
    pairs: int
    dropped: dict[str, int]
    mean_margin: float | None
    mean_noise_std: float | None
    wall_seconds: float
    # Trained pairs whose rejected answer is empty or whitespace-only.
    empty_rejected: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    log: list[dict[str, Any]] = field(default_factory=list)
    logps_path: Path | None = None
    ref_chosen_logps: dict[str, float] = field(default_factory=dict)
    ref_rejected_logps: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """Return the JSON-safe fields, without the per-step log and per-pair log-probs."""
        data = asdict(self)
        for key in ("log", "ref_chosen_logps", "ref_rejected_logps"):
            data.pop(key)
        return {key: str(value) if isinstance(value, Path) else value for key, value in data.items()}


def read_pairs(pairs: list[dict[str, Any]] | str | Path) -> list[dict[str, Any]]:
    """Return pair rows from a list or a JSONL file."""
    if isinstance(pairs, list):
        return pairs
    path = Path(pairs)
    if not path.is_file():
        raise DataError(f"pairs file not found: {path}; pass a JSONL file with prompt, chosen, rejected")
    try:
        return read_jsonl(path)
    except ValueError as error:
        raise DataError(str(error)) from None


def run_fingerprint(rows: list[dict[str, Any]], model_path: str, config: TrainConfig) -> dict[str, Any]:
    """Describe a run's inputs, so a resumed run can check that they did not change."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps(row, sort_keys=True, ensure_ascii=False, default=str).encode())
    return {"model_path": model_path, "pairs_sha256": digest.hexdigest(), "config": config.to_dict()}


def check_same_run(output_dir: Path, fingerprint: dict[str, Any]) -> None:
    """Raise ConfigError when `output_dir` contains a run started with other inputs."""
    path = output_dir / RUN_FILE
    if not path.is_file():
        return
    previous = read_json(path)
    differences = []
    if previous.get("pairs_sha256") != fingerprint["pairs_sha256"]:
        differences.append("pairs: the pairs file content changed")
    # The TrainConfig fields are listed as `train.FIELD`, the names that config files use.
    differences += config_differences(
        {"model_path": previous.get("model_path"), "train": previous.get("config")},
        {"model_path": fingerprint["model_path"], "train": fingerprint["config"]},
    )
    if differences:
        raise ConfigError(
            f"{output_dir} contains a training run started with a different config "
            f"({join_differences(differences)}); pass a new output directory or delete the old one"
        )


def load_result(output_dir: Path) -> TrainResult:
    """Rebuild the TrainResult of a finished run from its files."""
    data = read_json(output_dir / RESULT_FILE)
    logps = read_jsonl(output_dir / LOGPS_FILE)
    return TrainResult(
        checkpoint=Path(data["checkpoint"]),
        noise_head=Path(data["noise_head"]) if data.get("noise_head") else None,
        steps=data["steps"],
        pairs=data["pairs"],
        dropped=data["dropped"],
        mean_margin=data["mean_margin"],
        mean_noise_std=data["mean_noise_std"],
        wall_seconds=data["wall_seconds"],
        empty_rejected=data.get("empty_rejected", 0),
        metrics=data.get("metrics", {}),
        log=read_jsonl(output_dir / LOG_FILE),
        logps_path=output_dir / LOGPS_FILE,
        ref_chosen_logps={row["id"]: row["ref_chosen_logps"] for row in logps},
        ref_rejected_logps={row["id"]: row["ref_rejected_logps"] for row in logps},
    )


def training_arguments(config: TrainConfig, output_dir: Path) -> Any:
    """Map TrainConfig to transformers.TrainingArguments."""
    import torch
    from transformers import TrainingArguments

    report_to = [name.strip() for name in config.report_to.split(",") if name.strip()]
    return TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=config.per_device_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        num_train_epochs=config.num_epochs,
        max_steps=config.max_steps,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler,
        warmup_steps=config.warmup_ratio,  # a float below 1 is a share of the total steps
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        bf16=config.precision == "bf16",
        fp16=config.precision == "fp16",
        logging_steps=config.logging_steps,
        save_strategy="steps" if config.save_steps else "no",
        save_steps=config.save_steps or 1,
        save_total_limit=config.save_total_limit,
        report_to=report_to if report_to and report_to != ["none"] else "none",
        seed=config.seed,
        remove_unused_columns=False,
        ddp_find_unused_parameters=False,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        use_cpu=not has_accelerator(),
    )


def has_accelerator() -> bool:
    """Return whether torch finds a CUDA, XPU or MPS device."""
    import torch

    xpu = getattr(torch, "xpu", None)
    return (
        torch.cuda.is_available()
        or bool(xpu and xpu.is_available())
        or torch.backends.mps.is_available()
    )


def trim_log(path: Path, last_step: int) -> None:
    """Keep the log records up to `last_step`; later ones belong to steps about to be redone."""
    if not path.exists():
        return
    kept = [row for row in read_jsonl(path) if row.get("step", 0) <= last_step]
    atomic_write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in kept))


def last_complete_checkpoint(output_dir: Path, delete_incomplete: bool = False) -> str | None:
    """Return the newest `checkpoint-N` whose trainer_state.json is readable, or None.

    Trainer writes trainer_state.json last, so a checkpoint without a readable one was
    cut short by a crash and is skipped (and deleted with `delete_incomplete`), so that
    a resumed run never loads half-written weights or optimizer state.
    """
    steps = sorted(
        (int(path.name.split("-")[1]), path)
        for path in output_dir.glob("checkpoint-*")
        if path.is_dir() and path.name.split("-")[1].isdigit()
    )
    for _, path in reversed(steps):
        try:
            read_json(path / "trainer_state.json")
            return str(path)
        except (OSError, ValueError):
            logger.warning("Skipping %s: no readable trainer_state.json, so it was cut short", path)
            if delete_incomplete:
                shutil.rmtree(path, ignore_errors=True)
    return None


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def summarize_log(log: list[dict[str, Any]]) -> dict[str, float]:
    """Average the per-step metrics of a run; noise/std_max is the max over steps."""
    keys = {key for record in log for key, value in record.items() if isinstance(value, (int, float))}
    summary = {}
    for key in sorted(keys - {"step", "epoch"}):
        values = [record[key] for record in log if isinstance(record.get(key), (int, float))]
        summary[key] = max(values) if key == "noise/std_max" else _mean(values)
    return summary


def train(
    pairs: list[dict[str, Any]] | str | Path,
    model_path: str,
    output_dir: str | Path,
    config: TrainConfig,
    noise_head_init: str | Path | None = None,
    trust_remote_code: bool = False,
) -> TrainResult:
    """Train `model_path` on preference pairs with `config.mode` and save to `output_dir`.

    `noise_head_init` starts the noise head (dnpo mode only) from a previous run's
    `noise_head.safetensors` instead of W=0, b=ln(noise_init_std). Under
    `accelerate launch` every process calls this function.
    """
    from accelerate.utils import gather_object

    from dnpo.models import load_causal_lm, load_tokenizer, resolve_model_path
    from dnpo.training.model import build_preference_model, causal_lm
    from dnpo.training.noise import load_noise_head_state
    from dnpo.training.trainer import NPOTrainer

    output_dir = Path(output_dir)
    if (output_dir / RESULT_FILE).is_file():
        # A finished run is reused only for the same pairs, model and config.
        fingerprint = run_fingerprint(read_pairs(pairs), resolve_model_path(str(model_path)), config)
        check_same_run(output_dir, fingerprint)
        logger.info("Training in %s already finished; returning its result", output_dir)
        remove_resume_files(output_dir)
        return load_result(output_dir)
    if noise_head_init is not None and config.mode != "dnpo":
        raise ConfigError(f"noise_head_init is given, but mode {config.mode} trains no noise head")
    started = time.monotonic()

    rows = read_pairs(pairs)
    model_path = resolve_model_path(str(model_path))
    tokenizer = load_tokenizer(model_path, trust_remote_code=trust_remote_code)
    try:
        tokenized, counts = tokenize_pairs(
            tokenizer, rows, config.max_length, config.max_prompt_length
        )
    except DataError as error:
        if isinstance(pairs, list):
            raise
        raise DataError(f"pairs file {pairs}: {error}") from None
    if not tokenized:
        raise DataError(
            f"none of the {counts.pairs_read} pairs can be trained on "
            f"({counts.dropped_prompt_too_long} with prompts of >= {config.max_prompt_length} "
            f"tokens, {counts.dropped_identical} identical, {counts.dropped_empty_chosen} with "
            "an empty chosen answer); raise max_prompt_length/max_length or check the pairs"
        )
    fingerprint = run_fingerprint(rows, model_path, config)
    check_same_run(output_dir, fingerprint)

    policy = load_causal_lm(model_path, precision="fp32", trust_remote_code=trust_remote_code)
    head_state = None
    if noise_head_init is not None:
        weight = causal_lm(policy).get_output_embeddings().weight
        head_state = load_noise_head_state(noise_head_init, weight.shape[1], weight.shape[0])
    model = build_preference_model(policy, config, head_state)
    trainer = NPOTrainer(
        model=model,
        args=training_arguments(config, output_dir),
        train_dataset=PairDataset(tokenized),
        processing_class=tokenizer,
        train_config=config,
        data_counts=counts,
    )

    if config.lora_r > 0 and (trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled):
        raise NotImplementedError(
            "LoRA (lora_r > 0) with FSDP or DeepSpeed is not supported: the final checkpoint "
            "merges the adapters into unsharded weights; train LoRA with DDP or one process"
        )
    resume = last_complete_checkpoint(output_dir, delete_incomplete=trainer.is_world_process_zero())
    if trainer.is_world_process_zero():
        atomic_write_json(output_dir / RUN_FILE, fingerprint)
        trim_log(output_dir / LOG_FILE, int(Path(resume).name.split("-")[-1]) if resume else 0)
    trainer.accelerator.wait_for_everyone()
    if resume:
        logger.info("Resuming training from %s", resume)
    output = trainer.train(resume_from_checkpoint=resume)

    trainer.final_save = True
    trainer.save_model(str(output_dir))
    ref_logps = dict(gather_object(list(trainer.ref_logps.items())))
    result = TrainResult(
        checkpoint=output_dir,
        noise_head=output_dir / NOISE_HEAD_FILE if config.mode == "dnpo" else None,
        steps=output.global_step,
        pairs=counts.pairs_kept,
        dropped={
            "prompt_too_long": counts.dropped_prompt_too_long,
            "identical": counts.dropped_identical,
            "empty_chosen": counts.dropped_empty_chosen,
        },
        mean_margin=None,
        mean_noise_std=None,
        wall_seconds=round(time.monotonic() - started, 2),
        empty_rejected=counts.empty_rejected,
        logps_path=output_dir / LOGPS_FILE,
        ref_chosen_logps={pair_id: values[0] for pair_id, values in ref_logps.items()},
        ref_rejected_logps={pair_id: values[1] for pair_id, values in ref_logps.items()},
    )
    if trainer.is_world_process_zero():
        finish_run(result, output_dir, counts, output.metrics)
    trainer.accelerator.wait_for_everyone()
    if not trainer.is_world_process_zero():
        result.log = read_jsonl(output_dir / LOG_FILE)
    return result


def remove_resume_files(output_dir: Path) -> None:
    """Delete the resumable checkpoints and partial log-prob files of a finished run.

    A finished run (train_result.json written) calls this again on every rerun, so a
    crash in the middle of the deletion leaves no pickle-based Trainer state behind.
    """
    from dnpo.training.trainer import REF_LOGPS_PARTIAL_GLOB

    for checkpoint in output_dir.glob("checkpoint-*"):
        shutil.rmtree(checkpoint, ignore_errors=True)
    for partial in output_dir.glob(REF_LOGPS_PARTIAL_GLOB):
        partial.unlink(missing_ok=True)


def finish_run(
    result: TrainResult, output_dir: Path, counts: DataCounts, trainer_metrics: dict[str, float]
) -> None:
    """Write logps.jsonl and, last, the result file; then delete resumable checkpoints.

    `trainer_metrics` are Trainer's end-of-training metrics (train_loss, train_runtime, ...),
    which cover only the steps run in this call when the run was resumed.
    """
    result.log = read_jsonl(output_dir / LOG_FILE)
    result.metrics = {**summarize_log(result.log), **trainer_metrics, **counts.to_metrics()}
    result.mean_margin = result.metrics.get("rewards/margins")
    result.mean_noise_std = result.metrics.get("noise/std_mean")
    lines = [
        json.dumps({"id": pair_id, "ref_chosen_logps": chosen,
                    "ref_rejected_logps": result.ref_rejected_logps[pair_id]})
        for pair_id, chosen in result.ref_chosen_logps.items()
    ]
    atomic_write_text(output_dir / LOGPS_FILE, "".join(line + "\n" for line in lines))
    atomic_write_json(output_dir / RESULT_FILE, result.summary())
    remove_resume_files(output_dir)
    margin = "n/a" if result.mean_margin is None else f"{result.mean_margin:.3f}"
    logger.info(
        "Training finished: %d steps in %.1f s, mean margin %s, model in %s",
        result.steps, result.wall_seconds, margin, output_dir,
    )
