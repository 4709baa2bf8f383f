"""Loading the policy (and its tokenizer) from a hub id, a local path, or the tiny offline builders."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from r1_lightning.errors import MissingPathError
from r1_lightning.tiny import base as tiny

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
TINY_MODELS = ("tiny:random", "tiny:arithmetic", "tiny:arithmetic-small", "tiny:reasoning", "tiny:tools")
Quantization = Literal["4bit", "8bit"]
OPTIMIZERS = ("adamw", "adamw_8bit", "paged_adamw_8bit", "paged_adamw")


@dataclass(frozen=True)
class LoraSettings:
    """LoRA adapters (peft) on the policy; the reference is then the base with adapters disabled.

    Args:
        r: adapter rank.
        alpha: scaling numerator (the update is ``alpha / r * B A``).
        dropout: dropout on the adapter input. 0 keeps the importance ratio exactly 1 before an update.
        target_modules: module names to adapt, or ``all-linear`` (every linear layer but the LM head).
    """

    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: str | list[str] = "all-linear"


def as_lora(value: LoraSettings | dict | None) -> LoraSettings | None:
    """LoRA settings arrive as the dataclass, or as a plain dict from saved hyperparameters."""
    if value is None or isinstance(value, LoraSettings):
        return value
    return LoraSettings(**dict(value))


def quantization_config(kind: Quantization | None, compute_dtype: torch.dtype) -> Any:
    """A transformers ``BitsAndBytesConfig`` (NF4 with double quantization for 4-bit, LLM.int8 for 8-bit)."""
    if kind is None:
        return None
    from transformers import BitsAndBytesConfig

    if kind == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype,
        )
    if kind == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    raise ValueError(f"quantization must be '4bit', '8bit' or None, got {kind!r}")


def unpackable_4bit_layers(model: Any) -> list[str]:
    """Keep 4-bit layers that bitsandbytes' AVX-512 CPU kernel cannot take on its portable path.

    On a CPU with AVX-512 BF16, bitsandbytes repacks each ``Linear4bit`` weight for its fused CPU
    kernel the first time the layer runs in eval mode without gradients (our rollouts). The repacking
    needs ``out_features`` divisible by 32 and ``in_features`` divisible by the quantization block
    (64): a narrower layer fails deep inside bitsandbytes (``shape '[32, 0]' is invalid``), while an
    AVX2 CPU, which never repacks, runs it fine. Such layers are switched to the portable path that
    every CPU takes, so the same model works on both. Returns the names of the layers switched.
    """
    switched = []
    for name, module in model.named_modules():
        if type(module).__name__ not in ("Linear4bit", "LinearNF4", "LinearFP4"):
            continue
        blocksize = getattr(getattr(module.weight, "quant_state", None), "blocksize", None) or 64
        if module.out_features % 32 or module.in_features % blocksize:
            module.support_avx512bf16_for_cpu = False
            switched.append(name)
    if switched:
        log.debug("4-bit layers kept off the AVX-512 packed CPU kernel (too narrow to pack): %s", switched)
    return switched


def apply_lora(model: Any, settings: LoraSettings, quantized: bool, gradient_checkpointing: bool) -> Any:
    """Wrap ``model`` in peft LoRA adapters (QLoRA when its weights are bitsandbytes-quantized)."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if quantized:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=settings.target_modules,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def _flat(params: Any) -> list[torch.Tensor]:
    """The tensors of a parameter list or of parameter groups (``{"params": [...]}``)."""
    flat = []
    for item in params:
        flat += list(item["params"]) if isinstance(item, dict) else [item]
    return flat


