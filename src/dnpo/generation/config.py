"""Generation configuration shared by the transformers and vLLM backends."""

from __future__ import annotations

from dataclasses import dataclass

from dnpo.configbase import ConfigError, Section, option


@dataclass
class GenerationConfig(Section):
    section_name = "generation"

    backend: str = option("hf", "generation backend: hf (transformers) or vllm", ("hf", "vllm"))
    max_new_tokens: int = option(256, "max tokens generated per answer")
    temperature: float = option(0.7, "sampling temperature; 0 decodes greedily")
    top_p: float = option(1.0, "nucleus sampling probability mass")
    top_k: int = option(0, "top-k sampling; 0 disables it")
    batch_size: int = option(16, "prompts per generation batch (hf backend)")
    seed: int = option(42, "sampling seed; each prompt's draw depends only on this seed and its id")
    precision: str = option("fp32", "weights dtype for generation", ("fp32", "bf16", "fp16"))
    vllm_gpu_memory_utilization: float = option(0.85, "vLLM share of GPU memory")
    vllm_tensor_parallel_size: int = option(1, "vLLM tensor parallel degree")
    vllm_chunk_size: int = option(
        512, "prompts per vLLM engine call; records are written after each"
    )

    def validate(self) -> None:
        super().validate()
        if self.max_new_tokens < 1:
            raise ConfigError(f"generation.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ConfigError(f"generation.temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"generation.top_p must be in (0, 1], got {self.top_p}")
        if self.batch_size < 1:
            raise ConfigError(f"generation.batch_size must be >= 1, got {self.batch_size}")
        if self.top_k < 0:
            raise ConfigError(f"generation.top_k must be >= 0 (0 disables it), got {self.top_k}")
        if self.vllm_chunk_size < 1:
            raise ConfigError(
                f"generation.vllm_chunk_size must be >= 1, got {self.vllm_chunk_size}"
            )
