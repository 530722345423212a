"""Sequence log-probs of completions under a model, for the log-prob diagnostics.

Prompts and completions are tokenized with `dnpo.chat.encode_prompt` and
`encode_completion`, the functions the trainer uses, so a completion scored here
gets the same tokens (answer plus end-of-turn token) as in training.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch

from dnpo.chat import encode_completion, encode_prompt

logger = logging.getLogger(__name__)


def sequence_logps(
    model: Any,
    tokenizer: Any,
    records: Sequence[dict[str, Any]],
    prompt_key: str = "prompt",
    completion_key: str = "generated",
    batch_size: int = 8,
    max_length: int | None = None,
) -> list[float]:
    """Return log p(completion | prompt) summed over completion tokens, one per record.

    Log-softmax runs in fp32 whatever the model's dtype. With `max_length`, the
    end of a completion is cut so prompt plus completion fit, as in training; a
    prompt that leaves no room for a completion token raises ValueError.
    """
    encoded = [
        _encode(tokenizer, record, prompt_key, completion_key, max_length, index)
        for index, record in enumerate(records)
    ]
    # Longest first, so each batch pads little; results go back in input order.
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i][0]))
    out = [0.0] * len(encoded)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            batch = [encoded[i] for i in order[start : start + batch_size]]
            for i, value in zip(
                order[start : start + batch_size], _batch_logps(model, batch), strict=True
            ):
                out[i] = value
    finally:
        model.train(was_training)
    return out


def _encode(
    tokenizer: Any,
    record: dict[str, Any],
    prompt_key: str,
    completion_key: str,
    max_length: int | None,
    index: int,
) -> tuple[list[int], int]:
    """Return (prompt + completion token ids, number of prompt tokens)."""
    if prompt_key not in record or completion_key not in record:
        raise ValueError(
            f"record {record.get('id', index)!r} lacks {prompt_key!r} or {completion_key!r}; "
            f"it has keys {sorted(record)}"
        )
    prompt_ids = encode_prompt(tokenizer, record[prompt_key])
    completion_ids = encode_completion(tokenizer, record[completion_key])
    if max_length is not None:
        room = max_length - len(prompt_ids)
        if room < 1:
            raise ValueError(
                f"record {record.get('id', index)!r}: prompt has {len(prompt_ids)} tokens, "
                f"leaving no room for a completion within max_length={max_length}"
            )
        completion_ids = completion_ids[:room]
    return prompt_ids + completion_ids, len(prompt_ids)


def _batch_logps(model: Any, batch: list[tuple[list[int], int]]) -> list[float]:
    """Sum completion-token log-probs for a right-padded batch."""
    device = next(model.parameters()).device
    length = max(len(ids) for ids, _ in batch)
    input_ids = torch.zeros((len(batch), length), dtype=torch.long)  # (B, T)
    attention_mask = torch.zeros((len(batch), length), dtype=torch.long)  # (B, T)
    completion_mask = torch.zeros((len(batch), length), dtype=torch.bool)  # (B, T)
    for row, (ids, prompt_len) in enumerate(batch):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention_mask[row, : len(ids)] = 1
        completion_mask[row, prompt_len : len(ids)] = True
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits  # (B, T, V)
    # Position t predicts token t+1.
    logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # (B, T-1, V)
    labels = input_ids[:, 1:]  # (B, T-1)
    per_token_logps = logprobs.gather(-1, labels.unsqueeze(-1)).squeeze(-1)  # (B, T-1)
    mask = completion_mask[:, 1:].to(device)
    return (per_token_logps * mask).sum(-1).tolist()