def build_optimizer(
    name: str, params: list[torch.nn.Parameter], lr: float, weight_decay: float, betas: tuple[float, float]
) -> torch.optim.Optimizer:
    """AdamW, or bitsandbytes' 8-bit / paged AdamW (optimizer state in 8 bits, or paged to CPU on OOM)."""
    if name == "adamw":
        # The fused kernel (TRL's default too: transformers' `adamw_torch_fused`) updates each parameter in one
        # pass; the per-tensor loop builds a temporary the size of the parameter (0.5 GiB for Qwen2.5-0.5B's
        # embedding), and that temporary set the peak of a step at research shapes (README, Performance).
        plain = [type(p.data) is torch.Tensor and p.device.type in ("cpu", "cuda") for p in _flat(params)]
        fused = all(plain) and bool(plain)  # (not for FSDP2's sharded DTensor parameters)
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=betas, fused=fused or None)
    if name not in OPTIMIZERS:
        raise ValueError(f"`model.optimizer` must be one of {OPTIMIZERS}, got {name!r}")
    import bitsandbytes as bnb

    cls = {
        "adamw_8bit": bnb.optim.AdamW8bit,
        "paged_adamw_8bit": bnb.optim.PagedAdamW8bit,
        "paged_adamw": bnb.optim.PagedAdamW,
    }[name]
    return cls(params, lr=lr, weight_decay=weight_decay, betas=betas)


def resolve_model_path(name_or_path: str) -> str:
    """``tiny:*`` names become cached local folders (built on first use); anything else is unchanged.

    ``tiny:<name>?seed=N`` builds the pretrained tiny bases with pretraining seed ``N`` (default 0): a
    different initialisation and corpus draw, and so a different base, as a different CPU's arithmetic
    gives. The showcases' robustness over bases is measured with it (``benchmarks/showcase_seeds.py``)."""
    if not name_or_path.startswith("tiny:"):
        return name_or_path
    name, seed = _tiny_seed(name_or_path)
    if name == "tiny:random":
        if seed is not None:
            raise ValueError(f"{name_or_path!r}: tiny:random takes no seed; drop '?seed=...'")
        return str(tiny.tiny_random_path())
    if name == "tiny:arithmetic":
        return str(tiny.tiny_base_path(_seeded(tiny.BaseRecipe(), seed)))
    if name == "tiny:arithmetic-small":
        return str(tiny.tiny_small_base_path(_seeded(tiny.SMALL_RECIPE, seed)))
    if name == "tiny:tools":
        from r1_lightning.tiny.tool_base import ToolBaseRecipe, tiny_tools_path

        return str(tiny_tools_path(_seeded(ToolBaseRecipe(), seed)))
    if name == "tiny:reasoning":
        from r1_lightning.tiny.reasoning import ReasoningBaseRecipe, tiny_reasoning_path

        return str(tiny_reasoning_path(_seeded(ReasoningBaseRecipe(), seed)))
    raise ValueError(f"unknown tiny model {name_or_path!r}; choose one of {TINY_MODELS} (optionally '?seed=N')")


def _tiny_seed(name_or_path: str) -> tuple[str, int | None]:
    """``("tiny:reasoning", 3)`` from ``"tiny:reasoning?seed=3"``; a malformed suffix is one clear error."""
    name, _, query = name_or_path.partition("?")
    if not query:
        return name, None
    key, _, value = query.partition("=")
    if key != "seed" or not value.isdigit():
        raise ValueError(f"model {name_or_path!r}: after '?' only 'seed=<non-negative integer>' is understood")
    return name, int(value)


