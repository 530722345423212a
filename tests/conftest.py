import os
from pathlib import Path

import pytest
import torch

from dnpo.testing import make_tiny_model, make_tiny_tokenizer

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DNPO_SHARED", REPO_ROOT.parent / "shared"))

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def tiny_tokenizer():
    return make_tiny_tokenizer()


@pytest.fixture
def tiny_model(tiny_tokenizer):
    return make_tiny_model(tiny_tokenizer)


@pytest.fixture
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"shared data directory not found at {SHARED}")
    return SHARED
