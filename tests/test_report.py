import json
import re
from pathlib import Path

import pytest
import yaml

from dnpo.cli import main as dnpo_main
from dnpo.evaluation.synthetic import write_synthetic_run
from dnpo.report import write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SECTIONS = [
    "## Summary",
    "## Benchmarks",
    "## Accuracy per iteration",
    "## Judge score of generated data",
    "## Generated vs human reference",
    "## Similarity to the previous iteration's chosen answers",
    "## Log-prob distributions",
    "## Model loss vs noise loss",
]
PLOTS = ["accuracy.png", "judge_scores.png", "win_rates.png", "logp_histograms.png", "losses.png"]


def image_links(text):
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)


@pytest.fixture
def two_iteration_run(tmp_path):
    return write_synthetic_run(tmp_path / "dnpo-run", iterations=2, prompts=10, lm_eval=True)


def test_report_contains_every_section(two_iteration_run):
    text = write_report(two_iteration_run).read_text(encoding="utf-8")
    for title in SECTIONS:
        assert title in text
    assert "Not available yet" not in text


def test_report_plots_are_valid_pngs(two_iteration_run):
    text = write_report(two_iteration_run).read_text(encoding="utf-8")
    links = image_links(text)
    assert sorted(Path(link).name for link in links) == sorted(PLOTS)
    for link in links:
        data = (two_iteration_run / link).read_bytes()
        assert len(data) > 1000
        assert data.startswith(PNG_SIGNATURE)


def test_report_benchmark_table_has_paper_layout(two_iteration_run):
    text = write_report(two_iteration_run).read_text(encoding="utf-8")
    header = (
        "| Model | ARC | TruthfulQA | Winogrande | GSM8K | HellaSwag | MMLU | Average "
        "| Held-out accuracy |"
    )
    assert header in text
    eval_1 = json.loads((two_iteration_run / "iter_1" / "eval.json").read_text())
    scores = eval_1["lm_eval"]["scores"]
    row = next(line for line in text.splitlines() if line.startswith("| dnpo iter 1 |"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[1] == f"{scores['ARC']:.3f}"
    assert cells[7] == f"{eval_1['lm_eval']['average']:.3f}"
    assert cells[8] == f"{eval_1['accuracy']:.3f}"
    assert "| start model (M_0) |" in text
    assert "| spin iter 0 |" in text


def test_report_without_lm_eval_shows_accuracy_column_only(tmp_path):
    run = write_synthetic_run(tmp_path / "run", iterations=2, prompts=6)
    text = write_report(run).read_text(encoding="utf-8")
    assert "| Model | Held-out accuracy |" in text
    assert "| ARC |" not in text


def test_report_stagnation_table_lists_each_pair(two_iteration_run):
    text = write_report(two_iteration_run).read_text(encoding="utf-8")
    stagnation = json.loads((two_iteration_run / "iter_1" / "eval.json").read_text())["stagnation"]
    assert f"| M_0 | iter 0 vs 1 | {stagnation['distance']:.3f} |" in text


def test_report_on_run_with_only_config(tmp_path):
    run = tmp_path / "fresh"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"loop": {"method": "spin"}}))
    text = write_report(run).read_text(encoding="utf-8")
    for title in SECTIONS:
        assert title in text
    assert text.count("Not available yet") == len(SECTIONS)
    assert not (run / "plots").exists()


def test_report_on_partial_first_iteration(tmp_path):
    run = write_synthetic_run(tmp_path / "partial", iterations=1, prompts=6)
    iter_dir = run / "iter_0"
    for name in ("eval.json", "eval_generations.jsonl", "train/logps.jsonl", "labels.json"):
        (iter_dir / name).unlink()
    (run / "summary.json").unlink()
    # A training log still being written ends in a torn line.
    with open(iter_dir / "train" / "train_log.jsonl", "a", encoding="utf-8") as handle:
        handle.write('{"step": 21, "loss/mod')
    text = write_report(run).read_text(encoding="utf-8")
    assert "## Model loss vs noise loss\n\nThe model term" in text
    assert (run / "plots" / "losses.png").read_bytes().startswith(PNG_SIGNATURE)
    assert "Not available yet: no iteration has an eval.json with scores" in text
    assert "Not available yet: no judgments yet" in text


def test_report_cli_prints_path(two_iteration_run, capsys):
    assert dnpo_main(["report", str(two_iteration_run)]) == 0
    assert capsys.readouterr().out.strip() == str(two_iteration_run / "report.md")


def test_report_cli_missing_run_dir(tmp_path, capsys):
    assert dnpo_main(["report", str(tmp_path / "nope")]) == 2
    assert "run directory not found" in capsys.readouterr().err


def test_report_of_tiny_smoke_run(tmp_path, monkeypatch):
    """Two real iterations of `dnpo run` with a tiny random model, then `dnpo report`."""
    from dnpo.testing import save_tiny_model

    monkeypatch.chdir(tmp_path)
    save_tiny_model(tmp_path / "tiny")
    config = {
        "model": {"name_or_path": str(tmp_path / "tiny")},
        "data": {"path": "bundled:arithmetic"},
        "eval_data": {"path": "bundled:arithmetic"},
        "task": {"train_size": 6, "eval_size": 4},
        "generation": {"max_new_tokens": 16, "batch_size": 6},
        "train": {
            "num_epochs": 1,
            "per_device_batch_size": 3,
            "max_length": 384,
            "max_prompt_length": 256,
            "learning_rate": 1.0e-4,
        },
        "eval": {"sbert": False},
        "loop": {
            "iterations": 2,
            "name": "smoke",
            "output_dir": str(tmp_path / "runs"),
            "eval_max_new_tokens": 16,
            "report": False,
        },
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    assert dnpo_main(["run", "--config", str(tmp_path / "run.yaml")]) == 0
    run = tmp_path / "runs" / "smoke"

    assert dnpo_main(["report", str(run)]) == 0
    text = (run / "report.md").read_text(encoding="utf-8")
    for title in SECTIONS:
        assert title in text
    assert "| start model (M_0) |" in text
    assert "| dnpo iter 1 |" in text
    assert "| M_0 | iter 0 vs 1 |" in text  # stagnation check of iteration 1's generations
    links = image_links(text)
    assert sorted(Path(link).name for link in links) == sorted(PLOTS)
    for link in links:
        assert (run / link).read_bytes().startswith(PNG_SIGNATURE)


def test_report_invalid_run_config_one_line(two_iteration_run, capsys):
    (two_iteration_run / "config.yaml").write_text("a: [\n", encoding="utf-8")
    code = dnpo_main(["report", str(two_iteration_run)])
    error = capsys.readouterr().err
    assert code == 2
    assert error.startswith("dnpo report: error: ")
    assert "config.yaml is not a readable run config" in error
    assert len(error.strip().splitlines()) == 1
