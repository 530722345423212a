"""Load SFT datasets as prompt/reference examples.

Every format becomes the same SFT example record:
`{"id": str, "prompt": [messages], "reference": str, "gold_answer": str | None,
"metadata": {...}}`. Accepted row layouts:

- messages: UltraChat-200k style, a `messages` list whose final assistant turn is the
  reference and whose earlier turns are the prompt.
- prompt_response: `prompt` (text or messages) and `response` (text or assistant message).
- gsm8k: `question` and `answer`; the gold answer is the text after `####`.
- seed_tasks: self-instruct seed tasks, `instruction` plus `instances[0].input` as the
  prompt and `instances[0].output` (or `output`) as the reference.

A bad row is skipped and counted by reason; the load fails only when no row is usable.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dnpo.chat import normalize_completion, normalize_prompt
from dnpo.configbase import ConfigError, Section, option
from dnpo.errors import DataError
from dnpo.messages import format_count

logger = logging.getLogger(__name__)

FORMATS = ("auto", "messages", "prompt_response", "gsm8k", "seed_tasks")
FIELD_NAMES = (
    "id",
    "messages",
    "system",
    "prompt",
    "response",
    "question",
    "answer",
    "instruction",
    "input",
    "output",
    "instances",
    "gold_answer",
)
# Read when the id field is absent: UltraChat-200k names its id `prompt_id`.
FALLBACK_ID_FIELDS = ("prompt_id",)
MAX_LOGGED_BAD_LINES = 10
LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv", ".txt")
CALCULATOR_ANNOTATION = re.compile(r"<<[^<>]*>>")
# The flag that `add_data_arguments` gives each DataConfig field, for error
# messages of the commands that take those flags.
DATA_FLAGS = {
    "path": "--data",
    "subset": "--data-subset",
    "split": "--data-split",
    "format": "--data-format",
    "fields": "--data-field",
    "max_examples": "--max-examples",
    "seed": "--data-seed",
}

Row = dict[str, Any]
Example = dict[str, Any]


class SkipRow(Exception):
    """A row that cannot become an example; `reason` is the count key."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class DataConfig(Section):
    section_name = "data"

    path: str = option("", "local JSONL/JSON/Parquet file or dataset folder, or a hub dataset name")
    subset: str = option("", "hub dataset configuration name, e.g. main for gsm8k")
    split: str = option("train", "split to read from a hub dataset or a dataset folder")
    format: str = option(
        "auto", "row layout: auto, messages, prompt_response, gsm8k or seed_tasks", FORMATS
    )
    fields: dict[str, str] = option(
        {},
        f"field name overrides, e.g. {{prompt: instruction_text}}; keys: {', '.join(FIELD_NAMES)}",
    )
    max_examples: int = option(0, "keep at most this many examples, sampled with seed; 0 keeps all")
    seed: int = option(0, "seed of the max_examples subsample")

    def validate(self) -> None:
        super().validate()
        unknown = sorted(set(self.fields) - set(FIELD_NAMES))
        if unknown:
            raise ConfigError(
                f"{self._field_name('fields')}: unknown field keys {unknown}; "
                f"valid keys: {', '.join(FIELD_NAMES)}"
            )
        if self.max_examples < 0:
            raise ConfigError(
                f"{self._field_name('max_examples')} must be >= 0, got {self.max_examples}"
            )

    def field(self, name: str) -> str:
        """Return the row key of the canonical field `name`."""
        return self.fields.get(name, name)

    def option_name(self, name: str, flags: Mapping[str, str] | None = None) -> str:
        """Return the name of field `name` for messages: its flag in `flags`, else section.field."""
        if flags and name in flags:
            return flags[name]
        return self._field_name(name)


