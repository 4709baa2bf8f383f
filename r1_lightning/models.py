"""Loading the policy (and its tokenizer) from a hub id, a local path, or the tiny offline builders."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
TINY_MODELS = ("tiny:random", "tiny:arithmetic")


def resolve_model_path(name_or_path: str) -> str:
    """``tiny:*`` names become cached local folders (built on first use); anything else is unchanged."""
    from r1_lightning import tiny

    if name_or_path == "tiny:random":
        return str(tiny.tiny_random_path())
    if name_or_path == "tiny:arithmetic":
        return str(tiny.tiny_base_path())
    if name_or_path.startswith("tiny:"):
        raise ValueError(f"unknown tiny model {name_or_path!r}; choose one of {TINY_MODELS}")
    return name_or_path


def load_tokenizer(path: str) -> Any:
    """The tokenizer, left-padded for generation, with a pad token (the EOS one if it has none)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise ValueError(f"tokenizer of {path!r} has neither a pad nor an EOS token; set one before training")
        log.warning("tokenizer of %r has no pad token; using its EOS token %r", path, tokenizer.eos_token)
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_policy(
    name_or_path: str,
    dtype: str = "float32",
    attn_implementation: str | None = None,
    gradient_checkpointing: bool = False,
    trust_remote_code: bool = False,
) -> tuple[Any, Any]:
    """``(model, tokenizer)`` from a hub id, a local HF folder, or ``tiny:random`` / ``tiny:arithmetic``.

    Args:
        name_or_path: hub id (``Qwen/Qwen2.5-0.5B``), local folder, or a tiny offline model name.
        dtype: parameter dtype: ``float32``, ``bfloat16``, ``float16`` (use bf16-mixed precision in the
            trainer for mixed training instead).
        attn_implementation: ``eager``, ``sdpa``, ``flash_attention_2``; None = transformers' default.
        gradient_checkpointing: recompute activations in the backward pass (non-reentrant).
    """
    from transformers import AutoModelForCausalLM

    if dtype not in DTYPES:
        raise ValueError(f"`model.dtype` must be one of {sorted(DTYPES)}, got {dtype!r}")
    path = resolve_model_path(name_or_path)
    looks_local = path.startswith((".", "/", "~")) or os.sep in path.strip("/").split("/", 1)[-1]
    if looks_local and not Path(path).expanduser().exists():
        raise FileNotFoundError(f"model path {path!r} does not exist (from `model.model`)")
    try:
        tokenizer = load_tokenizer(path)
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=DTYPES[dtype], attn_implementation=attn_implementation, trust_remote_code=trust_remote_code
        )
    except OSError as err:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        hint = " (HF_HUB_OFFLINE=1 is set: only cached models load)" if offline else ""
        raise OSError(f"could not load model {name_or_path!r}{hint}: {err}") from err
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False  # training forwards never need a cache; generation asks for one
    return model, tokenizer


def freeze(model: torch.nn.Module) -> torch.nn.Module:
    """A frozen copy's setup: eval mode, no gradients (so no optimizer state either)."""
    model.eval()
    model.requires_grad_(False)
    return model
