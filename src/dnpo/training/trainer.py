"""`NPOTrainer`: transformers.Trainer with the preference collator and the NPO loss.

The model is a `PreferenceModel` (policy + frozen reference + optional noise head),
whose forward returns the loss. On top of transformers.Trainer, NPOTrainer adds two
learning rates (policy and noise head), TRL-style metrics and a JSONL log. It skips
the optimizer step after a non-finite loss. Its checkpoints save the policy as a
normal model directory with the noise head beside it.
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from transformers import (
    PrinterCallback,
    ProgressCallback,
    Trainer,
    TrainerCallback,
    get_scheduler,
)

from dnpo.io import JsonlWriter, atomic_write_json, read_jsonl
from dnpo.training.checkpoint import load_checkpoint, save_checkpoint
from dnpo.training.collator import DataCounts, PreferenceCollator
from dnpo.training.config import TrainConfig

logger = logging.getLogger(__name__)

TRAIN_LOG_FILE = "train_log.jsonl"
TRAIN_CONFIG_FILE = "dnpo_train_config.json"
# Reference log-probs appended as they are computed, one file per process, so that a
# run resumed from a checkpoint still reports every pair, including pairs of steps
# done before the crash. `train()` deletes them once logps.jsonl is written.
REF_LOGPS_PARTIAL_GLOB = "ref_logps.rank*.jsonl"


def skippable(optimizer_cls: type[torch.optim.Optimizer]) -> type[torch.optim.Optimizer]:
    """Subclass an optimizer so that `skip_next_step = True` turns the next step into a no-op."""

    class SkippableOptimizer(optimizer_cls):
        skip_next_step = False
        skipped_steps = 0

        def step(self, closure: Any = None) -> Any:
            if self.skip_next_step:
                self.skip_next_step = False
                self.skipped_steps += 1
                return None
            return super().step(closure)

    SkippableOptimizer.__name__ = f"Skippable{optimizer_cls.__name__}"
    return SkippableOptimizer


class JsonlLogCallback(TrainerCallback):
    """Append each training log record, keyed by step, to a JSONL file (main process only)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.writer: JsonlWriter | None = None

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        # The end-of-training summary (train_runtime, train_loss) goes to the result file instead.
        if not state.is_world_process_zero or not logs or "train_runtime" in logs:
            return
        if self.writer is None:
            self.writer = JsonlWriter(self.path, key="step")
        self.writer.write({"step": state.global_step, **logs})

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class LoggingProgressCallback(ProgressCallback):
    """Progress bar on stderr; each log record goes to `logging` instead of stdout."""

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        if not state.is_world_process_zero or not logs:
            return
        shown = {key: f"{value:.4g}" if isinstance(value, float) else value
                 for key, value in logs.items() if key != "total_flos"}
        logger.info("step %d: %s", state.global_step, shown)


