"""Time and memory of one training step: our NPO and SPIN steps and TRL's DPO step.

Contenders, all on the same batch of random token ids:

- `dnpo`: PreferenceModel with the trainable noise head.
- `fixed-noise`: PreferenceModel with N(0, v) noise and no head.
- `spin`: PreferenceModel without noise, the sigmoid loss of SPIN and DPO.
- `trl-dpo`: TRL's DPOTrainer (trl 1.16) with loss_type ["sigmoid"], the same loss as
  `spin`. The policy, the frozen reference (a deep copy of the policy) and the batch are
  the same. TRL's own collator builds its batch from the pairs' token ids, and the script
  checks that it equals ours token for token.

A step is the forward of the policy and the frozen reference, one backward, gradient
clipping to norm 1.0 and an RMSprop step (lr 1e-7), then the gradients are set to None.
For our contenders the forward is `PreferenceModel.forward`. For `trl-dpo` it is exactly
one `DPOTrainer.training_step(model, inputs)` on the already collated batch, which also
includes the metrics that TRL computes at every step (entropy, mean logits, top-1
accuracy, rewards). Data loading and logging are outside the timed step for all contenders.
TRL's trainer gets the same torch.optim.RMSprop, built here and passed as its optimizer.
No contender uses gradient checkpointing. In TRL 1.16 the fused LM head scores only the
completion positions on CUDA (Triton), but every position on CPU.

Time: all contenders live in this process and run in turn (dnpo, fixed-noise, spin,
trl-dpo, dnpo, ...), so machine load hits them alike. The table reports the median of
`--reps` steps after `--warmup` steps each, as wall time and as process CPU time (all
threads). On a shared machine the CPU time is the steadier of the two.

Memory: each contender runs alone in a fresh subprocess. On CUDA the figure is
torch.cuda.max_memory_allocated. On CPU (Linux only) it is the peak resident set size
(VmHWM, reset after imports) minus the resident size after imports. That is what the
models, optimizer state, the trainer and the training steps add to the interpreter and
libraries. Every worker imports the same modules (TRL included) before the baseline.

Goals, against TRL on the same batch: our SPIN step at most 0.9x TRL's time and at most
1.0x TRL's peak memory.

    python bench/train_step.py                       # tiny random Llama, built in code
    python bench/train_step.py --model bundled:smollm2-135m-instruct
    python bench/train_step.py --model /path/to/checkpoint --append docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from benchlib import append_report, header_lines, load_average, read_status_mb, reset_peak_rss

from dnpo.training.config import TrainConfig
from dnpo.training.model import build_preference_model, disable_dropout

OURS = ("dnpo", "fixed-noise", "spin")
TRL_DPO = "trl-dpo"
CONTENDERS = (*OURS, TRL_DPO)
LEARNING_RATE = 1e-7
MAX_GRAD_NORM = 1.0
BATCH_KEYS = ("input_ids", "attention_mask", "completion_mask")
TIME_GOAL = 0.9  # our SPIN step time / TRL's, at most
MEMORY_GOAL = 1.0  # our SPIN peak memory / TRL's, at most


@dataclass
class Contender:
    """A way to train on the benchmark batch, where `run(rep)` does one optimizer step."""

    name: str
    run: Callable[[int], torch.Tensor]  # repetition index -> detached loss of the step
    parameters: list[torch.nn.Parameter]  # the trainable parameters
    batch: dict[str, torch.Tensor]  # the (2B, T) tensors the step consumes
    keep_alive: list[Any] = field(default_factory=list)  # objects the step uses (trainer, temp dir)


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


def load_tokenizer(name: str) -> Any:
    """Load the benchmark model's tokenizer, which DPOTrainer needs to start."""
    if name == "tiny":
        from dnpo.testing import make_tiny_tokenizer

        return make_tiny_tokenizer()
    from dnpo.models import load_tokenizer as load_model_tokenizer
    from dnpo.models import resolve_model_path

    return load_model_tokenizer(resolve_model_path(name))


def vocab_size_of(name: str) -> int:
    """Return the vocabulary size of the benchmark model from its config, without loading weights."""
    if name == "tiny":
        from dnpo.testing import make_tiny_tokenizer

        return len(make_tiny_tokenizer())
    from transformers import AutoConfig

    from dnpo.models import resolve_model_path

    return AutoConfig.from_pretrained(resolve_model_path(name)).get_text_config().vocab_size


