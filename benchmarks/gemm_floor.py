"""The matrix products a GRPO step cannot avoid, timed alone: a floor under any implementation's step.

A step of r1-lightning (one rollout, one optimizer step, prompts shared within each group) runs these
products of the model's linear layers (``y = x W^T``, ``W`` of shape ``[out, in]``):

- prefill: every distinct prompt once, ``M = B * P`` rows;
- decode: ``L`` steps of ``M = B * G`` rows (the model's own weights, so the cache behaves as in a real
  decode: the weights are streamed again at every step);
- reference forward (no grad): ``M = B * P + B * G * L`` rows, and the LM head on the ``B * G * L``
  completion positions;
- training forward and backward: the same forward, then for each layer ``dX = dY W`` and ``dW = dY^T X``.

:func:`gemm_floor` runs exactly those products on random inputs of those shapes with the model's weight
shapes, on the same threads, and returns the seconds. Attention, norms, activations, sampling, the
optimizer and Python are left out, so nothing that computes the same step can be faster than this
(short of a different algorithm or lower precision). ``grpo_vs_trl.py --floor`` prints it beside each
setting's step times: ``floor / TRL`` is the best step-time ratio this hardware allows.
"""

from __future__ import annotations

import time
from typing import Any

import torch


def linear_shapes(config: Any) -> list[tuple[int, int]]:
    """``(out, in)`` of every linear layer of a Llama-family decoder, in forward order (LM head last)."""
    hidden, inter = config.hidden_size, config.intermediate_size
    head_dim = getattr(config, "head_dim", None) or hidden // config.num_attention_heads
    q, kv = config.num_attention_heads * head_dim, config.num_key_value_heads * head_dim
    attention = [(q, hidden), (kv, hidden), (kv, hidden), (hidden, q)]  # q, k, v, o
    mlp = [(inter, hidden), (inter, hidden), (hidden, inter)]  # gate, up, down
    per_layer = attention + mlp
    return per_layer * config.num_hidden_layers + [(config.vocab_size, hidden)]


def _time(fn: Any, repeats: int) -> float:
    fn()  # warm-up: allocator, kernel choice
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - started) / repeats


@torch.no_grad()
def gemm_floor(
    config: Any,
    prompts: int,
    group_size: int,
    prompt_length: int,
    completion_length: int,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    repeats: int = 2,
) -> dict[str, float]:
    """Seconds of one step's unavoidable matrix products, by phase (``prefill``, ``decode``,
    ``reference``, ``train``) and ``total``."""
    shapes = linear_shapes(config)
    weights = [torch.randn(out, inp, device=device, dtype=dtype) / inp**0.5 for out, inp in shapes]
    body, head = weights[:-1], weights[-1]
    rows, prefix = prompts * group_size, prompts * prompt_length
    tokens = prefix + rows * completion_length  # one forward over shared prompts and every completion
    completions = rows * completion_length  # the LM head runs on completion positions only

    # every operand made before timing (drawing random numbers costs more than some of the products)
    def operands(m: int, sizes: set[int]) -> dict[int, torch.Tensor]:
        return {size: torch.randn(m, size, device=device, dtype=dtype) for size in sizes}

    inputs, outputs = {w.shape[1] for w in weights}, {w.shape[0] for w in weights}
    x_prefill, x_decode, x_all = operands(prefix, inputs), operands(rows, inputs), operands(tokens, inputs)
    grad_all = operands(tokens, outputs)

    def forward(x: dict[int, torch.Tensor], head_rows: int) -> None:
        for w in body:
            x[w.shape[1]] @ w.t()
        x[head.shape[1]][:head_rows] @ head.t()

    def decode() -> None:
        for _ in range(completion_length):
            for w in weights:
                x_decode[w.shape[1]] @ w.t()

    def train() -> None:
        forward(x_all, completions)
        for w in reversed(weights):
            m = completions if w is head else tokens
            grad_out = grad_all[w.shape[0]][:m]
            grad_out @ w  # dX
            grad_out.t() @ x_all[w.shape[1]][:m]  # dW

    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def timed(fn: Any) -> float:
        return _time(lambda: (fn(), sync()), repeats)

    result = {
        "prefill": timed(lambda: forward(x_prefill, prompts)),
        "decode": timed(decode),
        "reference": timed(lambda: forward(x_all, completions)),
        "train": timed(train),
    }
    result["total"] = sum(result.values())
    return result
