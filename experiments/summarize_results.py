"""Tables and a plot of the runs written by run_results.py.

Reads OUT/seedS/METHOD for every seed and method found and writes, to --tables (markdown)
and --plot (PNG):

- held-out accuracy per method and iteration: mean over seeds, standard deviation and
  range, with the starting model's accuracy;
- generated-vs-reference win/tie/loss rates of each iteration's training answers,
  scored with the verifier against the gold answers, also for methods that never
  called a judge, so every method gets the same measure;
- DNPO against SPIN head to head per iteration, from `dnpo compare` on the greedy
  held-out answers, summed over seeds;
- compute time: the wall time of every stage, with the shared iteration 0 counted once
  per seed.

    python experiments/summarize_results.py --runs experiments/runs/default \\
        --tables experiments/runs/default/tables.md --plot experiments/runs/default/accuracy.png
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path
from typing import Any

METHOD_ORDER = ["spin", "spin+dsl", "spin+npo", "dnpo", "dnpo-fixed"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", required=True, help="folder given to run_results.py as --out")
    parser.add_argument("--tables", required=True, help="markdown file to write the tables to")
    parser.add_argument("--plot", required=True, help="PNG file for the accuracy plot")
    parser.add_argument("--head-to-head", nargs=2, default=["dnpo", "spin"], metavar=("A", "B"),
                        help="methods compared head to head (default: dnpo spin)")
    return parser.parse_args(argv)


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def find_runs(root: Path) -> dict[str, dict[int, Path]]:
    """Return {method: {seed: run_dir}} for every run with a summary."""
    runs: dict[str, dict[int, Path]] = {}
    for seed_dir in sorted(root.glob("seed*")):
        if not re.fullmatch(r"seed\d+", seed_dir.name) or not seed_dir.is_dir():
            continue
        seed = int(seed_dir.name.removeprefix("seed"))
        for run_dir in sorted(path for path in seed_dir.iterdir() if (path / "summary.json").is_file()):
            runs.setdefault(run_dir.name, {})[seed] = run_dir
    return dict(sorted(runs.items(), key=lambda item: METHOD_ORDER.index(item[0])
                       if item[0] in METHOD_ORDER else len(METHOD_ORDER)))


def summary_rows(run_dir: Path) -> dict[int, dict[str, Any]]:
    rows = read_json(run_dir / "summary.json")
    rows = rows["rows"] if isinstance(rows, dict) else rows
    return {row["iteration"]: row for row in rows}


def spread(values: list[float]) -> str:
    """Format accuracies as `mean ± sd [min, max]` in points (x 100), or one value alone."""
    points = [100 * value for value in values]
    if len(points) == 1:
        return f"{points[0]:.1f}"
    return (f"{statistics.mean(points):.1f} ± {statistics.stdev(points):.1f} "
            f"[{min(points):.1f}, {max(points):.1f}]")


def accuracy_table(runs: dict[str, dict[int, Path]]) -> tuple[str, dict[str, dict[int, list[float]]]]:
    accuracy: dict[str, dict[int, list[float]]] = {}
    # Every method of a seed shares iteration 0, so any of them gives the start model's accuracy.
    start_by_seed: dict[int, float] = {}
    for method, by_seed in runs.items():
        for seed, run_dir in sorted(by_seed.items()):
            rows = summary_rows(run_dir)
            for iteration, row in rows.items():
                if row.get("accuracy") is not None:
                    accuracy.setdefault(method, {}).setdefault(iteration, []).append(row["accuracy"])
            if rows.get(0, {}).get("start_accuracy") is not None:
                start_by_seed.setdefault(seed, rows[0]["start_accuracy"])
    start = [start_by_seed[seed] for seed in sorted(start_by_seed)]
    iterations = sorted({k for per_method in accuracy.values() for k in per_method})
    start_cell = spread(start) if start else "-"
    header = "| method | start model (M_0) | " + " | ".join(f"after iter {k}" for k in iterations) + " |"
    lines = [header, "|---" * (len(iterations) + 2) + "|"]
    for method, per_iteration in accuracy.items():
        cells = [spread(per_iteration[k]) if k in per_iteration else "-" for k in iterations]
        lines.append(f"| {method} | {start_cell} | " + " | ".join(cells) + " |")
    seeds = seed_count(runs)
    if seeds == 1:
        note = f"Held-out accuracy in points{over_seeds(runs, '')}. "
    else:
        note = f"Held-out accuracy in points: mean ± standard deviation [min, max] over {seeds} seeds. "
    note += ("`after iter k` is the model that iteration k trained (M_{k+1}); iteration 0 "
            "is the same SPIN run for every method of a seed, and every method starts from the same "
            "M_0.")
    return note + "\n\n" + "\n".join(lines) + "\n", {"start": {0: start}, **accuracy}


def verifier_rates(runs: dict[str, dict[int, Path]]) -> str:
    from dnpo.judges.verifier import VerifierJudge

    judge = VerifierJudge()
    counts: dict[tuple[str, int], dict[str, int]] = {}
    for method, by_seed in runs.items():
        for run_dir in by_seed.values():
            for iter_dir in sorted(run_dir.glob("iter_*")):
                generations = iter_dir / "generations.jsonl"
                if not generations.is_file():
                    continue
                iteration = int(iter_dir.name.removeprefix("iter_"))
                key = (method, iteration)
                total = counts.setdefault(key, {"win": 0, "tie": 0, "loss": 0, "correct": 0, "n": 0})
                for row in read_jsonl(generations):
                    generated = judge.score_one(row["generated"], row.get("gold_answer")).score
                    reference = judge.score_one(row["reference"], row.get("gold_answer")).score
                    total["n"] += 1
                    total["correct"] += generated == 100
                    if generated > reference:
                        total["win"] += 1
                    elif generated < reference:
                        total["loss"] += 1
                    else:
                        total["tie"] += 1
    lines = [
        "Training answers of each iteration against the human references, scored by the "
        "verifier (100 if the final answer equals the gold answer, else 0)"
        f"{over_seeds(runs, 'summed')}.",
        "",
        "| method | iteration | answers | generated correct | generated wins | ties | reference wins |",
        "|---|---|---|---|---|---|---|",
    ]
    for (method, iteration), total in sorted(
        counts.items(), key=lambda item: (item[0][1], METHOD_ORDER.index(item[0][0])
                                          if item[0][0] in METHOD_ORDER else 99)
    ):
        if iteration == 0 and method != "spin":
            continue
        n = total["n"]
        label = "all (shared)" if iteration == 0 else method
        lines.append(
            f"| {label} | {iteration} | {n} | {total['correct'] / n:.1%} | {total['win'] / n:.1%} "
            f"| {total['tie'] / n:.1%} | {total['loss'] / n:.1%} |"
        )
    return "\n".join(lines) + "\n"


def head_to_head(runs: dict[str, dict[int, Path]], method_a: str, method_b: str, root: Path) -> str:
    from dnpo.compare import compare_runs
    from dnpo.judges.verifier import VerifierJudge

    if method_a not in runs or method_b not in runs:
        return f"No head to head: {method_a} or {method_b} has no finished run.\n"
    totals: dict[int, dict[str, int]] = {}
    for seed in sorted(set(runs[method_a]) & set(runs[method_b])):
        report = compare_runs(
            runs[method_a][seed], runs[method_b][seed], VerifierJudge(),
            root / f"seed{seed}" / f"compare_{method_a}_vs_{method_b}", seed=seed,
            source="eval_generations",
        )
        for k, summary in report["iterations"].items():
            total = totals.setdefault(int(k), {"wins": 0, "ties": 0, "losses": 0, "judged": 0})
            for field in total:
                total[field] += summary[field]
    lines = [
        f"Greedy held-out answers of {method_a} and {method_b} on the same problems, scored by "
        f"the verifier with `dnpo compare --source eval_generations`{over_seeds(runs, 'summed')}. A win "
        f"is a problem {method_a} answers correctly and {method_b} does not.",
        "",
        f"| after iter | {method_a} wins | ties | {method_b} wins | problems |",
        "|---|---|---|---|---|",
    ]
    for k, total in sorted(totals.items()):
        lines.append(f"| {k} | {total['wins']} | {total['ties']} | {total['losses']} | {total['judged']} |")
    return "\n".join(lines) + "\n"


TRAIN_SIGNALS = [
    ("rewards/margins", "margin"),
    ("grad_norm", "grad norm"),
    ("noise/std_max", "max noise std"),
    ("noise/ref_rejected_logps_shift", "noise shift of ref_rejected_logps"),
]


def train_signals(runs: dict[str, dict[int, Path]]) -> str:
    """Tabulate step metrics of iterations 1+: the mean over each run's steps, then over seeds."""
    lines = [
        "Training step metrics of iterations 1 and later: the mean over an iteration's optimizer "
        f"steps{over_seeds(runs, 'then the mean')}. The margin is `rewards/margins`: β times the "
        "gap between the chosen and rejected log-ratios. The noise shift is how far the noise moves the reference "
        "log-prob of the rejected answer, in nats per sequence; '-' where a method has no noise.",
        "",
        "| method | iteration | " + " | ".join(label for _, label in TRAIN_SIGNALS) + " |",
        "|---|---|" + "---|" * len(TRAIN_SIGNALS),
    ]
    for method, by_seed in runs.items():
        iterations = sorted({int(path.parent.parent.name.removeprefix("iter_"))
                             for run_dir in by_seed.values()
                             for path in run_dir.glob("iter_*/train/train_log.jsonl")} - {0})
        for iteration in iterations:
            cells = []
            for key, _ in TRAIN_SIGNALS:
                per_seed = []
                for run_dir in by_seed.values():
                    log = run_dir / f"iter_{iteration}" / "train" / "train_log.jsonl"
                    values = [row[key] for row in read_jsonl(log) if key in row] if log.is_file() else []
                    if values:
                        per_seed.append(statistics.mean(values))
                cells.append(f"{statistics.mean(per_seed):.2f}" if per_seed else "-")
            lines.append(f"| {method} | {iteration} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def compute_time(runs: dict[str, dict[int, Path]]) -> str:
    seconds: dict[str, float] = {}
    for method, by_seed in runs.items():
        for run_dir in by_seed.values():
            for manifest in run_dir.glob("iter_*/manifest.json"):
                if manifest.parent.name == "iter_0" and method != "spin":
                    continue
                stages = read_json(manifest).get("stages", {})
                seconds[method] = seconds.get(method, 0.0) + sum(
                    stage.get("seconds", 0.0) for stage in stages.values())
    total = sum(seconds.values())
    cells = ", ".join(f"{method} {value / 60:.1f}" for method, value in seconds.items())
    return (f"Compute: {total / 60:.1f} min of stage wall time in all ({cells} min; spin includes "
            "the shared iteration 0 of every seed).\n")


def plot_accuracy(accuracy: dict[str, dict[int, list[float]]], path: Path, several_seeds: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    start = accuracy.get("start", {}).get(0, [])
    for method, per_iteration in accuracy.items():
        if method == "start":
            continue
        iterations = sorted(per_iteration)
        xs = [k + 1 for k in iterations]
        means = [100 * statistics.mean(per_iteration[k]) for k in iterations]
        lows = [100 * min(per_iteration[k]) for k in iterations]
        highs = [100 * max(per_iteration[k]) for k in iterations]
        if start:
            xs, means = [0, *xs], [100 * statistics.mean(start), *means]
            lows, highs = [100 * min(start), *lows], [100 * max(start), *highs]
        line, = axis.plot(xs, means, marker="o", label=method)
        axis.fill_between(xs, lows, highs, color=line.get_color(), alpha=0.12)
    axis.xaxis.get_major_locator().set_params(integer=True)
    axis.set_xlabel("model M_k (k = iterations trained)")
    axis.set_ylabel("held-out accuracy (points)")
    axis.set_title("Held-out accuracy: mean over seeds, band = min to max" if several_seeds
                   else "Held-out accuracy")
    axis.grid(alpha=0.3)
    axis.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def seed_count(runs: dict[str, dict[int, Path]]) -> int:
    return len({seed for by_seed in runs.values() for seed in by_seed})


def over_seeds(runs: dict[str, dict[int, Path]], aggregate: str) -> str:
    """Return ', AGGREGATE over seeds' for several seeds, or ', seed S' for a single seed."""
    seeds = sorted({seed for by_seed in runs.values() for seed in by_seed})
    return f", {aggregate} over seeds" if len(seeds) > 1 else f", seed {seeds[0]}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    root = Path(args.runs)
    runs = find_runs(root)
    if not runs:
        print(f"no finished runs under {root}; run experiments/run_results.py first", file=sys.stderr)
        return 2
    table, accuracy = accuracy_table(runs)
    sections = [
        "## Held-out accuracy\n\n" + table,
        "## Generated answers against the references\n\n" + verifier_rates(runs),
        f"## {args.head_to_head[0]} against {args.head_to_head[1]}\n\n"
        + head_to_head(runs, *args.head_to_head, root),
        "## Training signals\n\n" + train_signals(runs),
        "## Compute\n\n" + compute_time(runs),
    ]
    text = "\n".join(sections)
    Path(args.tables).parent.mkdir(parents=True, exist_ok=True)
    Path(args.tables).write_text(text, encoding="utf-8")
    plot_accuracy(accuracy, Path(args.plot), several_seeds=seed_count(runs) > 1)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
