"""NPO training: trainable-noise preference optimization, plus fixed-noise, SPIN and DPO.

`train()` runs one training stage; `TrainConfig` contains its settings. The heavy
modules (torch, transformers) load on first use of `train` or `TrainResult`.
"""

from __future__ import annotations

from typing import Any

from dnpo.training.config import TrainConfig

__all__ = ["TrainConfig", "TrainResult", "train"]


def __getattr__(name: str) -> Any:
    if name in ("train", "TrainResult"):
        from dnpo.training import api

        return getattr(api, name)
    raise AttributeError(f"module 'dnpo.training' has no attribute {name!r}")
