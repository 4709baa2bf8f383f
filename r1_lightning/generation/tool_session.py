"""The tool-calling half of the decode loop (``TorchGenerator.generate`` with ``tools``): watches each row for a
closed ``</tool_call>``, runs the calls of a step together (:class:`r1_lightning.generation.tools.ToolBox`), and
feeds each response back one token per decode step as *forced* tokens, which the row emits instead of
sampling. Rows in different turns keep decoding together in one batch, through the same KV cache, and the
ids trained are exactly the ids sampled and inserted (token in, token out: no re-tokenisation of the
transcript). Inserted tokens are marked (``Generation.tool_mask``) so the loss, the KL, the entropy and the
length metrics leave them out.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import torch
from transformers import StopStringCriteria

from r1_lightning.generation.tools import CALL_CLOSE, ToolBox, ToolCall


class ToolSession:
    """Per-rollout state of the tool loop: each row's queue of forced tokens and its calls."""

    def __init__(self, toolbox: ToolBox, tokenizer: Any, rows: int, device: torch.device, environments: Any) -> None:
        self.toolbox, self.tokenizer, self.device, self.environments = toolbox, tokenizer, device, environments
        self.closer = StopStringCriteria(tokenizer, [CALL_CLOSE])
        self.forced: list[deque[int]] = [deque() for _ in range(rows)]
        self.calls: list[list[ToolCall]] = [[] for _ in range(rows)]
        self.inserted_steps: list[torch.Tensor] = []

    def override(self, token: torch.Tensor, finished: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The step's tokens with each forcing row's next response token; and which rows were forced."""
        inserted = torch.zeros_like(finished)
        pending = [i for i, queue in enumerate(self.forced) if queue and not bool(finished[i])]
        if pending:
            token = token.clone()
            for i in pending:
                token[i] = self.forced[i].popleft()
                inserted[i] = True
        self.inserted_steps.append(inserted)
        return token, inserted

    def after_step(self, sequences: torch.Tensor, scores: torch.Tensor, live: torch.Tensor, prompt_length: int) -> None:
        """Find rows whose sampled text just closed a tool call; run those calls; queue their responses."""
        closed = self.closer(sequences, scores) & live
        rows = closed.nonzero().flatten().tolist()
        if not rows:
            return
        calls = [
            self.toolbox.read_call(
                self.tokenizer.decode(sequences[i, prompt_length:], skip_special_tokens=True), len(self.calls[i])
            )
            for i in rows
        ]
        envs = None if self.environments is None else [self.environments[i] for i in rows]
        self.toolbox.run(calls, envs)
        for i, call in zip(rows, calls, strict=True):
            self.calls[i].append(call)
            self.forced[i].extend(self.toolbox.response_ids(call, self.tokenizer))

    def tool_mask(self, lengths: torch.Tensor) -> torch.Tensor:
        """[N, L] 1 on the inserted tokens (within each row's length)."""
        if not self.inserted_steps:
            return torch.zeros(len(self.forced), 0, dtype=torch.long, device=self.device)
        mask = torch.stack(self.inserted_steps, dim=1).long()
        return mask * (torch.arange(mask.shape[1], device=self.device)[None, :] < lengths[:, None]).long()

    def call_records(self) -> list[list[dict[str, Any]]]:
        return [[call.as_dict() for call in row] for row in self.calls]
