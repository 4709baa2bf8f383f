"""A trained reward model as a GRPO reward (R1's all-scenario stage).

R1 scores helpfulness on the final **summary** only, "to minimise interference with the underlying
reasoning process", and harmlessness on the **whole response**, reasoning included:

- ``scope: summary`` scores the text after the last ``</think>`` (a response with no ``</think>`` has
  no reasoning part, so all of it is the summary);
- ``scope: whole`` scores the full completion.

Raw reward-model scores are unbounded logits; ``squash: true`` (default) maps them through a sigmoid
into (0, 1) so that weights mix them with the 0/1 rule rewards on a comparable scale.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from r1_lightning.data.templates import render_prompt
from r1_lightning.rewards.reward_model_io import load_reward_model, score_texts
from r1_lightning.text import Completion, completion_text

Scope = Literal["summary", "whole"]


def response_part(text: str, scope: Scope) -> str:
    """The part of a completion a reward model judges.

    >>> response_part("<think>a</think> <answer>4</answer>", "summary")
    ' <answer>4</answer>'
    >>> response_part("<think>a</think> <answer>4</answer>", "whole")
    '<think>a</think> <answer>4</answer>'
    >>> response_part(" <answer>hi</answer>", "summary")
    ' <answer>hi</answer>'
    """
    if scope == "whole":
        return text
    if scope == "summary":
        return text.rsplit("</think>", 1)[-1]
    raise ValueError(f"reward model `scope` must be 'summary' or 'whole', got {scope!r}")


class RewardModelReward:
    """``fn(completions, prompts, raw_prompt=None, **columns) -> list[float]`` backed by a reward model.

    Args:
        model: folder written by ``RewardModelModule`` (its prompt template is read from there).
        scope: ``summary`` (helpfulness: text after ``</think>``) or ``whole`` (harmlessness).
        squash: sigmoid the score into (0, 1).
        batch_size: texts per forward.
        dtype: parameter dtype; the model runs on CUDA when available, else the CPU.

    The model loads on first call (configs are parsed without loading weights).
    """

    def __init__(
        self, model: str, scope: Scope = "summary", squash: bool = True, batch_size: int = 32, dtype: str = "float32"
    ) -> None:
        response_part("", scope)  # validates scope now, not at the first rollout
        self.path, self.scope, self.squash, self.batch_size, self.dtype = model, scope, squash, batch_size, dtype
        self.__name__ = f"reward_model[{scope}]"
        self._loaded: tuple[Any, Any, dict] | None = None

    def _model(self) -> tuple[Any, Any, dict]:
        if self._loaded is None:
            model, tokenizer, settings = load_reward_model(self.path, self.dtype)
            model.requires_grad_(False).eval()
            self._loaded = (model.to("cuda" if torch.cuda.is_available() else "cpu"), tokenizer, settings)
        return self._loaded

    def texts(
        self, completions: list[Completion], prompts: list[str], raw_prompt: list[str] | None = None
    ) -> list[str]:
        """What the reward model reads: the prompt in its own template, then the scoped response."""
        _, tokenizer, settings = self._model()
        # The raw prompt goes into the reward model's own template; without it, the policy's rendering is used.
        rendered = (
            list(prompts)
            if raw_prompt is None
            else [render_prompt(p, settings.get("template", "plain"), tokenizer) for p in raw_prompt]
        )
        return [p + response_part(completion_text(c), self.scope) for p, c in zip(rendered, completions, strict=True)]

    @torch.no_grad()
    def __call__(
        self,
        completions: list[Completion],
        prompts: list[str] | None = None,
        raw_prompt: list[str] | None = None,
        **columns: Any,
    ) -> list[float]:
        if prompts is None:
            prompts = [""] * len(completions)
        model, tokenizer, _ = self._model()
        scores = score_texts(model, tokenizer, self.texts(completions, prompts, raw_prompt), self.batch_size)
        return (torch.sigmoid(scores) if self.squash else scores).tolist()
