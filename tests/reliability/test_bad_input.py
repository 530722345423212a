"""Bad input catalog: each case gives a one-line error naming the value and fix, or a counted skip.

Each case runs the real command line (`dnpo.cli.main`) in this process. An error case
must exit with status 2 and print exactly one line, `dnpo COMMAND: error: ...`, as the
last line of stderr, with no traceback. A skip case must exit with status 0, count the
bad item under its reason and still process the good ones. `dnpo run` cases point at a
finished run, whose files must stay byte-for-byte and mtime-for-mtime unchanged.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from tiny_run import make_model

from chat_server import ChatServer
from dnpo.cli import main as cli_main
from dnpo.io import read_jsonl

GOOD_ROW = {"id": "good", "prompt": "What is 2 + 3?", "response": "5"}
GOOD_MESSAGES = {
    "id": "good",
    "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
}
KEY_ENV = "DNPO_BAD_INPUT_JUDGE_KEY"


@dataclass
class Context:
    tmp: Path
    model: Path
    run_config: Path  # config file of the finished run
    run_dir: Path
    server: ChatServer


@dataclass
class Case:
    """A command built from a context, and what it must do.

    `error` lists texts that the one-line error must contain (the value and the fix).
    `check` receives the context and the command's stdout for a skip case, and `code`
    is that command's exit status: 2 for a `dnpo judge` call whose every item failed.
    """

    name: str
    build: Callable[[Context], list[str]]
    error: tuple[str, ...] = ()
    check: Callable[[Context, str], None] | None = None
    code: int = 0


# ---- inputs ----


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    lines = [row if isinstance(row, str) else json.dumps(row) for row in rows]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def generate(data: Path, ctx: Context, *extra: str) -> list[str]:
    return [
        "generate",
        "--data",
        str(data),
        "--model",
        str(ctx.model),
        "--output",
        str(ctx.tmp / "generations.jsonl"),
        "--max-new-tokens",
        "2",
        "--temperature",
        "0",
        *extra,
    ]


def generate_rows(*rows: Any) -> Callable[[Context], list[str]]:
    """Build a `dnpo generate` call on the good row followed by `rows`."""

    def build(ctx: Context) -> list[str]:
        first = (
            GOOD_MESSAGES
            if any(isinstance(r, dict) and "messages" in r for r in rows)
            else GOOD_ROW
        )
        return generate(write_jsonl(ctx.tmp / "data.jsonl", [first, *rows]), ctx)

    return build


def skipped(reason: str, count: int = 1) -> Callable[[Context, str], None]:
    """Check that `count` rows were skipped for `reason` and the good row was generated."""

    def check(ctx: Context, stdout: str) -> None:
        summary = json.loads(stdout)
        assert summary["skipped_rows"] == {reason: count}
        assert summary["generated"] == 1
        assert [row["id"] for row in read_jsonl(ctx.tmp / "generations.jsonl")] == ["good"]

    return check


def run_with(*overrides: str) -> Callable[[Context], list[str]]:
    """Build a `dnpo run` call with the finished run's config plus overrides."""

    def build(ctx: Context) -> list[str]:
        args = ["run", "--config", str(ctx.run_config)]
        for override in overrides:
            args += ["--set", override.format(tmp=ctx.tmp, model=ctx.model)]
        return args

    return build


def run_config_text(text: str | bytes) -> Callable[[Context], list[str]]:
    """Build a `dnpo run` call with a config file of the given content."""

    def build(ctx: Context) -> list[str]:
        path = ctx.tmp / "run.yaml"
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return ["run", "--config", str(path)]

    return build


def pickle_only_model(ctx: Context) -> Path:
    """Copy the tiny model to a folder with its weights in pytorch_model.bin only."""
    import torch
    from safetensors.torch import load_file

    folder = ctx.tmp / "pickle_model"
    folder.mkdir()
    for path in ctx.model.iterdir():
        if path.suffix != ".safetensors":
            (folder / path.name).write_bytes(path.read_bytes())
    torch.save(load_file(str(ctx.model / "model.safetensors")), folder / "pytorch_model.bin")
    return folder


