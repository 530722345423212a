import math

import pytest
import torch
from transformers import TrainerCallback

from dnpo.testing import make_tiny_model
from dnpo.training import TrainConfig
from dnpo.training import model as model_module
from dnpo.training.api import training_arguments
from dnpo.training.collator import PairDataset, tokenize_pairs
from dnpo.training.model import build_preference_model
from dnpo.training.trainer import NPOTrainer

ROWS = [
    {"id": f"p{i}", "prompt": f"Spell {i}.", "chosen": f"number {i}", "rejected": f"{i}{i}{i}?"}
    for i in range(8)
]


def make_trainer(tokenizer, output_dir, callbacks=(), **fields):
    base = dict(max_steps=3, per_device_batch_size=2, learning_rate=1e-3, warmup_ratio=0.0,
                max_length=64, max_prompt_length=48, noise_chunk_size=8)
    config = TrainConfig(**{**base, **fields})
    pairs, counts = tokenize_pairs(tokenizer, ROWS, config.max_length, config.max_prompt_length)
    model = build_preference_model(make_tiny_model(tokenizer), config)
    return NPOTrainer(
        model=model, args=training_arguments(config, output_dir), train_dataset=PairDataset(pairs),
        processing_class=tokenizer, train_config=config, data_counts=counts,
        callbacks=list(callbacks),
    )


class Snapshots(TrainerCallback):
    """Copy one policy weight after every optimizer step."""

    def __init__(self):
        self.weights = {}

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.weights[state.global_step] = model.policy.lm_head.weight.detach().clone()


def test_optimizer_has_policy_and_head_groups(tiny_tokenizer, tmp_path):
    trainer = make_trainer(tiny_tokenizer, tmp_path, mode="dnpo", learning_rate=1e-4,
                           noise_learning_rate=3e-2)
    optimizer = trainer.create_optimizer()
    head_ids = {id(p) for p in trainer.model.noise_head.parameters()}
    groups = {group["lr"]: group["params"] for group in optimizer.param_groups}
    assert {id(p) for p in groups[3e-2]} == head_ids
    policy_ids = {id(p) for group in optimizer.param_groups if group["lr"] == 1e-4 for p in group["params"]}
    assert policy_ids == {id(p) for p in trainer.model.policy.parameters()}
    assert isinstance(optimizer, torch.optim.RMSprop)


def test_nonfinite_loss_skips_step(tiny_tokenizer, tmp_path, monkeypatch):
    calls = {"count": 0}
    original = model_module.sigmoid_preference_loss

    def nan_on_second_call(*args, **kwargs):
        calls["count"] += 1
        losses, chosen, rejected = original(*args, **kwargs)
        return (losses * math.nan if calls["count"] == 2 else losses), chosen, rejected

    monkeypatch.setattr(model_module, "sigmoid_preference_loss", nan_on_second_call)
    snapshots = Snapshots()
    trainer = make_trainer(tiny_tokenizer, tmp_path, callbacks=[snapshots], mode="spin")
    start = trainer.model.policy.lm_head.weight.detach().clone()
    trainer.train()

    assert not torch.equal(snapshots.weights[1], start)
    assert torch.equal(snapshots.weights[2], snapshots.weights[1])
    assert not torch.equal(snapshots.weights[3], snapshots.weights[2])
    counts = [record.get("train/nonfinite_steps") for record in trainer.state.log_history[:3]]
    assert counts == [0, 1, 1]


def test_bf16_checkpointing_and_accumulation(tiny_tokenizer, tmp_path):
    trainer = make_trainer(tiny_tokenizer, tmp_path, mode="dnpo", precision="bf16",
                           gradient_checkpointing=True, gradient_accumulation_steps=2, max_steps=2)
    assert trainer.model.policy.model.is_gradient_checkpointing
    start = trainer.model.policy.lm_head.weight.detach().clone()
    trainer.train()
    logs = trainer.state.log_history[:2]
    assert all(math.isfinite(record["loss/model"]) for record in logs)
    assert all(record["train/nonfinite_steps"] == 0 for record in logs)
    assert not torch.equal(trainer.model.policy.lm_head.weight, start)


def test_tensorboard_writes_metrics(tiny_tokenizer, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trainer = make_trainer(tiny_tokenizer, tmp_path, mode="dnpo", max_steps=2, report_to="tensorboard")
    trainer.train()
    event_files = list(tmp_path.glob("runs/*/events.out.tfevents*"))
    assert event_files
    events = EventAccumulator(str(event_files[0].parent))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for key in ("rewards/margins", "loss/noise", "noise/std_mean"):
        assert f"train/{key}" in tags
