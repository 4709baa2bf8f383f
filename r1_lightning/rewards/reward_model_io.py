"""A saved reward model: loading it (``AutoModelForSequenceClassification`` + its template settings)
and scoring texts with it. Below both the training module (``reward_model.py``) and the reward that
uses a trained model (``rewards/reward_model_reward.py``), so neither imports the other."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import torch

from r1_lightning.console import expected_new_score_head
from r1_lightning.models.loading import DTYPES, load_tokenizer, resolve_model_path

#: the file in a reward model's folder that records its prompt template
RM_SETTINGS_FILE = "r1_reward_model.json"


def load_reward_model(path: str, dtype: str = "float32") -> tuple[Any, Any, dict]:
    """``(model, tokenizer, settings)`` of a reward model folder (or a causal LM to start one from)."""
    from transformers import AutoModelForSequenceClassification

    path = resolve_model_path(path)
    if not Path(path).exists() and path.startswith((".", "/")):
        raise FileNotFoundError(f"reward model path {path!r} does not exist")
    tokenizer = load_tokenizer(path)
    tokenizer.padding_side = "left"  # the score is read at the last position
    settings_file = Path(path) / RM_SETTINGS_FILE
    # Starting a reward model from a language model: its score head is new, and says so at length.
    starting = expected_new_score_head() if not settings_file.exists() else contextlib.nullcontext()
    with starting:
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=DTYPES[dtype])
    model.config.pad_token_id = tokenizer.pad_token_id
    settings = json.loads(settings_file.read_text()) if settings_file.exists() else {"template": "plain"}
    return model, tokenizer, settings


def score_texts(
    model: Any, tokenizer: Any, texts: list[str], batch_size: int = 32, max_length: int = 1024
) -> torch.Tensor:
    """Scalar rewards of ``texts`` (one forward per ``batch_size``), as a float tensor on the CPU."""
    device = next(model.parameters()).device
    scores = []
    for start in range(0, len(texts), batch_size):
        encoded = tokenizer(
            texts[start : start + batch_size],
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=max_length,
            add_special_tokens=False,
        ).to(device)
        scores.append(model(**encoded).logits[:, 0].float())
    return torch.cat(scores).cpu() if scores else torch.zeros(0)
