"""The parts of iter_K/eval.json, each computed from the run directory's files.

Functions return None when their input files are not written yet. Those that need
a model take a checkpoint path and load it themselves.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from dnpo.evaluation import metrics
from dnpo.evaluation.config import EvalConfig
from dnpo.evaluation.runfiles import (
    chosen_answers,
    generated_answers,
    generation_logps,
    iteration_dir,
    load_jsonl,
)

logger = logging.getLogger(__name__)


def judge_piece(run_dir: Path, iteration: int) -> dict[str, Any] | None:
    """Judge summary of iteration K's generated data, from judgments.jsonl."""
    rows = load_jsonl(iteration_dir(run_dir, iteration) / "judgments.jsonl")
    return metrics.judge_summary(rows) if rows else None


def accuracy_piece(path: Path, extract: Callable[[str], Any]) -> dict[str, Any] | None:
    """Held-out accuracy of a file of greedy generations with gold answers."""
    rows = load_jsonl(path)
    return metrics.accuracy_from_records(rows, extract) if rows else None


def similarity_piece(
    run_dir: Path,
    iteration: int,
    config: EvalConfig,
    encode: Callable[[list[str]], np.ndarray] | None = None,
) -> dict[str, Any] | None:
    """BLEU, ROUGE-L and SBERT of iteration K's generations vs iteration K-1's chosen answers.

    Pairs are matched by prompt id. SBERT is skipped, with a warning, when its
    model cannot be loaded.
    """
    if iteration < 1:
        return None
    chosen = chosen_answers(run_dir, iteration - 1)
    generated = generated_answers(iteration_dir(run_dir, iteration) / "generations.jsonl")
    ids = sorted(set(chosen) & set(generated))
    if not ids:
        return None
    hypotheses = [generated[i]["generated"] for i in ids]
    references = [chosen[i] for i in ids]
    out: dict[str, Any] = {
        "pairs": len(ids),
        "bleu": metrics.bleu(hypotheses, references),
        "rouge_l": metrics.rouge_l(hypotheses, references),
    }
    if config.sbert:
        try:
            if encode is None:
                from dnpo.evaluation.sbert import SentenceEncoder

                encode = SentenceEncoder(batch_size=config.sbert_batch_size).encode
            out["sbert"] = metrics.sbert_similarity(hypotheses, references, encode)
        except (ImportError, OSError) as error:
            logger.warning("SBERT similarity skipped for iteration %d: %s", iteration, error)
    return out


def stagnation_piece(
    run_dir: Path, iteration: int, next_logps: list[float] | None, threshold: float
) -> dict[str, Any] | None:
    """Compare iteration K's generation log-probs with iteration K-1's, both under M_{K-1}.

    Logs a warning when the verdict is "stagnant", and an info line when it is
    "inconclusive".
    """
    if iteration < 1 or not next_logps:
        return None
    previous = generation_logps(run_dir, iteration - 1)
    if not previous:
        return None
    result = metrics.stagnation(previous, next_logps, threshold)
    if result["verdict"] == metrics.INCONCLUSIVE:
        logger.info(
            "Iteration %d: stagnation check inconclusive (Kolmogorov-Smirnov distance %.3f "
            "and threshold %.3f, both at or below the 5%% noise level %.3f). Use more "
            "generations per iteration or an eval.stagnation_threshold above %.3f for a "
            "conclusive check",
            iteration,
            result["distance"],
            threshold,
            result["critical_value_5pct"],
            result["critical_value_5pct"],
        )
    elif result["verdict"] == metrics.STAGNANT:
        logger.warning(
            "Iteration %d: generation log-probs barely moved from iteration %d "
            "(Kolmogorov-Smirnov distance %.3f < threshold %.3f; 5%% noise level %.3f). "
            "Training may have stalled: check the learning rate, epochs and pairs used.",
            iteration,
            iteration - 1,
            result["distance"],
            threshold,
            result["critical_value_5pct"],
        )
    return result


def next_generation_logps(
    run_dir: Path,
    iteration: int,
    model_path: str,
    config: EvalConfig,
    precision: str = "fp32",
    trust_remote_code: bool = False,
) -> list[float] | None:
    """Log-probs of iteration K's generations under `model_path` (M_{K-1}), in file order."""
    if iteration < 1:
        return None
    records = list(
        generated_answers(iteration_dir(run_dir, iteration) / "generations.jsonl").values()
    )
    if not records:
        return None
    import torch

    from dnpo.evaluation.logps import sequence_logps
    from dnpo.models import load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(model_path, trust_remote_code=trust_remote_code)
    model = load_causal_lm(model_path, precision, trust_remote_code)
    if torch.cuda.is_available():
        model.to("cuda")
    try:
        return sequence_logps(model, tokenizer, records, batch_size=config.logps_batch_size)
    finally:
        del model
        gc.collect()
