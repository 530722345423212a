import logging

import pytest
import torch

from dnpo.chat import encode_prompt, stop_token_ids
from dnpo.generation import GenerationConfig, generate_to_file, sample_seed
from dnpo.generation.hf import HFGenerator
from dnpo.io import read_jsonl

PROMPTS = [
    "hi",
    "What is 2+2?",
    "Ünïcødé façade, 日本語 and emoji 🙂🚀 in one prompt",
    "x" * 40,
    "Tell me a story about a fox.",
    "a",
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why?"}],
    [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Again"},
    ],
]


def make_examples():
    return [
        {
            "id": f"p{i}",
            "prompt": prompt,
            "reference": f"ref {i}",
            "gold_answer": None,
            "metadata": {},
        }
        for i, prompt in enumerate(PROMPTS)
    ]


def generate(model, tokenizer, batch_size, **overrides):
    config = GenerationConfig(max_new_tokens=24, batch_size=batch_size, **overrides)
    return HFGenerator(model, tokenizer, config).generate(make_examples())


def test_greedy_batched_equals_one_at_a_time(tiny_model, tiny_tokenizer):
    batched = generate(tiny_model, tiny_tokenizer, batch_size=8, temperature=0.0)
    single = generate(tiny_model, tiny_tokenizer, batch_size=1, temperature=0.0)
    assert [g.text for g in batched] == [g.text for g in single]
    assert [g.completion_tokens for g in batched] == [g.completion_tokens for g in single]
    assert [g.finish_reason for g in batched] == [g.finish_reason for g in single]


def test_sampling_does_not_depend_on_batch(tiny_model, tiny_tokenizer):
    batched = generate(
        tiny_model, tiny_tokenizer, batch_size=8, temperature=1.0, top_p=0.9, top_k=50
    )
    in_threes = generate(
        tiny_model, tiny_tokenizer, batch_size=3, temperature=1.0, top_p=0.9, top_k=50
    )
    greedy = generate(tiny_model, tiny_tokenizer, batch_size=8, temperature=0.0)
    assert [g.text for g in batched] == [g.text for g in in_threes]
    assert [g.text for g in batched] != [g.text for g in greedy]


def test_sampling_changes_with_seed(tiny_model, tiny_tokenizer):
    first = generate(tiny_model, tiny_tokenizer, batch_size=8, temperature=1.0, seed=1)
    second = generate(tiny_model, tiny_tokenizer, batch_size=8, temperature=1.0, seed=2)
    assert [g.text for g in first] != [g.text for g in second]


def test_sample_seed_is_stable():
    assert sample_seed(42, "p1") == sample_seed(42, "p1")
    assert sample_seed(42, "p1") != sample_seed(43, "p1")
    assert 0 <= sample_seed(42, "p1") < 2**63


def test_prompt_tokens_match_encode_prompt(tiny_model, tiny_tokenizer, monkeypatch):
    seen = []
    original = tiny_model.generate

    def recording_generate(**kwargs):
        for ids, mask in zip(
            kwargs["input_ids"].tolist(), kwargs["attention_mask"].tolist(), strict=True
        ):
            seen.append([token for token, keep in zip(ids, mask, strict=True) if keep])
        return original(**kwargs)

    monkeypatch.setattr(tiny_model, "generate", recording_generate)
    results = generate(tiny_model, tiny_tokenizer, batch_size=3, temperature=0.0)
    expected = [encode_prompt(tiny_tokenizer, prompt) for prompt in PROMPTS]
    assert sorted(seen) == sorted(expected)
    assert [g.prompt_tokens for g in results] == [len(ids) for ids in expected]
    bos = tiny_tokenizer.bos_token_id
    for ids in seen:
        assert ids[0] == bos
        assert ids[1] != bos


def test_prompt_tokens_match_training_collator(tiny_tokenizer):
    collator = pytest.importorskip("dnpo.training.collator")
    for i, prompt in enumerate(PROMPTS):
        row = {"id": f"p{i}", "prompt": prompt, "chosen": "yes", "rejected": "no"}
        pair = collator.tokenize_pair(tiny_tokenizer, row, i, 4096, 2048)
        assert pair.prompt_ids == encode_prompt(tiny_tokenizer, prompt)


