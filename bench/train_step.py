"""Time and memory of one NPO training step, as ratios to a SPIN step on the same batch.

Contenders: dnpo (trainable noise head), fixed-noise (N(0, v) noise, no head) and spin
(no noise). A step is the PreferenceModel forward (policy, frozen reference, noise),
one backward, gradient clipping and an RMSprop step, as in training.

Time: all three contenders live in this process and run in turn (dnpo, fixed-noise,
spin, dnpo, ...), so machine load hits them alike. The table reports the median of
`--reps` steps after `--warmup` steps each, as wall time and as process CPU time (all
threads). On a shared machine the CPU time is the steadier of the two.

Memory: each contender runs alone in a fresh subprocess. On CUDA the figure is
torch.cuda.max_memory_allocated. On CPU (Linux only) it is the peak resident set size
(VmHWM, reset after imports) minus the resident size after imports. That is what the
models, optimizer state and training steps add to the interpreter and libraries.

    python bench/train_step.py                       # tiny random Llama, built in code
    python bench/train_step.py --model bundled:smollm2-135m-instruct
    python bench/train_step.py --model /path/to/checkpoint --append docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch
from benchlib import append_report, header_lines, load_average

from dnpo.training.config import TrainConfig
from dnpo.training.model import build_preference_model

CONTENDERS = ("dnpo", "fixed-noise", "spin")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny",
                        help="'tiny' (random Llama built in code), a checkpoint directory, or "
                             "bundled:smollm2-135m-instruct (default: tiny)")
    parser.add_argument("--batch-pairs", type=int, default=4, help="pairs per step (default: 4)")
    parser.add_argument("--max-length", type=int, default=128, help="tokens per sequence (default: 128)")
    parser.add_argument("--prompt-length", type=int, default=32,
                        help="prompt tokens per sequence; the rest is completion (default: 32)")
    parser.add_argument("--reps", type=int, default=5, help="timed steps per contender (default: 5)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per contender (default: 2)")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                        help="fp32, or bf16 autocast (default: fp32)")
    parser.add_argument("--noise-chunk-size", type=int, default=TrainConfig.noise_chunk_size,
                        help=f"positions per noise chunk (default: {TrainConfig.noise_chunk_size})")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads; 0 keeps torch's default. On a shared machine, 1 "
                             "avoids threads waiting on each other when other jobs take the cores")
    parser.add_argument("--append", metavar="FILE",
                        help="append the result table, machine and command to this Markdown file")
    parser.add_argument("--memory-worker", choices=CONTENDERS, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def load_policy(name: str) -> torch.nn.Module:
    """Load the benchmark model in fp32."""
    if name == "tiny":
        from dnpo.testing import make_tiny_model

        return make_tiny_model(hidden_size=64, num_layers=2)
    from dnpo.models import load_causal_lm, resolve_model_path

    return load_causal_lm(resolve_model_path(name), precision="fp32")


def make_batch(vocab_size: int, args: argparse.Namespace) -> dict[str, torch.Tensor]:
    """Random tokens for 2B rows: the first `prompt_length` are prompt, the rest completion."""
    generator = torch.Generator().manual_seed(0)
    rows = 2 * args.batch_pairs
    input_ids = torch.randint(0, vocab_size, (rows, args.max_length), generator=generator)
    completion_mask = torch.zeros_like(input_ids)
    completion_mask[:, args.prompt_length :] = 1
    batch = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids),
             "completion_mask": completion_mask}
    return {key: value.to(args.device) for key, value in batch.items()}


def make_contender(mode: str, args: argparse.Namespace) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    config = TrainConfig(mode=mode, noise_chunk_size=args.noise_chunk_size, learning_rate=1e-7,
                         max_length=max(args.max_length, 2), max_prompt_length=1)
    model = build_preference_model(load_policy(args.model), config).to(args.device).train()
    head = [p for name, p in model.named_parameters() if name.startswith("noise_head.")]
    policy = [p for name, p in model.named_parameters() if p.requires_grad and not name.startswith("noise_head.")]
    groups = [{"params": policy, "lr": config.learning_rate}]
    if head:
        groups.append({"params": head, "lr": config.noise_learning_rate})
    return model, torch.optim.RMSprop(groups)


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
               batch: dict[str, torch.Tensor], seed: int, args: argparse.Namespace) -> None:
    autocast = torch.autocast(args.device.split(":")[0], dtype=torch.bfloat16,
                              enabled=args.precision == "bf16")
    with autocast:
        loss = model(**batch, noise_seed=seed)["loss"]
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for group in optimizer.param_groups for p in group["params"]], 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_contenders(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Return median wall and CPU seconds per step for each contender, running them in turn."""
    contenders = {mode: make_contender(mode, args) for mode in CONTENDERS}
    vocab_size = contenders["spin"][0].policy.get_output_embeddings().weight.shape[0]
    batch = make_batch(vocab_size, args)
    wall: dict[str, list[float]] = {mode: [] for mode in CONTENDERS}
    cpu: dict[str, list[float]] = {mode: [] for mode in CONTENDERS}
    for rep in range(args.warmup + args.reps):
        for mode, (model, optimizer) in contenders.items():
            synchronize(args.device)
            start, start_cpu = time.perf_counter(), time.process_time()
            train_step(model, optimizer, batch, rep, args)
            synchronize(args.device)
            if rep >= args.warmup:
                wall[mode].append(time.perf_counter() - start)
                cpu[mode].append(time.process_time() - start_cpu)
    return {
        mode: {"wall": statistics.median(wall[mode]), "cpu": statistics.median(cpu[mode])}
        for mode in CONTENDERS
    }