def load_sft_examples(
    config: DataConfig, flags: Mapping[str, str] | None = None
) -> tuple[list[Example], dict[str, int]]:
    """Load SFT examples and the count of skipped rows per reason.

    `flags` maps field names to the command-line flags that set them (DATA_FLAGS),
    so that error messages name those flags instead of config fields such as data.format.
    Raises DataError when the source has no usable row.
    """
    if not config.path:
        raise ConfigError(
            f"{config.option_name('path', flags)} is empty; set it to a JSONL/Parquet file "
            "or a hub dataset name"
        )
    skips: Counter[str] = Counter()
    examples: list[Example] = []
    seen: set[str] = set()
    fmt = None if config.format == "auto" else config.format
    detect_error: DataError | None = None
    for location, row in iter_rows(config, skips, flags):
        if fmt is None and isinstance(row, dict):
            # The first row whose keys name a layout sets the format, so a single
            # odd row at the top of a file is skipped instead of failing the load.
            try:
                fmt = detect_format(row, config, flags)
            except DataError as error:
                detect_error = detect_error or error
                skips["unknown_format"] += 1
                continue
        if fmt is None:
            skips["not_an_object"] += 1
            continue
        try:
            example = parse_row(row, fmt, config)
        except SkipRow as skip:
            skips[skip.reason] += 1
            continue
        if example["id"] in seen:
            skips["duplicate_id"] += 1
            continue
        seen.add(example["id"])
        location_key, location_value = location
        example["metadata"][location_key] = location_value
        examples.append(example)
    skip_counts = dict(sorted(skips.items()))
    if fmt is None and detect_error is not None:
        raise detect_error
    if not examples:
        raise DataError(
            f"{config.path}: no usable rows (format {fmt or 'unknown'}); skipped rows by reason: "
            f"{skip_counts or 'none, the source is empty'}. Check "
            f"{config.option_name('format', flags)} and {config.option_name('fields', flags)}."
        )
    if skip_counts:
        logger.warning(
            "Skipped %s of %s: %s",
            format_count(sum(skip_counts.values()), "row"),
            config.path,
            skip_counts,
        )
    examples = subsample(examples, config.max_examples, config.seed)
    logger.info(
        "Loaded %s (%s format) from %s", format_count(len(examples), "example"), fmt, config.path
    )
    return examples, skip_counts


def subsample(examples: list[Example], max_examples: int, seed: int) -> list[Example]:
    """Keep `max_examples` examples drawn with `seed`, in their original order."""
    if not max_examples or len(examples) <= max_examples:
        return examples
    keep = sorted(random.Random(seed).sample(range(len(examples)), max_examples))
    return [examples[i] for i in keep]


# Reading rows


def iter_rows(
    config: DataConfig, skips: Counter[str], flags: Mapping[str, str] | None = None
) -> Iterator[tuple[tuple[str, int], Any]]:
    """Yield (location, row) from a local file, a dataset folder or a hub dataset.

    The location is ("line", 1-based line number) for JSONL files and ("row_index",
    0-based index) otherwise; it is stored in the example's metadata.
    """
    # `~` is expanded as in model paths, because neither Path nor datasets expand it.
    path = Path(config.path).expanduser()
    if missing_local_file(config.path):
        raise DataError(
            f"data file {config.path} not found; pass an existing JSONL/JSON/Parquet file, "
            "a dataset folder or a hub dataset name"
        )
    if not path.is_file():
        rows = load_hub_rows(config.replace(path=str(path)) if path.is_dir() else config, flags)
    elif path.suffix.lower() == ".jsonl":
        for number, row in iter_jsonl_rows(path, skips):
            yield ("line", number), row
        return
    elif path.suffix.lower() == ".json":
        rows = read_json_rows(path, skips)
    elif path.suffix.lower() == ".parquet":
        rows = read_parquet_rows(path)
    else:
        raise DataError(
            f"{path}: unsupported file type {path.suffix!r}; use .jsonl, .json or .parquet"
        )
    for index, row in enumerate(rows):
        yield ("row_index", index), row


def empty_local_file(path: str) -> bool:
    """Return whether `path` is a local file with no bytes other than whitespace."""
    file = Path(path).expanduser()
    if not file.is_file():
        return False
    size = file.stat().st_size
    return size == 0 or (size < 4096 and not file.read_bytes().strip())


