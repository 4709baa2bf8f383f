"""The decode loop: batched sampling with a KV cache, by the lean step or a transformers forward.

The decode loop is ours rather than ``model.generate`` for three reasons a GRPO trainer cares about:
we know exactly which tokens each completion produced (through its EOS or stop string, never the
padding after), we stop the moment every sequence has finished, and under sharded weights every rank
runs the same number of decode steps (the "all done" flag is all-reduced), which FSDP needs because
each forward is a collective. Sampling itself uses transformers' logits processors (temperature, top-k,
top-p) and ``StopStringCriteria``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import LogitsProcessorList, StopStringCriteria
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from r1_lightning.generation import graph_decode
from r1_lightning.generation.lean_decode import LeanDecoder, unsupported_reason
from r1_lightning.generation.rollout import Generation, SamplingConfig, prompt_groups, repeat_batch
from r1_lightning.generation.tool_session import ToolSession
from r1_lightning.generation.tools import ToolBox
from r1_lightning.hf_compat import cache_argument, causal_lm, returned_cache


def sample_categorical(scores: torch.Tensor) -> torch.Tensor:
    """One token per row from ``softmax(scores)``, by inverting the CDF at a uniform draw.

    Needs one random number per row, where ``torch.multinomial`` draws one exponential per vocabulary
    entry (on CPU that draw alone cost a tenth of a decode step). ``right=True`` skips zero-probability
    tokens (their CDF step is empty), and scaling the draw by the row's total mass keeps it inside the CDF.

    >>> _ = torch.manual_seed(0); sample_categorical(torch.tensor([[0.0, float("-inf"), 0.0]] * 4)).tolist()
    [0, 2, 0, 0]
    """
    cdf = torch.softmax(scores.float(), dim=-1).cumsum(-1)
    draw = torch.rand(cdf.shape[0], 1, device=cdf.device) * cdf[:, -1:]
    return torch.searchsorted(cdf, draw, right=True).clamp(max=cdf.shape[-1] - 1).squeeze(1)


def eos_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """Every token that ends a completion: the tokenizer's EOS and the model's generation-config EOS."""
    ids = {tokenizer.eos_token_id}
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(config_eos if isinstance(config_eos, list) else [config_eos])
    return sorted(i for i in ids if i is not None)


ROLLOUT_ENGINES = ("auto", "lean", "cuda_graph", "hf")


class HFDecodeStep:
    """One decode step through the model's own forward and a ``DynamicCache``: the step interface of
    :class:`r1_lightning.generation.lean_decode.LeanDecoder` (``step(token) -> logits``, ``drop_finished``,
    ``rows``) for the models and settings the lean step does not cover."""

    rows = None  # every row stays in the batch (finished rows decode padding; their logits are unused)

    def __init__(self, model: Any, cache: Any, attention: torch.Tensor, positions: torch.Tensor) -> None:
        self.model, self.cache, self.attention, self.positions = model, cache, attention, positions

    def drop_finished(self, finished: torch.Tensor) -> None:
        return None

    def step(self, token: torch.Tensor) -> torch.Tensor:
        self.attention = torch.cat([self.attention, torch.ones_like(token[:, None])], dim=1)
        self.positions = self.positions[:, -1:] + 1
        out = self.model(
            input_ids=token[:, None],
            attention_mask=self.attention,
            position_ids=self.positions,
            use_cache=True,
            **cache_argument(self.model, self.cache),
        )
        self.cache = returned_cache(out)
        return out.logits[:, -1, :]


@dataclass
class TorchGenerator:
    """Batched sampling with transformers models and a KV cache (the default rollout engine).

    ``engine`` picks how each decode step runs after the prompt prefill (a transformers forward):
    ``lean`` through :class:`r1_lightning.generation.lean_decode.LeanDecoder` (static cache, no per-step mask or
    rotary rebuild; Llama-family models, whole or FSDP2-gathered weights), ``hf`` through the model's forward with a
    ``DynamicCache``, ``auto`` lean where it applies and hf otherwise, ``cuda_graph`` the lean step replayed
    as CUDA graphs (:mod:`r1_lightning.generation.graph_decode`; run eagerly off CUDA). All compute the same
    logits.
    """

    tokenizer: Any
    sync_ranks: bool = False  # all-reduce the "all done" flag: needed when weights are sharded
    engine: str = "auto"
    _stop_criteria: dict = field(default_factory=dict, repr=False)

    def _stopper(self, stop_strings: tuple[str, ...]) -> StopStringCriteria | None:
        if not stop_strings:
            return None
        if stop_strings not in self._stop_criteria:
            self._stop_criteria[stop_strings] = StopStringCriteria(self.tokenizer, list(stop_strings))
        return self._stop_criteria[stop_strings]

    def __post_init__(self) -> None:
        if self.engine not in ROLLOUT_ENGINES:
            raise ValueError(f"rollout engine must be one of {ROLLOUT_ENGINES}, got {self.engine!r}")

    def _lean_reason(self, model: Any, total_length: int) -> str | None:
        """Why this rollout cannot use the lean decoder (None = it will)."""
        if self.engine == "hf":
            return "engine 'hf' asked for"
        reason = unsupported_reason(model, total_length)
        if self.engine == "cuda_graph" and reason is None:
            reason = graph_decode.unsupported_reason(model)
        if reason is not None and self.engine in ("lean", "cuda_graph"):
            raise ValueError(f"rollout_engine {self.engine!r} cannot decode this model: {reason}; use 'auto' or 'hf'")
        return reason

    def _all_done(self, finished: torch.Tensor) -> bool:
        done = finished.all()
        if self.sync_ranks and torch.distributed.is_available() and torch.distributed.is_initialized():
            flag = done.to(torch.int32)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
            done = flag.bool()
        return bool(done)

    def _processors(self, sampling: SamplingConfig) -> LogitsProcessorList:
        processors = LogitsProcessorList()
        if sampling.temperature > 0:
            if sampling.temperature != 1.0:
                processors.append(TemperatureLogitsWarper(sampling.temperature))
            if sampling.top_k > 0:
                processors.append(TopKLogitsWarper(sampling.top_k))
            if sampling.top_p < 1.0:
                processors.append(TopPLogitsWarper(sampling.top_p))
        return processors

    @torch.no_grad()
    def _prefill(
        self, model: Any, prompts: list[str], group_size: int, max_new_tokens: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Any]:
        """Phases 1-2 of :meth:`generate`: ``(last logits, prompt ids, attention, decode step)``, one row per prompt."""
        device = next(model.parameters()).device
        # 1. prefill: one forward per distinct prompt (left-padded), keeping only the last logits
        distinct, group_size = prompt_groups(prompts, group_size)
        encoded = self.tokenizer(distinct, return_tensors="pt", padding=True, add_special_tokens=False)
        prompt_ids, attention = encoded["input_ids"].to(device), encoded["attention_mask"].to(device)
        limit = getattr(getattr(causal_lm(model), "config", None), "max_position_embeddings", None)
        if isinstance(limit, int) and prompt_ids.shape[1] + max_new_tokens > limit:
            raise ValueError(
                f"a prompt of {prompt_ids.shape[1]} tokens plus sampling.max_new_tokens {max_new_tokens} passes the "
                f"model's max_position_embeddings ({limit}): shorten the prompts or lower max_new_tokens"
            )
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        out = model(
            input_ids=prompt_ids, attention_mask=attention, position_ids=positions, use_cache=True, logits_to_keep=1
        )
        cache, logits = returned_cache(out), out.logits[:, -1, :].float()

        # 2. fan out to the group and pick the decode step: the lean one where it applies, else the
        #    model's own forward; both have the same interface and compute the same logits
        if group_size > 1:
            logits, prompt_ids, attention, positions = (
                t.repeat_interleave(group_size, dim=0) for t in (logits, prompt_ids, attention, positions)
            )
        if self._lean_reason(model, prompt_ids.shape[1] + max_new_tokens) is None:
            decoder: Any = LeanDecoder(model, cache, attention, positions, max_new_tokens, repeats=group_size)
            if self.engine == "cuda_graph":
                decoder = graph_decode.GraphedLeanDecoder(decoder)
        else:
            if group_size > 1:
                cache.batch_repeat_interleave(group_size)
            decoder = HFDecodeStep(model, cache, attention, positions)
        return logits, prompt_ids, attention, decoder

    def generate(
        self,
        model: Any,
        prompts: list[str],
        sampling: SamplingConfig,
        group_size: int = 1,
        tools: ToolBox | None = None,
        environments: list[Any] | None = None,
    ) -> Generation:
        """Sample one completion per prompt. Model is put in eval mode.

        ``group_size`` > 1 says prompts come in runs of that many identical copies (a GRPO group): each
        distinct prompt is then prefilled once and its key/value cache shared by the group's rows.
        ``tools``: multi-turn tool calling inside the loop (:mod:`r1_lightning.generation.tool_session`);
        ``environments``: one stateful environment per row (``environment_factory``).
        """
        tokenizer, started = self.tokenizer, time.perf_counter()
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        processors, stopper = self._processors(sampling), self._stopper(tuple(sampling.stop_strings))
        eos = torch.tensor(eos_token_ids(model, tokenizer), device=device)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else int(eos[0])

        logits, prompt_ids, attention, decoder = self._prefill(model, prompts, group_size, sampling.max_new_tokens)

        # 3. decode: sample, append, mark rows that end (EOS or a stop string), step the live rows
        batch, prompt_length = prompt_ids.shape
        sequences = prompt_ids
        finished = torch.zeros(batch, dtype=torch.bool, device=device)
        stopped = torch.zeros(batch, dtype=torch.bool, device=device)
        lengths = torch.zeros(batch, dtype=torch.long, device=device)
        sampled_logprobs = []  # per step [N]: the sampler's view, to measure training-inference mismatch
        temperature = sampling.temperature if sampling.temperature > 0 else 1.0
        session = None if tools is None else ToolSession(tools, tokenizer, batch, device, environments)
        inserted = torch.zeros_like(finished)
        for _ in range(sampling.max_new_tokens):
            scores = processors(sequences, logits)
            token = sample_categorical(scores) if sampling.temperature > 0 else scores.argmax(dim=-1)
            if session is not None:  # rows feeding a tool's response emit its next token instead
                token, inserted = session.override(token, finished)
            token = torch.where(finished, torch.full_like(token, pad), token)
            # log p(token) = logit/T - logsumexp(logits/T): no [N, vocab] log-softmax on the decode path
            scaled = logits / temperature
            step_logprobs = scaled.gather(1, token[:, None]).squeeze(1) - torch.logsumexp(scaled, dim=-1)
            sampled_logprobs.append(torch.where(finished | inserted, torch.zeros_like(step_logprobs), step_logprobs))
            lengths += (~finished).long()
            sequences = torch.cat([sequences, token[:, None]], dim=1)
            ends = torch.isin(token, eos)
            if stopper is not None:
                ends |= stopper(sequences, scores)
            ends &= ~inserted  # a tool's response never ends the answer, whatever it contains
            stopped |= ends & ~finished
            finished |= ends
            if session is not None:
                session.after_step(sequences, scores, ~finished & ~inserted, prompt_length)
            if self._all_done(finished):
                break
            decoder.drop_finished(finished)  # finished rows may leave the batch (their logits go stale, unused)
            if decoder.rows is None:
                logits = decoder.step(token).float()
            else:
                logits[decoder.rows] = decoder.step(token[decoder.rows]).float()

        # 4. stop: completions, their masks (EOS included) and texts
        completion = sequences[:, prompt_length:]
        completion_mask = (torch.arange(completion.shape[1], device=device)[None, :] < lengths[:, None]).long()
        texts = tokenizer.batch_decode(completion.masked_fill(completion_mask == 0, pad), skip_special_tokens=True)
        model.train(was_training)
        sample_logprobs = torch.stack(sampled_logprobs, dim=1) if sampled_logprobs else None
        tool_mask, calls = (None, None) if session is None else (session.tool_mask(lengths), session.call_records())
        full_attention, seconds = torch.cat([attention, completion_mask], dim=1), time.perf_counter() - started
        return Generation(
            sequences, full_attention, completion_mask, prompt_length, ~stopped, texts, seconds, sample_logprobs,
            tool_mask, calls,
        )  # fmt: skip


def sample_records(
    generator: TorchGenerator,
    policy: Any,
    records: list[dict],
    render: Any,
    k: int,
    sampling: SamplingConfig,
    batch_size: int,
) -> Iterator[tuple[list[dict], list[str], dict[str, list], Generation]]:
    """Sample ``k`` completions for each record, ``batch_size`` records at a time, outside training.

    Yields ``(records of the chunk, rendered prompts repeated k times, the other columns repeated
    likewise (``raw_prompt`` included), generation)``. ``render`` maps a raw prompt to model input.
    """
    for start in range(0, len(records), batch_size):
        chunk = records[start : start + batch_size]
        batch = {key: [record.get(key) for record in chunk] for key in chunk[0]}
        batch["raw_prompt"] = batch["prompt"]
        batch["prompt"] = [render(prompt) for prompt in batch["prompt"]]
        prompts, columns = repeat_batch(batch, k)
        yield chunk, prompts, columns, generator.generate(policy, prompts, sampling, group_size=k)
