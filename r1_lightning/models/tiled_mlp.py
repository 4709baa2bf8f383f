"""Token-tiled MLPs: each decoder layer's MLP runs over tiles of tokens, each tile recomputed in backward.

At long completions the MLP's intermediates dominate the activations a training forward keeps: Qwen2's MLP
saves its gate and up projections, the activation and their product, four ``[tokens, intermediate]``
tensors per layer (4 x 16,800 tokens x 4,864 x 4 bytes = 1.3 GB for one layer of Qwen2.5-0.5B at G 4 and 4,096
new tokens). The MLP is token-wise, so running it over tiles of ``tile_tokens`` tokens, each under
non-reentrant checkpointing, keeps only the tile inputs and the layer's output; backward recomputes one
tile's intermediates at a time. This is Arctic Long Sequence Training's *TiledMLP* (Snowflake, 2025),
written for any module with an ``mlp`` child (Qwen2, Llama, Mistral, Gemma: ``decoder_layer.mlp``).

Cost: one extra MLP forward per training forward (the MLP's share of a step's products; at 151,936 tokens of
vocabulary the head dominates). Same outputs and gradients as the untiled MLP (a test checks to 1e-6). Off
in no-grad forwards (generation, reference, old log-probs): they keep nothing for backward.

By default (``mlp_tile_tokens: null``, :func:`resolve_mlp_tiling`) a forward is tiled, in tiles of
:data:`AUTO_TILE_TOKENS`, only when its MLP intermediates would pass :data:`AUTO_MLP_BYTES` per layer: long
reasoning pays the recomputation where it saves gigabytes, short completions and small models never do.
At Qwen2.5-0.5B's widths in fp32 that is above 3,449 tokens per forward (a micro-batch of 4 completions of
about 860 tokens); at Qwen2.5-7B's in bf16, above 1,771.
"""

from __future__ import annotations

import types
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

from r1_lightning.hf_compat import causal_lm

#: ``mlp_tile_tokens: null`` tiles a forward whose MLP intermediates (gate, up, activation, product) would pass
#: this many bytes per layer ...
AUTO_MLP_BYTES = 256 * 1024**2
#: ... in tiles of this many tokens (at 4,096 new tokens: 4.37 against 4.86-5.48 GiB untiled, 2% slower; README)
AUTO_TILE_TOKENS = 1024


def resolve_mlp_tiling(setting: int | None, model: Any) -> tuple[int, int]:
    """``(tile_tokens, above_tokens)`` for ``model.mlp_tile_tokens``: tiles of ``tile_tokens`` (0: off) in forwards
    of more than ``above_tokens`` tokens. ``null``: :data:`AUTO_TILE_TOKENS`-token tiles above the token count
    whose MLP intermediates pass :data:`AUTO_MLP_BYTES` (off for a config without ``intermediate_size``)."""
    if setting is not None:
        if setting < 0:
            raise ValueError(f"`model.mlp_tile_tokens` must be >= 0 (0: off) or null (auto), got {setting}")
        return setting, 0
    inter = getattr(getattr(causal_lm(model), "config", None), "intermediate_size", None)
    floats = [p for p in model.parameters() if p.is_floating_point()]
    if not isinstance(inter, int) or inter <= 0 or not floats:
        return 0, 0
    return AUTO_TILE_TOKENS, AUTO_MLP_BYTES // (4 * inter * floats[0].element_size())


def tile_mlps(model: torch.nn.Module, tile_tokens: int, above_tokens: int = 0) -> int:
    """Make every ``<module>.mlp`` of ``model`` run token-tiled when gradients are recorded and a forward has more
    than ``max(tile_tokens, above_tokens)`` tokens; returns how many were tiled. ``tile_tokens`` <= 0 leaves the
    model as it is. The tiled forward is bound to its module (``MethodType``), so a deep copy of the model (a
    reference, a merged copy for saving) tiles its own MLPs."""
    if tile_tokens <= 0:
        return 0
    tiled = 0
    for module in model.modules():
        mlp = getattr(module, "mlp", None)
        if isinstance(mlp, torch.nn.Module) and not getattr(mlp, "_r1_tile_tokens", 0):
            mlp._r1_tile_tokens, mlp._r1_tile_above = tile_tokens, max(tile_tokens, above_tokens)
            mlp.forward = types.MethodType(_tiled_forward, mlp)
            tiled += 1
    return tiled


def _tiled_forward(mlp: torch.nn.Module, hidden: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    forward = type(mlp).forward.__get__(mlp)  # the class's own forward, on this module's weights
    tile_tokens = mlp._r1_tile_tokens
    tokens = hidden.numel() // hidden.shape[-1]
    if args or kwargs or not torch.is_grad_enabled() or tokens <= mlp._r1_tile_above:
        return forward(hidden, *args, **kwargs)
    flat = hidden.reshape(tokens, hidden.shape[-1])
    outputs = [checkpoint(forward, tile, use_reentrant=False) for tile in flat.split(tile_tokens)]
    return torch.cat(outputs).reshape(*hidden.shape[:-1], outputs[0].shape[-1])
