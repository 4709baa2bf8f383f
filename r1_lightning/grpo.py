"""GRPOModule: R1-Zero's reinforcement learning (GRPO, DeepSeekMath eq. 3 / DeepSeek-R1 eq. 1-3).

One training step = one rollout batch: the rollout callback (``r1_lightning.callbacks.RolloutCallback``)
samples ``num_generations`` completions for each prompt, scores them with the reward functions and
attaches a :class:`~r1_lightning.rollout.Rollout` to the batch; this module then runs ``num_iterations``
(the paper's mu) optimizer steps over it, each accumulating gradients over micro-batches.

Where this departs from the papers, on purpose:

- Group std is the population std (the paper's formula); TRL uses the sample std.
- Log-probs are computed at the sampling temperature, so the importance ratio is exactly 1 before the
  first update (as TRL and veRL do); with ``num_iterations == 1`` the old-policy log-probs are the
  detached current ones and no extra forward pass is made.
- ``loss_type`` offers DAPO's token-level and Dr. GRPO's constant normalisers besides the paper's
  per-sequence mean; ``epsilon_high > epsilon_low`` is DAPO's clip-higher.
- The reference is reset to the current policy every ``ref_model_sync_steps`` optimizer steps when
  set (R1 reset it every 400 steps); by default it stays the initial policy.
- Under DDP each rank normalises by its own token count (``token`` loss type); with equal per-rank
  batches the gradient average is the global mean for ``sequence`` and ``dr_grpo``.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torchmetrics import MeanMetric
from typing_extensions import override

from r1_lightning.evaluation import majority_vote_correct
from r1_lightning.losses import LOSS_TYPES, LossType, grpo_loss
from r1_lightning.models import freeze, load_policy
from r1_lightning.rewards import extract_answer, format_reward, resolve_reward
from r1_lightning.rewards.registry import build_rewards
from r1_lightning.rollout import HFGenerator, Rollout, SamplingConfig, completion_logprobs, repeat_batch

log = logging.getLogger(__name__)

DEFAULT_REWARDS = {"accuracy_reward": 1.0, "format_reward": 0.5}


def as_sampling(value: SamplingConfig | dict) -> SamplingConfig:
    """Sampling settings arrive as the dataclass, or as a plain dict from saved hyperparameters."""
    if isinstance(value, SamplingConfig):
        return value
    values = dict(value)
    values["stop_strings"] = tuple(values.get("stop_strings") or ())
    return SamplingConfig(**values)


class GRPOModule(L.LightningModule):
    """Policy + frozen reference trained with GRPO and rule-based rewards.

    Args:
        model: hub id, local HF folder, or ``tiny:arithmetic`` / ``tiny:random`` (offline builders).
        dtype: parameter dtype of policy and reference (``float32``, ``bfloat16``, ``float16``).
        attn_implementation: transformers attention backend (``sdpa``, ``flash_attention_2``, ...).
        gradient_checkpointing: recompute activations in backward to save memory.
        rewards: reward functions and their weights: built-in names (``accuracy_reward``,
            ``format_reward``, ``tag_count_reward``, ``countdown_reward``) or dotted import paths.
        num_generations: completions per prompt (the group size G).
        sampling: rollout sampling parameters (temperature, top_p, top_k, max_new_tokens, stop_strings).
        beta: KL coefficient; 0 loads no reference model at all.
        epsilon_low: lower clip range of the ratio (1 - epsilon_low).
        epsilon_high: upper clip range (1 + epsilon_high); larger than epsilon_low = clip-higher.
        loss_type: ``sequence`` (paper), ``token`` (DAPO) or ``dr_grpo``.
        scale_rewards: divide advantages by the group std (False = Dr. GRPO).
        mask_truncated_completions: completions that hit max_new_tokens contribute no loss (DAPO).
        num_iterations: optimizer steps per rollout batch (mu in the paper).
        micro_batch_size: completions per forward/backward; gradients are accumulated so the result
            equals the full-batch loss. None = the whole rollout at once.
        ref_model_sync_steps: copy the policy into the reference every N optimizer steps (None = never).
        lr: peak learning rate of AdamW.
        weight_decay: AdamW weight decay.
        betas: AdamW betas.
        max_grad_norm: clip the gradient norm to this (None = no clipping).
        warmup_steps: linear warmup steps.
        lr_scheduler: a transformers scheduler name: ``constant_with_warmup``, ``cosine``, ``linear``.
        val_num_samples: samples per validation prompt (k of pass@1-over-k and maj@k).
        val_sampling: validation sampling; default: the paper's T=0.6, top_p=0.95 with ``sampling``'s
            max_new_tokens and stop_strings.
        val_reward: the reward whose score 1.0 means "correct" in validation.
        validate_at_start: evaluate before the first step, so a run logs its starting val/pass@1.
        export_dir: write the final policy as an HF ``save_pretrained`` folder here at the end of fit
            (default: ``<log dir>/hf_model``).
    """

    def __init__(
        self,
        model: str = "tiny:arithmetic",
        dtype: str = "float32",
        attn_implementation: str | None = None,
        gradient_checkpointing: bool = False,
        rewards: dict[str, float] | None = None,
        num_generations: int = 8,
        sampling: SamplingConfig = SamplingConfig(),
        beta: float = 0.04,
        epsilon_low: float = 0.2,
        epsilon_high: float = 0.2,
        loss_type: LossType = "sequence",
        scale_rewards: bool = True,
        mask_truncated_completions: bool = False,
        num_iterations: int = 1,
        micro_batch_size: int | None = None,
        ref_model_sync_steps: int | None = None,
        lr: float = 1e-6,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.99),
        max_grad_norm: float | None = 1.0,
        warmup_steps: int = 0,
        lr_scheduler: str = "constant_with_warmup",
        val_num_samples: int = 4,
        val_sampling: SamplingConfig | None = None,
        val_reward: str = "accuracy_reward",
        validate_at_start: bool = True,
        export_dir: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if num_generations < 2:
            raise ValueError(f"`num_generations` must be >= 2 (group-relative advantages), got {num_generations}")
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"`loss_type` must be one of {LOSS_TYPES}, got {loss_type!r}")
        if num_iterations < 1:
            raise ValueError(f"`num_iterations` must be >= 1, got {num_iterations}")
        if beta < 0 or epsilon_low < 0 or epsilon_high < 0:
            raise ValueError("`beta`, `epsilon_low` and `epsilon_high` must be >= 0")
        self.automatic_optimization = False
        self.sampling = as_sampling(sampling)
        self.val_sampling = (
            as_sampling(val_sampling) if val_sampling is not None
            else dataclasses.replace(self.sampling, temperature=0.6, top_p=0.95, top_k=0)
        )
        self.rewards = build_rewards(rewards if rewards is not None else DEFAULT_REWARDS)
        self.val_reward_fn = resolve_reward(val_reward)
        self.policy, self.tokenizer = load_policy(model, dtype, attn_implementation, gradient_checkpointing)
        # The reference is frozen (eval, no grad, so no optimizer state); beta == 0 loads none at all.
        self.reference = freeze(copy.deepcopy(self.policy)) if beta > 0 else None
        self.generator = HFGenerator(self.tokenizer)
        self.val_pass1, self.val_majk = MeanMetric(), MeanMetric()
        self.val_format, self.val_length = MeanMetric(), MeanMetric()
        self.eval_history: list[tuple[int, dict[str, float]]] = []

    # ----------------------------------------------------------------------------- optimization
    @override
    def configure_optimizers(self) -> Any:
        from transformers import get_scheduler

        params = [p for p in self.policy.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(
            params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay, betas=tuple(self.hparams.betas)
        )
        total = self.trainer.max_steps if self.trainer.max_steps and self.trainer.max_steps > 0 else None
        if total is None and self.hparams.lr_scheduler not in ("constant", "constant_with_warmup"):
            raise ValueError(f"lr_scheduler {self.hparams.lr_scheduler!r} needs `trainer.max_steps` to be set")
        scheduler = get_scheduler(
            self.hparams.lr_scheduler, optimizer, num_warmup_steps=self.hparams.warmup_steps,
            num_training_steps=total or 1,
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    @override
    def configure_callbacks(self) -> list[L.Callback]:
        from r1_lightning.callbacks import RewardLoggingCallback, RolloutCallback

        present = {type(c) for c in (self.trainer.callbacks if self._trainer else [])}
        return [cb() for cb in (RolloutCallback, RewardLoggingCallback) if cb not in present]

    @override
    def on_fit_start(self) -> None:
        strategy = type(self.trainer.strategy).__name__
        self.generator.sync_ranks = "FSDP" in strategy or "DeepSpeed" in strategy

    def completion_logprobs(
        self, model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_length: int,
        with_entropy: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        temperature = self.sampling.temperature
        return completion_logprobs(model, input_ids, attention_mask, prompt_length, temperature, with_entropy)

    @override
    def training_step(self, batch: dict, batch_idx: int) -> dict[str, float]:
        rollout: Rollout | None = batch.get("rollout")
        if rollout is None:
            raise RuntimeError(
                "no rollout attached to the batch: GRPOModule needs r1_lightning.callbacks.RolloutCallback "
                "in `trainer.callbacks` (it is added automatically unless removed)"
            )
        gen = rollout.generation
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        mask = gen.completion_mask
        if self.hparams.mask_truncated_completions:
            mask = mask * (~gen.truncated).long()[:, None]
        n = mask.shape[0]
        step = self.hparams.micro_batch_size or n
        # Normalisers of the whole rollout, so micro-batching leaves the loss unchanged.
        totals = dict(
            num_sequences=n, num_tokens=float(mask.sum()), max_completion_length=self.sampling.max_new_tokens
        )
        stats = {"loss": 0.0, "policy_loss": 0.0, "kl": 0.0, "clip_ratio": 0.0, "entropy": 0.0}
        started = time.perf_counter()
        for _ in range(self.hparams.num_iterations):
            for i in range(0, n, step):
                part = slice(i, i + step)
                logprobs, entropy = self.completion_logprobs(
                    self.policy, gen.input_ids[part], gen.attention_mask[part], gen.prompt_length, with_entropy=True
                )
                old = rollout.old_logprobs[part] if rollout.old_logprobs is not None else logprobs.detach()
                out = grpo_loss(
                    logprobs, old, rollout.advantages[part], mask[part],
                    ref_logprobs=None if rollout.ref_logprobs is None else rollout.ref_logprobs[part],
                    beta=self.hparams.beta, epsilon_low=self.hparams.epsilon_low,
                    epsilon_high=self.hparams.epsilon_high, loss_type=self.hparams.loss_type, **totals,
                )
                self.manual_backward(out.loss)
                share = mask[part].sum().item() / max(totals["num_tokens"], 1.0) / self.hparams.num_iterations
                stats["loss"] += out.loss.item() / self.hparams.num_iterations
                stats["policy_loss"] += out.policy_loss.item() / self.hparams.num_iterations
                stats["kl"] += out.kl.item() * share
                stats["clip_ratio"] += out.clip_ratio.item() * share
                stats["entropy"] += ((entropy * mask[part]).sum() / max(totals["num_tokens"], 1.0)).item() / (
                    self.hparams.num_iterations
                )
            if self.hparams.max_grad_norm is not None:
                grad_norm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.hparams.max_grad_norm)
                stats["grad_norm"] = float(grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            self._maybe_sync_reference()
        stats["lr"] = scheduler.get_last_lr()[0]
        stats["train_seconds"] = time.perf_counter() - started
        return {**stats, "loss": torch.tensor(stats["loss"])}  # Lightning wants the loss as a tensor

    def _maybe_sync_reference(self) -> None:
        every = self.hparams.ref_model_sync_steps
        if every and self.reference is not None and self.trainer.global_step % every == 0:
            self.reference.load_state_dict(self.policy.state_dict())
            rank_zero_info(f"reference model reset to the current policy at step {self.trainer.global_step}")

    # ----------------------------------------------------------------------------- evaluation
    def evaluate_batch(self, batch: dict[str, list]) -> None:
        """Sample ``val_num_samples`` completions per prompt and update pass@1, maj@k, format, length."""
        k = self.hparams.val_num_samples
        prompts, columns = repeat_batch(batch, k)
        generation = self.generator.generate(self.policy, prompts, self.val_sampling)
        scores = self.val_reward_fn(completions=generation.texts, prompts=prompts, **columns)
        correct = [s is not None and s >= 1.0 for s in scores]
        answers = [extract_answer(t) for t in generation.texts]
        for i in range(len(batch["prompt"])):
            group = slice(i * k, (i + 1) * k)
            self.val_pass1.update(sum(correct[group]) / k)
            self.val_majk.update(float(majority_vote_correct(answers[group], correct[group])))
        self.val_format.update(sum(format_reward(generation.texts)) / len(prompts))
        self.val_length.update(generation.completion_mask.sum(1).float().mean())

    def compute_val_metrics(self) -> dict[str, float]:
        k = self.hparams.val_num_samples
        metrics = {
            "val/pass@1": self.val_pass1.compute().item(),
            f"val/maj@{k}": self.val_majk.compute().item(),
            "val/format": self.val_format.compute().item(),
            "val/completion_length": self.val_length.compute().item(),
        }
        for metric in (self.val_pass1, self.val_majk, self.val_format, self.val_length):
            metric.reset()
        self.eval_history.append((self.global_step, metrics))
        return metrics

    @override
    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.evaluate_batch(batch)

    @override
    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            for metric in (self.val_pass1, self.val_majk, self.val_format, self.val_length):
                metric.reset()
            return
        metrics = self.compute_val_metrics()
        self.log_dict(metrics, sync_dist=False)
        rank_zero_info(f"step {self.global_step}: " + ", ".join(f"{k}={v:.3f}" for k, v in metrics.items()))

    def run_evaluation(self) -> dict[str, float]:
        """Evaluate outside Lightning's validation loop (start and end of fit) and log the result."""
        datamodule = self.trainer.datamodule
        if datamodule is None:
            return {}
        for batch in datamodule.val_dataloader():
            self.evaluate_batch(batch)
        metrics = self.compute_val_metrics()
        for logger in self.trainer.loggers:
            logger.log_metrics(metrics, step=self.global_step)
        rank_zero_info(f"step {self.global_step}: " + ", ".join(f"{k}={v:.3f}" for k, v in metrics.items()))
        return metrics

    @override
    def on_train_start(self) -> None:
        if self.hparams.validate_at_start and self.global_step == 0:
            self.run_evaluation()

    @override
    def on_train_end(self) -> None:
        if self.hparams.validate_at_start and (not self.eval_history or self.eval_history[-1][0] != self.global_step):
            self.run_evaluation()
        if len(self.eval_history) >= 2:
            (first_step, first), (last_step, last) = self.eval_history[0], self.eval_history[-1]
            rank_zero_info(
                f"val/pass@1: {first['val/pass@1']:.3f} at step {first_step} -> {last['val/pass@1']:.3f} "
                f"at step {last_step} ({100 * (last['val/pass@1'] - first['val/pass@1']):+.1f} points)"
            )
        if self.trainer.is_global_zero:
            target = self.hparams.export_dir or (Path(self.trainer.log_dir or ".") / "hf_model")
            self.save_hf(target)

    # ----------------------------------------------------------------------------- checkpoints
    def save_hf(self, directory: str | Path) -> Path:
        """Write the policy and tokenizer as a ``save_pretrained`` folder ``AutoModelForCausalLM`` loads."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.policy.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        rank_zero_info(f"policy exported in Hugging Face format to {directory}")
        return directory

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The reference only needs saving once it has diverged from the initial weights.
        if not self.hparams.ref_model_sync_steps:
            state = checkpoint["state_dict"]
            for key in [k for k in state if k.startswith("reference.")]:
                del state[key]

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.reference is not None:
            state = checkpoint["state_dict"]
            if not any(k.startswith("reference.") for k in state):
                state.update({f"reference.{k}": v for k, v in self.reference.state_dict().items()})
