import pytest
import torch

from dnpo.chat import encode_completion, encode_prompt, stop_token_ids
from dnpo.judges import JudgeConfig, load_template, make_judge, render_judge_prompt
from dnpo.judges.cache import CachedJudge
from dnpo.judges.hf import HFJudge, RewardModelJudge, reward_to_score
from dnpo.testing import save_tiny_model

PROMPTS = [
    [{"role": "user", "content": "What is 2+2?"}],
    [{"role": "user", "content": "Nommez une couleur 🎨"}],
    "Say hi",
]
RESPONSES = ["4", "Rouge ❤️", "Hello there, friend!"]


class ScriptedModel(torch.nn.Module):
    """Appends the tokens of a fixed reply and an end-of-turn token to every prompt."""

    def __init__(self, tokenizer, reply):
        super().__init__()
        self.reply_ids = tokenizer(reply, add_special_tokens=False)["input_ids"]
        self.reply_ids.append(stop_token_ids(tokenizer)[0])
        self.generation_config = None
        self.device = torch.device("cpu")
        self.prompts = []

    def generate(self, input_ids, attention_mask, **kwargs):
        for ids, mask in zip(input_ids.tolist(), attention_mask.tolist(), strict=True):
            self.prompts.append([t for t, keep in zip(ids, mask, strict=True) if keep])
        tail = torch.tensor([self.reply_ids] * input_ids.shape[0])
        return torch.cat([input_ids, tail], dim=1)


def test_hf_judge_parses_greedy_reply(tiny_tokenizer):
    model = ScriptedModel(tiny_tokenizer, " Score: 83")
    judge = HFJudge(
        JudgeConfig(type="hf", model="scripted"), load_template(), model, tiny_tokenizer
    )
    results = judge.score(PROMPTS, RESPONSES)
    assert [r.score for r in results] == [83, 83, 83]
    assert results[0].raw == " Score: 83"
    expected = [
        encode_prompt(tiny_tokenizer, render_judge_prompt(load_template(), p, r))
        for p, r in zip(PROMPTS, RESPONSES, strict=True)
    ]
    assert sorted(model.prompts) == sorted(expected)
    assert results[1].prompt_tokens == len(expected[1])


def test_hf_judge_random_model_is_batch_invariant(tiny_model, tiny_tokenizer):
    config = JudgeConfig(type="hf", model="tiny", max_new_tokens=6, batch_size=3)
    batched = HFJudge(config, load_template(), tiny_model, tiny_tokenizer).score(PROMPTS, RESPONSES)
    single = HFJudge(
        config.replace(batch_size=1), load_template(), tiny_model, tiny_tokenizer
    ).score(PROMPTS, RESPONSES)
    assert [r.raw for r in batched] == [r.raw for r in single]
    for result in batched:
        assert (result.score is None) == (result.error is not None)


def test_hf_judge_identity_tracks_template(tiny_model, tiny_tokenizer, tmp_path):
    template = tmp_path / "t.txt"
    template.write_text("{question} => {answer}", encoding="utf-8")
    config = JudgeConfig(type="hf", model="tiny")
    default = HFJudge(config, load_template(), tiny_model, tiny_tokenizer).identity
    custom = HFJudge(config, load_template(template), tiny_model, tiny_tokenizer).identity
    assert default.startswith("hf:tiny:")
    assert default != custom


def test_make_judge_loads_hf_checkpoint_with_cache(tmp_path):
    save_tiny_model(tmp_path / "model")
    config = JudgeConfig(
        type="hf",
        model=str(tmp_path / "model"),
        max_new_tokens=4,
        cache_path=str(tmp_path / "cache.sqlite"),
    )
    judge = make_judge(config)
    assert isinstance(judge, CachedJudge)
    assert isinstance(judge.judge, HFJudge)
    assert len(judge.score(PROMPTS, RESPONSES)) == 3
    judge.close()


def make_reward_model(tokenizer):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_labels=1,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForSequenceClassification(config)
    with torch.no_grad():
        model.score.weight.normal_(0, 1.0)
    return model.eval()


def test_reward_model_last_token_batched(tiny_tokenizer):
    model = make_reward_model(tiny_tokenizer)
    config = JudgeConfig(type="reward-model", model="tiny-rm", batch_size=3)
    judge = RewardModelJudge(config, model, tiny_tokenizer)
    ids = [
        encode_prompt(tiny_tokenizer, p) + encode_completion(tiny_tokenizer, r)
        for p, r in zip(PROMPTS, RESPONSES, strict=True)
    ]
    batched = judge.rewards(ids)
    model.config.pad_token_id = None
    with torch.no_grad():
        unpadded = [model(input_ids=torch.tensor([row])).logits[0, 0].item() for row in ids]
    model.config.pad_token_id = tiny_tokenizer.pad_token_id
    assert batched == pytest.approx(unpadded, abs=1e-4)
    results = judge.score(PROMPTS, RESPONSES)
    assert [r.score for r in results] == [reward_to_score(r, 1.0) for r in unpadded]
    assert all(0 <= r.score <= 100 and r.error is None for r in results)
    assert len({r.score for r in results}) > 1


def test_reward_model_needs_one_output(tiny_tokenizer):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from dnpo.configbase import ConfigError

    config = LlamaConfig(
        vocab_size=len(tiny_tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_labels=2,
    )
    with pytest.raises(ConfigError, match="exactly one"):
        RewardModelJudge(
            JudgeConfig(type="reward-model", model="x"),
            LlamaForSequenceClassification(config),
            tiny_tokenizer,
        )


@pytest.mark.parametrize(
    ("reward", "scale", "score"),
    [
        (0.0, 1.0, 50),
        (1.0, 1.0, 73),
        (-1.0, 1.0, 27),
        (2.0, 2.0, 73),
        (50.0, 1.0, 100),
        (-50.0, 1.0, 0),
        (1e6, 1.0, 100),
        (-1e6, 1.0, 0),
    ],
)
def test_reward_to_score(reward, scale, score):
    assert reward_to_score(reward, scale) == score
