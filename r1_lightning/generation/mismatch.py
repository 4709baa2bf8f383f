"""Training-inference mismatch: the sampler's log-probs of the tokens it drew against the trainer's
log-probs of the same tokens under the same weights (Yao et al., "Your efficient RL framework secretly
brings you off-policy RL training"; TRL's ``vllm_importance_sampling_correction``, veRL's TIS).

The two differ through kernels (vLLM vs the training forward, the lean decode step vs the full
forward), precision (bf16) and batching; the gap makes "on-policy" GRPO slightly off-policy. It is
measured on every rollout's first pass, and can be corrected by truncated importance sampling:
each token's policy-gradient term is weighted by ``min(pi_old / pi_sampler, cap)``.
"""

from __future__ import annotations

import math

import torch


class MismatchMeter:
    """Sums over one rollout: mean |log p_trainer - log p_sampler|, the k3 estimate of
    ``KL(sampler || trainer)`` per token, and the share of tokens whose gap exceeds ``threshold``."""

    def __init__(self, threshold: float = 0.1) -> None:
        self.threshold = threshold
        self.abs_sum = self.kl_sum = self.over = self.tokens = 0.0

    @torch.no_grad()
    def add(self, trainer_logprobs: torch.Tensor, sampler_logprobs: torch.Tensor, mask: torch.Tensor) -> None:
        mask = mask.to(trainer_logprobs.dtype)
        gap = (trainer_logprobs - sampler_logprobs) * mask
        self.abs_sum += float(gap.abs().sum())
        self.kl_sum += float(((torch.exp(gap) - gap - 1.0) * mask).sum())  # k3 with log(p_trainer / p_sampler)
        self.over += float(((gap.abs() > self.threshold).to(mask.dtype) * mask).sum())
        self.tokens += float(mask.sum())

    def summary(self) -> dict[str, float]:
        """``mismatch/abs_logprob_diff``, ``mismatch/kl``, ``mismatch/frac_over_threshold`` (empty: no data).

        >>> meter = MismatchMeter(threshold=0.1)
        >>> meter.add(torch.tensor([[-1.0, -2.0]]), torch.tensor([[-1.0, -2.5]]), torch.tensor([[1, 1]]))
        >>> {k: round(v, 4) for k, v in meter.summary().items()}
        {'mismatch/abs_logprob_diff': 0.25, 'mismatch/kl': 0.0744, 'mismatch/frac_over_threshold': 0.5}
        """
        if not self.tokens:
            return {}
        return {
            "mismatch/abs_logprob_diff": self.abs_sum / self.tokens,
            "mismatch/kl": self.kl_sum / self.tokens,
            "mismatch/frac_over_threshold": self.over / self.tokens,
        }


def truncated_importance_weights(
    old_logprobs: torch.Tensor, sampler_logprobs: torch.Tensor, cap: float
) -> torch.Tensor:
    """TIS weights ``min(exp(log pi_old - log pi_sampler), cap)``, without gradient.

    >>> truncated_importance_weights(torch.tensor([0.0, 0.0]), torch.tensor([0.0, -2.0]), cap=2.0)
    tensor([1., 2.])
    """
    if cap <= 0:
        raise ValueError(f"the importance-sampling cap must be > 0, got {cap}")
    return torch.exp(old_logprobs - sampler_logprobs).clamp(max=cap).detach()


#: TRL's ``vllm_importance_sampling_mode`` values
IMPORTANCE_SAMPLING_MODES = ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask")


@torch.no_grad()
def sampler_importance_weights(
    old_logprobs: torch.Tensor,
    sampler_logprobs: torch.Tensor,
    mask: torch.Tensor,
    mode: str,
    clip_min: float | None = None,
    clip_max: float | None = 3.0,
) -> torch.Tensor:
    """TRL's correction for a sampler whose log-probs differ from the trainer's: the ratio
    ``pi_old / pi_sampler`` per token (``token_*``, ``[B, L]``) or per completion (``sequence_*``, the product
    over its tokens, ``[B, 1]``), then ``*_truncate`` clamps it to ``[clip_min, clip_max]`` and ``*_mask``
    zeroes it outside that range; a token without a sampler log-prob (NaN) counts as ratio 1.

    >>> old, sampler, mask = torch.zeros(2, 2), torch.tensor([[0.0, -2.0], [-0.1, 0.0]]), torch.ones(2, 2)
    >>> sampler_importance_weights(old, sampler, mask, "token_truncate", clip_max=2.0)
    tensor([[1.0000, 2.0000],
            [1.1052, 1.0000]])
    >>> sampler_importance_weights(old, sampler, mask, "sequence_mask", clip_max=3.0).flatten()
    tensor([0.0000, 1.1052])
    """
    if mode not in IMPORTANCE_SAMPLING_MODES:
        raise ValueError(f"vllm_importance_sampling_mode must be one of {IMPORTANCE_SAMPLING_MODES}, got {mode!r}")
    difference = torch.nan_to_num((old_logprobs - sampler_logprobs) * mask, nan=0.0)
    if mode.startswith("sequence"):
        difference = difference.sum(-1, keepdim=True)
    ratio = torch.exp(difference)
    if mode.endswith("truncate"):
        return ratio.clamp(min=clip_min, max=clip_max)
    low = -math.inf if clip_min is None else clip_min
    high = math.inf if clip_max is None else clip_max
    return ratio.masked_fill((ratio < low) | (ratio > high), 0.0)
