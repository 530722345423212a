"""`dnpo report RUN_DIR`: report.md with PNG plots under RUN_DIR/plots.

The report reads only files the run has written, so it works on a run that is
still going: a section whose inputs are missing shows "Not available yet" and the reason.
`dnpo run` rewrites it after every iteration.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

from dnpo.evaluation import plots
from dnpo.evaluation.lm_eval import PAPER_COLUMNS
from dnpo.evaluation.metrics import stagnation_verdict
from dnpo.evaluation.runfiles import (
    check_run_dir,
    eval_record,
    iteration_dir,
    iterations,
    load_json,
    load_jsonl,
    run_method,
    run_name,
)
from dnpo.io import atomic_write_text

logger = logging.getLogger(__name__)

PLOTS_DIR = "plots"
LOSS_KEYS = {"loss/model": "model loss", "loss/noise": "noise loss"}


def write_report(run_dir: str | Path) -> Path:
    """Write RUN_DIR/report.md and its plots; return the report's path."""
    run_dir = check_run_dir(run_dir)
    found = iterations(run_dir)
    evals = {k: eval_record(run_dir, k) for k in found}
    method = run_method(run_dir)
    sections = [
        _header(run_dir, method, found),
        _summary_section(run_dir),
        _benchmark_section(run_dir, found, evals),
        _accuracy_section(run_dir, found, evals),
        _judge_section(run_dir, found, evals),
        _win_rate_section(run_dir, found, evals),
        _similarity_section(found, evals),
        _logp_section(run_dir, found, evals),
        _loss_section(run_dir, found),
    ]
    path = run_dir / "report.md"
    atomic_write_text(path, "\n\n".join(sections).rstrip() + "\n")
    logger.info("Wrote %s", path)
    return path


def _header(run_dir: Path, method: str, found: list[int]) -> str:
    done = ", ".join(str(k) for k in found) or "none yet"
    return (
        f"# Run report: {run_name(run_dir)}\n\n"
        f"Method: {method}. Iterations present: {done}. "
        f"Written {time.strftime('%Y-%m-%d %H:%M:%S')}.\n\n"
        "Iteration K trains M_{K+1} from M_K; its evaluation describes M_{K+1}."
    )


def _not_available(reason: str) -> str:
    return f"Not available yet: {reason}."


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _table(header: list[str], rows: list[list[Any]], digits: int = 3) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(cell, digits) for cell in row) + " |")
    return "\n".join(lines)


def _image(run_dir: Path, path: Path, alt: str) -> str:
    return f"![{alt}]({path.relative_to(run_dir).as_posix()})"


def _summary_section(run_dir: Path) -> str:
    """summary.md as written by the run, else a table of summary.json's rows."""
    summary = run_dir / "summary.md"
    body = summary.read_text(encoding="utf-8").strip() if summary.is_file() else ""
    if not body:
        rows = [
            r
            for r in (load_json(run_dir / "summary.json") or {}).get("rows") or []
            if isinstance(r, dict)
        ]
        if rows:
            header = list(dict.fromkeys(key for row in rows for key in row))
            body = _table(header, [[row.get(key) for key in header] for row in rows])
    return "## Summary\n\n" + (body or _not_available("the summary is written after iteration 0"))


def _row_label(run_dir: Path, iteration: int) -> str:
    rows = (load_json(run_dir / "summary.json") or {}).get("rows") or []
    methods = {row.get("iteration"): row.get("method") for row in rows if isinstance(row, dict)}
    method = methods.get(iteration) or ("spin" if iteration == 0 else run_method(run_dir))
    return f"{method} iter {iteration}"


