"""GRPO's settings checked before anything loads: each error names the option and the fix.

``GRPOModule.__init__`` takes its options as plain arguments (the signature is the config, and
jsonargparse turns it into ``--help``); the checks that span several of them live here so that the
module's constructor reads as what it builds.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from r1_lightning.generation.mismatch import IMPORTANCE_SAMPLING_MODES
from r1_lightning.generation.rollout import SamplingConfig
from r1_lightning.generation.sampler import ROLLOUT_ENGINES, TorchGenerator
from r1_lightning.hf_compat import causal_lm
from r1_lightning.models.loading import OPTIMIZERS
from r1_lightning.training.async_rollouts import check_async_settings
from r1_lightning.training.losses import IMPORTANCE_SAMPLING_LEVELS, LossParameters, canonical_loss_type

#: the rewards of R1-Zero's recipe when ``model.rewards`` is unset
DEFAULT_REWARDS = {"accuracy_reward": 1.0, "format_reward": 0.5}


def as_sampling(value: SamplingConfig | dict) -> SamplingConfig:
    """Sampling settings arrive as the dataclass, or as a plain dict from saved hyperparameters."""
    if isinstance(value, SamplingConfig):
        return value
    values = dict(value)
    values["stop_strings"] = tuple(values.get("stop_strings") or ())
    return SamplingConfig(**values)


def validation_sampling(sampling: SamplingConfig, val_sampling: SamplingConfig | dict | None) -> SamplingConfig:
    """``val_sampling`` when given, else the paper's evaluation settings (T = 0.6, top-p 0.95) with the
    training sampling's length limit and stop strings."""
    if val_sampling is not None:
        return as_sampling(val_sampling)
    return dataclasses.replace(sampling, temperature=0.6, top_p=0.95, top_k=0)


def check_grpo_settings(hp: dict[str, Any], lora: Any) -> None:
    """Raise ``ValueError`` naming the option for any setting, or combination, GRPO cannot run with.

    ``hp`` holds the module's constructor arguments; ``lora`` the parsed LoRA settings (or None).
    """
    if hp["num_generations"] < 2:
        raise ValueError(f"`num_generations` must be >= 2 (group-relative advantages), got {hp['num_generations']}")
    canonical_loss_type(hp["loss_type"])
    if hp["entropy_coef"] and hp["logprob_chunk_size"] == 0:
        raise ValueError(
            "`entropy_coef` needs the chunked log-probs (its entropy gradient): unset `logprob_chunk_size: 0`"
        )
    if hp["multi_objective_aggregation"] not in ("sum_then_normalize", "normalize_then_sum"):
        raise ValueError(
            "`multi_objective_aggregation` must be sum_then_normalize or normalize_then_sum, got "
            f"{hp['multi_objective_aggregation']!r}"
        )
    mode = hp["vllm_importance_sampling_mode"]
    if mode is not None and mode not in IMPORTANCE_SAMPLING_MODES:
        raise ValueError(
            f"`vllm_importance_sampling_mode` must be one of {IMPORTANCE_SAMPLING_MODES} or null, got {mode!r}"
        )
    if mode is not None and hp["tis_cap"] is not None:
        raise ValueError("`tis_cap` and `vllm_importance_sampling_mode` both set the sampler correction; keep one")
    if hp["max_num_gen_batches"] < 0:
        raise ValueError(
            f"`max_num_gen_batches` must be >= 0 (0 = no dynamic sampling), got {hp['max_num_gen_batches']}"
        )
    if not 0.0 < hp["top_entropy_quantile"] <= 1.0:
        raise ValueError(f"`top_entropy_quantile` must be in (0, 1] (1: every token), got {hp['top_entropy_quantile']}")
    if hp["off_policy_mask_threshold"] is not None and hp["off_policy_mask_threshold"] < 0:
        raise ValueError(f"`off_policy_mask_threshold` must be >= 0 or null, got {hp['off_policy_mask_threshold']}")
    engine, off_policy = hp["rollout_engine"], hp["num_iterations"] > 1 or hp["max_staleness"]
    if hp["off_policy_mask_threshold"] is not None and not off_policy and engine != "vllm":
        raise ValueError(
            "`off_policy_mask_threshold` has nothing to mask with `num_iterations: 1`, `max_staleness: 0` and "
            f"the `{engine}` engine (the policy that sampled is the one trained); set num_iterations "
            "> 1 or max_staleness > 0, or unset off_policy_mask_threshold"
        )
    check_async_settings(hp)
    if hp["importance_sampling_level"] not in IMPORTANCE_SAMPLING_LEVELS:
        raise ValueError(
            f"`importance_sampling_level` must be one of {IMPORTANCE_SAMPLING_LEVELS}, "
            f"got {hp['importance_sampling_level']!r}"
        )
    if hp["scale_rewards"] not in (True, False, "group", "batch", "none"):
        raise ValueError(f"`scale_rewards` must be group, batch or none (or true/false), got {hp['scale_rewards']!r}")
    if hp["num_iterations"] < 1:
        raise ValueError(f"`num_iterations` must be >= 1, got {hp['num_iterations']}")
    if hp["beta"] < 0 or hp["epsilon_low"] < 0 or hp["epsilon_high"] < 0:
        raise ValueError("`beta`, `epsilon_low` and `epsilon_high` must be >= 0")
    if hp["optimizer"] not in OPTIMIZERS:
        raise ValueError(f"`optimizer` must be one of {OPTIMIZERS}, got {hp['optimizer']!r}")
    if hp["ref_model_sync_steps"] is not None and hp["ref_model_sync_steps"] < 1:
        raise ValueError(f"`ref_model_sync_steps` must be >= 1 or null, got {hp['ref_model_sync_steps']}")
    if hp["quantization"] is not None and lora is None:
        raise ValueError("`quantization` needs `lora` (QLoRA): quantized base weights are frozen")
    if lora is not None and (hp["reference_quantization"] is not None or hp["ref_model_sync_steps"]):
        raise ValueError(
            "with `lora` the reference is the base model with adapters disabled: "
            "`reference_quantization` and `ref_model_sync_steps` do not apply (unset them)"
        )
    if hp["reference_quantization"] is not None and hp["ref_model_sync_steps"]:
        raise ValueError("`ref_model_sync_steps` cannot copy weights into a quantized reference; unset one")


