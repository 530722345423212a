import json
import re
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml

from dnpo.cli import main as dnpo_main
from dnpo.compare import compare_runs, judge_iteration
from dnpo.io import read_json, read_jsonl

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SCORE_MARK = re.compile(r"SCORE=(\d+)")


@dataclass
class Result:
    score: int | None
    raw: str
    error: str | None = None


class FakeJudge:
    """Scores an answer by the `SCORE=N` mark it carries; records the order of calls."""

    def __init__(self):
        self.calls = []

    def score(self, prompts, responses, gold_answers=None):
        assert len(prompts) == len(responses) == len(gold_answers)
        self.calls.append(list(responses))
        out = []
        for response in responses:
            match = SCORE_MARK.search(response)
            if match:
                out.append(Result(int(match.group(1)), match.group(1)))
            else:
                out.append(Result(None, "", "parse: no score found"))
        return out


def prompt(i):
    return [{"role": "user", "content": f"question {i}"}]


def write_run(
    path,
    answers_by_iteration,
    method="dnpo",
    judge=None,
    prompts=None,
    filename="generations.jsonl",
):
    """Write a run dir whose iter_K/`filename` contains the given answers by id."""
    path.mkdir(parents=True, exist_ok=True)
    config = {"loop": {"method": method}, "judge": judge or {"type": "openai", "model": "m"}}
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    for k, answers in answers_by_iteration.items():
        iter_dir = path / f"iter_{k}"
        iter_dir.mkdir(exist_ok=True)
        rows = [
            {
                "id": pid,
                "prompt": (prompts or {}).get(pid, prompt(pid)),
                "reference": "r",
                "gold_answer": None,
                "generated": text,
                "finish_reason": "stop",
            }
            for pid, text in answers.items()
        ]
        (iter_dir / filename).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def records(answers):
    return {
        pid: {"id": pid, "prompt": prompt(pid), "generated": text, "gold_answer": None}
        for pid, text in answers.items()
    }


def test_judge_iteration_counts_hand_checked():
    a = records({"1": "SCORE=80", "2": "SCORE=70", "3": "SCORE=60", "4": "SCORE=50"})
    b = records({"1": "SCORE=70", "2": "SCORE=70", "3": "SCORE=65", "4": "SCORE=40"})
    summary = judge_iteration(FakeJudge(), a, b, seed=0)["summary"]
    assert (summary["wins"], summary["ties"], summary["losses"]) == (2, 1, 1)
    assert summary["win_rate"] == 0.5
    assert summary["mean_score_a"] == 65.0
    assert summary["mean_score_b"] == pytest.approx(61.25)


def test_judge_iteration_failed_score_is_not_a_tie():
    a = records({"1": "SCORE=50", "2": "no mark"})
    b = records({"1": "SCORE=50", "2": "SCORE=50"})
    summary = judge_iteration(FakeJudge(), a, b, seed=0)["summary"]
    assert summary["ties"] == 1
    assert summary["judged"] == 1
    assert summary["failed"] == 1


def test_judge_iteration_skips_unshared_and_mismatched_prompts():
    a = records({"1": "SCORE=9", "2": "SCORE=9", "3": "SCORE=9"})
    b = records({"1": "SCORE=1", "2": "SCORE=1", "4": "SCORE=1"})
    b["2"]["prompt"] = [{"role": "user", "content": "another question"}]
    summary = judge_iteration(FakeJudge(), a, b, seed=0)["summary"]
    assert summary["prompts"] == 1
    assert summary["prompt_mismatch"] == 1
    assert summary["wins"] == 1


def test_judge_iteration_order_is_shuffled_and_seeded():
    ids = [str(i) for i in range(20)]
    a = records({i: f"A{i} SCORE=1" for i in ids})
    b = records({i: f"B{i} SCORE=1" for i in ids})
    first, again, other = FakeJudge(), FakeJudge(), FakeJudge()
    judge_iteration(first, a, b, seed=7)
    judge_iteration(again, a, b, seed=7)
    judge_iteration(other, a, b, seed=8)
    order = first.calls[0]
    assert sorted(order) == sorted([f"A{i} SCORE=1" for i in ids] + [f"B{i} SCORE=1" for i in ids])
    assert order == again.calls[0]
    assert order != other.calls[0]
    a_first = sum(order.index(f"A{i} SCORE=1") < order.index(f"B{i} SCORE=1") for i in ids)
    assert 0 < a_first < len(ids)  # neither run is always scored first


