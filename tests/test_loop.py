import importlib.util
import json
import socket
from pathlib import Path

import pytest
import yaml

from dnpo.cli import main as cli_main
from dnpo.config import RunConfig
from dnpo.configbase import ConfigError
from dnpo.errors import JudgeStageError
from dnpo.io import read_json, read_jsonl
from dnpo.loop import check_inputs, load_run_config, resolve_data, run, run_iteration
from dnpo.rundir import open_run_dir
from dnpo.testing import save_tiny_model

TINY_OVERRIDES = [
    "task.train_size=6",
    "task.eval_size=4",
    "generation.max_new_tokens=12",
    "generation.batch_size=8",
    "loop.eval_max_new_tokens=12",
    "train.max_length=512",
    "train.max_prompt_length=400",
    "train.learning_rate=1e-3",
    "eval.sbert=false",
]


def tiny_config(tmp_path, *extra: str) -> RunConfig:
    model = save_tiny_model(tmp_path / "tiny")
    overrides = [
        f"model.name_or_path={model}",
        f"loop.output_dir={tmp_path / 'runs'}",
        "loop.iterations=2",
        *TINY_OVERRIDES,
        *extra,
    ]
    return load_run_config("configs/default.yaml", overrides)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("loop")
    config = tiny_config(tmp_path)
    run_dir, rows = run(config)
    return config, run_dir, rows


def test_run_writes_every_artifact(finished_run):
    _, run_dir, rows = finished_run
    assert [row["iteration"] for row in rows] == [0, 1]
    for name in ("config.yaml", "summary.json", "summary.md", "report.md"):
        assert (run_dir / name).is_file(), name
    for iteration in (0, 1):
        iter_dir = run_dir / f"iter_{iteration}"
        for name in ("manifest.json", "generations.jsonl", "pairs.jsonl", "labels.json",
                     "eval.json", "eval_generations.jsonl"):
            assert (iter_dir / name).is_file(), f"iter_{iteration}/{name}"
        for name in ("model.safetensors", "config.json", "train_log.jsonl", "logps.jsonl"):
            assert (iter_dir / "train" / name).is_file(), f"iter_{iteration}/train/{name}"
    assert not (run_dir / "iter_0" / "judgments.jsonl").exists()
    assert (run_dir / "iter_1" / "judgments.jsonl").is_file()
    assert (run_dir / "iter_1" / "train" / "noise_head.safetensors").is_file()
    assert not (run_dir / "iter_0" / "train" / "noise_head.safetensors").exists()


def test_iteration_zero_is_spin(finished_run):
    _, run_dir, rows = finished_run
    pairs = read_jsonl(run_dir / "iter_0" / "pairs.jsonl")
    assert pairs
    assert {pair["label_source"] for pair in pairs} == {"spin"}
    assert {pair["chosen_source"] for pair in pairs} == {"reference"}
    manifest = read_json(run_dir / "iter_0" / "manifest.json")
    assert manifest["train_mode"] == "spin"
    assert manifest["judged"] is False
    assert rows[0]["method"] == "spin"
    assert rows[0]["mean_noise_std"] is None


def test_iteration_one_judges_and_adds_noise(finished_run):
    _, run_dir, rows = finished_run
    manifest = read_json(run_dir / "iter_1" / "manifest.json")
    assert manifest["train_mode"] == "dnpo"
    assert manifest["start_model"] == str(run_dir / "iter_0" / "train")
    pairs = read_jsonl(run_dir / "iter_1" / "pairs.jsonl")
    assert {pair["label_source"] for pair in pairs} <= {"judge", "judge_failed"}
    assert rows[1]["mean_noise_std"] is not None
    log = read_jsonl(run_dir / "iter_1" / "train" / "train_log.jsonl")
    assert any("loss/noise" in line for line in log)


def test_manifest_records_provenance(finished_run):
    _, run_dir, _ = finished_run
    manifest = read_json(run_dir / "iter_1" / "manifest.json")
    for key in ("versions", "git_commit", "seed", "start_model_sha256", "chat_template_sha256",
                "generation", "judge"):
        assert key in manifest, key
    assert len(manifest["start_model_sha256"]) == 64
    assert manifest["generation"]["seed"] == manifest["generation"]["seed"]
    for stage in ("generate", "judge", "label", "train", "evaluate"):
        assert manifest["stages"][stage]["status"] == "done", stage
        assert manifest["stages"][stage]["seconds"] >= 0
    assert "torch" in manifest["versions"]


def test_summary_has_one_row_per_iteration(finished_run):
    _, run_dir, rows = finished_run
    summary = read_json(run_dir / "summary.json")
    assert summary["rows"] == json.loads(json.dumps(rows))
    table = (run_dir / "summary.md").read_text()
    assert "held-out accuracy" in table
    assert len([line for line in table.splitlines() if line.startswith("| 1 |")]) == 1
    evaluation = read_json(run_dir / "iter_0" / "eval.json")
    assert "start_accuracy" in evaluation
    assert evaluation["total"] == 4