def missing_local_file(path: str) -> bool:
    """Return whether `path` names a local file (by suffix or path form) that does not exist."""
    local = Path(path).suffix.lower() in LOCAL_SUFFIXES or path.startswith(("/", "./", "../", "~"))
    return local and not Path(path).expanduser().exists()


def iter_jsonl_rows(path: Path, skips: Counter[str]) -> Iterator[tuple[int, Any]]:
    """Yield (line number, parsed row); count lines that are not UTF-8 or not JSON."""
    logged = 0
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            reason = None
            try:
                yield number, json.loads(raw.decode("utf-8"))
                continue
            except UnicodeDecodeError:
                reason = "invalid_utf8"
            except json.JSONDecodeError:
                reason = "invalid_json"
            skips[reason] += 1
            logged += 1
            if logged <= MAX_LOGGED_BAD_LINES:
                logger.warning("%s:%d: skipped a line (%s)", path, number, reason)
            elif logged == MAX_LOGGED_BAD_LINES + 1:
                logger.warning("%s: more unreadable lines; the final skip counts list them", path)


def read_json_rows(path: Path, skips: Counter[str]) -> list[Any]:
    """Read a JSON array of rows; a file of one JSON object per line is read as JSONL."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text; re-encode the file as UTF-8") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return [row for _, row in iter_jsonl_rows(path, skips)]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON array of rows, got {type(data).__name__}")
    return data


def read_parquet_rows(path: Path) -> list[Row]:
    import pyarrow
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except pyarrow.ArrowException as error:
        raise DataError(f"{path}: not a readable Parquet file: {error}") from None


def load_hub_rows(config: DataConfig, flags: Mapping[str, str] | None = None) -> Iterator[Row]:
    """Read a split of a dataset folder or hub dataset through `datasets.load_dataset`."""
    import datasets

    try:
        dataset = datasets.load_dataset(config.path, config.subset or None, split=config.split)
    except FileNotFoundError:
        if Path(config.path).is_dir():
            raise DataError(
                f"dataset folder {config.path} contains no data files; put JSONL, JSON or "
                "Parquet files in it, or pass a file"
            ) from None
        raise DataError(
            f"dataset {config.path!r} not found: no such local file and no such hub dataset"
        ) from None
    except ValueError as error:
        raise DataError(f"dataset {config.path!r} (split {config.split!r}): {error}") from None
    except ConnectionError:
        raise DataError(
            f"dataset {config.path!r} not found: no such local file or folder, and the hub "
            f"cannot be reached; check {config.option_name('path', flags)}, or download the "
            "dataset once while online"
        ) from None
    return iter(dataset)


# Parsing rows


def detect_format(row: Any, config: DataConfig, flags: Mapping[str, str] | None = None) -> str:
    """Name the format of a row from its keys; raise DataError naming the keys when unknown."""
    format_option = config.option_name("format", flags)
    if not isinstance(row, dict):
        raise DataError(
            f"{config.path}: rows must be JSON objects, got {type(row).__name__}; "
            f"set {format_option}"
        )
    if config.field("messages") in row:
        return "messages"
    if config.field("question") in row and config.field("answer") in row:
        return "gsm8k"
    if config.field("instruction") in row:
        return "seed_tasks"
    if config.field("prompt") in row:
        return "prompt_response"
    raise DataError(
        f"{config.path}: cannot detect the row format from keys {sorted(row)}; set "
        f"{format_option} to one of {list(FORMATS[1:])} and map field names with "
        f"{config.option_name('fields', flags)}"
    )


def parse_row(row: Any, fmt: str, config: DataConfig) -> Example:
    """Turn one row into an SFT example or raise SkipRow with the reason."""
    if not isinstance(row, dict):
        raise SkipRow("not_an_object")
    prompt, reference, gold_answer, used = PARSERS[fmt](row, config)
    if gold_answer is None:
        gold_answer = optional_text(row.get(config.field("gold_answer")))
    prompt = add_system_prompt(prompt, row.get(config.field("system")))
    used = set(used) | {config.field("gold_answer"), config.field("system"), config.field("id")}
    used |= set(FALLBACK_ID_FIELDS)
    metadata = {key: value for key, value in row.items() if key not in used}
    metadata["format"] = fmt
    example = {
        "id": row_id(row, prompt, config),
        "prompt": prompt,
        "reference": reference,
        "gold_answer": gold_answer,
        "metadata": metadata,
    }
    check_encodable(example)
    return example


def check_encodable(example: Example) -> None:
    """Raise SkipRow for text that UTF-8 cannot encode, such as a lone surrogate from `\\ud800`.

    Tokenizers reject such text, and the generations file could not store it.
    """
    try:
        json.dumps(example, ensure_ascii=False, default=str).encode("utf-8")
    except UnicodeEncodeError:
        raise SkipRow("invalid_unicode") from None


def parse_messages(row: Row, config: DataConfig) -> tuple[list, str, None, list[str]]:
    key = config.field("messages")
    messages = row.get(key)
    if messages is None:
        raise SkipRow("missing_prompt")
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise SkipRow("invalid_type")
    if not messages:
        raise SkipRow("missing_prompt")
    last = messages[-1]
    if last.get("role") == "user":
        raise SkipRow("ends_with_user_turn")
    if last.get("role") != "assistant":
        raise SkipRow("invalid_prompt")
    reference = check_reference(last.get("content"))
    prompt = check_prompt(messages[:-1])
    return prompt, reference, None, [key]


def parse_prompt_response(row: Row, config: DataConfig) -> tuple[list, str, None, list[str]]:
    prompt_key, response_key = config.field("prompt"), config.field("response")
    prompt = check_prompt(row.get(prompt_key))
    reference = check_reference(row.get(response_key))
    return prompt, reference, None, [prompt_key, response_key]


def parse_gsm8k(row: Row, config: DataConfig) -> tuple[list, str, str | None, list[str]]:
    """GSM8K row; `<<48/2=24>>` calculator annotations are removed from the reference."""
    question_key, answer_key = config.field("question"), config.field("answer")
    prompt = check_prompt(row.get(question_key))
    reference = check_reference(row.get(answer_key))
    reference = CALCULATOR_ANNOTATION.sub("", reference)
    gold = optional_text(row.get(config.field("gold_answer"))) or gsm8k_gold_answer(reference)
    return prompt, reference, gold, [question_key, answer_key]


def parse_seed_task(row: Row, config: DataConfig) -> tuple[list, str, None, list[str]]:
    """Seed task row: the instruction, then the first instance's input, is the prompt."""
    keys = [config.field(k) for k in ("instruction", "instances", "input", "output")]
    instruction_key, instances_key, input_key, output_key = keys
    instruction = row.get(instruction_key)
    instance = {}
    instances = row.get(instances_key)
    if instances is not None:
        if not isinstance(instances, list) or not instances or not isinstance(instances[0], dict):
            raise SkipRow("invalid_type")
        instance = instances[0]
    task_input = instance.get(input_key, row.get(input_key)) or ""
    output = instance.get(output_key, row.get(output_key))
    if instruction is None:
        raise SkipRow("missing_prompt")
    if not isinstance(instruction, str) or not isinstance(task_input, str):
        raise SkipRow("invalid_type")
    text = instruction.strip()
    if task_input.strip():
        text = f"{text}\n\n{task_input.strip()}"
    return check_prompt(text), check_reference(output), None, keys


