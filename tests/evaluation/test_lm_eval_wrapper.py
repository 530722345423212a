import importlib.metadata
import importlib.util
import subprocess
import sys

import pytest

from dnpo.config import RunConfig
from dnpo.configbase import ConfigError
from dnpo.evaluation.config import EvalConfig
from dnpo.evaluation.lm_eval import (
    GSM8K_PROMPT,
    LOCAL_GSM8K_TASK,
    PAPER_COLUMNS,
    check_registered,
    gsm8k_local_task,
    plan_tasks,
    require_harness,
    summarize_results,
)


def task_names(plan):
    return {
        shots: [t["task"] if isinstance(t, dict) else t for t in tasks]
        for shots, tasks in plan.by_fewshot.items()
    }


def test_plan_paper_six_columns():
    plan = plan_tasks(EvalConfig(lm_eval_tasks=["paper"]))
    assert list(plan.columns) == list(PAPER_COLUMNS)
    assert task_names(plan) == {
        25: ["arc_easy", "arc_challenge"],
        0: ["truthfulqa_mc1", "truthfulqa_mc2"],
        5: ["winogrande", "gsm8k", "mmlu"],
        10: ["hellaswag"],
    }


def test_plan_fixed_fewshot_harness_task():
    plan = plan_tasks(EvalConfig(lm_eval_tasks=["arc", "harness:piqa"], lm_eval_num_fewshot=3))
    assert task_names(plan) == {3: ["arc_easy", "arc_challenge", "piqa"]}
    assert plan.columns["piqa"] == ["piqa"]


def test_unknown_task_rejected_at_config_load():
    with pytest.raises(ConfigError) as error:
        RunConfig.from_dict({"eval": {"lm_eval_tasks": ["arc", "piqa"]}})
    message = str(error.value)
    assert "unknown task 'piqa'" in message
    assert "eval.lm_eval_tasks" in message
    for name in ("paper", "arc", "truthfulqa", "winogrande", "gsm8k", "hellaswag", "mmlu"):
        assert f" {name}," in message, name
    assert "gsm8k_local" in message
    assert "harness:piqa" in message


def test_misspelled_task_names_closest():
    with pytest.raises(ConfigError, match="unknown task 'gms8k'.*closest valid name is gsm8k"):
        EvalConfig(lm_eval_tasks=["gms8k"])


def test_empty_harness_name_rejected():
    with pytest.raises(ConfigError, match="'harness:' names no task"):
        EvalConfig(lm_eval_tasks=["harness:"])


def test_known_names_accepted():
    config = EvalConfig(
        lm_eval_tasks=["paper", "arc_easy", "truthfulqa_mc2", "harness:piqa", "gsm8k_local"],
        gsm8k_path="test.jsonl",
    )
    assert config.lm_eval_tasks[3] == "harness:piqa"


def test_config_load_does_not_import_harness():
    code = (
        "import sys\n"
        "from dnpo.evaluation.config import EvalConfig\n"
        "EvalConfig(lm_eval_tasks=['paper', 'harness:piqa'])\n"
        "print('lm_eval' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


class FakeTaskManager:
    all_tasks = ["arc_easy", "piqa", "pubmedqa"]


def test_harness_name_checked_against_registry():
    check_registered(FakeTaskManager(), ["arc", "harness:piqa"])
    with pytest.raises(ConfigError, match="'harness:piqaa' is not a task.*close matches: piqa"):
        check_registered(FakeTaskManager(), ["harness:piqaa"])


def test_missing_harness_is_config_error(monkeypatch):
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args):
        return None if name == "lm_eval" else real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(ConfigError, match="lm-evaluation-harness is not installed"):
        require_harness()


def test_local_gsm8k_zero_shot_default(tmp_path):
    config = EvalConfig(lm_eval_tasks=["gsm8k_local"], gsm8k_path=str(tmp_path / "t.jsonl"))
    plan = plan_tasks(config)
    (task,) = plan.by_fewshot[0]
    assert task["task"] == LOCAL_GSM8K_TASK
    assert task["dataset_kwargs"]["data_files"] == {"test": str(tmp_path / "t.jsonl")}
    assert "fewshot_split" not in task


