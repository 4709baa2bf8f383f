"""The memory a GRPO run will need, printed before its first rollout and checked against the machine.

Terms (bytes; ``e`` the parameter element size, ``h`` hidden, ``i`` MLP width, ``kv`` key/value width
``kv_heads x head_dim``, ``n`` heads, ``l`` layers, ``V`` vocabulary):

- **weights**: policy and reference parameters as loaded (a LoRA reference is the policy itself);
- **gradients**: ``e`` per trainable parameter; **optimizer**: AdamW's two moments, ``2e`` per trainable
  parameter (one byte each for bitsandbytes' 8-bit variants);
- **KV cache** of the largest generation (the training rollout, ``B x G`` rows, or a validation batch):
  ``rows x (prompt + max_new_tokens) x l x 2 kv x e``, preallocated by the lean decoder;
- **activations** saved for backward in one micro-batch: ``tokens x l x (8h + 4i + 2kv + n) x e`` plus
  ``2h`` per token for the embeddings and final norm, measured on Qwen2 layers with SDPA (each layer keeps
  its norms' inputs and outputs, q/k/v, the attention output and its log-sum-exp per head, the gate, up,
  activation and product of the MLP); ``tokens`` counts each group's prompt once when prompts are
  shared; plus one ``logprob_chunk_size x V`` block of float32 logits three times over (logits,
  probabilities, their gradient). With gradient checkpointing each layer keeps only its input (``h``) and
  one layer at a time is recomputed; with ``mlp_tile_tokens`` the MLP's four terms are kept for one tile
  only;
- **runtime**: what the process holds besides the weights (Python, torch, libraries, data): measured as
  resident memory minus the weights when the estimate is made, plus :data:`TRAINING_CODE_BYTES` for the
  library code and workspaces the first backward and optimizer step bring in (CPU); 0 on a GPU.

Peak = runtime + weights + gradients + optimizer + max(KV cache, activations) on a GPU, where generation
and training do not overlap and the caching allocator hands the cache's freed blocks to the activations;
on a CPU the sum of the two: glibc keeps what the KV cache freed in its heap (its mmap threshold rises
after the first large free), so the resident high-water mark holds both (measured). Checked against
measured peaks at two shapes (``tests/test_memory_plan.py``, within 25%).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from r1_lightning.errors import ConfigError
from r1_lightning.hf_compat import causal_lm

GIB = 1024**3
#: resident memory a CPU process gains in its first backward and optimizer step whatever the model's size:
#: libtorch's backward kernels and oneDNN's paged in, allocator workspaces (0.17-0.18 GiB measured at two
#: shapes, torch 2.13 CPU)
TRAINING_CODE_BYTES = int(0.18 * GIB)


@dataclass(frozen=True)
class MemoryEstimate:
    runtime: int
    weights: int
    gradients: int
    optimizer: int
    kv_cache: int
    activations: int
    phases_share_memory: bool = True

    @property
    def peak(self) -> int:
        held = self.runtime + self.weights + self.gradients + self.optimizer
        if self.phases_share_memory:
            return held + max(self.kv_cache, self.activations)
        return held + self.kv_cache + self.activations

    def describe(self, device_memory: int | None) -> str:
        parts = ", ".join(
            f"{name} {getattr(self, name) / GIB:.2f}"
            for name in ("weights", "gradients", "optimizer", "kv_cache", "activations", "runtime")
        )
        available = f" of {device_memory / GIB:.1f} GiB" if device_memory else ""
        return f"memory estimate: peak {self.peak / GIB:.2f} GiB{available} ({parts}; GiB, per rank)"


def resident_bytes() -> int:
    """This process's resident memory now (Linux ``/proc``; 0 elsewhere)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")


