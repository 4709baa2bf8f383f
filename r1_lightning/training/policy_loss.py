"""GRPOModule's loss over one micro-batch: the policy's forward, the old-policy, reference and sampler terms of
the rollout, and GRPO's loss; with the head and the loss fused where the loss allows it.

The fused path (:mod:`r1_lightning.models.fused_head_loss`) computes the output head's gradient while the
log-probs are computed, so the head's logits are not recomputed in backward: one of the step's four passes of
``[tokens, hidden] x [hidden, vocab]`` products saved, the biggest products of a model with a 151,936-token
vocabulary. It needs the loss to be *token-separable* (each token's gradient a function of that token's
log-prob and entropy); :func:`fusable` names what breaks that. The loss is the same function either way
(``loss_of`` below), so both paths give the same loss and gradients (``tests/test_fused_head_loss.py``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from lightning.pytorch.utilities import rank_zero_info

from r1_lightning.generation.forward import micro_batch_logprobs
from r1_lightning.generation.rollout import MicroBatch, Rollout
from r1_lightning.models.fused_head_loss import can_fuse, fused_head_loss
from r1_lightning.training.losses import GRPOLossOutput, canonical_loss_type, grpo_loss


def fusable(hp: Any, stored_old: bool, sampled: bool, precision: str = "32-true") -> str | None:
    """None when the micro-batch loss is token-separable and the fused head+loss may run; otherwise why not,
    naming the setting. ``stored_old``: the old policy's log-probs were stored (``num_iterations`` > 1 or
    asynchronous rollouts), else they are the detached current ones; ``sampled``: the engine's log-probs are
    present (the sampler correction may apply)."""
    if not hp.fused_head_loss:
        return "fused_head_loss: false"
    if precision == "16-mixed":
        return "precision 16-mixed scales the loss"
    if hp.importance_sampling_level != "token":
        return "importance_sampling_level: sequence (one ratio per completion)"
    if canonical_loss_type(hp.loss_type) == "vespo":
        return "loss_type: vespo (weights of the whole sequence's ratio)"
    if hp.top_entropy_quantile < 1.0:
        return "top_entropy_quantile < 1 (a quantile over the batch)"
    if hp.off_policy_mask_threshold is not None:
        return "off_policy_mask_threshold (a mean over each completion)"
    mode = hp.vllm_importance_sampling_mode
    if sampled and not stored_old and mode is not None and mode.startswith("sequence"):
        return f"vllm_importance_sampling_mode: {mode} (one weight per completion)"
    return None


class MicroBatchLoss(NamedTuple):
    loss: torch.Tensor  # to back-propagate
    out: GRPOLossOutput  # the loss's parts, for logging
    logprobs: torch.Tensor  # [m, L] the policy's (detached on the fused path)
    entropy: torch.Tensor  # [m, L]
    old: torch.Tensor  # [m, L] the old policy's (stored, or the detached current ones)
    sampled: torch.Tensor | None  # [m, L] the engine's, where it gave them


class PolicyLoss:
    """Needs GRPOModule's ``hparams``, ``trainer``, ``policy``, ``sampling``, ``shared_group_size``,
    ``logprob_chunk``, ``loss_settings``, ``sampler_weights`` and ``loss_masks``."""

    def fused_path(self, rollout: Rollout) -> str | None:
        """None when this step's loss fuses with the head (:func:`fusable`), else why not; logged once per fit."""
        sampled = rollout.generation.sample_logprobs is not None
        precision = str(self.trainer.precision) if self._trainer is not None else "32-true"
        reason = fusable(self.hparams, rollout.old_logprobs is not None, sampled, precision)
        if not self.logprob_chunk:
            reason = reason or "logprob_chunk_size: 0 (full logits)"
        if getattr(self, "_fused_logged", "unset") != reason:
            self._fused_logged = reason
            rank_zero_info(f"fused head+loss: {'on' if reason is None else 'off (' + reason + ')'}")
        return reason

    def micro_batch_loss(
        self, rollout: Rollout, mb: MicroBatch, mask: torch.Tensor, totals: dict, num_micro_batches: int, fuse: bool
    ) -> MicroBatchLoss:
        """GRPO's loss of micro-batch ``mb`` (``mask`` its trained tokens), fused with the head when ``fuse``
        (see :func:`fusable`) and the head allows it (:func:`can_fuse`)."""
        gen = rollout.generation
        rows, cols = mb.rows.to(mask.device), slice(0, mb.completion_length)
        stored_old = None if rollout.old_logprobs is None else rollout.old_logprobs[rows, cols]
        ref = None if rollout.ref_logprobs is None else rollout.ref_logprobs[rows, cols]
        sampled = None if gen.sample_logprobs is None else gen.sample_logprobs[rows, cols]
        advantages = rollout.advantages[rows]

        def loss_of(logprobs: torch.Tensor, entropy: torch.Tensor) -> GRPOLossOutput:
            old = stored_old if stored_old is not None else logprobs.detach()
            weights = self.sampler_weights(old, sampled, mask)
            masks = self.loss_masks(logprobs, entropy, advantages, old, sampled, mask)
            return grpo_loss(
                logprobs, old, advantages, mask, ref_logprobs=ref, is_weights=weights, entropy=entropy,
                **masks, **self.loss_settings, **totals, num_micro_batches=num_micro_batches,
            )  # fmt: skip

        anchors: list[torch.Tensor] = []
        score = self._fused_scorer(loss_of, stored_old, anchors) if fuse else None
        logprobs, entropy = micro_batch_logprobs(
            self.policy, gen, mb, self.sampling.temperature, self.shared_group_size, True, self.logprob_chunk, score
        )
        out = loss_of(logprobs, entropy)
        loss = out.loss.detach() + anchors[0] if anchors else out.loss  # fused: the anchor carries the gradient
        old = stored_old if stored_old is not None else logprobs.detach()
        return MicroBatchLoss(loss, out, logprobs, entropy, old, sampled)

    def _fused_scorer(self, loss_of: Any, stored_old: torch.Tensor | None, anchors: list) -> Any:
        """The scorer :func:`micro_batch_logprobs` calls with the policy's head and final hidden states: the
        fused head+loss, its anchor appended to ``anchors``; None (the chunked head) where the head can't fuse."""
        with_entropy_grad = bool(self.loss_settings.get("entropy_coef"))
        chunk_size = self.logprob_chunk

        def score(head: Any, hidden: torch.Tensor, tokens: torch.Tensor, temperature: float) -> Any:
            if not chunk_size or not can_fuse(head):
                return None
            initial = stored_old if stored_old is not None else torch.zeros(tokens.shape, device=tokens.device)

            def token_grads(logprobs: torch.Tensor, entropy: torch.Tensor, rows: slice) -> tuple:
                # the whole micro-batch's loss, once per chunk: element-wise work on [rows, tokens], small next
                # to the chunk's [chunk, hidden] x [hidden, vocab] products (placeholders don't matter: separable)
                with torch.enable_grad():
                    lp = logprobs.view(tokens.shape).detach().requires_grad_()
                    ent = entropy.view(tokens.shape).detach().requires_grad_(with_entropy_grad)
                    inputs = [lp, ent] if with_entropy_grad else [lp]
                    grads = torch.autograd.grad(loss_of(lp, ent).loss, inputs)
                g = grads[0].reshape(-1)[rows]
                return g, (grads[1].reshape(-1)[rows] if with_entropy_grad else None)

            logprobs, entropy, anchor = fused_head_loss(
                head, hidden, tokens, initial, temperature, chunk_size, token_grads
            )
            anchors.append(anchor)
            return logprobs, entropy

        return score
