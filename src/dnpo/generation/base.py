"""The generator interface and the resumable generations.jsonl writer.

A generations.jsonl record, one per prompt id:
`{"id", "prompt", "reference", "gold_answer", "generated", "finish_reason",
"prompt_tokens", "completion_tokens"}`. `finish_reason` is `stop` when the model ended
its turn (end-of-turn or EOS token) and `length` when it hit `max_new_tokens`.
`completion_tokens` counts the generated tokens including the stop token.
"""

from __future__ import annotations

import hashlib
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from dnpo.generation.config import GenerationConfig
from dnpo.io import JsonlWriter
from dnpo.messages import format_count
from dnpo.outputs import check_output_settings

logger = logging.getLogger(__name__)

Example = dict[str, Any]
FINISH_REASONS = ("stop", "length")
# GenerationConfig fields that change the generated text; batch and memory sizes do not.
SETTINGS_FIELDS = ("backend", "max_new_tokens", "temperature", "top_p", "top_k", "seed", "precision")


@dataclass
class Generation:
    """One generated answer: text, why it ended and its token counts."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


class Generator(ABC):
    """Answers SFT examples with a model; subclasses wrap one inference backend."""

    config: GenerationConfig

    @abstractmethod
    def iter_generate(self, examples: list[Example]) -> Iterator[list[tuple[int, Generation]]]:
        """Yield (index into `examples`, generation) pairs one batch at a time, in any order."""

    def generate(self, examples: list[Example]) -> list[Generation]:
        """Return one generation per example, in the order of `examples`."""
        by_index: dict[int, Generation] = {}
        for batch in self.iter_generate(examples):
            by_index.update(batch)
        return [by_index[i] for i in range(len(examples))]

    def close(self) -> None:  # noqa: B027 (optional hook, no-op by default)
        """Release the model; the generator cannot be used afterwards."""


def sample_seed(seed: int, example_id: str) -> int:
    """Return the sampling seed of one prompt: a 63-bit hash of the run seed and its id.

    A prompt's sample depends only on this seed, never on its batch or position.
    """
    digest = hashlib.sha256(f"{seed}:{example_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def generation_record(example: Example, generation: Generation) -> dict[str, Any]:
    return {
        "id": example["id"],
        "prompt": example["prompt"],
        "reference": example["reference"],
        "gold_answer": example.get("gold_answer"),
        "generated": generation.text,
        "finish_reason": generation.finish_reason,
        "prompt_tokens": generation.prompt_tokens,
        "completion_tokens": generation.completion_tokens,
    }


def generation_settings(config: GenerationConfig, model_path: str) -> dict[str, Any]:
    """Return the model and sampling settings that decide a generations file's records."""
    settings: dict[str, Any] = {"model": model_path}
    for name in SETTINGS_FIELDS:
        settings[f"generation.{name}"] = getattr(config, name)
    return settings


def generate_to_file(
    generator: Generator,
    examples: list[Example],
    path: str | Path,
    settings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Generate answers for the examples whose ids are not yet in `path`, appending records.

    Each batch is written and flushed as soon as it is done, so a rerun after a crash
    repeats at most one batch. With `settings` (see `generation_settings`), a file
    written with other settings raises ConfigError instead of being resumed. Returns
    counts, token totals and throughput.
    """
    path = Path(path)
    if settings is not None:
        check_output_settings(path, settings)
    with JsonlWriter(path) as writer:
        todo, seen = [], set(writer.done)
        for example in examples:
            if example["id"] not in seen:
                seen.add(example["id"])
                todo.append(example)
        already_done = len(examples) - len(todo)
        if already_done:
            logger.info(
                "%s already contains %d of %d prompts; generating the rest",
                path,
                already_done,
                len(examples),
            )
        stats = {
            "prompts": len(examples),
            "already_done": already_done,
            "generated": 0,
            "finish_length": 0,
            "prompt_tokens": 0,
            "completion_tokens": 0,
        }
        started = time.monotonic()
        with tqdm(total=len(todo), desc="generate", unit="prompt", disable=not todo) as progress:
            for batch in generator.iter_generate(todo):
                for index, generation in batch:
                    writer.write(generation_record(todo[index], generation))
                    stats["generated"] += 1
                    stats["finish_length"] += generation.finish_reason == "length"
                    stats["prompt_tokens"] += generation.prompt_tokens
                    stats["completion_tokens"] += generation.completion_tokens
                progress.update(len(batch))
    seconds = time.monotonic() - started
    stats["seconds"] = round(seconds, 2)
    stats["completion_tokens_per_second"] = (
        round(stats["completion_tokens"] / seconds, 1) if seconds else 0.0
    )
    if stats["generated"]:
        logger.info(
            "Generated %s into %s in %.1f s (%.1f new tokens/s, %d hit max_new_tokens)",
            format_count(stats["generated"], "answer"),
            path,
            seconds,
            stats["completion_tokens_per_second"],
            stats["finish_length"],
        )
    return stats
