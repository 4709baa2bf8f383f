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

import math
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import torch

LossType = Literal["grpo", "dapo", "dr_grpo", "bnpo", "cispo", "sapo", "luspo", "vespo", "sequence", "token"]
#: TRL 1.16's ``loss_type`` values (``_compute_loss``); ``sequence`` and ``token`` are this project's older
#: names of ``grpo`` and ``dapo``, kept as aliases
LOSS_TYPES: tuple[str, ...] = ("grpo", "dapo", "dr_grpo", "bnpo", "cispo", "sapo", "luspo", "vespo")
LOSS_ALIASES = {"sequence": "grpo", "token": "dapo"}
#: loss types whose per-token term is PPO's clipped surrogate (``epsilon_low`` / ``epsilon_high`` / ``delta``)
CLIPPED_LOSSES = ("grpo", "dapo", "dr_grpo", "bnpo", "luspo")
ImportanceSamplingLevel = Literal["token", "sequence"]
IMPORTANCE_SAMPLING_LEVELS: tuple[str, ...] = ("token", "sequence")
RewardScaling = Literal["group", "batch", "none"]


def canonical_loss_type(name: str) -> str:
    """TRL's name of a ``loss_type`` (aliases resolved); a ValueError naming the choices otherwise.

    >>> canonical_loss_type("sequence"), canonical_loss_type("cispo")
    ('grpo', 'cispo')
    """
    name = LOSS_ALIASES.get(name, name)
    if name not in LOSS_TYPES:
        raise ValueError(f"`loss_type` must be one of {LOSS_TYPES} (or {tuple(LOSS_ALIASES)}), got {name!r}")
    return name


@dataclass(frozen=True)
class LossParameters:
    """The per-loss-type parameters of TRL 1.16's ``GRPOConfig``, under its names and defaults.

    Args:
        delta: two-sided clipping (the unclipped ratio capped at ``delta``) for the clipped losses; None = off.
        sapo_temperature_pos: SAPO's soft-gate temperature for positive advantages.
        sapo_temperature_neg: SAPO's temperature for negative advantages.
        vespo_k_pos: VESPO's gamma-weight shape ``k`` for non-negative advantages.
        vespo_lambda_pos: VESPO's rate ``lambda`` for non-negative advantages.
        vespo_k_neg: ``k`` for negative advantages.
        vespo_lambda_neg: ``lambda`` for negative advantages.
    """

    delta: float | None = None
    sapo_temperature_pos: float = 1.0
    sapo_temperature_neg: float = 1.05
    vespo_k_pos: float = 2.0
    vespo_lambda_pos: float = 3.0
    vespo_k_neg: float = 3.0
    vespo_lambda_neg: float = 2.0


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


