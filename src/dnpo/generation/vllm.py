"""Generation with vLLM's offline engine (optional extra: `pip install 'dnpo[vllm]'`).

Prompts go to the engine as token ids from `dnpo.chat.encode_prompt`, so vLLM sees
the same prompt tokens as training and the transformers backend. Each request gets
its own SamplingParams seed derived from the run seed and the prompt id. Output
tokens are decoded with `dnpo.chat.decode_completion`, as in the transformers backend.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from dnpo.chat import decode_completion, encode_prompt, stop_token_ids
from dnpo.generation.base import FINISH_REASONS, Example, Generation, Generator, sample_seed
from dnpo.generation.config import GenerationConfig

logger = logging.getLogger(__name__)

VLLM_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def import_vllm() -> Any:
    try:
        import vllm
    except ImportError:
        raise ImportError(
            "generation.backend=vllm needs the vllm package, which is not installed; install it "
            "with `pip install 'dnpo[vllm]'` (Linux with a CUDA GPU) or use generation.backend=hf"
        ) from None
    return vllm


class VLLMGenerator(Generator):
    """Generator on a vLLM engine; `engine` needs `generate(prompts, sampling_params, use_tqdm)`."""

    def __init__(
        self, engine: Any, tokenizer: Any, config: GenerationConfig, sampling_params_cls: Any
    ) -> None:
        self.engine = engine
        self.tokenizer = tokenizer
        self.config = config
        self.sampling_params_cls = sampling_params_cls
        self.stop_ids = stop_token_ids(tokenizer)

    @classmethod
    def from_pretrained(
        cls, path: str, config: GenerationConfig, trust_remote_code: bool = False
    ) -> VLLMGenerator:
        from dnpo.models import load_tokenizer

        vllm = import_vllm()
        engine = vllm.LLM(
            model=path,
            dtype=VLLM_DTYPES[config.precision],
            seed=config.seed,
            gpu_memory_utilization=config.vllm_gpu_memory_utilization,
            tensor_parallel_size=config.vllm_tensor_parallel_size,
            trust_remote_code=trust_remote_code,
        )
        return cls(engine, load_tokenizer(path, trust_remote_code), config, vllm.SamplingParams)

    def sampling_kwargs(self, example_id: str) -> dict[str, Any]:
        """SamplingParams fields of one request; vLLM disables top-k with -1."""
        return {
            "n": 1,
            "temperature": self.config.temperature,
            "top_p": self.config.top_p,
            "top_k": self.config.top_k if self.config.top_k > 0 else -1,
            "max_tokens": self.config.max_new_tokens,
            "seed": sample_seed(self.config.seed, example_id),
            "stop_token_ids": list(self.stop_ids),
            "skip_special_tokens": True,
        }

    def iter_generate(self, examples: list[Example]) -> Iterator[list[tuple[int, Generation]]]:
        """Send `vllm_chunk_size` prompts per engine call; the engine batches them itself."""
        size = self.config.vllm_chunk_size
        for start in range(0, len(examples), size):
            indices = list(range(start, min(start + size, len(examples))))
            prompt_ids = [encode_prompt(self.tokenizer, examples[i]["prompt"]) for i in indices]
            requests = [{"prompt_token_ids": ids} for ids in prompt_ids]
            params = [
                self.sampling_params_cls(**self.sampling_kwargs(examples[i]["id"])) for i in indices
            ]
            outputs = self.engine.generate(requests, sampling_params=params, use_tqdm=False)
            if len(outputs) != len(indices):
                raise RuntimeError(
                    f"vLLM returned {len(outputs)} outputs for {len(indices)} prompts"
                )
            batch = []
            for index, ids, output in zip(indices, prompt_ids, outputs, strict=True):
                batch.append((index, self.to_generation(output, len(ids), examples[index]["id"])))
            yield batch

    def to_generation(self, output: Any, prompt_tokens: int, example_id: str) -> Generation:
        """Map a vLLM RequestOutput to a Generation; `stop` and `length` pass through."""
        completion = output.outputs[0]
        if completion.finish_reason not in FINISH_REASONS:
            raise RuntimeError(
                f"vLLM request for prompt {example_id} ended with finish_reason "
                f"{completion.finish_reason!r}; expected one of {list(FINISH_REASONS)}"
            )
        # vLLM's v1 scheduler (vllm/v1/core/sched/utils.py, check_stop) appends the stop token
        # to the output ids before finishing, so the count includes it, as in the hf backend.
        tokens = list(completion.token_ids)
        return Generation(
            text=decode_completion(self.tokenizer, tokens),
            finish_reason=completion.finish_reason,
            prompt_tokens=prompt_tokens,
            completion_tokens=len(tokens),
        )

    def close(self) -> None:
        self.engine = None
