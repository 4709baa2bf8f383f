"""The lean decode step replayed as CUDA graphs (``rollout_engine: cuda_graph``): one launch per token.

At rollout batch sizes a GPU decode step is bound by kernel launches, not by the GPU: an earlier profile at
Qwen2.5-0.5B's shape measured 6.4 s of host time against 0.6 s of kernel time per step (README,
Performance). A CUDA graph records a step's kernels once and replays them with one launch; vLLM and
SGLang decode that way. Capture needs every shape and address fixed, so this step differs from
:meth:`r1_lightning.generation.lean_decode.LeanDecoder.step` in three ways:

- the cache column written and the positions are device tensors advanced in place (``index_copy_``,
  ``add_``), not Python integers;
- attention covers a fixed width of cache columns, masked past the current one. Widths come in buckets of
  ``bucket`` columns, one graph per bucket captured when decoding first reaches it (all in one memory
  pool), so a step attends to at most ``bucket - 1`` masked columns more than the eager step does;
- finished rows stay in the batch, decoding padding (compaction would change the shape), as the ``hf``
  step's rows do.

The arithmetic is :meth:`LeanDecoder.forward`'s. Graphs belong to one rollout (its caches' addresses); a
rollout of ``L`` new tokens captures ``ceil((P + L) / bucket)`` of them. Without CUDA the same static step
runs eagerly (``capture=False``), which is how the CPU tests check it against the lean step; the capture
itself is checked by ``tests/test_gpu.py`` where a GPU is present.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from r1_lightning.generation.lean_decode import LeanDecoder


def unsupported_reason(model: Any) -> str | None:
    """Why the lean step of ``model`` cannot be captured (None = it can): bitsandbytes' quantized layers
    dequantize through host-side state that a graph would freeze."""
    for p in model.parameters():
        if type(p).__name__ in ("Params4bit", "Int8Params"):
            return "bitsandbytes-quantized weights (QLoRA) are not captured; use rollout_engine 'lean'"
    return None


def _uncached_autocast() -> Any:
    """Autocast as it is, but without its cache of cast weights: the cache is freed when the enclosing autocast
    context exits, and a graph captured with it would read freed memory (torch's CUDA-graph notes)."""
    if not torch.is_autocast_enabled("cuda"):
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.get_autocast_dtype("cuda"), cache_enabled=False)


class GraphedLeanDecoder:
    """:class:`LeanDecoder`'s step interface (``step``, ``drop_finished``, ``rows``), each step a graph replay.

    Args:
        lean: the lean decoder of this rollout (its caches, rotary tables and mask are used in place).
        bucket: cache columns per captured width.
        capture: record CUDA graphs (default: when the caches are on a CUDA device); False runs the same
            static step eagerly.
    """

    rows = None  # every row stays in the batch

    def __init__(self, lean: LeanDecoder, bucket: int = 256, capture: bool | None = None) -> None:
        if bucket < 1:
            raise ValueError(f"bucket must be >= 1, got {bucket}")
        self.lean, self.bucket = lean, bucket
        cache = lean.keys[0]
        self.capture = cache.device.type == "cuda" if capture is None else capture
        self.total = cache.shape[2]
        self.next_column = lean.column  # a Python mirror of `column`, to pick the width
        # the columns not written yet are attended with weight 0, and 0 * NaN is NaN: the lean step's caches
        # are uninitialised memory there, so zero them
        for cache_ in (*lean.keys, *lean.values):
            cache_[:, :, lean.column :].zero_()
        self.column = torch.tensor([lean.column], device=cache.device)  # [1]: where the next key/value goes
        self.position = lean.position.clone()  # advanced in place by every step
        self.tokens = torch.zeros(cache.shape[0], dtype=torch.long, device=cache.device)  # the graphs' input
        self.column_ids = torch.arange(self.total, device=cache.device)
        self.graphs: dict[int, tuple[Any, torch.Tensor]] = {}  # width -> (graph, its logits buffer)
        self.pool: Any = None

    def drop_finished(self, finished: torch.Tensor) -> None:
        return None

    def width(self) -> int:
        """Cache columns the next step attends to: the bucket holding the column it writes."""
        return min(self.total, (self.next_column // self.bucket + 1) * self.bucket)

    def _store(self, k_cache: torch.Tensor, v_cache: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        k_cache.index_copy_(2, self.column, k)
        v_cache.index_copy_(2, self.column, v)

    def _static_step(self, width: int) -> torch.Tensor:
        """The step with every shape fixed by ``width``; reads ``self.tokens``, advances column and positions."""
        future = self.column_ids[:width] > self.column  # columns not written yet: masked
        bias = self.lean.mask_bias[..., :width].masked_fill(future, float("-inf"))
        logits = self.lean.forward(self.tokens, self.position, bias, self._store)
        self.column.add_(1)
        self.position.add_(1)
        return logits

    def _capture(self, width: int) -> tuple[Any, torch.Tensor]:
        column, position = self.column.clone(), self.position.clone()
        # warm-up on a side stream (cuBLAS workspaces, lazy initialisation), then undo its state change; the
        # key/value it wrote are those of this same step, rewritten by the replay
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), _uncached_autocast():
            self._static_step(width)
        torch.cuda.current_stream().wait_stream(side)
        self.column.copy_(column)
        self.position.copy_(position)
        graph = torch.cuda.CUDAGraph()
        # records the kernels, the weights' autocast casts included; nothing runs until replay
        with torch.cuda.graph(graph, pool=self.pool), _uncached_autocast():
            logits = self._static_step(width)
        self.pool = graph.pool()
        return graph, logits

    @torch.no_grad()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Run ``tokens`` ``[N]`` through the model; returns the next logits ``[N, V]`` (a fresh tensor)."""
        if self.next_column >= self.total:
            raise RuntimeError("GraphedLeanDecoder: more steps than the max_new_tokens it reserved")
        self.tokens.copy_(tokens)
        width = self.width()
        if not self.capture:
            logits = self._static_step(width)
        else:
            if width not in self.graphs:
                self.graphs[width] = self._capture(width)
            graph, logits = self.graphs[width]
            graph.replay()
            logits = logits.clone()  # the graph's buffer is overwritten by the next replay
        self.next_column += 1
        return logits
