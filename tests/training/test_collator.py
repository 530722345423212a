import json
import logging

import pytest
import torch
from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast

from dnpo.chat import FALLBACK_CHAT_TEMPLATE, end_of_turn_id, render_prompt
from dnpo.errors import DataError
from dnpo.testing import make_tiny_tokenizer
from dnpo.training.collator import (
    PairDataset,
    PreferenceCollator,
    tokenize_pair,
    tokenize_pairs,
    truncate_completion,
)


def make_merging_tokenizer(chat_template):
    """Byte-level tokenizer with one merge, space + 'H', that can cross the prompt boundary."""
    base = make_tiny_tokenizer(chat_template)
    data = json.loads(base.backend_tokenizer.to_str())
    data["model"]["vocab"]["ĠH"] = len(data["model"]["vocab"])
    data["model"]["merges"] = [["Ġ", "H"]]
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(data)),
        bos_token=base.bos_token, eos_token=base.eos_token, pad_token=base.pad_token,
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    tokenizer.chat_template = chat_template
    return tokenizer


def collate(tokenizer, rows, max_length=256, max_prompt_length=128):
    pairs, counts = tokenize_pairs(tokenizer, rows, max_length, max_prompt_length)
    dataset = PairDataset(pairs)
    pad = tokenizer.pad_token_id
    return PreferenceCollator(pad)([dataset[i] for i in range(len(dataset))]), counts


def completion_tokens(batch, row):
    mask = batch["completion_mask"][row].bool()
    return batch["input_ids"][row][mask].tolist()


@pytest.mark.parametrize("template", [None, FALLBACK_CHAT_TEMPLATE], ids=["chatml", "fallback"])
def test_completion_boundary_decodes_exactly(template):
    tokenizer = make_merging_tokenizer(template or make_tiny_tokenizer().chat_template)
    prompt = "Say hello"
    rendered = render_prompt(tokenizer, [{"role": "user", "content": prompt}])
    assert rendered[-1].isspace()
    chosen, rejected = "Hello world", " Hi"
    batch, _ = collate(tokenizer, [{"id": "p", "prompt": prompt, "chosen": chosen, "rejected": rejected}])

    eot = end_of_turn_id(tokenizer)
    for row, text in ((0, chosen), (1, rejected)):
        tokens = completion_tokens(batch, row)
        assert tokens[-1] == eot
        assert tokenizer.decode(tokens[:-1]) == text
    # A joint tokenization would merge the template's trailing space into the answer.
    if template == FALLBACK_CHAT_TEMPLATE:
        merged = tokenizer.convert_tokens_to_ids("ĠH")
        assert merged in tokenizer(rendered + chosen, add_special_tokens=False)["input_ids"]
        assert merged not in batch["input_ids"][0].tolist()


def test_sequences_have_one_bos(tiny_tokenizer):
    rows = [{"id": "a", "prompt": [{"role": "system", "content": "Be kind."},
                                   {"role": "user", "content": "Hi"},
                                   {"role": "assistant", "content": "Hello"},
                                   {"role": "user", "content": "Bye"}],
             "chosen": "Goodbye", "rejected": "No"}]
    batch, _ = collate(tiny_tokenizer, rows)
    bos = tiny_tokenizer.bos_token_id
    for row in range(2):
        ids = batch["input_ids"][row][batch["attention_mask"][row].bool()].tolist()
        assert ids[0] == bos
        assert ids.count(bos) == 1


def test_end_of_turn_trained_when_pad_is_eos():
    tokenizer = make_tiny_tokenizer(FALLBACK_CHAT_TEMPLATE)
    tokenizer.pad_token = tokenizer.eos_token
    assert end_of_turn_id(tokenizer) == tokenizer.pad_token_id
    batch, _ = collate(tokenizer, [{"id": "a", "prompt": "Hi", "chosen": "Hello there", "rejected": "Yo"}])

    rejected_length = int(batch["attention_mask"][1].sum())
    assert batch["input_ids"][1, rejected_length - 1] == tokenizer.eos_token_id
    assert batch["completion_mask"][1, rejected_length - 1] == 1
    assert batch["input_ids"][1, rejected_length] == tokenizer.pad_token_id
    assert batch["completion_mask"][1, rejected_length:].sum() == 0


def test_collator_stacks_chosen_then_rejected(tiny_tokenizer):
    rows = [{"id": str(i), "prompt": f"Q{i}", "chosen": "c" * (i + 1), "rejected": "r"} for i in range(3)]
    batch, _ = collate(tiny_tokenizer, rows)

    assert batch["input_ids"].shape[0] == 6
    assert batch["pair_ids"] == ["0", "1", "2"]
    for i in range(3):
        assert tiny_tokenizer.decode(completion_tokens(batch, i)[:-1]) == "c" * (i + 1)
        assert tiny_tokenizer.decode(completion_tokens(batch, 3 + i)[:-1]) == "r"
    assert torch.equal(batch["completion_mask"] * (1 - batch["attention_mask"]),
                       torch.zeros_like(batch["completion_mask"]))


