import json
import logging
import sqlite3

import pytest

from dnpo.cli import main as cli_main
from dnpo.configbase import ConfigError
from dnpo.errors import JudgeStageError
from dnpo.io import read_jsonl
from dnpo.judges import JudgeConfig, load_template, make_judge, openai_judge, render_judge_prompt
from dnpo.judges.openai_judge import OpenAIJudge
from dnpo.judges.runner import failures_path, judge_generations, raise_if_all_failed

QUESTION = [{"role": "user", "content": "What is 6 * 7?"}]


def make_config(server, tmp_path, **overrides):
    values = {
        "type": "openai",
        "model": "judge-test",
        "base_url": server.url,
        "api_key_env": "DNPO_TEST_JUDGE_KEY",
        "timeout": 0.5,
        "max_retries": 2,
        "max_concurrency": 4,
        "cache_path": str(tmp_path / "cache.sqlite"),
    }
    values.update(overrides)
    return JudgeConfig(**values)


def write_generations(path, rows):
    records = [
        {
            "id": item_id,
            "prompt": QUESTION,
            "reference": reference,
            "gold_answer": None,
            "generated": generated,
            "finish_reason": "stop",
            "prompt_tokens": 5,
            "completion_tokens": 3,
        }
        for item_id, reference, generated in rows
    ]
    path.write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8"
    )
    return path


def test_normal_answers_and_request_fields(chat_server, tmp_path, api_key):
    judge = OpenAIJudge(make_config(chat_server, tmp_path), load_template())
    results = judge.score([QUESTION] * 3, ["42 @@score=73@@", "It is 42.", "**Score:** 92"])
    assert [r.score for r in results] == [73, 61, 61]
    assert all(r.error is None and r.retries == 0 for r in results)
    assert results[0].raw == "73"
    assert results[0].prompt_tokens == 100
    assert results[0].completion_tokens == 3
    request = chat_server.requests_for("score=73")[0]
    assert request["body"]["model"] == "judge-test"
    assert request["body"]["temperature"] == 0
    assert request["body"]["max_tokens"] == 16
    assert request["content"] == render_judge_prompt(load_template(), QUESTION, "42 @@score=73@@")
    assert request["headers"]["authorization"] == f"Bearer {api_key}"


def test_rubric_template_is_default(chat_server, tmp_path, api_key):
    judge = OpenAIJudge(make_config(chat_server, tmp_path), load_template())
    judge.score([QUESTION], ["42"])
    content = chat_server.requests[0]["content"]
    assert content.startswith("You are tasked with evaluating the quality of the given answer")
    assert "avoiding scores that are always multiples of 5" in content
    assert content.endswith("Question: What is 6 * 7?\nanswer: 42\nScore:")


def test_custom_template_file(chat_server, tmp_path, api_key):
    template = tmp_path / "judge.txt"
    template.write_text("Q={question} A={answer} {answer}\n", encoding="utf-8")
    judge = make_judge(make_config(chat_server, tmp_path, template_file=str(template), cache=False))
    judge.score([QUESTION], ["x {question}"])
    assert chat_server.requests[0]["content"] == "Q=What is 6 * 7? A=x {question} x {question}"


def test_template_without_placeholders_rejected(chat_server, tmp_path, api_key):
    template = tmp_path / "judge.txt"
    template.write_text("Rate this: {answer}", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"lacks \{question\}"):
        make_judge(make_config(chat_server, tmp_path, template_file=str(template)))


def test_429_twice_then_success(chat_server, tmp_path, api_key):
    judge = OpenAIJudge(make_config(chat_server, tmp_path), load_template())
    [result] = judge.score([QUESTION], ["answer @@429x2@@"])
    assert result.score == 64
    assert result.error is None
    assert result.retries == 2
    retry_counts = [
        r["headers"].get("x-stainless-retry-count") for r in chat_server.requests_for("429x2")
    ]
    assert retry_counts == ["0", "1", "2"]


def test_timeout_fails_after_retries(chat_server, tmp_path, api_key):
    chat_server.hang_seconds = 2.0
    judge = OpenAIJudge(
        make_config(chat_server, tmp_path, timeout=0.3, max_retries=1), load_template()
    )
    [result] = judge.score([QUESTION], ["slow @@timeout@@"])
    assert result.score is None
    assert result.error.startswith("timeout:")
    assert result.retries == 1
    assert len(chat_server.requests_for("timeout")) == 2


@pytest.mark.parametrize("marker", ["badjson", "nochoices", "nullcontent"])
def test_malformed_bodies_fail_without_retry(chat_server, tmp_path, api_key, marker):
    judge = OpenAIJudge(make_config(chat_server, tmp_path), load_template())
    [result] = judge.score([QUESTION], [f"x @@{marker}@@"])
    assert result.score is None
    assert result.error.startswith("malformed:")
    assert result.retries == 0
    assert len(chat_server.requests_for(marker)) == 1


