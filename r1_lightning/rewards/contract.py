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

from r1_lightning.tools.format import CALL_PATTERN


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
    generation: Any,
    columns: dict[str, list],
    state: RewardState,
    rendered_prompts: list[str] | None = None,
    tokenizer: Any = None,
) -> tuple[list[Any], dict[str, Any]]:
    """:func:`reward_inputs` for a sampled ``Generation`` (its texts and completion token ids). With tool calls,
    chat prompts and a ``tokenizer``, each completion is TRL's conversation (:func:`tool_conversation`)."""
    completion = generation.input_ids[:, generation.prompt_length :]
    ids = completion_token_ids(completion, generation.completion_mask)
    completions, kwargs = reward_inputs(generation.texts, columns, ids, state, rendered_prompts)
    if getattr(generation, "tool_calls", None) is not None:  # each completion's calls: name, arguments, status, result
        kwargs["tool_calls"] = generation.tool_calls
        if tokenizer is not None and generation.tool_mask is not None:
            inserted = completion_token_ids(generation.tool_mask, generation.completion_mask)
            rows = zip(completions, ids, inserted, generation.tool_calls, strict=True)
            completions = [
                tool_conversation(row_ids, row_inserted, calls, tokenizer) if isinstance(c, list) and calls else c
                for c, row_ids, row_inserted, calls in rows
            ]
    return completions, kwargs


def tool_conversation(ids: list[int], inserted: list[int], calls: list[dict], tokenizer: Any) -> list[dict[str, Any]]:
    """A tool-calling completion as TRL gives it to rewards under chat prompts: assistant messages, each that
    closed a call carrying it as ``tool_calls`` (its text without the call's markup), then a ``tool`` message
    (``name``, ``content``: the result or the error) per call. Split where the inserted tokens (``inserted``,
    1 per position) are; every text decoded from the token ids.

    >>> class Tok:
    ...     def decode(self, ids, skip_special_tokens=True): return "".join(map(chr, ids))
    >>> text = [ord(c) for c in '<tool_call>{"name": "f", "arguments": {}}</tool_call>']
    >>> conv = tool_conversation(text + [52, 50] + [33], [0] * len(text) + [1, 1, 0], [
    ...     {"name": "f", "arguments": {}, "status": "ok", "result": "42"}], Tok())
    >>> [(m["role"], m["content"]) for m in conv], conv[0]["tool_calls"][0]["function"]["name"]
    ([('assistant', ''), ('tool', '42'), ('assistant', '!')], 'f')
    """
    messages: list[dict[str, Any]] = []
    pending = iter(calls)
    start = 0
    for end in range(1, len(ids) + 1):
        if end < len(ids) and inserted[end] == inserted[start]:
            continue
        if inserted[start]:
            call = next(pending, None)
            if call is None:
                break
            function = {"name": call["name"], "arguments": call["arguments"]}
            if messages and messages[-1]["role"] == "assistant":
                messages[-1]["tool_calls"] = [{"type": "function", "function": function}]
            content = call["result"] if call["status"] == "ok" else f"error: {call['result']}"
            messages.append({"role": "tool", "name": call["name"], "content": content})
        else:
            text = tokenizer.decode(ids[start:end], skip_special_tokens=True)
            following_call = end < len(ids)
            content = CALL_PATTERN.sub("", text).rstrip() if following_call else text
            messages.append({"role": "assistant", "content": content})
        start = end
    return messages


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
