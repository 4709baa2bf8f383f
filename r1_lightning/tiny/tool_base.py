"""``tiny:tools``: a tiny base that knows a calculator and calls it now and then, for tool-calling RL.

Pretrained offline on multi-digit addition "web text" (:class:`CarryAdditionTask` problems, 1-3 digits):

- ``direct`` (most of the text): ``<think>47+85=132</think> <answer>132</answer>``;
- ``tool`` (a quarter of the text): the same start, then the calculator instead of a guess, in the Hermes
  tag format the decode loop serves (:mod:`r1_lightning.generation.tools`):
  ``<think>47+85=<tool_call>{"name": "add", "arguments": {"a": 47, "b": 85}}</tool_call>``
  ``<tool_response>132</tool_response></think> <answer>132</answer>``, so the choice to call is one
  decision, right after ``a+b=``;
- ``untagged``: ``The answer is 132.`` (no format).

At a tenth of the text or less (3% and 10% were tried) a base this small never learned to copy the operands
into the call, so calling could not pay and RL raised the call rate without raising accuracy (README). The
tool's response tokens carry no pretraining loss (as in RL, they are not the model's to predict), so the
base learns to call and to copy the result, not to guess it. A model this small adds three-digit numbers in
one go almost never right, so whether RL with accuracy and format rewards only (never a reward for calling
the tool) raises the call rate and 3-digit accuracy is the experiment: ``configs/r1_zero_tools_tiny.yaml``.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from r1_lightning.tiny.reasoning import AdditionPretraining
from r1_lightning.tools.format import CALL_CLOSE, CALL_OPEN, RESPONSE_CLOSE, RESPONSE_OPEN

STYLES = ("direct", "tool", "untagged")
#: whole pieces of the call as single tokens, so a call is a few tokens long, as in real vocabularies
CALL_PIECES = ('{"name": "add", "arguments": {"a": ', ', "b": ', "}}")


@dataclass(frozen=True)
class ToolBaseRecipe(AdditionPretraining):
    """Corpus mix (probabilities of :data:`STYLES`) on top of the problem sizes and the pretraining run.

    Whether the base copies the operands into its calls depends on the pretraining seed: base seed 0 does
    (3-digit pass@1 +0.45 after RL), seeds 1 and 2 do not (+0.04, +0.00), and 1600 steps did not change that
    (``benchmarks/showcase_seeds.py tools``; README, "Tool calls inside the rollout")."""

    direct: float = 0.65
    tool: float = 0.25
    untagged: float = 0.10
    corpus: int = 2  # the text's version (part of the cache key): 2 = the call comes right after "a+b="


def tool_call_text(a: int, b: int) -> str:
    """The calculator call for ``a + b`` (exactly what :func:`r1_lightning.generation.tools.parse_call` reads).

    >>> tool_call_text(47, 85)
    '<tool_call>{"name": "add", "arguments": {"a": 47, "b": 85}}</tool_call>'
    """
    return CALL_OPEN + json.dumps({"name": "add", "arguments": {"a": a, "b": b}}) + CALL_CLOSE


def completion(a: int, b: int, recipe: ToolBaseRecipe, rng: random.Random) -> tuple[str, str, str]:
    """One pretraining completion for ``a + b`` as ``(before the tool response, the response, after it)``."""
    draw = rng.random()
    if draw < recipe.direct:
        return f" <think>{a}+{b}={a + b}</think> <answer>{a + b}</answer>", "", ""
    if draw < recipe.direct + recipe.tool:  # the same start as `direct`: after "a+b=", guess or call
        response = f"{RESPONSE_OPEN}{a + b}{RESPONSE_CLOSE}"
        return f" <think>{a}+{b}={tool_call_text(a, b)}", response, f"</think> <answer>{a + b}</answer>"
    return f" The answer is {a + b}.", "", ""


def build_tool_tokenizer():
    """The tiny tokenizer, with the tool tags and the call's fixed pieces as tokens."""
    from r1_lightning.tiny.base import build_tokenizer

    tokenizer = build_tokenizer()
    tokenizer.add_tokens([CALL_OPEN, CALL_CLOSE, RESPONSE_OPEN, RESPONSE_CLOSE, *CALL_PIECES, " so"])
    return tokenizer


@torch.enable_grad()
def pretrain_tools(recipe: ToolBaseRecipe, out_dir: Path) -> None:
    """Causal-LM pretraining on the corpus above (loss on completions, tool responses excluded); HF format."""
    from r1_lightning.data.tasks import CarryAdditionTask
    from r1_lightning.tiny.base import build_model, pretrain_loop

    tokenizer = build_tool_tokenizer()
    model = build_model(tokenizer, recipe.hidden_size, recipe.layers, recipe.heads, seed=recipe.seed)
    task = CarryAdditionTask(recipe.min_digits, recipe.max_digits)

    def example(rng: random.Random) -> tuple[str, list[tuple[str, bool]]]:
        problem = task.sample(rng)
        a, b = (int(x) for x in problem["prompt"].split(" + "))
        before, response, after = completion(a, b, recipe, rng)
        return problem["prompt"], [(before, True), (response, False), (after, True)]

    description = "building the tiny tool-calling base (one-off): pretraining"
    pretrain_loop(model, tokenizer, example, recipe, out_dir, description)


def tiny_tools_path(recipe: ToolBaseRecipe | None = None) -> Path:
    """Path of the cached tool-calling base, pretrained first if it is not cached yet (about 4 minutes)."""
    from r1_lightning.tiny.base import cached_base

    return cached_base(
        "tiny-tools", recipe or ToolBaseRecipe(), pretrain_tools, "tiny tool-calling base (one-off, about 4 minutes)"
    )