def make_batch(vocab_size: int, args: argparse.Namespace) -> dict[str, torch.Tensor]:
    """Return random token ids for B pairs as (2B, T) tensors on the CPU: chosen rows, then rejected.

    The first `prompt_length` tokens of a row are prompt, the same in chosen row i and
    rejected row B + i. The rest is completion.
    """
    generator = torch.Generator().manual_seed(0)
    pairs = args.batch_pairs
    input_ids = torch.randint(0, vocab_size, (2 * pairs, args.max_length), generator=generator)
    input_ids[pairs:, : args.prompt_length] = input_ids[:pairs, : args.prompt_length]
    completion_mask = torch.zeros_like(input_ids)
    completion_mask[:, args.prompt_length :] = 1
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids),
            "completion_mask": completion_mask}


def batch_pairs(batch: dict[str, torch.Tensor], prompt_length: int) -> list[dict[str, list[int]]]:
    """Split a batch from `make_batch` into TRL's tokenized pair records (prompt, chosen, rejected ids)."""
    input_ids = batch["input_ids"].tolist()
    pairs = len(input_ids) // 2
    return [
        {"prompt_ids": input_ids[i][:prompt_length], "chosen_ids": input_ids[i][prompt_length:],
         "rejected_ids": input_ids[pairs + i][prompt_length:]}
        for i in range(pairs)
    ]


def autocast(args: argparse.Namespace) -> torch.autocast:
    return torch.autocast(args.device.split(":")[0], dtype=torch.bfloat16, enabled=args.precision == "bf16")


def finish_step(parameters: list[torch.nn.Parameter], optimizer: torch.optim.Optimizer) -> None:
    """Clip the gradients, take the optimizer step and set the gradients to None."""
    torch.nn.utils.clip_grad_norm_(parameters, MAX_GRAD_NORM)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def make_ours(mode: str, args: argparse.Namespace, batch: dict[str, torch.Tensor]) -> Contender:
    """Build a PreferenceModel contender (dnpo, fixed-noise or spin) with RMSprop."""
    config = TrainConfig(mode=mode, noise_chunk_size=args.noise_chunk_size, learning_rate=LEARNING_RATE,
                         max_length=max(args.max_length, 2), max_prompt_length=1)
    model = build_preference_model(load_policy(args.model), config).to(args.device).train()
    head = [p for name, p in model.named_parameters() if name.startswith("noise_head.")]
    policy = [p for name, p in model.named_parameters() if p.requires_grad and not name.startswith("noise_head.")]
    groups = [{"params": policy, "lr": config.learning_rate}]
    if head:
        groups.append({"params": head, "lr": config.noise_learning_rate})
    optimizer = torch.optim.RMSprop(groups)
    parameters = policy + head
    inputs = {key: value.to(args.device) for key, value in batch.items()}

    def run(rep: int) -> torch.Tensor:
        with autocast(args):
            loss = model(**inputs, noise_seed=rep)["loss"]
        loss.backward()
        finish_step(parameters, optimizer)
        return loss.detach()

    return Contender(mode, run, parameters, inputs)


