"""The output head's and the input embedding's gradients written straight into the parameter's ``.grad``.

At a 151,936-token vocabulary the embedding matrix is most of a small model (136M of Qwen2.5-0.5B's 494M
parameters; 0.51 GiB in float32 at its 896 width), and autograd holds several ``[vocab, hidden]`` gradient
buffers for it during a backward pass: the head's gradient from the chunked log-probs, the embedding's own
(``embedding_dense_backward`` builds a dense ``[vocab, hidden]`` matrix for a few hundred looked-up rows), their
sum when the two are tied, and, from the second micro-batch on, the ``.grad`` they are added to. Inside
:func:`grads_in_place` both backward passes accumulate into ``.grad`` itself (the head with ``addmm_``
chunk by chunk, the embedding with ``index_add_`` over the looked-up rows) and hand autograd no gradient for
the weight, so one ``[vocab, hidden]`` buffer exists whatever the micro-batching. The result is the same
gradient (summation order aside; ``tests/test_grads_in_place.py``).

Used for the policy's training forward and backward on one process. Under DDP and FSDP the parameter's
gradient must reach autograd's accumulator, whose hooks reduce it across ranks, so there (and for weights
that are not plain float32 parameters: bf16, quantized, LoRA-frozen, sharded) the usual path runs.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import torch

from r1_lightning.hf_compat import causal_lm

_state = threading.local()


def active() -> bool:
    """Whether forwards now record gradients to be written into ``.grad`` (inside :func:`grads_in_place`; read
    in an autograd function's forward, which runs with grad mode off, so grad mode is not checked here)."""
    return getattr(_state, "active", False)


def eligible(weight: torch.Tensor, compute_dtype: torch.dtype | None = None) -> bool:
    """A plain, trainable leaf parameter whose ``.grad`` (if any) is a dense tensor of its own dtype and shape,
    and (for the head) whose dtype is the gradient's compute dtype."""
    grad = weight.grad
    return (
        type(weight) is torch.nn.Parameter
        and weight.requires_grad
        and weight.is_leaf
        and (compute_dtype is None or weight.dtype == compute_dtype)
        and (grad is None or (grad.layout, grad.dtype, grad.shape) == (torch.strided, weight.dtype, weight.shape))
    )


def grad_buffer(weight: torch.Tensor) -> torch.Tensor:
    """``weight.grad``, created as zeros the first time (what autograd's accumulator would have done)."""
    if weight.grad is None:
        weight.grad = torch.zeros_like(weight, memory_format=torch.contiguous_format)
    return weight.grad


class _EmbeddingIntoGrad(torch.autograd.Function):
    """``F.embedding`` whose backward adds each looked-up row's gradient into ``weight.grad`` in place
    (rows of ``padding_idx`` get none, as ``nn.Embedding`` defines)."""

    @staticmethod
    def forward(ctx: Any, ids: torch.Tensor, weight: torch.Tensor, padding_idx: int | None) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(ids)
        ctx.weight, ctx.padding_idx = weight, padding_idx
        return torch.nn.functional.embedding(ids, weight, padding_idx)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, None, None]:  # type: ignore[override]
        (ids,) = ctx.saved_tensors
        weight = ctx.weight
        flat_ids, rows = ids.reshape(-1), grad.reshape(-1, grad.shape[-1]).to(weight.dtype)
        if ctx.padding_idx is not None:
            keep = flat_ids != ctx.padding_idx
            flat_ids, rows = flat_ids[keep], rows[keep]
        grad_buffer(weight).index_add_(0, flat_ids, rows)
        return None, None, None


@contextlib.contextmanager
def grads_in_place(model: Any, enabled: bool = True) -> Iterator[None]:
    """Within the block, training forwards of ``model`` (and the backward passes run inside it) accumulate
    the output head's and the input embedding's weight gradients straight into their ``.grad`` (module
    docstring). The head's part is done by the chunked log-probs (``logprob_chunk_size`` > 0); a plain
    ``nn.Embedding`` is switched to the in-place backward and switched back on exit, also on error."""
    if not enabled:
        yield
        return
    embedding = causal_lm(model).get_input_embeddings()
    swap = (
        type(embedding) is torch.nn.Embedding
        and not embedding.sparse
        and not embedding.scale_grad_by_freq
        and embedding.max_norm is None
        and eligible(embedding.weight)
    )
    if swap:
        embedding.forward = lambda ids: _EmbeddingIntoGrad.apply(ids, embedding.weight, embedding.padding_idx)
    _state.active = True
    try:
        yield
    finally:
        _state.active = False
        if swap:
            del embedding.forward
