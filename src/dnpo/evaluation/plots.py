"""PNG plots of a run, drawn headless with matplotlib's Agg backend.

Each function takes plain lists and dicts gathered by `dnpo.report`, writes one PNG
and returns its path. They follow the figures of the DNPO paper: accuracy per
iteration against the starting model, judge scores of generated data, generated-vs-
reference win rates, log-prob distributions of positives, negatives and the next
iteration's generations, and model loss against noise loss.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

COLORS = {"positive": "tab:green", "negative": "tab:red", "next": "tab:blue"}


def _save(fig: Any, path: Path) -> Path:
    """Write the figure as PNG through a temporary file and a rename, so no PNG is ever torn."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    temporary = path.with_name(f".{path.name}.tmp")
    fig.savefig(temporary, dpi=110, format="png")
    plt.close(fig)
    os.replace(temporary, path)
    return path


def plot_score_per_iteration(
    series: dict[str, list[tuple[int, float]]],
    baselines: dict[str, float],
    title: str,
    ylabel: str,
    path: Path,
) -> Path:
    """Line plot of scores per iteration, with each baseline as a dashed horizontal line.

    `series` maps a label to (iteration, value) points; `baselines` maps a label to
    the starting model's value.
    """
    fig, ax = plt.subplots(figsize=(6, 4))
    for index, (label, points) in enumerate(series.items()):
        color = f"C{index}"
        xs, ys = zip(*points, strict=True) if points else ((), ())
        ax.plot(xs, ys, marker="o", color=color, label=label)
        for x, y in points:
            ax.annotate(
                f"{y:.3g}",
                (x, y),
                textcoords="offset points",
                xytext=(0, 6),
                ha="center",
                fontsize=8,
            )
        if label in baselines:
            ax.axhline(
                baselines[label],
                color=color,
                linestyle="--",
                linewidth=1,
                label=f"{label}: start model",
            )
    ax.set_title(title)
    ax.set_xlabel("iteration")
    ax.set_ylabel(ylabel)
    ax.margins(y=0.15)
    _integer_ticks(ax, [x for points in series.values() for x, _ in points])
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_win_tie_loss(
    rows: list[tuple[str, float, float, float]],
    title: str,
    path: Path,
    labels: tuple[str, str, str] = ("win", "tie", "loss"),
) -> Path:
    """Stacked bars of win, tie and loss rates; `rows` contains (x label, win, tie, loss) tuples."""
    fig, ax = plt.subplots(figsize=(6, 4))
    names = [row[0] for row in rows]
    bottoms = [0.0] * len(rows)
    for column, (label, color) in enumerate(
        zip(labels, ("tab:green", "tab:gray", "tab:red"), strict=True)
    ):
        values = [row[column + 1] for row in rows]
        bars = ax.bar(names, values, bottom=bottoms, color=color, label=label)
        for bar, value, bottom in zip(bars, values, bottoms, strict=True):
            if value >= 0.04:
                ax.text(
                    bar.get_x() + bar.get_width() / 2,
                    bottom + value / 2,
                    f"{value:.0%}",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white",
                )
        bottoms = [b + v for b, v in zip(bottoms, values, strict=True)]
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of prompts")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=3)
    return _save(fig, path)


def plot_logp_histograms(panels: list[dict[str, Any]], path: Path) -> Path:
    """Plot one histogram panel per iteration k, all sequence log-probs under M_k.

    Each panel dict has `iteration`, `positive`, `negative` and `next` (lists of
    floats, any may be empty) and an optional `distance` (Kolmogorov-Smirnov).
    """
    columns = min(3, len(panels))
    rows = (len(panels) + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(5 * columns, 3.6 * rows), squeeze=False)
    for ax, panel in zip(axes.flat, panels, strict=False):
        k = panel["iteration"]
        samples = {
            "positive": (panel["positive"], f"positive (chosen, iter {k})"),
            "negative": (panel["negative"], f"negative (rejected, iter {k})"),
            "next": (panel["next"], f"generated, iter {k + 1}"),
        }
        values = [v for sample, _ in samples.values() for v in sample]
        bins = _shared_bins(values)
        for key, (sample, label) in samples.items():
            if sample:
                ax.hist(sample, bins=bins, alpha=0.5, color=COLORS[key], label=label, density=True)
        title = f"Iteration {k}: log-probs under $M_{{{k}}}$"
        if panel.get("distance") is not None:
            title += f"\nKS distance iter {k} vs {k + 1} generations: {panel['distance']:.3f}"
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("sequence log-prob")
        ax.set_ylabel("density")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    return _save(fig, path)


def plot_losses(panels: list[dict[str, Any]], path: Path) -> Path:
    """Model loss and noise loss over optimizer steps, one panel per iteration.

    Each panel dict has `title` and `curves`: label -> (steps, values).
    """
    columns = min(3, len(panels))
    rows = (len(panels) + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(5 * columns, 3.4 * rows), squeeze=False)
    for ax, panel in zip(axes.flat, panels, strict=False):
        for label, (steps, values) in panel["curves"].items():
            ax.plot(steps, values, label=label, linewidth=1.2)
        ax.set_title(panel["title"], fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    return _save(fig, path)


def _shared_bins(values: list[float], count: int = 30) -> Any:
    import numpy as np

    if not values:
        return count
    low, high = min(values), max(values)
    if high - low < 1e-9:
        low, high = low - 0.5, high + 0.5
    return np.linspace(low, high, count + 1)


def _integer_ticks(ax: Any, xs: list[int]) -> None:
    if xs:
        ax.set_xticks(sorted(set(xs)))