def _benchmark_section(run_dir: Path, found: list[int], evals: dict[int, dict]) -> str:
    """Table 1 layout: one row per model, the six benchmarks, their average, task accuracy."""
    title = "## Benchmarks\n\nRows are models: the start model M_0, then M_{K+1} after iteration K."
    start = evals.get(0, {})
    entries = [("start model (M_0)", start.get("start_lm_eval"), start.get("start_accuracy"))]
    for k in found:
        entries.append((_row_label(run_dir, k), evals[k].get("lm_eval"), evals[k].get("accuracy")))
    entries = [e for e in entries if e[1] or e[2] is not None]
    if not entries:
        return f"{title}\n\n" + _not_available("no iteration has an eval.json with scores")
    if not any(lm_eval for _, lm_eval, _ in entries):
        rows = [[label, accuracy] for label, _, accuracy in entries]
        note = "No lm-evaluation-harness scores in this run (set eval.lm_eval_tasks to add them)."
        return f"{title}\n\n{note}\n\n" + _table(["Model", "Held-out accuracy"], rows)
    extra = sorted(
        {name for _, lm_eval, _ in entries for name in (lm_eval or {}).get("scores", {})}
        - set(PAPER_COLUMNS)
    )
    header = ["Model", *PAPER_COLUMNS, "Average", *extra, "Held-out accuracy"]
    rows = []
    for label, lm_eval, accuracy in entries:
        scores = (lm_eval or {}).get("scores", {})
        rows.append(
            [
                label,
                *(scores.get(c) for c in PAPER_COLUMNS),
                (lm_eval or {}).get("average"),
                *(scores.get(c) for c in extra),
                accuracy,
            ]
        )
    return f"{title}\n\n" + _table(header, rows)


def _accuracy_section(run_dir: Path, found: list[int], evals: dict[int, dict]) -> str:
    title = "## Accuracy per iteration"
    series: dict[str, list[tuple[int, float]]] = {}
    baselines: dict[str, float] = {}
    for k in found:
        if evals[k].get("accuracy") is not None:
            series.setdefault("held-out accuracy", []).append((k, evals[k]["accuracy"]))
        average = (evals[k].get("lm_eval") or {}).get("average")
        if average is not None:
            series.setdefault("benchmark average", []).append((k, average))
    start = evals.get(0, {})
    if start.get("start_accuracy") is not None:
        baselines["held-out accuracy"] = start["start_accuracy"]
    if (start.get("start_lm_eval") or {}).get("average") is not None:
        baselines["benchmark average"] = start["start_lm_eval"]["average"]
    if not series:
        return f"{title}\n\n" + _not_available("no iteration has finished its evaluation")
    path = plots.plot_score_per_iteration(
        series,
        baselines,
        "Accuracy of $M_{K+1}$ after iteration $K$",
        "accuracy",
        run_dir / PLOTS_DIR / "accuracy.png",
    )
    return f"{title}\n\n{_image(run_dir, path, 'accuracy per iteration')}"


def _judge_summaries(run_dir: Path, found: list[int], evals: dict[int, dict]) -> dict[int, dict]:
    """Judge summary per iteration: eval.json's `judge`, else the label counts in labels.json."""
    out = {}
    for k in found:
        judge = evals[k].get("judge") or load_json(iteration_dir(run_dir, k) / "labels.json") or {}
        if (
            judge.get("mean_generated_score") is not None
            or judge.get("generated_win_rate") is not None
        ):
            out[k] = judge
    return out


def _judge_section(run_dir: Path, found: list[int], evals: dict[int, dict]) -> str:
    title = "## Judge score of generated data"
    judges = _judge_summaries(run_dir, found, evals)
    series: dict[str, list[tuple[int, float]]] = {}
    for k, judge in judges.items():
        for key, label in (
            ("mean_generated_score", "generated"),
            ("mean_reference_score", "human reference"),
        ):
            if judge.get(key) is not None:
                series.setdefault(label, []).append((k, judge[key]))
    if not series:
        return f"{title}\n\n" + _not_available(
            "no judgments yet (iteration 0 is plain SPIN and is not judged)"
        )
    path = plots.plot_score_per_iteration(
        series,
        {},
        "Mean judge score per iteration",
        "judge score (0-100)",
        run_dir / PLOTS_DIR / "judge_scores.png",
    )
    rows = [
        [k, j.get("mean_generated_score"), j.get("mean_reference_score")] for k, j in judges.items()
    ]
    table = _table(["Iteration", "Mean generated score", "Mean reference score"], rows, digits=2)
    return f"{title}\n\n{_image(run_dir, path, 'judge score per iteration')}\n\n{table}"