def test_refusal_is_parse_failure_with_text_kept(chat_server, tmp_path, api_key):
    judge = OpenAIJudge(make_config(chat_server, tmp_path), load_template())
    [result] = judge.score([QUESTION], ["x @@refuse@@"])
    assert result.score is None
    assert result.error.startswith("parse:")
    assert result.raw == "I cannot rate this answer."


def test_concurrency_is_bounded(chat_server, tmp_path, api_key):
    chat_server.delay = 0.1
    judge = OpenAIJudge(make_config(chat_server, tmp_path, max_concurrency=3), load_template())
    results = judge.score([QUESTION] * 9, [f"answer {i}" for i in range(9)])
    assert all(r.score == 61 for r in results)
    assert chat_server.max_in_flight == 3


def test_failures_not_cached_and_retried_on_rerun(chat_server, tmp_path, api_key):
    generations = write_generations(
        tmp_path / "generations.jsonl",
        [
            ("ok1", "ref one", "gen one @@score=70@@"),
            ("flaky", "ref two", "gen two @@503x3@@"),
            ("ok2", "ref three", "gen three"),
        ],
    )
    output = tmp_path / "judgments.jsonl"
    config = make_config(chat_server, tmp_path, max_retries=1)

    judge = make_judge(config)
    first = judge_generations(judge, generations, output, batch_size=2)
    assert first["failed_items"] == 1
    assert first["failed_calls"] == 1
    assert first["failed_calls/api"] == 1
    assert first["retries"] == 1
    assert sorted(r["id"] for r in read_jsonl(output)) == ["ok1", "ok2"]
    [failed] = read_jsonl(failures_path(output))
    assert failed["id"] == "flaky"
    assert failed["generated"]["score"] is None
    assert "HTTP 503" in failed["generated"]["error"]
    assert failed["reference"]["score"] == 61
    assert len(judge.cache) == 5
    judge.close()

    judge = make_judge(config)
    second = judge_generations(judge, generations, output, batch_size=2)
    assert second["already_done"] == 2
    assert second["failed_items"] == 0
    assert second["cached"] == 1
    assert sorted(r["id"] for r in read_jsonl(output)) == ["flaky", "ok1", "ok2"]
    assert not failures_path(output).exists()
    assert len(chat_server.requests_for("503x3")) == 4
    assert len([r for r in chat_server.requests if "ref two" in r["content"]]) == 1
    judge.close()

    requests_before = len(chat_server.requests)
    judge = make_judge(config)
    third = judge_generations(judge, generations, output, batch_size=2)
    assert third["already_done"] == 3
    assert len(chat_server.requests) == requests_before
    judge.close()


def test_api_key_never_logged_or_written(chat_server, tmp_path, api_key, caplog):
    generations = write_generations(
        tmp_path / "generations.jsonl",
        [
            ("a", "ref @@echoauth@@", "gen @@429x2@@"),
            ("b", "ref", "gen @@badjson@@"),
            ("c", "ref", "gen @@score=80@@"),
        ],
    )
    output = tmp_path / "judgments.jsonl"
    with caplog.at_level(logging.DEBUG):
        judge = make_judge(make_config(chat_server, tmp_path))
        stats = judge_generations(judge, generations, output)
        judge.close()
    assert stats["failed_items"] == 2
    assert all(r["headers"]["authorization"] == f"Bearer {api_key}" for r in chat_server.requests)
    [echoed] = [r for r in read_jsonl(failures_path(output)) if r["id"] == "a"]
    assert "[API key]" in echoed["reference"]["error"]
    assert "HTTP 401" in echoed["reference"]["error"]
    assert api_key not in caplog.text
    assert "Retrying request" in caplog.text
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert api_key.encode() not in path.read_bytes(), path


def test_missing_key_without_base_url_is_config_error(monkeypatch, tmp_path):
    monkeypatch.delenv("DNPO_UNSET_KEY", raising=False)
    config = JudgeConfig(type="openai", model="m", api_key_env="DNPO_UNSET_KEY")
    with pytest.raises(ConfigError, match="DNPO_UNSET_KEY is not set"):
        OpenAIJudge(config, load_template())


def test_local_server_works_without_key(chat_server, tmp_path, monkeypatch):
    monkeypatch.delenv("DNPO_UNSET_KEY", raising=False)
    judge = OpenAIJudge(
        make_config(chat_server, tmp_path, api_key_env="DNPO_UNSET_KEY"), load_template()
    )
    [result] = judge.score([QUESTION], ["x"])
    assert result.score == 61


