"""Batched generation with transformers `model.generate`.

Prompts are tokenized with `dnpo.chat.encode_prompt`, the function the training
collator uses, so both stages see the same prompt tokens. Batches are left-padded
with an attention mask (position ids follow the mask), sorted by prompt length, and
decoded with the KV cache.

Sampling is per row: `PerRowSampler` draws each row's token with a torch.Generator
seeded from the run seed and the prompt id, so a prompt's sample does not depend on
the batch it lands in. Greedy decoding (temperature 0) takes the argmax.
NOTE: batch invariance holds up to floating-point noise. Batches of different
shapes can change logits in the last bits, which flips a draw only at a near-tie.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import torch
import transformers
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from dnpo.chat import decode_completion, encode_prompt, stop_token_ids
from dnpo.generation.base import Example, Generation, Generator, sample_seed
from dnpo.generation.config import GenerationConfig

logger = logging.getLogger(__name__)


class PerRowSampler(LogitsProcessor):
    """Sample every row with its own generator and return logits that force that token.

    Returned logits are 0 at the drawn token and -inf elsewhere, so greedy decoding in
    `model.generate` picks exactly the draw.
    """

    def __init__(self, seeds: list[int], config: GenerationConfig, device: torch.device) -> None:
        warpers = [TemperatureLogitsWarper(config.temperature)]
        if config.top_k > 0:
            warpers.append(TopKLogitsWarper(config.top_k))
        if config.top_p < 1.0:
            warpers.append(TopPLogitsWarper(config.top_p))
        self.warpers = LogitsProcessorList(warpers)
        self.generators = [torch.Generator(device=device).manual_seed(seed) for seed in seeds]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """Draw one token per row; scores: (batch, vocab) → (batch, vocab)."""
        probs = torch.softmax(self.warpers(input_ids, scores.float()), dim=-1)
        tokens = torch.cat(
            [
                torch.multinomial(probs[row], 1, generator=generator)
                for row, generator in enumerate(self.generators)
            ]
        )
        forced = torch.full_like(scores, float("-inf"))
        forced[torch.arange(len(tokens), device=scores.device), tokens] = 0.0
        return forced


class HFGenerator(Generator):
    """Generator on a transformers causal LM, batched with left padding."""

    def __init__(self, model: Any, tokenizer: Any, config: GenerationConfig) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.config = config
        self.stop_ids = stop_token_ids(tokenizer)
        self.pad_id = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stop_ids[0]
        )

    @classmethod
    def from_pretrained(
        cls, path: str, config: GenerationConfig, trust_remote_code: bool = False
    ) -> HFGenerator:
        from dnpo.models import load_causal_lm, load_tokenizer

        tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code)
        model = load_causal_lm(path, config.precision, trust_remote_code=trust_remote_code)
        if torch.cuda.is_available():
            model = model.to("cuda")
        return cls(model, tokenizer, config)

    def iter_generate(self, examples: list[Example]) -> Iterator[list[tuple[int, Generation]]]:
        """Generate in batches of `batch_size`, longest prompts first to surface OOM early."""
        prompt_ids = [encode_prompt(self.tokenizer, example["prompt"]) for example in examples]
        order = sorted(range(len(examples)), key=lambda i: len(prompt_ids[i]), reverse=True)
        size = self.config.batch_size
        for start in range(0, len(order), size):
            rows = order[start : start + size]
            seeds = [sample_seed(self.config.seed, examples[i]["id"]) for i in rows]
            generations = self.generate_ids([prompt_ids[i] for i in rows], seeds)
            yield list(zip(rows, generations, strict=True))

    @torch.no_grad()
    def generate_ids(self, prompt_ids: list[list[int]], seeds: list[int]) -> list[Generation]:
        """Generate one answer per tokenized prompt; `seeds` matter only when sampling."""
        device = self.model.device
        width = max(len(ids) for ids in prompt_ids)
        input_ids = torch.full((len(prompt_ids), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(prompt_ids), width), dtype=torch.long)
        for row, ids in enumerate(prompt_ids):
            input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, width - len(ids) :] = 1
        processors = LogitsProcessorList()
        if self.config.temperature > 0:
            processors.append(PerRowSampler(seeds, self.config, device))
        output = self._generate(input_ids.to(device), attention_mask.to(device), processors)
        new_tokens = output[:, width:].tolist()  # (batch, generated_len)
        return [
            self._to_generation(tokens, len(ids))
            for tokens, ids in zip(new_tokens, prompt_ids, strict=True)
        ]

    def _generate(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, processors: LogitsProcessorList
    ) -> torch.Tensor:
        # The checkpoint's own generation_config (sampling defaults, repetition penalty)
        # would otherwise fill unset fields; a fresh config keeps decoding as configured.
        saved = self.model.generation_config
        self.model.generation_config = transformers.GenerationConfig(
            eos_token_id=self.stop_ids,
            pad_token_id=self.pad_id,
            bos_token_id=self.tokenizer.bos_token_id,
        )
        try:
            return self.model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                max_new_tokens=self.config.max_new_tokens,
                do_sample=False,
                num_beams=1,
                use_cache=True,
                logits_processor=processors,
            )
        finally:
            self.model.generation_config = saved

    def _to_generation(self, tokens: list[int], prompt_tokens: int) -> Generation:
        """Cut padding after the first stop token; a row without one hit the length limit."""
        stop = set(self.stop_ids)
        end = next((i + 1 for i, token in enumerate(tokens) if token in stop), None)
        finish_reason = "stop" if end is not None else "length"
        kept = tokens[:end] if end is not None else tokens
        return Generation(
            text=decode_completion(self.tokenizer, kept),
            finish_reason=finish_reason,
            prompt_tokens=prompt_tokens,
            completion_tokens=len(kept),
        )

    def close(self) -> None:
        self.model = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
