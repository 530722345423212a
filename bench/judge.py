"""Items per second of the openai judge against a local server that replies after a delay.

The script starts a threaded chat-completions server on 127.0.0.1 (a free port), in a
child process, that waits --latency seconds and replies `Score: 73`. A judge built by
`dnpo.judges.make_judge` (type openai, the cache off) scores distinct items at each
--concurrency c. A repetition scores max(--min-items, 4 c) items in one `score` call;
concurrencies run in turn, median of --reps after --warmup. The bound is c / latency
items per second, and the goal is 80% of it.

Cache: with the SQLite cache on (a fresh file in a temporary folder per repetition),
the first call on the items fills the cache and the second one is served from it. The
server counts requests, so the rerun is checked to send none.

    python bench/judge.py
    python bench/judge.py --concurrency 1,8,32 --append docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from benchlib import append_report, header_lines, load_average

from dnpo.judges import Judge, JudgeConfig, make_judge

logger = logging.getLogger("bench.judge")

KEY_ENV = "DNPO_BENCH_JUDGE_KEY"
EFFICIENCY_GOAL = 0.8
REPLY = "Score: 73"


class ChatHandler(BaseHTTPRequestHandler):
    """Reply to every chat-completions POST with `Score: 73` after the server's latency."""

    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes. With Nagle's algorithm on, the body waits for
    # the client's delayed ACK of the headers (about 40 ms on Linux), which skews every latency.
    disable_nagle_algorithm = True

    def do_POST(self) -> None:  # noqa: N802 (http.server's method name)
        length = int(self.headers.get("Content-Length", 0))
        request = json.loads(self.rfile.read(length) or b"{}")
        with self.server.request_count.get_lock():
            self.server.request_count.value += 1
        time.sleep(self.server.latency)
        body = json.dumps({
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": request.get("model", ""),
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": REPLY}}],
            "usage": {"prompt_tokens": 100, "completion_tokens": 3, "total_tokens": 103},
        }).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        """Keep the server quiet; the benchmark prints its own table."""


class ChatServer(ThreadingHTTPServer):
    daemon_threads = True
    # The default listen backlog of 5 drops connection attempts when 32 clients connect at
    # once, and each dropped SYN costs a 1 s retransmission.
    request_queue_size = 128


def serve(latency: float, request_count: Any, port: Any) -> None:
    """Serve on 127.0.0.1 at a free port, published through `port`, until terminated."""
    httpd = ChatServer(("127.0.0.1", 0), ChatHandler)
    httpd.latency = latency
    httpd.request_count = request_count
    port.value = httpd.server_address[1]
    httpd.serve_forever()


class DelayedChatServer:
    """The chat server in a child process, so its Python work does not take the judge's GIL."""

    def __init__(self, latency: float) -> None:
        self._requests = multiprocessing.Value("l", 0)
        self._port = multiprocessing.Value("i", 0)
        self.process = multiprocessing.Process(
            target=serve, args=(latency, self._requests, self._port), daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port.value}/v1"

    @property
    def requests(self) -> int:
        return self._requests.value

    def __enter__(self) -> DelayedChatServer:
        self.process.start()
        deadline = time.monotonic() + 30
        while self._port.value == 0:
            if not self.process.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the local chat server did not start within 30 s")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.process.terminate()
        self.process.join(timeout=10)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", default="1,8,32",
                        help="comma-separated judge.max_concurrency values (default: 1,8,32)")
    parser.add_argument("--latency", type=float, default=0.1,
                        help="seconds the server waits before each reply (default: 0.1)")
    parser.add_argument("--min-items", type=int, default=16,
                        help="items per call at least; a call has max(this, 4 c) (default: 16)")
    parser.add_argument("--cache-items", type=int, default=128,
                        help="items in the cache fill and rerun calls (default: 128)")
    parser.add_argument("--cache-concurrency", type=int, default=JudgeConfig.max_concurrency,
                        help=f"concurrency of the cache runs (default: {JudgeConfig.max_concurrency})")
    parser.add_argument("--reps", type=int, default=5, help="timed calls per setting (default: 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per setting (default: 1)")
    parser.add_argument("--append", metavar="FILE",
                        help="append the result table, machine and command to this Markdown file")
    args = parser.parse_args(argv)
    args.concurrency = [int(value) for value in args.concurrency.split(",") if value.strip()]
    if not args.concurrency or min(args.concurrency) < 1:
        parser.error(f"--concurrency must be positive integers, got {args.concurrency}")
    if args.latency <= 0 or args.reps < 1 or args.warmup < 0:
        parser.error("--latency must be > 0, --reps >= 1 and --warmup >= 0")
    return args


def make_items(count: int, tag: str) -> tuple[list[list[dict]], list[str]]:
    """Return `count` distinct (prompt, response) pairs; `tag` keeps calls apart."""
    prompts = [[{"role": "user", "content": f"What is {i} + {i}? ({tag})"}] for i in range(count)]
    responses = [f"{i} + {i} = {2 * i}.\n#### {2 * i}" for i in range(count)]
    return prompts, responses