def _judge_failure_line(run_dir: Path, found: list[int]) -> str:
    """Return a line with the failed judge calls of each judged iteration, from labels.json.

    The win rates count only prompts whose two judge calls succeeded, so failures
    are listed next to them. Returns "" when no iteration was judged.
    """
    parts = []
    for k in found:
        labels = load_json(iteration_dir(run_dir, k) / "labels.json") or {}
        usage = labels.get("judge")
        if not labels.get("judged_labels") or not isinstance(usage, dict):
            continue
        part = f"iter {k}: {usage.get('failed_calls', 0)} of {usage.get('calls', 0)} calls failed"
        if labels.get("judge_failed"):
            causes = f"{labels.get('judgment_missing', 0)} of them had no judgment"
            # labels.json files written before the invalid-record count lack the key.
            if labels.get("judgment_invalid"):
                causes += f", {labels['judgment_invalid']} an invalid judgment record"
            part += (
                f", {labels['judge_failed']} of {labels.get('generations', '?')} prompts labeled "
                f"without the judge ({causes}), on_judge_failure={labels.get('on_judge_failure')}"
            )
        parts.append(part)
    if not parts:
        return ""
    return "Judge failures per iteration: " + "; ".join(parts) + "."


def _win_rate_section(run_dir: Path, found: list[int], evals: dict[int, dict]) -> str:
    title = "## Generated vs human reference"
    failures = _judge_failure_line(run_dir, found)
    judges = _judge_summaries(run_dir, found, evals)
    # labels.json, the fallback when eval.json has no judge summary, names the tie rate tie_rate.
    rows = [
        (
            k,
            j.get("generated_win_rate"),
            j.get("generated_tie_rate", j.get("tie_rate")),
            j.get("generated_loss_rate"),
        )
        for k, j in judges.items()
    ]
    rows = [row for row in rows if None not in row]
    if not rows:
        body = _not_available("no judged iteration yet")
        return f"{title}\n\n{body}" + (f"\n\n{failures}" if failures else "")
    path = plots.plot_win_tie_loss(
        [(f"iter {k}", w, t, lo) for k, w, t, lo in rows],
        "Generated answer vs human reference (judge)",
        run_dir / PLOTS_DIR / "win_rates.png",
        labels=("generated wins", "tie", "reference wins"),
    )
    table = _table(
        ["Iteration", "Generated wins", "Ties", "Reference wins"], [list(r) for r in rows]
    )
    body = f"{title}\n\n{_image(run_dir, path, 'generated vs reference')}\n\n{table}"
    return body + (f"\n\n{failures}" if failures else "")


def _similarity_section(found: list[int], evals: dict[int, dict]) -> str:
    title = (
        "## Similarity to the previous iteration's chosen answers\n\n"
        "Iteration K's generations against iteration K-1's chosen answers, matched by prompt."
    )
    rows = []
    for k in found:
        similarity = evals[k].get("similarity") or {}
        if similarity:
            rows.append(
                [
                    k,
                    similarity.get("pairs"),
                    similarity.get("bleu"),
                    similarity.get("rouge_l"),
                    similarity.get("sbert"),
                ]
            )
    if not rows:
        return f"{title}\n\n" + _not_available("needs two iterations with generations")
    return f"{title}\n\n" + _table(["Iteration", "Pairs", "BLEU", "ROUGE-L", "SBERT"], rows)