def test_rerun_skips_finished_stages(finished_run):
    config, run_dir, rows = finished_run
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*.jsonl")}
    _, again = run(config)
    assert again == rows
    after = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*.jsonl")}
    assert after == before


def test_changed_config_names_fields(finished_run):
    config, run_dir, _ = finished_run
    changed = config.replace(train={**config.train.to_dict(), "beta": 0.5})
    with pytest.raises(ConfigError, match=r"train\.beta: 0\.1 -> 0\.5.*--new-run"):
        run(changed)
    assert read_json(run_dir / "summary.json")["rows"]


def test_fewer_iterations_rejected_and_summary_kept(finished_run):
    config, run_dir, rows = finished_run
    fewer = config.replace(loop={**config.loop.to_dict(), "iterations": 1})
    with pytest.raises(ConfigError, match=r"loop\.iterations=2, got 1.*--iterations 2"):
        run(fewer)
    assert len(read_json(run_dir / "summary.json")["rows"]) == len(rows)
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["loop"]["iterations"] == 2


def test_new_run_flag_picks_free_name(finished_run, capsys):
    config, run_dir, _ = finished_run
    code = cli_main([
        "run", "--config", "configs/default.yaml", "--new-run", "--iterations", "1",
        "--set", f"model.name_or_path={config.model.name_or_path}",
        "--set", f"loop.output_dir={run_dir.parent}",
        "--set", "train.beta=0.5",
        *[arg for override in TINY_OVERRIDES for arg in ("--set", override)],
    ])
    assert code == 0
    assert (run_dir.parent / "default-1" / "summary.md").is_file()
    assert "default-1" in capsys.readouterr().out


def test_method_spin_never_judges(tmp_path):
    config = tiny_config(tmp_path, "loop.method=spin", "loop.iterations=2", "loop.report=false")
    run_dir, rows = run(config)
    assert not (run_dir / "iter_1" / "judgments.jsonl").exists()
    assert read_json(run_dir / "iter_1" / "manifest.json")["train_mode"] == "spin"
    assert rows[1]["generated_win_rate"] is None


def test_noise_method_rejects_spin_mode():
    with pytest.raises(ConfigError, match="train.mode must be dnpo or fixed-noise"):
        RunConfig.from_dict({"loop": {"method": "spin+npo"}, "train": {"mode": "spin"}})


@pytest.mark.real_model
@pytest.mark.slow
def test_default_config_one_iteration_on_smollm2(tmp_path):
    pytest.importorskip("gguf")
    from dnpo.models import find_bundled_gguf

    try:
        find_bundled_gguf()
    except FileNotFoundError as error:
        pytest.skip(str(error))
    config = load_run_config("configs/default.yaml", [
        f"loop.output_dir={tmp_path}",
        "loop.iterations=1",
        "task.train_size=4",
        "task.eval_size=4",
        "generation.max_new_tokens=24",
        "loop.eval_max_new_tokens=24",
        "eval.sbert=false",
    ])
    run_dir, rows = run(config)
    assert rows[0]["pairs"] >= 1
    assert rows[0]["accuracy"] is not None
    assert (run_dir / "iter_0" / "train" / "model.safetensors").is_file()


def test_missing_accelerate_config_stops_before_run_dir(tmp_path):
    config = tiny_config(tmp_path, f"loop.accelerate_config={tmp_path / 'missing.yaml'}")
    with pytest.raises(ConfigError) as error:
        run(config)
    message = str(error.value)
    assert message.startswith(f"loop.accelerate_config {tmp_path / 'missing.yaml'} not found")
    assert "\n" not in message
    assert not (tmp_path / "runs").exists()


def test_accelerate_not_on_path_stops_before_run_dir(tmp_path, monkeypatch):
    accelerate_config = tmp_path / "accelerate.yaml"
    accelerate_config.write_text("num_processes: 1\n")
    config = tiny_config(tmp_path, f"loop.accelerate_config={accelerate_config}")
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    with pytest.raises(ConfigError, match="accelerate executable is not on PATH"):
        check_inputs(config)
    assert not (tmp_path / "runs").exists()


def test_lm_eval_tasks_need_installed_harness(tmp_path, monkeypatch):
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args):
        return None if name == "lm_eval" else real_find_spec(name, *args)

    config = tiny_config(tmp_path, "eval.lm_eval_tasks=[arc]")
    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(ConfigError, match="lm-evaluation-harness is not installed"):
        run(config)
    assert not (tmp_path / "runs").exists()


def test_unknown_lm_eval_task_fails_at_config_load(tmp_path):
    with pytest.raises(ConfigError, match="unknown task 'arcc'.*closest valid name is arc"):
        tiny_config(tmp_path, "eval.lm_eval_tasks=[arcc]")


