"""What a rollout is: the sampling settings, the sampled batch (``Generation``), the scored rollout a GRPO
step consumes (``Rollout``), and how it is cut into micro-batches. The decode loop that fills a
``Generation`` is in :mod:`r1_lightning.generation.sampler`; the teacher-forced log-prob forwards over it
in :mod:`r1_lightning.generation.forward`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

import torch


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
    # [N, L] 1 on completion tokens a tool inserted (its responses: in the sequence, never sampled); None = no tools
    tool_mask: torch.Tensor | None = None
    tool_calls: list[list[dict]] | None = None  # per row, its calls: name, arguments, status, result

    def trained_mask(self) -> torch.Tensor:
        """[N, L] 1 on the tokens the policy sampled: the loss, KL, entropy and length metrics count these."""
        return self.completion_mask if self.tool_mask is None else self.completion_mask * (1 - self.tool_mask)


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
    sampling_stats: dict[str, float] = {}  # dynamic sampling's counts for this step (logged as train/<key>)


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


def select_rows(generation: Generation, rows: list[int]) -> Generation:
    """The given rows of a generation, in that order (its widths unchanged)."""
    index = torch.tensor(rows, dtype=torch.long, device=generation.input_ids.device)
    return Generation(
        generation.input_ids[index],
        generation.attention_mask[index],
        generation.completion_mask[index],
        generation.prompt_length,
        generation.truncated[index],
        [generation.texts[i] for i in rows],
        generation.seconds,
        None if generation.sample_logprobs is None else generation.sample_logprobs[index],
        None if generation.tool_mask is None else generation.tool_mask[index],
        None if generation.tool_calls is None else [generation.tool_calls[i] for i in rows],
    )


def concat_generations(parts: list[Generation], pad_id: int) -> Generation:
    """The rows of several generations as one: prompts left-padded to the longest, completions right-padded
    (padding is ``pad_id`` with attention 0, as the sampler pads); decode seconds add up.

    >>> one = lambda n: torch.ones(1, n, dtype=torch.long)
    >>> a = Generation(torch.tensor([[5, 6, 7]]), one(3), one(1), 2, torch.tensor([False]), ["x"], 1.0)
    >>> b = Generation(torch.tensor([[8, 9, 9]]), one(3), one(2), 1, torch.tensor([True]), ["yz"], 2.0)
    >>> ab = concat_generations([a, b], pad_id=0)
    >>> ab.input_ids.tolist(), ab.attention_mask.tolist(), ab.prompt_length, ab.seconds
    ([[5, 6, 7, 0], [0, 8, 9, 9]], [[1, 1, 1, 0], [0, 1, 1, 1]], 2, 3.0)
    """
    prompt = max(g.prompt_length for g in parts)
    completion = max(g.completion_mask.shape[1] for g in parts)
    pad = torch.nn.functional.pad
    widened = []
    for g in parts:
        left, right = prompt - g.prompt_length, completion - g.completion_mask.shape[1]
        widened.append(
            (
                pad(g.input_ids, (left, right), value=pad_id),
                pad(g.attention_mask, (left, right), value=0),
                pad(g.completion_mask, (0, right), value=0),
                None if g.sample_logprobs is None else pad(g.sample_logprobs, (0, right), value=0.0),
                None if g.tool_mask is None else pad(g.tool_mask, (0, right), value=0),
            )
        )
    logprobs, tool_masks = [w[3] for w in widened], [w[4] for w in widened]
    return Generation(
        torch.cat([w[0] for w in widened]),
        torch.cat([w[1] for w in widened]),
        torch.cat([w[2] for w in widened]),
        prompt,
        torch.cat([g.truncated for g in parts]),
        [text for g in parts for text in g.texts],
        sum(g.seconds for g in parts),
        None if any(lp is None for lp in logprobs) else torch.cat(logprobs),
        None if any(m is None for m in tool_masks) else torch.cat(tool_masks),
        None if any(g.tool_calls is None for g in parts) else [row for g in parts for row in g.tool_calls or []],
    )
