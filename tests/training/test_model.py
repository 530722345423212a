import math

import pytest
import torch

from dnpo.testing import make_tiny_model
from dnpo.training.collator import PairDataset, PreferenceCollator, tokenize_pairs
from dnpo.training.config import TrainConfig
from dnpo.training.model import build_preference_model

ROWS = [
    {"id": "a", "prompt": "What is 2+2?", "chosen": "4", "rejected": "It is 5, probably."},
    {"id": "b", "prompt": "Name a color.", "chosen": "Blue", "rejected": "Seven"},
]


@pytest.fixture
def batch(tiny_tokenizer):
    pairs, _ = tokenize_pairs(tiny_tokenizer, ROWS, max_length=128, max_prompt_length=96)
    collated = PreferenceCollator(tiny_tokenizer.pad_token_id)([PairDataset(pairs)[i] for i in range(2)])
    collated.pop("pair_ids")
    return collated


def build(tokenizer, dropout=0.0, **fields):
    config = TrainConfig(**{"noise_chunk_size": 5, **fields})
    return build_preference_model(make_tiny_model(tokenizer, dropout=dropout), config)


def test_dropout_in_config_is_active_before_disabling(tiny_tokenizer, batch):
    model = make_tiny_model(tiny_tokenizer, dropout=0.5).train()
    first = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    second = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert not torch.allclose(first, second)


@pytest.mark.parametrize("mode", ["spin", "dpo"])
@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_step0_loss_is_ln2(tiny_tokenizer, batch, mode, dropout):
    model = build(tiny_tokenizer, dropout=dropout, mode=mode).train()
    outputs = model(**batch)
    assert outputs["loss"].item() == pytest.approx(math.log(2), abs=1e-4)
    assert outputs["chosen_rewards"].abs().max().item() < 1e-6
    assert outputs["rejected_rewards"].abs().max().item() < 1e-6
    assert model.policy.config.attention_dropout == 0.0


def test_step0_with_lora_is_ln2(tiny_tokenizer, batch):
    model = build(tiny_tokenizer, dropout=0.5, mode="spin", lora_r=4, lora_dropout=0.1).train()
    assert model.reference is None
    outputs = model(**batch)
    assert outputs["loss"].item() == pytest.approx(math.log(2), abs=1e-4)


def test_step0_terms_are_ln2_with_tiny_noise(tiny_tokenizer, batch):
    model = build(tiny_tokenizer, dropout=0.5, mode="dnpo", noise_init_std=1e-6).train()
    outputs = model(**batch)
    assert outputs["model_loss"].item() == pytest.approx(math.log(2), abs=1e-4)
    assert outputs["noise_loss"].item() == pytest.approx(math.log(2), abs=1e-4)
    assert outputs["noise_std_mean"].item() == pytest.approx(1e-6, rel=1e-4)


def test_gradient_isolation(tiny_tokenizer, batch):
    model = build(tiny_tokenizer, mode="dnpo", noise_init_std=0.5).train()
    outputs = model(**batch, noise_seed=7)
    policy_params = [p for p in model.policy.parameters() if p.requires_grad]
    head_params = list(model.noise_head.parameters())

    model_grads = torch.autograd.grad(outputs["model_term"], policy_params + head_params,
                                      retain_graph=True, allow_unused=True)
    assert all(g is None for g in model_grads[len(policy_params):])
    assert sum(g.abs().sum() for g in model_grads[: len(policy_params)] if g is not None) > 0

    noise_grads = torch.autograd.grad(outputs["noise_term"], policy_params + head_params,
                                      retain_graph=True, allow_unused=True)
    assert all(g is None for g in noise_grads[: len(policy_params)])
    assert all(g is not None and g.abs().sum() > 0 for g in noise_grads[len(policy_params):])

    torch.testing.assert_close(outputs["loss"], outputs["model_term"] + outputs["noise_term"])
    assert not any(p.requires_grad for p in model.reference.parameters())


def test_fixed_noise_has_no_trainable_head(tiny_tokenizer, batch):
    model = build(tiny_tokenizer, mode="fixed-noise", fixed_noise_variance=0.5).train()
    assert model.noise_head is None
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(name.startswith("policy.") for name in trainable)
    outputs = model(**batch, noise_seed=3)
    assert outputs["noise_std_mean"].item() == pytest.approx(0.5**0.5)
    assert "noise_loss" not in outputs
    # The noise moves the reference's rejected log-probs, so the step-0 loss is not ln 2.
    assert outputs["noisy_ref_rejected_logps"].sub(outputs["ref_rejected_logps"]).abs().max() > 1e-3


def test_same_seed_same_noise(tiny_tokenizer, batch):
    model = build(tiny_tokenizer, mode="dnpo").train()
    first = model(**batch, noise_seed=11)["noisy_ref_rejected_logps"]
    again = model(**batch, noise_seed=11)["noisy_ref_rejected_logps"]
    other = model(**batch, noise_seed=12)["noisy_ref_rejected_logps"]
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_logit_softcapping_is_rejected(tiny_tokenizer):
    policy = make_tiny_model(tiny_tokenizer)
    policy.config.final_logit_softcapping = 30.0
    with pytest.raises(NotImplementedError, match="final_logit_softcapping"):
        build_preference_model(policy, TrainConfig(mode="spin"))
