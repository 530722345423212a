"""Time and memory of the noisy rejected log-probs by vocabulary, hidden size and chunk size.

For each shape (hidden size d, vocabulary V) the script builds reference hidden states
(n, d), reference logits (n, V), labels and a NoiseHead(d, V). It times one forward and
backward pass of `dnpo.training.noise.noisy_rejected_logps`: both noise draws, the loss
`noise_token_logps.sum() + variance_mean`, and gradients set to None afterwards as in
training. Contenders, run in turn on the same inputs:

- `chunk C`: noise_chunk_size = C < n; backward recomputes each chunk.
- `unchunked`: one chunk of all n positions, the same recomputing code.
- `autograd`: the same formula in plain PyTorch ops; autograd keeps the (n, V) tensors.
- `gemm`: only the three (n, d) x (d, V) products of the recomputing code (the
  log-std forward, its recomputation in backward, the weight gradient), unchunked.

Memory is measured in this process on each contender's first warm-up step with
torch.profiler(profile_memory=True): the peak of bytes allocated minus bytes freed by
torch during the step, above what was live before it. It counts the weight and bias
gradients and every temporary tensor, and not the inputs, which the trainer keeps anyway.
It does not count allocator slack or memory outside torch (tracemalloc sees neither).

The positions n start at --positions and are halved for a shape until n * d * V is at
most --max-elements, so a step stays within seconds on a laptop CPU.

    python bench/noise_head.py --hidden-sizes 576
    python bench/noise_head.py --hidden-sizes 4096 --vocab-sizes 32000 --append docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch
from benchlib import append_report, header_lines, load_average, time_in_turn
from torch.profiler import ProfilerActivity, profile

from dnpo.training.config import TrainConfig
from dnpo.training.noise import NoiseHead, SeededNoise, noisy_rejected_logps, token_logps

logger = logging.getLogger("bench.noise_head")

MIB = 2**20
CONTENDER_KINDS = ("chunk", "unchunked", "autograd", "gemm")


@dataclass
class Shape:
    hidden_size: int
    vocab_size: int
    positions: int


@dataclass
class Inputs:
    """Frozen reference outputs at n completion positions, and the trainable head."""

    hidden: torch.Tensor  # (n, d)
    logits: torch.Tensor  # (n, V)
    labels: torch.Tensor  # (n,)
    head: NoiseHead


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden-sizes", default="576,4096",
                        help="comma-separated hidden sizes d (default: 576,4096)")
    parser.add_argument("--vocab-sizes", default="32000,49152,151936",
                        help="comma-separated vocabulary sizes V (default: 32000,49152,151936, "
                             "the vocabularies of Mistral-7B, SmolLM2 and Qwen2)")
    parser.add_argument("--chunk-sizes", default="32,64,128,256",
                        help="comma-separated noise chunk sizes; those below n are run "
                             "(default: 32,64,128,256)")
    parser.add_argument("--contenders", default="chunk,unchunked,autograd,gemm",
                        help="comma-separated contender kinds to run; unchunked is always run "
                             "(default: chunk,unchunked,autograd,gemm)")
    parser.add_argument("--positions", type=int, default=256,
                        help="rejected completion positions n before scaling down (default: 256)")
    parser.add_argument("--max-elements", type=float, default=4096 * 32000 * 128,
                        help="largest n * d * V; n is halved until it fits (default: 1.68e10)")
    parser.add_argument("--reps", type=int, default=5, help="timed steps per contender (default: 5)")
    parser.add_argument("--warmup", type=int, default=1,
                        help="untimed steps per contender; the first one measures memory "
                             "(default: 1)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch intra-op threads; 0 keeps torch's default (default: 0)")
    parser.add_argument("--projection-params", type=float, default=7.24e9,
                        help="parameter count N of the model in the overhead estimate "
                             "(default: 7.24e9, Mistral-7B)")
    parser.add_argument("--append", metavar="FILE",
                        help="append the result table, machine and command to this Markdown file")
    args = parser.parse_args(argv)

    if args.warmup < 1:
        parser.error("--warmup must be >= 1: the first warm-up step measures memory")
    if args.reps < 1:
        parser.error("--reps must be >= 1")
    unknown = set(args.contenders.split(",")) - set(CONTENDER_KINDS)
    if unknown:
        parser.error(f"unknown --contenders {sorted(unknown)}; choose from {CONTENDER_KINDS}")
    return args


def int_list(text: str) -> list[int]:
    return [int(item) for item in text.split(",") if item.strip()]


def scaled_positions(hidden_size: int, vocab_size: int, positions: int, max_elements: float) -> int:
    """Halve `positions` until positions * d * V <= max_elements, down to at least 8."""
    while positions > 8 and positions * hidden_size * vocab_size > max_elements:
        positions //= 2
    return positions


def make_inputs(shape: Shape) -> Inputs:
    generator = torch.Generator().manual_seed(0)
    n, d, vocab = shape.positions, shape.hidden_size, shape.vocab_size
    head = NoiseHead(d, vocab, init_std=TrainConfig.noise_init_std)
    # A weight of zeros would make every position's noise equal; small values vary it.
    with torch.no_grad():
        head.weight.normal_(0.0, 0.01 / math.sqrt(d), generator=generator)
    return Inputs(
        hidden=torch.randn(n, d, generator=generator),
        logits=torch.randn(n, vocab, generator=generator) * 3,
        labels=torch.randint(0, vocab, (n,), generator=generator),
        head=head,
    )


def log_std_max() -> float:
    return 0.5 * math.log(TrainConfig.eps_max)


def chunked_loss(inputs: Inputs, chunk_size: int, seed: int) -> torch.Tensor:
    out = noisy_rejected_logps(inputs.hidden, inputs.logits, inputs.labels, SeededNoise(seed),
                               chunk_size, noise_head=inputs.head, log_std_max=log_std_max())
    return out.noise_token_logps.sum() + out.variance_mean


def autograd_loss(inputs: Inputs, seed: int) -> torch.Tensor:
    """Compute the unchunked loss with plain ops, so autograd stores every (n, V) tensor."""
    n, vocab = inputs.logits.shape
    noise = SeededNoise(seed)
    log_std = torch.addmm(inputs.head.bias, inputs.hidden, inputs.head.weight.t())
    std = log_std.clamp(max=log_std_max()).exp()
    with torch.no_grad():  # draw 1, the model term, only feeds the policy loss
        token_logps(inputs.logits + std * noise(0, n, 1, vocab, std.device), inputs.labels)
    noisy = inputs.logits + std * noise(0, n, 2, vocab, std.device)
    return token_logps(noisy, inputs.labels).sum() + std.square().mean()


def gemm_only(inputs: Inputs) -> None:
    """Run the head's three matrix products: (n, d) x (d, V) twice and (V, n) x (n, d)."""
    weight, bias = inputs.head.weight.detach(), inputs.head.bias.detach()
    torch.addmm(bias, inputs.hidden, weight.t())
    recomputed = torch.addmm(bias, inputs.hidden, weight.t())
    recomputed.t().mm(inputs.hidden)