def judge_config(url: str, concurrency: int, cache_path: str = "") -> JudgeConfig:
    return JudgeConfig(type="openai", base_url=url, model="bench-judge", api_key_env=KEY_ENV,
                       max_concurrency=concurrency, cache=bool(cache_path),
                       cache_path=cache_path, max_retries=0, timeout=30.0)


def timed_score(judge: Judge, prompts: list, responses: list[str]) -> float:
    """Return the seconds of one `score` call; raise if an item failed."""
    start = time.perf_counter()
    results = judge.score(prompts, responses)
    seconds = time.perf_counter() - start
    failed = [r.error for r in results if not r.ok]
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(results)} judge items failed, e.g. {failed[0]}")
    return seconds


def measure_concurrency(server: DelayedChatServer, args: argparse.Namespace) -> dict[int, dict]:
    """Return per concurrency the items per call and the median items per second."""
    judges = {c: make_judge(judge_config(server.url, c)) for c in args.concurrency}
    rates: dict[int, list[float]] = {c: [] for c in args.concurrency}
    for rep in range(args.warmup + args.reps):
        for concurrency, judge in judges.items():
            prompts, responses = make_items(max(args.min_items, 4 * concurrency), f"{rep}-{concurrency}")
            seconds = timed_score(judge, prompts, responses)
            if rep >= args.warmup:
                rates[concurrency].append(len(prompts) / seconds)
    for judge in judges.values():
        judge.close()
    return {c: {"items": max(args.min_items, 4 * c), "rate": statistics.median(rates[c])}
            for c in args.concurrency}


def measure_cache(server: DelayedChatServer, args: argparse.Namespace) -> dict[str, float]:
    """Time a cache-filling call and a rerun served from the cache, with a fresh file per rep."""
    fill, rerun = [], []
    with tempfile.TemporaryDirectory() as folder:
        for rep in range(args.warmup + args.reps):
            path = str(Path(folder) / f"judge_cache_{rep}.sqlite")
            judge = make_judge(judge_config(server.url, args.cache_concurrency, cache_path=path))
            prompts, responses = make_items(args.cache_items, f"cache-{rep}")
            fill_seconds = timed_score(judge, prompts, responses)
            requests_before = server.requests
            rerun_seconds = timed_score(judge, prompts, responses)
            if server.requests != requests_before:
                raise RuntimeError(f"the cached rerun sent {server.requests - requests_before} "
                                   "requests; every item should have come from the cache")
            judge.close()
            if rep >= args.warmup:
                fill.append(fill_seconds)
                rerun.append(rerun_seconds)
    return {"fill": statistics.median(fill), "rerun": statistics.median(rerun)}


def format_report(args: argparse.Namespace, rates: dict[int, dict], cache: dict[str, float],
                  load_before: str) -> str:
    lines = header_lines(
        f"judging: openai judge against a local server answering after {args.latency * 1e3:.0f} ms",
        ("openai", "httpx2", "dnpo"), None, load_before)
    lines += [
        f"- a call scores max({args.min_items}, 4 c) distinct items with judge.max_concurrency c; "
        f"median of {args.reps} calls after {args.warmup} warm-up call(s), concurrencies in turn",
        "",
        "| concurrency | items per call | items/s | bound c / latency (items/s) | share of bound | "
        f"goal >= {EFFICIENCY_GOAL:.0%} |",
        "|---|---|---|---|---|---|",
    ]
    for concurrency, row in rates.items():
        bound = concurrency / args.latency
        share = row["rate"] / bound
        verdict = "met" if share >= EFFICIENCY_GOAL else "missed"
        lines.append(f"| {concurrency} | {row['items']} | {row['rate']:.1f} | {bound:.0f} | "
                     f"{share:.0%} | {verdict} |")
    lines += [
        "",
        f"Cache (SQLite, fresh file per repetition, {args.cache_items} items, concurrency "
        f"{args.cache_concurrency}, median of {args.reps}):",
        "",
        "| call | time (ms) | items/s | time / filling call |",
        "|---|---|---|---|",
        f"| filling call (all misses) | {cache['fill'] * 1e3:.1f} | "
        f"{args.cache_items / cache['fill']:.0f} | 1 |",
        f"| rerun (all hits, 0 requests) | {cache['rerun'] * 1e3:.1f} | "
        f"{args.cache_items / cache['rerun']:.0f} | {cache['rerun'] / cache['fill']:.4f} |",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    args = parse_args(argv)
    # The local server ignores the key; the judge reads one from this variable.
    os.environ[KEY_ENV] = "dummy-key-for-the-local-server"
    load_before = load_average()
    with DelayedChatServer(args.latency) as server:
        rates = measure_concurrency(server, args)
        cache = measure_cache(server, args)
    report = format_report(args, rates, cache, load_before)
    print(report)
    if args.append:
        append_report(args.append, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
