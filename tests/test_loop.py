import json

import pytest

from dnpo.cli import main as cli_main
from dnpo.config import RunConfig
from dnpo.configbase import ConfigError
from dnpo.io import read_json, read_jsonl
from dnpo.loop import load_run_config, run
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
