import json

import yaml

from dnpo.config import RunConfig
from dnpo.io import atomic_write_json
from dnpo.labeling import label_to_files
from dnpo.loop import summary_row
from dnpo.report import write_report
from dnpo.rundir import write_summary


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def generation(i):
    return {"id": f"p{i}", "prompt": [{"role": "user", "content": f"{i}+{i}?"}],
            "reference": f"{2 * i}", "gold_answer": str(2 * i), "generated": f"maybe {i}",
            "finish_reason": "stop", "prompt_tokens": 5, "completion_tokens": 3}


def side(score, error=None):
    return {"score": score, "raw": "" if score is None else str(score), "error": error}


def make_run(tmp_path):
    """Two iterations of labels: iteration 1 has one judged, one failed and one missing prompt."""
    run_dir = tmp_path / "run"
    config = RunConfig.from_dict({"loop": {"method": "dnpo", "iterations": 2}})
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config.to_dict()), encoding="utf-8")
    for k in (0, 1):
        iter_dir = run_dir / f"iter_{k}"
        iter_dir.mkdir()
        write_jsonl(iter_dir / "generations.jsonl", [generation(i) for i in range(3)])
        atomic_write_json(iter_dir / "manifest.json",
                          {"iteration": k, "stages": {"label": {"status": "done", "seconds": 1.0}}})
    iter_1 = run_dir / "iter_1"
    write_jsonl(iter_1 / "judgments.jsonl", [{"id": "p0", "reference": side(90), "generated": side(10)}])
    write_jsonl(iter_1 / "judgments.failed.jsonl",
                [{"id": "p1", "reference": side(80), "generated": side(None, "timeout: no reply")}])
    label_to_files(run_dir / "iter_0" / "generations.jsonl", None, 0, run_dir / "iter_0")
    label_to_files(iter_1 / "generations.jsonl", iter_1 / "judgments.jsonl", 1, iter_1)
    return config, run_dir


def test_summary_row_counts_judge_failures(tmp_path):
    config, run_dir = make_run(tmp_path)
    rows = [summary_row(config, run_dir / f"iter_{k}", k) for k in (0, 1)]
    assert rows[0]["judge_failed"] is None  # iteration 0 is not judged
    assert rows[1]["judge_failed"] == 2
    assert rows[1]["generated_win_rate"] == 0.0


def test_summary_table_has_failure_column(tmp_path):
    config, run_dir = make_run(tmp_path)
    rows = [summary_row(config, run_dir / f"iter_{k}", k) for k in (0, 1)]
    table = write_summary(run_dir, rows)
    header, _, row_0, row_1 = table.splitlines()
    titles = [cell.strip() for cell in header.strip("|").split("|")]
    column = titles.index("judge failures")
    assert [cell.strip() for cell in row_0.strip("|").split("|")][column] == "-"
    assert [cell.strip() for cell in row_1.strip("|").split("|")][column] == "2"
    assert (run_dir / "summary.md").read_text(encoding="utf-8").strip() == table


def test_report_lists_failed_judge_calls(tmp_path):
    config, run_dir = make_run(tmp_path)
    write_summary(run_dir, [summary_row(config, run_dir / f"iter_{k}", k) for k in (0, 1)])
    text = write_report(run_dir).read_text(encoding="utf-8")
    section = text.split("## Generated vs human reference")[1].split("\n## ")[0]
    expected = (
        "Judge failures per iteration: iter 1: 1 of 4 calls failed, 2 of 3 prompts labeled "
        "without the judge (1 of them had no judgment), on_judge_failure=spin."
    )
    assert expected in section
    assert "| 1 | 0.000 | 0.000 | 1.000 |" in section  # win/tie/loss read from labels.json
    assert "| judge failures |" in text


def test_report_lists_invalid_judgment_records(tmp_path):
    config, run_dir = make_run(tmp_path)
    iter_1 = run_dir / "iter_1"
    write_jsonl(iter_1 / "judgments.jsonl", [
        {"id": "p0", "reference": side(90), "generated": side(10)},
        {"id": "p2", "reference": side(80), "generated": {"score": "high", "raw": "", "error": None}},
    ])
    label_to_files(iter_1 / "generations.jsonl", iter_1 / "judgments.jsonl", 1, iter_1)
    write_summary(run_dir, [summary_row(config, run_dir / f"iter_{k}", k) for k in (0, 1)])
    text = write_report(run_dir).read_text(encoding="utf-8")
    expected = (
        "Judge failures per iteration: iter 1: 1 of 6 calls failed, 2 of 3 prompts labeled "
        "without the judge (0 of them had no judgment, 1 an invalid judgment record), "
        "on_judge_failure=spin."
    )
    assert expected in text
