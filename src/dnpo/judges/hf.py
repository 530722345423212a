"""Local causal-LM judges: a chat model that writes its verdict, or a reward model.

`hf`: the judge template is sent as one user turn through the model's chat template,
the model decodes greedily for `judge.max_new_tokens` tokens, and the reply is parsed
with the same rules as API judges. Greedy decode plus parsing was chosen over an
expected value over number tokens because tokenizers split `0`-`100` differently
(one token or two), and because the parsed reply is the same kind of `raw` text that
API judges store.

`reward-model`: an AutoModelForSequenceClassification with one output scores the
prompt plus the response, both tokenized with `dnpo.chat` as in training. The scalar
reward r maps to `round(100 * sigmoid(r / judge.reward_scale))`: r = 0 gives 50, and
`reward_scale` sets how many reward units move the score from 50 to 73.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import torch

from dnpo.chat import encode_completion, encode_prompt
from dnpo.configbase import ConfigError
from dnpo.generation.config import GenerationConfig
from dnpo.generation.hf import HFGenerator
from dnpo.judges.base import (
    Judge,
    JudgeResult,
    Prompt,
    check_lengths,
    render_judge_prompt,
    template_hash,
)
from dnpo.judges.config import JudgeConfig
from dnpo.judges.parsing import PARSER_VERSION, parse_verdict

logger = logging.getLogger(__name__)


class PaddingWarningFilter(logging.Filter):
    """Drops transformers' warning about padding in `inputs_embeds`, which `rewards` handles."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "will not detect padding tokens in `inputs_embeds`" not in record.getMessage()


logging.getLogger("transformers.modeling_layers").addFilter(PaddingWarningFilter())


class HFJudge(Judge):
    """A local chat model that writes a score; decoding is greedy, batched and left-padded."""

    type = "hf"

    def __init__(
        self, config: JudgeConfig, template: str, model: Any = None, tokenizer: Any = None
    ):
        if model is None:
            model, tokenizer = load_judge_model(config, sequence_classification=False)
        self.config = config
        self.template = template
        generation = GenerationConfig(
            max_new_tokens=config.max_new_tokens, temperature=0.0, batch_size=config.batch_size
        )
        self.generator = HFGenerator(model, tokenizer, generation)

    @property
    def identity(self) -> str:
        decoding = f"greedy{self.config.max_new_tokens}:parse{PARSER_VERSION}"
        return f"hf:{self.config.model}:{template_hash(self.template)}:{decoding}"

    def score(
        self,
        prompts: list[Prompt],
        responses: list[str],
        gold_answers: list[str | None] | None = None,
    ) -> list[JudgeResult]:
        check_lengths(prompts, responses, gold_answers)
        if not prompts:
            return []
        started = time.monotonic()
        examples = [
            {"id": str(i), "prompt": render_judge_prompt(self.template, prompt, response)}
            for i, (prompt, response) in enumerate(zip(prompts, responses, strict=True))
        ]
        generations = self.generator.generate(examples)
        latency = (time.monotonic() - started) / len(prompts)
        results = []
        for generation in generations:
            parsed = parse_verdict(generation.text)
            result = JudgeResult(parsed.score, generation.text, parsed.error, latency_s=latency)
            result.prompt_tokens = generation.prompt_tokens
            result.completion_tokens = generation.completion_tokens
            results.append(result)
        return results

    def close(self) -> None:
        self.generator.close()


class RewardModelJudge(Judge):
    """A sequence-classification reward model; its scalar maps to 0-100 through a sigmoid."""

    type = "reward-model"

    def __init__(self, config: JudgeConfig, model: Any = None, tokenizer: Any = None):
        if model is None:
            model, tokenizer = load_judge_model(config, sequence_classification=True)
        if model.config.num_labels != 1:
            raise ConfigError(
                f"judge.model {config.model} has {model.config.num_labels} outputs; a reward model "
                "must have exactly one (num_labels=1)"
            )
        if model.config.pad_token_id is None:
            model.config.pad_token_id = tokenizer.pad_token_id
        self.config = config
        self.model = model.eval()
        self.tokenizer = tokenizer

    @property
    def identity(self) -> str:
        return f"reward-model:{self.config.model}:scale{self.config.reward_scale}"

    def score(
        self,
        prompts: list[Prompt],
        responses: list[str],
        gold_answers: list[str | None] | None = None,
    ) -> list[JudgeResult]:
        check_lengths(prompts, responses, gold_answers)
        results = []
        size = self.config.batch_size
        for start in range(0, len(prompts), size):
            started = time.monotonic()
            ids = [
                encode_prompt(self.tokenizer, prompt) + encode_completion(self.tokenizer, response)
                for prompt, response in zip(
                    prompts[start : start + size], responses[start : start + size], strict=True
                )
            ]
            rewards = self.rewards(ids)
            latency = (time.monotonic() - started) / len(ids)
            for reward, tokens in zip(rewards, ids, strict=True):
                score = reward_to_score(reward, self.config.reward_scale)
                results.append(
                    JudgeResult(
                        score, f"reward {reward:.6g}", latency_s=latency, prompt_tokens=len(tokens)
                    )
                )
        return results

    @torch.no_grad()
    def rewards(self, token_ids: list[list[int]]) -> list[float]:
        """Return the reward of each full sequence, read at its last token.

        Sequences are left-padded and passed as embeddings with explicit position ids:
        with input ids, transformers would pool at the last non-pad token, which is wrong
        when the pad token is also the end-of-turn token.
        """
        device = self.model.device
        width = max(len(ids) for ids in token_ids)
        pad_id = self.model.config.pad_token_id
        input_ids = torch.full((len(token_ids), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(token_ids), width), dtype=torch.long)
        for row, ids in enumerate(token_ids):
            input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, width - len(ids) :] = 1
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        embeddings = self.model.get_input_embeddings()(input_ids.to(device))
        logits = self.model(
            inputs_embeds=embeddings,
            attention_mask=attention_mask.to(device),
            position_ids=position_ids.to(device),
        ).logits  # (batch, 1)
        return logits[:, 0].float().tolist()

    def close(self) -> None:
        self.model = None


def reward_to_score(reward: float, scale: float) -> int:
    """Map a scalar reward to 0-100: round(100 * sigmoid(reward / scale))."""
    return round(100.0 / (1.0 + math.exp(-max(min(reward / scale, 700.0), -700.0))))


def load_judge_model(config: JudgeConfig, sequence_classification: bool) -> tuple[Any, Any]:
    """Load the judge model and tokenizer named by `judge.model` on GPU when available."""
    from dnpo.models import (
        PRECISIONS,
        load_causal_lm,
        load_tokenizer,
        require_safetensors,
        resolve_model_path,
    )

    if not config.model:
        raise ConfigError(
            f"judge.model is empty; judge.type={config.type} needs a model path or hub name"
        )
    path = resolve_model_path(config.model)
    tokenizer = load_tokenizer(path)
    if sequence_classification:
        from transformers import AutoModelForSequenceClassification

        require_safetensors(path)
        model = AutoModelForSequenceClassification.from_pretrained(
            path, dtype=getattr(torch, PRECISIONS[config.precision]), use_safetensors=True
        )
    else:
        model = load_causal_lm(path, config.precision)
    if torch.cuda.is_available():
        model = model.to("cuda")
    return model, tokenizer