def make_step(inputs: Inputs, name: str, losses: dict[str, float]) -> Callable[[int], None]:
    """Return a step for one contender; it stores its loss by repetition for the check."""

    def step(rep: int) -> None:
        if name == "gemm":
            gemm_only(inputs)
            return
        if name == "autograd":
            loss = autograd_loss(inputs, seed=rep)
        else:
            chunk = inputs.logits.shape[0] if name == "unchunked" else int(name.split()[1])
            loss = chunked_loss(inputs, chunk, seed=rep)
        loss.backward()
        inputs.head.zero_grad(set_to_none=True)
        if rep == 0:
            losses[name] = loss.item()

    return step


def peak_allocated_mib(run: Callable[[], None]) -> float:
    """Return the peak MiB that torch allocated above the live set while `run` ran."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda event: event.start_ns())
    live = peak = 0
    for event in events:
        live += event.nbytes()
        peak = max(peak, live)
    return peak / MIB


def measure_shape(shape: Shape, chunk_sizes: list[int], args: argparse.Namespace) -> list[dict]:
    """Time and measure every contender of one shape; return one row per contender."""
    inputs = make_inputs(shape)
    kinds = set(args.contenders.split(","))
    names = [f"chunk {c}" for c in chunk_sizes if c < shape.positions and "chunk" in kinds]
    names += [name for name in ("unchunked", "autograd", "gemm") if name in kinds | {"unchunked"}]
    losses: dict[str, float] = {}
    steps = {name: make_step(inputs, name, losses) for name in names}
    peaks = {name: peak_allocated_mib(lambda step=step: step(0)) for name, step in steps.items()}
    # Both compute one chunk of all positions with the same draws, so their losses agree.
    if "autograd" in losses and not math.isclose(losses["unchunked"], losses["autograd"],
                                                 rel_tol=1e-4):
        raise RuntimeError(f"unchunked loss {losses['unchunked']} differs from autograd loss "
                           f"{losses['autograd']} for {shape}; the contenders disagree")
    seconds = time_in_turn(steps, warmup=args.warmup - 1, reps=args.reps)
    rows = []
    for name in names:
        rows.append({"shape": shape, "contender": name, "seconds": seconds[name],
                     "peak_mib": peaks[name], "time_ratio": seconds[name] / seconds["unchunked"],
                     "memory_ratio": peaks[name] / peaks["unchunked"]})
    del inputs
    return rows


def format_table(rows: list[dict]) -> list[str]:
    lines = [
        "| d | V | n | contender | step (ms) | time / unchunked | us per position | "
        "peak alloc (MiB) | memory / unchunked |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        shape = row["shape"]
        lines.append(
            f"| {shape.hidden_size} | {shape.vocab_size} | {shape.positions} | {row['contender']} "
            f"| {row['seconds'] * 1e3:.0f} | {row['time_ratio']:.2f} | "
            f"{row['seconds'] / shape.positions * 1e6:.0f} | {row['peak_mib']:.0f} | "
            f"{row['memory_ratio']:.2f} |"
        )
    return lines


def projection_lines(rows: list[dict], args: argparse.Namespace) -> list[str]:
    """Return the overhead estimate for a model of N parameters, from the d=4096, V=32000 rows."""
    default = f"chunk {TrainConfig.noise_chunk_size}"
    by_name = {row["contender"]: row for row in rows
               if (row["shape"].hidden_size, row["shape"].vocab_size) == (4096, 32000)}
    if not by_name:
        return []
    head_row = by_name.get(default, by_name["unchunked"])
    shape = head_row["shape"]
    head_flops = 6 * shape.hidden_size * shape.vocab_size
    model_flops = 6 * args.projection_params
    flop_ratio = head_flops / model_flops
    if "gemm" not in by_name:
        return []
    gemm_factor = head_row["seconds"] / by_name["gemm"]["seconds"]
    return [
        "",
        f"Overhead estimate for a model of N = {args.projection_params:.3g} parameters with "
        f"d = {shape.hidden_size}, V = {shape.vocab_size}:",
        f"- noise head per rejected completion token: 6 d V = {head_flops:.3g} FLOPs (log-std "
        "forward, its recomputation in backward, weight gradient, 2 d V each); model forward "
        f"and backward per token: about 6 N = {model_flops:.3g} FLOPs",
        f"- FLOP ratio d V / N = {flop_ratio:.2%} per rejected completion token",
        f"- measured here: the head step ({head_row['contender']}) takes {gemm_factor:.2f}x the "
        "time of its three matrix products alone (noise draws, softmax, per-chunk gradients)",
        f"- estimate: {flop_ratio * gemm_factor:.2%} per rejected completion token, if the model's "
        "forward and backward ran at the same matrix-product throughput as the head",
    ]


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = load_average()
    chunk_sizes = int_list(args.chunk_sizes)
    rows: list[dict] = []
    for hidden_size in int_list(args.hidden_sizes):
        for vocab_size in int_list(args.vocab_sizes):
            positions = scaled_positions(hidden_size, vocab_size, args.positions, args.max_elements)
            shape = Shape(hidden_size, vocab_size, positions)
            logger.info("Measuring d=%d V=%d n=%d", hidden_size, vocab_size, positions)
            rows.extend(measure_shape(shape, chunk_sizes, args))

    lines = header_lines(
        f"noise head: noisy rejected log-probs, forward + backward, fp32, "
        f"d {args.hidden_sizes}, V {args.vocab_sizes}",
        ("torch", "dnpo"), torch.get_num_threads(), load_before)
    lines += [
        f"- time: median of {args.reps} steps after {args.warmup} warm-up step(s), contenders "
        "of a shape in turn; memory: peak torch allocation during the first warm-up step above "
        "the inputs (torch.profiler profile_memory), weight gradient included",
        f"- n: rejected completion positions, {args.positions} halved until n d V <= "
        f"{args.max_elements:.3g} to keep CPU time low",
        "",
        *format_table(rows),
        *projection_lines(rows, args),
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.append:
        append_report(args.append, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
