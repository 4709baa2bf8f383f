"""The policy's output head and a token-separable loss in one pass over the vocabulary: each chunk's logits
give its log-probs and, while still in hand, their gradient. Liger's fused linear GRPO loss does the same.

:mod:`r1_lightning.models.chunked_logprobs` keeps only ``logsumexp`` per token in forward and recomputes each
chunk's logits in backward: the head's products run four times per token (forward, recompute, ``dL/dh``,
``dL/dW``). When the loss is *token-separable*, ``L = sum_t f_t(log p_t, H_t)`` with every ``f_t`` a function of
its own token's log-prob and entropy only (the per-token GRPO family with token-level ratios and masks fixed
before the step), the upstream gradient of token ``t`` is known as soon as ``log p_t`` is::

    g_t = dL / d log p_t,   e_t = dL / d H_t           (autograd over the loss, evaluated on the values so far)
    dL/dz_t = g_t (onehot(y_t) - p_t) - e_t p_t (log p_t + H_t),     z_t = W h_t / T
    dL/dh_t = (dL/dz_t) W / T,   dL/dW += (dL/dz_t)^T h_t / T

so the chunk's ``dL/dh`` and ``dL/dW`` are computed right there, and backward only hands ``dL/dh`` to the
decoder layers: three head products per token instead of four, one exponential pass over ``[chunk, vocab]``
instead of three. ``g_t`` comes from the caller's own loss function (``token_grads``), evaluated on the full
``[rows, tokens]`` log-probs with the positions not yet scored holding placeholder values; separability is what
makes those placeholders irrelevant, and :func:`r1_lightning.training.policy_loss.fusable` decides it.

The head's weight gradient is computed during the forward. On one process it is written straight into
``.grad`` (:mod:`r1_lightning.models.grads_in_place`, a plain parameter of the compute dtype), which assumes the
returned anchor is back-propagated with gradient 1 (an unscaled loss; backward checks). Otherwise (DDP, FSDP2,
bf16 weights) it is kept and handed to autograd in backward, scaled by the anchor's gradient, so that the
accumulator's hooks (all-reduce, reduce-scatter) see it as they see every other weight's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from r1_lightning.models import grads_in_place
from r1_lightning.models.chunked_logprobs import _compute_dtype, _logits, head_grads, softmax_grad

#: ``token_grads(logprobs, entropy, rows) -> (g, e)``: the loss's gradient with respect to the log-probs (and
#: to the entropies, or None when the loss has no entropy term) of the flat positions ``rows``, given the flat
#: log-probs and entropies scored so far
TokenGrads = Callable[[torch.Tensor, torch.Tensor, slice], tuple[torch.Tensor, torch.Tensor | None]]


def can_fuse(head: Any) -> bool:
    """Whether :func:`fused_head_loss` applies to ``head``: a plain ``nn.Linear`` (tied or not; not a LoRA-wrapped
    or quantized head, which the checkpointed chunks of :func:`head_scores` score instead)."""
    return type(head) is torch.nn.Linear


class _FusedHeadLoss(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        tokens: torch.Tensor,
        initial: torch.Tensor,
        temperature: float,
        chunk_size: int,
        token_grads: TokenGrads,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        dtype = _compute_dtype(hidden)
        logprobs = initial.detach().to(dtype).clone()  # placeholders until each chunk is scored
        entropy = torch.zeros_like(logprobs)
        grad_hidden = torch.empty_like(hidden)
        # one process: straight into .grad (grads_in_place); otherwise held for autograd, whose accumulator hooks
        # (DDP's all-reduce, FSDP2's reduce-scatter) must see it: the buffer the recomputing backward would make
        need_weight, need_bias = ctx.needs_input_grad[1:3]
        ctx.in_place = grads_in_place.active() and all(
            p is None or grads_in_place.eligible(p, dtype) for p in (weight, bias)
        )
        if not need_weight:  # a frozen head (LoRA on the layers): its gradient is not computed at all
            grad_weight = grad_bias = None
        elif ctx.in_place:
            grad_weight = grads_in_place.grad_buffer(weight)
            grad_bias = None if bias is None else grads_in_place.grad_buffer(bias)
        else:
            grad_weight = torch.zeros_like(weight, dtype=dtype)
            grad_bias = torch.zeros_like(bias, dtype=dtype) if need_bias else None
        for start in range(0, hidden.shape[0], chunk_size):
            rows = slice(start, start + chunk_size)
            logits = _logits(hidden[rows], weight, bias, temperature)
            peak = logits.amax(-1, keepdim=True)
            probs = (logits - peak).exp_()  # the one exponential pass: softmax, logsumexp and entropy from it
            total = probs.sum(-1, keepdim=True)
            logsumexp = peak.add_(total.log())
            probs.div_(total)
            logprobs[rows] = logits.gather(-1, tokens[rows, None]).squeeze(-1) - logsumexp.squeeze(-1)
            # H = logsumexp - sum p z, as a batched dot product (no third [chunk, vocab] block for p * z)
            entropy[rows] = logsumexp.squeeze(-1) - torch.bmm(probs[:, None, :], logits[:, :, None]).view(-1)
            g, e = token_grads(logprobs, entropy, rows)
            g = g.to(dtype)
            # log p = z - logsumexp in the logits' buffer, only when the entropy term needs it
            log_probs = None if e is None else logits.sub_(logsumexp)
            dlogits = softmax_grad(log_probs, probs, g, e, entropy[rows])
            del logits, probs, log_probs
            out = grad_hidden[rows]
            head_grads(dlogits, tokens[rows], g, hidden[rows], weight, temperature, out, grad_weight, grad_bias)
            del dlogits
        ctx.in_place = ctx.in_place and need_weight
        if ctx.in_place or not need_weight:
            ctx.save_for_backward(grad_hidden)
        else:
            ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
            ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype)
        ctx.mark_non_differentiable(logprobs, entropy)
        return logprobs, entropy, hidden.new_zeros((), dtype=dtype)

    @staticmethod
    def backward(ctx: Any, _logprobs: Any, _entropy: Any, grad_anchor: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        scale = float(grad_anchor)
        if len(ctx.saved_tensors) == 1:  # in place, or a frozen head
            (grad_hidden,) = ctx.saved_tensors
            if ctx.in_place and scale != 1.0:
                raise RuntimeError(
                    "the fused head+loss wrote the head's gradient into .grad for an unscaled loss, but backward "
                    f"got gradient {scale} (a loss scaler?); set `fused_head_loss: false`"
                )
            return grad_hidden * scale if scale != 1.0 else grad_hidden, None, None, None, None, None, None, None
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        if scale != 1.0:  # (a loss scaler): the gradients were computed for gradient 1
            grad_hidden, grad_weight = grad_hidden * scale, grad_weight * scale
            grad_bias = None if grad_bias is None else grad_bias * scale
        weight_dtype, bias_dtype = ctx.dtypes
        grad_bias = None if grad_bias is None else grad_bias.to(bias_dtype)
        return grad_hidden, grad_weight.to(weight_dtype), grad_bias, None, None, None, None, None


def fused_head_loss(
    head: torch.nn.Linear,
    hidden: torch.Tensor,
    tokens: torch.Tensor,
    initial: torch.Tensor,
    temperature: float,
    chunk_size: int,
    token_grads: TokenGrads,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Log-probs ``[...]`` and entropies ``[...]`` of ``tokens`` (values, no gradient) and an *anchor*: a zero
    scalar whose backward delivers the loss's gradient to ``hidden`` ``[..., H]`` and, except on the in-place
    path (whose head gradients are already in ``.grad`` when this returns), to the head's weight and bias
    (module docstring).

    ``initial`` ``[...]`` holds the placeholder log-probs of positions not yet scored (the old policy's, so
    that ratios there are 1); ``token_grads`` gets and returns flat tensors. Add the anchor to the loss's
    detached value and back-propagate that.
    """
    if not can_fuse(head):
        raise ValueError(f"fused_head_loss needs a plain nn.Linear head, got {type(head).__name__} (see can_fuse)")
    shape = tokens.shape
    flat_hidden = hidden.reshape(-1, hidden.shape[-1])
    logprobs, entropy, anchor = _FusedHeadLoss.apply(
        flat_hidden,
        head.weight,
        head.bias,
        tokens.reshape(-1),
        initial.reshape(-1),
        float(temperature),
        chunk_size,
        token_grads,
    )
    return logprobs.view(shape), entropy.view(shape), anchor
