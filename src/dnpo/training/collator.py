"""Tokenization and batching of preference pairs.

A pair is `{"id", "prompt", "chosen", "rejected"}`: the prompt is a string or chat
messages (multi-turn allowed), each completion a string or an assistant message.
The prompt goes through `dnpo.chat.encode_prompt` (chat template, exactly one BOS)
and each completion through `dnpo.chat.encode_completion` (answer tokens plus the
end-of-turn token). Tokenizing them separately and concatenating the ids keeps the
completion boundary exact even when the prompt ends in whitespace that a joint
tokenization would merge into the first answer token.

Truncation keeps the whole prompt and cuts the end of a completion. A cut
completion loses its end-of-turn token, because the answer did not end there and
the model must not learn to stop at that point. Pairs are dropped, and counted, when
the chosen answer is empty or whitespace-only, when the prompt alone reaches
`max_prompt_length` (which is below `max_length`), or when chosen and rejected are
identical token for token after truncation, since such a pair carries no preference.
An empty rejected answer is kept, because a model that stops at once does output it,
and is counted in `empty_rejected`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from dnpo.chat import encode_completion, encode_prompt, normalize_completion
from dnpo.errors import DataError

logger = logging.getLogger(__name__)

# Keys that every row of a pairs file needs; `id` is optional.
PAIR_FIELDS = ("prompt", "chosen", "rejected")


@dataclass
class TokenizedPair:
    """Token ids of one preference pair; each completion ends with end-of-turn unless cut."""

    id: str
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    chosen_truncated: bool = False
    rejected_truncated: bool = False


@dataclass
class DataCounts:
    """Pairs read, kept, dropped (by reason) and truncated, for the training log."""

    pairs_read: int = 0
    pairs_kept: int = 0
    dropped_prompt_too_long: int = 0
    dropped_identical: int = 0
    dropped_empty_chosen: int = 0
    truncated_chosen: int = 0
    truncated_rejected: int = 0
    # Kept pairs whose rejected answer is empty or whitespace-only.
    empty_rejected: int = 0

    @property
    def dropped(self) -> int:
        return self.dropped_prompt_too_long + self.dropped_identical + self.dropped_empty_chosen

    def to_metrics(self) -> dict[str, int]:
        """Return the counts under `data/` metric keys."""
        return {f"data/{key}": value for key, value in asdict(self).items()}


def truncate_completion(completion_ids: list[int], room: int) -> tuple[list[int], bool]:
    """Keep the first `room` tokens of a completion; return (ids, whether it was cut).

    `completion_ids` ends with the end-of-turn token. A cut keeps at most
    `len(completion_ids) - 1` tokens, so the end-of-turn token is always the one removed.
    """
    if len(completion_ids) <= room:
        return completion_ids, False
    return completion_ids[:room], True


def record_name(row: Any, index: int) -> str:
    """Name a pair row in messages: `record N` (1-based), plus its id when it has one."""
    if isinstance(row, dict) and "id" in row:
        return f"record {index + 1} (id {row['id']!r})"
    return f"record {index + 1}"


def tokenize_pair(
    tokenizer: Any, row: dict[str, Any], index: int, max_length: int, max_prompt_length: int
) -> TokenizedPair | str:
    """Tokenize one pair row; return the pair, or the name of the reason it is dropped.

    `index` is 0-based, and messages number the row from 1 as `record N`, as the other
    dnpo input errors do. Raises DataError for a row that is not a valid pair.
    """
    record = record_name(row, index)
    if not isinstance(row, dict):
        raise DataError(
            f"{record} is not a JSON object (got {type(row).__name__}); each record needs "
            f"the keys {', '.join(PAIR_FIELDS)}"
        )
    # The fallback id stays 0-based, unlike `record N`, because logps.jsonl files store it.
    pair_id = str(row.get("id", f"row-{index}"))
    missing = [key for key in PAIR_FIELDS if key not in row]
    if missing:
        raise DataError(
            f"{record} lacks {', '.join(missing)}; each record needs the keys "
            f"{', '.join(PAIR_FIELDS)}"
        )
    try:
        prompt_ids = encode_prompt(tokenizer, row["prompt"])
        chosen_ids = encode_completion(tokenizer, row["chosen"])
        rejected_ids = encode_completion(tokenizer, row["rejected"])
    except ValueError as error:
        raise DataError(f"{record}: {error}") from None

    if is_blank(row["chosen"]):
        return "dropped_empty_chosen"
    if len(prompt_ids) >= max_prompt_length:
        return "dropped_prompt_too_long"
    room = max_length - len(prompt_ids)
    chosen_ids, chosen_truncated = truncate_completion(chosen_ids, room)
    rejected_ids, rejected_truncated = truncate_completion(rejected_ids, room)
    if chosen_ids == rejected_ids:
        return "dropped_identical"
    return TokenizedPair(
        pair_id, prompt_ids, chosen_ids, rejected_ids, chosen_truncated, rejected_truncated
    )


def is_blank(completion: Any) -> bool:
    """Return whether a valid completion, text or assistant message, is empty or whitespace."""
    return not normalize_completion(completion).strip()


def tokenize_pairs(
    tokenizer: Any, rows: Iterable[dict[str, Any]], max_length: int, max_prompt_length: int
) -> tuple[list[TokenizedPair], DataCounts]:
    """Tokenize pair rows, dropping and counting those that cannot train."""
    pairs: list[TokenizedPair] = []
    counts = DataCounts()
    first_numbers: dict[str, int] = {}
    for index, row in enumerate(rows):
        counts.pairs_read += 1
        result = tokenize_pair(tokenizer, row, index, max_length, max_prompt_length)
        if isinstance(result, str):
            setattr(counts, result, getattr(counts, result) + 1)
            continue
        if result.id in first_numbers:
            raise DataError(
                f"record {index + 1} repeats the id {result.id!r} of record "
                f"{first_numbers[result.id]}; pair ids must be unique"
            )
        first_numbers[result.id] = index + 1
        counts.truncated_chosen += result.chosen_truncated
        counts.truncated_rejected += result.rejected_truncated
        counts.empty_rejected += is_blank(row["rejected"])
        pairs.append(result)
    counts.pairs_kept = len(pairs)
    if counts.dropped:
        logger.warning(
            "Dropped %d of %d pairs: %d with a prompt of >= %d tokens, %d with identical "
            "chosen and rejected after truncation, %d with an empty or whitespace-only chosen "
            "answer",
            counts.dropped, counts.pairs_read, counts.dropped_prompt_too_long,
            max_prompt_length, counts.dropped_identical, counts.dropped_empty_chosen,
        )
    if counts.empty_rejected:
        logger.warning(
            "Kept pairs with an empty or whitespace-only rejected answer: %d of %d. They are "
            "trained on, because a model that stops at once outputs such an answer",
            counts.empty_rejected, counts.pairs_kept,
        )
    return pairs, counts


class PairDataset(torch.utils.data.Dataset):
    """Map-style dataset of tokenized pairs, yielding plain dicts for the collator."""

    def __init__(self, pairs: list[TokenizedPair]) -> None:
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return asdict(self.pairs[index])


@dataclass
class PreferenceCollator:
    """Stack the chosen rows, then the rejected rows, into one right-padded batch.

    Returns `input_ids`, `attention_mask` and `completion_mask`, each (2B, T), with
    row i the chosen and row B + i the rejected sequence of pair i, plus `pair_ids`
    (a list of B strings). Padding positions have mask 0 in both masks, so a pad
    token that equals the end-of-turn token never hides a trained end-of-turn token.
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        sequences, completion_masks = [], []
        for key in ("chosen_ids", "rejected_ids"):
            for feature in features:
                prompt, completion = feature["prompt_ids"], feature[key]
                sequences.append(prompt + completion)
                completion_masks.append([0] * len(prompt) + [1] * len(completion))
        length = max(len(ids) for ids in sequences)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of

        input_ids = torch.full((len(sequences), length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(sequences), length), dtype=torch.long)
        completion_mask = torch.zeros((len(sequences), length), dtype=torch.long)
        for row, (ids, mask) in enumerate(zip(sequences, completion_masks, strict=True)):
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, : len(ids)] = 1
            completion_mask[row, : len(ids)] = torch.tensor(mask, dtype=torch.long)
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "completion_mask": completion_mask,
            "pair_ids": [feature["id"] for feature in features],
        }