def _nanstd(values: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sample standard deviation ignoring NaNs (keeps ``dim``); NaN where fewer than two values."""
    mean = torch.nanmean(values, dim=dim, keepdim=dim is not None)
    count = (~torch.isnan(values)).sum(dim=dim, keepdim=dim is not None)
    variance = torch.nanmean((values - mean) ** 2, dim=dim, keepdim=dim is not None)
    return torch.sqrt(variance * torch.where(count > 1, count / (count - 1), torch.nan))


def normalize_then_sum_advantages(
    scores: torch.Tensor, weights: torch.Tensor, group_size: int, all_gather: Any = None
) -> torch.Tensor:
    """GDPO's advantages (TRL's ``multi_objective_aggregation: normalize_then_sum``): each reward function's
    scores normalised within its group first, ``(s_k - mean_G s_k) / (std_G s_k + 1e-4)``, then summed with
    the weights, then the sums normalised over the whole batch (every rank's: ``all_gather``). ``scores`` is
    ``[N, K]`` with NaN where a function does not apply; stds are sample stds (TRL's ``nanstd``); a
    completion no function scored gets 0, as in TRL.

    >>> scores = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0], [1.0, 3.0]])
    >>> normalize_then_sum_advantages(scores, torch.tensor([1.0, 1.0]), 2).round(decimals=3)
    tensor([ 0.8660, -0.8660, -0.8660,  0.8660])
    """
    grouped = scores.view(-1, group_size, scores.shape[1])
    normalised = (grouped - torch.nanmean(grouped, dim=1, keepdim=True)) / (_nanstd(grouped, dim=1) + 1e-4)
    totals = torch.nansum(normalised.view(-1, scores.shape[1]) * weights, dim=1)
    totals[torch.isnan(scores).all(dim=1)] = torch.nan
    pooled = totals if all_gather is None else all_gather(totals).reshape(-1)
    advantages = (totals - torch.nanmean(pooled)) / (_nanstd(pooled) + 1e-4)
    return torch.nan_to_num(advantages, nan=0.0)


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
    num_micro_batches: int = 1,
) -> torch.Tensor:
    """Reduce ``[B, L]`` per-token losses to a scalar, as TRL 1.16 does for each ``loss_type``.

    - ``grpo`` / ``sapo`` (DeepSeekMath / R1): mean over each completion's tokens, then over completions.
    - ``dapo`` / ``cispo`` / ``vespo``: sum over all completion tokens / the rollout's completion tokens.
    - ``dr_grpo`` (Dr. GRPO): sum / (completions x ``max_completion_length``), a constant: no length bias.
    - ``luspo``: sum over each completion's tokens, mean over completions.
    - ``bnpo``: sum / this micro-batch's own tokens, averaged over the ``num_micro_batches`` (TRL normalises
      it per accumulation step: the one loss here that changes with the micro-batch size, as in TRL).

    The denominators default to this batch's own. When the caller splits a rollout into micro-batches it
    passes the *whole rollout's* ``num_sequences`` and ``num_tokens``: every micro-batch loss is then a
    partial sum of the full-batch loss and accumulating their gradients gives exactly the un-split
    gradient, whatever the micro-batch size.
    """
    loss_type = canonical_loss_type(loss_type)
    mask = mask.to(per_token.dtype)
    num_sequences = per_token.shape[0] if num_sequences is None else num_sequences
    masked = per_token * mask
    if loss_type in ("grpo", "sapo"):
        return (masked.sum(-1) / mask.sum(-1).clamp(min=1.0)).sum() / num_sequences
    if loss_type in ("dapo", "cispo", "vespo"):
        num_tokens = mask.sum().clamp(min=1.0) if num_tokens is None else max(float(num_tokens), 1.0)
        return masked.sum() / num_tokens
    if loss_type == "dr_grpo":
        length = mask.shape[1] if max_completion_length is None else max_completion_length
        return masked.sum() / (num_sequences * length)
    if loss_type == "luspo":
        return masked.sum() / num_sequences
    return masked.sum() / mask.sum().clamp(min=1.0) / num_micro_batches  # bnpo


def off_policy_sequence_mask(
    advantages: torch.Tensor,
    logprobs: torch.Tensor,
    sampling_logprobs: torch.Tensor,
    mask: torch.Tensor,
    threshold: float,
) -> torch.Tensor:
    """DeepSeek-V3.2's off-policy sequence mask (TRL's ``off_policy_mask_threshold``), ``[B, 1]``: a completion
    with a negative advantage is dropped when its mean per-token ``log pi_sampler - log pi_theta`` (a forward-KL
    estimate of how far the policy has moved from what sampled it) passes ``threshold``; tokens without a
    sampling log-prob (NaN) count as no evidence.

    >>> off_policy_sequence_mask(torch.tensor([1.0, -1.0, -1.0]), torch.tensor([[-2.0], [-2.0], [-1.0]]),
    ...                          torch.tensor([[-1.0], [-1.0], [-1.0]]), torch.ones(3, 1), 0.5).flatten()
    tensor([1., 0., 1.])
    """
    kl = torch.nan_to_num(sampling_logprobs - logprobs.detach(), nan=0.0)
    mask = mask.to(logprobs.dtype)
    mean_kl = (kl * mask).sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1.0)
    return ((advantages.view(-1, 1) >= 0) | (mean_kl <= threshold)).to(mask.dtype)


@torch.no_grad()
def high_entropy_mask(entropy: torch.Tensor, mask: torch.Tensor, quantile: float, gather: Any = None) -> torch.Tensor:
    """``[B, L]`` 0/1 mask of the completion tokens whose entropy is in the top ``quantile`` share ("Beyond
    the 80/20 rule"; TRL's ``top_entropy_quantile``): at or above the ``1 - quantile`` quantile of every
    rank's masked entropies (``gather`` concatenates them; None = this rank's).

    >>> high_entropy_mask(torch.tensor([[0.1, 0.9, 0.5, 0.7, 0.3]]), torch.ones(1, 5), 0.4)
    tensor([[0., 1., 0., 1., 0.]])
    """
    valid = mask.bool()
    pooled = entropy[valid].float()
    pooled = pooled if gather is None else gather(pooled)
    if pooled.numel() == 0:
        return torch.zeros_like(mask, dtype=entropy.dtype)
    threshold = torch.quantile(pooled, 1.0 - quantile)
    return ((entropy >= threshold) & valid).to(entropy.dtype)


@torch.no_grad()
def vespo_weights(
    advantages: torch.Tensor,
    log_ratio: torch.Tensor,
    mask: torch.Tensor,
    params: LossParameters,
    is_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """VESPO's gamma weights ``phi(w) = exp(lambda + k log w - lambda w)`` (``phi(1) = 1``) of the sequence
    ratio ``w = prod_t pi_theta / pi_old`` (times the sampler correction, if any), ``[B, 1]``, no gradient;
    ``k, lambda`` by the advantage's sign. Clamped in log space as TRL clamps it."""
    floor = math.log(1e-8)
    log_w = (torch.clamp(log_ratio, -20.0, 20.0) * mask).sum(-1, keepdim=True)
    if is_weights is not None:
        log_w = log_w + torch.clamp(torch.log(is_weights), floor, 20.0).sum(-1, keepdim=True)
    log_w = torch.clamp(log_w, floor, 20.0)
    positive = advantages.view(-1, 1) >= 0
    k = torch.where(positive, params.vespo_k_pos, params.vespo_k_neg).to(log_w)
    lam = torch.where(positive, params.vespo_lambda_pos, params.vespo_lambda_neg).to(log_w).clamp(min=1e-4)
    return torch.exp(lam + k * log_w - lam * torch.exp(log_w)).nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)


