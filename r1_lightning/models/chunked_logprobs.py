"""Token log-probs straight from the final hidden states, without a ``[rows, tokens, vocab]`` tensor.

At a 151,936-token vocabulary the logits, not the weights, decide the memory of long reasoning: one
4,096-token completion's fp32 logits are 2.5 GB, and autograd keeps them (and a log-softmax copy) for
the backward pass. Here the output projection is applied to ``chunk_size`` tokens at a time; the forward
keeps only each token's ``logsumexp`` and the backward recomputes the chunk's logits (Liger's fused
linear cross-entropy and veRL's chunked entropy do the same). Per token ``t`` with hidden state ``h_t``,
output weights ``W`` and temperature ``T``::

    z_t = W h_t / T,   log p(y_t) = z_t[y_t] - logsumexp(z_t)
    d log p(y_t) / d z_t = onehot(y_t) - softmax(z_t)

so ``dL/dh_t = g_t (onehot - p_t)^T W / T`` and ``dL/dW = sum_t g_t (onehot - p_t) h_t^T / T`` for the
upstream gradient ``g_t``. The result equals ``token_logprobs(h @ W.T, y, T)`` in value and gradient
(float32 rounding; ``tests/test_chunked_logprobs.py``). Peak extra memory is one ``[chunk_size, vocab]``
block instead of ``[tokens, vocab]``.

The trainer's forwards (:mod:`r1_lightning.generation.forward`) use it through :func:`head_scores`: the
model runs with its output head swapped for an identity (:func:`hidden_states_as_logits`), so its
``.logits`` are the final hidden states, and the head is applied here, by chunks. The entropy metric
comes out of the same chunks (no second pass over the vocabulary).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from r1_lightning.hf_compat import causal_lm
from r1_lightning.models import grads_in_place


class _ChunkedLinearLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        tokens: torch.Tensor,
        temperature: float,
        chunk_size: int,
        with_entropy: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # float32 at least (bf16 logits lose the precision log-probs need), float64 kept as it is
        logprobs = torch.empty(hidden.shape[0], dtype=_compute_dtype(hidden), device=hidden.device)
        logsumexp = torch.empty_like(logprobs)
        entropy = torch.empty_like(logprobs) if with_entropy else logprobs.new_empty(0)
        for start in range(0, hidden.shape[0], chunk_size):
            rows = slice(start, start + chunk_size)
            logits = _logits(hidden[rows], weight, bias, temperature)
            logsumexp[rows] = torch.logsumexp(logits, dim=-1)
            logprobs[rows] = logits.gather(-1, tokens[rows, None]).squeeze(-1) - logsumexp[rows]
            if with_entropy:  # H = logsumexp(z) - sum softmax(z) z, from the chunk already in hand
                probs = (logits - logsumexp[rows, None]).exp_()
                entropy[rows] = logsumexp[rows] - probs.mul_(logits).sum(-1)
            del logits
        ctx.save_for_backward(hidden, weight, bias, tokens, logsumexp, entropy)
        ctx.temperature, ctx.chunk_size = temperature, chunk_size
        # inside `grads_in_place`: the weight's gradient goes straight into its .grad (no [vocab, hidden] buffer)
        ctx.into_grad = grads_in_place.active() and grads_in_place.eligible(weight, _compute_dtype(hidden))
        ctx.set_materialize_grads(False)  # an output the loss does not use gets None: no work for it
        return logprobs, entropy

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor | None, grad_entropy: torch.Tensor | None) -> tuple[Any, ...]:  # type: ignore[override]
        hidden, weight, bias, tokens, logsumexp, entropy = ctx.saved_tensors
        if grad is None and grad_entropy is None:
            return (None,) * 7
        grad = torch.zeros_like(logsumexp) if grad is None else grad
        temperature, chunk_size = ctx.temperature, ctx.chunk_size
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        grad_hidden = torch.zeros_like(hidden) if need_hidden else None
        dtype = _compute_dtype(hidden)
        into_grad = need_weight and ctx.into_grad
        if into_grad:
            grad_weight = grads_in_place.grad_buffer(weight)
        else:
            grad_weight = torch.zeros_like(weight, dtype=dtype) if need_weight else None
        grad_bias = torch.zeros(weight.shape[0], dtype=dtype, device=weight.device) if need_bias else None
        grad_params = (grad_weight, grad_bias)
        for start in range(0, hidden.shape[0], chunk_size):
            rows = slice(start, start + chunk_size)
            # recomputed in the logits' own buffer: one [chunk, vocab] block at a time (two with the entropy)
            log_probs = _logits(hidden[rows], weight, bias, temperature).sub_(logsumexp[rows, None])
            probs = log_probs.exp_() if grad_entropy is None else log_probs.exp()
            e = None if grad_entropy is None else grad_entropy[rows]
            dlogits = softmax_grad(log_probs, probs, grad[rows], e, entropy[rows] if e is not None else None)
            del log_probs, probs
            out = grad_hidden[rows] if need_hidden else None
            head_grads(dlogits, tokens[rows], grad[rows], hidden[rows], weight, temperature, out, *grad_params)
            del dlogits
        grad_weight = None if into_grad or grad_weight is None else grad_weight.to(weight.dtype)
        grad_bias = grad_bias.to(bias.dtype) if grad_bias is not None else None
        return grad_hidden, grad_weight, grad_bias, None, None, None, None


def _compute_dtype(hidden: torch.Tensor) -> torch.dtype:
    return torch.promote_types(hidden.dtype, torch.float32)


def _logits(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, temperature: float) -> torch.Tensor:
    """``(hidden @ weight.T + bias) / T`` in the compute dtype, one buffer (bias and T applied in place)."""
    logits = hidden.to(weight.dtype) @ weight.t()
    if bias is not None:
        logits.add_(bias)
    logits = logits.to(_compute_dtype(hidden))
    if temperature != 1.0:
        logits.div_(temperature)
    return logits


def softmax_grad(
    log_probs: torch.Tensor | None,
    probs: torch.Tensor,
    g: torch.Tensor,
    e: torch.Tensor | None,
    entropy: torch.Tensor | None,
) -> torch.Tensor:
    """``dL/dz`` of one chunk without its one-hot term (:func:`head_grads` adds it), built in place::

        dL/dz = -g p - e p (log p + H)      (g = dL/d log p(y), e = dL/dH; the entropy term only when e is given)

    ``log_probs`` and ``probs`` ``[chunk, vocab]`` may share a buffer when ``e`` is None; both are consumed.
    """
    if e is None or log_probs is None or entropy is None:
        return probs.mul_(-g[:, None].to(probs.dtype))
    weights = log_probs.add_(entropy[:, None]).mul_(e[:, None].to(log_probs.dtype))
    return weights.add_(g[:, None].to(weights.dtype)).mul_(probs).neg_()


def head_grads(
    dlogits: torch.Tensor,
    tokens: torch.Tensor,
    g: torch.Tensor,
    hidden: torch.Tensor,
    weight: torch.Tensor,
    temperature: float,
    grad_hidden: torch.Tensor | None,
    grad_weight: torch.Tensor | None,
    grad_bias: torch.Tensor | None,
) -> None:
    """Finish one chunk's backward through ``z = (W h + b) / T`` from :func:`softmax_grad`'s output: add the
    one-hot ``g onehot(y)``, divide by ``T``, then ``dL/dh = dz W`` into ``grad_hidden`` (the chunk's rows),
    ``dL/dW += dz^T h`` into ``grad_weight`` (in place: no ``[vocab, hidden]`` temporary per chunk) and
    ``dL/db += sum dz`` into ``grad_bias``; each skipped when None."""
    dlogits.scatter_add_(-1, tokens[:, None], g[:, None].to(dlogits.dtype))
    if temperature != 1.0:
        dlogits.div_(temperature)
    if grad_hidden is not None:
        grad_hidden.copy_(dlogits.to(weight.dtype) @ weight)
    if grad_weight is not None:
        grad_weight.addmm_(dlogits.t(), hidden.to(dlogits.dtype))
    if grad_bias is not None:
        grad_bias += dlogits.sum(0)


def default_chunk_size(vocab_size: int, block_bytes: int = 128 * 1024**2) -> int:
    """Tokens per chunk so that one float32 ``[chunk, vocab]`` block is about ``block_bytes`` (128 MiB):
    ~220 tokens at a 151,936-token vocabulary, the whole micro-batch at a 500-token one. Big enough for
    the head's matrix products to run near full speed (measured on a 2-core AVX-512 CPU at hidden 896: 110-token
    chunks cost 9% more per token than 220-token ones, 440-token ones 3% less but 0.65 GiB more peak), small
    enough that the two or three such blocks alive at once stay far below the model's own memory.

    >>> default_chunk_size(151936), default_chunk_size(500)
    (220, 67108)
    """
    return max(1, block_bytes // (4 * vocab_size))


def resolve_chunk_size(setting: int | None, model: Any) -> int:
    """``logprob_chunk_size`` as used: None picks :func:`default_chunk_size` for ``model``'s vocabulary;
    0 means full logits; a whole number of tokens is taken as it is (a ValueError names anything else)."""
    if setting is None:
        return default_chunk_size(causal_lm(model).config.vocab_size)
    if isinstance(setting, bool) or not isinstance(setting, int) or setting < 0:
        raise ValueError(
            f"`logprob_chunk_size` must be a whole number of tokens >= 0 (0 = full logits) or null (sized to the "
            f"vocabulary), got {setting!r}"
        )
    return setting


def chunked_token_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    tokens: torch.Tensor,
    temperature: float = 1.0,
    chunk_size: int = 1024,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """``log softmax((hidden @ weight.T + bias) / T)[tokens]`` per token, computed ``chunk_size`` tokens at
    a time in forward and backward (see the module docstring); float32 out (float64 for float64 inputs).

    ``hidden`` is ``[..., H]`` (the final hidden states, already shifted to predict ``tokens`` ``[...]``),
    ``weight`` the output projection ``[V, H]`` (a tied embedding matrix works the same: its gradient
    adds to the embedding's).

    >>> h, w = torch.eye(2), torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    >>> chunked_token_logprobs(h, w, torch.tensor([0, 0]), chunk_size=1).exp()
    tensor([0.8808, 0.5000])
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    shape = tokens.shape
    flat_hidden = hidden.reshape(-1, hidden.shape[-1])
    flat, _ = _ChunkedLinearLogprobs.apply(
        flat_hidden, weight, bias, tokens.reshape(-1), float(temperature), chunk_size, False
    )
    return flat.view(shape)


@torch.no_grad()
def chunked_token_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, temperature: float = 1.0, chunk_size: int = 1024, bias: Any = None
) -> torch.Tensor:
    """Entropy of each position's next-token distribution, ``[...]``, ``chunk_size`` tokens at a time (for
    logging: no gradient)."""
    flat = hidden.reshape(-1, hidden.shape[-1])
    out = torch.empty(flat.shape[0], dtype=_compute_dtype(flat), device=flat.device)
    for start in range(0, flat.shape[0], chunk_size):
        logp = torch.log_softmax(_logits(flat[start : start + chunk_size], weight, bias, temperature), dim=-1)
        out[start : start + chunk_size] = -(logp.exp() * logp).sum(-1)
    return out.view(hidden.shape[:-1])


