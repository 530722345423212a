"""Judge configuration: which judge scores answers, and how."""

from __future__ import annotations

from dataclasses import dataclass

from dnpo.configbase import ConfigError, Section, option

JUDGE_TYPES = ("verifier", "openai", "hf", "reward-model")


@dataclass
class JudgeConfig(Section):
    section_name = "judge"

    type: str = option("verifier", "judge: verifier, openai, hf or reward-model", JUDGE_TYPES)
    model: str = option(
        "", "judge model: API model name (openai) or path/hub name (hf, reward-model)"
    )
    base_url: str = option("", "OpenAI-compatible server URL, e.g. http://127.0.0.1:8000/v1")
    api_key_env: str = option(
        "OPENAI_API_KEY", "name of the environment variable holding the API key"
    )
    template_file: str = option("", "judge prompt template file; empty uses the built-in rubric")
    max_concurrency: int = option(8, "judge requests in flight at once (openai)")
    timeout: float = option(60.0, "seconds per judge request (openai)")
    max_retries: int = option(5, "retries per request on 429, 5xx and timeouts (openai)")
    max_new_tokens: int = option(16, "tokens the judge may write for its verdict (openai, hf)")
    batch_size: int = option(8, "items per forward pass (hf, reward-model)")
    reward_scale: float = option(1.0, "reward-model logit scale: score = 100*sigmoid(reward/scale)")
    precision: str = option(
        "fp32", "weights dtype of the hf and reward-model judges", ("fp32", "bf16", "fp16")
    )
    cache: bool = option(True, "cache successful scores in SQLite so no item is judged twice")
    cache_path: str = option(
        "", "SQLite cache file; empty uses judge_cache.sqlite in dnpo's cache folder"
    )
    on_failure: str = option(
        "spin", "a failed judge call: spin (human reference chosen) or drop", ("spin", "drop")
    )
    on_tie: str = option(
        "reference",
        "equal judge scores: reference (the human reference is chosen, as in the paper) or "
        "drop the pair, so that a correct generated answer is never rejected",
        ("reference", "drop"),
    )

    def validate(self) -> None:
        super().validate()
        if self.max_concurrency < 1:
            raise ConfigError(f"judge.max_concurrency must be >= 1, got {self.max_concurrency}")
        if self.timeout <= 0:
            raise ConfigError(f"judge.timeout must be > 0 seconds, got {self.timeout}")
        if self.max_retries < 0:
            raise ConfigError(f"judge.max_retries must be >= 0, got {self.max_retries}")
        if self.max_new_tokens < 1:
            raise ConfigError(f"judge.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.batch_size < 1:
            raise ConfigError(f"judge.batch_size must be >= 1, got {self.batch_size}")
        if self.reward_scale <= 0:
            raise ConfigError(f"judge.reward_scale must be > 0, got {self.reward_scale}")