def test_judge_iteration_limit_samples_prompts():
    ids = [str(i) for i in range(10)]
    a = records({i: "SCORE=2" for i in ids})
    b = records({i: "SCORE=1" for i in ids})
    judge = FakeJudge()
    summary = judge_iteration(judge, a, b, seed=0, limit=4)["summary"]
    assert summary["prompts"] == 4
    assert len(judge.calls[0]) == 8


def test_compare_runs_writes_table_json_and_plot(tmp_path):
    run_a = write_run(
        tmp_path / "dnpo",
        {
            0: {"1": "SCORE=60", "2": "SCORE=60"},
            1: {"1": "SCORE=90", "2": "SCORE=80"},
            2: {"1": "SCORE=90"},  # run B has no iteration 2
        },
    )
    run_b = write_run(
        tmp_path / "spin",
        {
            0: {"1": "SCORE=60", "2": "SCORE=50"},
            1: {"1": "SCORE=70", "2": "SCORE=85"},
        },
        method="spin",
    )
    out = tmp_path / "out"
    report = compare_runs(run_a, run_b, FakeJudge(), out, seed=1)
    assert list(report["iterations"]) == ["0", "1"]
    assert report["iterations"]["0"]["ties"] == 1
    assert report["iterations"]["0"]["wins"] == 1
    assert report["iterations"]["1"]["wins"] == 1
    assert report["iterations"]["1"]["losses"] == 1
    assert read_json(out / "compare.json") == report
    markdown = (out / "compare.md").read_text()
    assert "| Iteration | Model | dnpo wins | Ties | spin wins |" in markdown
    # Without eval_generations.jsonl the training answers of the start model M_K are compared.
    assert report["source"] == "generations"
    assert "| 1 | M_1 | 50.0% | 0.0% | 50.0% | 2 | 0 | 85.00 | 77.50 |" in markdown
    assert "sampled answers to the training prompts (generations.jsonl)" in markdown
    assert (out / "compare.png").read_bytes().startswith(PNG_SIGNATURE)
    items = read_jsonl(out / "compare_items.jsonl")
    assert {(r["iteration"], r["id"]) for r in items} == {(0, "1"), (0, "2"), (1, "1"), (1, "2")}


def test_compare_runs_without_shared_iterations(tmp_path):
    run_a = write_run(tmp_path / "a", {0: {"1": "SCORE=1"}})
    run_b = write_run(tmp_path / "b", {1: {"1": "SCORE=1"}})
    with pytest.raises(FileNotFoundError, match="no iteration has generations.jsonl in both"):
        compare_runs(run_a, run_b, FakeJudge(), tmp_path / "out")


