import pytest
import torch

from dnpo.chat import encode_completion, encode_prompt
from dnpo.evaluation.logps import sequence_logps

RECORDS = [
    {"id": "a", "prompt": "What is 2 + 2?", "generated": "4"},
    {
        "id": "b",
        "prompt": [{"role": "user", "content": "Name a color."}],
        "generated": "Blue, like the sky on a clear day.",
    },
    {"id": "c", "prompt": "Say hi.", "generated": ""},
]


def unbatched_logp(model, tokenizer, record):
    """Reference: one unpadded forward pass, summing log-probs of the completion tokens."""
    prompt = encode_prompt(tokenizer, record["prompt"])
    completion = encode_completion(tokenizer, record["generated"])
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(ids).logits[0].float(), dim=-1)
    return sum(logprobs[len(prompt) + j - 1, token].item() for j, token in enumerate(completion))


def test_sequence_logps_match_unbatched_sum(tiny_model, tiny_tokenizer):
    values = sequence_logps(tiny_model, tiny_tokenizer, RECORDS, batch_size=3)
    expected = [unbatched_logp(tiny_model, tiny_tokenizer, r) for r in RECORDS]
    assert values == pytest.approx(expected, abs=1e-4)


def test_sequence_logps_independent_of_batch_size(tiny_model, tiny_tokenizer):
    one = sequence_logps(tiny_model, tiny_tokenizer, RECORDS, batch_size=1)
    three = sequence_logps(tiny_model, tiny_tokenizer, RECORDS, batch_size=3)
    assert one == pytest.approx(three, abs=1e-4)
    assert all(value < 0 for value in one)


def test_sequence_logps_empty_completion_scores_end_of_turn(tiny_model, tiny_tokenizer):
    # An empty answer still has one token, the end-of-turn token.
    (value,) = sequence_logps(tiny_model, tiny_tokenizer, [RECORDS[2]])
    assert value == pytest.approx(unbatched_logp(tiny_model, tiny_tokenizer, RECORDS[2]), abs=1e-4)
    assert value < 0


def test_sequence_logps_max_length_cuts_completion(tiny_model, tiny_tokenizer):
    record = RECORDS[1]
    prompt_len = len(encode_prompt(tiny_tokenizer, record["prompt"]))
    cut = sequence_logps(tiny_model, tiny_tokenizer, [record], max_length=prompt_len + 3)
    full = sequence_logps(tiny_model, tiny_tokenizer, [record])
    assert cut[0] > full[0]  # fewer negative terms
    with pytest.raises(ValueError, match="no room"):
        sequence_logps(tiny_model, tiny_tokenizer, [record], max_length=prompt_len)


def test_sequence_logps_custom_keys_and_missing_key(tiny_model, tiny_tokenizer):
    records = [{"id": "x", "prompt": "Hi", "chosen": "Hello"}]
    values = sequence_logps(tiny_model, tiny_tokenizer, records, completion_key="chosen")
    assert len(values) == 1
    with pytest.raises(ValueError, match="lacks"):
        sequence_logps(tiny_model, tiny_tokenizer, records)


def test_sequence_logps_restores_training_mode(tiny_model, tiny_tokenizer):
    tiny_model.train()
    sequence_logps(tiny_model, tiny_tokenizer, RECORDS[:1])
    assert tiny_model.training