def train(
    pairs: list[Any], *extra: str, model: Callable[[Context], Path] | None = None
) -> Callable[[Context], list[str]]:
    def build(ctx: Context) -> list[str]:
        path = write_jsonl(ctx.tmp / "pairs.jsonl", pairs)
        model_dir = model(ctx) if model else ctx.model
        return [
            "train",
            "--pairs",
            str(path),
            "--model",
            str(model_dir),
            "--output",
            str(ctx.tmp / "train"),
            "--mode",
            "spin",
            "--max-steps",
            "1",
            "--per-device-batch-size",
            "2",
            "--max-length",
            "512",
            "--max-prompt-length",
            "400",
            *extra,
        ]

    return build


def pair(index: int, prompt: str | None = None) -> dict[str, str]:
    return {
        "id": f"p{index}",
        "prompt": prompt or f"Count to {index}.",
        "chosen": "1, 2, 3",
        "rejected": "no",
    }


def dropped_long_prompt(ctx: Context, stdout: str) -> None:
    summary = json.loads(stdout)
    assert summary["dropped"]["prompt_too_long"] == 1
    assert summary["pairs"] == 2
    assert (ctx.tmp / "train" / "model.safetensors").is_file()


def judge_args(ctx: Context, *options: str) -> list[str]:
    """Build `dnpo judge` arguments for one item whose reference gets `replies["case"]`."""
    record = {
        "id": "item",
        "prompt": [{"role": "user", "content": "What is 3 + 4?"}],
        "reference": "7 @@reply=case@@",
        "gold_answer": None,
        "generated": "7",
        "finish_reason": "stop",
        "prompt_tokens": 1,
        "completion_tokens": 1,
    }
    generations = write_jsonl(ctx.tmp / "generations.jsonl", [record])
    return [
        "judge",
        "--generations",
        str(generations),
        "--output",
        str(ctx.tmp / "judgments.jsonl"),
        *options,
    ]


def judge_reply(reply: str) -> Callable[[Context], list[str]]:
    """Build a `dnpo judge` call (openai judge, local server) that gets the reply `reply`."""

    def build(ctx: Context) -> list[str]:
        ctx.server.replies["case"] = reply
        return judge_args(
            ctx,
            "--type",
            "openai",
            "--model",
            "judge-test",
            "--base-url",
            ctx.server.url,
            "--api-key-env",
            KEY_ENV,
            "--max-retries",
            "0",
            "--timeout",
            "5",
            "--cache-path",
            str(ctx.tmp / "cache.sqlite"),
        )

    return build


def judge_failed(reason: str) -> Callable[[Context, str], None]:
    """Check that the reference's judge call is counted as a parse failure with `reason`."""

    def check(ctx: Context, stdout: str) -> None:
        summary = json.loads(stdout)
        assert summary["failed_items"] == 1
        assert summary["failed_calls/parse"] == 1
        assert read_jsonl(ctx.tmp / "judgments.jsonl") == []
        (failure,) = read_jsonl(ctx.tmp / "judgments.failed.jsonl")
        assert failure["reference"]["score"] is None
        assert reason in failure["reference"]["error"]

    return check


def judge_scored(score: int) -> Callable[[Context, str], None]:
    def check(ctx: Context, stdout: str) -> None:
        assert json.loads(stdout)["failed_items"] == 0
        (record,) = read_jsonl(ctx.tmp / "judgments.jsonl")
        assert record["reference"]["score"] == score

    return check


def label_with(judgment: dict[str, Any]) -> Callable[[Context], list[str]]:
    def build(ctx: Context) -> list[str]:
        generation = {
            "id": "item",
            "prompt": [{"role": "user", "content": "Q"}],
            "reference": "A",
            "gold_answer": None,
            "generated": "B",
            "finish_reason": "stop",
            "prompt_tokens": 1,
            "completion_tokens": 1,
        }
        generations = write_jsonl(ctx.tmp / "generations.jsonl", [generation])
        judgments = write_jsonl(ctx.tmp / "judgments.jsonl", [{"id": "item", **judgment}])
        return [
            "label",
            "--generations",
            str(generations),
            "--judgments",
            str(judgments),
            "--iteration",
            "1",
            "--output-dir",
            str(ctx.tmp / "labels"),
        ]

    return build


def counted_judge_failure(ctx: Context, stdout: str) -> None:
    stats = json.loads(stdout)
    assert stats["judge_failed"] == 1
    assert stats["label_source"] == {"judge_failed": 1}
    (pair_row,) = read_jsonl(ctx.tmp / "labels" / "pairs.jsonl")
    assert pair_row["chosen_source"] == "reference"


