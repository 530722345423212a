import pytest

from dnpo.chat import (
    decode_completion,
    encode_completion,
    encode_prompt,
    end_of_turn_id,
    normalize_completion,
    normalize_prompt,
)
from dnpo.testing import IM_END, make_tiny_tokenizer


def test_prompt_has_exactly_one_bos(tiny_tokenizer):
    ids = encode_prompt(tiny_tokenizer, "What is 2 + 2?")
    assert ids[0] == tiny_tokenizer.bos_token_id
    assert ids.count(tiny_tokenizer.bos_token_id) == 1


def test_template_without_bos_gets_one_added():
    tokenizer = make_tiny_tokenizer(chat_template="{% for m in messages %}{{ m['content'] }}{% endfor %}")
    ids = encode_prompt(tokenizer, "hi")
    assert ids[0] == tokenizer.bos_token_id
    assert ids.count(tokenizer.bos_token_id) == 1


def test_end_of_turn_is_template_token(tiny_tokenizer):
    assert end_of_turn_id(tiny_tokenizer) == tiny_tokenizer.convert_tokens_to_ids(IM_END)


def test_completion_round_trips_with_whitespace_and_emoji(tiny_tokenizer):
    text = "  12 + 7 = 19 😀\n#### 19 "
    ids = encode_completion(tiny_tokenizer, text)
    assert ids[-1] == end_of_turn_id(tiny_tokenizer)
    assert decode_completion(tiny_tokenizer, ids) == text


def test_normalize_prompt_drops_null_system_turn():
    messages = normalize_prompt(
        [{"role": "system", "content": None}, {"role": "user", "content": "q"}]
    )
    assert messages == [{"role": "user", "content": "q"}]


@pytest.mark.parametrize(
    "prompt, message",
    [
        ("   ", "prompt is empty"),
        ([], "non-empty list"),
        ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "end with a user"),
        ([{"role": "robot", "content": "q"}], "invalid role 'robot'"),
        ([{"role": "user", "content": 3}], "content must be a string"),
    ],
)
def test_normalize_prompt_rejects_bad_input(prompt, message):
    with pytest.raises(ValueError, match=message):
        normalize_prompt(prompt)


def test_normalize_completion_accepts_assistant_message():
    assert normalize_completion({"role": "assistant", "content": "a"}) == "a"
    assert normalize_completion([{"role": "assistant", "content": "b"}]) == "b"
    with pytest.raises(ValueError, match="role 'assistant'"):
        normalize_completion({"role": "user", "content": "a"})