PARSERS = {
    "messages": parse_messages,
    "prompt_response": parse_prompt_response,
    "gsm8k": parse_gsm8k,
    "seed_tasks": parse_seed_task,
}


def check_prompt(prompt: Any) -> list[dict[str, str]]:
    """Return the prompt as messages ending in a non-empty user turn, or raise SkipRow."""
    if prompt is None or prompt == []:
        raise SkipRow("missing_prompt")
    if not isinstance(prompt, (str, list)):
        raise SkipRow("invalid_type")
    if isinstance(prompt, list) and any(
        not isinstance(m, dict) or not isinstance(m.get("content"), (str, type(None)))
        for m in prompt
    ):
        raise SkipRow("invalid_type")
    try:
        messages = normalize_prompt(prompt)
    except ValueError:
        if isinstance(prompt, str):
            raise SkipRow("empty_prompt") from None
        raise SkipRow("invalid_prompt") from None
    if not messages[-1]["content"].strip():
        raise SkipRow("empty_prompt")
    return messages


def check_reference(reference: Any) -> str:
    if reference is None:
        raise SkipRow("missing_reference")
    try:
        text = normalize_completion(reference)
    except ValueError:
        raise SkipRow("invalid_type") from None
    if not text.strip():
        raise SkipRow("empty_reference")
    return text


