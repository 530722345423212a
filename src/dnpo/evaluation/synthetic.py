"""A synthetic run directory in the layout `dnpo run` writes, for tests and report previews.

Every file contains seeded made-up numbers: nothing is trained or generated. The
generations answer GSM8K-style arithmetic prompts so answer extraction works, and
each iteration's generation log-probs drift by `drift` so the stagnation check has
a known answer (drift 0 gives identical distributions).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import yaml

from dnpo.io import atomic_write_json, atomic_write_text


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in rows))


def _prompt(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"What is {i} + {i + 1}? End with '#### <number>'."}]


def write_synthetic_run(
    run_dir: str | Path,
    iterations: int = 2,
    prompts: int = 12,
    method: str = "dnpo",
    drift: float = 8.0,
    seed: int = 0,
    lm_eval: bool = False,
) -> Path:
    """Write config.yaml, summary.json and iter_0..iter_{iterations-1}; return the run dir."""
    run_dir = Path(run_dir)
    rng = random.Random(seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    config = {
        "model": {"name_or_path": "synthetic", "precision": "fp32"},
        "judge": {"type": "openai", "model": "synthetic-judge"},
        "eval": {"sbert": False},
        "loop": {"method": method, "iterations": iterations, "name": run_dir.name},
    }
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(config, sort_keys=False))
    rows = []
    for k in range(iterations):
        rows.append(_write_iteration(run_dir, k, prompts, method, drift, rng, lm_eval))
        if k > 0:
            _add_similarity_and_stagnation(run_dir, k)
    atomic_write_json(run_dir / "summary.json", {"rows": rows})
    return run_dir


def _answer(i: int, correct: bool, k: int) -> str:
    value = 2 * i + 1 if correct else 2 * i
    return f"Iteration {k} answer: {i} + {i + 1} = {value}.\n#### {value}"


def _write_iteration(
    run_dir: Path,
    k: int,
    prompts: int,
    method: str,
    drift: float,
    rng: random.Random,
    lm_eval: bool,
) -> dict[str, Any]:
    """Write iter_k's files and return its summary row."""
    iter_dir = run_dir / f"iter_{k}"
    (iter_dir / "train").mkdir(parents=True, exist_ok=True)

    # Generate: half the sampled answers are right.
    generations = [
        {
            "id": f"p{i}",
            "prompt": _prompt(i),
            "reference": _answer(i, True, -1),
            "gold_answer": str(2 * i + 1),
            "generated": _answer(i, rng.random() < 0.5, k),
            "finish_reason": "stop",
            "prompt_tokens": 20,
            "completion_tokens": 15,
        }
        for i in range(prompts)
    ]
    _jsonl(iter_dir / "generations.jsonl", generations)

    # Judge, label and record the pairs' log-probs under M_k.
    judged = k > 0 and method != "spin"
    judgments, pairs, logps = [], [], []
    for record in generations:
        judgment, pair, logp = _judge_and_label(record, judged, k, drift, rng)
        if judged:
            judgments.append(judgment)
        pairs.append(pair)
        logps.append(logp)
    if judgments:
        _jsonl(iter_dir / "judgments.jsonl", judgments)
    _jsonl(iter_dir / "pairs.jsonl", pairs)
    labels = _labels(judgments, pairs)
    atomic_write_json(iter_dir / "labels.json", labels)

    # Train.
    _jsonl(iter_dir / "train" / "logps.jsonl", logps)
    _jsonl(iter_dir / "train" / "train_log.jsonl", _train_log(k, method, rng))

    # Evaluate: greedy held-out answers of M_{k+1}.
    eval_generations = [
        {**record, "generated": _answer(i, i % 3 != 0 or k > 0, k)}
        for i, record in enumerate(generations)
    ]
    _jsonl(iter_dir / "eval_generations.jsonl", eval_generations)
    evaluation = _eval_record(k, eval_generations, drift, rng, lm_eval)
    atomic_write_json(iter_dir / "eval.json", evaluation)
    atomic_write_json(
        iter_dir / "manifest.json",
        {"iteration": k, "method": method, "stages": {"evaluate": {"status": "done"}}},
    )
    return {
        "iteration": k,
        "method": method if k > 0 else "spin",
        "accuracy": evaluation["accuracy"],
        "generated_win_rate": labels["generated_win_rate"],
        "pairs": len(pairs),
        "mean_margin": None,
        "mean_noise_std": None,
        "minutes": 0.1,
    }