def make_trl_dpo(
    args: argparse.Namespace, batch: dict[str, torch.Tensor], tokenizer: Any = None
) -> Contender:
    """Build a TRL DPOTrainer contender (sigmoid loss) on the same model, batch and optimizer.

    The trainer starts from an in-memory dataset of the same pairs, decoded to text. The
    timed batch comes from TRL's collator on the pairs' token ids, not from that text,
    so it contains exactly our token ids. Raises RuntimeError if it does not.
    """
    import datasets
    import trl

    policy = load_policy(args.model)
    disable_dropout(policy)
    reference = copy.deepcopy(policy).requires_grad_(False).eval()
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(args.model)
    pairs = batch_pairs(batch, args.prompt_length)
    dataset = datasets.Dataset.from_list([
        {key: tokenizer.decode(pair[f"{key}_ids"]) for key in ("prompt", "chosen", "rejected")}
        for pair in pairs
    ])
    output_dir = tempfile.TemporaryDirectory(prefix="trl-dpo-bench-")
    dpo_config = trl.DPOConfig(
        output_dir=output_dir.name, beta=TrainConfig.beta, loss_type=["sigmoid"],
        learning_rate=LEARNING_RATE, max_grad_norm=MAX_GRAD_NORM,
        per_device_train_batch_size=len(pairs), max_length=args.max_length,
        precompute_ref_log_probs=False, gradient_checkpointing=False, disable_dropout=True,
        bf16=args.precision == "bf16", use_cpu=not args.device.startswith("cuda"),
        report_to="none", save_strategy="no",
    )
    parameters = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.RMSprop(parameters, lr=LEARNING_RATE)
    trainer = trl.DPOTrainer(
        model=policy, ref_model=reference, args=dpo_config, train_dataset=dataset,
        processing_class=tokenizer, optimizers=(optimizer, None),
    )
    # Trainer.train() sets this for each accumulation cycle. Each step here is one whole batch.
    trainer.current_gradient_accumulation_steps = 1
    collated = trainer.data_collator(pairs)
    check_same_batch(batch, collated)
    inputs = {key: collated[key].to(args.device) for key in BATCH_KEYS}
    model = trainer.model

    def run(rep: int) -> torch.Tensor:
        loss = trainer.training_step(model, inputs)
        finish_step(parameters, optimizer)
        return loss.detach()

    return Contender(TRL_DPO, run, parameters, inputs, keep_alive=[trainer, output_dir])