def closed_local_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_judge_stage_with_every_item_failed_stops_run(tmp_path, monkeypatch):
    monkeypatch.delenv("DNPO_UNSET_KEY", raising=False)
    config = tiny_config(
        tmp_path,
        "judge.type=openai",
        "judge.model=judge-test",
        f"judge.base_url=http://127.0.0.1:{closed_local_port()}/v1",
        "judge.api_key_env=DNPO_UNSET_KEY",
        "judge.max_retries=0",
        "judge.timeout=5",
        "judge.cache=false",
    )
    model_path = check_inputs(config)
    run_dir, config = open_run_dir(config)
    train_data, _ = resolve_data(config, run_dir)
    with pytest.raises(JudgeStageError) as error:
        run_iteration(config, run_dir, 1, model_path, None, train_data)
    message = str(error.value)
    assert "all 6 judged items failed" in message
    assert "most common error kind is connection (12 of 12 failed calls)" in message
    assert "retries them" in message
    iter_dir = run_dir / "iter_1"
    assert not (iter_dir / "pairs.jsonl").exists()
    assert read_json(iter_dir / "manifest.json")["stages"]["judge"]["status"] != "done"
    assert len(read_jsonl(iter_dir / "judgments.failed.jsonl")) == 6


@pytest.mark.parametrize("field", ["train_size", "eval_size"])
def test_task_size_error_names_field_and_value(field):
    with pytest.raises(ConfigError, match=rf"^task\.{field} must be >= 1, got 0$"):
        RunConfig.from_dict({"task": {field: 0}})


@pytest.mark.parametrize("section", ["data", "eval_data"])
def test_empty_data_file_stops_before_run_dir(tmp_path, section):
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    config = tiny_config(tmp_path, f"{section}.path={empty}")
    with pytest.raises(ConfigError, match=rf"^{section}\.path {empty} is empty"):
        run(config)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("field", ["learning_rate", "num_epochs"])
def test_train_rate_error_names_field_and_value(field):
    with pytest.raises(ConfigError, match=rf"^train\.{field} must be > 0, got 0"):
        RunConfig.from_dict({"train": {field: 0}})


def test_train_section_not_mapping_names_value(tmp_path):
    from dnpo.training.cli import load_train_config

    path = tmp_path / "train.yaml"
    path.write_text("train: 5\n")
    with pytest.raises(ConfigError, match="'train' must be a mapping of TrainConfig fields, got 5"):
        load_train_config(str(path))


def test_foreign_config_file_named_in_error(tmp_path):
    config = tiny_config(tmp_path, "loop.report=false")
    run_dir = Path(config.loop.output_dir) / config.loop.name
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("notes: {owner: someone}\n")
    with pytest.raises(ConfigError, match=r"config\.yaml is not a dnpo run config"):
        open_run_dir(config)
    assert (run_dir / "config.yaml").read_text() == "notes: {owner: someone}\n"


def test_invalid_yaml_run_config_named(tmp_path):
    config = tiny_config(tmp_path, "loop.report=false")
    run_dir = Path(config.loop.output_dir) / config.loop.name
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("a: [\n")
    with pytest.raises(ConfigError, match=r"config\.yaml is not a readable run config .*line 2"):
        open_run_dir(config)
    assert (run_dir / "config.yaml").read_text() == "a: [\n"


def test_many_config_changes_listed_briefly(finished_run):
    config, _, _ = finished_run
    changed = config.replace(
        train={**config.train.to_dict(), "beta": 0.5, "alpha": 0.2, "learning_rate": 1e-5,
               "weight_decay": 0.1, "max_grad_norm": 2.0, "noise_init_std": 0.2,
               "noise_learning_rate": 0.01, "warmup_ratio": 0.2, "logging_steps": 2,
               "seed": 7, "save_total_limit": 3},
    )
    with pytest.raises(ConfigError, match=r"and 1 more\); rerun"):
        run(changed)


def test_config_field_added_later_resumes_at_default(tmp_path):
    config = tiny_config(tmp_path, "loop.report=false")
    run_dir, _ = open_run_dir(config)
    # A config.yaml written before judge.on_tie existed: the run used its default.
    old = yaml.safe_load((run_dir / "config.yaml").read_text())
    del old["judge"]["on_tie"]
    (run_dir / "config.yaml").write_text(yaml.safe_dump(old))
    assert open_run_dir(config)[0] == run_dir

    # Resuming such a run with a value other than the default is a change.
    (run_dir / "config.yaml").write_text(yaml.safe_dump(old))
    with pytest.raises(ConfigError, match=r"judge\.on_tie: '<unset>' -> 'drop'"):
        open_run_dir(config.replace(judge={**config.judge.to_dict(), "on_tie": "drop"}))