@contextlib.contextmanager
def hidden_states_as_logits(model: Any) -> Iterator[Any]:
    """Within the block, ``model(...).logits`` are the final hidden states ``[..., H]``: the output head is
    swapped for an identity (and put back on exit, also on error). Yields the head, for
    :func:`head_scores`. The model's own forward still runs, so wrappers' hooks (peft, FSDP2's unsharding
    of the root unit, which keeps the head's weight gathered until backward) see a normal call."""
    lm = causal_lm(model)
    head = lm.get_output_embeddings()
    if head is None:
        raise ValueError(
            f"{type(lm).__name__} has no output embeddings (lm_head); set `logprob_chunk_size: 0` to score it "
            "from its logits"
        )
    from torch.distributed.fsdp import FSDPModule

    # FSDP2: the head lives in the root unit, which would reshard after the forward; it must stay gathered
    # until the head has run (its gradient then reaches the unsharded weight, which FSDP reduce-scatters
    # after backward as it does for every weight the forward used)
    # (inside `strategies.gathered` the weights are already whole and held: nothing to change there, and
    # switching resharding back on would make that block's later forwards gather again)
    sharded = type(getattr(head, "weight", None)).__name__ == "DTensor"
    root = lm if isinstance(lm, FSDPModule) and sharded else None
    if root is not None:
        root.set_reshard_after_forward(False, recurse=False)
    lm.set_output_embeddings(torch.nn.Identity())
    try:
        yield head
    finally:
        lm.set_output_embeddings(head)
        if root is not None:
            root.set_reshard_after_forward(True, recurse=False)


