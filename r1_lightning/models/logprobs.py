"""Per-token log-probabilities and entropies from logits: what the sampler, the trainer's loss and the
metrics read off a forward pass. Below both generation and training, so that each uses the same math."""

from __future__ import annotations

import torch


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Log-probability of each chosen token: ``log softmax(logits / T)[tokens]``.

    ``logits`` is ``[B, L, V]`` aligned with ``tokens`` ``[B, L]`` (the caller shifts). Computed row by
    row in float32 so that bf16 logits and big vocabularies neither lose precision nor materialise a
    second ``[B, L, V]`` tensor of log-softmax values.

    >>> logits = torch.tensor([[[0.0, 0.0], [2.0, 0.0]]])
    >>> token_logprobs(logits, torch.tensor([[0, 0]])).exp()
    tensor([[0.5000, 0.8808]])
    """
    if temperature != 1.0:
        logits = logits / temperature
    rows = []
    for row_logits, row_tokens in zip(logits, tokens, strict=True):
        row_logits = row_logits.float()
        picked = row_logits.gather(-1, row_tokens.unsqueeze(-1)).squeeze(-1)
        rows.append(picked - torch.logsumexp(row_logits, dim=-1))
    return torch.stack(rows)


def token_entropy(logits: torch.Tensor, temperature: float = 1.0, differentiable: bool = False) -> torch.Tensor:
    """Entropy ``-sum p log p`` of each position's next-token distribution, ``[B, L]``: for logging (no
    gradient, so no log-softmax copy kept), or ``differentiable`` for an entropy bonus."""
    rows = []
    with torch.set_grad_enabled(differentiable and torch.is_grad_enabled()):
        for row_logits in logits:
            logp = torch.log_softmax(row_logits.float() / temperature, dim=-1)
            rows.append(-(logp.exp() * logp).sum(-1))
    return torch.stack(rows)
