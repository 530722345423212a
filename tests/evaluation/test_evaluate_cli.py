import json
import logging
import math
import re

import pytest

from dnpo.cli import main as dnpo_main
from dnpo.evaluation.cli import evaluate_run_iteration
from dnpo.evaluation.config import EvalConfig
from dnpo.evaluation.synthetic import write_synthetic_run
from dnpo.io import atomic_write_json, read_json, read_jsonl


def final_number(text):
    match = re.search(r"####\s*(-?\d+)", text) or re.search(r"(-?\d+)\s*$", text.strip())
    return match.group(1) if match else None


@pytest.fixture
def run_dir(tmp_path):
    return write_synthetic_run(tmp_path / "run", iterations=2, prompts=8, seed=3)


def test_evaluate_recomputes_file_parts(run_dir):
    eval_path = run_dir / "iter_1" / "eval.json"
    stale = read_json(eval_path)
    stale.pop("judge", None)
    stale["accuracy"] = -1.0
    stale.pop("similarity")
    atomic_write_json(eval_path, stale)

    config = EvalConfig(sbert=False)
    result = evaluate_run_iteration(run_dir, 1, config, use_model=False, extract=final_number)

    rows = read_jsonl(run_dir / "iter_1" / "eval_generations.jsonl")
    expected_correct = sum(final_number(r["generated"]) == r["gold_answer"] for r in rows)
    assert result["correct"] == expected_correct
    assert result["total"] == 8
    assert result["accuracy"] == expected_correct / 8
    labels = read_json(run_dir / "iter_1" / "labels.json")
    assert result["judge"]["generated_win_rate"] == pytest.approx(labels["generated_win_rate"])
    assert result["judge"]["mean_generated_score"] == pytest.approx(labels["mean_generated_score"])
    assert result["similarity"]["pairs"] == 8
    assert 0 <= result["similarity"]["bleu"] <= 100
    assert "sbert" not in result["similarity"]
    assert result["stagnation"]["n_next"] == 8
    assert read_json(eval_path) == result


def test_evaluate_iteration_zero_scores_start_model_file(run_dir):
    rows = read_jsonl(run_dir / "iter_0" / "eval_generations.jsonl")
    start = run_dir / "iter_0" / "start_eval_generations.jsonl"
    lines = [json.dumps({**r, "generated": "#### 0"}) + "\n" for r in rows]
    start.write_text("".join(lines), encoding="utf-8")
    result = evaluate_run_iteration(
        run_dir, 0, EvalConfig(sbert=False), use_model=False, extract=final_number
    )
    assert result["start_accuracy"] == 0.0
    assert result["start"]["total"] == 8
    assert "similarity" not in result  # iteration 0 has no previous chosen answers


def test_evaluate_scores_generations_under_previous_model(run_dir, tmp_path):
    from dnpo.evaluation.logps import sequence_logps
    from dnpo.testing import make_tiny_model, make_tiny_tokenizer, save_tiny_model

    model_dir = save_tiny_model(tmp_path / "m0", seed=5)
    manifest = read_json(run_dir / "iter_0" / "manifest.json")
    atomic_write_json(
        run_dir / "iter_0" / "manifest.json", {**manifest, "start_model": str(model_dir)}
    )

    config = EvalConfig(sbert=False, similarity=False)
    result = evaluate_run_iteration(run_dir, 1, config, use_model=True, extract=final_number)

    records = sorted(read_jsonl(run_dir / "iter_1" / "generations.jsonl"), key=lambda r: r["id"])
    tokenizer = make_tiny_tokenizer()
    expected = sequence_logps(make_tiny_model(tokenizer, seed=5), tokenizer, records)
    assert result["next_generation_logps"] == pytest.approx(expected, abs=1e-4)
    assert all(math.isfinite(v) and v < 0 for v in result["next_generation_logps"])
    assert result["stagnation"]["n_next"] == 8


