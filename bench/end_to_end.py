"""Wall time of each stage of a finished run, per iteration, and the total against 15 minutes.

The script reads RUN_DIR/iter_K/manifest.json, where the loop records each stage's
accumulated seconds (across resumed attempts) and each iteration's wall seconds. It
runs nothing. Two rates separate the work from the speed: generated tokens per second
(completion tokens in generations.jsonl over the generate stage) and train seconds per
optimizer step. The total is the sum of the iterations' wall seconds. An iteration
without wall seconds is unfinished and counts with the sum of its stages so far. The
span runs from the first manifest's creation time to the last manifest's modification
time, so it also covers work between iterations, such as writing the report.

    python bench/end_to_end.py runs/default
    python bench/end_to_end.py runs/default --note "quiet machine" --append docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path
from typing import Any

import yaml
from benchlib import append_report, header_lines, load_average

from dnpo.io import read_json, read_jsonl

STAGES = ("generate", "judge", "label", "train", "evaluate")
GOAL_SECONDS = 15 * 60


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="run directory holding iter_K/manifest.json")
    parser.add_argument("--note", default="",
                        help="a line about the conditions of the run, e.g. other load on the CPU")
    parser.add_argument("--append", metavar="FILE",
                        help="append the result table, machine and command to this Markdown file")
    return parser.parse_args(argv)


def iteration_dirs(run_dir: Path) -> list[Path]:
    """Return iter_K folders that hold a manifest, ordered by K."""
    if not run_dir.is_dir():
        raise SystemExit(f"run directory {run_dir} not found; pass the folder that `dnpo run` "
                         "wrote, e.g. runs/default")
    folders = [p for p in run_dir.glob("iter_*") if (p / "manifest.json").is_file()]
    if not folders:
        raise SystemExit(f"{run_dir} has no iter_K/manifest.json; pass a run directory "
                         "written by `dnpo run`")
    return sorted(folders, key=lambda p: int(p.name.split("_", 1)[1]))


def generated_tokens(iter_dir: Path) -> int | None:
    """Return the completion tokens in iter_K/generations.jsonl, or None without the file."""
    path = iter_dir / "generations.jsonl"
    if not path.is_file():
        return None
    return sum(int(record.get("completion_tokens", 0)) for record in read_jsonl(path))


def iteration_row(manifest: dict[str, Any], iter_dir: Path) -> dict[str, Any]:
    stages = manifest.get("stages", {})
    row: dict[str, Any] = {"iteration": manifest.get("iteration"), "mode": manifest.get("train_mode")}
    unfinished = []
    for name in STAGES:
        entry = stages.get(name)
        row[name] = entry.get("seconds") if entry else None
        if entry and entry.get("status") != "done":
            unfinished.append(f"{name} {entry.get('status')}")
    stage_sum = sum(row[name] or 0.0 for name in STAGES)
    row["wall"] = manifest.get("wall_seconds", stage_sum)
    row["finished"] = "wall_seconds" in manifest and not unfinished
    row["unfinished"] = unfinished
    row["other"] = row["wall"] - stage_sum
    # Rates separate the amount of work from the speed, which machine load changes.
    tokens = generated_tokens(iter_dir)
    row["generate_rate"] = tokens / row["generate"] if tokens and row["generate"] else None
    steps = manifest.get("train_result", {}).get("steps")
    row["train_step"] = row["train"] / steps if steps and row["train"] else None
    return row


def run_span(folders: list[Path]) -> float | None:
    """Return the seconds from the first manifest's `created` time to the last manifest's mtime."""
    created = read_json(folders[0] / "manifest.json").get("created")
    if not created:
        return None
    start = datetime.datetime.strptime(created, "%Y-%m-%dT%H:%M:%S%z").timestamp()
    end = max((folder / "manifest.json").stat().st_mtime for folder in folders)
    return end - start


def run_settings(run_dir: Path) -> str:
    path = run_dir / "config.yaml"
    if not path.is_file():
        return "config.yaml not found"
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    parts = [
        f"model {config['model']['name_or_path']}",
        f"method {config['loop']['method']}",
        f"{config['loop']['iterations']} iterations",
        f"train size {config['task']['train_size']}, eval size {config['task']['eval_size']}",
        f"max_new_tokens {config['generation']['max_new_tokens']}",
        f"judge {config['judge']['type']}",
        f"train precision {config['train']['precision']}",
    ]
    return ", ".join(parts)


def cell(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.1f}"


def format_report(args: argparse.Namespace, rows: list[dict[str, Any]], span: float | None,
                  manifest: dict[str, Any], load_before: str) -> str:
    versions = manifest.get("versions", {})
    lines = header_lines(f"end to end: stage wall time of run {args.run_dir}",
                         ("dnpo",), None, load_before)
    lines += [
        f"- run settings: {run_settings(args.run_dir)}",
        "- run versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()),
        f"- run started {manifest.get('created', 'unknown')}; the machine and load lines above "
        "describe where this script ran, which is where the run ran only if both say so",
    ]
    if args.note:
        lines.append(f"- note: {args.note}")
    lines += [
        "",
        "| iteration | train mode | " + " | ".join(f"{s} (s)" for s in STAGES)
        + " | other (s) | iteration (s) | generated tokens/s | train s per step |",
        "|---|---|" + "---|" * (len(STAGES) + 4),
    ]
    for row in rows:
        mark = "" if row["finished"] else f" (unfinished: {', '.join(row['unfinished']) or 'no wall time'})"
        lines.append(f"| {row['iteration']}{mark} | {row['mode']} | "
                     + " | ".join(cell(row[s]) for s in STAGES)
                     + f" | {cell(row['other'])} | {cell(row['wall'])} | "
                     f"{cell(row['generate_rate'])} | {cell(row['train_step'])} |")
    totals = {s: sum(row[s] or 0.0 for row in rows) for s in STAGES}
    total = sum(row["wall"] for row in rows)
    lines.append("| total | | " + " | ".join(cell(totals[s]) for s in STAGES)
                 + f" | {cell(sum(row['other'] for row in rows))} | {cell(total)} | | |")
    lines.append("| share of total | | " + " | ".join(f"{totals[s] / total:.0%}" for s in STAGES)
                 + " | | | | |")
    complete = all(row["finished"] for row in rows)
    verdict = "met" if total <= GOAL_SECONDS else "missed"
    lines += [
        "",
        f"Goal: the whole run within {GOAL_SECONDS // 60} minutes: {verdict} "
        f"({total / 60:.1f} min in the iterations"
        + (f", {span / 60:.1f} min from the first manifest to the last" if span else "")
        + (")." if complete else "; the run is unfinished, so the figure is a lower bound)."),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    load_before = load_average()
    folders = iteration_dirs(args.run_dir)
    manifests = [read_json(folder / "manifest.json") for folder in folders]
    rows = [iteration_row(manifest, folder) for manifest, folder in zip(manifests, folders, strict=True)]
    report = format_report(args, rows, run_span(folders), manifests[0], load_before)
    print(report)
    if args.append:
        append_report(args.append, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