def check_lengths(policy: Any, sampling: SamplingConfig, val_sampling: SamplingConfig) -> None:
    """Refuse, before any compute, a completion length the model's positions cannot reach (every prompt
    needs at least one position too); a prompt that makes a rollout too long is refused at that rollout."""
    limit = getattr(causal_lm(policy).config, "max_position_embeddings", None)
    for key, settings in (("sampling", sampling), ("val_sampling", val_sampling)):
        if limit is not None and settings.max_new_tokens >= limit:
            raise ValueError(
                f"`model.{key}.max_new_tokens` {settings.max_new_tokens} leaves no room for a prompt in the "
                f"model's max_position_embeddings ({limit}); lower it below {limit} minus the longest prompt"
            )


def build_rollout_engine(engine: str, vllm: dict[str, Any], quantization: Any, tokenizer: Any) -> Any:
    """The rollout engine ``model.rollout_engine`` names: the torch sampler (``auto``/``lean``/``hf``) or
    the optional vLLM engine, with its settings checked."""
    if engine not in (*ROLLOUT_ENGINES, "vllm"):
        raise ValueError(f"`model.rollout_engine` must be one of {(*ROLLOUT_ENGINES, 'vllm')}, got {engine!r}")
    if engine != "vllm":
        if vllm:
            raise ValueError("`model.vllm` settings apply only with `model.rollout_engine: vllm`")
        if engine == "cuda_graph" and not torch.cuda.is_available():
            raise ValueError("`model.rollout_engine: cuda_graph` needs a CUDA device (none is visible); use 'lean'")
        return TorchGenerator(tokenizer, engine=engine)
    # (function-local: the vLLM engine module is only for runs that ask for it)
    from r1_lightning.generation import vllm_engine

    vllm_engine.require_vllm()
    if quantization is not None:
        raise ValueError("`model.rollout_engine: vllm` does not take a bitsandbytes-quantized policy (QLoRA)")
    return vllm_engine.VLLMGenerator(tokenizer, **vllm)


def loss_settings(hp: Any) -> dict[str, Any]:
    """The ``grpo_loss`` keywords the module's options fix for the whole run (``loss_params`` arrives as the
    dataclass, or as a mapping from saved hyperparameters)."""
    params = hp["loss_params"]
    if params is not None and not isinstance(params, LossParameters):
        params = LossParameters(**dict(params))
    return {
        "beta": hp["beta"],
        "epsilon_low": hp["epsilon_low"],
        "epsilon_high": hp["epsilon_high"],
        "loss_type": canonical_loss_type(hp["loss_type"]),
        "importance_sampling_level": hp["importance_sampling_level"],
        "kl_bias_correction": hp["kl_bias_correction"],
        "params": params,
        "entropy_coef": hp["entropy_coef"],
    }


def build_toolbox(hp: Any, generator: Any) -> Any:
    """The run's tools (``tools`` / ``environment_factory``), or None (every engine runs them)."""
    if not hp["tools"] and not hp["environment_factory"]:
        return None
    from r1_lightning.generation.tools import ToolBox

    limit = hp["max_tool_calling_iterations"]
    return ToolBox(
        list(hp["tools"] or []), hp["environment_factory"], 1 << 30 if limit is None else limit,
        hp["tool_timeout"], hp["tool_output_chars"],
    )  # fmt: skip
