"""GRPOModule's advantages and per-micro-batch loss masks: group-relative advantages of the summed rewards or
GDPO's per-function normalisation (``multi_objective_aggregation``), DeepSeek-V3.2's off-policy sequence
mask and the high-entropy token mask ("Beyond the 80/20 rule"), with batch statistics over every rank."""

from __future__ import annotations

import torch

from r1_lightning.generation.mismatch import sampler_importance_weights, truncated_importance_weights
from r1_lightning.training.losses import (
    global_std,
    group_advantages,
    high_entropy_mask,
    normalize_then_sum_advantages,
    off_policy_sequence_mask,
)


class LossMasks:
    """Needs ``hparams`` (``off_policy_mask_threshold``, ``top_entropy_quantile``), ``trainer``, ``all_gather``."""

    def rollout_advantages(self, rewards: torch.Tensor, per_fn: dict[str, list]) -> torch.Tensor:
        """Advantages of one rollout's ``[B * G]`` weighted rewards (raw scores ``per_fn`` for GDPO)."""
        hp, distributed = self.hparams, self._trainer is not None and self.trainer.world_size > 1
        if hp.multi_objective_aggregation == "normalize_then_sum":
            names = [reward.name for reward in self.rewards]
            nan = float("nan")
            scores = torch.tensor(
                [[nan if s is None else s for s in per_fn[name]] for name in names], device=rewards.device
            ).t()
            weights = torch.tensor([reward.weight for reward in self.rewards], device=rewards.device)
            gather = self.all_gather if distributed else None
            return normalize_then_sum_advantages(scores, weights, hp.num_generations, gather)
        # `scale_rewards: batch` under data parallelism scales by the std of every rank's rewards, as TRL
        batch_std = global_std(rewards, self.all_gather) if hp.scale_rewards == "batch" and distributed else None
        return group_advantages(rewards, hp.num_generations, scale_by_std=hp.scale_rewards, batch_std=batch_std)

    def sampler_weights(
        self, old: torch.Tensor, sampled: torch.Tensor | None, mask: torch.Tensor
    ) -> torch.Tensor | None:
        """The sampler correction of one micro-batch (``vllm_importance_sampling_mode``, else ``tis_cap``'s
        token truncation); None when off or when the engine returned no log-probs."""
        hp = self.hparams
        if sampled is None:
            return None
        if hp.vllm_importance_sampling_mode is not None:
            low, high = hp.vllm_importance_sampling_clip_min, hp.vllm_importance_sampling_clip_max
            return sampler_importance_weights(old, sampled, mask, hp.vllm_importance_sampling_mode, low, high)
        return None if hp.tis_cap is None else truncated_importance_weights(old, sampled, hp.tis_cap)

    def loss_masks(self, logprobs, entropy, advantages, old, sampled, mask) -> dict[str, torch.Tensor | None]:
        """The off-policy sequence mask and the high-entropy token mask of one micro-batch (None when off)."""
        hp, sequence_mask, token_mask = self.hparams, None, None
        if hp.off_policy_mask_threshold is not None:  # the sampler's log-probs where the engine gave them
            behaviour, threshold = (sampled if sampled is not None else old), hp.off_policy_mask_threshold
            sequence_mask = off_policy_sequence_mask(advantages, logprobs, behaviour, mask, threshold)
        if hp.top_entropy_quantile < 1.0:
            token_mask = high_entropy_mask(entropy, mask, hp.top_entropy_quantile, self.all_gather_ranks)
        return {"sequence_mask": sequence_mask, "token_mask": token_mask}

    def all_gather_ranks(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` of every rank, concatenated (ranks may hold different counts; one rank: unchanged)."""
        if self._trainer is None or self.trainer.world_size == 1:
            return values
        count = int(self.trainer.strategy.reduce(torch.tensor(float(values.numel()), device=values.device), "max"))
        padded = torch.full((count,), -1.0, dtype=values.dtype, device=values.device)
        padded[: values.numel()] = values
        gathered = self.all_gather(padded).reshape(-1)
        return gathered[gathered >= 0]  # entropies are >= 0: the -1 padding drops out
