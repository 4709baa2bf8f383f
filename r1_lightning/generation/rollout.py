"""Rollout generation: batched sampling with a KV cache, and the named container a GRPO step consumes.

The decode loop is ours rather than ``model.generate`` for three reasons a GRPO trainer cares about:
we know exactly which tokens each completion produced (through its EOS or stop string, never the
padding after), we stop the moment every sequence has finished, and under sharded weights every rank
runs the same number of decode steps (the "all done" flag is all-reduced), which FSDP needs because
each forward is a collective. Sampling itself uses transformers' logits processors (temperature, top-k,
top-p) and ``StopStringCriteria``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from transformers import LogitsProcessorList, StopStringCriteria
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from r1_lightning.generation.lean_decode import LeanDecoder, unsupported_reason
from r1_lightning.hf_compat import cache_argument, returned_cache
from r1_lightning.models.logprobs import token_entropy, token_logprobs


@contextlib.contextmanager
def isolated_rng(device: torch.device, seed: int) -> Iterator[None]:
    """Sample from a generator seeded with ``seed`` and restore the global one afterwards."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


@dataclass(frozen=True)
class SamplingConfig:
    """How completions are sampled.

    Args:
        temperature: softmax temperature; 0 means greedy decoding.
        top_p: nucleus sampling mass (1.0 = off).
        top_k: keep the k most likely tokens (0 = off).
        max_new_tokens: completion length limit; longer completions are truncated (and counted).
        stop_strings: decoding of a completion also stops after any of these strings, e.g. ``</answer>``.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 256
    stop_strings: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"sampling.temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"sampling.top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"sampling.max_new_tokens must be >= 1, got {self.max_new_tokens}")


class Generation(NamedTuple):
    input_ids: torch.Tensor  # [N, P + L] prompt (left-padded) then completion (right-padded)
    attention_mask: torch.Tensor  # [N, P + L] 1 on real prompt tokens and on completion tokens
    completion_mask: torch.Tensor  # [N, L] 1 on tokens each completion produced, its EOS included
    prompt_length: int  # P
    truncated: torch.Tensor  # [N] bool: hit max_new_tokens without EOS or a stop string
    texts: list[str]  # N decoded completions, special tokens dropped
    seconds: float  # wall time of the decode
    # [N, L] the sampler's log-probs of the tokens it drew (at the sampling temperature, before top-k/p
    # truncation, so comparable with the trainer's); 0 off the mask; None when the engine gives none
    sample_logprobs: torch.Tensor | None = None


class Rollout(NamedTuple):
    """One GRPO rollout batch: B prompts x G completions, each group contiguous (N = B * G)."""

    generation: Generation
    old_logprobs: torch.Tensor | None  # [N, L] sampling policy's log-probs; None when num_iterations == 1
    ref_logprobs: torch.Tensor | None  # [N, L] frozen reference's log-probs; None when beta == 0
    rewards: torch.Tensor  # [N] weighted sum of the reward functions
    advantages: torch.Tensor  # [N] group-relative advantages
    reward_scores: dict[str, list[float | None]]  # per reward function, N raw scores (None = n/a)
    group_size: int  # G
    micro_batches: list[MicroBatch] | None = None  # how forward/backward passes split it (None = one)
    reward_events: dict[str, int] = {}  # reward timeouts and code runs while scoring it, e.g. code_runs/ok
    seconds: dict[str, float] = {}  # wall time of its parts: "rollout" (sampling, log-probs), "reward"


class MicroBatch(NamedTuple):
    """Rows of a rollout run through one forward pass, and the columns they need.

    Sequences are left-padded prompts then right-padded completions; a micro-batch keeps only the
    columns from its longest real prompt to its longest completion, so short rows grouped together
    waste no compute on padding.
    """

    rows: torch.Tensor  # [m] row indices into the rollout
    prompt_start: int  # first kept column (the prompt's left padding before it is dropped)
    completion_length: int  # completion columns kept

    def take(self, generation: Generation) -> tuple[torch.Tensor, torch.Tensor, int]:
        """``(input_ids, attention_mask, prompt_length)`` of these rows, padding trimmed."""
        end = generation.prompt_length + self.completion_length
        cols = slice(self.prompt_start, end)
        rows = self.rows.to(generation.input_ids.device)
        return (
            generation.input_ids[rows, cols],
            generation.attention_mask[rows, cols],
            generation.prompt_length - self.prompt_start,
        )


def plan_micro_batches(
    generation: Generation, max_rows: int | None = None, max_tokens: int | None = None, min_count: int = 1
) -> list[MicroBatch]:
    """Split a rollout into micro-batches of at most ``max_rows`` rows and ``max_tokens`` padded tokens.

    Rows are sorted by length (longest first) and packed greedily, so each micro-batch holds rows of
    similar length; a single row longer than ``max_tokens`` gets a micro-batch of its own. ``min_count``
    splits the largest micro-batches further until there are that many: under FSDP/DDP every rank must
    run the same number of forward/backward passes. With neither limit, one micro-batch of all rows.
    """
    n, prompt_length = generation.input_ids.shape[0], generation.prompt_length
    prompt_lengths = generation.attention_mask[:, :prompt_length].sum(1).tolist()
    completion_lengths = generation.completion_mask.sum(1).tolist()
    if max_rows is None and max_tokens is None:
        order = list(range(n))
    else:
        order = sorted(range(n), key=lambda i: -(prompt_lengths[i] + completion_lengths[i]))
    groups: list[list[int]] = []
    current: list[int] = []
    longest_prompt = longest_completion = 0
    for i in order:
        p, c = max(longest_prompt, prompt_lengths[i]), max(longest_completion, completion_lengths[i])
        too_many = max_rows is not None and len(current) + 1 > max_rows
        too_big = max_tokens is not None and (len(current) + 1) * (p + c) > max_tokens
        if current and (too_many or too_big):
            groups.append(current)
            current, p, c = [], prompt_lengths[i], completion_lengths[i]
        current.append(i)
        longest_prompt, longest_completion = p, c
    groups.append(current)
    while len(groups) < min(min_count, n):
        largest = max(range(len(groups)), key=lambda g: len(groups[g]))
        rows = groups.pop(largest)
        groups[largest:largest] = [rows[: len(rows) // 2], rows[len(rows) // 2 :]]
    plans = []
    for rows in groups:
        p = max(prompt_lengths[i] for i in rows)
        c = max(max(completion_lengths[i] for i in rows), 1)
        plans.append(MicroBatch(torch.tensor(rows, dtype=torch.long), prompt_length - p, c))
    return plans


def padding_fraction(generation: Generation, plans: list[MicroBatch]) -> float:
    """Share of the tokens that the forward passes of ``plans`` spend on padding."""
    real = float(generation.attention_mask.sum())
    computed = sum(len(mb.rows) * (generation.prompt_length - mb.prompt_start + mb.completion_length) for mb in plans)
    return 1.0 - real / max(computed, 1.0)


def repeat_batch(batch: dict[str, list], times: int) -> tuple[list, dict[str, list]]:
    """``(prompts, other columns)``, each prompt and column value repeated ``times`` times in a row.

    >>> repeat_batch({"prompt": ["a", "b"], "answer": [1, 2]}, 2)
    (['a', 'a', 'b', 'b'], {'answer': [1, 1, 2, 2]})
    """
    repeated = {key: [v for v in values for _ in range(times)] for key, values in batch.items()}
    return repeated.pop("prompt"), repeated


def sample_records(
    generator: HFGenerator,
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


def prompt_groups(prompts: list[str], group_size: int) -> tuple[list[str], int]:
    """``(distinct prompts, G)`` when ``prompts`` come in runs of ``group_size`` identical copies (GRPO
    groups, each then prefilled once); ``(prompts, 1)`` otherwise.

    >>> prompt_groups(["a", "a", "b", "b"], 2), prompt_groups(["a", "b", "b", "b"], 2)
    ((['a', 'b'], 2), (['a', 'b', 'b', 'b'], 1))
    """
    if (
        group_size > 1
        and len(prompts) % group_size == 0
        and all(prompts[i] == prompts[i - i % group_size] for i in range(len(prompts)))
    ):
        return prompts[::group_size], group_size
    return prompts, 1


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


ROLLOUT_ENGINES = ("auto", "lean", "hf")


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
class HFGenerator:
    """Batched sampling with transformers models and a KV cache (the default rollout engine).

    ``engine`` picks how each decode step runs after the prompt prefill (a transformers forward):
    ``lean`` through :class:`r1_lightning.generation.lean_decode.LeanDecoder` (static cache, no per-step mask or
    rotary rebuild; Llama-family models, whole or FSDP2-gathered weights), ``hf`` through the model's forward with a
    ``DynamicCache``, ``auto`` lean where it applies and hf otherwise. Both compute the same logits.
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
        if reason is not None and self.engine == "lean":
            raise ValueError(f"rollout_engine 'lean' cannot decode this model: {reason}; use 'auto' or 'hf'")
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
    def generate(self, model: Any, prompts: list[str], sampling: SamplingConfig, group_size: int = 1) -> Generation:
        """Sample one completion per prompt. Model is put in eval mode.

        ``group_size`` > 1 says prompts come in runs of that many identical copies (a GRPO group): each
        distinct prompt is then prefilled once and its key/value cache shared by the group's rows.
        """
        tokenizer, started = self.tokenizer, time.perf_counter()
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        processors, stopper = self._processors(sampling), self._stopper(tuple(sampling.stop_strings))
        eos = torch.tensor(eos_token_ids(model, tokenizer), device=device)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else int(eos[0])

        # 1. prefill: one forward per distinct prompt (left-padded), keeping only the last logits
        distinct, group_size = prompt_groups(prompts, group_size)
        encoded = tokenizer(distinct, return_tensors="pt", padding=True, add_special_tokens=False)
        prompt_ids, attention = encoded["input_ids"].to(device), encoded["attention_mask"].to(device)
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
        if self._lean_reason(model, prompt_ids.shape[1] + sampling.max_new_tokens) is None:
            decoder: Any = LeanDecoder(model, cache, attention, positions, sampling.max_new_tokens, repeats=group_size)
        else:
            if group_size > 1:
                cache.batch_repeat_interleave(group_size)
            decoder = HFDecodeStep(model, cache, attention, positions)

        # 3. decode: sample, append, mark rows that end (EOS or a stop string), step the live rows
        batch, prompt_length = prompt_ids.shape
        sequences = prompt_ids
        finished = torch.zeros(batch, dtype=torch.bool, device=device)
        stopped = torch.zeros(batch, dtype=torch.bool, device=device)
        lengths = torch.zeros(batch, dtype=torch.long, device=device)
        sampled_logprobs = []  # per step [N]: the sampler's view, to measure training-inference mismatch
        temperature = sampling.temperature if sampling.temperature > 0 else 1.0
        for _ in range(sampling.max_new_tokens):
            scores = processors(sequences, logits)
            token = sample_categorical(scores) if sampling.temperature > 0 else scores.argmax(dim=-1)
            token = torch.where(finished, torch.full_like(token, pad), token)
            # log p(token) = logit/T - logsumexp(logits/T): no [N, vocab] log-softmax on the decode path
            scaled = logits / temperature
            step_logprobs = scaled.gather(1, token[:, None]).squeeze(1) - torch.logsumexp(scaled, dim=-1)
            sampled_logprobs.append(torch.where(finished, torch.zeros_like(step_logprobs), step_logprobs))
            lengths += (~finished).long()
            sequences = torch.cat([sequences, token[:, None]], dim=1)
            ends = torch.isin(token, eos)
            if stopper is not None:
                ends |= stopper(sequences, scores)
            stopped |= ends & ~finished
            finished |= ends
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
        return Generation(
            sequences,
            torch.cat([attention, completion_mask], dim=1),
            completion_mask,
            prompt_length,
            ~stopped,
            texts,
            time.perf_counter() - started,
            sample_logprobs,
        )


