"""Held-out accuracy for `dnpo run` and `dnpo evaluate`: greedy answers checked by the verifier."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

from dnpo.config import RunConfig
from dnpo.io import read_jsonl


def held_out_accuracy(config: RunConfig, model_path: str, eval_data: Any, output: Path) -> dict[str, Any]:
    """Greedy-decode the held-out prompts (resumable by id) and score them with the verifier."""
    from dnpo.data import load_sft_examples
    from dnpo.evaluation.metrics import accuracy_from_records, verifier_answer
    from dnpo.generation import generate_to_file, make_generator

    examples, _ = load_sft_examples(eval_data)
    greedy = config.generation.replace(
        temperature=0.0, max_new_tokens=config.loop.eval_max_new_tokens
    )
    generator = make_generator(greedy, model_path, precision=config.model.precision,
                               trust_remote_code=config.model.trust_remote_code)
    generate_to_file(generator, examples, output)
    del generator
    gc.collect()
    return accuracy_from_records(read_jsonl(output), verifier_answer)
