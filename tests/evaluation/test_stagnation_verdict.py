import json
import math

import pytest

from dnpo.cli import main as dnpo_main
from dnpo.evaluation import metrics
from dnpo.evaluation.synthetic import write_synthetic_run
from dnpo.report import write_report


def test_small_samples_inconclusive():
    # n = m = 3: the 5% critical distance 1.358 * sqrt(6 / 9) = 1.11 is above any threshold < 1.
    result = metrics.stagnation([-10.0, -20.0, -30.0], [-30.0, -10.0, -20.0], threshold=0.1)
    assert result["critical_value_5pct"] == pytest.approx(1.358 * math.sqrt(6 / 9))
    assert metrics.stagnation_verdict(result) == "inconclusive"


@pytest.mark.parametrize(("shift", "expected"), [(0.0, "stagnant"), (50.0, "not stagnant")])
def test_large_samples_conclusive(shift, expected):
    # n = m = 2000: the critical distance 1.358 * sqrt(2 / 2000) = 0.043 is below 0.1.
    previous = [float(i % 100) for i in range(2000)]
    following = [value + shift for value in previous]
    result = metrics.stagnation(previous, following, threshold=0.1)
    assert result["critical_value_5pct"] < 0.1
    assert metrics.stagnation_verdict(result) == expected
    assert result["verdict"] == expected
    assert result["stagnant"] is (expected == "stagnant")


def test_report_shows_inconclusive(tmp_path):
    run = write_synthetic_run(tmp_path / "run", iterations=2, prompts=10)
    stagnation = json.loads((run / "iter_1" / "eval.json").read_text())["stagnation"]
    assert stagnation["critical_value_5pct"] > stagnation["threshold"]  # 10 vs 10 samples
    text = write_report(run).read_text(encoding="utf-8")
    row = next(line for line in text.splitlines() if line.startswith("| M_0 | iter 0 vs 1 |"))
    assert row.rstrip(" |").endswith("inconclusive")
    assert "It is inconclusive when the 5% noise level is above the threshold and" in text


def test_distance_above_noise_level_not_stagnant():
    # 32 vs 32 samples, shifted by 12 of 32: D = 0.375 > noise level 0.3395 > threshold 0.1.
    previous = [float(i) for i in range(32)]
    result = metrics.stagnation(previous, [value + 12 for value in previous], threshold=0.1)
    assert result["distance"] == pytest.approx(0.375)
    assert result["critical_value_5pct"] == pytest.approx(0.3395, abs=1e-4)
    assert result["verdict"] == "not stagnant"
    assert result["stagnant"] is False


def test_distance_below_noise_level_inconclusive():
    # 32 vs 32 samples, shifted by 4 of 32: D = 0.125 is above the threshold 0.1 but
    # below the noise level 0.3395.
    previous = [float(i) for i in range(32)]
    result = metrics.stagnation(previous, [value + 4 for value in previous], threshold=0.1)
    assert result["distance"] == pytest.approx(0.125)
    assert result["verdict"] == "inconclusive"
    assert result["stagnant"] is None


def test_eval_json_report_cli_agree(tmp_path, capsys):
    run = write_synthetic_run(tmp_path / "run", iterations=2, prompts=10)
    assert dnpo_main(["evaluate", str(run), "--iteration", "1", "--no-model"]) == 0
    printed = capsys.readouterr().out
    stagnation = json.loads((run / "iter_1" / "eval.json").read_text())["stagnation"]
    assert stagnation["verdict"] == "inconclusive"
    assert stagnation["stagnant"] is None
    assert "(stagnation inconclusive)" in printed
    text = write_report(run).read_text(encoding="utf-8")
    assert "| Verdict |" in text
    row = next(line for line in text.splitlines() if line.startswith("| M_0 | iter 0 vs 1 |"))
    assert row.rstrip(" |").endswith("inconclusive")


def test_evaluate_says_report_is_stale(tmp_path, capsys):
    run = write_synthetic_run(tmp_path / "run", iterations=2, prompts=10)
    write_report(run)
    assert dnpo_main(["evaluate", str(run), "--iteration", "1", "--no-model"]) == 0
    assert f"run `dnpo report {run}` to refresh it" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("stored", "expected"),
    [
        # Written before the verdict field: `stagnant` was D < threshold alone.
        ({"distance": 0.375, "critical_value_5pct": 0.3395, "threshold": 0.1, "stagnant": False},
         "not stagnant"),
        ({"distance": 0.125, "critical_value_5pct": 0.3395, "threshold": 0.1, "stagnant": False},
         "inconclusive"),
        ({"distance": 0.01, "critical_value_5pct": 0.05, "threshold": 0.1, "stagnant": True},
         "stagnant"),
        ({"distance": 0.5, "critical_value_5pct": 0.05, "threshold": 0.1, "stagnant": False},
         "not stagnant"),
        ({"stagnant": True}, "stagnant"),
        ({"stagnant": False}, "not stagnant"),
        ({}, "inconclusive"),
    ],
)
def test_old_eval_json_verdict(stored, expected):
    assert metrics.stagnation_verdict(stored) == expected


def test_report_reads_old_eval_json(tmp_path):
    run = write_synthetic_run(tmp_path / "run", iterations=2, prompts=10)
    eval_path = run / "iter_1" / "eval.json"
    record = json.loads(eval_path.read_text())
    old = {key: value for key, value in record["stagnation"].items() if key != "verdict"}
    old["stagnant"] = old["distance"] < old["threshold"]
    eval_path.write_text(json.dumps({**record, "stagnation": old}))
    text = write_report(run).read_text(encoding="utf-8")
    row = next(line for line in text.splitlines() if line.startswith("| M_0 | iter 0 vs 1 |"))
    assert row.rstrip(" |").endswith("inconclusive")