def _logp_section(run_dir: Path, found: list[int], evals: dict[int, dict]) -> str:
    title = (
        "## Log-prob distributions\n\n"
        "Panel k: sequence log-probs under M_k of iteration k's chosen and rejected answers "
        "and of iteration k+1's generations. Overlapping generation histograms mean the "
        "model stopped moving."
    )
    panels, stagnation_rows = [], []
    for k in found:
        pairs = load_jsonl(iteration_dir(run_dir, k) / "train" / "logps.jsonl")
        following = evals.get(k + 1, {})
        next_logps = [v for v in following.get("next_generation_logps") or [] if v is not None]
        if not pairs and not next_logps:
            continue
        stagnation = following.get("stagnation") or {}
        panels.append(
            {
                "iteration": k,
                "positive": [
                    r["ref_chosen_logps"] for r in pairs if r.get("ref_chosen_logps") is not None
                ],
                "negative": [
                    r["ref_rejected_logps"]
                    for r in pairs
                    if r.get("ref_rejected_logps") is not None
                ],
                "next": next_logps,
                "distance": stagnation.get("distance"),
            }
        )
        if stagnation:
            stagnation_rows.append(
                [
                    k,
                    k + 1,
                    stagnation.get("distance"),
                    stagnation.get("critical_value_5pct"),
                    stagnation.get("threshold"),
                    stagnation.get("standardized_mean_shift"),
                    stagnation_verdict(stagnation),
                ]
            )
    if not panels:
        return f"{title}\n\n" + _not_available("train/logps.jsonl is written by the first training")
    path = plots.plot_logp_histograms(panels, run_dir / PLOTS_DIR / "logp_histograms.png")
    body = f"{title}\n\n{_image(run_dir, path, 'log-prob histograms')}"
    if stagnation_rows:
        body += (
            "\n\nStagnation check: Kolmogorov-Smirnov distance between the two iterations' "
            "generation log-probs under the same model; below the threshold is stagnant. "
            "It is inconclusive when the 5% noise level is above the threshold and the "
            "distance is not above that level, because there are too few generations to "
            "tell stagnation from sampling noise.\n\n"
        )
        body += _table(
            [
                "Model",
                "Generations",
                "KS distance",
                "5% noise level",
                "Threshold",
                "Mean shift (std)",
                "Verdict",
            ],
            [[f"M_{r[0]}", f"iter {r[0]} vs {r[1]}", *r[2:]] for r in stagnation_rows],
        )
    return body


def _loss_section(run_dir: Path, found: list[int]) -> str:
    title = (
        "## Model loss vs noise loss\n\n"
        "The model term is minimized by the policy and the noise term by the noise head; "
        "iterations without noise (SPIN) show the plain loss."
    )
    panels, rows = [], []
    for k in found:
        log = [
            r
            for r in load_jsonl(iteration_dir(run_dir, k) / "train" / "train_log.jsonl")
            if isinstance(r.get("step"), (int, float))
        ]
        has_noise = any(isinstance(r.get("loss/noise"), (int, float)) for r in log)
        keys = LOSS_KEYS if has_noise else {"loss": "loss"}
        curves = {}
        for key, label in keys.items():
            points = [(r["step"], r[key]) for r in log if isinstance(r.get(key), (int, float))]
            if points:
                curves[label] = tuple(zip(*points, strict=True))
        if not curves:
            continue
        name = "model loss vs noise loss" if has_noise else "loss (no noise term)"
        panels.append({"iteration": k, "curves": curves, "title": f"Iteration {k}: {name}"})
        stds = [
            r["noise/std_mean"] for r in log if isinstance(r.get("noise/std_mean"), (int, float))
        ]
        last = log[-1]
        rows.append(
            [
                k,
                len(log),
                last.get("loss/model", last.get("loss")),
                last.get("loss/noise"),
                sum(stds) / len(stds) if stds else None,
                stds[-1] if stds else None,
            ]
        )
    if not panels:
        return f"{title}\n\n" + _not_available("train/train_log.jsonl is written during training")
    path = plots.plot_losses(panels, run_dir / PLOTS_DIR / "losses.png")
    table = _table(
        [
            "Iteration",
            "Logged steps",
            "Last model loss",
            "Last noise loss",
            "Mean noise std",
            "Last noise std",
        ],
        rows,
        digits=4,
    )
    return f"{title}\n\n{_image(run_dir, path, 'model loss vs noise loss')}\n\n{table}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="run directory written by `dnpo run`")


def main(args: argparse.Namespace) -> int:
    path = write_report(args.run_dir)
    print(path)
    return 0
