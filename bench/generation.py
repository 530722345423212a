"""Tokens per second of the batched transformers backend against one prompt at a time.

The model (SmolLM2-135M-Instruct by default) answers prompts of the bundled arithmetic
task, loaded the way a run loads them, with greedy decoding (temperature 0) and
--max-new-tokens. One HFGenerator per batch size shares the loaded model. A repetition
of batch size B is one `generate` call on B prompts, taken in rotation from the
--prompts prompts, so batch size 1 is one prompt at a time. Batch sizes run in turn
(1, 4, 8, 16, 1, ...). The rate is the generated tokens (stop token included, padding
excluded) over the call's wall time. The table shows the median of --reps calls after
--warmup calls.

With other processes on the CPU, torch's intra-op threads wait for each other on every
small decoding op, so --threads 1 can be much faster than the default on a busy machine.

    python bench/generation.py --threads 1
    python bench/generation.py --batch-sizes 1,16 --append docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch
from benchlib import append_report, header_lines, load_average

from dnpo.data import DataConfig, load_sft_examples
from dnpo.generation import GenerationConfig, make_generator
from dnpo.generation.hf import HFGenerator
from dnpo.tasks.arithmetic import write_task

logger = logging.getLogger("bench.generation")

SPEEDUP_GOAL = 5.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="bundled:smollm2-135m-instruct",
                        help="checkpoint folder, hub name or bundled:smollm2-135m-instruct "
                             "(default: bundled:smollm2-135m-instruct)")
    parser.add_argument("--prompts", type=int, default=16,
                        help="prompts of the bundled task to rotate through (default: 16)")
    parser.add_argument("--batch-sizes", default="1,4,8,16",
                        help="comma-separated batch sizes; the first is the baseline "
                             "(default: 1,4,8,16)")
    parser.add_argument("--max-new-tokens", type=int, default=64,
                        help="max new tokens per answer (default: 64)")
    parser.add_argument("--reps", type=int, default=5, help="timed calls per batch size (default: 5)")
    parser.add_argument("--warmup", type=int, default=1,
                        help="untimed calls per batch size (default: 1)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch intra-op threads; 0 keeps torch's default (default: 0)")
    parser.add_argument("--append", metavar="FILE",
                        help="append the result table, machine and command to this Markdown file")
    args = parser.parse_args(argv)
    args.batch_sizes = [int(size) for size in args.batch_sizes.split(",") if size.strip()]
    if not args.batch_sizes or min(args.batch_sizes) < 1:
        parser.error(f"--batch-sizes must be positive integers, got {args.batch_sizes}")
    if max(args.batch_sizes) > args.prompts:
        parser.error(f"--prompts {args.prompts} is below the largest batch size "
                     f"{max(args.batch_sizes)}; raise --prompts")
    if args.reps < 1 or args.warmup < 0:
        parser.error("--reps must be >= 1 and --warmup >= 0")
    return args


def load_prompts(count: int) -> list[dict]:
    """Write `count` training problems of the bundled task and load them as SFT examples."""
    with tempfile.TemporaryDirectory() as folder:
        train_path, _ = write_task(folder, train_size=count, eval_size=1, seed=0)
        examples, _ = load_sft_examples(DataConfig(path=str(train_path)))
    return examples


def measure(args: argparse.Namespace) -> tuple[dict[int, dict], Counter]:
    """Return per batch size the median seconds and tokens per call, and all finish reasons."""
    examples = load_prompts(args.prompts)
    config = GenerationConfig(temperature=0.0, max_new_tokens=args.max_new_tokens)
    first = make_generator(config.replace(batch_size=args.batch_sizes[0]), args.model)
    generators = {size: HFGenerator(first.model, first.tokenizer, config.replace(batch_size=size))
                  for size in args.batch_sizes}
    seconds: dict[int, list[float]] = {size: [] for size in args.batch_sizes}
    tokens: dict[int, list[int]] = {size: [] for size in args.batch_sizes}
    finish = Counter()
    offsets = dict.fromkeys(args.batch_sizes, 0)
    for rep in range(args.warmup + args.reps):
        for size, generator in generators.items():
            batch = [examples[(offsets[size] + i) % len(examples)] for i in range(size)]
            offsets[size] += size
            start = time.perf_counter()
            generations = generator.generate(batch)
            elapsed = time.perf_counter() - start
            if rep < args.warmup:
                continue
            seconds[size].append(elapsed)
            tokens[size].append(sum(g.completion_tokens for g in generations))
            finish.update(g.finish_reason for g in generations)
    results = {}
    for size in args.batch_sizes:
        rates = [t / s for t, s in zip(tokens[size], seconds[size], strict=True)]
        results[size] = {"seconds": statistics.median(seconds[size]),
                         "tokens": statistics.median(tokens[size]),
                         "rate": statistics.median(rates)}
    return results, finish


def format_report(args: argparse.Namespace, results: dict[int, dict], finish: Counter,
                  load_before: str) -> str:
    base = args.batch_sizes[0]
    lines = header_lines(
        f"generation: batched transformers backend, {args.model}, greedy, "
        f"max_new_tokens {args.max_new_tokens}",
        ("torch", "transformers", "dnpo"), torch.get_num_threads(), load_before)
    lines += [
        f"- a call generates one batch of B prompts, rotating through {args.prompts} prompts of "
        f"the bundled task; median of {args.reps} calls after {args.warmup} warm-up call(s), "
        "batch sizes in turn",
        f"- finish reasons over the timed calls: {dict(sorted(finish.items()))}",
        "",
        f"| batch size | median call (s) | tokens per call | tokens/s | speed-up vs batch {base} |",
        "|---|---|---|---|---|",
    ]
    for size in args.batch_sizes:
        row = results[size]
        lines.append(f"| {size} | {row['seconds']:.2f} | {row['tokens']:.0f} | {row['rate']:.1f} "
                     f"| {row['rate'] / results[base]['rate']:.2f} |")
    largest = max(args.batch_sizes)
    speedup = results[largest]["rate"] / results[base]["rate"]
    verdict = "met" if speedup >= SPEEDUP_GOAL else "missed"
    lines += ["", f"Goal: batch {largest} at least {SPEEDUP_GOAL:.0f}x the tokens/s of batch "
                  f"{base}: {verdict} ({speedup:.2f}x)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = load_average()
    results, finish = measure(args)
    report = format_report(args, results, finish, load_before)
    print(report)
    if args.append:
        append_report(Path(args.append), report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
