"""Training configuration for NPO, fixed-noise, SPIN and DPO."""

from __future__ import annotations

from dataclasses import dataclass

from dnpo.configbase import ConfigError, Section, option

MODES = ("dnpo", "fixed-noise", "spin", "dpo")


@dataclass
class TrainConfig(Section):
    section_name = "train"

    mode: str = option("dnpo", "loss mode: dnpo (trainable noise), fixed-noise, spin or dpo (no noise)", MODES)
    beta: float = option(0.1, "lambda in the NPO loss (beta in TRL): scale of the log-ratio margin")
    alpha: float = option(0.01, "weight of the mean noise variance penalty")
    eps_max: float = option(1.0, "upper bound on the noise variance; log-std is clamped at 0.5*ln(eps_max)")
    noise_init_std: float = option(0.1, "initial noise std: the head starts with W=0 and b=ln(noise_init_std)")
    fixed_noise_variance: float = option(
        0.5, "variance v of the fixed-noise ablation's N(0, v) logit noise (std = sqrt(v)); the paper's 0.5"
    )
    noise_chunk_size: int = option(256, "token positions per chunk in the noisy log-prob computation")
    noise_carry_over: bool = option(
        True, "start each iteration's noise head from the previous one instead of W=0, b=ln(noise_init_std)"
    )
    learning_rate: float = option(5e-7, "policy learning rate")
    noise_learning_rate: float = option(1e-3, "noise head learning rate")
    num_epochs: float = option(2.0, "passes over the pairs of one iteration")
    max_steps: int = option(-1, "stop after this many optimizer steps; -1 lets num_epochs decide")
    per_device_batch_size: int = option(4, "pairs per device per forward pass")
    gradient_accumulation_steps: int = option(1, "forward passes per optimizer step")
    max_length: int = option(1024, "max tokens of prompt plus completion; the completion end is cut")
    max_prompt_length: int = option(512, "prompts reaching this many tokens are dropped")
    optimizer: str = option("rmsprop", "optimizer: rmsprop (as SPIN), adamw", ("rmsprop", "adamw"))
    lr_scheduler: str = option("linear", "transformers learning-rate schedule name")
    warmup_ratio: float = option(0.1, "share of steps spent warming up the learning rate")
    weight_decay: float = option(0.0, "weight decay of the policy")
    max_grad_norm: float = option(1.0, "gradient clipping norm")
    precision: str = option(
        "fp32", "fp32, or bf16/fp16 mixed precision (fp32 weights, autocast forward)", ("fp32", "bf16", "fp16")
    )
    gradient_checkpointing: bool = option(False, "recompute activations in backward to save memory")
    lora_r: int = option(0, "LoRA rank; 0 trains all weights")
    lora_alpha: int = option(16, "LoRA alpha")
    lora_dropout: float = option(0.0, "LoRA dropout")
    lora_target_modules: str = option("all-linear", "PEFT target_modules for LoRA")
    logging_steps: int = option(1, "log metrics every this many optimizer steps")
    save_steps: int = option(0, "save a resumable checkpoint every this many steps; 0 saves at the end only")
    save_total_limit: int = option(2, "resumable checkpoints kept in the output directory")
    report_to: str = option("none", "transformers report_to: none, tensorboard, wandb, or a comma list")
    seed: int = option(42, "seed of data order and noise draws")

    def validate(self) -> None:
        super().validate()
        if self.beta <= 0:
            raise ConfigError(f"train.beta must be > 0, got {self.beta}; the paper and SPIN use 0.1")
        if self.alpha < 0:
            raise ConfigError(f"train.alpha must be >= 0, got {self.alpha}")
        if self.eps_max <= 0:
            raise ConfigError(f"train.eps_max must be > 0, got {self.eps_max}")
        if self.noise_init_std <= 0:
            raise ConfigError(f"train.noise_init_std must be > 0, got {self.noise_init_std}")
        if self.noise_init_std**2 >= self.eps_max:
            raise ConfigError(
                f"train.noise_init_std={self.noise_init_std} gives a variance at or above "
                f"train.eps_max={self.eps_max}; lower noise_init_std or raise eps_max"
            )
        for name in ("per_device_batch_size", "gradient_accumulation_steps", "max_length",
                     "max_prompt_length", "noise_chunk_size", "logging_steps", "save_total_limit"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        from transformers import SchedulerType

        schedulers = [scheduler.value for scheduler in SchedulerType]
        if self.lr_scheduler not in schedulers:
            raise ConfigError(
                f"train.lr_scheduler: invalid value {self.lr_scheduler!r}; expected one of {schedulers}"
            )
        if self.max_prompt_length >= self.max_length:
            raise ConfigError(
                f"train.max_prompt_length ({self.max_prompt_length}) must be below "
                f"train.max_length ({self.max_length}) to leave room for the completion"
            )
        for name in ("learning_rate", "num_epochs"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"train.{name} must be > 0, got {getattr(self, name)}")
        if self.noise_learning_rate <= 0:
            raise ConfigError(f"train.noise_learning_rate must be > 0, got {self.noise_learning_rate}")
        if self.fixed_noise_variance <= 0:
            raise ConfigError(f"train.fixed_noise_variance must be > 0, got {self.fixed_noise_variance}")
        if self.max_steps == 0 or self.max_steps < -1:
            raise ConfigError(f"train.max_steps must be -1 (use num_epochs) or >= 1, got {self.max_steps}")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"train.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.save_steps < 0:
            raise ConfigError(f"train.save_steps must be >= 0, got {self.save_steps}")
        if self.lora_r < 0:
            raise ConfigError(f"train.lora_r must be >= 0 (0 trains all weights), got {self.lora_r}")
