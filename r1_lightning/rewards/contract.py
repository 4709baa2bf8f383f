"""What a reward function receives: TRL's ``GRPOTrainer`` contract, so that TRL's and open-r1's reward
functions run unchanged.

``fn(completions, prompts=..., completion_ids=..., trainer_state=..., **every other dataset column)``:

- ``completions``: plain strings when the dataset's ``prompt`` is text; one-message lists
  ``[{"role": "assistant", "content": ...}]`` when it is chat messages (what TRL passes, and what
  ``completion[0]["content"]`` in their rewards reads).
- ``prompts``: the dataset's prompts as they were (text or messages), not the templated model input.
- ``completion_ids``: each completion's generated token ids (its EOS included), no padding.
- ``trainer_state``: at least ``global_step``, ``max_steps`` and ``epoch``, as on TRL's ``TrainerState``.
- every other column of the record (``answer``, ``solution``, ``tests``, ...), repeated per completion.

This project's own rewards read completions through ``completion_text``, which takes both forms.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class RewardState:
    """The training state a reward function may read (``trainer_state`` in TRL's contract)."""

    global_step: int
    max_steps: int
    epoch: float


def is_conversational(prompt: Any) -> bool:
    """A chat prompt: a list of ``{"role", "content"}`` messages.

    >>> is_conversational([{"role": "user", "content": "hi"}]), is_conversational("hi")
    (True, False)
    """
    return isinstance(prompt, list) and all(isinstance(m, dict) and "content" in m for m in prompt)


def as_completions(texts: list[str], prompts: list[Any]) -> list[Any]:
    """Completions in the format of their prompts (TRL's): text for text, a message list for chat.

    >>> as_completions(["4"], [[{"role": "user", "content": "2+2?"}]])
    [[{'role': 'assistant', 'content': '4'}]]
    >>> as_completions(["4"], ["2+2?"])
    ['4']
    """
    return [
        [{"role": "assistant", "content": text}] if is_conversational(prompt) else text
        for text, prompt in zip(texts, prompts, strict=True)
    ]


def completion_token_ids(completion_ids: torch.Tensor, completion_mask: torch.Tensor) -> list[list[int]]:
    """Each row's generated ids without padding (``completion_mask`` marks them, EOS included)."""
    return [row[mask.bool()].tolist() for row, mask in zip(completion_ids, completion_mask, strict=True)]


def generation_reward_inputs(
    generation: Any, columns: dict[str, list], state: RewardState, rendered_prompts: list[str] | None = None
) -> tuple[list[Any], dict[str, Any]]:
    """:func:`reward_inputs` for a sampled ``Generation`` (its texts and completion token ids)."""
    completion = generation.input_ids[:, generation.prompt_length :]
    ids = completion_token_ids(completion, generation.completion_mask)
    completions, kwargs = reward_inputs(generation.texts, columns, ids, state, rendered_prompts)
    if getattr(generation, "tool_calls", None) is not None:  # each completion's calls: name, arguments, status, result
        kwargs["tool_calls"] = generation.tool_calls
    return completions, kwargs


def reward_inputs(
    texts: list[str],
    columns: dict[str, list],
    completion_ids: list[list[int]],
    state: RewardState,
    rendered_prompts: list[str] | None = None,
) -> tuple[list[Any], dict[str, Any]]:
    """``(completions, keyword arguments)`` for every reward function of one rollout.

    ``columns`` are the records' columns repeated per completion, ``raw_prompt`` (the dataset's prompt)
    among them; without it the rendered prompts stand in.
    """
    raw = columns.get("raw_prompt") or rendered_prompts or [""] * len(texts)
    kwargs = {key: values for key, values in columns.items() if key not in ("prompt", "completion")}
    # raw_prompt stays for this project's reward-model reward (it renders the prompt in its own template)
    kwargs.update(prompts=list(raw), completion_ids=completion_ids, trainer_state=state)
    return as_completions(texts, list(raw)), kwargs
