"""The frozen reference policy of GRPO's KL term, as a mixin of ``GRPOModule``: building it, its
log-probs, R1's periodic reset, and keeping it in checkpoints only once it differs from the start.

The KL term (DeepSeek-R1 eq. 2) pulls the policy towards ``pi_ref``. ``pi_ref`` is one of:

- a frozen copy of the initial policy (``beta > 0``, the default), optionally quantized
  (``reference_quantization``);
- with LoRA, the base model with the adapters disabled (no second copy);
- none at all when ``beta == 0``.

R1 (Nature version, "Training details") reset the reference to the current policy every 400 steps:
``ref_model_sync_steps`` (TRL's name). This is the one place that resets it. The reset runs after the
optimizer step it is due on, inside the ``num_iterations`` loop, so with mu > 1 no due step is skipped.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

from r1_lightning.generation.forward import batched_logprobs
from r1_lightning.generation.rollout import Generation, MicroBatch
from r1_lightning.models.loading import freeze, load_policy


class FrozenReference:
    """Reference-model methods of ``GRPOModule`` (which owns ``policy``, ``lora``, ``hparams`` and
    ``generation_context``)."""

    hparams: Any
    policy: Any
    lora: Any
    trainer: L.Trainer
    # (no class-level ``reference`` default: nn.Module keeps submodules in ``_modules``, and a class
    # attribute would shadow the one registered there)
    reference: Any
    reference_diverged: bool

    def build_reference(self, model: str, dtype: str, attn_implementation: str | None) -> None:
        """Load the frozen reference (eval, no grad, so no optimizer state); None with ``beta == 0`` or LoRA."""
        hp = self.hparams
        self.reference, self.reference_diverged = None, False
        self.reference_resets: list[int] = []
        if hp.beta == 0 or self.lora is not None:
            return
        if hp.reference_quantization is None:
            self.reference = freeze(copy.deepcopy(self.policy))
        else:
            quantized = load_policy(model, dtype, attn_implementation, quantization=hp.reference_quantization)[0]
            self.reference = freeze(quantized)

    def reference_logprobs(self, generation: Generation, plans: list[MicroBatch]) -> torch.Tensor | None:
        """The frozen reference's log-probs (one no-grad forward per micro-batch); None when beta == 0."""
        if self.hparams.beta == 0:
            return None
        if self.lora is not None:
            model, reference_mode = self.policy, self.policy.disable_adapter()
        elif self.reference is not None:
            model, reference_mode = self.reference, contextlib.nullcontext()
        else:
            return None
        with self.generation_context(model), reference_mode:
            temperature, chunk_size = self.sampling.temperature, self.logprob_chunk
            return batched_logprobs(model, generation, temperature, plans, self.shared_group_size, chunk_size)

    def reset_reference_if_due(self) -> None:
        """After an optimizer step: reset when ``global_step`` is a multiple of ``ref_model_sync_steps``."""
        every = self.hparams.ref_model_sync_steps
        if every and self.reference is not None and self.trainer.global_step % every == 0:
            self.reset_reference()

    def reset_reference(self) -> None:
        """Copy the current policy into the frozen reference; logged as ``train/reference_reset`` = 1."""
        if self.reference is None:
            raise ValueError(
                "no reference model to reset: it exists only with `beta` > 0, without `lora` (whose "
                "reference is the base itself) and without `reference_quantization`"
            )
        self.reference.load_state_dict(self.policy.state_dict())
        self.reference_diverged = True  # from now on checkpoints must carry the reference
        step = self.trainer.global_step if self._trainer is not None else 0
        self.reference_resets.append(step)
        if self._trainer is not None:
            for logger in self.trainer.loggers:
                logger.log_metrics({"train/reference_reset": 1.0}, step=step)
        rank_zero_info(f"reference model reset to the current policy at step {step}")

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The reference only needs saving once it has diverged from the initial weights. (Sharded
        # checkpoints load into the whole module, reference included, so they keep it.)
        if not (self.hparams.ref_model_sync_steps or self.reference_diverged or self._is_sharded()):
            state = checkpoint["state_dict"]
            for key in [k for k in state if k.startswith("reference.")]:
                del state[key]

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.reference is not None and "state_dict" in checkpoint:  # (absent: sharded, loaded by the strategy)
            state = checkpoint["state_dict"]
            if any(k.startswith("reference.") for k in state):
                self.reference_diverged = True  # keep saving it after the resume
            else:
                state.update({f"reference.{k}": v for k, v in self.reference.state_dict().items()})