def _seeded(recipe: Any, seed: int | None) -> Any:
    from dataclasses import replace

    return recipe if seed is None else replace(recipe, seed=seed)


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
    quantization: Quantization | None = None,
) -> tuple[Any, Any]:
    """``(model, tokenizer)`` from a hub id, a local HF folder, or ``tiny:random`` / ``tiny:arithmetic``.

    Args:
        name_or_path: hub id (``Qwen/Qwen2.5-0.5B``), local folder, or a tiny offline model name.
        dtype: parameter dtype: ``float32``, ``bfloat16``, ``float16`` (use bf16-mixed precision in the
            trainer for mixed training instead).
        attn_implementation: ``eager``, ``sdpa``, ``flash_attention_2``; None = transformers' default.
        gradient_checkpointing: recompute activations in the backward pass (non-reentrant).
        quantization: load the weights in ``4bit`` (NF4) or ``8bit`` with bitsandbytes (frozen; train
            them through LoRA adapters = QLoRA, or use it for the reference).
    """
    from transformers import AutoModelForCausalLM

    if dtype not in DTYPES:
        raise ValueError(f"`model.dtype` must be one of {sorted(DTYPES)}, got {dtype!r}")
    path = resolve_model_path(name_or_path)
    looks_local = path.startswith((".", "/", "~")) or os.sep in path.strip("/").split("/", 1)[-1]
    if looks_local and not Path(path).expanduser().exists():
        raise MissingPathError(
            f"model path {path!r} does not exist (from `model.model`, or evaluate's `--model`); relative paths "
            f"start at {Path.cwd()}"
        )
    try:
        tokenizer = load_tokenizer(path)
        model = AutoModelForCausalLM.from_pretrained(
            path,
            dtype=DTYPES[dtype],
            attn_implementation=attn_implementation,
            trust_remote_code=trust_remote_code,
            quantization_config=quantization_config(quantization, DTYPES[dtype]),
        )
    except OSError as err:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        hint = " (HF_HUB_OFFLINE=1 is set: only cached models load)" if offline else ""
        raise OSError(f"could not load model {name_or_path!r}{hint}: {err}") from err
    if quantization == "4bit":
        unpackable_4bit_layers(model)
    if gradient_checkpointing and quantization is None:  # QLoRA enables it in prepare_model_for_kbit_training
        enable_activation_checkpointing(model)
    model.config.use_cache = False  # training forwards never need a cache; generation asks for one
    return model, tokenizer


def enable_activation_checkpointing(model: Any) -> None:
    """Recompute activations in backward (non-reentrant), under the name the installed transformers uses:
    ``activation_checkpointing_enable`` from 5.24 (the old ``gradient_checkpointing_enable`` warns there)."""
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def freeze(model: torch.nn.Module) -> torch.nn.Module:
    """A frozen copy's setup: eval mode, no gradients (so no optimizer state either)."""
    model.eval()
    model.requires_grad_(False)
    return model


def save_policy(
    policy: Any, tokenizer: Any, directory: str | Path, lora: bool = False, quantized: bool = False
) -> Path:
    """Write a policy and its tokenizer as a ``save_pretrained`` folder ``AutoModelForCausalLM`` loads.

    LoRA adapters are folded into a plain copy of the model (``merge_and_unload``); with a quantized
    base (QLoRA) only the adapters are written (load them on the base with peft).
    """
    import copy

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if lora and not quantized:
        policy = copy.deepcopy(policy).merge_and_unload()
    elif lora:
        log.info("QLoRA: exporting the LoRA adapters only (load them on the base with peft)")
    policy.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def optimizer_and_scheduler(module: Any, params: list) -> dict[str, Any]:
    """``configure_optimizers`` of the policy modules (GRPO, SFT): the configured optimizer and a
    transformers scheduler stepped every optimizer step, from ``module.hparams`` (``optimizer``, ``lr``,
    ``weight_decay``, ``betas``, ``lr_scheduler``, ``warmup_steps``)."""
    from transformers import get_scheduler

    hp = module.hparams
    optimizer = build_optimizer(hp.optimizer, params, hp.lr, hp.weight_decay, tuple(hp.betas))
    max_steps = module.trainer.max_steps
    total = max_steps if max_steps and max_steps > 0 else None
    if total is None and hp.lr_scheduler not in ("constant", "constant_with_warmup"):
        raise ValueError(f"`model.lr_scheduler` {hp.lr_scheduler!r} needs `trainer.max_steps` to be set")
    scheduler = get_scheduler(
        hp.lr_scheduler, optimizer, num_warmup_steps=hp.warmup_steps, num_training_steps=total or 1
    )
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