def read_status_mb(field: str) -> float:
    """Return a memory field (VmRSS, VmHWM) of /proc/self/status in MiB."""
    with open("/proc/self/status", encoding="utf-8") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not found in /proc/self/status")


def reset_peak_rss() -> None:
    """Reset the peak RSS (VmHWM) to the current RSS; Linux 4.0 or later."""
    with open("/proc/self/clear_refs", "w", encoding="utf-8") as handle:
        handle.write("5")


def memory_worker(args: argparse.Namespace) -> None:
    """Run one contender alone and print its peak memory in MiB as JSON."""
    on_cuda = args.device.startswith("cuda")
    # Import the modeling code first, so the baseline includes it.
    import transformers.models.llama.modeling_llama  # noqa: F401

    import dnpo.models  # noqa: F401
    import dnpo.testing  # noqa: F401

    if not on_cuda:
        baseline = read_status_mb("VmRSS")
        reset_peak_rss()
    model, optimizer = make_contender(args.memory_worker, args)
    vocab_size = model.policy.get_output_embeddings().weight.shape[0]
    batch = make_batch(vocab_size, args)
    if on_cuda:
        torch.cuda.reset_peak_memory_stats()
    for step in range(args.warmup + 1):
        train_step(model, optimizer, batch, step, args)
    synchronize(args.device)
    peak = torch.cuda.max_memory_allocated() / 2**20 if on_cuda else read_status_mb("VmHWM") - baseline
    print(json.dumps({"mode": args.memory_worker, "peak_mb": peak}))


def measure_memory(args: argparse.Namespace) -> dict[str, float]:
    """Run each contender in a fresh subprocess and collect its peak memory."""
    peaks = {}
    for mode in CONTENDERS:
        command = [
            sys.executable, __file__, "--model", args.model, "--batch-pairs", str(args.batch_pairs),
            "--max-length", str(args.max_length), "--prompt-length", str(args.prompt_length),
            "--warmup", str(args.warmup), "--precision", args.precision,
            "--noise-chunk-size", str(args.noise_chunk_size), "--device", args.device,
            "--threads", str(args.threads), "--memory-worker", mode,
        ]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        peaks[mode] = json.loads(done.stdout.strip().splitlines()[-1])["peak_mb"]
    return peaks


def format_report(
    args: argparse.Namespace,
    seconds: dict[str, dict[str, float]],
    peaks: dict[str, float],
    load_before: str,
) -> str:
    on_cuda = args.device.startswith("cuda")
    memory_kind = (
        "torch.cuda.max_memory_allocated" if on_cuda
        else "peak RSS above the post-import RSS (Linux VmHWM)"
    )
    title = (
        f"train step: model {args.model}, {args.batch_pairs} pairs x {args.max_length} tokens "
        f"({args.prompt_length} prompt), {args.precision}, {args.device}"
    )
    lines = header_lines(title, ("torch", "transformers", "dnpo"), torch.get_num_threads(), load_before)
    if on_cuda:
        lines.append(f"- device: {torch.cuda.get_device_name()}")
    lines += [
        f"- time: median of {args.reps} steps after {args.warmup} warm-up steps, contenders in turn. "
        "Step time is wall time. CPU time is this process's CPU time over all threads, which "
        "other load on a shared machine disturbs less.",
        f"- memory: {memory_kind}, one fresh process per contender",
        "",
        "| mode | step time (s) | time / spin | CPU time (s) | CPU time / spin "
        "| peak memory (MiB) | memory / spin |",
        "|---|---|---|---|---|---|---|",
    ]
    spin = seconds["spin"]
    for mode in CONTENDERS:
        wall, cpu = seconds[mode]["wall"], seconds[mode]["cpu"]
        lines.append(
            f"| {mode} | {wall:.4f} | {wall / spin['wall']:.3f} | {cpu:.3f} | "
            f"{cpu / spin['cpu']:.3f} | {peaks[mode]:.0f} | {peaks[mode] / peaks['spin']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.prompt_length >= args.max_length:
        raise SystemExit("--prompt-length must be below --max-length")
    if args.memory_worker:
        memory_worker(args)
        return 0
    load_before = load_average()
    seconds = time_contenders(args)
    peaks = measure_memory(args)
    report = format_report(args, seconds, peaks, load_before)
    print(report)
    if args.append:
        append_report(args.append, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
