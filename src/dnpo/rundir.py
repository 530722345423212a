"""Run directories: the resolved config, per-iteration manifests and the summary table.

Layout of `output_dir/name`:
    config.yaml           resolved RunConfig; rerunning with a different config is an error
    summary.json/.md      one row per finished iteration
    iter_K/manifest.json  versions, seeds, checksums, settings, stage status and wall time
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import platform
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from dnpo.config import RunConfig
from dnpo.configbase import ConfigError, read_run_config
from dnpo.io import atomic_write_json, atomic_write_text, read_json

logger = logging.getLogger(__name__)

# Lock files of the run directories this process holds, open until the process exits.
_HELD_LOCKS: dict[Path, Any] = {}

# Changed fields listed in the error for a changed config; the rest are counted.
MAX_DIFFERENCES_SHOWN = 10

# Fields that may change between invocations of the same run.
EXTENSIBLE_FIELDS = {"loop.iterations", "loop.report"}

PACKAGES = ("dnpo", "torch", "transformers", "accelerate", "peft", "datasets", "openai", "vllm", "trl")

SUMMARY_COLUMNS = [
    ("iteration", "iteration"),
    ("method", "method"),
    ("accuracy", "held-out accuracy"),
    ("generated_win_rate", "generated-win rate"),
    ("judge_failed", "judge failures"),
    ("pairs", "pairs used"),
    ("mean_margin", "mean margin"),
    ("mean_noise_std", "mean noise std"),
    ("minutes", "minutes"),
]


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_differences(
    old: dict[str, Any], new: dict[str, Any], defaults: dict[str, Any] | None = None
) -> list[str]:
    """List `field: old -> new` for every flattened field that differs.

    A field missing from `old` that has its default value in `new` is no difference:
    a run written before the field existed ran with that default.
    """
    old_flat, new_flat = flatten(old), flatten(new)
    default_flat = flatten(defaults or {})
    lines = []
    for key in sorted(set(old_flat) | set(new_flat)):
        if key in EXTENSIBLE_FIELDS:
            continue
        if key not in old_flat and key in default_flat and new_flat.get(key) == default_flat[key]:
            continue
        if old_flat.get(key, "<unset>") != new_flat.get(key, "<unset>"):
            lines.append(f"{key}: {old_flat.get(key, '<unset>')!r} -> {new_flat.get(key, '<unset>')!r}")
    return lines


def join_differences(differences: list[str]) -> str:
    """Join `config_differences` lines with "; ", listing the first MAX_DIFFERENCES_SHOWN."""
    listed = differences[:MAX_DIFFERENCES_SHOWN]
    if len(differences) > len(listed):
        listed.append(f"and {len(differences) - len(listed)} more")
    return "; ".join(listed)


def open_run_dir(config: RunConfig, new_run: bool = False) -> tuple[Path, RunConfig]:
    """Create the run directory or check that an existing one has the same config.

    With `new_run`, an existing run is left alone and the next free name `NAME-N` is used.
    """
    parent = Path(config.loop.output_dir)
    run_dir = parent / config.loop.name
    if new_run and (run_dir / "config.yaml").exists():
        n = 1
        while (parent / f"{config.loop.name}-{n}" / "config.yaml").exists():
            n += 1
        config = config.replace(loop={**config.loop.to_dict(), "name": f"{config.loop.name}-{n}"})
        run_dir = parent / config.loop.name
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write_test"
        probe.write_text("", encoding="utf-8")
        probe.unlink()
    except OSError as error:
        raise ConfigError(
            f"cannot write to run directory {run_dir}: {error.strerror}; "
            "set loop.output_dir to a writable folder"
        ) from None
    lock_run_dir(run_dir)
    config_path = run_dir / "config.yaml"
    new = config.to_dict()
    if config_path.exists():
        old = read_run_config(config_path, "move it away or set loop.name to another run name") or {}
        if not isinstance(old, dict) or not set(old) & set(new):
            raise ConfigError(
                f"{config_path} is not a dnpo run config; move it away or set loop.name to "
                "another run name"
            )
        differences = config_differences(old, new, type(config)().to_dict())
        if differences:
            raise ConfigError(
                f"run {run_dir} exists with a different config ({join_differences(differences)}); "
                "rerun with the original config to resume, or pass --new-run to start a new run"
            )
        old_iterations = (old.get("loop") or {}).get("iterations", 0)
        if config.loop.iterations < old_iterations:
            raise ConfigError(
                f"run {run_dir} has loop.iterations={old_iterations}, got {config.loop.iterations}; "
                f"pass --iterations {old_iterations} or more to resume (iterations can only grow), "
                "or --new-run to start a new run"
            )
    remove_temporary_files(run_dir)
    atomic_write_text(config_path, yaml.safe_dump(new, sort_keys=False, allow_unicode=True))
    return run_dir, config


def lock_run_dir(run_dir: Path) -> None:
    """Take an exclusive lock on run_dir/.lock until this process exits.

    Two processes appending to the same run would write records twice. The operating
    system drops the lock when the process exits, also after a SIGKILL. Without
    `fcntl` (Windows) no lock is taken.
    """
    key = run_dir.resolve()
    if key in _HELD_LOCKS:
        return
    try:
        import fcntl
    except ImportError:
        return
    handle = open(run_dir / ".lock", "a", encoding="utf-8")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise ConfigError(
            f"run directory {run_dir} is in use by another dnpo process; wait for it to "
            "finish, or set loop.name to start a separate run"
        ) from None
    _HELD_LOCKS[key] = handle


def remove_temporary_files(run_dir: Path) -> None:
    """Delete the temporary files of atomic writes that a killed process left behind."""
    for path in run_dir.rglob(".*.tmp"):
        if path.is_file():
            logger.info("Removing %s, left by an interrupted write", path)
            path.unlink()


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def git_commit() -> str:
    """Commit of the dnpo source tree, or '' when it is not a git checkout."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return result.stdout.strip() if result.returncode == 0 else ""


