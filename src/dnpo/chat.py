"""Chat formatting and tokenization shared by training, generation and judging.

Training and generation must see the same prompt tokens, so both call
`encode_prompt`. A completion is tokenized on its own and appended, which keeps the
prompt/completion boundary exact: `encode_completion` returns the answer's tokens
followed by the template's end-of-turn token, which the model is trained to emit.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)

Message = dict[str, str]
ROLES = ("system", "user", "assistant")

# Used only when a tokenizer has no chat template of its own (base models).
FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ message['role'] | capitalize }}: {{ message['content'] }}{{ eos_token }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant: {% endif %}"
)

_SENTINEL = "XQ7DNPOSENTINEL"


def normalize_prompt(prompt: Any) -> list[Message]:
    """Return a prompt as chat messages ending in a user turn.

    A string becomes one user message. A list must hold `{"role", "content"}`
    dicts; a `system` turn with null content is dropped.
    """
    if isinstance(prompt, str):
        if not prompt.strip():
            raise ValueError("prompt is empty; every row needs a non-empty prompt")
        return [{"role": "user", "content": prompt}]
    if not isinstance(prompt, list) or not prompt:
        raise ValueError(
            f"prompt must be a string or a non-empty list of chat messages, got {type(prompt).__name__}"
        )
    messages = []
    for i, message in enumerate(prompt):
        if not isinstance(message, dict) or "role" not in message:
            raise ValueError(f"prompt message {i} must be a dict with 'role' and 'content'")
        role, content = message["role"], message.get("content")
        if role not in ROLES:
            raise ValueError(f"prompt message {i} has invalid role {role!r}; expected one of {ROLES}")
        if role == "system" and content is None:
            continue
        if not isinstance(content, str):
            raise ValueError(f"prompt message {i} ({role}) content must be a string, got {content!r}")
        messages.append({"role": role, "content": content})
    if not messages or messages[-1]["role"] != "user":
        raise ValueError("prompt must end with a user message; drop the trailing assistant turn")
    return messages


def normalize_completion(completion: Any) -> str:
    """Return a completion as text: a string, an assistant message or a one-message list."""
    if isinstance(completion, list) and len(completion) == 1:
        completion = completion[0]
    if isinstance(completion, dict):
        if completion.get("role", "assistant") != "assistant":
            raise ValueError(f"completion message must have role 'assistant', got {completion.get('role')!r}")
        completion = completion.get("content")
    if not isinstance(completion, str):
        raise ValueError(f"completion must be a string or an assistant message, got {completion!r:.80}")
    return completion


def chat_template(tokenizer: Any) -> str:
    template = getattr(tokenizer, "chat_template", None)
    if template:
        return template
    return FALLBACK_CHAT_TEMPLATE


def render_prompt(tokenizer: Any, messages: list[Message]) -> str:
    """Render prompt messages with the generation prompt appended, as text."""
    return tokenizer.apply_chat_template(
        messages,
        chat_template=chat_template(tokenizer),
        add_generation_prompt=True,
        tokenize=False,
    )


def encode_prompt(tokenizer: Any, prompt: Any) -> list[int]:
    """Tokenize a prompt with the chat template, with exactly one leading BOS.

    Templates that write the BOS token themselves and tokenizers that add one
    would otherwise produce two.
    """
    text = render_prompt(tokenizer, normalize_prompt(prompt))
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    bos = tokenizer.bos_token_id
    if bos is not None and _tokenizer_adds_bos(tokenizer):
        while len(ids) > 1 and ids[0] == bos and ids[1] == bos:
            ids.pop(0)
        if not ids or ids[0] != bos:
            ids.insert(0, bos)
    return ids


def encode_completion(tokenizer: Any, completion: Any) -> list[int]:
    """Tokenize a completion and append the end-of-turn token."""
    text = normalize_completion(completion)
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return ids + [end_of_turn_id(tokenizer)]


def decode_completion(tokenizer: Any, ids: list[int]) -> str:
    """Decode generated tokens, dropping the end-of-turn token and padding."""
    stop = set(stop_token_ids(tokenizer))
    kept = []
    for token in ids:
        if token in stop:
            break
        kept.append(token)
    return tokenizer.decode(kept, skip_special_tokens=True)


def end_of_turn_id(tokenizer: Any) -> int:
    """Return the token that closes an assistant turn in the chat template.

    Found by rendering a sentinel answer and taking the first special token after
    it (`<|im_end|>` for ChatML, `<|eot_id|>` for Llama 3); falls back to EOS.
    """
    cached = getattr(tokenizer, "_dnpo_end_of_turn_id", None)
    if cached is None:
        cached = _find_end_of_turn_id(tokenizer)
        tokenizer._dnpo_end_of_turn_id = cached
    return cached


def stop_token_ids(tokenizer: Any) -> list[int]:
    """Token ids that end a generation: end-of-turn and EOS."""
    ids = [end_of_turn_id(tokenizer)]
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def _find_end_of_turn_id(tokenizer: Any) -> int:
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _SENTINEL}]
    try:
        text = tokenizer.apply_chat_template(
            messages, chat_template=chat_template(tokenizer), tokenize=False
        )
    except Exception as error:  # template errors come from user-supplied Jinja
        raise ValueError(f"chat template failed to render an assistant turn: {error}") from error
    special = set(tokenizer.all_special_ids)
    if _SENTINEL in text:
        suffix = text.split(_SENTINEL, 1)[1]
        for token in tokenizer(suffix, add_special_tokens=False)["input_ids"]:
            if token in special:
                return token
    if tokenizer.eos_token_id is None:
        raise ValueError("tokenizer has no EOS token and its chat template no end-of-turn token")
    return tokenizer.eos_token_id


def _tokenizer_adds_bos(tokenizer: Any) -> bool:
    cached = getattr(tokenizer, "_dnpo_adds_bos", None)
    if cached is None:
        ids = tokenizer("a", add_special_tokens=True)["input_ids"]
        cached = bool(ids) and ids[0] == tokenizer.bos_token_id
        tokenizer._dnpo_adds_bos = cached
    return cached
