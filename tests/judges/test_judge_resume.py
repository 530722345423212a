import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from dnpo.io import read_jsonl

SRC = Path(__file__).resolve().parents[2] / "src"


def write_generations(path, count):
    rows = [
        {
            "id": f"item-{i:03d}",
            "prompt": [{"role": "user", "content": f"Question {i} ✓"}],
            "reference": f"Reference {i}",
            "gold_answer": None,
            "generated": f"Answer {i} 🙂",
            "finish_reason": "stop",
            "prompt_tokens": 4,
            "completion_tokens": 4,
        }
        for i in range(count)
    ]
    path.write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8"
    )


def judge_command(chat_server, tmp_path):
    return [
        sys.executable,
        "-m",
        "dnpo.cli",
        "judge",
        "--generations",
        str(tmp_path / "generations.jsonl"),
        "--output",
        str(tmp_path / "judgments.jsonl"),
        "--type",
        "openai",
        "--model",
        "judge-test",
        "--base-url",
        chat_server.url,
        "--api-key-env",
        "DNPO_TEST_JUDGE_KEY",
        "--chunk-size",
        "2",
        "--max-concurrency",
        "2",
        "--cache-path",
        str(tmp_path / "cache.sqlite"),
    ]


def complete_lines(path):
    if not path.exists():
        return 0
    return path.read_bytes().count(b"\n")


def test_judge_resume_after_sigkill(chat_server, tmp_path, api_key):
    total = 30
    write_generations(tmp_path / "generations.jsonl", total)
    output = tmp_path / "judgments.jsonl"
    env = {**os.environ, "PYTHONPATH": str(SRC), "DNPO_TEST_JUDGE_KEY": api_key}
    chat_server.delay = 0.05

    process = subprocess.Popen(
        judge_command(chat_server, tmp_path),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while complete_lines(output) < 4 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    written = complete_lines(output)
    assert 4 <= written < total

    rerun = subprocess.run(
        judge_command(chat_server, tmp_path), env=env, capture_output=True, text=True, timeout=120
    )
    assert rerun.returncode == 0, rerun.stderr
    stats = json.loads(rerun.stdout)
    assert stats["already_done"] >= written
    records = read_jsonl(output)
    counts = Counter(r["id"] for r in records)
    assert set(counts) == {f"item-{i:03d}" for i in range(total)}
    assert max(counts.values()) == 1
    assert all(r["generated"]["score"] == 61 and r["reference"]["score"] == 61 for r in records)
