"""Answer SFT prompts with the current model: transformers or vLLM backends."""

from __future__ import annotations

from dnpo.generation.base import Generation, Generator, generate_to_file, sample_seed
from dnpo.generation.config import GenerationConfig

__all__ = [
    "Generation",
    "GenerationConfig",
    "Generator",
    "generate_to_file",
    "make_generator",
    "sample_seed",
]


def make_generator(
    config: GenerationConfig,
    model_path: str,
    precision: str | None = None,
    trust_remote_code: bool = False,
) -> Generator:
    """Load the model at `model_path` behind the configured backend.

    `precision` overrides `config.precision`; `model_path` may be a checkpoint folder,
    a hub name or `bundled:smollm2-135m-instruct`.
    """
    from dnpo.models import resolve_model_path

    if precision:
        config = config.replace(precision=precision)
    path = resolve_model_path(model_path)
    if config.backend == "vllm":
        from dnpo.generation.vllm import VLLMGenerator

        return VLLMGenerator.from_pretrained(path, config, trust_remote_code=trust_remote_code)
    from dnpo.generation.hf import HFGenerator

    return HFGenerator.from_pretrained(path, config, trust_remote_code=trust_remote_code)