def completion_logprobs(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    prompt_length: int,
    temperature: float = 1.0,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs ``[N, L]`` (and entropies) of the completion tokens under ``model``, one forward pass.

    Only the last ``L + 1`` positions' logits are materialised (``logits_to_keep``), which matters for
    150k-token vocabularies. Temperature-scaled like the sampling distribution, so that the ratio to the
    sampling policy is exactly 1 before the first update.
    """
    completion_length = input_ids.shape[1] - prompt_length
    positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=positions,
        logits_to_keep=completion_length + 1,
        use_cache=False,
    ).logits[:, :-1, :]
    scale = temperature if temperature > 0 else 1.0
    logprobs = token_logprobs(logits, input_ids[:, prompt_length:], scale)
    entropy = token_entropy(logits, scale) if with_entropy else None
    return logprobs, entropy


def shared_prefix_logprobs(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    prompt_length: int,
    groups: torch.Tensor,
    temperature: float = 1.0,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Same result as :func:`completion_logprobs`, running each distinct prompt once.

    ``groups[i]`` names the prompt of row ``i``; rows with the same id have identical prompts (a GRPO
    group). Each distinct prompt is run once with a key/value cache, the cache is gathered out to its
    rows, and only the completion tokens are run per row. The cache keeps its autograd history, so the
    gradient through the prompt's activations is the sum over the group's rows, exactly as in the
    unshared forward. Forward tokens drop from ``N * (P + L)`` to ``N / G * P + N * L``.
    """
    distinct, index = torch.unique(groups, return_inverse=True)
    # any row of a group can stand for its prompt: they are identical, padding included
    first = torch.zeros(len(distinct), dtype=torch.long, device=groups.device)
    first.scatter_(0, index, torch.arange(len(groups), device=groups.device))
    first = first.to(input_ids.device)
    prompt_ids, prompt_mask = input_ids[first, :prompt_length], attention_mask[first, :prompt_length]
    positions = (prompt_mask.cumsum(-1) - 1).clamp(min=0)
    out = model(
        input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=positions, use_cache=True, logits_to_keep=1
    )
    cache = returned_cache(out)
    index = index.to(input_ids.device)
    cache.batch_select_indices(index)
    all_positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    completion_logits = (
        model(
            input_ids=input_ids[:, prompt_length:-1],
            attention_mask=attention_mask[:, :-1],
            position_ids=all_positions[:, prompt_length:-1],
            use_cache=True,
            **cache_argument(model, cache),
        ).logits
        if input_ids.shape[1] - prompt_length > 1
        else None
    )
    logits = out.logits[:, -1:, :][index]
    if completion_logits is not None:
        logits = torch.cat([logits, completion_logits], dim=1)
    scale = temperature if temperature > 0 else 1.0
    logprobs = token_logprobs(logits, input_ids[:, prompt_length:], scale)
    entropy = token_entropy(logits, scale) if with_entropy else None
    return logprobs, entropy


def micro_batch_logprobs(
    model: Any,
    generation: Generation,
    mb: MicroBatch,
    temperature: float,
    group_size: int | None = None,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs ``[m, mb.completion_length]`` (and entropies) of one micro-batch's rows, padding trimmed.

    With ``group_size``, rows of the same group share one run of their prompt (:func:`shared_prefix_logprobs`).
    """
    input_ids, attention_mask, prompt_length = mb.take(generation)
    if group_size:
        groups = mb.rows // group_size
        return shared_prefix_logprobs(
            model, input_ids, attention_mask, prompt_length, groups, temperature, with_entropy
        )
    return completion_logprobs(model, input_ids, attention_mask, prompt_length, temperature, with_entropy)


@torch.no_grad()
def batched_logprobs(
    model: Any,
    generation: Generation,
    temperature: float,
    plans: list[MicroBatch] | None = None,
    group_size: int | None = None,
) -> torch.Tensor:
    """No-grad log-probs ``[N, L]`` of a whole rollout, one forward per micro-batch (0 past each end).

    With ``group_size``, each group's prompt is run once (:func:`shared_prefix_logprobs`).
    """
    plans = plans or plan_micro_batches(generation)
    out = torch.zeros(generation.completion_mask.shape, dtype=torch.float32, device=generation.input_ids.device)
    for mb in plans:
        logprobs = micro_batch_logprobs(model, generation, mb, temperature, group_size)[0]
        out[mb.rows.to(out.device), : mb.completion_length] = logprobs
    return out