class ChatCompletionsHandler(BaseHTTPRequestHandler):
    """Chat-completions endpoint that replies with the SCORE=N mark found in the prompt."""

    requests = []

    def do_POST(self):  # noqa: N802 (http.server naming)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        content = body["messages"][-1]["content"]
        type(self).requests.append(content)
        match = SCORE_MARK.search(content)
        reply = match.group(1) if match else "no idea"
        payload = json.dumps(
            {
                "id": "cmpl-1",
                "object": "chat.completion",
                "created": 0,
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "stop",
                        "message": {"role": "assistant", "content": reply},
                    }
                ],
                "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11},
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def judge_server():
    pytest.importorskip("dnpo.judges.openai_judge")
    ChatCompletionsHandler.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), ChatCompletionsHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_cli_compare_with_local_judge_server(tmp_path, judge_server, capsys, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    judge = {
        "type": "openai",
        "model": "local-judge",
        "base_url": judge_server,
        "cache": False,
        "max_retries": 0,
        "timeout": 10,
    }
    run_a = write_run(tmp_path / "dnpo", {1: {"1": "SCORE=91", "2": "SCORE=40"}}, judge=judge)
    run_b = write_run(tmp_path / "spin", {1: {"1": "SCORE=62", "2": "SCORE=40"}}, judge=judge)
    out = tmp_path / "cmp"
    assert dnpo_main(["compare", str(run_a), str(run_b), "--out", str(out), "--seed", "3"]) == 0
    assert len(ChatCompletionsHandler.requests) == 4
    summary = read_json(out / "compare.json")["iterations"]["1"]
    assert (summary["wins"], summary["ties"], summary["losses"]) == (1, 1, 0)
    assert "| 1 | M_1 | 50.0% | 50.0% | 0.0% |" in capsys.readouterr().out


def test_cli_compare_judge_override_from_file(tmp_path, judge_server):
    run_a = write_run(tmp_path / "a", {0: {"1": "SCORE=3"}}, judge={"type": "verifier"})
    run_b = write_run(tmp_path / "b", {0: {"1": "SCORE=4"}}, judge={"type": "verifier"})
    config = tmp_path / "judge.yaml"
    config.write_text(
        yaml.safe_dump(
            {"judge": {"type": "openai", "model": "m", "cache": False, "base_url": judge_server}}
        )
    )
    assert (
        dnpo_main(
            [
                "compare",
                str(run_a),
                str(run_b),
                "--judge-config",
                str(config),
                "--judge",
                "max_retries=0",
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 0
    )
    summary = read_json(tmp_path / "o" / "compare.json")["iterations"]["0"]
    assert summary["losses"] == 1


def test_cli_compare_bad_iterations_flag(tmp_path, capsys):
    run_a = write_run(tmp_path / "a", {0: {"1": "SCORE=3"}})
    run_b = write_run(tmp_path / "b", {0: {"1": "SCORE=4"}})
    assert dnpo_main(["compare", str(run_a), str(run_b), "--iterations", "one"]) == 2
    assert "invalid --iterations" in capsys.readouterr().err


def test_cli_compare_iteration_not_in_both_runs(tmp_path, capsys):
    run_a = write_run(tmp_path / "a", {0: {"1": "SCORE=3"}, 1: {"1": "SCORE=3"}, 2: {"1": "S"}})
    run_b = write_run(tmp_path / "b", {0: {"1": "SCORE=4"}, 1: {"1": "SCORE=4"}})
    code = dnpo_main(["compare", str(run_a), str(run_b), "--iterations", "1,2"])
    err = capsys.readouterr().err
    assert code == 2
    assert "--iterations: iteration 2 does not have generations.jsonl in both" in err
    assert "the iterations present in both are 0,1" in err
    assert not list(run_a.glob("compare_vs_b*"))


def test_compare_runs_only_shared_iterations(tmp_path):
    run_a = write_run(tmp_path / "a", {0: {"1": "SCORE=3"}, 1: {"1": "SCORE=5"}})
    run_b = write_run(tmp_path / "b", {0: {"1": "SCORE=4"}, 1: {"1": "SCORE=4"}})
    report = compare_runs(run_a, run_b, FakeJudge(), tmp_path / "out", only_iterations=[1])
    assert list(report["iterations"]) == ["1"]
    assert report["iterations"]["1"]["wins"] == 1


def write_two_sources(path, generations, eval_generations, judge=None):
    """Write a run dir with both generations.jsonl and eval_generations.jsonl per iteration."""
    write_run(path, generations, judge=judge)
    return write_run(path, eval_generations, judge=judge, filename="eval_generations.jsonl")


def test_compare_runs_default_source_is_trained_models(tmp_path):
    # The training answers tie; the held-out answers of the trained models differ.
    same = {0: {"1": "SCORE=5"}, 1: {"1": "SCORE=5"}}
    run_a = write_two_sources(tmp_path / "a", same, {0: {"1": "SCORE=5"}, 1: {"1": "SCORE=9"}})
    run_b = write_two_sources(tmp_path / "b", same, {0: {"1": "SCORE=5"}, 1: {"1": "SCORE=1"}})
    out = tmp_path / "out"
    report = compare_runs(run_a, run_b, FakeJudge(), out)
    assert report["source"] == "eval_generations"
    assert report["iterations"]["0"]["ties"] == 1
    assert report["iterations"]["1"]["wins"] == 1
    markdown = (out / "compare.md").read_text()
    assert "greedy answers to the held-out prompts (eval_generations.jsonl)" in markdown
    assert "the last iteration compares the final models" in markdown
    assert "| 1 | M_2 | 100.0% | 0.0% | 0.0% |" in markdown


def test_compare_runs_explicit_generations_source(tmp_path):
    same = {0: {"1": "SCORE=5"}, 1: {"1": "SCORE=5"}}
    run_a = write_two_sources(tmp_path / "a", same, {0: {"1": "SCORE=9"}})
    run_b = write_two_sources(tmp_path / "b", same, {0: {"1": "SCORE=1"}})
    report = compare_runs(run_a, run_b, FakeJudge(), tmp_path / "out", source="generations")
    assert report["source"] == "generations"
    assert report["iterations"]["1"]["ties"] == 1


def test_compare_runs_falls_back_without_eval_generations(tmp_path, caplog):
    run_a = write_two_sources(tmp_path / "a", {0: {"1": "SCORE=9"}}, {0: {"1": "SCORE=9"}})
    run_b = write_run(tmp_path / "b", {0: {"1": "SCORE=1"}})
    with caplog.at_level("WARNING", logger="dnpo.compare"):
        report = compare_runs(run_a, run_b, FakeJudge(), tmp_path / "out")
    assert report["source"] == "generations"
    assert "do not both have eval_generations.jsonl" in caplog.text
    assert "training answers (generations.jsonl)" in caplog.text


def test_compare_runs_falls_back_for_requested_iterations(tmp_path, caplog):
    # Both runs have held-out answers of iteration 0 only, but iteration 1 is requested.
    answers = {0: {"1": "SCORE=4"}, 1: {"1": "SCORE=4"}}
    run_a = write_two_sources(tmp_path / "a", answers, {0: {"1": "SCORE=4"}})
    run_b = write_two_sources(tmp_path / "b", answers, {0: {"1": "SCORE=4"}})
    with caplog.at_level("WARNING", logger="dnpo.compare"):
        report = compare_runs(run_a, run_b, FakeJudge(), tmp_path / "out", only_iterations=[1])
    assert report["source"] == "generations"
    assert "for each of iterations 1" in caplog.text


def test_compare_runs_states_coverage(tmp_path, caplog):
    ids = [str(i) for i in range(12)]
    run_a = write_run(
        tmp_path / "big", {k: {i: "SCORE=5" for i in ids} for k in (0, 1, 2)}
    )
    run_b = write_run(tmp_path / "small", {k: {i: "SCORE=5" for i in ids[:4]} for k in (0, 1)})
    out = tmp_path / "out"
    with caplog.at_level("INFO", logger="dnpo.compare"):
        report = compare_runs(run_a, run_b, FakeJudge(), out)
    expected = (
        "Iterations compared: 0,1 of big's 0,1,2 and small's 0,1. "
        "Prompts compared per iteration: the 4 shared of big's 12 and small's 4."
    )
    assert expected in caplog.text
    assert expected in (out / "compare.md").read_text()
    assert report["coverage"]["iterations_a"] == [0, 1, 2]
    assert report["coverage"]["iterations_b"] == [0, 1]
    assert report["coverage"]["prompts"]["1"] == {"a": 12, "b": 4, "shared": 4}


def test_compare_runs_coverage_per_iteration(tmp_path):
    run_a = write_run(tmp_path / "a", {0: {"1": "SCORE=5", "2": "SCORE=5"}, 1: {"1": "SCORE=5"}})
    run_b = write_run(tmp_path / "b", {0: {"1": "SCORE=5", "2": "SCORE=5"}, 1: {"1": "SCORE=5"}})
    out = tmp_path / "out"
    compare_runs(run_a, run_b, FakeJudge(), out, limit=1)
    markdown = (out / "compare.md").read_text()
    assert "Prompts compared, shared of a's and b's: iteration 0: 2 of 2 and 2, " in markdown
    assert "iteration 1: 1 of 1 and 1." in markdown
    assert "--limit 1 judges at most that many of them per iteration." in markdown


def test_cli_compare_sources_write_separate_folders(tmp_path, judge_server, capsys):
    judge = {"type": "openai", "model": "m", "base_url": judge_server, "cache": False,
             "max_retries": 0, "timeout": 10}
    run_a = write_two_sources(tmp_path / "a", {0: {"1": "SCORE=5"}}, {0: {"1": "SCORE=9"}}, judge)
    run_b = write_two_sources(tmp_path / "b", {0: {"1": "SCORE=5"}}, {0: {"1": "SCORE=1"}}, judge)
    assert dnpo_main(["compare", str(run_a), str(run_b)]) == 0
    assert dnpo_main(["compare", str(run_a), str(run_b), "--source", "generations"]) == 0
    default = read_json(run_a / "compare_vs_b" / "compare.json")
    training = read_json(run_a / "compare_vs_b_generations" / "compare.json")
    assert default["source"] == "eval_generations"
    assert default["iterations"]["0"]["wins"] == 1
    assert training["source"] == "generations"
    assert training["iterations"]["0"]["ties"] == 1
    assert "compare_vs_b_generations" in capsys.readouterr().out


def test_cli_compare_help_names_compared_models(capsys):
    with pytest.raises(SystemExit):
        dnpo_main(["compare", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "of the model each iteration trained (M_{K+1})" in help_text
    assert "Default: eval_generations when both runs have it, else generations" in help_text
