"""Score the models of finished results runs on a larger held-out set of the bundled task.

The held-out set a run evaluates on each iteration is small (48 problems in
configs/default.yaml), so one problem is 2 points and seeds disagree by several. This
script draws a second, larger set of clean arithmetic problems, disjoint from the run's
training prompts and its own held-out set, and greedy-decodes it with chosen models of
runs written by experiments/run_results.py:

    python experiments/heldout_eval.py --runs experiments/runs/default --size 300 \\
        --models 1 4 --tables experiments/runs/default/heldout_300.md

`--models 1 4` scores M_1 (after iteration 0) and M_4 (after iteration 3); M_0 is the
start model. Models with the same weights (the shared iteration 0, or methods whose
training ended equal) are decoded once: the generations are kept per weight hash under
RUNS/heldout_SIZE/, and a rerun resumes them.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import os
import sys
import time
from pathlib import Path

# The sibling script formats accuracies and orders methods the same way in its tables.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from summarize_results import METHOD_ORDER, spread  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", required=True, help="--out folder of run_results.py: RUNS/seedS/METHOD")
    parser.add_argument("--size", type=int, default=300, help="held-out problems to draw (default: 300)")
    parser.add_argument("--models", type=int, nargs="+", default=[0, 1, 4],
                        help="model indices m of M_m to score (default: 0 1 4)")
    parser.add_argument("--methods", nargs="+", help="methods to score (default: every one found)")
    parser.add_argument("--tables", help="markdown file for the tables (default: print them)")
    parser.add_argument("--workers", type=int, default=2, help="models decoded at a time (default: 2)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per model (default: 1)")
    return parser.parse_args(argv)


def find_runs(runs: Path, methods: list[str] | None) -> dict[tuple[int, str], Path]:
    """Return {(seed, method): run_dir} for every run folder with a config.yaml."""
    found = {}
    for seed_dir in sorted(runs.glob("seed*")):
        if not seed_dir.name[4:].isdigit():
            continue
        for run_dir in sorted(path for path in seed_dir.iterdir() if (path / "config.yaml").is_file()):
            if methods is None or run_dir.name in methods:
                found[(int(seed_dir.name[4:]), run_dir.name)] = run_dir
    if not found:
        raise SystemExit(f"no runs under {runs}: expected {runs}/seedS/METHOD/config.yaml")
    return found


def draw_held_out(run_dir: Path, size: int, out: Path) -> Path:
    """Write `size` clean problems that are neither training prompts nor in the run's held-out set."""
    from dnpo.config import RunConfig
    from dnpo.configbase import read_yaml
    from dnpo.io import atomic_write_text, read_jsonl
    from dnpo.tasks.arithmetic import make_rows

    config = RunConfig.from_dict(read_yaml(run_dir / "config.yaml"))
    task = config.task
    seen = {row["question"] for name in ("train", "eval") for row in read_jsonl(run_dir / "task" / f"{name}.jsonl")}
    rows, unique = [], set()
    for row in make_rows(size * 4, task.seed, 0.0, f"heldout{size}"):
        if row["question"] not in seen and row["question"] not in unique:
            unique.add(row["question"])
            rows.append(row)
    if len(rows) < size:
        raise SystemExit(f"only {len(rows)} new problems for --size {size}; choose a smaller size")
    path = out / "problems.jsonl"
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows[:size])
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        atomic_write_text(path, text)
    return path


def weights_hash(model: str) -> str:
    """Hash a checkpoint's weight files, so that equal models share one generations file."""
    digest = hashlib.sha256()
    files = sorted(Path(model).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no .safetensors weights in {model}; its training has not finished")
    for path in files:
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 24), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def decode(run_dir: str, model: str, problems: str, output: str, threads: int) -> str:
    """Greedy-decode the problems with one model in a worker process and return the output path."""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)
    from dnpo.config import RunConfig
    from dnpo.configbase import read_yaml
    from dnpo.data import DataConfig
    from dnpo.eval_stage import held_out_accuracy

    config = RunConfig.from_dict(read_yaml(Path(run_dir) / "config.yaml"))
    held_out_accuracy(config, model, DataConfig(path=problems, format="gsm8k"), Path(output))
    return output


