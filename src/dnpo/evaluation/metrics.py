"""Evaluation metrics as pure functions over records and lists of numbers or texts.

Key names follow the run directory's files: `accuracy`, `correct`, `total` for the
held-out set, and the `labels.json` names (`generated_win_rate`, `mean_generated_score`,
...) for judge summaries.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

# Two-sample Kolmogorov-Smirnov critical coefficient c(alpha) for alpha = 0.05:
# D is significant when D > c * sqrt((n + m) / (n * m)) (asymptotic, large n and m).
KS_COEFFICIENT_5PCT = 1.358
# Verdicts of the stagnation check, see `stagnation_verdict`.
STAGNANT = "stagnant"
NOT_STAGNANT = "not stagnant"
INCONCLUSIVE = "inconclusive"


def verifier_answer(text: str) -> Any:
    """Return the final answer of `text` as an exact number (Fraction), or None.

    Uses the verifier judge's rules: the text after the last `####`, else the last
    `\\boxed{}`, else the last number, ignoring thousands separators and `$`.
    """
    from dnpo.judges.verifier import extract_final_answer, to_number

    answer, _ = extract_final_answer(text)
    return to_number(answer)


def answers_match(predicted: str | None, gold: str | None, extract: Callable[[str], Any]) -> bool:
    """Compare a model's final answer with the gold answer.

    Both go through `extract`, so a gold answer such as "1,000" is normalized the
    same way as the model's "#### 1000". A gold answer that `extract` cannot parse
    is compared as stripped text with the model's answer as text.
    """
    if predicted is None or gold is None:
        return False
    predicted_answer = extract(predicted)
    if predicted_answer is None:
        return False
    gold_answer = extract(gold)
    if gold_answer is None:
        return str(predicted_answer) == gold.strip()
    return predicted_answer == gold_answer


def accuracy_from_records(
    records: Iterable[dict[str, Any]], extract: Callable[[str], Any] = verifier_answer
) -> dict[str, Any]:
    """Score greedy held-out generations against their gold answers.

    `records` are generation records (`generated`, `gold_answer`); `extract` maps a
    text to its final answer or None (default: the verifier judge's extraction).
    Records without a gold answer are skipped and counted in `skipped`. Returns
    `{"accuracy", "correct", "total", "skipped"}`, with `accuracy` None when no
    record has a gold answer.
    """
    correct = total = skipped = 0
    for record in records:
        if record.get("gold_answer") is None:
            skipped += 1
            continue
        total += 1
        correct += answers_match(record.get("generated"), record["gold_answer"], extract)
    accuracy = correct / total if total else None
    return {"accuracy": accuracy, "correct": correct, "total": total, "skipped": skipped}


def win_tie_loss(scores_a: Sequence[float], scores_b: Sequence[float]) -> dict[str, Any]:
    """Count A-vs-B wins, ties and losses over paired scores; return counts and rates."""
    if len(scores_a) != len(scores_b):
        raise ValueError(f"paired scores differ in length: {len(scores_a)} vs {len(scores_b)}")
    wins = sum(a > b for a, b in zip(scores_a, scores_b, strict=True))
    ties = sum(a == b for a, b in zip(scores_a, scores_b, strict=True))
    losses = len(scores_a) - wins - ties
    n = len(scores_a)
    return {
        "wins": wins,
        "ties": ties,
        "losses": losses,
        "win_rate": wins / n if n else None,
        "tie_rate": ties / n if n else None,
        "loss_rate": losses / n if n else None,
    }


def judge_summary(judgments: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Summarize judgments.jsonl records: mean scores and generated-vs-reference rates.

    Each mean covers the records where that side has a score. Win, tie and loss
    count only records where both sides have a score; `failed` counts the others.
    """
    reference_scores, generated_scores = [], []
    paired_generated, paired_reference = [], []
    records = 0
    for record in judgments:
        records += 1
        reference = (record.get("reference") or {}).get("score")
        generated = (record.get("generated") or {}).get("score")
        if reference is not None:
            reference_scores.append(reference)
        if generated is not None:
            generated_scores.append(generated)
        if reference is not None and generated is not None:
            paired_generated.append(generated)
            paired_reference.append(reference)
    rates = win_tie_loss(paired_generated, paired_reference)
    return {
        "mean_generated_score": _mean(generated_scores),
        "mean_reference_score": _mean(reference_scores),
        "generated_win_rate": rates["win_rate"],
        "generated_tie_rate": rates["tie_rate"],
        "generated_loss_rate": rates["loss_rate"],
        "judged": len(paired_generated),
        "failed": records - len(paired_generated),
    }


def bleu(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU (sacrebleu defaults: 13a tokenization, 0-100 scale), one reference each."""
    import sacrebleu

    _check_pairs(hypotheses, references)
    return float(sacrebleu.corpus_bleu(list(hypotheses), [list(references)]).score)


def rouge_l(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Mean ROUGE-L F-measure (rouge-score with the Porter stemmer), in [0, 1]."""
    from rouge_score import rouge_scorer

    _check_pairs(hypotheses, references)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    pairs = zip(hypotheses, references, strict=True)
    scores = [scorer.score(ref, hyp)["rougeL"].fmeasure for hyp, ref in pairs]
    return float(np.mean(scores))


def sbert_similarity(
    hypotheses: Sequence[str],
    references: Sequence[str],
    encode: Callable[[list[str]], np.ndarray] | None = None,
) -> float:
    """Mean cosine similarity of paired sentence embeddings.

    `encode` maps texts to unit-norm embeddings of shape (n, d); the default is
    the bundled all-MiniLM-L6-v2 encoder.
    """
    _check_pairs(hypotheses, references)
    if encode is None:
        from dnpo.evaluation.sbert import SentenceEncoder

        encode = SentenceEncoder().encode
    hyp = np.asarray(encode(list(hypotheses)), dtype=np.float64)
    ref = np.asarray(encode(list(references)), dtype=np.float64)
    hyp = hyp / np.linalg.norm(hyp, axis=1, keepdims=True).clip(min=1e-12)
    ref = ref / np.linalg.norm(ref, axis=1, keepdims=True).clip(min=1e-12)
    return float(np.mean(np.sum(hyp * ref, axis=1)))


def ks_distance(sample_a: Sequence[float], sample_b: Sequence[float]) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: max |F_a(x) - F_b(x)| over x, in [0, 1]."""
    a = np.sort(np.asarray(sample_a, dtype=np.float64))
    b = np.sort(np.asarray(sample_b, dtype=np.float64))
    if a.size == 0 or b.size == 0:
        raise ValueError("ks_distance needs two non-empty samples")
    points = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, points, side="right") / a.size
    cdf_b = np.searchsorted(b, points, side="right") / b.size
    return float(np.max(np.abs(cdf_a - cdf_b)))


def stagnation(
    previous_logps: Sequence[float], next_logps: Sequence[float], threshold: float
) -> dict[str, Any]:
    """Measure how far a model's generation log-prob distribution moved in one iteration.

    Both samples are sequence log-probs under the same model M_k: `previous_logps`
    of iteration k's generations, `next_logps` of iteration k+1's generations. The
    statistic is the two-sample Kolmogorov-Smirnov distance D. It is scale-free,
    so one threshold fits short and long answers. `distance` is D.
    `critical_value_5pct` is the D that two samples of these sizes from one
    distribution exceed with probability 0.05. `verdict` comes from
    `stagnation_verdict`, and `stagnant` is True, False or None to match it (None when
    the verdict is "inconclusive"). `standardized_mean_shift` is the mean change
    in units of the pooled standard deviation: positive means iteration k+1's
    answers are more likely under M_k.
    """
    previous = np.asarray(previous_logps, dtype=np.float64)
    following = np.asarray(next_logps, dtype=np.float64)
    distance = ks_distance(previous, following)
    n, m = previous.size, following.size
    pooled_std = math.sqrt((previous.var() + following.var()) / 2)
    shift = (following.mean() - previous.mean()) / pooled_std if pooled_std > 0 else 0.0
    result: dict[str, Any] = {
        "statistic": "kolmogorov_smirnov",
        "distance": distance,
        "threshold": threshold,
        "critical_value_5pct": KS_COEFFICIENT_5PCT * math.sqrt((n + m) / (n * m)),
        "standardized_mean_shift": float(shift),
        "n_previous": int(n),
        "n_next": int(m),
    }
    verdict = stagnation_verdict(result)
    result["verdict"] = verdict
    result["stagnant"] = None if verdict == INCONCLUSIVE else verdict == STAGNANT
    return result


def stagnation_verdict(result: dict[str, Any]) -> str:
    """Decide "stagnant", "not stagnant" or "inconclusive" for a `stagnation` result.

    "stagnant" means the distance is below the threshold. When `critical_value_5pct`
    exceeds the threshold, two samples of these sizes from one distribution often
    differ by more than the threshold. Then a distance above the critical value is
    still a significant shift larger than the threshold ("not stagnant"), and any
    smaller distance is "inconclusive". eval.json, report.md and
    `dnpo evaluate` all use this function. It also reads eval.json files written
    before the `verdict` field, and uses their `stagnant` flag when no distance is stored.
    """
    critical, threshold = result.get("critical_value_5pct"), result.get("threshold")
    distance = result.get("distance")
    if critical is not None and threshold is not None and critical > threshold:
        return NOT_STAGNANT if distance is not None and distance > critical else INCONCLUSIVE
    if distance is not None and threshold is not None:
        stagnant = distance < threshold
    else:
        stagnant = result.get("stagnant")
    if stagnant is None:
        return INCONCLUSIVE
    return STAGNANT if stagnant else NOT_STAGNANT


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if len(values) else None


def _check_pairs(hypotheses: Sequence[str], references: Sequence[str]) -> None:
    if len(hypotheses) != len(references):
        raise ValueError(
            f"hypotheses and references differ in length: {len(hypotheses)} vs {len(references)}"
        )
    if not hypotheses:
        raise ValueError("no hypothesis/reference pairs to score")
