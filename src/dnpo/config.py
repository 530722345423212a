"""The configuration of a whole `dnpo run`: one section per concern."""

from __future__ import annotations

from dataclasses import dataclass

from dnpo.configbase import ConfigError, Section, option
from dnpo.data import DataConfig
from dnpo.evaluation.config import EvalConfig
from dnpo.generation.config import GenerationConfig
from dnpo.judges.config import JudgeConfig
from dnpo.models import DEFAULT_MODEL
from dnpo.training.config import TrainConfig

METHODS = ("dnpo", "spin", "spin+dsl", "spin+npo")
BUNDLED_TASK = "bundled:arithmetic"


@dataclass
class ModelConfig(Section):
    name_or_path: str = option(DEFAULT_MODEL, "starting model: checkpoint dir, hub name or the bundled model")
    precision: str = option("fp32", "weights dtype for generation and evaluation", ("fp32", "bf16", "fp16"))
    trust_remote_code: bool = option(False, "allow custom modeling code from the model repository")


    def validate(self) -> None:
        super().validate()
        if not self.name_or_path.strip():
            raise ConfigError(
                "model.name_or_path is empty; set a checkpoint folder, a hub name or "
                "bundled:smollm2-135m-instruct"
            )


@dataclass
class TaskConfig(Section):
    section_name = "task"

    train_size: int = option(32, "training prompts of the bundled arithmetic task")
    eval_size: int = option(48, "held-out problems of the bundled task (clean references)")
    flawed_share: float = option(0.3, "share of training references that are flawed")
    seed: int = option(0, "seed of the problem generator")

    def validate(self) -> None:
        super().validate()
        for name in ("train_size", "eval_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"task.{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.flawed_share <= 1:
            raise ConfigError(f"task.flawed_share must be in [0, 1], got {self.flawed_share}")


@dataclass
class LoopConfig(Section):
    method: str = option(
        "dnpo",
        "dnpo (judge labels + noise), spin, spin+dsl (judge labels only), spin+npo (noise only)",
        METHODS,
    )
    iterations: int = option(4, "training rounds; iteration 0 is plain SPIN for every method")
    name: str = option("default", "run name: the run directory is output_dir/name")
    output_dir: str = option("runs", "parent folder of run directories")
    seed: int = option(
        0,
        "run seed: iteration k samples with generation.seed + 1000*seed + k and trains with "
        "train.seed + 1000*seed + k, so runs that differ only in this seed are independent repeats",
    )
    eval_max_new_tokens: int = option(128, "max new tokens of greedy held-out answers")
    report: bool = option(True, "write report.md and plots after every iteration")
    accelerate_config: str = option(
        "", "accelerate config file; when set, each train stage runs under `accelerate launch`"
    )

    def validate(self) -> None:
        super().validate()
        if self.iterations < 1:
            raise ConfigError(f"loop.iterations must be >= 1, got {self.iterations}")
        if not self.name or "/" in self.name or self.name in (".", ".."):
            raise ConfigError(f"loop.name must be a plain folder name, got {self.name!r}")
        if not self.output_dir.strip():
            raise ConfigError(
                "loop.output_dir is empty; set it to the parent folder of run directories, "
                "such as runs, or to . for the current folder"
            )

    @property
    def uses_judge(self) -> bool:
        return self.method in ("dnpo", "spin+dsl")

    @property
    def uses_noise(self) -> bool:
        return self.method in ("dnpo", "spin+npo")


@dataclass
class RunConfig(Section):
    model: ModelConfig = option(ModelConfig, "starting model")
    data: DataConfig = option(DataConfig, "SFT prompts with human references used for training")
    eval_data: DataConfig = option(DataConfig, "held-out prompts with gold answers for accuracy")
    task: TaskConfig = option(TaskConfig, "bundled arithmetic task, used when data.path is bundled:arithmetic")
    generation: GenerationConfig = option(GenerationConfig, "sampling of the training answers")
    judge: JudgeConfig = option(JudgeConfig, "judge for dynamic sample labeling")
    train: TrainConfig = option(TrainConfig, "NPO training")
    eval: EvalConfig = option(EvalConfig, "per-iteration evaluation")
    loop: LoopConfig = option(LoopConfig, "iterations and method")

    def validate(self) -> None:
        super().validate()
        if self.loop.uses_noise and self.train.mode not in ("dnpo", "fixed-noise"):
            raise ConfigError(
                f"loop.method={self.loop.method} adds noise, so train.mode must be dnpo or "
                f"fixed-noise, got {self.train.mode!r}"
            )
        # Methods without noise train plain SPIN regardless of train.mode (see train_mode),
        # so any mode other than dnpo (the default) or spin would be ignored silently.
        if not self.loop.uses_noise and self.train.mode in ("fixed-noise", "dpo"):
            raise ConfigError(
                f"train.mode={self.train.mode} has no effect with loop.method={self.loop.method}, "
                "which trains plain SPIN without noise. Only the methods dnpo and spin+npo use "
                "noise (train.mode dnpo or fixed-noise); remove the train.mode setting or "
                "choose one of those methods"
            )

    def train_mode(self, iteration: int) -> str:
        """Iteration 0 and methods without noise train plain SPIN."""
        if iteration == 0 or not self.loop.uses_noise:
            return "spin"
        return self.train.mode

    def iteration_seed(self, section_seed: int, iteration: int) -> int:
        """Seed of one iteration's sampling or training, derived from the section's seed and the run seed."""
        return section_seed + 1000 * self.loop.seed + iteration

    def judges(self, iteration: int) -> bool:
        return iteration > 0 and self.loop.uses_judge
