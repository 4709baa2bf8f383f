"""Teacher-forced forwards over a sampled batch: the per-token log-probs (and entropies) of its completion
tokens under a model, for the loss (policy), the old policy (mu > 1) and the reference, per micro-batch,
optionally sharing each group's prompt prefix across its G completions.

``chunk_size`` > 0 (GRPO's ``logprob_chunk_size``, on by default) never builds the ``[rows, tokens, vocab]``
logits: the model returns its final hidden states and the output head is applied ``chunk_size`` tokens
at a time, recomputed in backward (:mod:`r1_lightning.models.chunked_logprobs`). 0 scores full logits.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch

from r1_lightning.generation.rollout import Generation, MicroBatch, plan_micro_batches
from r1_lightning.hf_compat import cache_argument, returned_cache
from r1_lightning.models.chunked_logprobs import head_scores, hidden_states_as_logits
from r1_lightning.models.logprobs import token_entropy, token_logprobs

#: ``score(head, hidden, tokens, temperature)``: (log-probs, entropies) of ``tokens``, or None to leave the
#: scoring to the chunked head
Scorer = Callable[[Any, torch.Tensor, torch.Tensor, float], "tuple[torch.Tensor, torch.Tensor | None] | None"]


def _scores(
    outputs: torch.Tensor,
    tokens: torch.Tensor,
    temperature: float,
    with_entropy: bool,
    head: Any = None,
    chunk_size: int = 0,
    score: Scorer | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs of ``tokens`` (and entropies) from the forward's outputs aligned with them (logits, or
    final hidden states to put through ``head`` by chunks), at the sampling temperature (greedy sampling,
    T = 0, scores the unscaled distribution). ``score``, when given and it accepts the head, scores instead
    (the policy's fused head and loss: :mod:`r1_lightning.training.policy_loss`)."""
    scale = temperature if temperature > 0 else 1.0
    if head is not None and score is not None:
        scored = score(head, outputs, tokens, scale)
        if scored is not None:
            return scored
    if head is not None:
        return head_scores(head, outputs, tokens, scale, chunk_size, with_entropy)
    # (no gradient through the full-logits entropy: it would keep a log-softmax copy of every row; an entropy
    # bonus needs the chunked path, which has it for free)
    return token_logprobs(outputs, tokens, scale), (token_entropy(outputs, scale) if with_entropy else None)


def _head_context(model: Any, chunk_size: int) -> Any:
    """``hidden_states_as_logits(model)`` when scoring by chunks, else a context that yields no head."""
    return hidden_states_as_logits(model) if chunk_size else contextlib.nullcontext()


def completion_logprobs(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    prompt_length: int,
    temperature: float = 1.0,
    with_entropy: bool = False,
    chunk_size: int = 0,
    score: Scorer | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs ``[N, L]`` (and entropies) of the completion tokens under ``model``, one forward pass.

    Only the last ``L + 1`` positions are scored (``logits_to_keep``); with ``chunk_size`` their logits are
    never built whole (module docstring). Temperature-scaled like the sampling distribution, so that the
    ratio to the sampling policy is exactly 1 before the first update.
    """
    completion_length = input_ids.shape[1] - prompt_length
    positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    with _head_context(model, chunk_size) as head:
        outputs = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=positions,
            logits_to_keep=completion_length + 1,
            use_cache=False,
        ).logits[:, :-1, :]
    return _scores(outputs, input_ids[:, prompt_length:], temperature, with_entropy, head, chunk_size, score)


def shared_prefix_logprobs(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    prompt_length: int,
    groups: torch.Tensor,
    temperature: float = 1.0,
    with_entropy: bool = False,
    chunk_size: int = 0,
    score: Scorer | None = None,
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
    with _head_context(model, chunk_size) as head:
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
    return _scores(logits, input_ids[:, prompt_length:], temperature, with_entropy, head, chunk_size, score)


def micro_batch_logprobs(
    model: Any,
    generation: Generation,
    mb: MicroBatch,
    temperature: float,
    group_size: int | None = None,
    with_entropy: bool = False,
    chunk_size: int = 0,
    score: Scorer | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs ``[m, mb.completion_length]`` (and entropies) of one micro-batch's rows, padding trimmed.

    With ``group_size``, rows of the same group share one run of their prompt (:func:`shared_prefix_logprobs`).
    """
    input_ids, attention_mask, prompt_length = mb.take(generation)
    if group_size:
        groups = mb.rows // group_size
        return shared_prefix_logprobs(
            model, input_ids, attention_mask, prompt_length, groups, temperature, with_entropy, chunk_size, score
        )
    return completion_logprobs(
        model, input_ids, attention_mask, prompt_length, temperature, with_entropy, chunk_size, score
    )


@torch.no_grad()
def batched_logprobs(
    model: Any,
    generation: Generation,
    temperature: float,
    plans: list[MicroBatch] | None = None,
    group_size: int | None = None,
    chunk_size: int = 0,
) -> torch.Tensor:
    """No-grad log-probs ``[N, L]`` of a whole rollout, one forward per micro-batch (0 past each end).

    With ``group_size``, each group's prompt is run once (:func:`shared_prefix_logprobs`).
    """
    plans = plans or plan_micro_batches(generation)
    out = torch.zeros(generation.completion_mask.shape, dtype=torch.float32, device=generation.input_ids.device)
    for mb in plans:
        logprobs = micro_batch_logprobs(model, generation, mb, temperature, group_size, chunk_size=chunk_size)[0]
        out[mb.rows.to(out.device), : mb.completion_length] = logprobs
    return out
