from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest

from dnpo.chat import encode_prompt, stop_token_ids
from dnpo.generation import GenerationConfig, generate_to_file, sample_seed
from dnpo.generation.vllm import VLLMGenerator, import_vllm
from dnpo.io import read_jsonl


@dataclass
class FakeSamplingParams:
    n: int
    temperature: float
    top_p: float
    top_k: int
    max_tokens: int
    seed: int
    stop_token_ids: list = field(default_factory=list)
    skip_special_tokens: bool = True


class FakeEngine:
    """Records requests; answers each prompt with scripted tokens and a finish reason."""

    def __init__(self, tokenizer, script):
        self.tokenizer = tokenizer
        self.script = script
        self.calls = []

    def generate(self, prompts, sampling_params, use_tqdm):
        self.calls.append((prompts, sampling_params, use_tqdm))
        outputs = []
        for _ in prompts:
            text, finish_reason, add_stop = self.script[len(outputs) % len(self.script)]
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            if add_stop:
                ids = ids + [stop_token_ids(self.tokenizer)[0]]
            outputs.append(
                SimpleNamespace(
                    outputs=[
                        SimpleNamespace(token_ids=ids, finish_reason=finish_reason, text="ignored")
                    ]
                )
            )
        return outputs


def examples():
    return [
        {
            "id": "a",
            "prompt": [{"role": "user", "content": "2+2? 🙂"}],
            "reference": "4",
            "gold_answer": "4",
        },
        {
            "id": "b",
            "prompt": [{"role": "user", "content": "Name a colour"}],
            "reference": "red",
            "gold_answer": None,
        },
        {
            "id": "c",
            "prompt": [{"role": "user", "content": "Count"}],
            "reference": "1 2 3",
            "gold_answer": None,
        },
    ]


def make_generator(tokenizer, script, **overrides):
    config = GenerationConfig(
        backend="vllm", max_new_tokens=64, temperature=0.7, top_p=0.9, **overrides
    )
    engine = FakeEngine(tokenizer, script)
    return VLLMGenerator(engine, tokenizer, config, FakeSamplingParams), engine


def test_request_mapping(tiny_tokenizer):
    generator, engine = make_generator(
        tiny_tokenizer, [("four 🙂", "stop", True)], vllm_chunk_size=2
    )
    generator.generate(examples())
    assert len(engine.calls) == 2
    prompts, params, use_tqdm = engine.calls[0]
    assert use_tqdm is False
    assert prompts == [
        {"prompt_token_ids": encode_prompt(tiny_tokenizer, examples()[0]["prompt"])},
        {"prompt_token_ids": encode_prompt(tiny_tokenizer, examples()[1]["prompt"])},
    ]
    first = params[0]
    assert first.temperature == 0.7
    assert first.top_p == 0.9
    assert first.top_k == -1
    assert first.max_tokens == 64
    assert first.n == 1
    assert first.seed == sample_seed(42, "a")
    assert params[1].seed == sample_seed(42, "b")
    assert first.stop_token_ids == stop_token_ids(tiny_tokenizer)


def test_top_k_passes_through(tiny_tokenizer):
    generator, engine = make_generator(tiny_tokenizer, [("x", "stop", True)], top_k=20)
    generator.generate(examples()[:1])
    assert engine.calls[0][1][0].top_k == 20


def test_finish_reasons_and_text(tiny_tokenizer, tmp_path):
    script = [("four 🙂", "stop", True), ("red red red", "length", False), ("1 2", "stop", False)]
    generator, _ = make_generator(tiny_tokenizer, script)
    path = tmp_path / "generations.jsonl"
    stats = generate_to_file(generator, examples(), path)
    records = {r["id"]: r for r in read_jsonl(path)}
    assert stats["finish_length"] == 1
    assert records["a"]["generated"] == "four 🙂"
    assert records["a"]["finish_reason"] == "stop"
    assert (
        records["a"]["completion_tokens"]
        == len(tiny_tokenizer("four 🙂", add_special_tokens=False)["input_ids"]) + 1
    )
    assert records["a"]["prompt_tokens"] == len(
        encode_prompt(tiny_tokenizer, examples()[0]["prompt"])
    )
    assert records["b"]["finish_reason"] == "length"
    assert records["c"]["generated"] == "1 2"


def test_unknown_finish_reason_raises(tiny_tokenizer):
    generator, _ = make_generator(tiny_tokenizer, [("x", "abort", False)])
    with pytest.raises(RuntimeError, match="finish_reason 'abort'"):
        generator.generate(examples()[:1])


def test_missing_vllm_names_the_extra(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "vllm":
            raise ImportError("No module named 'vllm'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match=r"pip install 'dnpo\[vllm\]'"):
        import_vllm()