def test_unicode_round_trips_through_prompt_and_cache(chat_server, tmp_path, api_key):
    prompt = [{"role": "user", "content": "Quelle est la capitale ? 🇫🇷 日本語"}]
    response = "Paris 🗼 — ça va ✓ @@score=77@@"
    judge = make_judge(make_config(chat_server, tmp_path))
    [first] = judge.score([prompt], [response])
    [request] = chat_server.requests
    assert request["content"] == render_judge_prompt(load_template(), prompt, response)
    assert "🇫🇷 日本語" in request["content"]
    assert "Paris 🗼 — ça va ✓" in request["content"]
    [second] = judge.score([prompt], [response])
    assert len(chat_server.requests) == 1
    assert second.cached
    assert (second.score, second.raw) == (first.score, first.raw) == (77, "77")
    judge.close()
    with sqlite3.connect(tmp_path / "cache.sqlite") as connection:
        stored_prompt, stored_response = connection.execute(
            "SELECT prompt, response FROM judgments"
        ).fetchone()
    assert stored_response == response
    assert "🇫🇷 日本語" in stored_prompt


def test_unset_key_for_remote_url_warns_once(monkeypatch, caplog, tmp_path):
    monkeypatch.delenv("DNPO_UNSET_KEY", raising=False)
    monkeypatch.setattr(openai_judge, "_WARNED_KEY_VARIABLES", set())
    config = JudgeConfig(
        type="openai",
        model="m",
        base_url="https://judge.example.invalid/v1",
        api_key_env="DNPO_UNSET_KEY",
    )
    with caplog.at_level(logging.WARNING, logger="dnpo.judges.openai_judge"):
        for _ in range(2):
            OpenAIJudge(config, load_template()).close()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "DNPO_UNSET_KEY is not set" in warnings[0].getMessage()


@pytest.mark.parametrize(
    "base_url", ["http://127.0.0.1:8000/v1", "http://localhost:8000/v1", "http://[::1]:8000/v1"]
)
def test_unset_key_for_local_url_not_warned(monkeypatch, caplog, base_url):
    monkeypatch.delenv("DNPO_UNSET_KEY", raising=False)
    monkeypatch.setattr(openai_judge, "_WARNED_KEY_VARIABLES", set())
    config = JudgeConfig(type="openai", model="m", base_url=base_url, api_key_env="DNPO_UNSET_KEY")
    with caplog.at_level(logging.WARNING, logger="dnpo.judges.openai_judge"):
        OpenAIJudge(config, load_template()).close()
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


def judge_cli_args(server, tmp_path, generations):
    return [
        "judge",
        "--generations",
        str(generations),
        "--output",
        str(tmp_path / "judgments.jsonl"),
        "--type",
        "openai",
        "--model",
        "judge-test",
        "--base-url",
        server.url,
        "--api-key-env",
        "DNPO_TEST_JUDGE_KEY",
        "--max-retries",
        "0",
        "--cache",
        "false",
    ]


def test_cli_all_items_failed_exits_nonzero(chat_server, tmp_path, api_key, capsys):
    generations = write_generations(
        tmp_path / "generations.jsonl",
        [(f"item{i}", f"ref {i} @@500@@", f"gen {i} @@500@@") for i in range(3)],
    )
    code = cli_main(judge_cli_args(chat_server, tmp_path, generations))
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert code != 0
    assert len(errors) == 1
    err = errors[0]
    assert err.startswith("dnpo judge: error: all 3 judged items failed")
    assert "most common error kind is api (6 of 6 failed calls)" in err
    assert "rerunning the same command retries them" in err
    assert len(read_jsonl(failures_path(tmp_path / "judgments.jsonl"))) == 3


def test_cli_some_items_failed_exits_zero(chat_server, tmp_path, api_key, capsys):
    generations = write_generations(
        tmp_path / "generations.jsonl",
        [("bad", "ref @@500@@", "gen @@500@@"), ("good", "ref", "gen")],
    )
    code = cli_main(judge_cli_args(chat_server, tmp_path, generations))
    assert code == 0
    assert json.loads(capsys.readouterr().out)["failed_items"] == 1


def test_all_failed_check_counts_earlier_runs():
    stats = {"items": 3, "already_done": 2, "failed_items": 1, "failed_calls/parse": 1}
    raise_if_all_failed(stats, "judgments.jsonl")
    stats = {
        "items": 3,
        "already_done": 0,
        "failed_items": 3,
        "failed_calls": 5,
        "failed_calls/parse": 1,
        "failed_calls/timeout": 4,
    }
    with pytest.raises(JudgeStageError, match=r"kind is timeout \(4 of 5 failed calls\)"):
        raise_if_all_failed(stats, "judgments.jsonl")
    raise_if_all_failed({"items": 0, "already_done": 0, "failed_items": 0}, "judgments.jsonl")
