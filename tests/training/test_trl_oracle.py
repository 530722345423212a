"""With noise off, the loss and rewards equal TRL DPOTrainer's sigmoid loss."""

import copy
import math

import pytest
import torch

from dnpo.testing import make_tiny_model
from dnpo.training.collator import PairDataset, PreferenceCollator, tokenize_pairs
from dnpo.training.config import TrainConfig
from dnpo.training.model import LossSettings, PreferenceModel

trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

ROWS = [
    {"id": "a", "prompt": "Add 2 and 3.", "chosen": "5", "rejected": "The sum is 6, I think."},
    {"id": "b", "prompt": [{"role": "system", "content": "Be brief."},
                           {"role": "user", "content": "Capital of France?"}],
     "chosen": "Paris.", "rejected": "Lyon"},
    {"id": "c", "prompt": "Say hi", "chosen": {"role": "assistant", "content": "hi"},
     "rejected": "hello there"},
]


def test_sigmoid_loss_matches_trl_dpo(tiny_tokenizer, tmp_path):
    policy = make_tiny_model(tiny_tokenizer, seed=0)
    reference = make_tiny_model(tiny_tokenizer, seed=1)
    pairs, _ = tokenize_pairs(tiny_tokenizer, ROWS, max_length=128, max_prompt_length=96)
    batch = PreferenceCollator(tiny_tokenizer.pad_token_id)([PairDataset(pairs)[i] for i in range(3)])
    batch.pop("pair_ids")
    beta = 0.1

    ours = PreferenceModel(
        copy.deepcopy(policy), copy.deepcopy(reference).requires_grad_(False), None,
        LossSettings.from_config(TrainConfig(mode="dpo", beta=beta)),
    )
    ours.train()
    with torch.no_grad():
        outputs = ours(**batch)

    args = trl.DPOConfig(
        output_dir=str(tmp_path), beta=beta, loss_type=["sigmoid"], report_to="none",
        per_device_train_batch_size=3, precompute_ref_log_probs=False, use_cpu=True,
        disable_dropout=True, max_length=None, bf16=False, gradient_checkpointing=False,
    )
    # DPOTrainer needs a dataset to start. Its loss is then computed on our collated batch,
    # so both sides score identical tokens and the check covers log-probs, loss and rewards.
    dataset = datasets.Dataset.from_list([{"prompt": "x", "chosen": "y", "rejected": "z"}])
    dpo = trl.DPOTrainer(
        model=copy.deepcopy(policy), ref_model=copy.deepcopy(reference), args=args,
        train_dataset=dataset, processing_class=tiny_tokenizer,
    )
    dpo.model.train()
    with torch.no_grad():
        trl_loss = dpo.compute_loss(dpo.model, {k: v.clone() for k, v in batch.items()})
    metrics = dpo._metrics["train"]

    torch.testing.assert_close(outputs["loss"], trl_loss, atol=1e-5, rtol=0)
    chosen_mean = outputs["chosen_rewards"].mean().item()
    rejected_mean = outputs["rejected_rewards"].mean().item()
    assert chosen_mean == pytest.approx(metrics["rewards/chosen"][-1], abs=1e-5)
    assert rejected_mean == pytest.approx(metrics["rewards/rejected"][-1], abs=1e-5)
    assert chosen_mean - rejected_mean == pytest.approx(metrics["rewards/margins"][-1], abs=1e-5)
    assert outputs["policy_chosen_logps"].mean().item() == pytest.approx(
        metrics["logps/chosen"][-1], abs=1e-4
    )
    # The models differ, so the comparison is not between two zeros.
    assert outputs["rejected_rewards"].abs().max().item() > 1e-2
    assert abs(outputs["loss"].item() - math.log(2)) > 1e-3