def test_finish_reason_and_token_counts(tiny_model, tiny_tokenizer):
    results = generate(tiny_model, tiny_tokenizer, batch_size=8, temperature=1.0)
    stops = set(stop_token_ids(tiny_tokenizer))
    assert {g.finish_reason for g in results} == {"stop", "length"}
    for g in results:
        if g.finish_reason == "length":
            assert g.completion_tokens == 24
        else:
            assert 1 <= g.completion_tokens <= 24
        assert not any(
            tiny_tokenizer.convert_tokens_to_ids(t) in stops
            for t in tiny_tokenizer.tokenize(g.text)
        )


def test_checkpoint_generation_config_is_ignored(tiny_model, tiny_tokenizer):
    expected = [g.text for g in generate(tiny_model, tiny_tokenizer, batch_size=8, temperature=0.0)]
    tiny_model.generation_config.do_sample = True
    tiny_model.generation_config.repetition_penalty = 5.0
    again = [g.text for g in generate(tiny_model, tiny_tokenizer, batch_size=8, temperature=0.0)]
    assert again == expected
    assert tiny_model.generation_config.repetition_penalty == 5.0


def test_generate_to_file_resumes_and_keeps_unicode(tiny_model, tiny_tokenizer, tmp_path):
    path = tmp_path / "generations.jsonl"
    config = GenerationConfig(max_new_tokens=8, batch_size=4, temperature=0.0)
    generator = HFGenerator(tiny_model, tiny_tokenizer, config)
    examples = make_examples()
    first = generate_to_file(generator, examples[:5], path)
    assert first["generated"] == 5
    with open(path, "a", encoding="utf-8") as handle:
        handle.write('{"id": "torn')
    second = generate_to_file(generator, examples + examples[:2], path)
    assert second["already_done"] == 7
    assert second["generated"] == 3
    records = read_jsonl(path)
    ids = [r["id"] for r in records]
    assert set(ids[:5]) == {e["id"] for e in examples[:5]}
    assert sorted(ids) == sorted(e["id"] for e in examples)
    by_id = {r["id"]: r for r in records}
    assert by_id["p2"]["prompt"] == PROMPTS[2]
    assert set(by_id["p0"]) == {
        "id",
        "prompt",
        "reference",
        "gold_answer",
        "generated",
        "finish_reason",
        "prompt_tokens",
        "completion_tokens",
    }
    assert path.read_text(encoding="utf-8").count("🙂🚀") == 1


def test_generate_to_file_one_answer_message(tiny_model, tiny_tokenizer, tmp_path, caplog):
    generator = HFGenerator(tiny_model, tiny_tokenizer, GenerationConfig(max_new_tokens=4))
    with caplog.at_level(logging.INFO, logger="dnpo.generation.base"):
        generate_to_file(generator, make_examples()[:1], tmp_path / "generations.jsonl")
    assert "Generated 1 answer into " in caplog.text


def test_generated_emoji_round_trip(tiny_tokenizer, tmp_path):
    """A model that always emits the bytes of an emoji answer yields that exact text."""
    answer = "Résumé 🙂"
    answer_ids = tiny_tokenizer(answer, add_special_tokens=False)["input_ids"]
    end = stop_token_ids(tiny_tokenizer)[0]

    class ScriptedModel(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.generation_config = None
            self.device = torch.device("cpu")

        def generate(self, input_ids, attention_mask, **kwargs):
            tail = torch.tensor([answer_ids + [end]] * input_ids.shape[0])
            return torch.cat([input_ids, tail], dim=1)

    path = tmp_path / "generations.jsonl"
    generator = HFGenerator(ScriptedModel(), tiny_tokenizer, GenerationConfig(max_new_tokens=32))
    generate_to_file(generator, make_examples()[:2], path)
    records = read_jsonl(path)
    assert [r["generated"] for r in records] == [answer, answer]
    assert all(r["finish_reason"] == "stop" for r in records)
    assert records[0]["completion_tokens"] == len(answer_ids) + 1
    assert answer in path.read_text(encoding="utf-8")
