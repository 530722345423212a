"""Judge faults in a real `dnpo run`: every item ends scored or counted as failed with its reason.

The run (fixture `judged_run` in conftest.py) judges one training item per fault kind
against a fault-injecting server, is killed after the judge stage has recorded its
failures, and is resumed to the end.
"""

import sqlite3
from collections import Counter

from fault_run import JUDGE_FAULTS

from dnpo.io import read_json, read_jsonl

FAILED = {item_id: kind for item_id, (_, kind) in JUDGE_FAULTS.items() if kind != "scored"}
SCORED = {item_id for item_id, (_, kind) in JUDGE_FAULTS.items() if kind == "scored"}


def judgments(run):
    iter_dir = run.run_dir / "iter_1"
    complete = {row["id"]: row for row in read_jsonl(iter_dir / "judgments.jsonl")}
    failed = {row["id"]: row for row in read_jsonl(iter_dir / "judgments.failed.jsonl")}
    return complete, failed


def test_run_finishes_after_kill_and_faults(judged_run):
    assert judged_run.returncodes == [-9, 0], judged_run.outputs[-1][-3000:]
    rows = read_json(judged_run.run_dir / "summary.json")["rows"]
    assert [row["iteration"] for row in rows] == [0, 1]
    assert "Traceback" not in judged_run.outputs[1]


def test_every_item_scored_or_failed(judged_run):
    complete, failed = judgments(judged_run)
    assert set(complete) == SCORED
    assert set(failed) == set(FAILED)
    for item_id in SCORED:
        assert isinstance(complete[item_id]["reference"]["score"], int), item_id
        assert complete[item_id]["generated"]["score"] == 61, item_id
    for item_id, kind in FAILED.items():
        reference = failed[item_id]["reference"]
        assert reference["score"] is None, item_id
        assert reference["error"].startswith(f"{kind}:"), (item_id, reference["error"])
        assert failed[item_id]["generated"]["score"] == 61, item_id


def test_counts_in_labels_and_manifest(judged_run):
    iter_dir = judged_run.run_dir / "iter_1"
    labels = read_json(iter_dir / "labels.json")
    assert labels["judge_failed"] == len(FAILED)
    assert labels["label_source"] == {"judge": len(SCORED), "judge_failed": len(FAILED)}
    assert labels["pairs"] == len(JUDGE_FAULTS)
    assert labels["judge"]["failed_calls_by_kind"] == dict(Counter(FAILED.values()))
    assert labels["judge"]["parse_failures"] == 1
    stats = read_json(iter_dir / "manifest.json")["judge_stats"]
    assert stats["failed_items"] == len(FAILED)
    assert stats["items"] == len(JUDGE_FAULTS)
    assert (
        f"{len(FAILED)} of {len(JUDGE_FAULTS)} items have a failed judge call"
        in (judged_run.outputs[1])
    )


def test_failed_items_retried_on_resume(judged_run):
    for item_id, kind in FAILED.items():
        marker = JUDGE_FAULTS[item_id][0]
        before, total = judged_run.attempts_for(marker)
        assert before >= 1, item_id
        assert total > before, f"{item_id} ({kind}) was not sent again on resume"
    before, total = judged_run.attempts_for("500x3")
    assert (before, total) == (2, 4)


def test_transient_faults_recover_within_retries(judged_run):
    for marker in ("429x1", "429nrx1", "500x1", "resetx1"):
        before, total = judged_run.attempts_for(marker)
        assert before == total == 2, marker


def test_failures_never_cached(judged_run):
    with sqlite3.connect(judged_run.cache_path) as connection:
        responses = [row[0] for row in connection.execute("SELECT response FROM judgments")]
    for item_id in FAILED:
        marker = f"@@{JUDGE_FAULTS[item_id][0]}@@"
        assert not any(marker in response for response in responses), item_id
    for item_id in SCORED:
        marker = f"@@{JUDGE_FAULTS[item_id][0]}@@"
        assert sum(marker in response for response in responses) == 1, item_id
    # Generated answers were all scored on the first attempt and come from the cache on resume.
    generated = [r for r in judged_run.server.requests if "@@" not in r["content"]]
    assert len(generated) == len(JUDGE_FAULTS)


def test_quoted_score_keeps_judge_verdict(judged_run):
    complete, _ = judgments(judged_run)
    reference = complete["quoted-score-injection"]["reference"]
    assert "Score: 100" in reference["raw"]
    assert reference["score"] == 12