def check_same_batch(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> None:
    """Raise RuntimeError unless TRL's collated batch has our token ids, masks and shape."""
    for key in BATCH_KEYS:
        if not torch.equal(ours[key].cpu(), theirs[key].cpu()):
            raise RuntimeError(
                f"TRL's collated {key} differs from ours: shapes {tuple(theirs[key].shape)} "
                f"and {tuple(ours[key].shape)}, {int(theirs[key].sum())} and {int(ours[key].sum())} "
                "summed; the contenders would not train on the same tokens"
            )


def make_contender(
    name: str, args: argparse.Namespace, batch: dict[str, torch.Tensor], tokenizer: Any = None
) -> Contender:
    """Build contender `name`. Only trl-dpo uses `tokenizer`, which defaults to the model's own."""
    return make_trl_dpo(args, batch, tokenizer) if name == TRL_DPO else make_ours(name, args, batch)


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_contenders(
    args: argparse.Namespace, batch: dict[str, torch.Tensor]
) -> tuple[dict[str, dict[str, float]], dict[str, int]]:
    """Run the contenders in turn and return median wall and CPU seconds per step, and token counts."""
    contenders = [make_contender(name, args, batch) for name in CONTENDERS]
    wall: dict[str, list[float]] = {name: [] for name in CONTENDERS}
    cpu: dict[str, list[float]] = {name: [] for name in CONTENDERS}
    for rep in range(args.warmup + args.reps):
        for contender in contenders:
            synchronize(args.device)
            start, start_cpu = time.perf_counter(), time.process_time()
            contender.run(rep)
            synchronize(args.device)
            if rep >= args.warmup:
                wall[contender.name].append(time.perf_counter() - start)
                cpu[contender.name].append(time.process_time() - start_cpu)
    seconds = {
        name: {"wall": statistics.median(wall[name]), "cpu": statistics.median(cpu[name])}
        for name in CONTENDERS
    }
    tokens = {contender.name: int(contender.batch["attention_mask"].sum()) for contender in contenders}
    return seconds, tokens


def memory_worker(args: argparse.Namespace) -> None:
    """Run one contender alone and print its peak memory in MiB as JSON."""
    on_cuda = args.device.startswith("cuda")
    # Import the modeling code, the trainers and TRL first, so that every worker's baseline
    # includes them and no contender's figure counts a module import.
    import datasets  # noqa: F401
    import transformers.models.llama.modeling_llama  # noqa: F401
    from transformers import Trainer  # noqa: F401
    from trl import DPOConfig, DPOTrainer  # noqa: F401

    import dnpo.models  # noqa: F401
    import dnpo.testing  # noqa: F401

    # Every worker loads the tokenizer before the baseline, so the baselines match. Only TRL uses it.
    tokenizer = load_tokenizer(args.model)
    batch = make_batch(vocab_size_of(args.model), args)
    if not on_cuda:
        baseline = read_status_mb("VmRSS")
        reset_peak_rss()
    contender = make_contender(args.memory_worker, args, batch, tokenizer)
    synchronize(args.device)
    if on_cuda:
        built = torch.cuda.memory_allocated() / 2**20
        torch.cuda.reset_peak_memory_stats()
    else:
        built = read_status_mb("VmRSS") - baseline
    for step in range(args.warmup + 1):
        contender.run(step)
    synchronize(args.device)
    peak = torch.cuda.max_memory_allocated() / 2**20 if on_cuda else read_status_mb("VmHWM") - baseline
    print(json.dumps({"mode": args.memory_worker, "peak_mb": peak, "built_mb": built}))


def measure_memory(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Run each contender in a fresh subprocess and return its peak and after-build memory in MiB."""
    peaks = {}
    for name in CONTENDERS:
        command = [
            sys.executable, __file__, "--model", args.model, "--batch-pairs", str(args.batch_pairs),
            "--max-length", str(args.max_length), "--prompt-length", str(args.prompt_length),
            "--warmup", str(args.warmup), "--precision", args.precision,
            "--noise-chunk-size", str(args.noise_chunk_size), "--device", args.device,
            "--threads", str(args.threads), "--memory-worker", name,
        ]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"memory worker for {name} failed with exit code {done.returncode}:\n"
                               f"{done.stderr[-4000:]}")
        peaks[name] = json.loads(done.stdout.strip().splitlines()[-1])
    return peaks


def verdict(ratio: float, goal: float) -> str:
    return "met" if ratio <= goal else "missed"


def format_report(
    args: argparse.Namespace,
    seconds: dict[str, dict[str, float]],
    memory: dict[str, dict[str, float]],
    tokens: dict[str, int],
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
    lines = header_lines(title, ("torch", "transformers", "trl", "dnpo"), torch.get_num_threads(),
                         load_before)
    if on_cuda:
        lines.append(f"- device: {torch.cuda.get_device_name()}")
    lines += [
        f"- time: median of {args.reps} steps after {args.warmup} warm-up steps, contenders in turn. "
        "Step time is wall time. CPU time is this process's CPU time over all threads, which "
        "other load on a shared machine disturbs less.",
        f"- memory: {memory_kind}, one fresh process per contender. After build is the same "
        "measure once the models (and, for trl-dpo, the DPOTrainer) exist, before the first step.",
        f"- step: forward, backward, clipping to norm {MAX_GRAD_NORM}, RMSprop (lr {LEARNING_RATE:g}). "
        "trl-dpo is one DPOTrainer.training_step (sigmoid loss) on its collated batch, which "
        "equals ours token for token: "
        + ", ".join(f"{name} {count}" for name, count in tokens.items()) + " tokens per step",
        "",
        "| mode | step time (s) | time / spin | CPU time (s) | CPU time / spin "
        "| peak memory (MiB) | memory / spin | after build (MiB) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    spin = seconds["spin"]
    spin_peak = memory["spin"]["peak_mb"]
    for name in CONTENDERS:
        wall, cpu = seconds[name]["wall"], seconds[name]["cpu"]
        peak, built = memory[name]["peak_mb"], memory[name]["built_mb"]
        lines.append(
            f"| {name} | {wall:.4f} | {wall / spin['wall']:.3f} | {cpu:.3f} | "
            f"{cpu / spin['cpu']:.3f} | {peak:.0f} | {peak / spin_peak:.3f} | {built:.0f} |"
        )
    trl_dpo = seconds[TRL_DPO]
    time_ratio = spin["wall"] / trl_dpo["wall"]
    cpu_ratio = spin["cpu"] / trl_dpo["cpu"]
    memory_ratio = spin_peak / memory[TRL_DPO]["peak_mb"]
    lines += [
        "",
        "| our SPIN / TRL DPO | ratio | goal | verdict |",
        "|---|---|---|---|",
        f"| step time | {time_ratio:.3f} | <= {TIME_GOAL} | {verdict(time_ratio, TIME_GOAL)} |",
        f"| CPU time | {cpu_ratio:.3f} | none | |",
        f"| peak memory | {memory_ratio:.3f} | <= {MEMORY_GOAL} | {verdict(memory_ratio, MEMORY_GOAL)} |",
    ]
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
    batch = make_batch(vocab_size_of(args.model), args)
    seconds, tokens = time_contenders(args, batch)
    memory = measure_memory(args)
    report = format_report(args, seconds, memory, tokens, load_before)
    print(report)
    if args.append:
        append_report(args.append, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
