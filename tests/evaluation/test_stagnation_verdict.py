import json
import math

import pytest

from dnpo.evaluation import metrics
from dnpo.evaluation.synthetic import write_synthetic_run
from dnpo.report import write_report


def test_small_samples_inconclusive():
    # n = m = 3: the 5% critical distance 1.358 * sqrt(6 / 9) = 1.11 is above any threshold < 1.
    result = metrics.stagnation([-10.0, -20.0, -30.0], [-30.0, -10.0, -20.0], threshold=0.1)
    assert result["critical_value_5pct"] == pytest.approx(1.358 * math.sqrt(6 / 9))
    assert metrics.stagnation_verdict(result) == "inconclusive"


@pytest.mark.parametrize(("shift", "expected"), [(0.0, "yes"), (50.0, "no")])
def test_large_samples_conclusive(shift, expected):
    # n = m = 2000: the critical distance 1.358 * sqrt(2 / 2000) = 0.043 is below 0.1.
    previous = [float(i % 100) for i in range(2000)]
    following = [value + shift for value in previous]
    result = metrics.stagnation(previous, following, threshold=0.1)
    assert result["critical_value_5pct"] < 0.1
    assert metrics.stagnation_verdict(result) == expected


def test_report_shows_inconclusive(tmp_path):
    run = write_synthetic_run(tmp_path / "run", iterations=2, prompts=10)
    stagnation = json.loads((run / "iter_1" / "eval.json").read_text())["stagnation"]
    assert stagnation["critical_value_5pct"] > stagnation["threshold"]  # 10 vs 10 samples
    text = write_report(run).read_text(encoding="utf-8")
    row = next(line for line in text.splitlines() if line.startswith("| M_0 | iter 0 vs 1 |"))
    assert row.rstrip(" |").endswith("inconclusive")
    assert "It is inconclusive when the 5% noise level is above the threshold" in text
