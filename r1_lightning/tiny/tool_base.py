"""``tiny:tools``: a tiny base that knows a calculator and calls it now and then, for tool-calling RL.

Pretrained offline on "web text" of 1-3-digit additions (:class:`CarryAdditionTask` problems):

- ``direct`` (most of the text): ``<think>47+85=132</think> <answer>132</answer>``;
- ``tool`` (5% of the additions): the same start, then the calculator instead of a guess, in the Hermes
  tag format the decode loop serves (:mod:`r1_lightning.generation.tools`):
  ``<think>47+85=<tool_call>{"name": "add", "arguments": {"a": 47, "b": 85}}</tool_call>``
  ``<tool_response>132</tool_response></think> <answer>132</answer>``, so the choice to call is one
  decision, right after ``a+b=``;
- ``untagged``: ``The answer is 132.`` (no format);

and on ``products`` (a tenth of all texts): ``12 * 34`` worked with the calculator's ``multiply``, which a
model this small cannot compute, so only copying the operands into the call and the response into the
answer predicts them (:func:`product_text`).

Numbers are tokens of up to three digits (``number_tokens``; ``1649`` is ``164`` + ``9``, as GPT-4's and
Llama 3's tokenizers split digits). The first bases, one token per digit, copied unreliably and differently
on each pretraining seed (3-digit problems, greedy): one wrote the first operand wrong in every call, one
restated the operands in ``<think>`` right 15% of the time, and one with twice the pretraining copied the
tool's result into the answer 53% of the time (``1649`` became ``1679``: copying digit by digit, in a
context where the operands repeat the same digits, jumps between them). RL could not make calling pay on
those seeds (README, "Tool calls inside the rollout"). With whole-number tokens, copying is one token per
operand: base seeds 0 and 1 copy the operands right on 60 of 60 problems of that check, and the result on
36-40 of 40, also when the "tool" answers a wrong sum (they copy, they do not recompute). Without the tool
they add three-digit numbers almost never right, since a sum is not readable from the operands' tokens.

The tool's response tokens carry no pretraining loss (as in RL, they are not the model's to predict).
Whether RL with accuracy and format rewards only (never a reward for calling the tool) raises the call rate
and 3-digit accuracy is the experiment: ``configs/r1_zero_tools_tiny.yaml``.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from r1_lightning.tiny.reasoning import AdditionPretraining
from r1_lightning.tools.format import CALL_CLOSE, CALL_OPEN, RESPONSE_CLOSE, RESPONSE_OPEN

STYLES = ("direct", "tool", "untagged")  # the additions' styles; products are drawn apart (``products``)
#: whole pieces of the call as single tokens, so a call is a few tokens long, as in real vocabularies
CALL_PIECES = ('{"name": "add", "arguments": {"a": ', ', "b": ', "}}")
MULTIPLY_CALL_OPEN = '{"name": "multiply", "arguments": {"a": '


@dataclass(frozen=True)
class ToolBaseRecipe(AdditionPretraining):
    """Corpus mix on top of the problem sizes and the pretraining run: ``products`` of all texts are products
    worked with the calculator; the rest are additions in :data:`STYLES` with these probabilities. The
    earlier recipe (``corpus`` 2: digit tokens, 25% calls, no products, 800 steps) held on 1 base seed of 3
    (``benchmarks/results/tools-seeds-recipe2-cpu.json``)."""

    steps: int = 1000
    direct: float = 0.85
    tool: float = 0.05
    untagged: float = 0.10
    products: float = 0.1  # the share of extra texts: a product worked with the calculator's `multiply`
    number_tokens: int = 1000  # numbers 10..number_tokens-1 are single tokens (0: one token per digit)
    corpus: int = 3  # the text's version (part of the cache key): 3 = number tokens, products


def tool_call_text(a: int, b: int, name: str = "add") -> str:
    """The calculator call for ``a + b`` (exactly what :func:`r1_lightning.generation.tools.parse_call` reads).

    >>> tool_call_text(47, 85)
    '<tool_call>{"name": "add", "arguments": {"a": 47, "b": 85}}</tool_call>'
    """
    return CALL_OPEN + json.dumps({"name": name, "arguments": {"a": a, "b": b}}) + CALL_CLOSE


def product_text(a: int, b: int) -> tuple[str, str, str, str]:
    """A product worked with the calculator, as ``(prompt, before the response, the response, after it)``.

    A model this small cannot multiply, so the only way to predict these answers is to copy the operands
    into the call and the response into the answer: the copying that addition's calls need too, without
    the shortcut of computing the sum instead (bases trained on additions alone copied unreliably, on some
    pretraining seeds not at all).

    >>> product_text(12, 34)[1:]
    (' <think>12*34=<tool_call>{"name": "multiply", "arguments": {"a": 12, "b": 34}}</tool_call>', \
'<tool_response>408</tool_response>', '</think> <answer>408</answer>')
    """
    before = f" <think>{a}*{b}={tool_call_text(a, b, 'multiply')}"
    return f"{a} * {b}", before, f"{RESPONSE_OPEN}{a * b}{RESPONSE_CLOSE}", f"</think> <answer>{a * b}</answer>"


def completion(a: int, b: int, recipe: ToolBaseRecipe, rng: random.Random) -> tuple[str, str, str]:
    """One pretraining completion for ``a + b`` as ``(before the tool response, the response, after it)``."""
    draw = rng.random()
    if draw < recipe.direct:
        return f" <think>{a}+{b}={a + b}</think> <answer>{a + b}</answer>", "", ""
    if draw < recipe.direct + recipe.tool:  # the same start as `direct`: after "a+b=", guess or call
        response = f"{RESPONSE_OPEN}{a + b}{RESPONSE_CLOSE}"
        return f" <think>{a}+{b}={tool_call_text(a, b)}", response, f"</think> <answer>{a + b}</answer>"
    return f" The answer is {a + b}.", "", ""


def build_tool_tokenizer(number_tokens: int = 0):
    """The tiny tokenizer, with the tool tags and the call's fixed pieces as tokens, and with
    ``number_tokens=1000`` the numbers 10-999 as single tokens: a longer number splits left to right into
    groups of up to three digits (``1649`` is ``164`` + ``9``), as GPT-4's and Llama 3's tokenizers split
    digits."""
    from r1_lightning.tiny.base import build_tokenizer

    tokenizer = build_tokenizer()
    tags = [CALL_OPEN, CALL_CLOSE, RESPONSE_OPEN, RESPONSE_CLOSE]
    tokenizer.add_tokens([*tags, *CALL_PIECES, MULTIPLY_CALL_OPEN, " so"])
    tokenizer.add_tokens([str(n) for n in range(10, number_tokens)])
    return tokenizer


def pretraining_example(recipe: ToolBaseRecipe, task, rng: random.Random) -> tuple[str, list[tuple[str, bool]]]:
    """One pretraining text: ``(prompt, [(text, scored), ...])``, the tool's response unscored; a product with
    probability ``recipe.products`` (operands of ``task``'s digit counts), else an addition of ``task``'s."""
    if rng.random() < recipe.products:
        digits = [rng.randint(task.min_digits, task.max_digits) for _ in range(2)]
        x, y = (rng.randint(10 ** (d - 1) if d > 1 else 0, 10**d - 1) for d in digits)
        prompt, before, response, after = product_text(x, y)
        return prompt, [(before, True), (response, False), (after, True)]
    problem = task.sample(rng)
    a, b = (int(x) for x in problem["prompt"].split(" + "))
    before, response, after = completion(a, b, recipe, rng)
    return problem["prompt"], [(before, True), (response, False), (after, True)]


@torch.enable_grad()
def pretrain_tools(recipe: ToolBaseRecipe, out_dir: Path) -> None:
    """Causal-LM pretraining on the corpus above (loss on completions, tool responses excluded); HF format."""
    from r1_lightning.data.tasks import CarryAdditionTask
    from r1_lightning.tiny.base import build_model, pretrain_loop

    tokenizer = build_tool_tokenizer(recipe.number_tokens)
    model = build_model(tokenizer, recipe.hidden_size, recipe.layers, recipe.heads, seed=recipe.seed)
    task = CarryAdditionTask(recipe.min_digits, recipe.max_digits)

    description = "building the tiny tool-calling base (one-off): pretraining"
    pretrain_loop(model, tokenizer, lambda rng: pretraining_example(recipe, task, rng), recipe, out_dir, description)


def tiny_tools_path(recipe: ToolBaseRecipe | None = None) -> Path:
    """Path of the cached tool-calling base, pretrained first if it is not cached yet (about 6 minutes on 2
    CPU cores)."""
    from r1_lightning.tiny.base import cached_base

    return cached_base(
        "tiny-tools",
        recipe or ToolBaseRecipe(),
        pretrain_tools,
        "tiny tool-calling base (one-off, about 6 minutes on 2 CPU cores)",
    )
