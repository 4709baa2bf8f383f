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
sliding window is narrower than the sequence and the weights are not sharded (FSDP/DeepSpeed gather
weights in their own forward hooks, which calling submodules would bypass); :func:`lean_decoder`
says why not otherwise, and generation falls back to plain forward calls. Logits equal the
transformers forward to float tolerance (tests/test_lean_decode.py).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

SUPPORTED_MODEL_TYPES = ("qwen2", "llama", "mistral", "qwen3")


def causal_lm(model: Any) -> Any:
    """The transformers ``*ForCausalLM`` inside ``model`` (a peft wrapper is looked through)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


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
    if any(type(m).__name__ == "FullyShardedDataParallel" or type(m).__name__.startswith("FSDP")  # FSDP1 / FSDP2
           for m in lm.modules()):
        return "weights are sharded (FSDP); its forward hooks must gather them"
    windows = [getattr(layer.self_attn, "sliding_window", None) for layer in inner.layers]
    if model_type == "mistral":
        windows.append(getattr(config, "sliding_window", None))
    narrowest = min((w for w in windows if w), default=None)
    if narrowest is not None and narrowest < total_length:
        return f"sliding window {narrowest} < sequence length {total_length}"
    return None


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


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
        self, model: Any, prefill_cache: Any, prompt_mask: torch.Tensor, prompt_positions: torch.Tensor,
        max_new_tokens: int, repeats: int = 1,
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
        self.position = prompt_positions[:, -1] + 1  # [rows] position id of the next token
        # cos/sin for every position a completion can reach, from the model's own rotary module
        last = int(self.position.max()) + max_new_tokens
        table_positions = torch.arange(last, device=device)[None, :]
        probe = self.keys[0][:1, :1, :1, :1].reshape(1, 1)
        cos, sin = self.inner.rotary_emb(probe, table_positions)
        self.cos, self.sin = cos[0], sin[0]  # [positions, head_dim]

    @torch.no_grad()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Run ``tokens`` ``[N]`` (one per row) through the model; returns the next logits ``[N, V]``."""
        col = self.column
        if col >= self.keys[0].shape[2]:
            raise RuntimeError("LeanDecoder: more steps than the max_new_tokens it reserved")
        rows = tokens.shape[0]
        cos = self.cos[self.position][:, None, None, :]  # [N, 1, 1, D]
        sin = self.sin[self.position][:, None, None, :]
        bias = self.mask_bias[..., : col + 1]
        hidden = self.inner.embed_tokens(tokens[:, None])  # [N, 1, H]
        for layer, k_cache, v_cache in zip(self.inner.layers, self.keys, self.values):
            attn = layer.self_attn
            x = layer.input_layernorm(hidden)
            head_dim = attn.head_dim
            q = attn.q_proj(x).view(rows, 1, -1, head_dim)
            k = attn.k_proj(x).view(rows, 1, -1, head_dim)
            v = attn.v_proj(x).view(rows, 1, -1, head_dim).transpose(1, 2)
            if hasattr(attn, "q_norm"):  # Qwen3 normalises queries and keys per head before RoPE
                q, k = attn.q_norm(q), attn.k_norm(k)
            q, k = q.transpose(1, 2), k.transpose(1, 2)  # [N, heads, 1, D]
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            k_cache[:, :, col] = k[:, :, 0]
            v_cache[:, :, col] = v[:, :, 0]
            out = _decode_attention(q, k_cache[:, :, : col + 1], v_cache[:, :, : col + 1], bias, attn.scaling)
            hidden = hidden + attn.o_proj(out)
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        self.column += 1
        self.position = self.position + 1
        return self.lm_head(self.inner.norm(hidden))[:, -1, :]
