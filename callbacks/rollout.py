"""RolloutCallback: turns a batch of prompts into a scored GRPO rollout before each training step."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from typing_extensions import override

from r1_lightning.losses import group_advantages
from r1_lightning.rewards import score_completions
from r1_lightning.rollout import Rollout, repeat_batch


class RolloutCallback(L.Callback):
    """Samples G completions per prompt with the policy, scores them, and attaches a ``Rollout``.

    Runs in ``on_train_batch_start``: policy in eval mode, no grad, KV cache (``HFGenerator``). Then
    rewards (``fn(completions, prompts=..., **columns)``), group-relative advantages, the micro-batch
    plan (rows grouped by length), the sampling policy's log-probs when ``num_iterations > 1`` and
    the reference's when ``beta > 0`` (one no-grad forward per micro-batch each). Groups are never
    split: each rank samples all G completions of its own prompts. The module reads ``batch["rollout"]``.
    """

    @override
    def on_train_batch_start(self, trainer: L.Trainer, pl_module: Any, batch: dict, batch_idx: int) -> None:
        hp = pl_module.hparams
        group = hp.num_generations
        prompts, columns = repeat_batch(batch, group)
        generation = pl_module.generate(prompts, pl_module.sampling, group_size=group)
        totals, per_fn = score_completions(pl_module.rewards, generation.texts, {"prompts": prompts, **columns})
        device = generation.input_ids.device
        rewards = torch.tensor(totals, dtype=torch.float32, device=device)
        advantages = group_advantages(rewards, group, scale_by_std=hp.scale_rewards)
        plans = pl_module.plan_micro_batches(generation)
        old_logprobs = pl_module.old_logprobs(generation, plans)
        ref_logprobs = pl_module.reference_logprobs(generation, plans)
        batch["rollout"] = Rollout(generation, old_logprobs, ref_logprobs, rewards, advantages, per_fn, group, plans)
