"""lm-evaluation-harness on a checkpoint: the six benchmarks of DNPO's Table 1, or local tasks.

Install with `pip install 'dnpo[lm-eval]'`. The named tasks (`arc`, `truthfulqa`,
`winogrande`, `gsm8k`, `hellaswag`, `mmlu`, or `paper` for all six) download their
data sets from the Hugging Face hub, so they need internet. `gsm8k_local` reads a
GSM8K-format JSONL file (`question`, `answer` ending in `#### N`) and runs offline.

Any other harness task is written `harness:NAME`, e.g. `harness:piqa`. Config loading
checks only the names above, because checking a name against the harness's task
registry means importing `lm_eval.tasks` and building its `TaskManager`, which took
7.1 and 7.7 s in two tries (lm-eval 0.4.13, 2 busy CPU cores). `harness:` names are
checked when lm-eval runs, before the model is loaded.

Scores follow Table 1 of the DNPO paper (Dynamic Noise Preference Optimization for
LLM Self-Improvement via Synthetic Data). ARC is the mean of arc_easy and arc_challenge,
and TruthfulQA the mean of truthfulqa_mc1 and truthfulqa_mc2. Each task reports
normalized accuracy where the harness computes one (`acc_norm`), else `acc`, else
exact match.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.metadata
import importlib.util
import logging
from dataclasses import dataclass, field
from typing import Any

from dnpo.configbase import ConfigError
from dnpo.evaluation.config import EvalConfig

logger = logging.getLogger(__name__)

LOCAL_GSM8K = "gsm8k_local"
LOCAL_GSM8K_TASK = "dnpo_gsm8k_local"
PAPER_TASKS = "paper"
HARNESS_PREFIX = "harness:"

# Benchmark column -> harness tasks averaged into it.
PAPER_COLUMNS: dict[str, list[str]] = {
    "ARC": ["arc_easy", "arc_challenge"],
    "TruthfulQA": ["truthfulqa_mc1", "truthfulqa_mc2"],
    "Winogrande": ["winogrande"],
    "GSM8K": ["gsm8k"],
    "HellaSwag": ["hellaswag"],
    "MMLU": ["mmlu"],
}
TASK_ALIASES = {
    "arc": "ARC",
    "truthfulqa": "TruthfulQA",
    "winogrande": "Winogrande",
    "gsm8k": "GSM8K",
    "hellaswag": "HellaSwag",
    "mmlu": "MMLU",
}


# NOTE: the DNPO paper does not state its few-shot counts. These defaults are the
# Open LLM Leaderboard v1 settings (Hugging Face leaderboards documentation, archive page).
DEFAULT_NUM_FEWSHOT = {
    "arc_easy": 25,
    "arc_challenge": 25,
    "hellaswag": 10,
    "truthfulqa_mc1": 0,
    "truthfulqa_mc2": 0,
    "mmlu": 5,
    "winogrande": 5,
    "gsm8k": 5,
    LOCAL_GSM8K_TASK: 5,
}

# Metric keys in the harness's results, most preferred first.
METRIC_PREFERENCE = (
    "acc_norm,none",
    "acc,none",
    "exact_match,strict-match",
    "exact_match,flexible-extract",
    "exact_match,none",
)

# The harness's own GSM8K prompt and answer matching, on a local file.
GSM8K_PROMPT = "Question: {{question}}\nAnswer:"


@dataclass
class LmEvalPlan:
    """Harness tasks to run, grouped by few-shot count, and the column each feeds."""

    by_fewshot: dict[int, list[str | dict[str, Any]]] = field(default_factory=dict)
    columns: dict[str, list[str]] = field(default_factory=dict)


def gsm8k_local_task(
    path: str, fewshot_path: str = "", num_fewshot: int = 0, max_gen_toks: int = 256
) -> dict[str, Any]:
    """Harness task config for GSM8K read from local JSONL files.

    Prompt, stop strings and answer regexes are those of the harness's `gsm8k`
    task. Few-shot examples come from `fewshot_path`; without it the task is zero-shot.
    """
    data_files = {"test": path}
    if fewshot_path:
        data_files["train"] = fewshot_path
    elif num_fewshot:
        raise ValueError(
            f"gsm8k_local with num_fewshot={num_fewshot} needs eval.gsm8k_fewshot_path, "
            "a JSONL file to draw the examples from; set it or use num_fewshot=0"
        )
    task: dict[str, Any] = {
        "task": LOCAL_GSM8K_TASK,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": data_files},
        "test_split": "test",
        "output_type": "generate_until",
        "doc_to_text": GSM8K_PROMPT,
        "doc_to_target": "{{answer}}",
        "metric_list": [
            {
                "metric": "exact_match",
                "aggregation": "mean",
                "higher_is_better": True,
                "ignore_case": True,
                "ignore_punctuation": False,
                "regexes_to_ignore": [",", "\\$", "(?s).*#### ", "\\.$"],
            }
        ],
        "generation_kwargs": {
            "until": ["Question:", "</s>", "<|im_end|>"],
            "do_sample": False,
            "max_gen_toks": max_gen_toks,
        },
        "filter_list": [
            {
                "name": "strict-match",
                "filter": [
                    {"function": "regex", "regex_pattern": "#### (\\-?[0-9\\.\\,]+)"},
                    {"function": "take_first"},
                ],
            },
            {
                "name": "flexible-extract",
                "filter": [
                    {
                        "function": "regex",
                        "group_select": -1,
                        "regex_pattern": "(-?[$0-9.,]{2,})|(-?[0-9]+)",
                    },
                    {"function": "take_first"},
                ],
            },
        ],
        "metadata": {"version": 1.0},
    }
    if fewshot_path:
        task["training_split"] = "train"
        task["fewshot_split"] = "train"
    return task


def plan_tasks(config: EvalConfig) -> LmEvalPlan:
    """Expand `config.lm_eval_tasks` into harness tasks grouped by few-shot count."""
    plan = LmEvalPlan()
    names: list[str] = []
    for name in config.lm_eval_tasks:
        names.extend(TASK_ALIASES.values() if name == PAPER_TASKS else [harness_task_name(name)])
    for name in dict.fromkeys(names):
        column = TASK_ALIASES.get(name, name)
        if name == LOCAL_GSM8K:
            shots = _fewshot(config, LOCAL_GSM8K_TASK)
            if not config.gsm8k_fewshot_path:
                shots = 0 if config.lm_eval_num_fewshot < 0 else shots
            task = gsm8k_local_task(
                config.gsm8k_path, config.gsm8k_fewshot_path, shots, config.lm_eval_max_gen_toks
            )
            plan.by_fewshot.setdefault(shots, []).append(task)
            plan.columns[LOCAL_GSM8K] = [LOCAL_GSM8K_TASK]
            continue
        subtasks = PAPER_COLUMNS.get(column, [name])
        for subtask in subtasks:
            plan.by_fewshot.setdefault(_fewshot(config, subtask), []).append(subtask)
        plan.columns[column] = subtasks
    return plan


def _fewshot(config: EvalConfig, task: str) -> int:
    if config.lm_eval_num_fewshot >= 0:
        return config.lm_eval_num_fewshot
    return DEFAULT_NUM_FEWSHOT.get(task, 0)


def known_task_names() -> list[str]:
    """Return the `eval.lm_eval_tasks` names accepted without the `harness:` prefix."""
    harness_tasks = [task for tasks in PAPER_COLUMNS.values() for task in tasks]
    return list(dict.fromkeys([PAPER_TASKS, *TASK_ALIASES, *harness_tasks, LOCAL_GSM8K]))


def check_task_names(names: list[str]) -> None:
    """Raise ConfigError for a name that is neither known nor written `harness:NAME`."""
    known = known_task_names()
    for name in names:
        if name.startswith(HARNESS_PREFIX):
            if not name[len(HARNESS_PREFIX) :].strip():
                raise ConfigError(
                    f"eval.lm_eval_tasks: {name!r} names no task; write harness:NAME, "
                    "e.g. harness:piqa"
                )
            continue
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"; the closest valid name is {close[0]}" if close else ""
            raise ConfigError(
                f"eval.lm_eval_tasks: unknown task {name!r}; valid names: {', '.join(known)}, "
                f"or {HARNESS_PREFIX}NAME for any other lm-evaluation-harness task, e.g. "
                f"{HARNESS_PREFIX}{name}{hint}"
            )


def harness_task_name(name: str) -> str:
    """`harness:piqa` -> `piqa`; other names are returned unchanged."""
    return name[len(HARNESS_PREFIX) :] if name.startswith(HARNESS_PREFIX) else name


def require_harness() -> None:
    """Raise ConfigError when lm-evaluation-harness is not installed, without importing it."""
    if importlib.util.find_spec("lm_eval") is None:
        raise ConfigError(
            "eval.lm_eval_tasks is set but lm-evaluation-harness is not installed; install it "
            "with `pip install 'dnpo[lm-eval]'` or set eval.lm_eval_tasks to []"
        )


def check_registered(task_manager: Any, names: list[str]) -> None:
    """Raise ConfigError for a `harness:` name that the harness's task registry lacks."""
    registered = set(task_manager.all_tasks)
    for name in names:
        task = harness_task_name(name)
        if name.startswith(HARNESS_PREFIX) and task not in registered:
            close = difflib.get_close_matches(task, sorted(registered), n=5)
            hint = f"close matches: {', '.join(close)}" if close else "`lm-eval ls tasks` lists them"
            raise ConfigError(
                f"eval.lm_eval_tasks: {name!r} is not a task of lm-evaluation-harness "
                f"{importlib.metadata.version('lm_eval')}; {hint}"
            )


