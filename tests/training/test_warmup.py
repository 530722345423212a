import logging

import pytest
import torch
from transformers import AutoModelForCausalLM

from dnpo.testing import save_tiny_model
from dnpo.training import TrainConfig, train
from dnpo.training.trainer import capped_warmup_steps

ROWS = [
    {"id": f"p{i}", "prompt": f"What is {i} plus {i}?", "chosen": f"{2 * i}.",
     "rejected": f"Maybe {2 * i + 1}, not sure."}
    for i in range(4)
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return str(save_tiny_model(tmp_path_factory.mktemp("tiny") / "model"))


@pytest.mark.parametrize(
    ("requested", "total", "expected"),
    [(1, 1, 0), (1, 2, 1), (5, 5, 4), (3, 10, 3), (0, 1, 0)],
)
def test_capped_warmup_leaves_one_step(requested, total, expected):
    assert capped_warmup_steps(requested, total) == expected


def test_single_step_training_changes_weights(model_dir, tmp_path, caplog):
    # 4 pairs in one batch of 4 for one epoch is one optimizer step, and the default
    # warmup_ratio 0.1 rounds up to one warmup step.
    config = TrainConfig(
        mode="spin", num_epochs=1.0, per_device_batch_size=4, learning_rate=1e-3,
        warmup_ratio=0.1, max_length=96, max_prompt_length=64,
    )
    with caplog.at_level(logging.WARNING, logger="dnpo.training.trainer"):
        result = train(ROWS, model_dir, tmp_path / "out", config)

    assert result.steps == 1
    start = AutoModelForCausalLM.from_pretrained(model_dir).state_dict()
    trained = AutoModelForCausalLM.from_pretrained(result.checkpoint).state_dict()
    assert any(not torch.equal(start[key], trained[key]) for key in start)
    assert result.log[0]["learning_rate"] > 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("only 1 optimizer step (4 pairs, batch size 4" in m for m in warnings)
    assert any("warmup cut from 1 to 0 steps" in m for m in warnings)