def test_evaluate_warns_when_generation_logps_did_not_move(run_dir, caplog):
    from dnpo.evaluation.runfiles import generation_logps_from_pairs

    previous = generation_logps_from_pairs(read_jsonl(run_dir / "iter_0/train/logps.jsonl"))
    eval_path = run_dir / "iter_1" / "eval.json"
    atomic_write_json(eval_path, {**read_json(eval_path), "next_generation_logps": previous})

    # 8 vs 8 samples: the 5% noise level 1.358 * sqrt(2 / 8) = 0.68 is below 0.9.
    config = EvalConfig(sbert=False, stagnation_threshold=0.9)
    with caplog.at_level(logging.WARNING, logger="dnpo.evaluation.pieces"):
        result = evaluate_run_iteration(run_dir, 1, config, use_model=False, extract=final_number)
    assert result["stagnation"]["distance"] == 0.0
    assert result["stagnation"]["verdict"] == "stagnant"
    assert result["stagnation"]["stagnant"] is True
    assert "barely moved" in caplog.text


def test_evaluate_inconclusive_stagnation_no_warning(run_dir, caplog):
    from dnpo.evaluation.runfiles import generation_logps_from_pairs

    previous = generation_logps_from_pairs(read_jsonl(run_dir / "iter_0/train/logps.jsonl"))
    eval_path = run_dir / "iter_1" / "eval.json"
    atomic_write_json(eval_path, {**read_json(eval_path), "next_generation_logps": previous})

    with caplog.at_level(logging.INFO, logger="dnpo.evaluation.pieces"):
        result = evaluate_run_iteration(
            run_dir, 1, EvalConfig(sbert=False), use_model=False, extract=final_number
        )
    assert result["stagnation"]["distance"] == 0.0
    assert result["stagnation"]["verdict"] == "inconclusive"
    assert result["stagnation"]["stagnant"] is None
    assert read_json(eval_path)["stagnation"]["verdict"] == "inconclusive"
    assert "barely moved" not in caplog.text
    assert "stagnation check inconclusive" in caplog.text


def test_cli_evaluate_without_model(run_dir, capsys):
    assert dnpo_main(["evaluate", str(run_dir), "--no-model", "--iteration", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("iteration 1:")
    assert "generated win rate" in out
    assert "judge" in read_json(run_dir / "iter_1" / "eval.json")


def test_cli_evaluate_missing_iteration(run_dir, capsys):
    assert dnpo_main(["evaluate", str(run_dir), "--no-model", "--iteration", "7"]) == 2
    assert "iter_7 not found" in capsys.readouterr().err


def test_cli_evaluate_not_a_run_dir(tmp_path, capsys):
    assert dnpo_main(["evaluate", str(tmp_path), "--no-model"]) == 2
    assert "neither config.yaml nor iter_K" in capsys.readouterr().err


def test_generation_logps_reads_source_from_pairs(tmp_path):
    from dnpo.evaluation.runfiles import generation_logps

    iter_dir = tmp_path / "iter_0"
    (iter_dir / "train").mkdir(parents=True)
    logps = [
        {"id": "a", "ref_chosen_logps": -1.0, "ref_rejected_logps": -2.0},
        {"id": "b", "ref_chosen_logps": -3.0, "ref_rejected_logps": -4.0},
        {
            "id": "c",
            "ref_chosen_logps": -5.0,
            "ref_rejected_logps": -6.0,
            "chosen_source": "generated",
        },
    ]
    pairs = [{"id": "a", "chosen_source": "generated"}, {"id": "b", "chosen_source": "reference"}]
    (iter_dir / "train" / "logps.jsonl").write_text("".join(json.dumps(r) + "\n" for r in logps))
    (iter_dir / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pairs))
    # a: generated was chosen (from pairs.jsonl); b: rejected; c: chosen (from its own row).
    assert generation_logps(tmp_path, 0) == [-1.0, -4.0, -5.0]
