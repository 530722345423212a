"""Tiny `dnpo run` set-ups for the reliability tests and the crash soak script.

A run uses the tiny byte-level Llama from `dnpo.testing`, the bundled arithmetic task
and small sizes, so one uninterrupted two-iteration run takes about 15 s on 2 CPU cores.
Runs are started as subprocesses (`python -m dnpo.cli`) so that a SIGKILL stops them
the way it stops a real run.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
import yaml

from dnpo.io import read_jsonl
from dnpo.testing import save_tiny_model

TRAIN_SIZE = 6
EVAL_SIZE = 4
# 6 pairs in batches of 4 give 2 optimizer steps per iteration.
TRAIN_STEPS = 2


def tiny_run_config(
    model_dir: Path, output_dir: Path, **sections: dict[str, Any]
) -> dict[str, Any]:
    """Return a two-iteration dnpo run config on the tiny model; `sections` update it."""
    config: dict[str, Any] = {
        "model": {"name_or_path": str(model_dir)},
        "data": {"path": "bundled:arithmetic"},
        "eval_data": {"path": "bundled:arithmetic"},
        "task": {"train_size": TRAIN_SIZE, "eval_size": EVAL_SIZE, "seed": 0},
        "generation": {"max_new_tokens": 16, "temperature": 0.7, "batch_size": 16},
        "judge": {"type": "verifier"},
        "train": {
            "mode": "dnpo",
            "learning_rate": 1e-3,
            "num_epochs": 1,
            "per_device_batch_size": 4,
            "max_length": 512,
            "max_prompt_length": 400,
            "save_steps": 1,
        },
        "eval": {"sbert": False},
        "loop": {
            "method": "dnpo",
            "iterations": 2,
            "name": "tiny",
            "output_dir": str(output_dir),
            "eval_max_new_tokens": 16,
            "report": False,
        },
    }
    for section, fields in sections.items():
        config.setdefault(section, {}).update(fields)
    return config


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def make_model(path: Path) -> Path:
    """Save the tiny model once and return its directory."""
    if not (path / "config.json").is_file():
        save_tiny_model(path)
    return path


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment of a dnpo subprocess: offline, 2 torch threads, `extra` added."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("DNPO_TEST_")}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="2")
    env.update(extra)
    return env


def run_dnpo(
    args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """Run `python -m dnpo.cli ARGS` and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "dnpo.cli", *args],
        cwd=cwd,
        env=env or subprocess_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def tensors_sha256(path: Path) -> str:
    """SHA-256 over a safetensors file's tensor names, dtypes, shapes and bytes.

    The file bytes themselves are no fingerprint: the order of the header's metadata
    keys can change between two saves of the same tensors.
    """
    from safetensors.torch import load_file

    digest = hashlib.sha256()
    for name, tensor in sorted(load_file(str(path)).items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def without_usage(record: dict[str, Any]) -> dict[str, Any]:
    """Drop a judgment's `usage` (latency, retries): it describes the call, not the score."""
    return {key: value for key, value in record.items() if key != "usage"}


def run_artifacts(run_dir: Path, iterations: int = 2) -> dict[str, Any]:
    """Collect what a finished run must reproduce: records by file, model checksums, metrics.

    JSONL files map to their records in file order. Judgment records lose `usage`.
    """
    artifacts: dict[str, Any] = {}
    for iteration in range(iterations):
        iter_dir = run_dir / f"iter_{iteration}"
        for name in (
            "generations.jsonl",
            "judgments.jsonl",
            "pairs.jsonl",
            "start_eval_generations.jsonl",
            "eval_generations.jsonl",
            "train/logps.jsonl",
        ):
            path = iter_dir / name
            if path.exists():
                records = read_jsonl(path)
                if name == "judgments.jsonl":
                    records = [without_usage(record) for record in records]
                artifacts[f"iter_{iteration}/{name}"] = records
        for path in sorted((iter_dir / "train").glob("*.safetensors")):
            artifacts[f"iter_{iteration}/train/{path.name}"] = tensors_sha256(path)
        labels = json.loads((iter_dir / "labels.json").read_text(encoding="utf-8"))
        labels.pop("judge", None)  # judge usage contains latencies
        artifacts[f"iter_{iteration}/labels.json"] = labels
        evaluation = json.loads((iter_dir / "eval.json").read_text(encoding="utf-8"))
        artifacts[f"iter_{iteration}/eval.json"] = {
            key: evaluation.get(key) for key in ("accuracy", "correct", "total", "start_accuracy")
        }
    return artifacts


def duplicate_ids(records: list[dict[str, Any]], key: str = "id") -> list[Any]:
    seen: set[Any] = set()
    duplicates = []
    for record in records:
        if record[key] in seen:
            duplicates.append(record[key])
        seen.add(record[key])
    return duplicates