def add_system_prompt(prompt: list[dict[str, str]], system: Any) -> list[dict[str, str]]:
    """Prepend a row-level system prompt unless the messages already start with one."""
    if not isinstance(system, str) or not system.strip() or prompt[0]["role"] == "system":
        return prompt
    return [{"role": "system", "content": system}, *prompt]


def optional_text(value: Any) -> str | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def gsm8k_gold_answer(answer: str) -> str | None:
    """Return the text after the last `####` of a GSM8K answer, or None without one."""
    if "####" not in answer:
        return None
    gold = answer.rsplit("####", 1)[1].strip()
    return gold or None


def row_id(row: Row, prompt: list[dict[str, str]], config: DataConfig) -> str:
    """Return the row's own id, else the first 16 hex digits of the prompt's SHA-256."""
    keys = [config.field("id")]
    if "id" not in config.fields:
        keys.extend(FALLBACK_ID_FIELDS)
    for key in keys:
        value = row.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (str, int)) or str(value) == "":
            raise SkipRow("invalid_id")
        return str(value)
    return prompt_hash(prompt)


def prompt_hash(prompt: list[dict[str, str]]) -> str:
    text = json.dumps(prompt, ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def add_data_arguments(parser: Any) -> None:
    """Add `--data` and the `--data-*` options of a DataConfig to an argparse parser."""
    parser.add_argument(
        "--data", required=True, help="JSONL/JSON/Parquet file, dataset folder or hub name"
    )
    parser.add_argument(
        "--data-subset", default="", help="hub dataset configuration name (e.g. main)"
    )
    parser.add_argument(
        "--data-split", default="train", help="split of a hub dataset (default: train)"
    )
    parser.add_argument(
        "--data-format", default="auto", choices=FORMATS, help="row layout (default: auto)"
    )
    parser.add_argument(
        "--data-field",
        action="append",
        default=[],
        metavar="NAME=KEY",
        help=f"read field NAME from row key KEY (repeatable); NAME: {', '.join(FIELD_NAMES)}",
    )
    parser.add_argument(
        "--max-examples", type=int, default=0, help="sample at most N prompts (0: all)"
    )
    parser.add_argument(
        "--data-seed", type=int, default=0, help="seed of the --max-examples sample"
    )


def data_config_from_args(args: Any) -> DataConfig:
    """Build a DataConfig from the options of `add_data_arguments`.

    Invalid values raise ConfigError naming the flag, as DataConfig would name the field.
    """
    fields = {}
    for item in args.data_field:
        name, sep, key = item.partition("=")
        if not sep or not key:
            raise ConfigError(
                f"invalid --data-field {item!r}; write it as NAME=KEY, e.g. prompt=text"
            )
        if name in fields and fields[name] != key:
            raise ConfigError(
                f"--data-field {name} is given twice ({name}={fields[name]} and {item}); "
                "pass each field once"
            )
        fields[name] = key
    unknown = sorted(set(fields) - set(FIELD_NAMES))
    if unknown:
        raise ConfigError(
            f"--data-field: unknown field names {unknown}; valid names: {', '.join(FIELD_NAMES)}"
        )
    if args.max_examples < 0:
        raise ConfigError(f"--max-examples must be >= 0, got {args.max_examples}")
    return DataConfig.from_dict(
        {
            "path": args.data,
            "subset": args.data_subset,
            "split": args.data_split,
            "format": args.data_format,
            "fields": fields,
            "max_examples": args.max_examples,
            "seed": args.data_seed,
        },
        prefix="data.",
    )