class NPOTrainer(Trainer):
    """Trainer for NPO (dnpo), fixed-noise, SPIN and DPO on a `PreferenceModel`."""

    def __init__(
        self,
        *args: Any,
        train_config: TrainConfig,
        data_counts: DataCounts | None = None,
        **kwargs: Any,
    ) -> None:
        tokenizer = kwargs["processing_class"]
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        kwargs.setdefault("data_collator", PreferenceCollator(pad_token_id=pad_id))
        super().__init__(*args, **kwargs)
        self.train_config = train_config
        self.data_counts = data_counts or DataCounts()
        # compute_loss returns a per-batch mean; Trainer divides it for gradient accumulation.
        self.loss_is_scaled_for_ga = False
        self.final_save = False
        self.ref_logps = load_partial_ref_logps(Path(self.args.output_dir))
        self._ref_logps_writer: JsonlWriter | None = None
        self._metrics: dict[str, list[float]] = defaultdict(list)
        self._seed_step = -1
        self._seed_calls = 0
        self.add_callback(JsonlLogCallback(Path(self.args.output_dir) / TRAIN_LOG_FILE))
        # Trainer prints log records to stdout, which the CLI keeps for its final summary.
        for printer in (ProgressCallback, PrinterCallback):
            self.remove_callback(printer)
        self.add_callback(LoggingProgressCallback)

    # ---- optimizer ----

    def create_optimizer(self, model: torch.nn.Module | None = None) -> torch.optim.Optimizer:
        """Build RMSprop or AdamW with policy and noise-head parameter groups."""
        if self.optimizer is not None:
            return self.optimizer
        opt_model = model if model is not None else self.model
        config = self.train_config
        decay_names = set(self.get_decay_parameter_names(opt_model))
        policy_decay, policy_no_decay, head = [], [], []
        for name, parameter in opt_model.named_parameters():
            if not parameter.requires_grad:
                continue
            if "noise_head." in name:
                head.append(parameter)
            elif name in decay_names:
                policy_decay.append(parameter)
            else:
                policy_no_decay.append(parameter)
        groups = [
            {"params": policy_decay, "weight_decay": config.weight_decay, "lr": config.learning_rate},
            {"params": policy_no_decay, "weight_decay": 0.0, "lr": config.learning_rate},
            {"params": head, "weight_decay": 0.0, "lr": config.noise_learning_rate},
        ]
        groups = [group for group in groups if group["params"]]
        if config.optimizer == "rmsprop":
            self.optimizer = skippable(torch.optim.RMSprop)(groups, lr=config.learning_rate)
        else:
            self.optimizer = skippable(torch.optim.AdamW)(
                groups, lr=config.learning_rate, betas=(self.args.adam_beta1, self.args.adam_beta2),
                eps=self.args.adam_epsilon,
            )
        return self.optimizer

    def create_scheduler(
        self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None
    ) -> Any:
        """Build the learning-rate schedule with a warmup shorter than the whole run.

        Trainer's warmup of ceil(warmup_ratio * steps) covers every step of a 1-step
        run, and a linear warmup starts at lr 0, so such a run would leave the weights
        unchanged. The warmup is cut to `num_training_steps - 1` steps.
        """
        if self.lr_scheduler is not None:
            return self.lr_scheduler
        requested = self.args.get_warmup_steps(num_training_steps)
        warmup_steps = capped_warmup_steps(requested, num_training_steps)
        if num_training_steps < 2:
            logger.warning(
                "Training runs only %d optimizer step (%d pairs, batch size %d x %d gradient "
                "accumulation steps x %d processes, %s epochs); warmup cut from %d to %d "
                "steps. %s for more steps.",
                num_training_steps,
                len(self.train_dataset) if self.train_dataset is not None else 0,
                self.args.per_device_train_batch_size,
                self.args.gradient_accumulation_steps,
                self.args.world_size,
                self.train_config.num_epochs,
                requested,
                warmup_steps,
                "Raise max_steps" if self.args.max_steps > 0
                else "Raise num_epochs, or lower per_device_batch_size,",
            )
        elif warmup_steps < requested:
            logger.warning(
                "Warmup of %d steps would cover all %d optimizer steps, so it is cut to %d steps",
                requested,
                num_training_steps,
                warmup_steps,
            )
        self.lr_scheduler = get_scheduler(
            self.args.lr_scheduler_type,
            optimizer=optimizer if optimizer is not None else self.optimizer,
            num_warmup_steps=warmup_steps,
            num_training_steps=num_training_steps,
            scheduler_specific_kwargs=self.args.lr_scheduler_kwargs,
        )
        self._created_lr_scheduler = True
        return self.lr_scheduler

    def _base_optimizer(self) -> Any:
        optimizer = self.optimizer
        while hasattr(optimizer, "optimizer") and not hasattr(optimizer, "skip_next_step"):
            optimizer = optimizer.optimizer
        return optimizer

    # ---- loss and metrics ----

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        pair_ids = inputs.pop("pair_ids", None)
        outputs = model(
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            completion_mask=inputs["completion_mask"],
            noise_seed=self._next_noise_seed(),
        )
        loss = outputs["loss"]
        self._flag_nonfinite(loss)
        self._store_metrics(outputs)
        if pair_ids is not None and model.training:
            self._store_ref_logps(pair_ids, outputs)
        return (loss, outputs) if return_outputs else loss

    def _next_noise_seed(self) -> int:
        """Derive the noise seed from (seed, rank, step, micro-batch), so a resumed run redraws alike."""
        step = self.state.global_step
        if step != self._seed_step:
            self._seed_step, self._seed_calls = step, 0
        key = f"{self.args.seed}:{self.args.process_index}:{step}:{self._seed_calls}".encode()
        self._seed_calls += 1
        return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1

    def _flag_nonfinite(self, loss: torch.Tensor) -> None:
        """Skip the coming optimizer step on every rank if any rank's loss is not finite."""
        flag = (~torch.isfinite(loss.detach())).float().reshape(1)
        if self.accelerator.num_processes > 1:
            flag = self.accelerator.reduce(flag, reduction="sum")
        if flag.item() > 0:
            optimizer = self._base_optimizer()
            if optimizer is not None and hasattr(optimizer, "skip_next_step"):
                optimizer.skip_next_step = True
            logger.warning("Non-finite loss at step %d; the optimizer step is skipped",
                           self.state.global_step)

    def _store_metrics(self, outputs: dict[str, torch.Tensor]) -> None:
        gather = self.accelerator.gather
        chosen_rewards = gather(outputs["chosen_rewards"].detach().float())
        rejected_rewards = gather(outputs["rejected_rewards"].detach().float())
        metrics = self._metrics
        metrics["rewards/chosen"].append(chosen_rewards.mean().item())
        metrics["rewards/rejected"].append(rejected_rewards.mean().item())
        metrics["rewards/margins"].append((chosen_rewards - rejected_rewards).mean().item())
        metrics["rewards/accuracies"].append((chosen_rewards > rejected_rewards).float().mean().item())
        metrics["logps/chosen"].append(gather(outputs["policy_chosen_logps"].float()).mean().item())
        metrics["logps/rejected"].append(gather(outputs["policy_rejected_logps"].float()).mean().item())
        metrics["loss/model"].append(gather(outputs["model_loss"].float().reshape(1)).mean().item())
        if "noise_loss" in outputs:
            metrics["loss/noise"].append(gather(outputs["noise_loss"].float().reshape(1)).mean().item())
            penalty = gather(outputs["variance_penalty"].float().reshape(1)).mean().item()
            metrics["loss/variance_penalty"].append(penalty)
        if "noise_std_mean" in outputs:
            metrics["noise/std_mean"].append(gather(outputs["noise_std_mean"].float().reshape(1)).mean().item())
            metrics["noise/std_max"].append(gather(outputs["noise_std_max"].float().reshape(1)).max().item())
            shift = outputs["noisy_ref_rejected_logps"] - outputs["ref_rejected_logps"]
            metrics["noise/ref_rejected_logps_shift"].append(gather(shift.float()).mean().item())

    def _store_ref_logps(self, pair_ids: list[str], outputs: dict[str, torch.Tensor]) -> None:
        chosen = outputs["ref_chosen_logps"].tolist()
        rejected = outputs["ref_rejected_logps"].tolist()
        if self._ref_logps_writer is None:
            path = Path(self.args.output_dir) / f"ref_logps.rank{self.args.process_index}.jsonl"
            self._ref_logps_writer = JsonlWriter(path)
        for pair_id, chosen_logps, rejected_logps in zip(pair_ids, chosen, rejected, strict=True):
            if pair_id in self.ref_logps:
                continue
            self.ref_logps[pair_id] = (chosen_logps, rejected_logps)
            record = {"id": pair_id, "ref_chosen_logps": chosen_logps,
                      "ref_rejected_logps": rejected_logps}
            self._ref_logps_writer.write(record)

    def train(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().train(*args, **kwargs)
        finally:
            if self._ref_logps_writer is not None:
                self._ref_logps_writer.close()
                self._ref_logps_writer = None

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the averaged NPO metrics (max for noise/std_max) and counters to a training log."""
        if "loss" in logs and self._metrics:
            for key, values in self._metrics.items():
                logs[key] = max(values) if key == "noise/std_max" else sum(values) / len(values)
            self._metrics.clear()
        if "loss" in logs:
            optimizer = self._base_optimizer()
            logs["train/nonfinite_steps"] = getattr(optimizer, "skipped_steps", 0)
            logs.update(self.data_counts.to_metrics())
        super().log(logs, start_time)

    # ---- checkpoints ----

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Save the policy as a model directory, the noise head and the tokenizer."""
        if not self.args.should_save:
            return
        output_dir = Path(output_dir or self.args.output_dir)
        model = self.accelerator.unwrap_model(self.model)
        save_checkpoint(model, output_dir, state_dict=state_dict, merge_lora=self.final_save)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        atomic_write_json(output_dir / TRAIN_CONFIG_FILE, self.train_config.to_dict())

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        load_checkpoint(self.accelerator.unwrap_model(model or self.model), resume_from_checkpoint)


def capped_warmup_steps(warmup_steps: int, num_training_steps: int) -> int:
    """Return `warmup_steps`, at most `num_training_steps - 1`, so that some step has lr > 0."""
    return max(0, min(warmup_steps, num_training_steps - 1))


def load_partial_ref_logps(output_dir: Path) -> dict[str, tuple[float, float]]:
    """Read the reference log-probs that earlier, interrupted attempts of a run wrote."""
    ref_logps: dict[str, tuple[float, float]] = {}
    for path in sorted(output_dir.glob(REF_LOGPS_PARTIAL_GLOB)):
        for row in read_jsonl(path):
            ref_logps.setdefault(row["id"], (row["ref_chosen_logps"], row["ref_rejected_logps"]))
    return ref_logps
