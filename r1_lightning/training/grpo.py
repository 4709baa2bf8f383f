"""GRPOModule: R1-Zero's reinforcement learning (GRPO, DeepSeekMath eq. 3 / DeepSeek-R1 eq. 1-3).

One training step = one rollout batch: the rollout callback (``r1_lightning.callbacks.RolloutCallback``)
samples ``num_generations`` completions for each prompt, scores them with the reward functions and
attaches a :class:`~r1_lightning.generation.rollout.Rollout` to the batch; this module then runs ``num_iterations``
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
- Under DDP/FSDP the ``token`` loss divides by the completion-token count of *all* ranks (all-reduced),
  so the averaged gradient is the global token mean; ``sequence`` and ``dr_grpo`` are global means
  already when ranks hold equal batches (they do: each rank draws the same number of prompts).
- With LoRA (``lora``) the reference is the base model with the adapters disabled, not a second copy.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.strategies import SingleDeviceStrategy
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

from r1_lightning.callbacks import CompletionLogCallback, RewardLoggingCallback, RolloutCallback
from r1_lightning.evaluation.grpo_validation import GRPOEvaluation, validation_due
from r1_lightning.generation.mismatch import MismatchMeter
from r1_lightning.generation.rollout import Generation, Rollout, SamplingConfig
from r1_lightning.generation.sampler import TorchGenerator
from r1_lightning.models.chunked_logprobs import resolve_chunk_size
from r1_lightning.models.grads_in_place import grads_in_place
from r1_lightning.models.loading import (
    LoraSettings,
    Quantization,
    apply_lora,
    as_lora,
    load_policy,
    optimizer_and_scheduler,
)
from r1_lightning.models.strategies import gathered, is_sharded, shard_model
from r1_lightning.models.tiled_mlp import resolve_mlp_tiling, tile_mlps
from r1_lightning.rewards import resolve_reward
from r1_lightning.rewards.registry import build_rewards
from r1_lightning.training.async_rollouts import AsyncRollouts
from r1_lightning.training.export import PolicyExport
from r1_lightning.training.grpo_settings import (
    DEFAULT_REWARDS,
    as_sampling,
    build_rollout_engine,
    build_toolbox,
    check_grpo_settings,
    check_lengths,
    loss_settings,
    validation_sampling,
)
from r1_lightning.training.loss_masks import LossMasks
from r1_lightning.training.losses import (
    ImportanceSamplingLevel,
    LossParameters,
    LossType,
    RewardScaling,
)
from r1_lightning.training.memory_plan import MemoryPlanning, release_freed_heap
from r1_lightning.training.policy_loss import PolicyLoss
from r1_lightning.training.reference import FrozenReference
from r1_lightning.training.rollout_making import RolloutMaking

log = logging.getLogger(__name__)


class GRPOModule(
    FrozenReference,
    GRPOEvaluation,
    MemoryPlanning,
    PolicyExport,
    LossMasks,
    PolicyLoss,
    RolloutMaking,
    AsyncRollouts,
    L.LightningModule,
):
    """Policy + frozen reference trained with GRPO and rule-based rewards.

    Args:
        model: hub id, local HF folder, or ``tiny:arithmetic`` / ``tiny:random`` (offline builders).
        dtype: parameter dtype of policy and reference (``float32``, ``bfloat16``, ``float16``).
        attn_implementation: transformers attention backend (``sdpa``, ``flash_attention_2``, ...).
        gradient_checkpointing: recompute activations in backward to save memory.
        lora: train LoRA adapters (peft) instead of all weights; the reference is then the base model
            with adapters disabled (no second copy). E.g. ``{r: 16, alpha: 32}``.
        quantization: load the policy's base weights in ``4bit`` (NF4) or ``8bit`` (bitsandbytes);
            needs ``lora`` (QLoRA), since quantized weights are not trained.
        reference_quantization: load the frozen reference in ``4bit`` or ``8bit`` (saves memory when
            training all weights; not with ``lora``, whose reference is the base itself).
        optimizer: ``adamw`` (torch), or bitsandbytes' ``adamw_8bit``, ``paged_adamw_8bit``,
            ``paged_adamw``.
        rewards: reward functions and their weights: built-in names (``accuracy_reward``,
            ``format_reward``, ``tag_count_reward``, ``countdown_reward``, ``code_reward`` (sandboxed),
            ``language_consistency_reward``) or dotted import paths; or ``name: {weight, function,
            timeout, <arguments>}`` to configure one, e.g. a reward model
            (``{function: reward_model, model: path, scope: summary, weight: 0.5}``).
        num_generations: completions per prompt (the group size G).
        rollout_engine: how decode steps run: ``auto`` (the lean static-cache step for Llama-family
            models whose weights are whole or FSDP2-gathered, else the transformers forward), ``lean`` (insist; error if
            it cannot apply), ``cuda_graph`` (the lean step replayed as CUDA graphs: one launch per token; CUDA
            only) or ``hf`` (always the transformers forward). Same tokens either way.
            ``vllm``: the optional colocated vLLM engine (GPU, ``pip install -e '.[vllm]'``; weights
            synced before every rollout; :mod:`r1_lightning.generation.vllm_engine`).
        vllm: settings of the vLLM engine, e.g. ``{gpu_memory_utilization: 0.3, max_model_len: 2048,
            enable_sleep_mode: false}`` (see :class:`r1_lightning.generation.vllm_engine.VLLMGenerator`).
        sampling: rollout sampling parameters (temperature, top_p, top_k, max_new_tokens, stop_strings).
        beta: KL coefficient; 0 loads no reference model at all.
        epsilon_low: lower clip range of the ratio (1 - epsilon_low).
        epsilon_high: upper clip range (1 + epsilon_high); larger than epsilon_low = clip-higher.
        loss_type: TRL 1.16's names: ``grpo`` (the paper: per-completion token mean), ``dapo`` (token mean over
            the rollout), ``dr_grpo``, ``bnpo``, ``cispo``, ``sapo``, ``luspo``, ``vespo``
            (:func:`r1_lightning.training.losses.grpo_loss`); ``sequence`` / ``token`` are aliases of grpo / dapo.
        loss_params: the loss types' parameters under TRL's names: ``delta`` (two-sided clipping),
            ``sapo_temperature_pos`` / ``_neg``, ``vespo_k_pos`` / ``vespo_lambda_pos`` / ``_neg``.
        off_policy_mask_threshold: DeepSeek-V3.2's off-policy sequence mask (TRL's name): drop a completion with
            a negative advantage whose mean ``log pi_sampler - log pi_theta`` passes this; null = off.
        entropy_coef: entropy bonus (TRL's name): subtract this times the mean token entropy (of the tokens
            carrying the policy gradient) from the loss; needs ``logprob_chunk_size`` != 0.
        top_entropy_quantile: only the top ``rho`` share of completion tokens by entropy carry the policy
            gradient ("Beyond the 80/20 rule"; TRL's name); 1.0 = every token.
        scale_rewards: divide advantages by the std of each group (``group``, or true), of the whole
            batch (``batch``), or not at all (``none``, or false: Dr. GRPO); TRL's ``scale_rewards``.
        importance_sampling_level: ``token`` (GRPO) or ``sequence`` (GSPO: one length-normalised ratio
            per completion); TRL's ``importance_sampling_level``.
        kl_bias_correction: multiply the k3 KL by the importance ratio (TRL's ``use_bias_correction_kl``,
            its default; DeepSeek-V3.2). Off by default here: the R1 paper's plain k3.
        tis_cap: truncated importance sampling against the sampler (TRL's
            ``vllm_importance_sampling_correction`` / veRL's TIS): weight each token's policy-gradient term
            by ``min(pi_old / pi_sampler, tis_cap)``; null = off. The gap itself is always logged
            (``train/mismatch/abs_logprob_diff``, ``.../kl``, ``.../frac_over_threshold``).
        mismatch_threshold: a token's |log-prob gap| above this counts in ``frac_over_threshold``.
        vllm_importance_sampling_mode: TRL's sampler correction by name, ``token_truncate``, ``token_mask``,
            ``sequence_truncate`` or ``sequence_mask``, with ``vllm_importance_sampling_clip_min`` / ``_max``
            (TRL's defaults: none and 3.0); any engine that returns log-probs; null = off (or ``tis_cap``).
        mask_truncated_completions: completions that hit max_new_tokens contribute no loss (DAPO).
        num_iterations: optimizer steps per rollout batch (mu in the paper).
        micro_batch_size: completions per forward/backward; gradients are accumulated so the result
            equals the full-batch loss. None = the whole rollout at once.
        share_prompt_prefix: run each group's prompt once (prefill, reference, training forward) and
            share its key/value cache (and gradient) across the G completions: same loss, far fewer
            tokens through the model when prompts are long. Off under gradient checkpointing.
        micro_batch_tokens: cap on padded tokens (rows x columns) per forward/backward; rows are
            grouped by length so little compute goes to padding. Combines with ``micro_batch_size``.
        logprob_chunk_size: tokens per chunk when the output head turns hidden states into log-probs
            (policy, old policy, reference, entropy): no ``[rows, tokens, vocab]`` logits are built, and
            backward recomputes each chunk's (or the fused head+loss needs no recompute). null (default) =
            about 128 MiB of float32 logits per chunk (220 tokens at a 151,936-token vocabulary); 0 = full
            logits (same values to float rounding).
        mlp_tile_tokens: run each decoder layer's MLP over tiles of this many tokens in training forwards,
            each recomputed in backward (:mod:`r1_lightning.models.tiled_mlp`); 0 = off; null (default) = auto:
            1,024-token tiles in forwards whose MLP intermediates would pass 256 MiB per layer.
        fused_head_loss: compute the output head's gradient in the policy's forward, with the log-probs, where
            the loss is token-separable (:mod:`r1_lightning.training.policy_loss`; any strategy): the head's
            logits are not recomputed in backward. Same loss and gradients; the run's log says which path ran.
        ref_model_sync_steps: copy the policy into the reference every N optimizer steps (None = never;
            R1 used 400). TRL's name; the only reset there is (:mod:`r1_lightning.training.reference`).
        lr: peak learning rate of AdamW.
        weight_decay: AdamW weight decay.
        betas: AdamW betas.
        max_grad_norm: clip the gradient norm to this (None = no clipping).
        multi_objective_aggregation: ``sum_then_normalize`` (weighted sum of the reward functions, then group
            advantages) or ``normalize_then_sum`` (GDPO: each function normalised in its group, then summed,
            then normalised over the batch); TRL's name and values.
        max_num_gen_batches: dynamic sampling (DAPO; veRL's name): drop groups whose rewards are all equal
            and draw more prompts until the step has B groups with signal, at most this many generation
            batches; 0 = off (:mod:`r1_lightning.training.dynamic_sampling`).
        max_staleness: asynchronous rollouts (TRL's name): sample the batch ``max_staleness // num_iterations``
            steps ahead and score it in a worker thread while this step trains, from weights at most this many
            optimizer steps old; the loss's old log-probs are the sampling weights'; 0 = synchronous
            (:mod:`r1_lightning.training.async_rollouts`).
        tools: tool calling inside the rollout (TRL's ``tools=``): dotted paths to plain functions with type
            hints and a docstring; the policy calls them as ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``
            (the Hermes / Qwen2.5 format; chat templates render their schemas) and reads the inserted
            ``<tool_response>`` (:mod:`r1_lightning.generation.tools`).
        environment_factory: a dotted path to a class whose public methods are stateful tools (TRL's name): one
            instance per completion, ``reset(**record)`` first; reward functions receive them as ``environments``.
        max_tool_calling_iterations: tool calls per completion (TRL's name); null = as many as the tokens allow.
        tool_timeout: seconds per tool call; a call past it is killed and answered with an error.
        tool_output_chars: a tool's response is cut to this many characters.
        warmup_steps: linear warmup steps.
        lr_scheduler: a transformers scheduler name: ``constant_with_warmup``, ``cosine``, ``linear``.
        val_num_samples: samples per validation prompt (k of pass@1-over-k and maj@k).
        val_sampling: validation sampling; default: the paper's T=0.6, top_p=0.95 with ``sampling``'s
            max_new_tokens and stop_strings.
        val_reward: the reward whose score 1.0 means "correct" in validation.
        validate_at_start: evaluate before the first step, so a run logs its starting val/pass@1.
        validate_at_end: evaluate after the last step unless a scheduled validation just did, so a run
            logs its final val/pass@1 and prints the change.
        log_completions: append every step's prompts, completions, per-function rewards and advantages to
            ``<log dir>/completions.jsonl`` (TRL's name; rank 0, resume-safe: ``callbacks/completion_log.py``).
        export_dir: write the final policy as an HF ``save_pretrained`` folder here at the end of fit
            (default: ``<log dir>/hf_model``).
    """

    def __init__(
        self,
        model: str = "tiny:arithmetic",
        dtype: str = "float32",
        attn_implementation: str | None = None,
        gradient_checkpointing: bool = False,
        lora: LoraSettings | None = None,
        quantization: Quantization | None = None,
        reference_quantization: Quantization | None = None,
        optimizer: str = "adamw",
        rewards: dict[str, float | dict[str, Any]] | None = None,
        num_generations: int = 8,
        rollout_engine: str = "auto",
        vllm: dict[str, Any] | None = None,
        sampling: SamplingConfig = SamplingConfig(),
        beta: float = 0.04,
        epsilon_low: float = 0.2,
        epsilon_high: float = 0.2,
        loss_type: LossType = "sequence",
        loss_params: LossParameters | None = None,
        off_policy_mask_threshold: float | None = None,
        top_entropy_quantile: float = 1.0,
        entropy_coef: float = 0.0,
        scale_rewards: bool | RewardScaling = True,
        importance_sampling_level: ImportanceSamplingLevel = "token",
        kl_bias_correction: bool = False,
        tis_cap: float | None = None,
        mismatch_threshold: float = 0.1,
        vllm_importance_sampling_mode: str | None = None,
        vllm_importance_sampling_clip_min: float | None = None,
        vllm_importance_sampling_clip_max: float | None = 3.0,
        mask_truncated_completions: bool = False,
        num_iterations: int = 1,
        micro_batch_size: int | None = None,
        micro_batch_tokens: int | None = None,
        share_prompt_prefix: bool = True,
        logprob_chunk_size: int | None = None,
        mlp_tile_tokens: int | None = None,
        fused_head_loss: bool = True,
        ref_model_sync_steps: int | None = None,
        lr: float = 1e-6,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.99),
        max_grad_norm: float | None = 1.0,
        multi_objective_aggregation: str = "sum_then_normalize",
        max_num_gen_batches: int = 0,
        max_staleness: int = 0,
        tools: list[str] | None = None,
        environment_factory: str | None = None,
        max_tool_calling_iterations: int | None = None,
        tool_timeout: float = 5.0,
        tool_output_chars: int = 512,
        warmup_steps: int = 0,
        lr_scheduler: str = "constant_with_warmup",
        val_num_samples: int = 4,
        val_sampling: SamplingConfig | None = None,
        val_reward: str = "accuracy_reward",
        validate_at_start: bool = True,
        validate_at_end: bool = True,
        log_completions: bool = False,
        export_dir: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.lora = as_lora(lora)
        check_grpo_settings(dict(self.hparams), self.lora)
        self.automatic_optimization = False
        self.sampling = as_sampling(sampling)
        self.val_sampling = validation_sampling(self.sampling, val_sampling)
        self.rewards = build_rewards(rewards if rewards is not None else DEFAULT_REWARDS)
        self.val_reward_fn = resolve_reward(val_reward)
        self._load_models()
        self.loss_settings = loss_settings(self.hparams)
        self.init_val_metrics()
        # Running totals of reward timeouts and sandboxed code runs of this module's rollouts (logged as
        # train/reward_timeouts/<fn>, train/code_runs/<outcome>); a later pipeline stage starts at 0.
        self.reward_events: Counter[str] = Counter()

    def _load_models(self) -> None:
        """Policy (LoRA-wrapped when asked), reference, rollout engine and tools, from the hyperparameters."""
        hp = self.hparams
        self.policy, self.tokenizer = load_policy(
            hp.model, hp.dtype, hp.attn_implementation, hp.gradient_checkpointing, quantization=hp.quantization
        )
        self.build_reference(hp.model, hp.dtype, hp.attn_implementation)  # before LoRA wraps the policy
        if self.lora is not None:
            quantized = hp.quantization is not None
            self.policy = apply_lora(self.policy, self.lora, quantized, hp.gradient_checkpointing)
        self.mlp_tiling = resolve_mlp_tiling(hp.mlp_tile_tokens, self.policy)
        tile_mlps(self.policy, *self.mlp_tiling)
        check_lengths(self.policy, self.sampling, self.val_sampling)
        self.logprob_chunk = resolve_chunk_size(hp.logprob_chunk_size, self.policy)
        self.generator = build_rollout_engine(hp.rollout_engine, hp.vllm or {}, hp.quantization, self.tokenizer)
        self.toolbox = build_toolbox(hp, self.generator)

    # ----------------------------------------------------------------------------- optimization
    @override
    def configure_optimizers(self) -> Any:
        return optimizer_and_scheduler(self, [p for p in self.policy.parameters() if p.requires_grad])

    @override
    def configure_callbacks(self) -> list[L.Callback]:
        present = {type(c) for c in (self.trainer.callbacks if self._trainer else [])}
        logged = (CompletionLogCallback,) if self.hparams.log_completions else ()
        wanted = (RolloutCallback, RewardLoggingCallback, *logged)
        return [cb() for cb in wanted if cb not in present]

    @override
    def configure_model(self) -> None:
        """Under :class:`r1_lightning.models.strategies.FSDP2Strategy`, shard policy and reference (FSDP2).

        Runs before ``configure_optimizers``, so the optimizer is built on the sharded parameters.
        """
        if getattr(self, "_device_mesh", None) is None or is_sharded(self.policy):
            return
        hp = self.hparams
        if self.lora is not None or hp.quantization is not None or hp.reference_quantization is not None:
            raise ValueError(
                "FSDP2: `lora`, `quantization` and `reference_quantization` are not supported with sharded weights; "
                "use DDP with LoRA/QLoRA instead (configs/strategy/ddp.yaml + configs/memory/lora.yaml)"
            )
        mesh = self._device_mesh["data_parallel"]
        for model in (self.policy, self.reference):
            if model is not None:
                shard_model(model, mesh)

    @override
    def on_fit_start(self) -> None:
        strategy = type(self.trainer.strategy).__name__
        if strategy == "FSDPStrategy":
            raise ValueError(
                "GRPO does not run under Lightning's FSDPStrategy (FSDP1: backward inside its root forward breaks "
                "gathering for export and evaluation). Use `r1_lightning.models.strategies.FSDP2Strategy` "
                "(configs/strategy/fsdp.yaml)"
            )
        self.generator.sync_ranks = self._is_sharded() or "DeepSpeed" in strategy

    def _is_sharded(self) -> bool:
        return is_sharded(self.policy)

    @contextlib.contextmanager
    def generation_context(self, model: Any = None) -> Iterator[None]:
        """Where sampling (and no-grad scoring) runs outside the strategy's forward.

        Mixed precision (``bf16-mixed``) autocasts sampling as it does the training forward. Under FSDP2
        the weights of ``model`` (default: the policy) are gathered once for the whole block on every
        rank (:func:`r1_lightning.models.strategies.gathered`) rather than once per decode step.
        """
        with gathered(model if model is not None else self.policy):
            if self._trainer is None:
                yield
                return
            with self.trainer.precision_plugin.forward_context():
                yield

    def generate(
        self, prompts: list[str], sampling: SamplingConfig, group_size: int = 1, environments: list | None = None
    ) -> Generation:
        self.plan_memory(prompts)  # once, before the first generation (training or validation)
        # vLLM samples from its own copy of the weights: no gathering or autocast of the policy for it
        local = isinstance(self.generator, TorchGenerator)
        with self.generation_context() if local else contextlib.nullcontext():
            return self.generator.generate(
                self.policy, prompts, sampling, group_size=group_size, tools=self.toolbox, environments=environments
            )

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
        mask = gen.trained_mask()  # (tool responses are in the sequence but were not sampled: no loss)
        if self.hparams.mask_truncated_completions:
            mask = mask * (~gen.truncated).long()[:, None]
        plans = rollout.micro_batches or self.plan_micro_batches(gen)
        mu = self.hparams.num_iterations
        # Normalisers of the whole rollout (all ranks' tokens for `token`), so micro-batching and data
        # parallelism leave the loss unchanged.
        local_tokens = float(mask.sum())
        num_tokens = local_tokens
        if self.trainer.world_size > 1:
            total = self.trainer.strategy.reduce(torch.tensor(local_tokens, device=mask.device), reduce_op="sum")
            num_tokens = float(total) / self.trainer.world_size
        totals = dict(
            num_sequences=mask.shape[0], num_tokens=num_tokens, max_completion_length=self.sampling.max_new_tokens
        )
        stats = {"loss": 0.0, "policy_loss": 0.0, "kl": 0.0, "clip_ratio": 0.0, "entropy": 0.0}
        mismatch = MismatchMeter(self.hparams.mismatch_threshold)
        started = time.perf_counter()
        drift = 0.0  # sum of |log pi_theta - log pi_old| over the first pass's tokens
        # Gradients sync across DDP ranks once per optimizer step, on the last micro-batch.
        block_sync = getattr(self.trainer.strategy, "block_backward_sync", None)
        # On one process the embedding's and the head's gradients go straight into .grad (models/grads_in_place.py)
        in_place = isinstance(self.trainer.strategy, SingleDeviceStrategy)
        fuse = self.fused_path(rollout) is None
        for iteration in range(mu):
            for index, mb in enumerate(plans):
                part_mask = mask[mb.rows.to(mask.device), : mb.completion_length]
                last = index == len(plans) - 1
                synced = contextlib.nullcontext() if last or block_sync is None else block_sync()
                with synced, grads_in_place(self.policy, enabled=in_place):
                    step = self.micro_batch_loss(rollout, mb, part_mask, totals, len(plans), fuse)
                    self.manual_backward(step.loss)
                out, logprobs, entropy, old = step.out, step.logprobs, step.entropy, step.old
                if step.sampled is not None and iteration == 0:  # the sampler's gap to the weights that sampled
                    mismatch.add(old, step.sampled, part_mask)
                if iteration == 0 and rollout.old_logprobs is not None:  # how far the weights moved since
                    drift += float(((logprobs.detach() - old).abs() * part_mask).sum())
                share = part_mask.sum().item() / max(local_tokens, 1.0) / mu
                stats["loss"] += out.loss.item() / mu
                stats["policy_loss"] += out.policy_loss.item() / mu
                stats["kl"] += out.kl.item() * share
                stats["clip_ratio"] += out.clip_ratio.item() * share
                stats["entropy"] += ((entropy * part_mask).sum() / max(local_tokens, 1.0)).item() / mu
            if self.hparams.max_grad_norm is not None:
                stats["grad_norm"] = self._clip_gradients(self.hparams.max_grad_norm)
            release_freed_heap()  # (CPU: what the backward freed, out of the resident set before AdamW's states)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            self.reset_reference_if_due()
        if rollout.old_logprobs is not None:  # 0 when the rollout was sampled by these very weights
            stats["policy_drift"] = drift / max(local_tokens, 1.0)
        stats["lr"] = scheduler.get_last_lr()[0]
        stats.update(rollout.sampling_stats)
        stats["train_seconds"] = time.perf_counter() - started
        stats.update(mismatch.summary())
        return {**stats, "loss": torch.tensor(stats["loss"])}  # Lightning wants the loss as a tensor

    def _clip_gradients(self, max_norm: float) -> float:
        """Clip the global gradient norm (under FSDP2 torch computes it over every rank's shard)."""
        total = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), max_norm)
        return float(total.full_tensor() if hasattr(total, "full_tensor") else total)

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        self.save_async_rollouts(checkpoint)

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self.load_async_rollouts(checkpoint)

    @override
    def teardown(self, stage: str) -> None:
        self.close_async_rollouts()

    @override
    def on_train_start(self) -> None:
        if self.hparams.validate_at_start and self.global_step == 0:
            self.run_evaluation()
        elif self.global_step > 0 and validation_due(self.trainer, self.hparams.num_iterations):
            # Resumed from a checkpoint written at the end of its step, which is before that step's
            # scheduled validation (Lightning validates after on_train_batch_end), and Lightning does
            # not redo it on restore. Run it now, logged as Lightning logs it (at step - 1, with the
            # epoch), so that the resumed run's metrics equal an uninterrupted run's.
            self.run_evaluation(log_step=self.global_step - 1, epoch=self.current_epoch)

    @override
    def on_train_end(self) -> None:
        if self.hparams.validate_at_end and (not self.eval_history or self.eval_history[-1][0] != self.global_step):
            self.run_evaluation()
        if len(self.eval_history) >= 2:
            (first_step, first), (last_step, last) = self.eval_history[0], self.eval_history[-1]
            rank_zero_info(
                f"val/pass@1: {first['val/pass@1']:.3f} at step {first_step} -> {last['val/pass@1']:.3f} "
                f"at step {last_step} ({100 * (last['val/pass@1'] - first['val/pass@1']):+.1f} points)"
            )
        target = self.hparams.export_dir or (Path(self.trainer.log_dir or ".") / "hf_model")
        self.save_hf(target)  # every rank calls it: under FSDP gathering the weights is a collective