def line_count(path: Path) -> int:
    """Count the lines of a generations file, which is 0 before the file exists."""
    if not path.is_file():
        return 0
    with path.open(encoding="utf-8") as handle:
        return sum(1 for _ in handle)


def correct_ids(path: Path) -> dict[str, bool]:
    """Map each problem id of a generations file to whether its final answer is correct."""
    from dnpo.evaluation.metrics import answers_match, verifier_answer
    from dnpo.io import read_jsonl

    return {row["id"]: bool(answers_match(row.get("generated"), row["gold_answer"], verifier_answer))
            for row in read_jsonl(path)}


def tables(scores: dict[tuple[int, str, int], dict[str, bool]], size: int) -> str:
    """Format the accuracy table per method and model, and the per-problem table against spin."""
    seeds = sorted({seed for seed, _, _ in scores})
    methods = sorted({method for _, method, _ in scores},
                     key=lambda m: (METHOD_ORDER.index(m) if m in METHOD_ORDER else len(METHOD_ORDER), m))
    models = sorted({index for _, _, index in scores})
    lines = [
        f"Held-out accuracy on {size} new problems, in points: mean ± standard deviation "
        f"[min, max] over {len(seeds)} {'seed' if len(seeds) == 1 else 'seeds'}. "
        "M_0 is the start model; M_k is the model iteration k - 1 trained.", "",
        "| method | " + " | ".join(f"M_{m}" for m in models) + " |",
        "|---|" + "---|" * len(models),
    ]
    for method in methods:
        cells = []
        for m in models:
            values = [sum(scores[s, method, m].values()) / size for s in seeds if (s, method, m) in scores]
            cells.append(spread(values) if values else "-")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    if "spin" in methods:
        lines += ["", f"Per problem against spin, summed over seeds ({size} problems per seed). "
                  "A win is a problem the method answers correctly and spin does not.", "",
                  "| method | model | wins | ties | spin wins |", "|---|---|---|---|---|"]
        for method in methods:
            if method == "spin":
                continue
            for m in models:
                wins = ties = losses = 0
                for s in seeds:
                    if (s, method, m) not in scores or (s, "spin", m) not in scores:
                        continue
                    ours, theirs = scores[s, method, m], scores[s, "spin", m]
                    for problem, right in ours.items():
                        wins += right and not theirs[problem]
                        losses += theirs[problem] and not right
                        ties += right == theirs[problem]
                if wins + ties + losses:
                    lines.append(f"| {method} | M_{m} | {wins} | {ties} | {losses} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from dnpo.evaluation.runfiles import model_path
    from dnpo.models import resolve_model_path

    runs = Path(args.runs)
    out = runs / f"heldout_{args.size}"
    found = find_runs(runs, args.methods)
    out.mkdir(parents=True, exist_ok=True)
    problems = draw_held_out(next(iter(found.values())), args.size, out)
    jobs: dict[str, tuple[str, str]] = {}
    targets: dict[tuple[int, str, int], Path] = {}
    for (seed, method), run_dir in found.items():
        for m in args.models:
            try:
                weights = resolve_model_path(model_path(run_dir, m))
                output = out / f"{weights_hash(weights)}.jsonl"
            except FileNotFoundError as error:
                print(f"seed {seed} {method} M_{m}: skipped ({error})", flush=True)
                continue
            jobs.setdefault(str(output), (str(run_dir), str(weights)))
            targets[seed, method, m] = output
    started = time.monotonic()
    todo = {output: job for output, job in jobs.items() if line_count(Path(output)) < args.size}
    print(f"{len(targets)} models, {len(jobs)} distinct, {len(todo)} to decode", flush=True)
    with concurrent.futures.ProcessPoolExecutor(max_workers=args.workers) as pool:
        futures = [pool.submit(decode, run_dir, model, str(problems), output, args.threads)
                   for output, (run_dir, model) in todo.items()]
        for done, future in enumerate(concurrent.futures.as_completed(futures), 1):
            print(f"[{done}/{len(futures)}] {future.result()} "
                  f"({(time.monotonic() - started) / 60:.1f} min)", flush=True)
    scores = {key: correct_ids(path) for key, path in targets.items()}
    text = tables(scores, args.size)
    if args.tables:
        Path(args.tables).write_text(text, encoding="utf-8")
        print(f"Wrote {args.tables}")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
