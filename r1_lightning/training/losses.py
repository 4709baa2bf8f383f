"""Pure tensor functions of GRPO: group-relative advantages, k3 KL and the clipped loss.

Notation (DeepSeekMath eq. 3; DeepSeek-R1 eq. 1-3). For prompt ``q`` the old policy samples a group of
``G`` completions ``o_1..o_G`` with rule rewards ``r_1..r_G``. Per token ``t`` of completion ``i``::

    ratio_{i,t} = pi_theta(o_{i,t} | q, o_{i,<t}) / pi_old(o_{i,t} | q, o_{i,<t})
    A_i         = (r_i - mean(r)) / (std(r) + eps)                          (R1 eq. 3)
    L_{i,t}     = -min(ratio * A_i, clip(ratio, 1 - eps_low, 1 + eps_high) * A_i)
                  + beta * D_KL(pi_theta || pi_ref)_{i,t}                   (R1 eq. 1)
    D_KL_{i,t}  = pi_ref / pi_theta - log(pi_ref / pi_theta) - 1            (R1 eq. 2, Schulman's k3)

``eps_low == eps_high`` is the paper; ``eps_high > eps_low`` is DAPO's clip-higher. How ``L_{i,t}`` is
averaged is ``loss_type`` (see :func:`aggregate_loss`). Everything here is a pure function of tensors so
that each formula has a hand-computed unit test.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import torch

LossType = Literal["sequence", "token", "dr_grpo"]
LOSS_TYPES: tuple[str, ...] = ("sequence", "token", "dr_grpo")
ImportanceSamplingLevel = Literal["token", "sequence"]
IMPORTANCE_SAMPLING_LEVELS: tuple[str, ...] = ("token", "sequence")
RewardScaling = Literal["group", "batch", "none"]


def group_advantages(
    rewards: torch.Tensor,
    group_size: int,
    scale_by_std: bool | RewardScaling = True,
    eps: float = 1e-4,
    batch_std: torch.Tensor | None = None,
) -> torch.Tensor:
    """Group-relative advantages (R1 eq. 3): ``(r_i - mean_G(r)) / (std_G(r) + eps)``.

    ``rewards`` is ``[B * G]`` with each group's ``G`` completions contiguous. ``std`` is the population
    standard deviation of the group, as the paper's formula reads (TRL uses the sample std; the two differ
    by ``sqrt(G / (G - 1))``). ``scale_by_std`` is TRL's ``scale_rewards``: ``group`` (or True) divides
    by each group's std, ``batch`` by the std of the whole batch's rewards (more robust when a group's
    rewards barely differ), ``none`` (or False) does not scale: Dr. GRPO's unbiased variant. A group whose
    rewards are all equal gets zero advantage (no NaN): it carries no learning signal. Under data
    parallelism ``batch_std`` is the std of *all* ranks' rewards (:func:`global_std`), as TRL scales by
    the std of the gathered batch; by default, this batch's.

    >>> group_advantages(torch.tensor([1.0, 0.0, 3.0, 3.0]), group_size=2, scale_by_std="batch", eps=0.0)
    tensor([ 0.3849, -0.3849,  0.0000,  0.0000])

    >>> group_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0]), group_size=4, eps=0.0)
    tensor([ 1.7321, -0.5774, -0.5774, -0.5774])
    >>> group_advantages(torch.tensor([1.0, 1.0]), group_size=2)
    tensor([0., 0.])
    """
    if rewards.ndim != 1 or rewards.numel() % group_size:
        raise ValueError(
            f"rewards must be a flat tensor of B * G values with G = num_generations = {group_size}; "
            f"got shape {tuple(rewards.shape)}"
        )
    scaling = {True: "group", False: "none"}.get(scale_by_std, scale_by_std)
    if scaling not in ("group", "batch", "none"):
        raise ValueError(f"scale_rewards must be 'group', 'batch' or 'none', got {scale_by_std!r}")
    grouped = rewards.view(-1, group_size).float()
    centered = grouped - grouped.mean(dim=1, keepdim=True)
    if scaling == "batch":
        std = grouped.std(correction=0) if batch_std is None else batch_std.to(grouped)
        return (centered / (std + eps) if std > 0 else torch.zeros_like(centered)).view(-1)
    if scaling == "group":
        std = grouped.std(dim=1, keepdim=True, correction=0)
        # An all-equal group has zero advantage even with eps = 0 (0 / 0 would be NaN).
        centered = torch.where(std > 0, centered / (std + eps), torch.zeros_like(centered))
    return centered.view(-1)


def global_std(values: torch.Tensor, all_gather: Any = None) -> torch.Tensor:
    """Population std of ``values`` pooled over every rank; ``all_gather`` is the LightningModule's (or
    any function returning ``[world, *shape]``); None means one rank. Ranks hold equal-sized batches.

    >>> global_std(torch.tensor([1.0, 3.0]), all_gather=lambda v: torch.stack([v, v + 2]))
    tensor(1.4142)
    """
    pooled = values if all_gather is None else all_gather(values).reshape(-1)
    return pooled.float().std(correction=0)


def k3_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of ``KL(pi_theta || pi_ref)`` (R1 eq. 2), differentiable in ``logprobs``.

    ``pi_ref / pi - log(pi_ref / pi) - 1`` is non-negative and zero where the two agree.

    >>> k3_kl(torch.tensor([0.0]), torch.tensor([-1.0]))  # e^-1 + 1 - 1
    tensor([0.3679])
    """
    log_ratio = ref_logprobs - logprobs
    return torch.exp(log_ratio) - log_ratio - 1.0


