"""A lean one-token decode step for Llama-family models, over a preallocated key/value cache.

Decoding one token per row is a few small matrix products per layer; on a CPU, or a GPU at rollout
batch sizes, the time goes to everything around them. A transformers forward call rebuilds the
attention mask and the rotary embeddings on every step, grows its ``DynamicCache`` by concatenation
(each step copies the whole cache), and passes through the layers' generic keyword plumbing. This
module runs the same arithmetic through the model's own submodules (so LoRA adapters, bitsandbytes
layers and autocast all still apply) with:

- a static cache per layer, ``[N, kv_heads, P + L, head_dim]``, filled in place;
- rotary ``cos``/``sin`` computed once per rollout for every position, by the model's own rotary module
  (so its scaling variant is honoured), and indexed per step;
- a boolean padding mask built once and sliced per step;
- ``scaled_dot_product_attention`` with grouped-query heads, as transformers' ``sdpa`` backend does.

Per layer, with ``x`` the hidden state of the new token at position ``p`` (Llama/Qwen2 block):

    h = x + o_proj(Attention(RoPE_p(q_proj(norm1(x))), RoPE(K_{<=p}), V_{<=p}))
    out = h + down_proj(silu(gate_proj(norm2(h))) * up_proj(norm2(h)))

It applies to ``model_type`` in :data:`SUPPORTED_MODEL_TYPES` (Qwen3's q/k norms included) when no
sliding window is narrower than the sequence and the weights are whole: FSDP2 weights gathered for the
rollout (``strategies.gathered``, which GRPO does) are fine; FSDP1 or ungathered shards are not, since
their forward hooks, which calling submodules would bypass, gather them. :func:`unsupported_reason` says
why not otherwise, and generation falls back to plain forward calls. Logits equal the
transformers forward to float tolerance (tests/test_lean_decode.py).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from r1_lightning.hf_compat import causal_lm

SUPPORTED_MODEL_TYPES = ("qwen2", "llama", "mistral", "qwen3")


def unsupported_reason(model: Any, total_length: int) -> str | None:
    """Why the lean decoder cannot run ``model`` for sequences of ``total_length`` (None = it can)."""
    lm = causal_lm(model)
    config = getattr(lm, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        return f"model_type {model_type!r} is not one of {SUPPORTED_MODEL_TYPES}"
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"hidden_act {config.hidden_act!r} (the lean step assumes silu)"
    inner = getattr(lm, "model", None)
    if not all(hasattr(inner, name) for name in ("embed_tokens", "layers", "norm", "rotary_emb")):
        return "the model does not have the embed_tokens/layers/norm/rotary_emb layout"
    if any(type(m).__name__ == "FullyShardedDataParallel" for m in lm.modules()):
        return "weights are wrapped by FSDP1; its forward hooks must gather them"
    for p in lm.parameters():
        if type(p).__name__ == "DTensor":  # FSDP2 shards, not gathered
            return "weights are sharded (FSDP2) and not gathered; sample under strategies.gathered"
        if hasattr(p, "ds_id"):
            return "weights are partitioned by DeepSpeed ZeRO-3; its forward hooks must gather them"
    windows = [getattr(layer.self_attn, "sliding_window", None) for layer in inner.layers]
    if model_type == "mistral":
        windows.append(getattr(config, "sliding_window", None))
    narrowest = min((w for w in windows if w), default=None)
    if narrowest is not None and narrowest < total_length:
        return f"sliding window {narrowest} < sequence length {total_length}"
    return None


def _fused_qkv(attn: Any) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """One ``(weight, bias)`` for the query, key and value projections, so a layer runs one product.

    Only for plain ``nn.Linear`` projections (LoRA or quantized layers are called as modules). Built per
    rollout from the current weights; costs a copy of the q/k/v weights (about a sixth of a layer).
    """
    projections = (attn.q_proj, attn.k_proj, attn.v_proj)
    if not all(type(p) is torch.nn.Linear for p in projections):
        return None
    biases = [p.bias for p in projections]
    if any(b is None for b in biases) and not all(b is None for b in biases):
        return None
    weight = torch.cat([p.weight for p in projections])
    return weight, (None if biases[0] is None else torch.cat(biases))


def _rms_norm(norm: Any, x: torch.Tensor) -> torch.Tensor:
    """``norm(x)`` for the Llama-family RMSNorm, in one fused op when the arithmetic is the same (float32)."""
    eps = getattr(norm, "variance_epsilon", None)
    if eps is None or x.dtype != torch.float32 or norm.weight.dtype != torch.float32:
        return norm(x)
    return F.rms_norm(x, (x.shape[-1],), norm.weight, eps)


def _decode_attention(
    q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, bias: torch.Tensor, scale: float
) -> torch.Tensor:
    """softmax(q K^T * scale + bias) V for one query per row, grouped-query heads; returns ``[N, 1, H * D]``.

    Two batched matrix products: for a single query, a plain product beats the fused attention kernels
    (built for long queries) several times over on CPU. The ``g`` query heads that share a key/value
    head are stacked as the rows of one product, so keys and values are never repeated.
    """
    rows, heads, _, dim = q.shape
    kv_heads = keys.shape[1]
    q = q.reshape(rows, kv_heads, heads // kv_heads, dim)  # [N, KV, g, D]
    scores = torch.matmul(q, keys.transpose(-1, -2)) * scale + bias  # [N, KV, g, T]; bias [N, 1, 1, T]
    weights = torch.softmax(scores.float(), dim=-1).to(values.dtype)
    out = torch.matmul(weights, values)  # [N, KV, g, D]
    return out.reshape(rows, 1, heads * dim)


class LeanDecoder:
    """Decodes one token per row per :meth:`step`, starting from a transformers prefill cache.

    Args:
        model: the policy (a transformers causal LM, possibly peft-wrapped).
        prefill_cache: the ``DynamicCache`` of the prompt prefill, ``B`` rows of ``P`` columns.
        prompt_mask: ``[B * repeats, P]`` attention mask of the prompts (0 on left padding).
        prompt_positions: ``[B * repeats, P]`` position ids of the prompts.
        max_new_tokens: completion columns to reserve (``L``).
        repeats: each prefilled row stands for this many consecutive rows (a GRPO group).
    """

    def __init__(
        self,
        model: Any,
        prefill_cache: Any,
        prompt_mask: torch.Tensor,
        prompt_positions: torch.Tensor,
        max_new_tokens: int,
        repeats: int = 1,
    ) -> None:
        lm = causal_lm(model)
        self.inner, self.lm_head = lm.model, lm.lm_head
        rows, prompt_length = prompt_mask.shape
        total = prompt_length + max_new_tokens
        self.keys, self.values = [], []
        for layer in prefill_cache.layers:
            for source, buffers in ((layer.keys, self.keys), (layer.values, self.values)):
                buffer = source.new_empty(rows, source.shape[1], total, source.shape[3])
                buffer[:, :, :prompt_length] = source.repeat_interleave(repeats, dim=0) if repeats > 1 else source
                buffers.append(buffer)
        device = prompt_mask.device
        # additive mask: 0 where a row attends, -inf on its prompt's left padding
        self.mask_bias = torch.zeros(rows, 1, 1, total, dtype=self.keys[0].dtype, device=device)
        self.mask_bias[:, 0, 0, :prompt_length].masked_fill_(prompt_mask == 0, float("-inf"))
        self.column = prompt_length  # where the next token's key/value goes
        self.rows: torch.Tensor | None = None  # rows still decoded (None = all; see drop_finished)
        self.position = prompt_positions[:, -1] + 1  # [rows] position id of the next token
        # cos/sin for every position a completion can reach, from the model's own rotary module
        last = int(self.position.max()) + max_new_tokens
        table_positions = torch.arange(last, device=device)[None, :]
        probe = self.keys[0][:1, :1, :1, :1].reshape(1, 1)
        cos, sin = self.inner.rotary_emb(probe, table_positions)
        half = sin.shape[-1] // 2
        self.cos = cos[0]  # [positions, head_dim]
        self.sin_signed = torch.cat([-sin[0, :, :half], sin[0, :, half:]], dim=-1)  # rotate_half's sign folded in
        self.heads = lm.config.num_attention_heads
        self.kv_heads = self.keys[0].shape[1]
        self.fused_qkv = [_fused_qkv(layer.self_attn) for layer in self.inner.layers]

    def drop_finished(self, finished: torch.Tensor, min_fraction: float = 0.125) -> None:
        """Stop decoding rows whose ``finished`` flag is set, once they are ``min_fraction`` of the batch.

        Completion lengths in GRPO vary widely; decoding the finished rows' padding would cost as much as
        decoding real tokens. Compacting copies the caches, so it waits until enough rows are done.
        ``rows`` then holds the indices (into the full batch) of the rows still decoded.
        """
        current = self.rows if self.rows is not None else torch.arange(len(finished), device=finished.device)
        alive = ~finished[current]
        dropped = len(current) - int(alive.sum())
        if dropped == 0 or dropped < min_fraction * len(current) or dropped == len(current):
            return
        keep = alive.nonzero().squeeze(1)
        self.rows = current[keep]
        self.keys = [k.index_select(0, keep) for k in self.keys]
        self.values = [v.index_select(0, keep) for v in self.values]
        self.mask_bias = self.mask_bias.index_select(0, keep)
        self.position = self.position.index_select(0, keep)

    @torch.no_grad()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Run ``tokens`` ``[N]`` (one per row) through the model; returns the next logits ``[N, V]``."""
        col = self.column
        if col >= self.keys[0].shape[2]:
            raise RuntimeError("LeanDecoder: more steps than the max_new_tokens it reserved")

        def store(k_cache: torch.Tensor, v_cache: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
            k_cache[:, :, col], v_cache[:, :, col] = k[:, :, 0], v[:, :, 0]

        logits = self.forward(tokens, self.position, self.mask_bias[..., : col + 1], store)
        self.column += 1
        self.position = self.position + 1
        return logits

    def forward(self, tokens: torch.Tensor, position: torch.Tensor, bias: torch.Tensor, store: Any) -> torch.Tensor:
        """One decode step's arithmetic: ``tokens`` ``[N]`` at ``position`` ``[N]``, attending to the first
        ``bias.shape[-1]`` cache columns with additive ``bias`` ``[N, 1, 1, width]``; ``store(k_cache, v_cache, k,
        v)`` writes the new key and value ``[N, kv_heads, 1, D]`` of a layer. Returns the next logits ``[N, V]``.
        (:meth:`step` drives it with Python integers; the CUDA-graph step with device tensors.)"""
        rows, width = tokens.shape[0], bias.shape[-1]
        cos = self.cos.index_select(0, position)[:, None, None, :]  # [N, 1, 1, D]
        sin = self.sin_signed.index_select(0, position)[:, None, None, :]
        hidden = self.inner.embed_tokens(tokens[:, None])  # [N, 1, H]
        for layer, fused, k_cache, v_cache in zip(
            self.inner.layers, self.fused_qkv, self.keys, self.values, strict=True
        ):
            attn = layer.self_attn
            heads, dim = self.heads, attn.head_dim
            x = _rms_norm(layer.input_layernorm, hidden)
            # With one token per row, [N, 1, heads * D] is laid out as [N, heads, 1, D]: a view, no transpose.
            if fused is not None:
                qkv = F.linear(x, *fused).view(rows, -1, 1, dim)
                qk, v = qkv[:, : heads + self.kv_heads], qkv[:, heads + self.kv_heads :]
            else:  # adapters or quantized layers: call each projection module
                q, k = attn.q_proj(x).view(rows, -1, 1, dim), attn.k_proj(x).view(rows, -1, 1, dim)
                qk, v = torch.cat([q, k], dim=1), attn.v_proj(x).view(rows, -1, 1, dim)
            if hasattr(attn, "q_norm"):  # Qwen3 normalises queries and keys per head before RoPE
                qk = torch.cat([attn.q_norm(qk[:, :heads]), attn.k_norm(qk[:, heads:])], dim=1)
            # RoPE on queries and keys at once: x cos + rotate_half(x) sin, rotate_half(x) sin = roll(x) (-sin1, sin2)
            qk = torch.addcmul(qk * cos, torch.roll(qk, dim // 2, dims=-1), sin)
            store(k_cache, v_cache, qk[:, heads:], v)
            out = _decode_attention(qk[:, :heads], k_cache[:, :, :width], v_cache[:, :, :width], bias, attn.scaling)
            hidden = hidden + attn.o_proj(out)
            hidden = hidden + layer.mlp(_rms_norm(layer.post_attention_layernorm, hidden))
        return self.lm_head(_rms_norm(self.inner.norm, hidden))[:, -1, :]
