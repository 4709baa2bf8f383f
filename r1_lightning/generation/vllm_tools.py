"""Tool calls with the vLLM engine: the same contract as the lean/hf decode loop (``generation/tool_session.py``),
by turns instead of inside one decode. Every row that stopped on ``</tool_call>`` gets its call run
(:class:`r1_lightning.generation.tools.ToolBox`), its response appended as token ids (marked as inserted, log-prob
0), and one continuation request whose prompt is the row's prompt and completion so far, as token ids (token in,
token out: nothing is re-tokenised), with what is left of ``max_new_tokens``. Rows in the same turn go to the
engine together, as one batch."""

from __future__ import annotations

from typing import Any

from r1_lightning.generation.rollout import SamplingConfig
from r1_lightning.generation.tools import CALL_CLOSE, ToolBox


def continue_with_tools(
    engine: Any,
    rows: list[Any],
    toolbox: ToolBox,
    environments: list[Any] | None,
    sampling: SamplingConfig,
    stops: list[str],
    eos: list[int],
) -> None:
    """Run the calls of ``rows`` (``SampledRow`` s, updated in place) and continue them, turn by turn."""
    tokenizer, budget = engine.tokenizer, sampling.max_new_tokens
    while True:
        waiting = [i for i, row in enumerate(rows) if row.stop_reason == CALL_CLOSE and not row.truncated]
        if not waiting:
            return
        calls = [
            toolbox.read_call(tokenizer.decode(rows[i].ids, skip_special_tokens=True), len(rows[i].calls))
            for i in waiting
        ]
        toolbox.run(calls, None if environments is None else [environments[i] for i in waiting])
        continuing = []
        for i, call in zip(waiting, calls, strict=True):
            row = rows[i]
            row.calls.append(call.as_dict())
            response = toolbox.response_ids(call, tokenizer)[: budget - len(row.ids)]
            row.ids += response
            row.inserted += [1] * len(response)
            if row.logprobs is not None:
                row.logprobs += [0.0] * len(response)
            row.stop_reason = None
            if len(row.ids) >= budget:
                row.truncated = True
            else:
                continuing.append(i)
        if not continuing:
            return
        requests = [(rows[i].prompt + rows[i].ids, 1, budget - len(rows[i].ids)) for i in continuing]
        for i, (turn,) in zip(continuing, engine.sample(requests, sampling, stops, eos), strict=True):
            row = rows[i]
            row.ids += turn.ids
            row.inserted += [0] * len(turn.ids)
            row.logprobs = None if row.logprobs is None or turn.logprobs is None else row.logprobs + turn.logprobs
            row.truncated, row.stop_reason = turn.truncated, turn.stop_reason