def run_lm_eval(
    model_path: str, config: EvalConfig, device: str | None = None, precision: str = "fp32"
) -> dict[str, Any]:
    """Run the configured harness tasks on a checkpoint and return the `lm_eval` record.

    The record contains the column scores and their average over the Table 1 columns
    present (`average_of` names them, and all six give Table 1's Average). It
    also contains per-task metrics and sample counts, each task's prompt template
    and few-shot count, and the harness version.
    """
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise ImportError(
            "lm-evaluation-harness is not installed; install it with `pip install 'dnpo[lm-eval]'` "
            "or set eval.lm_eval_tasks to []"
        ) from None
    import torch

    plan = plan_tasks(config)
    task_manager = TaskManager()
    check_registered(task_manager, config.lm_eval_tasks)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[precision]
    lm = HFLM(
        pretrained=model_path, device=device, batch_size=config.lm_eval_batch_size, dtype=dtype
    )
    raw: dict[str, Any] = {"results": {}, "configs": {}, "n-samples": {}, "n-shot": {}}
    for shots, tasks in sorted(plan.by_fewshot.items()):
        logger.info("lm-eval: %d-shot tasks %s", shots, [_task_name(t) for t in tasks])
        try:
            result = lm_eval.simple_evaluate(
                model=lm,
                tasks=tasks,
                num_fewshot=shots,
                limit=config.lm_eval_limit or None,
                task_manager=task_manager,
                apply_chat_template=config.lm_eval_apply_chat_template,
                log_samples=False,
                bootstrap_iters=0,
            )
        except ConnectionError as error:
            raise ConnectionError(
                f"lm-eval could not download the data of {[_task_name(t) for t in tasks]}: "
                f"{error}. Named tasks need the Hugging Face hub; offline, use gsm8k_local "
                "with eval.gsm8k_path"
            ) from error
        if result is None:  # non-zero ranks of a distributed run get nothing back
            continue
        for key in raw:
            raw[key].update(result.get(key) or {})
    record = summarize_results(raw, plan)
    record.update(
        {
            "harness_version": importlib.metadata.version("lm_eval"),
            "model": model_path,
            "limit": config.lm_eval_limit or None,
            "apply_chat_template": config.lm_eval_apply_chat_template,
            "chat_template_sha256": _chat_template_hash(lm, config.lm_eval_apply_chat_template),
        }
    )
    return record