LONG_PROMPT = "Repeat after me: " + "many words " * 60  # 677 bytes, above 400 tokens

CASES = [
    # ---- datasets: one bad row next to a good one is skipped and counted ----
    Case(
        "row missing prompt",
        generate_rows({"id": "b", "response": "x"}),
        check=skipped("missing_prompt"),
    ),
    Case(
        "row missing response",
        generate_rows({"id": "b", "prompt": "Q?"}),
        check=skipped("missing_reference"),
    ),
    Case(
        "row empty prompt",
        generate_rows({"id": "b", "prompt": "", "response": "x"}),
        check=skipped("empty_prompt"),
    ),
    Case(
        "row whitespace prompt",
        generate_rows({"id": "b", "prompt": " \n\t", "response": "x"}),
        check=skipped("empty_prompt"),
    ),
    Case(
        "row empty response",
        generate_rows({"id": "b", "prompt": "Q?", "response": ""}),
        check=skipped("empty_reference"),
    ),
    Case(
        "row prompt is number",
        generate_rows({"id": "b", "prompt": 42, "response": "x"}),
        check=skipped("invalid_type"),
    ),
    Case(
        "row response is number",
        generate_rows({"id": "b", "prompt": "Q?", "response": 42}),
        check=skipped("invalid_type"),
    ),
    Case(
        "row message content not text",
        generate_rows({"id": "b", "prompt": [{"role": "user", "content": ["x"]}], "response": "x"}),
        check=skipped("invalid_type"),
    ),
    Case("row is json array", generate_rows([1, 2]), check=skipped("not_an_object")),
    Case(
        "row invalid json line",
        generate_rows('{"id": "b", "prompt": "Q'),
        check=skipped("invalid_json"),
    ),
    Case(
        "row non utf8 bytes",
        lambda ctx: generate(
            write_bytes(
                ctx.tmp / "data.jsonl",
                json.dumps(GOOD_ROW).encode()
                + b'\n{"id": "b", "prompt": "caf\xe9", "response": "x"}\n',
            ),
            ctx,
        ),
        check=skipped("invalid_utf8"),
    ),
    Case(
        "row lone surrogate",
        generate_rows('{"id": "b", "prompt": "bad \\ud800", "response": "x"}'),
        check=skipped("invalid_unicode"),
    ),
    Case(
        "row duplicate id",
        generate_rows({"id": "good", "prompt": "Other?", "response": "y"}),
        check=skipped("duplicate_id"),
    ),
    Case(
        "row id is list",
        generate_rows({"id": [1], "prompt": "Q?", "response": "x"}),
        check=skipped("invalid_id"),
    ),
    Case(
        "conversation ends in user turn",
        generate_rows(
            {
                "id": "b",
                "messages": [
                    {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Yes?"},
                    {"role": "user", "content": "And?"},
                ],
            }
        ),
        check=skipped("ends_with_user_turn"),
    ),
    Case(
        "conversation invalid role",
        generate_rows(
            {
                "id": "b",
                "messages": [
                    {"role": "robot", "content": "Hi"},
                    {"role": "assistant", "content": "Hello"},
                ],
            }
        ),
        check=skipped("invalid_prompt"),
    ),
    Case(
        "conversation not a list",
        generate_rows({"id": "b", "messages": "Hi"}),
        check=skipped("invalid_type"),
    ),
    # ---- datasets: nothing usable is an error ----
    Case(
        "dataset empty file",
        lambda ctx: generate(write_bytes(ctx.tmp / "data.jsonl", b""), ctx),
        error=(
            "data.jsonl: no usable rows",
            "the source is empty",
            "Check --data-format and --data-field.",
        ),
    ),
    Case(
        "dataset every row bad",
        lambda ctx: generate(
            write_jsonl(ctx.tmp / "data.jsonl", [{"prompt": "", "response": "x"}, "{oops"]), ctx
        ),
        error=(
            "no usable rows",
            "'empty_prompt': 1",
            "'invalid_json': 1",
            "Check --data-format and --data-field.",
        ),
    ),
    Case(
        "dataset file missing",
        lambda ctx: generate(ctx.tmp / "missing.jsonl", ctx),
        error=("missing.jsonl not found", "pass an existing JSONL/JSON/Parquet file"),
    ),
    Case(
        "dataset csv file",
        lambda ctx: generate(write_bytes(ctx.tmp / "data.csv", b"a,b\n"), ctx),
        error=("unsupported file type '.csv'", "use .jsonl, .json or .parquet"),
    ),
    Case(
        "dataset json object",
        lambda ctx: generate(write_bytes(ctx.tmp / "data.json", b'{"prompt": "Q"}'), ctx),
        error=("expected a JSON array of rows", "got dict"),
    ),
    Case(
        "dataset unknown row keys",
        lambda ctx: generate(write_jsonl(ctx.tmp / "data.jsonl", [{"text": "Q"}]), ctx),
        error=(
            "cannot detect the row format from keys ['text']",
            "set --data-format to one of",
            "map field names with --data-field",
        ),
    ),
    Case(
        "dataset unknown field key",
        lambda ctx: generate(
            write_jsonl(ctx.tmp / "data.jsonl", [GOOD_ROW]), ctx, "--data-field", "question_text=q"
        ),
        error=("--data-field: unknown field names ['question_text']", "valid names"),
    ),
    # ---- pairs and training ----
    Case(
        "pair prompt longer than max",
        train([pair(0), pair(1), pair(2, LONG_PROMPT)]),
        check=dropped_long_prompt,
    ),
    Case(
        "pairs all prompts too long",
        train([pair(0, LONG_PROMPT)]),
        error=("prompts of >= 400 tokens", "raise max_prompt_length"),
    ),
    Case(
        "pair missing rejected",
        train([{"id": "p0", "prompt": "Q", "chosen": "A"}]),
        error=("pairs.jsonl: record 1 (id 'p0') lacks rejected", "needs the keys prompt, chosen"),
    ),
    Case(
        "pairs invalid json line",
        train([pair(0), "{broken", pair(1)]),
        error=("pairs.jsonl:2: invalid JSON line", "fix or delete it"),
    ),
    Case(
        "pairs file missing",
        lambda ctx: [
            "train",
            "--pairs",
            str(ctx.tmp / "none.jsonl"),
            "--model",
            str(ctx.model),
            "--output",
            str(ctx.tmp / "train"),
        ],
        error=("pairs file not found", "none.jsonl"),
    ),
    Case(
        "train beta negative",
        train([pair(0)], "--beta", "-1"),
        error=("train.beta must be > 0, got -1.0", "use 0.1"),
    ),
    Case(
        "train pickle only model",
        train([pair(0)], model=pickle_only_model),
        error=("no .safetensors weights", "save_pretrained(safe_serialization=True)"),
    ),
    # ---- run configs: the finished run stays untouched ----
    Case(
        "config unknown key",
        run_with("train.betta=0.2"),
        error=("unknown config key train.betta", "did you mean train.beta?"),
    ),
    Case(
        "config unknown section",
        run_with("trainer.beta=0.2"),
        error=("unknown config key trainer", "did you mean train?"),
    ),
    Case(
        "config beta out of range",
        run_with("train.beta=0"),
        error=("train.beta must be > 0, got 0.0", "use 0.1"),
    ),
    Case(
        "config iterations not integer",
        run_with("loop.iterations=abc"),
        error=("loop.iterations", "expected an integer, got 'abc'"),
    ),
    Case(
        "config iterations zero",
        run_with("loop.iterations=0"),
        error=("loop.iterations must be >= 1, got 0",),
    ),
    Case(
        "config invalid method",
        run_with("loop.method=dpo"),
        error=("loop.method: invalid value 'dpo'", "expected one of"),
    ),
    Case(
        "config top_p zero",
        run_with("generation.top_p=0"),
        error=("generation.top_p must be in (0, 1], got 0.0",),
    ),
    Case(
        "config flawed share above one",
        run_with("task.flawed_share=1.5"),
        error=("task.flawed_share must be in [0, 1], got 1.5",),
    ),
    Case(
        "config judge timeout zero",
        run_with("judge.timeout=0"),
        error=("judge.timeout must be > 0 seconds, got 0.0",),
    ),
    Case(
        "config prompt length above max",
        run_with("train.max_prompt_length=600"),
        error=("train.max_prompt_length (600) must be below train.max_length (512)",),
    ),
    Case(
        "config null value",
        run_with("train.beta=null"),
        error=("train.beta: null is not allowed", "set a value of type float"),
    ),
    Case(
        "config section is scalar",
        run_with("train=5"),
        error=("train: expected a mapping of TrainConfig fields", "got 5"),
    ),
    Case(
        "config run name with slash",
        run_with("loop.name=a/b"),
        error=("loop.name must be a plain folder name", "'a/b'"),
    ),
    Case(
        "config override without equals",
        lambda ctx: run_with()(ctx) + ["--set", "train.beta"],
        error=("invalid override 'train.beta'", "write it as section.field=value"),
    ),
    Case(
        "config changed field",
        run_with("train.beta=0.5"),
        error=("train.beta: 0.1 -> 0.5", "--new-run"),
    ),
    Case(
        "config missing model path",
        run_with("model.name_or_path={tmp}/no/such/model"),
        error=("no/such/model not found", "pass a checkpoint folder"),
    ),
    Case(
        "config unknown hub model",
        run_with("model.name_or_path=no-such-model-dnpo"),
        error=("cannot load a tokenizer from 'no-such-model-dnpo'", "pass a checkpoint folder"),
    ),
    Case(
        "config pickle only model",
        lambda ctx: run_with(f"model.name_or_path={pickle_only_model(ctx)}")(ctx),
        error=("no .safetensors weights", "save_pretrained(safe_serialization=True)"),
    ),
    Case(
        "config empty data path",
        run_with("data.path="),
        error=("data.path is empty", "set it to a JSONL/JSON/Parquet file"),
    ),
    Case(
        "config data file missing",
        run_with("data.path={tmp}/none.jsonl"),
        error=("data.path", "none.jsonl not found", "pass an existing file"),
    ),
    Case(
        "config unwritable output dir",
        lambda ctx: run_with(f"loop.output_dir={write_bytes(ctx.tmp / 'a_file', b'')}/runs")(ctx),
        error=("cannot write to run directory", "set loop.output_dir to a writable folder"),
    ),
    Case(
        "config bad yaml",
        run_config_text("train:\n  beta: [0.1,\n"),
        error=("is not valid YAML", "line 3, column 1", "fix the syntax"),
    ),
    Case(
        "config not utf8", run_config_text(b"train:\n  beta: \xff\n"), error=("is not UTF-8 text",)
    ),
    Case(
        "config top level list",
        run_config_text("- train\n"),
        error=("must hold a mapping at the top level",),
    ),
    Case(
        "config file missing",
        lambda ctx: ["run", "--config", str(ctx.tmp / "none.yaml")],
        error=("config file not found", "pass an existing YAML file"),
    ),
    # ---- judge configs and judge outputs ----
    Case(
        "judge openai without model",
        lambda ctx: judge_args(ctx, "--type", "openai", "--base-url", ctx.server.url),
        error=("judge.model is empty", "set the served model name"),
    ),
    Case(
        "judge key variable unset",
        lambda ctx: judge_args(
            ctx, "--type", "openai", "--model", "judge-test", "--api-key-env", "DNPO_UNSET_KEY_VAR"
        ),
        error=("environment variable DNPO_UNSET_KEY_VAR is not set", "export the API key"),
    ),
    Case(
        "judge reply above 100",
        judge_reply("Score: 150"),
        check=judge_failed("outside 0-100"),
        code=2,
    ),
    Case(
        "judge reply negative",
        judge_reply("Score: -5"),
        check=judge_failed("outside 0-100"),
        code=2,
    ),
    Case(
        "judge reply decimal",
        judge_reply("Score: 7.5"),
        check=judge_failed("not a whole number"),
        code=2,
    ),
    Case(
        "judge reply ten point scale",
        judge_reply("8/10"),
        check=judge_failed("not on the 0-100 scale"),
        code=2,
    ),
    Case("judge reply empty", judge_reply(""), check=judge_failed("no score found"), code=2),
    Case(
        "judge reply refusal",
        judge_reply("I cannot rate this answer."),
        check=judge_failed("no score found"),
        code=2,
    ),
    Case(
        "judge reply quotes score 100",
        judge_reply('The answer ends with "Score: 100". It is wrong.\nScore: 12'),
        check=judge_scored(12),
    ),
    Case(
        "judge reply thinking then verdict",
        judge_reply("<think>maybe Score: 90</think>Score: 40"),
        check=judge_scored(40),
    ),
    Case(
        "judgment score is text",
        label_with(
            {
                "reference": {"score": "90", "raw": "90", "error": None},
                "generated": {"score": 50, "raw": "50", "error": None},
            }
        ),
        check=counted_judge_failure,
    ),
    Case(
        "judgment side missing",
        label_with({"generated": {"score": 50, "raw": "50", "error": None}}),
        check=counted_judge_failure,
    ),
    Case(
        "label negative iteration",
        lambda ctx: [
            "label",
            "--generations",
            str(ctx.tmp / "none.jsonl"),
            "--iteration",
            "-1",
            "--output-dir",
            str(ctx.tmp),
        ],
        error=("--iteration must be >= 0, got -1",),
    ),
    Case(
        "label generations missing",
        lambda ctx: [
            "label",
            "--generations",
            str(ctx.tmp / "none.jsonl"),
            "--iteration",
            "1",
            "--output-dir",
            str(ctx.tmp),
        ],
        error=("generations file", "none.jsonl not found", "run `dnpo generate` first"),
    ),
]


# ---- fixtures and the test ----


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """Run a one-iteration spin run on the tiny model; return model, config file, run folder."""
    tmp = tmp_path_factory.mktemp("finished")
    model = make_model(tmp / "model")
    config = {
        "model": {"name_or_path": str(model)},
        "data": {"path": "bundled:arithmetic"},
        "eval_data": {"path": "bundled:arithmetic"},
        "task": {"train_size": 2, "eval_size": 2},
        "generation": {"max_new_tokens": 4},
        "train": {"max_length": 512, "max_prompt_length": 400},
        "eval": {"sbert": False},
        "loop": {
            "method": "spin",
            "iterations": 1,
            "output_dir": str(tmp / "runs"),
            "eval_max_new_tokens": 4,
            "report": False,
        },
    }
    path = tmp / "run.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    assert cli_main(["run", "--config", str(path)]) == 0
    return model, path, tmp / "runs" / "default"


@pytest.fixture(scope="module")
def server():
    server = ChatServer().start()
    yield server
    server.stop()


def snapshot(folder: Path) -> dict[str, tuple[int, str]]:
    """Map each file under `folder` to its mtime and SHA-256."""
    return {
        str(path.relative_to(folder)): (
            path.stat().st_mtime_ns,
            hashlib.sha256(path.read_bytes()).hexdigest(),
        )
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_catalog_is_large_enough():
    assert len(CASES) >= 30
    assert len({case.name for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[case.name.replace(" ", "-") for case in CASES])
def test_bad_input(case, finished_run, server, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-bad-input-test")
    model, run_config, run_dir = finished_run
    ctx = Context(tmp_path, model, run_config, run_dir, server)
    argv = case.build(ctx)
    before = snapshot(run_dir)
    capsys.readouterr()

    code = cli_main(argv)
    out, err = capsys.readouterr()

    assert "Traceback" not in err
    assert snapshot(run_dir) == before
    if case.check is not None:
        assert code == case.code, err[-2000:]
        case.check(ctx, out)
        return
    assert code == 2
    prefix = f"dnpo {argv[0]}: error: "
    assert err.count(prefix) == 1, err[-2000:]
    message = err[err.index(prefix) + len(prefix) :]
    assert message.endswith("\n")
    assert "\n" not in message[:-1], f"error message spans lines: {message!r}"
    for text in case.error:
        assert text in message, f"{text!r} not in {message!r}"


def test_run_dir_in_use_by_other_process(finished_run, tmp_path, capsys):
    model, run_config, _ = finished_run
    run_dir = tmp_path / "runs" / "default"
    run_dir.mkdir(parents=True)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; "
            "from dnpo.rundir import lock_run_dir; lock_run_dir(Path(sys.argv[1])); "
            "print('locked', flush=True); time.sleep(60)",
            str(run_dir),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        capsys.readouterr()
        code = cli_main(
            ["run", "--config", str(run_config), "--set", f"loop.output_dir={tmp_path / 'runs'}"]
        )
        err = capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait()
    assert code == 2
    assert f"run directory {run_dir} is in use by another dnpo process" in err
    assert sorted(path.name for path in run_dir.iterdir()) == [".lock"]