def test_truncation_cuts_completion_end(tiny_tokenizer):
    row = {"id": "a", "prompt": "Hi", "chosen": "abcdefghij", "rejected": "ab"}
    prompt_length = len(tokenize_pair(tiny_tokenizer, row, 0, 1000, 500).prompt_ids)
    pair = tokenize_pair(tiny_tokenizer, row, 0, prompt_length + 5, prompt_length + 1)

    assert pair.chosen_truncated
    assert tiny_tokenizer.decode(pair.chosen_ids) == "abcde"
    assert end_of_turn_id(tiny_tokenizer) not in pair.chosen_ids
    assert not pair.rejected_truncated
    assert pair.rejected_ids[-1] == end_of_turn_id(tiny_tokenizer)
    assert len(pair.prompt_ids) + len(pair.chosen_ids) == prompt_length + 5


def test_truncate_completion_keeps_fitting_ids():
    assert truncate_completion([1, 2, 9], 3) == ([1, 2, 9], False)
    assert truncate_completion([1, 2, 9], 2) == ([1, 2], True)


def test_drops_are_counted(tiny_tokenizer):
    rows = [
        {"id": "ok", "prompt": "Hi", "chosen": "yes", "rejected": "no"},
        {"id": "long", "prompt": "x" * 200, "chosen": "yes", "rejected": "no"},
        {"id": "same", "prompt": "Hi", "chosen": "same", "rejected": "same"},
        {"id": "same-after-cut", "prompt": "Hi", "chosen": "abcdef1", "rejected": "abcdef2"},
    ]
    prompt_length = len(tokenize_pair(tiny_tokenizer, rows[0], 0, 1000, 500).prompt_ids)
    pairs, counts = tokenize_pairs(tiny_tokenizer, rows, prompt_length + 4, prompt_length + 2)

    assert [pair.id for pair in pairs] == ["ok"]
    assert counts.pairs_read == 4
    assert counts.pairs_kept == 1
    assert counts.dropped_prompt_too_long == 1
    assert counts.dropped_identical == 2
    assert counts.to_metrics()["data/dropped_identical"] == 2


def test_empty_chosen_dropped_and_counted(tiny_tokenizer, caplog):
    rows = [
        {"id": "ok", "prompt": "Hi", "chosen": "yes", "rejected": "no"},
        {"id": "empty", "prompt": "Hi", "chosen": "", "rejected": "no"},
        {"id": "blank", "prompt": "Hi", "chosen": " \n", "rejected": "no"},
        {"id": "message", "prompt": "Hi", "chosen": {"role": "assistant", "content": "  "},
         "rejected": "no"},
    ]
    with caplog.at_level(logging.WARNING, logger="dnpo.training.collator"):
        pairs, counts = tokenize_pairs(tiny_tokenizer, rows, 256, 128)
    assert [pair.id for pair in pairs] == ["ok"]
    assert counts.dropped_empty_chosen == 3
    assert counts.dropped == 3
    assert counts.to_metrics()["data/dropped_empty_chosen"] == 3
    assert "3 with an empty or whitespace-only chosen answer" in caplog.text


def test_empty_rejected_kept_and_counted(tiny_tokenizer, caplog):
    rows = [
        {"id": "ok", "prompt": "Hi", "chosen": "yes", "rejected": "no"},
        {"id": "empty", "prompt": "Hi", "chosen": "yes", "rejected": ""},
        {"id": "blank", "prompt": "Hi", "chosen": "yes", "rejected": "   "},
    ]
    with caplog.at_level(logging.WARNING, logger="dnpo.training.collator"):
        pairs, counts = tokenize_pairs(tiny_tokenizer, rows, 256, 128)
    assert [pair.id for pair in pairs] == ["ok", "empty", "blank"]
    assert pairs[1].rejected_ids == [end_of_turn_id(tiny_tokenizer)]
    assert counts.empty_rejected == 2
    assert counts.dropped == 0
    assert counts.to_metrics()["data/empty_rejected"] == 2
    assert "empty or whitespace-only rejected answer: 2 of 3" in caplog.text


def test_invalid_rows_raise_data_error(tiny_tokenizer):
    with pytest.raises(DataError, match=r"record 1 \(id 'a'\) lacks rejected"):
        tokenize_pairs(tiny_tokenizer, [{"id": "a", "prompt": "Hi", "chosen": "x"}], 64, 32)
    with pytest.raises(DataError, match="role 'assistant'"):
        tokenize_pairs(tiny_tokenizer, [{"id": "a", "prompt": "Hi", "chosen": "x",
                                         "rejected": {"role": "user", "content": "y"}}], 64, 32)
    duplicate = [{"id": "a", "prompt": "Hi", "chosen": "x", "rejected": "y"}] * 2
    with pytest.raises(DataError, match="record 2 repeats the id 'a' of record 1"):
        tokenize_pairs(tiny_tokenizer, duplicate, 64, 32)
