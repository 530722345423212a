"""Numerics: a non-finite loss skips its optimizer step, and half-precision log-probs use fp32."""

import math

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from dnpo.evaluation.logps import sequence_logps
from dnpo.io import read_jsonl
from dnpo.testing import make_tiny_model, save_tiny_model
from dnpo.training import TrainConfig, train
from dnpo.training import model as model_module
from dnpo.training.api import training_arguments
from dnpo.training.collator import PairDataset, PreferenceCollator, tokenize_pairs
from dnpo.training.model import build_preference_model
from dnpo.training.noise import token_logps
from dnpo.training.trainer import NPOTrainer

PAIRS = [
    {"id": f"p{i}", "prompt": f"Add {i} and {i}.", "chosen": f"{2 * i}", "rejected": f"{i}{i}?"}
    for i in range(6)
]
SETTINGS = dict(
    mode="dnpo",
    per_device_batch_size=2,
    learning_rate=1e-3,
    noise_learning_rate=1e-2,
    warmup_ratio=0.0,
    max_length=64,
    max_prompt_length=48,
    noise_chunk_size=16,
)


def nan_loss_on_calls(monkeypatch, calls):
    """Make the NPO loss NaN on the given (1-based) calls of `npo_loss`."""
    original = model_module.npo_loss
    count = {"calls": 0}

    def npo_loss(*args, **kwargs):
        count["calls"] += 1
        terms = original(*args, **kwargs)
        if count["calls"] in calls:
            terms.loss = terms.loss * math.nan
        return terms

    monkeypatch.setattr(model_module, "npo_loss", npo_loss)


class StateSnapshots(TrainerCallback):
    """Copy every trainable tensor and the optimizer state after each optimizer step."""

    def __init__(self):
        self.params = {}
        self.optimizer_state = {}

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        self.params[state.global_step] = {
            name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad
        }
        self.optimizer_state[state.global_step] = [
            value.clone()
            for entry in optimizer.state.values()
            for value in entry.values()
            if torch.is_tensor(value)
        ]


def assert_same(first, second):
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name


def test_nan_loss_skips_policy_and_head_step(tiny_tokenizer, tmp_path, monkeypatch):
    nan_loss_on_calls(monkeypatch, {2})
    config = TrainConfig(**SETTINGS, max_steps=3)
    pairs, counts = tokenize_pairs(
        tiny_tokenizer, PAIRS, config.max_length, config.max_prompt_length
    )
    model = build_preference_model(make_tiny_model(tiny_tokenizer), config)
    snapshots = StateSnapshots()
    trainer = NPOTrainer(
        model=model,
        args=training_arguments(config, tmp_path),
        train_dataset=PairDataset(pairs),
        processing_class=tiny_tokenizer,
        train_config=config,
        data_counts=counts,
        callbacks=[snapshots],
    )
    start = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    trainer.train()

    assert any(name.startswith("noise_head.") for name in start)
    assert not torch.equal(snapshots.params[1]["noise_head.bias"], start["noise_head.bias"])
    assert_same(snapshots.params[2], snapshots.params[1])
    for before, after in zip(
        snapshots.optimizer_state[1], snapshots.optimizer_state[2], strict=True
    ):
        assert torch.equal(before, after)
    for name, value in snapshots.params[3].items():
        assert torch.isfinite(value).all(), name
        assert not torch.equal(value, snapshots.params[2][name]), name
    log = read_jsonl(tmp_path / "train_log.jsonl")
    assert [record["train/nonfinite_steps"] for record in log] == [0, 1, 1]


def test_all_nan_losses_leave_checkpoint_unchanged(tmp_path, monkeypatch):
    nan_loss_on_calls(monkeypatch, {1, 2})
    start_dir = save_tiny_model(tmp_path / "start")
    result = train(PAIRS, str(start_dir), tmp_path / "out", TrainConfig(**SETTINGS, max_steps=2))

    assert result.steps == 2
    start, trained = (
        load_file(str(start_dir / "model.safetensors")),
        load_file(str(tmp_path / "out" / "model.safetensors")),
    )
    assert_same(start, trained)
    head = load_file(str(tmp_path / "out" / "noise_head.safetensors"))
    assert torch.equal(head["weight"], torch.zeros_like(head["weight"]))
    assert torch.allclose(head["bias"], torch.full_like(head["bias"], math.log(0.1)))
    assert [record["train/nonfinite_steps"] for record in result.log] == [1, 2]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_token_logps_upcast_half_logits(dtype):
    generator = torch.Generator().manual_seed(0)
    logits = (torch.randn(8, 32000, generator=generator) * 6).to(dtype)
    labels = torch.randint(0, 32000, (8,), generator=generator)

    logps = token_logps(logits, labels)
    exact = torch.log_softmax(logits.double(), dim=-1).gather(-1, labels[:, None]).squeeze(-1)
    in_half = torch.log_softmax(logits, dim=-1).gather(-1, labels[:, None]).squeeze(-1)

    assert logps.dtype == torch.float32
    torch.testing.assert_close(logps.double(), exact, atol=1e-4, rtol=0)
    # The same computation in half precision is visibly off, so the check above has teeth.
    assert (in_half.double() - exact).abs().max() > 1e-3


def test_preference_model_logps_fp32_under_bf16_autocast(tiny_tokenizer):
    pairs, _ = tokenize_pairs(tiny_tokenizer, PAIRS[:2], max_length=64, max_prompt_length=48)
    batch = PreferenceCollator(tiny_tokenizer.pad_token_id)(
        [PairDataset(pairs)[i] for i in range(2)]
    )
    batch.pop("pair_ids")
    model = build_preference_model(make_tiny_model(tiny_tokenizer), TrainConfig(**SETTINGS))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outputs = model(**batch, noise_seed=1)
        logits = model.policy(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).logits

    assert logits.dtype == torch.bfloat16
    for key in (
        "policy_chosen_logps",
        "policy_rejected_logps",
        "ref_chosen_logps",
        "ref_rejected_logps",
        "noisy_ref_rejected_logps",
        "loss",
    ):
        assert outputs[key].dtype == torch.float32, key
        assert torch.isfinite(outputs[key]).all(), key


def test_sequence_logps_fp32_for_bf16_model(tiny_tokenizer):
    model = make_tiny_model(tiny_tokenizer).to(torch.bfloat16)
    records = [{"prompt": "What is 2 + 2?", "generated": "It is 4."}]

    (value,) = sequence_logps(model, tiny_tokenizer, records)

    from dnpo.chat import encode_completion, encode_prompt

    prompt = encode_prompt(tiny_tokenizer, records[0]["prompt"])
    ids = torch.tensor([prompt + encode_completion(tiny_tokenizer, records[0]["generated"])])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, :-1]
    labels = ids[0, 1:]
    completion = slice(len(prompt) - 1, None)
    exact = torch.log_softmax(logits.double(), -1).gather(-1, labels[:, None])[completion].sum()
    assert value == pytest.approx(exact.item(), abs=1e-3)