def device_memory(device: torch.device) -> int | None:
    """Total memory of ``device``: the GPU's, or the machine's RAM for a CPU (None if unknown)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _bytes(parameters: Any) -> int:
    return sum(p.numel() * p.element_size() for p in parameters)


def estimate_memory(
    policy: Any,
    reference: Any,
    optimizer: str,
    generation_rows: int,
    prompt_tokens: int,
    max_new_tokens: int,
    micro_batch_rows: int,
    group_size: int | None,
    chunk_size: int,
    runtime: int,
    checkpointing: bool = False,
    mlp_tile_tokens: int = 0,
    mlp_tile_above: int = 0,
) -> MemoryEstimate:
    """The terms of the module docstring for one rank. ``generation_rows`` is the largest batch of
    completions sampled at once; ``micro_batch_rows`` the rows of the largest training micro-batch;
    ``group_size`` set when each group's prompt runs once in training forwards."""
    config = causal_lm(policy).config
    layers, hidden, inter = config.num_hidden_layers, config.hidden_size, config.intermediate_size
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    kv = getattr(config, "num_key_value_heads", heads) * head_dim
    element = next(policy.parameters()).element_size()
    trainable = [p for p in policy.parameters() if p.requires_grad]
    weights = _bytes(policy.parameters()) + (_bytes(reference.parameters()) if reference is not None else 0)
    moments = 2 * (1 if "8bit" in optimizer else element)
    sequence = prompt_tokens + max_new_tokens
    kv_cache = generation_rows * sequence * layers * 2 * kv * element
    prompts = micro_batch_rows // group_size if group_size else micro_batch_rows
    tokens = (max(prompts, 1) * prompt_tokens if group_size else micro_batch_rows * prompt_tokens) + (
        micro_batch_rows * max_new_tokens
    )
    mlp = 4 * inter  # gate, up, activation and product, per token
    # token-tiled MLPs (models/tiled_mlp.py) keep none of these; backward recomputes one tile at a time
    tiled = mlp_tile_tokens > 0 and not checkpointing and tokens > max(mlp_tile_tokens, mlp_tile_above)
    layer = 8 * hidden + (0 if tiled else mlp) + 2 * kv + heads
    # gradient checkpointing keeps each layer's input and recomputes one layer at a time in backward
    per_token = (layers * hidden + layer if checkpointing else layers * layer) + 2 * hidden
    scored = micro_batch_rows * max_new_tokens  # a chunk never spans more than the micro-batch's tokens
    head_block = 3 * 4 * (min(chunk_size, scored) if chunk_size else scored) * config.vocab_size
    return MemoryEstimate(
        runtime=runtime,
        weights=weights,
        gradients=_bytes(trainable),
        optimizer=sum(p.numel() for p in trainable) * moments,
        kv_cache=kv_cache,
        activations=tokens * per_token * element + head_block + (mlp * mlp_tile_tokens * element if tiled else 0),
        phases_share_memory=next(policy.parameters()).device.type != "cpu",
    )


class MemoryPlanning:
    """GRPOModule's part: :meth:`plan_memory` at its first generation, when prompt lengths are known."""

    memory_estimate: MemoryEstimate | None = None
    mlp_tiling: tuple[int, int] = (0, 0)  # (tile tokens, above tokens): models/tiled_mlp.resolve_mlp_tiling

    def plan_memory(self: Any, prompts: list[str]) -> MemoryEstimate | None:
        """Print the estimate once (rank 0) and refuse a run whose peak passes the device's memory."""
        if self.memory_estimate is not None or not prompts:
            return self.memory_estimate
        from lightning.pytorch.utilities import rank_zero_info

        hp = self.hparams
        prompt_tokens = max(len(self.tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts)
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        train_rows = getattr(datamodule, "batch_size", len(prompts) // hp.num_generations) * hp.num_generations
        val_rows = getattr(datamodule, "val_batch_size", 0) * hp.val_num_samples
        longest = max(self.sampling.max_new_tokens, self.val_sampling.max_new_tokens)
        rows = hp.micro_batch_size or train_rows
        if hp.micro_batch_tokens:
            rows = min(rows, max(hp.micro_batch_tokens // (prompt_tokens + self.sampling.max_new_tokens), 1))
        device = next(self.policy.parameters()).device
        estimate = estimate_memory(
            self.policy,
            self.reference,
            hp.optimizer,
            max(train_rows, val_rows),
            prompt_tokens,
            longest,
            min(rows, train_rows),
            self.shared_group_size,
            self.logprob_chunk,
            0,
            hp.gradient_checkpointing,
            *self.mlp_tiling,
        )
        if device.type == "cpu":  # what the process holds besides the weights (policy and reference) it loaded
            runtime = max(resident_bytes() - estimate.weights, 0) + TRAINING_CODE_BYTES
            estimate = dataclasses.replace(estimate, runtime=runtime)
        self.memory_estimate = estimate
        total = device_memory(device)
        rank_zero_info(self.memory_estimate.describe(total))
        if self.mlp_tiling[0]:
            tile, above = self.mlp_tiling
            rank_zero_info(f"token-tiled MLPs: tiles of {tile} tokens in training forwards of more than {above} tokens")
        if total and self.memory_estimate.peak > total:
            raise ConfigError(
                f"{self.memory_estimate.describe(total)}: above this device's memory; lower "
                "model.micro_batch_size / micro_batch_tokens, sampling.max_new_tokens or data.batch_size, or "
                "set model.logprob_chunk_size / gradient_checkpointing / lora"
            )
        return self.memory_estimate


def release_freed_heap() -> bool:
    """Hand the C heap's freed memory back to the operating system (glibc's ``malloc_trim``); False where the C
    library has none (not Linux/glibc). Called before each optimizer step: on a CPU the backward frees
    activations into glibc's heap, which keeps them resident, and AdamW's first step then creates two state
    tensors per weight on top. Measured at 1 layer, 4,096 tokens, tiled MLPs: the step's resident peak
    4.37 -> 3.82 GiB; the call takes milliseconds."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


@functools.cache
def _malloc_trim() -> Any:
    """The C library's ``malloc_trim``, looked up once (``find_library`` and loading it each optimizer step would be
    repeated work); None where there is none."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None
