import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from dnpo.configbase import ConfigError
from dnpo.errors import DataError
from dnpo.io import read_jsonl
from dnpo.testing import save_tiny_model
from dnpo.training import TrainConfig, train
from dnpo.training.trainer import NPOTrainer

ROWS = [
    {"id": f"p{i}", "prompt": f"What is {i} plus {i}?", "chosen": f"{2 * i}.",
     "rejected": f"Maybe {2 * i + 1}, not sure."}
    for i in range(8)
]
METRICS = [
    "loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
    "logps/chosen", "logps/rejected", "loss/model", "loss/noise", "noise/std_mean",
    "noise/std_max", "train/nonfinite_steps", "data/dropped_prompt_too_long",
    "data/dropped_identical",
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return str(save_tiny_model(tmp_path_factory.mktemp("tiny") / "model"))


def config(**fields):
    base = dict(max_steps=3, per_device_batch_size=2, learning_rate=1e-3, noise_learning_rate=1e-2,
                warmup_ratio=0.0, max_length=96, max_prompt_length=64, noise_chunk_size=16)
    return TrainConfig(**{**base, **fields})


def weights(path):
    return AutoModelForCausalLM.from_pretrained(path).state_dict()


def test_dnpo_steps_change_policy_and_head(model_dir, tmp_path):
    result = train(ROWS, model_dir, tmp_path / "out", config(mode="dnpo"))

    assert result.steps == 3
    assert result.checkpoint == tmp_path / "out"
    start, trained = weights(model_dir), weights(result.checkpoint)
    assert any(not torch.equal(start[key], trained[key]) for key in start)
    head = load_file(str(result.noise_head))
    assert head["weight"].abs().sum() > 0  # it starts at zero
    assert set(head) == {"weight", "bias"}

    assert [record["step"] for record in result.log] == [1, 2, 3]
    for record in result.log:
        missing = [key for key in METRICS if key not in record]
        assert not missing
    assert result.mean_margin == pytest.approx(
        sum(r["rewards/margins"] for r in result.log) / 3
    )
    assert result.mean_noise_std > 0
    assert result.dropped == {"prompt_too_long": 0, "identical": 0, "empty_chosen": 0}
    assert result.empty_rejected == 0
    assert result.wall_seconds > 0

    logps = read_jsonl(tmp_path / "out" / "logps.jsonl")
    assert len(logps) == 6  # 3 steps of 2 pairs
    assert set(result.ref_chosen_logps) == {row["id"] for row in logps}
    assert all(row["ref_rejected_logps"] < 0 for row in logps)
    assert not list((tmp_path / "out").glob("checkpoint-*"))
    assert not list((tmp_path / "out").glob("*.bin"))


@pytest.mark.parametrize("mode", ["fixed-noise", "spin"])
def test_modes_without_head_train(model_dir, tmp_path, mode):
    result = train(ROWS, model_dir, tmp_path / "out", config(mode=mode, max_steps=2))
    assert result.noise_head is None
    assert not (tmp_path / "out" / "noise_head.safetensors").exists()
    start, trained = weights(model_dir), weights(result.checkpoint)
    assert any(not torch.equal(start[key], trained[key]) for key in start)
    assert "loss/noise" not in result.log[0]
    assert ("noise/std_mean" in result.log[0]) == (mode == "fixed-noise")


def test_lora_saves_merged_model(model_dir, tmp_path):
    result = train(ROWS, model_dir, tmp_path / "out", config(mode="spin", max_steps=2, lora_r=4))
    assert not (tmp_path / "out" / "adapter_config.json").exists()
    start, trained = weights(model_dir), weights(result.checkpoint)
    assert start.keys() == trained.keys()
    changed = [key for key in start if not torch.equal(start[key], trained[key])]
    assert changed
    assert all("proj" in key for key in changed)


def test_finished_run_is_returned_without_training(model_dir, tmp_path, monkeypatch):
    first = train(ROWS, model_dir, tmp_path / "out", config(mode="spin", max_steps=1))

    def refuse(*args, **kwargs):
        raise AssertionError("training ran again")

    monkeypatch.setattr(NPOTrainer, "train", refuse)
    again = train(ROWS, model_dir, tmp_path / "out", config(mode="spin", max_steps=1))
    assert again.steps == first.steps
    assert again.log == first.log
    assert again.ref_chosen_logps == first.ref_chosen_logps


def test_resume_matches_uninterrupted_run(model_dir, tmp_path, monkeypatch):
    settings = config(mode="dnpo", max_steps=4, save_steps=2)
    reference = train(ROWS, model_dir, tmp_path / "full", settings)

    original = NPOTrainer.compute_loss

    def crash_at_step_3(self, *args, **kwargs):
        if self.state.global_step == 2:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(NPOTrainer, "compute_loss", crash_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        train(ROWS, model_dir, tmp_path / "cut", settings)
    assert (tmp_path / "cut" / "checkpoint-2").is_dir()
    monkeypatch.setattr(NPOTrainer, "compute_loss", original)

    resumed = train(ROWS, model_dir, tmp_path / "cut", settings)
    assert [record["step"] for record in resumed.log] == [1, 2, 3, 4]
    full, cut = weights(reference.checkpoint), weights(resumed.checkpoint)
    for key in full:
        torch.testing.assert_close(cut[key], full[key], atol=1e-6, rtol=0)
    torch.testing.assert_close(load_file(str(resumed.noise_head)), load_file(str(reference.noise_head)))


def test_changed_settings_in_same_directory_raise(model_dir, tmp_path, monkeypatch):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(NPOTrainer, "train", interrupt)
    with pytest.raises(KeyboardInterrupt):
        train(ROWS, model_dir, tmp_path / "out", config(mode="spin"))
    with pytest.raises(ConfigError, match="different config"):
        train(ROWS, model_dir, tmp_path / "out", config(mode="spin", beta=0.2))


def test_noise_head_init_loads_previous_head(model_dir, tmp_path):
    first = train(ROWS, model_dir, tmp_path / "a", config(mode="dnpo", max_steps=1))
    second = train(ROWS, first.checkpoint, tmp_path / "b",
                   config(mode="dnpo", max_steps=1, noise_learning_rate=1e-12, learning_rate=1e-12),
                   noise_head_init=first.noise_head)
    torch.testing.assert_close(load_file(str(second.noise_head)), load_file(str(first.noise_head)))
    with pytest.raises(ConfigError, match="trains no noise head"):
        train(ROWS, model_dir, tmp_path / "c", config(mode="spin"), noise_head_init=first.noise_head)


def test_no_trainable_pairs_raise(model_dir, tmp_path):
    rows = [{"id": "x", "prompt": "Hi", "chosen": "same", "rejected": "same"}]
    with pytest.raises(DataError, match="none of the 1 pairs"):
        train(rows, model_dir, tmp_path / "out", config())


def test_empty_answers_counted(model_dir, tmp_path):
    rows = [
        *ROWS[:2],
        {"id": "empty-chosen", "prompt": "Hi", "chosen": "", "rejected": "no"},
        {"id": "blank-chosen", "prompt": "Hi", "chosen": "  ", "rejected": "no"},
        {"id": "empty-rejected", "prompt": "Hi", "chosen": "Hello.", "rejected": ""},
    ]
    result = train(rows, model_dir, tmp_path / "out", config(mode="spin", max_steps=1))
    assert result.pairs == 3
    assert result.dropped == {"prompt_too_long": 0, "identical": 0, "empty_chosen": 2}
    assert result.empty_rejected == 1
    assert result.metrics["data/empty_rejected"] == 1
    stored = json.loads((tmp_path / "out" / "train_result.json").read_text())
    assert stored["dropped"]["empty_chosen"] == 2
    assert stored["empty_rejected"] == 1


def test_all_chosen_empty_raise(model_dir, tmp_path):
    rows = [{"id": "x", "prompt": "Hi", "chosen": " ", "rejected": "no"}]
    with pytest.raises(DataError, match="1 with an empty chosen answer"):
        train(rows, model_dir, tmp_path / "out", config())


def test_pairs_file_input(model_dir, tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in ROWS[:2]), encoding="utf-8")
    result = train(path, model_dir, tmp_path / "out", config(mode="spin", max_steps=1))
    assert result.pairs == 2