def aggregate_loss(
    per_token: torch.Tensor,
    mask: torch.Tensor,
    loss_type: LossType,
    *,
    num_sequences: int | None = None,
    num_tokens: int | float | None = None,
    max_completion_length: int | None = None,
) -> torch.Tensor:
    """Reduce ``[B, L]`` per-token losses to a scalar.

    - ``sequence`` (DeepSeekMath / R1): mean over each completion's tokens, then mean over completions.
    - ``token`` (DAPO): sum over all completion tokens / number of completion tokens in the batch.
    - ``dr_grpo`` (Dr. GRPO): sum over all tokens / (number of completions x ``max_completion_length``),
      a constant, so no length bias.

    The denominators default to this batch's own. When the caller splits a rollout into micro-batches it
    passes the *whole rollout's* ``num_sequences`` and ``num_tokens``: every micro-batch loss is then a
    partial sum of the full-batch loss and accumulating their gradients gives exactly the un-split
    gradient, whatever the micro-batch size.
    """
    mask = mask.to(per_token.dtype)
    num_sequences = per_token.shape[0] if num_sequences is None else num_sequences
    if loss_type == "sequence":
        per_sequence = (per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
        return per_sequence.sum() / num_sequences
    if loss_type == "token":
        num_tokens = mask.sum().clamp(min=1.0) if num_tokens is None else max(float(num_tokens), 1.0)
        return (per_token * mask).sum() / num_tokens
    if loss_type == "dr_grpo":
        length = mask.shape[1] if max_completion_length is None else max_completion_length
        return (per_token * mask).sum() / (num_sequences * length)
    raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")


class GRPOLossOutput(NamedTuple):
    loss: torch.Tensor  # scalar, differentiable
    policy_loss: torch.Tensor  # scalar, the clipped-surrogate part, detached
    kl: torch.Tensor  # scalar, mean k3 KL per completion token, detached (0 when beta == 0)
    clip_ratio: torch.Tensor  # scalar, fraction of completion tokens where the clip was active


def grpo_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    ref_logprobs: torch.Tensor | None = None,
    beta: float = 0.0,
    epsilon_low: float = 0.2,
    epsilon_high: float = 0.2,
    loss_type: LossType = "sequence",
    num_sequences: int | None = None,
    num_tokens: int | float | None = None,
    max_completion_length: int | None = None,
    importance_sampling_level: ImportanceSamplingLevel = "token",
    kl_bias_correction: bool = False,
    is_weights: torch.Tensor | None = None,
) -> GRPOLossOutput:
    """GRPO objective (R1 eq. 1) as a loss to minimise.

    Shapes: ``logprobs``, ``old_logprobs``, ``ref_logprobs``, ``mask``: ``[B, L]`` over completion tokens;
    ``advantages``: ``[B]``. ``mask`` is 1 on tokens that count. The clip is active where the unclipped
    term was not the minimum, i.e. where the gradient of the surrogate is zeroed.

    ``importance_sampling_level="sequence"`` is GSPO (Zheng et al. 2025): one ratio per completion,
    ``s_i = exp(mean_t log(pi_theta / pi_old))`` over its tokens, clipped and applied to every token.
    ``kl_bias_correction`` multiplies the per-token k3 KL by the importance ratio (DeepSeek-V3.2; TRL's
    default since 1.x), which makes its gradient the unbiased reverse-KL gradient when ``pi_old !=
    pi_theta``; the paper's plain k3 (``False``) is the default here. ``is_weights`` ([B, L], no
    gradient) multiplies each token's policy-gradient term, not the KL: truncated importance sampling
    against a sampler whose log-probs differ from the trainer's (``r1_lightning.generation.mismatch``).
    """
    if beta != 0.0 and ref_logprobs is None:
        raise ValueError("beta > 0 needs ref_logprobs (log-probs of the frozen reference model)")
    if importance_sampling_level not in IMPORTANCE_SAMPLING_LEVELS:
        raise ValueError(
            f"importance_sampling_level must be one of {IMPORTANCE_SAMPLING_LEVELS}, got {importance_sampling_level!r}"
        )
    mask = mask.to(logprobs.dtype)
    log_ratio = logprobs - old_logprobs
    if importance_sampling_level == "sequence":
        log_ratio = ((log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).unsqueeze(-1)  # [B, 1]
    ratio = torch.exp(log_ratio)
    adv = advantages.to(logprobs.dtype).unsqueeze(1)
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - epsilon_low, 1.0 + epsilon_high) * adv
    surrogate = torch.min(unclipped, clipped)
    per_token = -surrogate
    if is_weights is not None:
        per_token = per_token * is_weights
    kl = torch.zeros_like(per_token)
    if beta != 0.0:
        kl = k3_kl(logprobs, ref_logprobs)
        if kl_bias_correction:
            kl = kl * ratio
        per_token = per_token + beta * kl
    reduce = dict(num_sequences=num_sequences, num_tokens=num_tokens, max_completion_length=max_completion_length)
    loss = aggregate_loss(per_token, mask, loss_type, **reduce)
    with torch.no_grad():
        tokens = mask.sum().clamp(min=1.0)
        clip_active = ((clipped < unclipped).to(mask.dtype).expand_as(mask) * mask).sum() / tokens
        policy_loss = aggregate_loss(-surrogate, mask, loss_type, **reduce)
        mean_kl = (kl * mask).sum() / tokens
    return GRPOLossOutput(loss, policy_loss.detach(), mean_kl.detach(), clip_active.detach())
