"""Helpers shared by the bench scripts: contender timing in turn, peak RSS, machine and report lines."""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path


def time_in_turn(
    contenders: dict[str, Callable[[int], object]], warmup: int, reps: int
) -> dict[str, float]:
    """Return the median seconds per contender, calling them in turn (a, b, c, a, b, c, ...).

    Each callable takes the repetition index. The first `warmup` rounds are not timed.
    Running the contenders in turn spreads changes in machine load over all of them.
    """
    seconds: dict[str, list[float]] = {name: [] for name in contenders}
    for rep in range(warmup + reps):
        for name, run in contenders.items():
            start = time.perf_counter()
            run(rep)
            if rep >= warmup:
                seconds[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in seconds.items()}


def cpu_model() -> str:
    """Return the CPU model name from /proc/cpuinfo, else what `platform` reports."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> str:
    """Return the 1, 5 and 15 minute load averages as text, or "n/a" where unsupported."""
    try:
        return ", ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "n/a"


def machine_line(torch_threads: int | None = None) -> str:
    text = f"{cpu_model()}, {os.cpu_count()} logical CPUs"
    if torch_threads is not None:
        text += f", torch threads {torch_threads}"
    return text


def versions_line(packages: tuple[str, ...]) -> str:
    """Return `python X, pkg Y, ...` for the installed packages among `packages`."""
    parts = [f"python {platform.python_version()}"]
    for name in packages:
        try:
            parts.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            parts.append(f"{name} not installed")
    return ", ".join(parts)


def command_line() -> str:
    """Return the command that started this script, relative to the repository root."""
    script = Path(sys.argv[0])
    try:
        script = script.resolve().relative_to(Path(__file__).resolve().parents[1])
    except ValueError:
        pass
    return shlex.join(["python", str(script), *sys.argv[1:]])


def header_lines(title: str, packages: tuple[str, ...], torch_threads: int | None,
                 load_before: str) -> list[str]:
    """Return the heading and the date, machine, versions, command and load lines of a report."""
    return [
        f"### {title}",
        "",
        f"- date: {datetime.date.today().isoformat()}",
        f"- machine: {machine_line(torch_threads)}",
        f"- versions: {versions_line(packages)}",
        f"- command: `{command_line()}`",
        f"- load average (1, 5, 15 min): {load_before} at start, {load_average()} at end",
    ]


def append_report(path: str | Path, report: str) -> None:
    """Append a report to a Markdown file, creating it with a title when missing.

    The file is opened in append mode, so sections that other scripts wrote stay as they are.
    """
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("# Benchmarks\n", encoding="utf-8")
    with open(path, "a", encoding="utf-8") as handle:
        handle.write("\n" + report)


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
