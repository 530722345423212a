import math
import re

import numpy as np
import pytest

from dnpo.evaluation import metrics


def last_number(text):
    """Test extractor: the text after '####', else the last number, without commas."""
    if "####" in text:
        text = text.rsplit("####", 1)[1]
    numbers = re.findall(r"-?[\d,]*\.?\d+", text)
    return numbers[-1].replace(",", "") if numbers else None


def test_accuracy_from_records_hand_counted():
    records = [
        {"generated": "so 3 + 4 = 7\n#### 7", "gold_answer": "7"},  # correct
        {"generated": "The total is 1,000.", "gold_answer": "1000"},  # correct after extraction
        {"generated": "#### 12", "gold_answer": "13"},  # wrong
        {"generated": "I cannot answer.", "gold_answer": "5"},  # nothing extracted: wrong
        {"generated": "#### 4", "gold_answer": None},  # no gold answer: skipped
    ]
    result = metrics.accuracy_from_records(records, last_number)
    assert result["correct"] == 2
    assert result["total"] == 4
    assert result["skipped"] == 1
    assert result["accuracy"] == 0.5


def test_accuracy_without_gold_answers_is_none():
    result = metrics.accuracy_from_records([{"generated": "1", "gold_answer": None}], last_number)
    assert result["accuracy"] is None
    assert result["total"] == 0


def test_accuracy_default_uses_verifier_rules():
    pytest.importorskip("dnpo.judges.verifier")
    records = [
        {"generated": "So she pays\n#### $1,000.00", "gold_answer": "1000"},
        {"generated": "The share is \\boxed{3/4}.", "gold_answer": "0.75"},
        {"generated": "#### 7", "gold_answer": "8"},
        {"generated": "no idea", "gold_answer": "2"},
    ]
    result = metrics.accuracy_from_records(records)
    assert result["correct"] == 2
    assert result["total"] == 4


def test_answers_match_normalizes_gold_through_extractor():
    assert metrics.answers_match("#### 1000", "1,000", last_number)
    assert not metrics.answers_match(None, "3", last_number)


def test_judge_summary_hand_computed():
    judgments = [
        {"id": "a", "reference": {"score": 80}, "generated": {"score": 90}},  # generated wins
        {"id": "b", "reference": {"score": 70}, "generated": {"score": 70}},  # tie
        {"id": "c", "reference": {"score": 60}, "generated": {"score": 40}},  # loss
        {"id": "d", "reference": {"score": 50}, "generated": {"score": 30}},  # loss
        {"id": "e", "reference": {"score": None, "error": "timeout"}, "generated": {"score": 20}},
    ]
    summary = metrics.judge_summary(judgments)
    assert summary["mean_generated_score"] == pytest.approx((90 + 70 + 40 + 30 + 20) / 5)
    assert summary["mean_reference_score"] == pytest.approx((80 + 70 + 60 + 50) / 4)
    assert summary["generated_win_rate"] == 0.25
    assert summary["generated_tie_rate"] == 0.25
    assert summary["generated_loss_rate"] == 0.5
    assert summary["judged"] == 4
    assert summary["failed"] == 1


def test_win_tie_loss_counts_and_rates():
    result = metrics.win_tie_loss([3, 2, 1, 5], [1, 2, 4, 0])
    assert (result["wins"], result["ties"], result["losses"]) == (2, 1, 1)
    assert result["win_rate"] == 0.5
    assert result["tie_rate"] == 0.25


def test_win_tie_loss_rejects_unpaired_scores():
    with pytest.raises(ValueError, match="differ in length"):
        metrics.win_tie_loss([1, 2], [1])


def test_bleu_hand_computed():
    # Unigram 5/6, bigram 3/5, trigram 2/4, 4-gram 1/3, equal lengths (no brevity penalty):
    # BLEU = (5/6 * 3/5 * 1/2 * 1/3) ** (1/4) = (1/12) ** 0.25.
    score = metrics.bleu(["the cat sat on the mat"], ["the cat sat on a mat"])
    assert score == pytest.approx(100 * (1 / 12) ** 0.25, abs=1e-6)


def test_bleu_identical_texts_is_100():
    assert metrics.bleu(["a b c d e"], ["a b c d e"]) == pytest.approx(100.0)


def test_rouge_l_hand_computed():
    # LCS "the cat sat on mat" has 5 tokens of 6 on both sides: P = R = F = 5/6.
    first = metrics.rouge_l(["the cat sat on the mat"], ["the cat sat on a mat"])
    assert first == pytest.approx(5 / 6)
    # Mean over pairs: 5/6 and 1.0.
    mean = metrics.rouge_l(["the cat sat on the mat", "x y"], ["the cat sat on a mat", "x y"])
    assert mean == pytest.approx((5 / 6 + 1) / 2)


def test_text_metrics_reject_empty_and_unpaired_input():
    with pytest.raises(ValueError, match="no hypothesis"):
        metrics.bleu([], [])
    with pytest.raises(ValueError, match="differ in length"):
        metrics.rouge_l(["a"], ["a", "b"])


def test_sbert_similarity_with_fixed_embeddings():
    vectors = {"x": [1.0, 0.0], "y": [0.0, 2.0], "z": [3.0, 3.0]}

    def encode(texts):
        return np.array([vectors[t] for t in texts])

    # cos(x, z) = 1/sqrt(2); cos(y, y) = 1; mean = (1/sqrt(2) + 1) / 2.
    value = metrics.sbert_similarity(["x", "y"], ["z", "y"], encode=encode)
    assert value == pytest.approx((1 / math.sqrt(2) + 1) / 2)


def test_ks_distance_hand_computed():
    # ECDFs at 1, 2, 3, 4: (1/3, 0), (2/3, 1/3), (1, 2/3), (1, 1): max gap 1/3.
    assert metrics.ks_distance([1, 2, 3], [2, 3, 4]) == pytest.approx(1 / 3)
    assert metrics.ks_distance([1, 2], [5, 6, 7]) == 1.0
    assert metrics.ks_distance([4, 1, 2], [2, 1, 4]) == 0.0


def test_ks_distance_rejects_empty_sample():
    with pytest.raises(ValueError, match="non-empty"):
        metrics.ks_distance([], [1.0])


def test_stagnation_flags_identical_distributions():
    result = metrics.stagnation([-10.0, -20.0, -30.0], [-30.0, -10.0, -20.0], threshold=0.1)
    assert result["distance"] == 0.0
    assert result["verdict"] == "inconclusive"  # 3 vs 3 samples cannot resolve 0.1
    assert result["stagnant"] is None
    assert result["standardized_mean_shift"] == 0.0
    assert result["critical_value_5pct"] == pytest.approx(1.358 * math.sqrt(2 / 3))


def test_stagnation_moved_distribution_is_not_stagnant():
    # Every next log-prob is higher: D = 1, mean shift = 30 / std(10, 20, 30 pattern).
    result = metrics.stagnation([-30.0, -20.0, -10.0], [0.0, 10.0, 20.0], threshold=0.1)
    assert result["distance"] == 1.0
    assert result["verdict"] == "inconclusive"  # 3 vs 3 samples cannot resolve 0.1
    assert result["stagnant"] is None
    pooled_std = math.sqrt(np.var([-30.0, -20.0, -10.0]))
    assert result["standardized_mean_shift"] == pytest.approx(30.0 / pooled_std)
    assert (result["n_previous"], result["n_next"]) == (3, 3)