def text_hash(text: str | None) -> str:
    return hashlib.sha256((text or "").encode("utf-8")).hexdigest()[:16]


class Manifest:
    """The manifest.json of one iteration, rewritten atomically on every change."""

    def __init__(self, path: Path, defaults: dict[str, Any]) -> None:
        self.path = path
        self.data = read_json(path) if path.exists() else {**defaults, "stages": {}}
        self.data.setdefault("stages", {})
        self.save()

    def done(self, stage: str) -> bool:
        return self.data["stages"].get(stage, {}).get("status") == "done"

    def update(self, **fields: Any) -> None:
        self.data.update(fields)
        self.save()

    def save(self) -> None:
        atomic_write_json(self.path, self.data)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Record a stage's status and accumulated wall time, across resumed attempts."""
        entry = self.data["stages"].setdefault(name, {"status": "pending", "seconds": 0.0})
        entry["status"] = "running"
        entry["attempts"] = entry.get("attempts", 0) + 1
        self.save()
        start = time.monotonic()
        try:
            yield
        finally:
            entry["seconds"] = round(entry["seconds"] + time.monotonic() - start, 2)
            self.save()
        entry["status"] = "done"
        self.save()


def write_summary(run_dir: Path, rows: list[dict[str, Any]]) -> str:
    """Write summary.json and summary.md; return the markdown table."""
    atomic_write_json(run_dir / "summary.json", {"rows": rows})
    table = format_table(rows)
    atomic_write_text(run_dir / "summary.md", table + "\n")
    return table


def format_table(rows: list[dict[str, Any]]) -> str:
    header = "| " + " | ".join(title for _, title in SUMMARY_COLUMNS) + " |"
    rule = "|" + "|".join("---" for _ in SUMMARY_COLUMNS) + "|"
    lines = [header, rule]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(key)) for key, _ in SUMMARY_COLUMNS) + " |")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)
