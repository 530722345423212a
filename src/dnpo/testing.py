"""Tiny models and tokenizers built in code, for tests, benchmarks and offline smoke runs.

Nothing here downloads. The tokenizer is byte-level (every UTF-8 string round-trips),
adds a BOS token the way Llama tokenizers do, and carries a ChatML template that
also writes the BOS token, so double-BOS bugs show up in tests.
"""

from __future__ import annotations

from pathlib import Path

import torch

BOS, EOS, PAD = "<s>", "</s>", "<pad>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"

TINY_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def make_tiny_tokenizer(chat_template: str | None = TINY_CHAT_TEMPLATE):
    """Build a byte-level BPE tokenizer with no merges (vocab = 256 bytes + 5 specials)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    byte_alphabet = pre_tokenizers.ByteLevel.alphabet()
    specials = [PAD, BOS, EOS, IM_START, IM_END]
    vocab = {token: i for i, token in enumerate(specials)}
    for symbol in sorted(byte_alphabet):
        vocab[symbol] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, vocab[BOS])]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=[IM_START, IM_END],
    )
    tokenizer.chat_template = chat_template
    return tokenizer


def make_tiny_model(
    tokenizer=None,
    hidden_size: int = 32,
    num_layers: int = 2,
    seed: int = 0,
    dropout: float = 0.0,
):
    """Build a randomly initialised Llama whose vocabulary matches the tiny tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tokenizer or make_tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.convert_tokens_to_ids(IM_END),
        pad_token_id=tokenizer.pad_token_id,
        attention_dropout=dropout,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = [
        tokenizer.convert_tokens_to_ids(IM_END),
        tokenizer.eos_token_id,
    ]
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def save_tiny_model(path: str | Path, seed: int = 0, **kwargs) -> Path:
    """Save a tiny model and its tokenizer as a normal checkpoint directory."""
    path = Path(path)
    tokenizer = make_tiny_tokenizer()
    model = make_tiny_model(tokenizer, seed=seed, **kwargs)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
