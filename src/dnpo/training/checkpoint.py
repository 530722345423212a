"""Checkpoint files: the policy as a transformers model directory, the noise head beside it.

A checkpoint directory contains what `AutoModelForCausalLM.from_pretrained` loads
(config.json, *.safetensors), the tokenizer, and `noise_head.safetensors` in dnpo
mode. The final checkpoint of a LoRA run contains the merged weights. Resumable LoRA
checkpoints contain the adapter (adapter_model.safetensors) instead, because resuming
needs the adapter and the untouched base. The frozen reference is never saved: it
is the starting model, which resuming loads again.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors.torch import load_file

from dnpo.training.model import PreferenceModel, causal_lm
from dnpo.training.noise import NOISE_HEAD_FILE, save_noise_head

logger = logging.getLogger(__name__)

SAFE_WEIGHTS = "model.safetensors"
SAFE_WEIGHTS_INDEX = "model.safetensors.index.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def split_state_dict(
    state_dict: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Split a PreferenceModel state dict into (policy, noise head) state dicts."""
    policy, head = {}, {}
    for key, value in state_dict.items():
        if key.startswith("policy."):
            policy[key.removeprefix("policy.")] = value
        elif key.startswith("noise_head."):
            head[key.removeprefix("noise_head.")] = value
    return policy, head


def save_checkpoint(
    model: PreferenceModel,
    directory: str | Path,
    state_dict: dict[str, torch.Tensor] | None = None,
    merge_lora: bool = False,
) -> Path:
    """Write the policy (and noise head) of `model` to `directory`.

    `state_dict` is the full PreferenceModel state dict when FSDP or DeepSpeed
    gathered it; without it the module's own state dict is used. `merge_lora=True`
    merges LoRA adapters into the weights in place, so call it only after training.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if state_dict is None:
        state_dict = model.state_dict()
    policy_state, head_state = split_state_dict(state_dict)
    if model.uses_lora and merge_lora:
        merged = model.policy.merge_and_unload()
        merged.save_pretrained(directory)
        model.policy = merged
    else:
        model.policy.save_pretrained(directory, state_dict=policy_state)
    if head_state:
        save_noise_head(head_state, directory / NOISE_HEAD_FILE)
    return directory


def read_model_weights(directory: str | Path) -> dict[str, torch.Tensor]:
    """Read a model's safetensors weights, single file or sharded with an index."""
    directory = Path(directory)
    if (directory / SAFE_WEIGHTS).is_file():
        return load_file(str(directory / SAFE_WEIGHTS))
    index = directory / SAFE_WEIGHTS_INDEX
    if not index.is_file():
        raise FileNotFoundError(f"no {SAFE_WEIGHTS} or {SAFE_WEIGHTS_INDEX} in {directory}")
    shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
    state: dict[str, torch.Tensor] = {}
    for shard in shards:
        state.update(load_file(str(directory / shard)))
    return state


def load_checkpoint(model: PreferenceModel, directory: str | Path) -> None:
    """Load a checkpoint written by `save_checkpoint(merge_lora=False)` into `model`."""
    directory = Path(directory)
    if model.uses_lora:
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(model.policy, load_file(str(directory / ADAPTER_WEIGHTS)))
        if result.unexpected_keys:
            raise ValueError(f"adapter in {directory} has unexpected keys {result.unexpected_keys[:5]}")
    else:
        lm = causal_lm(model.policy)
        state = read_model_weights(directory)
        result = lm.load_state_dict(state, strict=False)
        current = lm.state_dict()
        loaded_pointers = {current[key].data_ptr() for key in state if key in current}
        # A key absent from the file is fine when its tensor is tied to a loaded one.
        missing = [key for key in result.missing_keys if current[key].data_ptr() not in loaded_pointers]
        if missing or result.unexpected_keys:
            raise ValueError(
                f"checkpoint {directory} does not match the model: missing {missing[:5]}, "
                f"unexpected {result.unexpected_keys[:5]}"
            )
    if model.noise_head is not None:
        head_file = directory / NOISE_HEAD_FILE
        if not head_file.is_file():
            raise FileNotFoundError(f"{head_file} not found; a dnpo-mode checkpoint needs its noise head")
        model.noise_head.load_state_dict(load_file(str(head_file)))
    logger.info("Loaded policy%s from %s", " and noise head" if model.noise_head else "", directory)