def summarize_results(raw: dict[str, Any], plan: LmEvalPlan) -> dict[str, Any]:
    """Turn merged `simple_evaluate` outputs into column scores, average and templates.

    `raw` has the harness's `results`, `configs`, `n-samples` and `n-shot` maps.
    A column whose tasks did not all report a score is left out of `scores`.
    """
    tasks: dict[str, Any] = {}
    for name, metrics in raw.get("results", {}).items():
        metric, score = _pick_metric(metrics)
        if metric is None:
            continue
        samples = raw.get("n-samples", {}).get(name, {})
        tasks[name] = {
            "metric": metric,
            "score": score,
            "samples": samples.get("effective", metrics.get("sample_len")),
            "num_fewshot": raw.get("n-shot", {}).get(name),
        }
    scores = {}
    for column, subtasks in plan.columns.items():
        values = [tasks[t]["score"] for t in subtasks if t in tasks]
        if len(values) == len(subtasks):
            scores[column] = sum(values) / len(values)
    paper_columns = [c for c in PAPER_COLUMNS if c in scores]
    templates = {
        name: {
            "doc_to_text": config.get("doc_to_text"),
            "doc_to_target": config.get("doc_to_target"),
            "num_fewshot": config.get("num_fewshot"),
            "generation_kwargs": config.get("generation_kwargs"),
            "dataset_path": config.get("dataset_path"),
            "dataset_kwargs": config.get("dataset_kwargs"),
        }
        for name, config in raw.get("configs", {}).items()
    }
    return {
        "scores": scores,
        "average": _mean([scores[c] for c in paper_columns]),
        "average_of": paper_columns,
        "tasks": tasks,
        "templates": _json_safe(templates),
    }


def _pick_metric(metrics: dict[str, Any]) -> tuple[str | None, float | None]:
    """Return the preferred metric key (such as `acc_norm,none`) and its value."""
    for key in METRIC_PREFERENCE:
        value = metrics.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return key, float(value)
    return None, None


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _task_name(task: str | dict[str, Any]) -> str:
    return task["task"] if isinstance(task, dict) else task


def _chat_template_hash(lm: Any, applied: bool) -> str | None:
    template = getattr(getattr(lm, "tokenizer", None), "chat_template", None)
    if not applied or not isinstance(template, str):
        return None
    return hashlib.sha256(template.encode("utf-8")).hexdigest()


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)