def _judge_and_label(
    record: dict[str, Any], judged: bool, k: int, drift: float, rng: random.Random
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Return the judgment, the pair and the pair's log-probs row for one generation."""
    reference_score, generated_score = rng.randint(60, 90), rng.randint(50, 95)
    judgment = {
        "id": record["id"],
        "reference": {"score": reference_score, "raw": str(reference_score), "error": None},
        "generated": {"score": generated_score, "raw": str(generated_score), "error": None},
    }
    chosen_generated = judged and generated_score > reference_score
    chosen, rejected = record["reference"], record["generated"]
    if chosen_generated:
        chosen, rejected = rejected, chosen
    source = "generated" if chosen_generated else "reference"
    pair = {
        "id": record["id"],
        "prompt": record["prompt"],
        "chosen": chosen,
        "rejected": rejected,
        "chosen_source": source,
        "label_source": "judge" if judged else "spin",
    }
    generated_logp = rng.gauss(-60.0 + drift * k, 6.0)
    reference_logp = rng.gauss(-90.0 + drift * k, 8.0)
    logp = {
        "id": record["id"],
        "chosen_source": source,
        "ref_chosen_logps": generated_logp if chosen_generated else reference_logp,
        "ref_rejected_logps": reference_logp if chosen_generated else generated_logp,
    }
    return judgment, pair, logp


def _add_similarity_and_stagnation(run_dir: Path, k: int) -> None:
    """Fill eval.json's similarity and stagnation entries as `dnpo evaluate` computes them."""
    from dnpo.evaluation.config import EvalConfig
    from dnpo.evaluation.pieces import similarity_piece, stagnation_piece
    from dnpo.io import read_json

    path = run_dir / f"iter_{k}" / "eval.json"
    record = read_json(path)
    record["similarity"] = similarity_piece(run_dir, k, EvalConfig(sbert=False))
    record["stagnation"] = stagnation_piece(run_dir, k, record["next_generation_logps"], 0.1)
    atomic_write_json(path, record)


def _train_log(k: int, method: str, rng: random.Random) -> list[dict[str, Any]]:
    noisy = k > 0 and method in ("dnpo", "spin+npo")
    rows = []
    for step in range(1, 21):
        model_loss = 0.69 * (1 - step / 40) + rng.uniform(-0.02, 0.02)
        row: dict[str, Any] = {"step": step, "loss/model": model_loss}
        if noisy:
            row["loss/noise"] = -model_loss + rng.uniform(-0.02, 0.02)
            row["noise/std_mean"] = 0.1 + 0.002 * step
            row["loss"] = model_loss + row["loss/noise"]
        else:
            row["loss"] = model_loss
        rows.append(row)
    return rows


def _labels(judgments: list[dict[str, Any]], pairs: list[dict[str, Any]]) -> dict[str, Any]:
    if not judgments:
        return {
            "pairs": len(pairs),
            "chosen_reference": len(pairs),
            "chosen_generated": 0,
            "generated_win_rate": None,
            "generated_tie_rate": None,
            "generated_loss_rate": None,
            "mean_reference_score": None,
            "mean_generated_score": None,
        }
    generated = [j["generated"]["score"] for j in judgments]
    reference = [j["reference"]["score"] for j in judgments]
    n = len(judgments)
    wins = sum(g > r for g, r in zip(generated, reference, strict=True))
    ties = sum(g == r for g, r in zip(generated, reference, strict=True))
    return {
        "pairs": len(pairs),
        "chosen_generated": wins,
        "chosen_reference": n - wins,
        "generated_win_rate": wins / n,
        "generated_tie_rate": ties / n,
        "generated_loss_rate": (n - wins - ties) / n,
        "mean_reference_score": sum(reference) / n,
        "mean_generated_score": sum(generated) / n,
    }


def _eval_record(
    k: int,
    eval_generations: list[dict[str, Any]],
    drift: float,
    rng: random.Random,
    lm_eval: bool,
) -> dict[str, Any]:
    correct = sum(str(2 * i + 1) in r["generated"] for i, r in enumerate(eval_generations))
    total = len(eval_generations)
    record: dict[str, Any] = {"accuracy": correct / total, "correct": correct, "total": total}
    if k == 0:
        record["start_accuracy"] = 0.25
    if k > 0:
        # Iteration k's generations under M_{k-1}: the drift puts them above iteration
        # k-1's generations, which sit near -60 + drift * (k - 1) under that model.
        record["next_generation_logps"] = [
            rng.gauss(-60.0 + drift * k, 6.0) for _ in eval_generations
        ]
    if lm_eval:
        base = 0.5 + 0.01 * k
        scores = {
            "ARC": base + 0.1,
            "TruthfulQA": base - 0.1,
            "Winogrande": base + 0.2,
            "GSM8K": base - 0.2,
            "HellaSwag": base + 0.3,
            "MMLU": base,
        }
        record["lm_eval"] = {
            "scores": scores,
            "average": sum(scores.values()) / 6,
            "average_of": list(scores),
            "harness_version": "synthetic",
        }
        if k == 0:
            start = {name: value - 0.02 for name, value in scores.items()}
            record["start_lm_eval"] = {"scores": start, "average": sum(start.values()) / 6}
    return record