def test_local_gsm8k_fewshot_needs_a_file():
    with pytest.raises(ValueError, match="gsm8k_fewshot_path"):
        gsm8k_local_task("test.jsonl", num_fewshot=5)
    task = gsm8k_local_task("test.jsonl", "train.jsonl", num_fewshot=5)
    assert task["fewshot_split"] == "train"


def test_local_gsm8k_requires_path():
    with pytest.raises(ConfigError, match="gsm8k_path"):
        EvalConfig(lm_eval_tasks=["gsm8k_local"])


def test_summarize_paper_average():
    plan = plan_tasks(EvalConfig(lm_eval_tasks=["paper"]))
    results = {
        "arc_easy": {"acc,none": 0.8, "acc_norm,none": 0.7},
        "arc_challenge": {"acc,none": 0.5, "acc_norm,none": 0.5},
        "truthfulqa_mc1": {"acc,none": 0.3},
        "truthfulqa_mc2": {"acc,none": 0.5},
        "winogrande": {"acc,none": 0.75},
        "gsm8k": {"exact_match,strict-match": 0.25, "exact_match,flexible-extract": 0.3},
        "hellaswag": {"acc,none": 0.6, "acc_norm,none": 0.8},
        "mmlu": {"acc,none": 0.55},
    }
    record = summarize_results({"results": results, "n-samples": {}, "configs": {}}, plan)
    # ARC = (0.7 + 0.5) / 2 from acc_norm; TruthfulQA = (0.3 + 0.5) / 2.
    assert record["scores"]["ARC"] == pytest.approx(0.6)
    assert record["scores"]["TruthfulQA"] == pytest.approx(0.4)
    assert record["scores"]["GSM8K"] == pytest.approx(0.25)
    assert record["scores"]["HellaSwag"] == pytest.approx(0.8)
    expected_average = (0.6 + 0.4 + 0.75 + 0.25 + 0.8 + 0.55) / 6
    assert record["average"] == pytest.approx(expected_average)
    assert record["average_of"] == list(PAPER_COLUMNS)
    assert record["tasks"]["gsm8k"]["metric"] == "exact_match,strict-match"


def test_summarize_drops_incomplete_column():
    plan = plan_tasks(EvalConfig(lm_eval_tasks=["arc", "winogrande"]))
    raw = {"results": {"arc_easy": {"acc_norm,none": 0.9}, "winogrande": {"acc,none": 0.6}}}
    record = summarize_results(raw, plan)
    assert "ARC" not in record["scores"]
    assert record["average"] == pytest.approx(0.6)
    assert record["average_of"] == ["Winogrande"]


def test_local_gsm8k_ten_questions_tiny_model(tmp_path, shared_dir):
    pytest.importorskip("lm_eval")
    from dnpo.evaluation.lm_eval import run_lm_eval
    from dnpo.testing import save_tiny_model

    model_dir = save_tiny_model(tmp_path / "tiny")
    config = EvalConfig(
        lm_eval_tasks=["gsm8k_local"],
        gsm8k_path=str(shared_dir / "data" / "gsm8k" / "test.jsonl"),
        lm_eval_limit=10,
        lm_eval_batch_size=5,
        lm_eval_max_gen_toks=16,
    )
    record = run_lm_eval(str(model_dir), config, device="cpu")
    task = record["tasks"][LOCAL_GSM8K_TASK]
    assert task["samples"] == 10
    assert task["num_fewshot"] == 0
    assert task["metric"].startswith("exact_match")
    assert 0.0 <= record["scores"]["gsm8k_local"] <= 1.0
    assert record["harness_version"] == importlib.metadata.version("lm_eval")
    assert record["templates"][LOCAL_GSM8K_TASK]["doc_to_text"] == GSM8K_PROMPT
    assert record["limit"] == 10
    assert record["average"] is None  # gsm8k_local is not one of the six paper columns
