"""Training resume after a crash: cut-short checkpoints are skipped, no log-prob record is lost."""

import pytest
import torch
from safetensors.torch import load_file

from dnpo.io import read_jsonl
from dnpo.testing import save_tiny_model
from dnpo.training import TrainConfig, train
from dnpo.training.api import last_complete_checkpoint
from dnpo.training.trainer import NPOTrainer

PAIRS = [
    {"id": f"p{i}", "prompt": f"Add {i} and {i}.", "chosen": f"{2 * i}", "rejected": f"{i}{i}?"}
    for i in range(6)
]
SETTINGS = TrainConfig(
    mode="dnpo",
    per_device_batch_size=2,
    learning_rate=1e-3,
    warmup_ratio=0.0,
    max_length=64,
    max_prompt_length=48,
    noise_chunk_size=16,
    max_steps=3,
    save_steps=1,
)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An uninterrupted run, and a run interrupted during step 3 (checkpoints 1 and 2 written)."""
    tmp = tmp_path_factory.mktemp("resume")
    model_dir = str(save_tiny_model(tmp / "model"))
    full = train(PAIRS, model_dir, tmp / "full", SETTINGS)

    original = NPOTrainer.compute_loss

    def crash_in_step_3(self, *args, **kwargs):
        if self.state.global_step == 2:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(NPOTrainer, "compute_loss", crash_in_step_3)
        with pytest.raises(KeyboardInterrupt):
            train(PAIRS, model_dir, tmp / "cut", SETTINGS)
    return model_dir, tmp, full


def test_cut_short_checkpoint_skipped(tmp_path):
    for step in (1, 2, 3):
        (tmp_path / f"checkpoint-{step}").mkdir()
    (tmp_path / "checkpoint-1" / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-2" / "trainer_state.json").write_text('{"global_st')

    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-1")
    assert (tmp_path / "checkpoint-3").is_dir()
    assert last_complete_checkpoint(tmp_path, delete_incomplete=True) == str(
        tmp_path / "checkpoint-1"
    )
    assert sorted(path.name for path in tmp_path.iterdir()) == ["checkpoint-1"]


def test_resume_past_cut_short_checkpoint(runs):
    model_dir, tmp, full = runs
    cut = tmp / "cut"
    assert (cut / "checkpoint-2" / "trainer_state.json").is_file()
    # A crash while checkpoint-2 was being saved would leave it without trainer_state.json.
    (cut / "checkpoint-2" / "trainer_state.json").unlink()
    assert (cut / "ref_logps.rank0.jsonl").is_file()

    resumed = train(PAIRS, model_dir, cut, SETTINGS)

    assert [record["step"] for record in resumed.log] == [1, 2, 3]
    full_weights, cut_weights = (
        load_file(str(full.checkpoint / "model.safetensors")),
        load_file(str(cut / "model.safetensors")),
    )
    for key in full_weights:
        torch.testing.assert_close(cut_weights[key], full_weights[key], atol=1e-6, rtol=0)
    full_logps = {row["id"]: row for row in read_jsonl(full.checkpoint / "logps.jsonl")}
    cut_logps = {row["id"]: row for row in read_jsonl(cut / "logps.jsonl")}
    assert set(cut_logps) == {pair["id"] for pair in PAIRS}
    assert cut_logps == full_logps
    assert not list(cut.glob("ref_logps.rank*.jsonl"))
    assert not list(cut.glob("checkpoint-*"))


def test_rerun_removes_leftover_checkpoints(runs):
    model_dir, tmp, full = runs
    # A crash while a finished run deleted its checkpoints leaves some of them behind.
    leftover = full.checkpoint / "checkpoint-1"
    leftover.mkdir()
    (leftover / "optimizer.pt").write_bytes(b"pickle")
    (full.checkpoint / "ref_logps.rank0.jsonl").write_text("")

    again = train(PAIRS, model_dir, full.checkpoint, SETTINGS)

    assert again.steps == full.steps
    assert not leftover.exists()
    assert not (full.checkpoint / "ref_logps.rank0.jsonl").exists()