def head_scores(
    head: Any, hidden: torch.Tensor, tokens: torch.Tensor, temperature: float, chunk_size: int, with_entropy: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs of ``tokens`` (and entropies) from final hidden states ``[..., H]`` through the output
    ``head``, ``chunk_size`` tokens at a time. A plain ``nn.Linear`` head (tied or not) goes through the
    chunked autograd function; any other head (LoRA on the head, a quantized head) is called per chunk
    under activation checkpointing, which keeps the same memory bound at one extra head forward."""
    if type(head) is torch.nn.Linear:
        flat_hidden = hidden.reshape(-1, hidden.shape[-1])
        logprobs, entropy = _ChunkedLinearLogprobs.apply(
            flat_hidden, head.weight, head.bias, tokens.reshape(-1), float(temperature), chunk_size, with_entropy
        )
        return logprobs.view(tokens.shape), (entropy.view(tokens.shape) if with_entropy else None)
    from torch.utils.checkpoint import checkpoint

    from r1_lightning.models.logprobs import token_entropy, token_logprobs

    def chunk_scores(h: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = head(h)
        entropy = token_entropy(logits, temperature, differentiable=True) if with_entropy else logits.new_zeros(0)
        return token_logprobs(logits, t, temperature), entropy

    flat_hidden, flat_tokens = hidden.reshape(1, -1, hidden.shape[-1]), tokens.reshape(1, -1)
    pieces, entropies = [], []
    for start in range(0, flat_tokens.shape[1], chunk_size):
        part = flat_hidden[:, start : start + chunk_size]
        logprobs, entropy = checkpoint(
            chunk_scores, part, flat_tokens[:, start : start + chunk_size], use_reentrant=False
        )
        pieces.append(logprobs)
        entropies.append(entropy)
    logprobs = torch.cat(pieces, dim=1).view(tokens.shape)
    return logprobs, (torch.cat(entropies, dim=1).view(tokens.shape) if with_entropy else None)
