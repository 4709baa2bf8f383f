"""GRPOModule's per-micro-batch loss masks: DeepSeek-V3.2's off-policy sequence mask and the high-entropy
token mask ("Beyond the 80/20 rule"), with the entropy quantile taken over every rank's tokens."""

from __future__ import annotations

import torch

from r1_lightning.training.losses import high_entropy_mask, off_policy_sequence_mask


class LossMasks:
    """Needs ``hparams`` (``off_policy_mask_threshold``, ``top_entropy_quantile``), ``trainer``, ``all_gather``."""

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
