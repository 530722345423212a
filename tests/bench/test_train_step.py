"""bench/train_step.py: the TRL DPO contender trains on our batch like our SPIN step."""

import math
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("trl")
pytest.importorskip("datasets")

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import train_step  # noqa: E402


@pytest.fixture(scope="module")
def args():
    return train_step.parse_args(["--model", "tiny", "--batch-pairs", "2", "--max-length", "48",
                                  "--prompt-length", "16"])


@pytest.fixture(scope="module")
def batch(args):
    return train_step.make_batch(train_step.vocab_size_of(args.model), args)


def run_one_step(contender):
    before = [p.detach().clone() for p in contender.parameters]
    loss = contender.run(0)
    updates = [p.detach() - old for p, old in zip(contender.parameters, before, strict=True)]
    return loss, updates


def test_batch_pairs_share_prompts(args, batch):
    pairs = args.batch_pairs
    prompt = slice(0, args.prompt_length)
    assert torch.equal(batch["input_ids"][:pairs, prompt], batch["input_ids"][pairs:, prompt])
    assert not torch.equal(batch["input_ids"][:pairs], batch["input_ids"][pairs:])
    assert int(batch["completion_mask"].sum()) == 2 * pairs * (args.max_length - args.prompt_length)


def test_trl_dpo_step_matches_spin(args, batch):
    trl_dpo = train_step.make_contender("trl-dpo", args, batch)
    spin = train_step.make_contender("spin", args, batch)
    assert torch.equal(trl_dpo.batch["input_ids"], spin.batch["input_ids"])
    for ours, theirs in zip(spin.parameters, trl_dpo.parameters, strict=True):
        assert torch.equal(ours, theirs)

    trl_loss, trl_updates = run_one_step(trl_dpo)
    spin_loss, spin_updates = run_one_step(spin)

    # The policy equals the reference at step 0, so the sigmoid loss is -log sigmoid(0).
    assert trl_loss.item() == pytest.approx(math.log(2), abs=1e-6)
    assert spin_loss.item() == pytest.approx(math.log(2), abs=1e-6)
    largest = max(update.abs().max().item() for update in trl_updates)
    assert largest > 1e-7
    assert all(update.abs().max().item() > 0 for update in trl_updates)
    # Same loss, clipping and RMSprop state: the first updates agree to fp32 rounding.
    for ours, theirs in zip(spin_updates, trl_updates, strict=True):
        torch.testing.assert_close(theirs, ours, atol=1e-2 * largest, rtol=0)


def test_check_same_batch_rejects_other_tokens(batch):
    other = {key: value.clone() for key, value in batch.items()}
    other["input_ids"][0, -1] += 1
    with pytest.raises(RuntimeError, match="input_ids differs"):
        train_step.check_same_batch(batch, other)


def test_report_marks_trl_goals(args):
    seconds = {name: {"wall": 1.0, "cpu": 1.0} for name in train_step.CONTENDERS}
    seconds["trl-dpo"] = {"wall": 2.0, "cpu": 2.0}
    memory = {name: {"peak_mb": 100.0, "built_mb": 10.0} for name in train_step.CONTENDERS}
    memory["trl-dpo"] = {"peak_mb": 80.0, "built_mb": 10.0}
    tokens = {name: 96 for name in train_step.CONTENDERS}
    report = train_step.format_report(args, seconds, memory, tokens, "n/a")
    assert "| step time | 0.500 | <= 0.9 | met |" in report
    assert "| peak memory | 1.250 | <= 1.0 | missed |" in report
    assert "| trl-dpo | 2.0000 | 2.000 |" in report
