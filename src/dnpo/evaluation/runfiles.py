"""Read a run directory written by `dnpo run`, tolerating a run that is still going.

Iteration K lives in `iter_K/`: its generations and pairs, `train/` with the
checkpoint of M_{K+1} and the log-probs of its pairs under M_K, and `eval.json`.
Missing files read as None or an empty list, so callers can skip what is not
written yet.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from dnpo.chat import normalize_completion
from dnpo.configbase import read_run_config
from dnpo.io import read_json, read_jsonl

logger = logging.getLogger(__name__)

ITERATION_DIR = re.compile(r"^iter_(\d+)$")


def check_run_dir(run_dir: str | Path) -> Path:
    """Return `run_dir` as a Path, or raise FileNotFoundError naming what is missing."""
    path = Path(run_dir)
    if not path.is_dir():
        raise FileNotFoundError(
            f"run directory not found: {path}; pass the folder `dnpo run` wrote"
        )
    if not (path / "config.yaml").is_file() and not iterations(path):
        raise FileNotFoundError(
            f"{path} has neither config.yaml nor iter_K folders; pass a run directory"
        )
    return path


def iterations(run_dir: Path) -> list[int]:
    """Return the iteration numbers that have an `iter_K` folder, ascending."""
    found = []
    for child in run_dir.iterdir() if run_dir.is_dir() else []:
        match = ITERATION_DIR.match(child.name)
        if match and child.is_dir():
            found.append(int(match.group(1)))
    return sorted(found)


def iteration_dir(run_dir: Path, iteration: int) -> Path:
    return run_dir / f"iter_{iteration}"


def load_json(path: Path) -> dict[str, Any] | None:
    """Read a JSON object, or return None when the file is missing or invalid."""
    if not path.is_file():
        return None
    try:
        data = read_json(path)
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as error:
        logger.warning("Skipping unreadable %s: %s", path, error)
        return None
    return data if isinstance(data, dict) else None


def load_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read a JSONL file's records, or return [] when it is missing or invalid."""
    try:
        return read_jsonl(path)
    except (ValueError, UnicodeDecodeError, OSError) as error:
        logger.warning("Skipping unreadable %s: %s", path, error)
        return []


def run_config(run_dir: Path) -> dict[str, Any]:
    """Return config.yaml as a nested dict, or {} when it is missing.

    Raises ConfigError when config.yaml is not UTF-8 text or not valid YAML.
    """
    path = run_dir / "config.yaml"
    if not path.is_file():
        return {}
    data = read_run_config(path, "restore the config.yaml that `dnpo run` wrote there")
    return data if isinstance(data, dict) else {}


def run_name(run_dir: Path) -> str:
    return run_dir.resolve().name


def run_method(run_dir: Path) -> str:
    return str((run_config(run_dir).get("loop") or {}).get("method", "run"))


def eval_record(run_dir: Path, iteration: int) -> dict[str, Any]:
    return load_json(iteration_dir(run_dir, iteration) / "eval.json") or {}


def generation_logps_from_pairs(
    rows: list[dict[str, Any]], chosen_sources: dict[str, str] | None = None
) -> list[float]:
    """Log-probs of iteration K's generations under M_K, read from train/logps.jsonl rows.

    The generated answer is the rejected one unless the judge chose it
    (`chosen_source == "generated"`). A row without `chosen_source` takes it from
    `chosen_sources` (prompt id -> source, from pairs.jsonl).
    """
    chosen_sources = chosen_sources or {}
    out = []
    for row in rows:
        source = row.get("chosen_source") or chosen_sources.get(str(row.get("id")))
        key = "ref_chosen_logps" if source == "generated" else "ref_rejected_logps"
        if isinstance(row.get(key), (int, float)):
            out.append(float(row[key]))
    return out


def generation_logps(run_dir: Path, iteration: int) -> list[float]:
    """Log-probs of iteration K's generations under M_K, from iter_K's train/logps.jsonl."""
    iter_dir = iteration_dir(run_dir, iteration)
    rows = load_jsonl(iter_dir / "train" / "logps.jsonl")
    if not rows:
        return []
    sources = {
        str(pair.get("id")): pair.get("chosen_source")
        for pair in load_jsonl(iter_dir / "pairs.jsonl")
    }
    return generation_logps_from_pairs(rows, sources)


def chosen_answers(run_dir: Path, iteration: int) -> dict[str, str]:
    """Chosen answer text per prompt id from iter_K/pairs.jsonl."""
    out = {}
    for row in load_jsonl(iteration_dir(run_dir, iteration) / "pairs.jsonl"):
        try:
            out[str(row["id"])] = normalize_completion(row["chosen"])
        except (KeyError, ValueError):
            continue
    return out


def generated_answers(path: Path) -> dict[str, dict[str, Any]]:
    """Generation records keyed by prompt id, with `generated` normalized to text."""
    out = {}
    for row in load_jsonl(path):
        try:
            out[str(row["id"])] = {**row, "generated": normalize_completion(row["generated"])}
        except (KeyError, ValueError):
            continue
    return out


def model_path(run_dir: Path, model_index: int) -> str:
    """Return the checkpoint of M_m: iteration m's start model, else iter_{m-1}/train.

    M_0 falls back to config.yaml's `model.name_or_path`, resolved as `dnpo run` does.
    """
    manifest = load_json(iteration_dir(run_dir, model_index) / "manifest.json") or {}
    if manifest.get("start_model"):
        return str(manifest["start_model"])
    if model_index > 0:
        train_dir = iteration_dir(run_dir, model_index - 1) / "train"
        if train_dir.is_dir():
            return str(train_dir)
        raise FileNotFoundError(
            f"model M_{model_index} not found: {train_dir} is missing; "
            f"iteration {model_index - 1} has not finished training"
        )
    name = (run_config(run_dir).get("model") or {}).get("name_or_path")
    if not name:
        raise FileNotFoundError(f"{run_dir}/config.yaml names no model.name_or_path for M_0")
    from dnpo.models import resolve_model_path

    return resolve_model_path(str(name))
