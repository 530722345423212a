import hashlib
import logging

import pytest

from dnpo.config import RunConfig
from dnpo.errors import DataError
from dnpo.io import atomic_write_json, read_json
from dnpo.loop import STAGES, iteration_manifest, run_iteration
from dnpo.models import load_tokenizer
from dnpo.testing import save_tiny_model


def test_finished_iteration_logs_skipped_stages(tmp_path, caplog):
    model = str(save_tiny_model(tmp_path / "model"))
    config = RunConfig.from_dict({"loop": {"method": "spin", "output_dir": str(tmp_path)}})
    iter_dir = tmp_path / "run" / "iter_0"
    iter_dir.mkdir(parents=True)
    stages = {stage: {"status": "done", "seconds": 1.0} for stage in STAGES if stage != "judge"}
    atomic_write_json(iter_dir / "manifest.json", {"iteration": 0, "stages": stages,
                                                   "train_result": {"noise_head": None}})
    atomic_write_json(iter_dir / "labels.json", {"pairs": 3, "judge_failed": 0})

    with caplog.at_level(logging.INFO, logger="dnpo.loop"):
        row, next_model, _ = run_iteration(config, tmp_path / "run", 0, model, None, config.data)

    messages = [record.getMessage() for record in caplog.records]
    assert "Iteration 0: stages already done, skipped: generate, label, train, evaluate" in messages
    assert row["pairs"] == 3
    assert next_model == str(iter_dir / "train")
    assert not (iter_dir / "generations.jsonl").exists()  # no stage ran again


def test_finished_iteration_keeps_wall_time(tmp_path):
    model = str(save_tiny_model(tmp_path / "model"))
    config = RunConfig.from_dict({"loop": {"method": "spin", "output_dir": str(tmp_path)}})
    iter_dir = tmp_path / "run" / "iter_0"
    iter_dir.mkdir(parents=True)
    stages = {stage: {"status": "done", "seconds": 1.0} for stage in STAGES if stage != "judge"}
    atomic_write_json(iter_dir / "manifest.json", {"iteration": 0, "stages": stages,
                                                   "train_result": {"noise_head": None},
                                                   "wall_seconds": 42.0})

    run_iteration(config, tmp_path / "run", 0, model, None, config.data)

    manifest = read_json(iter_dir / "manifest.json")
    assert manifest["wall_seconds"] == 42.0
    assert manifest["output_model"] == str(iter_dir / "train")


def test_no_pairs_names_skip_counts(tmp_path):
    model = str(save_tiny_model(tmp_path / "model"))
    config = RunConfig.from_dict({"loop": {"output_dir": str(tmp_path)}, "judge": {"on_tie": "drop"}})
    iter_dir = tmp_path / "run" / "iter_1"
    iter_dir.mkdir(parents=True)
    stages = {stage: {"status": "done", "seconds": 1.0} for stage in ("generate", "judge", "label")}
    atomic_write_json(iter_dir / "manifest.json", {"iteration": 1, "stages": stages})
    atomic_write_json(iter_dir / "labels.json", {"pairs": 0, "skipped": {"tie": 4}})
    (iter_dir / "pairs.jsonl").write_text("", encoding="utf-8")

    with pytest.raises(DataError, match=r"iteration 1 has no pairs to train on.*'tie': 4") as error:
        run_iteration(config, tmp_path / "run", 1, model, None, config.data)

    assert "judge.on_tie=reference" in str(error.value)
    assert not (iter_dir / "train").exists()
    assert read_json(iter_dir / "manifest.json")["stages"].get("train") is None


def test_fresh_iteration_logs_no_skipped_stages(tmp_path, caplog):
    model = str(save_tiny_model(tmp_path / "model"))
    config = RunConfig.from_dict({"loop": {"method": "spin"}})
    run_dir = tmp_path / "run"
    (run_dir / "iter_0").mkdir(parents=True)
    missing_data = config.data.replace(path=str(tmp_path / "missing.jsonl"))
    # The generate stage stops at the missing data file, after the log line.
    with caplog.at_level(logging.INFO, logger="dnpo.loop"), pytest.raises(DataError):
        run_iteration(config, run_dir, 0, model, None, missing_data)
    messages = [record.getMessage() for record in caplog.records]
    assert any(message.startswith("Iteration 0 (spin") for message in messages)
    assert not any("already done" in message for message in messages)


def test_manifest_stores_full_chat_template_hash(tmp_path):
    model = str(save_tiny_model(tmp_path / "model"))
    manifest = iteration_manifest(RunConfig(), 0, model, "spin")
    template = load_tokenizer(model).chat_template
    assert manifest["chat_template_sha256"] == hashlib.sha256(template.encode("utf-8")).hexdigest()
    assert len(manifest["chat_template_sha256"]) == 64