class GRPOLossOutput(NamedTuple):
    loss: torch.Tensor  # scalar, differentiable
    policy_loss: torch.Tensor  # scalar, the clipped-surrogate part, detached
    kl: torch.Tensor  # scalar, mean k3 KL per completion token, detached (0 when beta == 0)
    clip_ratio: torch.Tensor  # scalar, fraction of completion tokens where the clip was active


def policy_surrogate(
    loss_type: str,
    ratio: torch.Tensor,
    advantages: torch.Tensor,
    logprobs: torch.Tensor,
    clip: tuple[float, float],
    params: LossParameters,
    vespo: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-token policy objective of each loss type and where its clip is active (0/1). With ``w`` the
    ratio ``pi_theta / pi_old`` and ``A`` the advantage:

    - clipped losses (``grpo``, ``dapo``, ``dr_grpo``, ``bnpo``, ``luspo``): ``min(w A, clip(w, 1 - eps_low,
      1 + eps_high) A)``, with ``w`` capped at ``delta`` first when set (two-sided clipping);
    - ``cispo``: ``sg(min(w, eps_high)) A log pi_theta`` (the clipped weight carries no gradient);
    - ``sapo``: ``sigmoid(tau (w - 1)) 4 / tau A`` with ``tau`` by the sign of ``A`` (a soft gate);
    - ``vespo``: ``phi(w_seq) A log pi_theta`` with ``vespo`` = :func:`vespo_weights`.
    """
    adv = advantages.to(logprobs.dtype).unsqueeze(1)
    epsilon_low, epsilon_high = clip
    if loss_type in CLIPPED_LOSSES:
        clipped = torch.clamp(ratio, 1.0 - epsilon_low, 1.0 + epsilon_high) * adv
        unclipped = (ratio if params.delta is None else torch.clamp(ratio, max=params.delta)) * adv
        return torch.min(unclipped, clipped), (clipped < unclipped).to(logprobs.dtype)
    if loss_type == "cispo":
        return torch.clamp(ratio, max=epsilon_high).detach() * adv * logprobs, (ratio > epsilon_high).to(logprobs.dtype)
    if loss_type == "sapo":
        tau = torch.where(adv > 0, params.sapo_temperature_pos, params.sapo_temperature_neg).to(ratio)
        return torch.sigmoid(tau * (ratio - 1)) * 4 / tau * adv, torch.zeros_like(ratio)
    return vespo * adv * logprobs, torch.zeros_like(ratio)


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
    loss_type: LossType = "grpo",
    num_sequences: int | None = None,
    num_tokens: int | float | None = None,
    max_completion_length: int | None = None,
    importance_sampling_level: ImportanceSamplingLevel = "token",
    kl_bias_correction: bool = False,
    is_weights: torch.Tensor | None = None,
    params: LossParameters | None = None,
    sequence_mask: torch.Tensor | None = None,
    token_mask: torch.Tensor | None = None,
    num_micro_batches: int = 1,
    entropy: torch.Tensor | None = None,
    entropy_coef: float = 0.0,
) -> GRPOLossOutput:
    """GRPO objective (R1 eq. 1) as a loss to minimise, with TRL 1.16's family of per-token policy terms
    (:func:`policy_surrogate`) and its normalisers (:func:`aggregate_loss`).

    Shapes: ``logprobs``, ``old_logprobs``, ``ref_logprobs``, ``mask``: ``[B, L]`` over completion tokens;
    ``advantages``: ``[B]``. ``importance_sampling_level="sequence"`` is GSPO (one length-normalised ratio
    per completion). In TRL's order, ``sequence_mask`` ([B, 1], :func:`off_policy_sequence_mask`) and
    ``token_mask`` ([B, L], top-entropy tokens) multiply the policy term; ``is_weights`` (no gradient: the
    sampler correction) multiplies it, except for VESPO, which folds it into its weights; ``beta`` times the
    k3 KL is added, times the ratio with ``kl_bias_correction`` (DeepSeek-V3.2, TRL's default). ``entropy_coef``
    subtracts that times the mean ``entropy`` over the tokens carrying the policy gradient, per micro-batch
    and divided by ``num_micro_batches``: TRL's entropy bonus ``L = L_policy - coef * H``.
    """
    loss_type = canonical_loss_type(loss_type)
    params = params or LossParameters()
    if beta != 0.0 and ref_logprobs is None:
        raise ValueError("beta > 0 needs ref_logprobs (log-probs of the frozen reference model)")
    if importance_sampling_level not in IMPORTANCE_SAMPLING_LEVELS:
        raise ValueError(
            f"importance_sampling_level must be one of {IMPORTANCE_SAMPLING_LEVELS}, got {importance_sampling_level!r}"
        )
    mask, token_log_ratio = mask.to(logprobs.dtype), logprobs - old_logprobs
    log_ratio = token_log_ratio
    if importance_sampling_level == "sequence":
        log_ratio = ((log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).unsqueeze(-1)  # [B, 1]
    ratio = torch.exp(log_ratio)
    vespo = vespo_weights(advantages, token_log_ratio, mask, params, is_weights) if loss_type == "vespo" else None
    clip = (epsilon_low, epsilon_high)
    surrogate, clip_active = policy_surrogate(loss_type, ratio, advantages, logprobs, clip, params, vespo)
    per_token = -surrogate
    for factor in (sequence_mask, token_mask):
        if factor is not None:
            per_token = per_token * factor
    if is_weights is not None and loss_type != "vespo":
        per_token = per_token * is_weights
    policy_term = per_token
    kl = torch.zeros_like(per_token)
    if beta != 0.0:
        kl = k3_kl(logprobs, ref_logprobs)
        if kl_bias_correction:
            kl = kl * ratio
        per_token = per_token + beta * kl
    reduce = dict(num_sequences=num_sequences, num_tokens=num_tokens, max_completion_length=max_completion_length)
    reduce["num_micro_batches"] = num_micro_batches
    loss = aggregate_loss(per_token, mask, loss_type, **reduce)
    if entropy_coef:
        if entropy is None:
            raise ValueError("entropy_coef needs the per-token entropy")
        acting = mask if token_mask is None else mask * token_mask
        loss = loss - entropy_coef * (entropy * acting).sum() / acting.sum().clamp(min=1.0) / num_micro_batches
    with torch.no_grad():
        tokens = mask.sum().clamp(min=1.0)
        clip_fraction = (clip_active.expand_as(mask) * mask).sum() / tokens
        policy_loss = aggregate_loss(policy_term, mask, loss_type, **reduce)
        mean_kl = (kl.expand_as(mask) * mask).sum() / tokens
    return GRPOLossOutput(loss, policy_loss.detach(), mean_kl.detach(), clip_fraction.detach())
